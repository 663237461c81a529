"""MIB names for OIDs (placeholder until the MIB resolver lands)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.yamlsource import check_keys


@dataclass(frozen=True)
class MibConfig:
    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> MibConfig:
        check_keys(node, set(), "mibs")
        return cls()
