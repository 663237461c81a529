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


def test_hidden_files_in_the_rules_directory_are_not_rule_files(tmp_path: Path) -> None:
    """rules.d/*.yaml, as the shell reads it, leaves out hidden names: a deploy tool's or editor's
    temporary copy beside the file (Ansible writes .ansible_tmpXXXX10-a.yaml in the directory and
    renames it over 10-a.yaml) was loaded as a second file, and a reload during the deploy failed
    on its duplicate rule names, or on the copy gone by the time it was read."""
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    text = "rules:\n  - {name: a, match: {notification: linkUp}, cancel: x}\n"
    (rules_d / "10-a.yaml").write_text(text)
    (rules_d / ".ansible_tmp1a2b3c10-a.yaml").write_text(text)
    (rules_d / ".hidden.yml").write_text(text)
    cfg_path = tmp_path / "trapd.yaml"
    cfg_path.write_text("mibs: {dirs: []}\nrules: {dir: rules.d}\n")
    paths = load_config(cfg_path).rule_paths()
    assert [p.name for p in paths] == ["10-a.yaml"]
    assert list(load_rules(paths, resolver(), ACTIONS).names) == ["a"]
