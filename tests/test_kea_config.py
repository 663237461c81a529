"""The kea: section of trapd.yaml and how an action's endpoint is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from trapd.kea.client import KeaClients
from trapd.kea.config import KeaConfig
from trapd.kea.errors import KeaPermanentError
from trapd.yamlsource import ConfigError, load_yaml

FULL = """\
kea:
  default: {v4: local4}
  endpoints:
    local4: {transport: unix, socket: /run/kea/kea4-ctrl-socket, family: v4}
    local6: {transport: unix, socket: kea6.sock, family: v6}
    ca:
      transport: control-agent
      url: https://dhcp1:8000/
      family: [v4, v6]
      user: trapd
      password: {env: TRAPD_TEST_KEA_PW}
      timeout: 2.5
    kea3: {transport: http, url: "http://127.0.0.1:8001/", family: v4, pool_size: 2}
"""


def parse(text: str, base: Path = Path("/etc/trapd")) -> KeaConfig:
    return KeaConfig.from_yaml(load_yaml(text, "trapd.yaml")["kea"], base)


def test_full_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAPD_TEST_KEA_PW", "s3cret-pw")
    cfg = parse(FULL)
    assert list(cfg.endpoints) == ["local4", "local6", "ca", "kea3"]
    assert cfg.endpoints["local6"].socket == Path("/etc/trapd/kea6.sock")  # relative to the config file
    ca = cfg.endpoints["ca"]
    assert ca.families == ("v4", "v6") and ca.timeout == 2.5 and ca.user == "trapd"
    assert ca.password is not None and ca.password.reveal() == "s3cret-pw"
    assert "s3cret-pw" not in repr(ca)
    assert cfg.endpoints["kea3"].pool_size == 2
    # choice: default per family, else the first endpoint of the family
    assert cfg.endpoint_for("v4") is cfg.endpoints["local4"]
    assert cfg.endpoint_for("v6") is cfg.endpoints["local6"]


def test_client_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAPD_TEST_KEA_PW", "x")
    clients = KeaClients(parse(FULL))
    assert len(clients) == 5  # the CA serves both families
    assert clients.get().name == "local4"
    assert clients.get(family="v6").name == "local6"
    ca6 = clients.get("ca", "v6")
    assert ca6.service == "dhcp6" and clients.get("ca").service == "dhcp4"
    assert ca6.transport is clients.get("ca", "v4").transport  # one pool for both
    with pytest.raises(KeaPermanentError, match="no Kea endpoint named 'nope'"):
        clients.get("nope")
    with pytest.raises(KeaPermanentError, match="serves v4, not v6"):
        clients.get("kea3", "v6")


def test_encoding_per_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAPD_TEST_KEA_PW", "x")
    clients = KeaClients(parse(FULL))
    assert clients.get("ca", "v6").encode("lease6-get", {"ip-address": "::1"}) == (
        b'{"command":"lease6-get","service":["dhcp6"],"arguments":{"ip-address":"::1"}}'
    )
    assert clients.get("kea3").encode("status-get") == b'{"command":"status-get"}'  # Kea 3 needs no service
    assert clients.get("local4").encode("status-get") == b'{"command":"status-get"}'


def test_no_section_means_no_endpoints() -> None:
    cfg = KeaConfig.from_yaml(None, Path("/"))
    assert cfg.endpoints == {} and cfg.endpoint_for("v4") is None
    with pytest.raises(KeaPermanentError, match="no Kea endpoint for v4"):
        KeaClients(cfg).get()


@pytest.mark.parametrize(
    ("text", "error", "position"),
    [
        ("kea:\n  endpoint: {}\n", "unknown key 'endpoint' in kea (did you mean 'endpoints'?)", "2:3"),
        ("kea:\n  endpoints:\n    a: {transport: tcp, family: v4}\n", "transport must be one of", "3:20"),
        ("kea:\n  endpoints:\n    a: {transport: unix, family: v4}\n", "needs socket", "3:8"),
        ("kea:\n  endpoints:\n    a: {transport: unix, socket: /s, family: v5}\n", "family must be", "3:46"),
        (
            "kea:\n  endpoints:\n    a: {transport: unix, socket: /s, family: [v4, v6]}\n",
            "only a control-agent",
            "3:46",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: unix, socket: /s, family: v4, url: http://x/}\n",
            "unknown key 'url'",
            "3:50",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: http, url: 'ftp://x/', family: v4}\n",
            "must be http",
            "3:31",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: http, url: 'http://u:p@x/', family: v4}\n",
            "credentials in user/password",
            "3:31",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: http, url: 'http://x/', family: v4, user: u}\n",
            "needs both user and password",
            "3:8",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: http, url: 'http://x/', family: v4, ca_file: /c.pem}\n",
            "need an https:// url",
            "3:31",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: http, url: 'https://x/', family: v4, ca_file: /no.pem}\n",
            "no such file",
            "3:66",
        ),
        (
            "kea:\n  endpoints:\n    a: {transport: http, url: 'http://x/', family: v4, timeout: 0}\n",
            "timeout must be positive",
            "3:65",
        ),
        (
            "kea:\n  default: b\n  endpoints:\n    a: {transport: http, url: 'http://x/', family: v4}\n",
            "no endpoint named 'b'",
            "2:12",
        ),
        (
            "kea:\n  default: {v6: a}\n  endpoints:\n    a: {transport: http, url: 'http://x', family: v4}\n",
            "does not serve v6",
            "2:17",
        ),
    ],
)
def test_errors_say_where(text: str, error: str, position: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert error in info.value.message
    assert str(info.value.mark) == f"trapd.yaml:{position}"
