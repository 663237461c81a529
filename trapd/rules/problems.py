"""Collecting every problem in a rules file instead of stopping at the first.

Netops fix a file in one pass when ``trapd check`` lists all of it. The
compiler appends to a :class:`Problems` and carries on with the next key or
rule; at the end :meth:`Problems.raise_errors` raises :class:`RuleErrors`
when any error (not warning) was found.
"""

from __future__ import annotations

from collections.abc import Iterator

from trapd.yamlsource import ConfigError, Mark


class RuleErrors(ConfigError):
    """The rule set did not build; ``errors`` holds every problem found (warnings too)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = next((e for e in errors if e.severity == "error"), errors[0] if errors else None)
        n = sum(1 for e in errors if e.severity == "error")
        summary = f"{n} error(s) in the rules" + (f"; first: {first}" if first else "")
        super().__init__(summary, first.mark if first else None)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class Problems:
    def __init__(self) -> None:
        self.items: list[ConfigError] = []
        self.files: list[str] = []  # load order, for sorting

    def error(self, message: str, mark: Mark | None) -> None:
        self.items.append(ConfigError(message, mark))

    def warning(self, message: str, mark: Mark | None) -> None:
        self.items.append(ConfigError(message, mark, severity="warning"))

    def add(self, exc: ConfigError) -> None:
        self.items.append(exc)

    @property
    def has_errors(self) -> bool:
        return any(e.severity == "error" for e in self.items)

    def has_errors_since(self, count: int) -> bool:
        if len(self.items) == count:  # asked once a rule; nearly always nothing new
            return False
        return any(e.severity == "error" for e in self.items[count:])

    def sorted(self) -> list[ConfigError]:
        """By position, files kept in the order they were loaded (rules.yaml before rules.d/)."""
        order: dict[str, int] = {f: i for i, f in enumerate(self.files)}
        for e in self.items:
            if e.mark is not None:
                order.setdefault(e.mark.file, len(order))

        def key(e: ConfigError) -> tuple[int, int, int]:
            m = e.mark
            return (order.get(m.file, len(order)), m.line, m.column) if m else (-1, 0, 0)

        return sorted(self.items, key=key)

    def __iter__(self) -> Iterator[ConfigError]:
        return iter(self.items)
