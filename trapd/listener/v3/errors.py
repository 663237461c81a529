"""The one exception a v3 receive path raises for a message it drops."""

from __future__ import annotations


class Refused(Exception):
    """A v3 message dropped: ``reason`` is one of stats.DROP_REASONS, ``detail`` finer."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason
