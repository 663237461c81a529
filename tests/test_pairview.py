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


def test_the_same_rules_with_other_caps_or_mibs_are_said_apart(tmp_path: Path) -> None:
    """The rules digest covered the rules files only: two hosts with the same rules but other
    global caps (trapd.yaml) or other MIBs were called equal, though a notification then comes out
    otherwise depending on which host journals it first. Each is a digest of its own in the view;
    the same caps in another order, or the same MIBs loaded another way, are no difference."""
    from trapd.dispatch.config import DispatchConfig
    from trapd.mibs import MibResolver, shipped_index

    def dispatch(text: str) -> DispatchConfig:
        return DispatchConfig.from_yaml(load_yaml(text, "trapd.yaml"), Path("/etc/trapd"))

    two = "caps:\n  - {name: a, limit: 5, per: 1m}\n  - {name: b, limit: 9, per: 1h, actions: [exec]}\n"
    swapped = "caps:\n  - {name: b, limit: 9, per: 1h, actions: [exec]}\n  - {name: a, limit: 5, per: 1m}\n"
    caps = dispatch(two).caps_digest()
    assert caps == dispatch(swapped).caps_digest()
    assert caps != dispatch(two.replace("limit: 5", "limit: 6")).caps_digest()
    assert caps != dispatch("caps: []\n").caps_digest()
    assert dispatch("retry: {max_attempts: 2}\n").caps_digest() != dispatch("caps: []\n").caps_digest()

    shipped = MibResolver.from_index(shipped_index())
    mibs = shipped.digest()
    assert mibs == MibResolver.from_index(shipped_index()).digest()
    from trapd.mibs import MibConfig

    first = MibResolver.load(MibConfig(dirs=()), tmp_path)  # from the JSON index; writes the snapshot
    again = MibResolver.load(MibConfig(dirs=()), tmp_path)
    assert "snapshot" in again.sources and first.digest() == again.digest() == mibs
    site = {
        "format": 1,
        "modules": [["SITE-MIB", "1.3.6.1.4.1.99999", ""]],
        "syntaxes": [["Integer32", "", "", [["up", 1], ["down", 2]]]],
        "nodes": [[[1, 3, 6, 1, 4, 1, 99999, 1], 0, "siteState", "scalar", 0]],
    }
    extended = MibResolver.from_index(shipped_index())
    extended.add_index(site, "site MIBs", site=True)
    assert extended.digest() != mibs

    rules = "0" * 32
    here = view(kea(), rules, caps=caps, mibs=mibs)
    assert rule_differences(here, {"dhcp2": view(kea(), rules, caps=caps, mibs=mibs)}) == []
    (line,) = rule_differences(here, {"dhcp2": view(kea(), rules, caps="1" * 32, mibs=mibs)})
    assert "'dhcp2' has other global caps or retry defaults" in line and "dispatch.caps" in line
    (line,) = rule_differences(here, {"dhcp2": view(kea(), rules, caps=caps, mibs=extended.digest())})
    assert "'dhcp2' loads other MIBs" in line
    # An older trapd publishes the rules' digest alone: nothing else to compare.
    assert rule_differences(here, {"dhcp2": view(kea(), rules)}) == []
