"""The sample rules pass `trapd check`; a dhcp-disable without max-period does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from trapd.cli import main as trapd

HERE = Path(__file__).parent


def test_example_rules_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert trapd(["check", str(HERE / "example.yaml")]) == 0
    captured = capsys.readouterr()
    assert "OK: " in captured.out + captured.err


def test_dhcp_disable_without_max_period_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: off\n"
        "    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n"
        "      - action: kea.dhcp-disable\n"
        "        cap: {limit: 1, per: 5m}\n"
    )
    assert trapd(["check", str(rules)]) == 1
    captured = capsys.readouterr()
    expected = f"{rules}:5:17: error: kea.dhcp-disable needs the parameter 'max-period'"
    assert expected in captured.out + captured.err


def test_disable_and_enable_of_one_server_are_ordered(capsys: pytest.CaptureFixture[str]) -> None:
    """The uplink example's dhcp-disable and dhcp-enable share one ordering key.

    Without it the default keys differ (each starts with its action's name), so a disable
    retried while Kea was unreachable could run after the enable of a later linkUp and leave
    DHCP off until max-period.
    """
    import json

    keys = {}
    for trap in ("IF-MIB::linkDown", "IF-MIB::linkUp"):
        assert trapd(["test", "-r", str(HERE / "example.yaml"), "--format", "json", trap,
                      "from", "192.0.2.1", "ifIndex=49"]) == 0  # fmt: skip
        for rule in json.loads(capsys.readouterr().out)["rules"]:
            for planned in rule["planned"]:
                keys[planned["action"]] = planned["key"]
    assert keys["kea.dhcp-disable"] == keys["kea.dhcp-enable"], keys
