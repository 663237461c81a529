"""Rules deployed by swapping a symlink (``/etc/trapd/current -> releases/N``), the way Ansible's
and Capistrano's releases do it: a reload reads one release, never a mix of two."""

from __future__ import annotations

import os
from pathlib import Path

from rules_support import ACTIONS, resolver

from trapd.config import load_config
from trapd.rules import load_rules


def release(root: Path, tag: str) -> Path:
    d = root / "releases" / tag
    (d / "rules.d").mkdir(parents=True)
    rule = "rules:\n  - {{name: {name}-{tag}, match: {{notification: linkUp}}, cancel: x}}\n"
    (d / "rules.yaml").write_text(rule.format(name="main", tag=tag))
    for name in ("10-a", "20-b"):
        (d / "rules.d" / f"{name}.yaml").write_text(rule.format(name=name, tag=tag))
    return d


def swap(link: Path, target: Path) -> None:
    """Atomically, as deploy tools do: a new symlink renamed over the old one."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_the_files_listed_for_a_load_stay_in_the_release_they_were_listed_in(tmp_path: Path) -> None:
    """The rule files are listed, then read one after another (a big set takes seconds): a swap
    in between made the reload compile rules.yaml of one release with rules.d of the next, or
    the first files of rules.d from the old release and the rest from the new."""
    v1, v2 = release(tmp_path, "v1"), release(tmp_path, "v2")
    current = tmp_path / "current"
    current.symlink_to(v1)
    cfg_path = tmp_path / "trapd.yaml"
    cfg_path.write_text("mibs: {dirs: []}\nrules: {files: [current/rules.yaml], dir: current/rules.d}\n")
    cfg = load_config(cfg_path)
    paths = cfg.rule_paths()
    swap(current, v2)  # the deploy lands while the reload reads
    rules = load_rules(paths, resolver(), ACTIONS)
    assert list(rules.names) == ["main-v1", "10-a-v1", "20-b-v1"]
    # The next reload takes the new release whole.
    assert list(load_rules(cfg.rule_paths(), resolver(), ACTIONS).names) == ["main-v2", "10-a-v2", "20-b-v2"]
