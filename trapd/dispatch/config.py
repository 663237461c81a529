"""The ``dispatch:`` section of trapd.yaml (placeholder: keys are added with the feature)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.yamlsource import check_keys


@dataclass(frozen=True)
class DispatchConfig:
    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> DispatchConfig:
        check_keys(node, set(), "dispatch")
        return cls()
