"""trapd.kea.pairview: where two hosts' Kea endpoints differ in a way that changes what runs."""

from __future__ import annotations

from pathlib import Path

from trapd.kea.config import KeaConfig
from trapd.kea.pairview import differences, rule_differences, view
from trapd.yamlsource import load_yaml

PAIR = """\
kea:
  endpoints:
    pair4:
      family: v4
      peers:
        - {{name: server1, transport: unix, socket: /run/kea/k4}}
        - {{name: server2, transport: control-agent, url: "https://10.0.0.12:8000/"}}{extra}
"""


def kea(extra: str = "") -> KeaConfig:
    return KeaConfig.from_yaml(load_yaml(PAIR.format(extra=extra), "trapd.yaml")["kea"], Path("/etc/trapd"))


def test_the_same_servers_reached_otherwise_are_no_difference() -> None:
    other = KeaConfig.from_yaml(
        load_yaml(PAIR.format(extra="").replace("/run/kea/k4", "/other"), "t.yaml")["kea"], Path("/")
    )
    assert differences(view(kea()), {"dhcp2": view(other)}) == []


def test_a_peer_an_endpoint_or_a_default_on_one_host_only_is_said() -> None:
    third = "\n        - {name: server3, transport: unix, socket: /run/kea/k3}"
    (line,) = differences(view(kea(third)), {"dhcp2": view(kea())})
    assert "server3" in line and "this host's" in line
    (line,) = differences(view(kea()), {"dhcp1": view(kea(third))})
    assert "server3" in line and "'dhcp1''s" in line
    got = differences(view(kea()), {"dhcp2": view(None)})
    assert any("'pair4'" in g and "not in 'dhcp2'" in g for g in got), got
    assert any("default v4" in g for g in got), got


def test_a_view_that_cannot_be_read_is_said_not_trusted() -> None:
    for text in ("{", "[]", '{"endpoints": 1}', "x" * 100_000):
        (line,) = differences(view(kea()), {"dhcp2": text})
        assert "cannot be read" in line


def test_the_rules_digest_is_what_the_rules_say_with_the_mode(tmp_path: Path) -> None:
    """Two hosts compare their rules by digest: a comment, key order or quoting is no difference;
    a parameter or the mode is. An older trapd publishes none: nothing to compare."""
    from rules_support import ruleset

    text = "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
    text += "    actions: [{action: log, message: a}]\n"
    same = "# copy\nrules:\n  - match: {notification: 'IF-MIB::linkDown'}\n    name: r\n    actions:\n"
    same += '      - {message: "a", action: log}\n'
    a, b = ruleset(tmp_path, text).digest, ruleset(tmp_path, same).digest
    assert a and a == b
    assert ruleset(tmp_path, text.replace("message: a", "message: b")).digest != a
    assert ruleset(tmp_path, text, global_mode="dry-run").digest != a
    assert rule_differences(view(kea(), a), {"dhcp2": view(kea(), b)}) == []
    (line,) = rule_differences(view(kea(), a), {"dhcp2": view(kea(), "0" * 32)})
    assert "'dhcp2' loads other rules" in line
    assert rule_differences(view(kea(), a), {"dhcp2": view(kea())}) == []
