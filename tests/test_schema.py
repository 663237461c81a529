"""The editor schemas (trapd/data/*.schema.json) agree with what trapd itself accepts.

The rules schema is built from the compiler's own key sets and the plugins'
parameter declarations; trapd.yaml's is written out in trapd/schema.py, so
here every section of it is probed against the real loader: each key the
schema lists is known to the loader, any other key is refused by both. The
shipped examples validate, and a set of wrong files is refused by the schema
and by `trapd check` alike.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from trapd import schema, yamlsource
from trapd.cli import main
from trapd.config import load_config
from trapd.yamlsource import ConfigError

REPO = Path(__file__).resolve().parent.parent
RULE_EXAMPLES = [
    REPO / "rules.yaml",
    REPO / "etc" / "trapd" / "rules.yaml",
    *sorted(REPO.glob("actions/*/example.yaml")),
]
CONFIG_EXAMPLES = [REPO / "etc" / "trapd" / "trapd.yaml"]


def validator(which: Path) -> jsonschema.Draft7Validator:
    doc = json.loads(which.read_text())
    jsonschema.Draft7Validator.check_schema(doc)
    return jsonschema.Draft7Validator(doc)


RULES = validator(schema.RULES_SCHEMA)
CONFIG = validator(schema.CONFIG_SCHEMA)


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def test_the_shipped_schemas_are_what_trapd_generates() -> None:
    """Keys, parameters and types as generated (a reworded description alone does not fail this)."""
    fix = "regenerate: trapd schema rules --shipped -o trapd/data/rules.schema.json (and config)"
    for shipped, generated in (
        (schema.RULES_SCHEMA, schema.rules_schema(schema.shipped_actions())),
        (schema.CONFIG_SCHEMA, schema.config_schema(schema.shipped_actions())),
    ):
        on_disk = json.loads(shipped.read_text())
        assert without_descriptions(on_disk) == without_descriptions(generated), fix


def test_trapd_schema_prints_them(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["schema", "config", "--shipped"]) == 0
    assert capsys.readouterr().out == schema.CONFIG_SCHEMA.read_text()
    out = tmp_path / "rules.schema.json"
    assert main(["schema", "rules", "-o", str(out)]) == 0
    assert (
        "kea.lease-del"
        in json.loads(out.read_text())["definitions"]["action"]["properties"]["action"]["examples"]
    )


@pytest.mark.parametrize("path", RULE_EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_shipped_rule_files_validate(path: Path) -> None:
    errors = [e.message for e in RULES.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("path", CONFIG_EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_shipped_trapd_yaml_validates(path: Path) -> None:
    assert [e.message for e in CONFIG.iter_errors(yaml.safe_load(path.read_text()))] == []


def test_the_example_rules_point_editors_at_the_schema() -> None:
    first = (REPO / "rules.yaml").read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    assert (REPO / first.split("$schema=", 1)[1]).resolve() == schema.RULES_SCHEMA.resolve()


GOOD_RULE = {
    "name": "r",
    "match": {"notification": "IF-MIB::linkDown"},
    "actions": [{"action": "log", "message": "m"}],
}
WRONG_RULES = {
    "unknown top-level key": {"rulez": []},
    "unknown rule key": {"rules": [{**GOOD_RULE, "enable": True}]},
    "unknown match key": {"rules": [{**GOOD_RULE, "match": {"notifcation": "IF-MIB::linkDown"}}]},
    "unknown action parameter": {"rules": [{**GOOD_RULE, "actions": [{"action": "log", "mesage": "m"}]}]},
    "unknown cap key": {"rules": [{**GOOD_RULE, "cap": {"limit": 5, "per": "1m", "hold": "1h"}}]},
    "unknown retry key": {"rules": [{**GOOD_RULE, "retry": {"attempts": 3}}]},
    "enabled is not a boolean": {"rules": [{**GOOD_RULE, "enabled": "yes please"}]},
    "a rule without a name": {"rules": [{k: v for k, v in GOOD_RULE.items() if k != "name"}]},
    "rules is not a list": {"rules": {"r": GOOD_RULE}},
    "unknown mode": {"defaults": {"mode": "sometimes"}, "rules": [GOOD_RULE]},
    "an action without action:": {"rules": [{**GOOD_RULE, "actions": [{"message": "m"}]}]},
    "cap.limit below 0": {"rules": [{**GOOD_RULE, "cap": {"limit": -1, "per": "1m"}}]},
}


@pytest.mark.parametrize("case", sorted(WRONG_RULES))
def test_a_wrong_rules_file_is_refused_by_the_schema_and_by_trapd_check(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = WRONG_RULES[case]
    assert list(RULES.iter_errors(doc)), f"the schema accepts: {case}"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "trapd.yaml").write_text(f"state_dir: {tmp_path}\nmibs: {{dirs: []}}\n")
    assert main(["check", "--config", str(tmp_path / "trapd.yaml"), str(tmp_path / "rules.yaml")]) == 1, case
    capsys.readouterr()


def test_the_good_rule_passes_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"rules": [GOOD_RULE]}
    assert list(RULES.iter_errors(doc)) == []
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "trapd.yaml").write_text(f"state_dir: {tmp_path}\nmibs: {{dirs: []}}\n")
    assert main(["check", "--config", str(tmp_path / "trapd.yaml"), str(tmp_path / "rules.yaml")]) == 0
    capsys.readouterr()


# -- the rules schema and the compiler give the same verdict --------------------------------

# Rule shapes near the edges of what each key takes; each is one rule (or one file) that the
# compiler and the schema must both accept or both refuse. Valid ones an editor flagged were
# the defect (a red squiggle under a rule trapd runs); invalid ones it passed, the lesser one.
MATCHES: list[Any] = [
    {"source": {"not": "10.0.0.0/24"}},
    {"source": {"not": ["10.0.0.0/8", "!10.0.0.1"]}},
    {"source": ["10.0.0.0/8", "!10.0.0.1"]},
    {"version": 1},
    {"version": [1, "v2c"]},
    {"version": "v3"},
    {"kind": "inform"},
    {"kind": ["trap", "inform"]},
    {"kind": {"ne": "inform"}},
    {"kind": "sideways"},
    {"community": {"regex": "pub.*"}},
    {"community": 123},
    {"all": []},
    {"any": []},
    {"all": [{"version": "v1"}]},
    {"notification": {"under": "IF-MIB"}},
    None,
    {},
]
CAP5 = {"limit": 5, "per": "1m"}
RULE_PARTS: list[dict[str, Any]] = [
    {"name": "a b"},
    {"name": "x" * 129},
    {"name": "port-down.1:a/b@c+d"},
    {"actions": None},
    {"actions": []},
    {"actions": [{"action": "log", "message": 5}]},
    {"actions": [{"action": "log", "message": 5.5}]},
    {"actions": [{"action": "log", "message": True}]},
    {"actions": [{"action": "log", "message": "m", "key": 5}]},
    {"actions": [{"action": "log", "message": "m", "key": True}]},
    {"actions": [{"action": "log", "message": "m", "delay": 30, "cancel-key": 7}]},
    {"cap": {"limit": 5, "per": "1m", "key": 5}},
    {"cap": {"limit": 5, "per": 60}},
    {"cap": {"limit": -1, "per": "1m"}},
    {"cap": {"limit": 5.0, "per": "1m"}},
    {"cap": {"limit": 5.5, "per": "1m"}},
    {"cap": {"limit": "5", "per": "1m"}},
    {"cap": {"limit": True, "per": "1m"}},
    {"cap": [{"limit": 5.0, "per": "1m"}]},
    {"retry": {"max-attempts": 3.0}},
    {"retry": {"max-attempts": 0.0}},
    {"retry": {"max-attempts": 2.5}},
    {"actions": [{"action": "kea.lease-del", "hw-address": "0:1:2:3:4:5", "page-size": 100.0}], "cap": CAP5},
    {"actions": [{"action": "kea.lease-del", "hw-address": "0:1:2:3:4:5", "page-size": 100.5}], "cap": CAP5},
    {"retry": {"max-attempts": 0}},
    {"cancel": 5},
    {"cancel": ["a", "b"]},
]
FILES: list[dict[str, Any]] = [
    {"sources": {"g": []}},
    {"sources": {"g": "10.0.0.1"}},
    {"sources": {"g": ["10.0.0.1", "!10.0.0.2"]}},
    {"rules": None},
    {"rules": []},
    {"defaults": {}},
]


def _rule_files() -> Iterator[tuple[str, dict[str, Any]]]:
    log = [{"action": "log", "message": "m"}]
    for m in MATCHES:
        yield f"match {json.dumps(m)}", {"rules": [{"name": "r", "match": m, "actions": log}]}
    for part in RULE_PARTS:
        rule = {"name": "r", "match": {"notification": "1.3.6.1.6.3.1.1.5.3"}, "actions": log, **part}
        yield f"rule {json.dumps(part)}", {"rules": [rule]}
    for doc in FILES:
        yield f"file {json.dumps(doc)}", doc


@pytest.fixture(scope="module")
def shipped_actions() -> dict[str, Any]:
    from trapd.plugin import load_actions

    actions, _broken = load_actions()
    return dict(actions)


@pytest.mark.parametrize("case,doc", list(_rule_files()), ids=[c for c, _ in _rule_files()])
def test_the_rules_schema_accepts_what_the_compiler_accepts_and_no_more(
    case: str, doc: dict[str, Any], tmp_path: Path, shipped_actions: dict[str, Any]
) -> None:
    from trapd.mibs import MibResolver
    from trapd.rules import compile_rules

    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(doc))
    _rules, problems = compile_rules([f], MibResolver.load(), shipped_actions)
    compiler = [p.message for p in problems if p.severity == "error"]
    editor = [e.message for e in RULES.iter_errors(doc)]
    assert bool(compiler) == bool(editor), f"compiler: {compiler}; schema: {editor}"


# -- trapd.yaml: every section of the schema probed against the loader ----------------------


def sections(
    node: dict[str, Any], path: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """(where in a trapd.yaml, object schema) for every closed object the config schema describes."""
    if node.get("type") == "object" and node.get("additionalProperties") is False and "properties" in node:
        yield path, node
        for key, sub in node["properties"].items():
            yield from sections(sub, (*path, key))
    # A secret's {file: ...} / {env: ...} forms are checked by trapd.secrets, with its own message.
    if not str(node.get("description", "")).startswith("inline, or {file"):
        for alt in node.get("anyOf", ()):
            yield from sections(alt, path)
    if isinstance(node.get("items"), dict):
        yield from sections(node["items"], (*path, 0))
    if isinstance(node.get("additionalProperties"), dict):
        yield from sections(node["additionalProperties"], (*path, "probe"))


def placed(path: tuple[Any, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    """A trapd.yaml holding ``leaf`` at ``path`` (0: the first item of a list)."""
    node: Any = leaf
    for step in reversed(path):
        node = [node] if step == 0 else {step: node}
    return dict(node)


def loader_says(doc: dict[str, Any], tmp_path: Path) -> str:
    f = tmp_path / "trapd.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        load_config(f)
    except ConfigError as exc:
        return str(exc)
    return ""


CONFIG_SECTIONS = list(sections(json.loads(schema.CONFIG_SCHEMA.read_text())))


@pytest.mark.parametrize(
    "path,section", CONFIG_SECTIONS, ids=[".".join(map(str, path)) or "top" for path, _ in CONFIG_SECTIONS]
)
def test_each_trapd_yaml_section_lists_exactly_the_keys_the_loader_knows(
    path: tuple[Any, ...], section: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key nobody knows: refused by both. The loader's refusal offers the keys it knows (the
    # "did you mean" hint): the schema lists every one, or an editor flags a valid setting as an
    # error (dispatch.journal.integrity_check and copy_window were, before).
    known: list[set[str]] = []

    def close(word: str, options: set[str] | frozenset[str]) -> str | None:
        if word == "zz_not_a_key":
            known.append(set(options))
        return None

    monkeypatch.setattr(yamlsource, "_close", close)
    doc = placed(path, {"zz_not_a_key": 1})
    assert list(CONFIG.iter_errors(doc)), path
    assert "unknown key 'zz_not_a_key'" in loader_says(doc, tmp_path), path
    # A peer's family is the relationship's: refused with its own message before the keys are checked.
    listed = set(section["properties"]) | ({"family"} if "peers" in path else set())
    assert known and listed >= known[-1], (path, known[-1] - listed)
    # Every key the schema lists: the loader may dislike the value, never the key.
    for key in section["properties"]:
        said = loader_says(placed(path, {key: copy.deepcopy({"zz": 1})}), tmp_path)
        assert f"unknown key {key!r}" not in said, (path, key, said)


WRONG_CONFIGS = {
    "unknown top-level key": {"listner": {}},
    "listen is not a list": {"listener": {"listen": "0.0.0.0:162"}},
    "unknown log level": {"service": {"log": {"level": "loud"}}},
    "unknown mode": {"mode": "sometimes"},
    "unknown transport": {"kea": {"endpoints": {"k": {"transport": "carrier-pigeon", "socket": "/x"}}}},
    "unknown journal sync": {"dispatch": {"journal": {"synchronous": "maybe"}}},
}


@pytest.mark.parametrize("case", sorted(WRONG_CONFIGS))
def test_a_wrong_trapd_yaml_is_refused_by_the_schema_and_by_the_loader(case: str, tmp_path: Path) -> None:
    doc = WRONG_CONFIGS[case]
    assert list(CONFIG.iter_errors(doc)), case
    assert loader_says(doc, tmp_path), case


def test_the_config_schema_knows_the_settings_plugins_declare() -> None:
    # An editor flagged nothing under actions: (any mapping passed): a misspelt exec setting was
    # found by `trapd check`, never as it was typed.
    config = {"actions": {"exec": {"inherit_evn": True}}}
    errors = [e.message for e in CONFIG.iter_errors(config)]
    assert any("inherit_evn" in e for e in errors), errors
    good = {"actions": {"exec": {"inherit_env": True, "path": "/usr/bin", "env": {"T": {"file": "/x"}}}}}
    assert [e.message for e in CONFIG.iter_errors(good)] == []
    assert [e.message for e in CONFIG.iter_errors({"actions": {"acme.own": {"anything": 1}}})] == []


WHOLE_FLOATS = {
    "dispatch.workers": {"dispatch": {"workers": 4.0}},
    "dispatch.queue_size": {"dispatch": {"queue_size": 1000.0}},
    "service.workers": {"service": {"workers": 2.0}},
}


@pytest.mark.parametrize("case", sorted(WHOLE_FLOATS))
def test_a_whole_float_passes_the_schema_and_the_loader(case: str, tmp_path: Path) -> None:
    """JSON Schema's integer takes 4.0, so an editor passed `workers: 4.0` that trapd refused
    ('must be int, got float'); 4.5 is refused by both."""
    doc = WHOLE_FLOATS[case]
    assert not list(CONFIG.iter_errors(doc)), case
    assert loader_says(doc, tmp_path) == "", case
    section, key = case.split(".")
    half = {section: {key: doc[section][key] + 0.5}}
    assert list(CONFIG.iter_errors(half)), case
    assert loader_says(half, tmp_path), case
