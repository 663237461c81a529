"""The docs show what trapd does: their YAML snippets pass `trapd check`, the example output is real.

A user copies the snippets (rules and trapd.yaml sections from docs/*.md, the
actions' READMEs and the example plugin's) and compares the output. A snippet
that no longer compiles, or output that trapd no longer prints, is a bug in the doc.
"""

from __future__ import annotations

import argparse
import re
import shlex
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from trapd.cli import build_parser
from trapd.cli import main as trapd

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "rules.md"
DOCS = [*sorted(REPO.glob("docs/*.md")), *sorted(REPO.glob("actions/*/README.md"))]
DOCS.append(REPO / "examples" / "trapd-example-plugin" / "README.md")
# Top-level keys of trapd.yaml a snippet may show alone (`actions:` only with a mapping: else it is a rule's).
CONFIG_KEYS = {"listener", "kea", "state_dir", "mode", "service", "dispatch", "mibs", "actions"}
# The context a fragment (a `match:`, `varbinds:`, `foreach:` or `actions:` of one rule) is checked in:
# the groups the snippets name, and a cap for their destructive actions.
HEAD = [
    "sources:",
    "  access-switches: [10.20.0.0/16, 10.21.0.5]",
    "  core: [10.0.0.1, 10.0.0.2]",
    "defaults:",
    "  cap: {limit: 50, per: 1m}",
    "rules:",
]
MAC_RULE = [
    "  - name: doc-fragment",
    "    match: {notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification}",
]
LOG = "    actions: [{action: log, message: doc}]"


def yaml_blocks(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    return [textwrap.dedent(b) for b in re.findall(r"^ *```yaml\n(.*?)^ *```", text, re.S | re.M)]


def parts(code: str) -> list[str]:
    """A snippet showing two files (`# trapd.yaml`, then `# rules.d/notes.yaml`) is two snippets."""
    return [p for p in re.split(r"^(?=# \S+\.yaml$)", code, flags=re.M) if p.strip()]


def is_config(code: str) -> bool:
    doc = yaml.safe_load(code)
    return (
        isinstance(doc, dict)
        and bool(doc)
        and set(doc) <= CONFIG_KEYS
        and not isinstance(doc.get("actions", {}), list)
    )


def config_file(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rules: Path | None = None) -> str:
    """A trapd.yaml section as a whole trapd.yaml, its secret and certificate files and variables made up.

    ``rules``: the rule file it runs; by default one rule that needs nothing of the section.
    """
    secrets = tmp_path / "etc"
    secrets.mkdir(exist_ok=True)
    # v3 key material (docs/snmpv3.md: *.ku, *.kul, *_KU, *_KUL): a made-up SHA-1-sized key in hex.
    key = "0x" + "5a" * 20
    for name in set(re.findall(r"/etc/trapd/([\w.-]+)", code)):
        made_up = key if name.endswith((".ku", ".kul")) else "made-up-secret-1234"
        (secrets / name).write_text(made_up + "\n", encoding="utf-8")
    for name in set(re.findall(r"\{env: (\w+)\}", code)):
        monkeypatch.setenv(name, key if name.endswith(("_KU", "_KUL")) else "made-up-secret-1234")
    # One rule that runs nothing destructive: an empty rule set is warned about (nothing runs).
    if rules is None:
        rules = tmp_path / "one-rule.yaml"
        rules.write_text("rules: [{name: up, match: {notification: linkUp}, cancel: x}]\n", encoding="utf-8")
    head = f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{rules}]}}\n"
    return head + code.replace("/etc/trapd/", f"{secrets}/")


def indent(code: str, by: int) -> list[str]:
    return [" " * by + line if line.strip() else line for line in code.splitlines()]


def rule_files(code: str) -> list[str]:
    """The rule file(s) a snippet is checked as: itself if it is one, else wrapped in a rule."""
    first = next((line for line in code.splitlines() if line.strip() and not line.startswith("#")), "")
    if not first:  # only comments (the schema line)
        return []
    if first.startswith(("sources:", "defaults:", "rules:")):
        if re.search(r"^rules:", code, re.M):
            return [code]
        # Only sources or defaults: with a rule, since files that hold none are warned about.
        return [code + "\nrules: [{name: doc-fragment, match: {notification: linkUp}, cancel: x}]"]
    if first.lstrip().startswith("- name:"):  # a list of rules
        return ["\n".join(HEAD + indent(code, 0 if first.startswith("  ") else 2))]
    if first.startswith("match:"):
        return ["\n".join([*HEAD, "  - name: doc-fragment", LOG, *indent(code, 4)])]
    if first.startswith("varbinds:"):
        match = ["    match:", "      notification: IF-MIB::linkDown", *indent(code, 6)]
        return ["\n".join([*HEAD, "  - name: doc-fragment", LOG, *match])]
    if first.startswith("foreach:"):  # alternatives, one after another
        parts = re.split(r"^(?=foreach:)", code, flags=re.M)
        return [
            "\n".join(
                [
                    *HEAD,
                    *MAC_RULE,
                    "    actions: [{action: log, message: '{{ item.mac }}'}]",
                    *indent(part, 4),
                ]
            )
            for part in parts
            if part.strip()
        ]
    if first.startswith("actions:"):
        return ["\n".join([*HEAD, *MAC_RULE, "    foreach: mac_changes", *indent(code, 4)])]
    if first.startswith("- action:"):  # one item of a rule's actions
        return ["\n".join([*HEAD, *MAC_RULE, "    foreach: mac_changes", "    actions:", *indent(code, 6)])]
    if first.startswith("# yaml-language-server:"):
        return []
    raise AssertionError(f"a yaml snippet this test does not know how to check:\n{code}")


def test_every_yaml_snippet_of_the_docs_passes_trapd_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checked: dict[str, int] = {}
    for doc in DOCS:
        name = str(doc.relative_to(REPO))
        for n, block in enumerate(yaml_blocks(doc)):
            if block.startswith("# prometheus.yml"):
                continue  # Prometheus's file, not trapd's (tests/test_contrib.py checks the alerts)
            pieces = parts(block)
            # A snippet showing a trapd.yaml section and rules (a plugin's settings, then a rule
            # using it): the rules are checked with that section, as a user would run them.
            section = next((code for code in pieces if len(pieces) > 1 and is_config(code)), None)
            for m, code in enumerate(pieces):
                path = tmp_path / f"{doc.stem}-{n}-{m}.yaml"
                if is_config(code):
                    checks = [(config_file(code, tmp_path, monkeypatch), path, ["--config", str(path)])]
                elif section is not None:
                    config = tmp_path / f"{doc.stem}-{n}-{m}.trapd.yaml"
                    config.write_text(
                        config_file(section, tmp_path, monkeypatch, rules=path), encoding="utf-8"
                    )
                    checks = [(text + "\n", path, ["--config", str(config)]) for text in rule_files(code)]
                else:
                    checks = [(text + "\n", path, [str(path)]) for text in rule_files(code)]
                for text, path, args in checks:
                    path.write_text(text, encoding="utf-8")
                    status = trapd(["check", "--strict", *args])
                    out = capsys.readouterr().out
                    assert status == 0, f"{name}, yaml snippet {n}:\n{code}\nchecked as:\n{text}\n{out}"
                    checked[name] = checked.get(name, 0) + 1
    assert checked.get("docs/rules.md", 0) >= 8 and len(checked) >= 8, checked


def test_the_example_output_of_trapd_test_is_what_it_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = DOC.read_text(encoding="utf-8")
    block = re.search(r"^```\n\$ (trapd test .*?)\n(.*?)^```", doc, re.S | re.M)
    assert block is not None
    command, shown = block.group(1), block.group(2).splitlines()
    monkeypatch.chdir(REPO)  # the doc's paths are relative to the repository, as the output shows them
    assert trapd(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    event_id = re.compile(r"\b[0-9a-f]{21}\b")
    printed = [event_id.sub("EVENT", line) for line in printed]
    shown = [event_id.sub("EVENT", line) for line in shown]
    # The doc leaves some non-matching rules out: every line it shows is printed, in that order.
    at = 0
    for line in shown:
        assert line in printed[at:], f"the doc shows {line!r}; trapd test printed:\n" + "\n".join(printed)
        at = printed.index(line, at) + 1


def test_the_readme_commands_table_names_every_subcommand_and_every_option_of_trapd_run() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `trapd (\w+)[^`]*` \| (.*)$", table, re.M)}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(rows) == set(sub.choices)
    run_options = {o for a in sub.choices["run"]._actions for o in a.option_strings if o.startswith("--")}
    assert {o for o in run_options if f"`{o}`" not in rows["run"]} == {"--help"}


def test_the_option_82_template_builds_the_circuit_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/rules.md, "Option 82": the binary circuit-id template, fed by regex groups, gives Kea's hex."""
    doc = DOC.read_text(encoding="utf-8").split("## Option 82", 1)[1]
    found = re.search(r"`circuit-id: (\"0x.*?\")`", doc)
    assert found is not None
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "defaults: {cap: {limit: 50, per: 1m}}\n"
        "rules:\n"
        "  - name: cisco-default-circuit-id\n"
        "    match:\n"
        "      notification: IF-MIB::linkDown\n"
        "      varbinds: {ifDescr: {regex: 'Vl(?P<vlan>\\d+)-Gi(?P<module>\\d+)/0/(?P<port>\\d+)'}}\n"
        "    actions:\n"
        f"      - {{action: kea.lease-del, circuit-id: {found.group(1)}}}\n",
        encoding="utf-8",
    )
    assert trapd(["test", "-r", str(rules), "IF-MIB::linkDown", "ifIndex=17", "ifDescr=Vl100-Gi1/0/17"]) == 0
    out = capsys.readouterr().out
    assert 'kea.lease-del circuit-id="0x00640111"' in out, out


def test_every_example_trapd_test_of_the_repository_rules_matches_a_rule(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newcomer's first `trapd test` (README's "Quick start") shows a rule at work, not "0 matched".

    README and docs/rules.md sent a linkDown without the ifAdminStatus that rules.yaml's port rule
    tests for: every rule printed "no match".
    """
    monkeypatch.chdir(REPO)
    found = 0
    for doc in (REPO / "README.md", DOC):
        for line in doc.read_text(encoding="utf-8").splitlines():
            # A command line of a code block (not stdin's `-`, not an inline one cut by the wrap).
            command = re.fullmatch(r"(?:\$ |\.venv/bin/)?trapd (test -r rules\.yaml [^-].*)", line)
            if command is None:
                continue
            found += 1
            assert trapd(shlex.split(command.group(1))) == 0, line
            out = capsys.readouterr().out
            assert "= 0 rule(s) matched" not in out, f"{doc.name}: {line}\n{out}"
    assert found >= 3


@pytest.mark.parametrize(
    "doc,heading,section,examples",
    [
        ("docs/dispatch.md", "## Configuration", "dispatch", {"caps"}),  # caps: an example, none by default
        ("docs/service.md", "## The service: section of trapd.yaml", "service", set()),
    ],
)
def test_the_settings_a_doc_shows_with_their_defaults_are_the_defaults(
    doc: str, heading: str, section: str, examples: set[str], tmp_path: Path
) -> None:
    """A default changed in the code and not in the page that lists every key with its default."""
    from trapd.config import load_config

    text = (REPO / doc).read_text(encoding="utf-8").split(heading + "\n", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert found is not None
    # The commented-out keys with a value (PostgreSQL's lease, copy_window) are defaults too.
    block = re.sub(r"^( *)# (lease|copy_window):", r"\1\2:", found.group(1), flags=re.M)
    shown = yaml.safe_load(block)
    for key in examples:
        shown[section].pop(key)
    (tmp_path / "shown.yaml").write_text(yaml.safe_dump(shown), encoding="utf-8")
    (tmp_path / "empty.yaml").write_text("{}\n", encoding="utf-8")
    got = getattr(load_config(tmp_path / "shown.yaml"), section)
    default = getattr(load_config(tmp_path / "empty.yaml"), section)
    if section == "dispatch":  # `path: journal.sqlite` is where the default (None) puts it
        assert got.journal.file(tmp_path) == default.journal.file(tmp_path)
        got = replace(got, journal=replace(got.journal, path=None))
    assert got == default
