"""Secrets (communities, v3 keys, Kea passwords) that never reach a log.

A secret in a config file can be written three ways::

    password: s3cret                         # inline (fine for a lab)
    password: {file: /etc/trapd/kea.pw}      # first line of a file (mode 0600/0640)
    password: {env: TRAPD_KEA_PASSWORD}      # an environment variable

Every loaded secret is registered with :data:`REDACTOR`, which the logging
setup uses to mask the value wherever it would otherwise be printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trapd.yamlsource import ConfigError, Mark


class Redactor:
    """Knows every secret value loaded in this process and masks them in text."""

    MASK = "***"

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str) -> None:
        # Very short values would mask innocent text everywhere ("1", "a").
        if len(value) >= 4:
            self._values.add(value)

    def redact(self, text: str) -> str:
        for v in self._values:
            if v in text:
                text = text.replace(v, self.MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._values)


REDACTOR = Redactor()


class Secret:
    """A secret value whose ``repr``/``str`` never shows it. Call :meth:`reveal`."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str = "inline") -> None:
        self._value = value
        self.origin = origin
        REDACTOR.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{self.origin}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def from_config(cls, value: Any, mark: Mark | None = None, *, base_dir: Path | None = None) -> Secret:
        """Build from ``"inline"``, ``{file: PATH}`` or ``{env: NAME}``; ConfigError otherwise."""
        if isinstance(value, str):
            return cls(value, "inline")
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, ref),) = value.items()
            if kind == "env" and isinstance(ref, str):
                if ref not in os.environ:
                    raise ConfigError(f"environment variable {ref} is not set", mark)
                return cls(os.environ[ref], f"env {ref}")
            if kind == "file" and isinstance(ref, str):
                path = Path(ref)
                if base_dir is not None and not path.is_absolute():
                    path = base_dir / path
                try:
                    text = path.read_text(encoding="utf-8")
                except OSError as exc:
                    raise ConfigError(f"cannot read secret file {path}: {exc.strerror or exc}", mark) from exc
                lines = text.splitlines()
                return cls(lines[0] if lines else "", f"file {path}")
        raise ConfigError("a secret is a string, {file: PATH} or {env: NAME}", mark)
