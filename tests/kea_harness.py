"""A real Kea 2.2 on loopback for the tests: start, wait until it answers, stop.

Loaded as a pytest plugin (``-p kea_harness`` in pyproject), so its fixtures
are shared by tests/ and the plugins' own tests in actions/:

- ``kea``: the session's Kea (kea-dhcp4 + kea-dhcp6 + kea-ctrl-agent, unix
  control sockets, memfile leases, lease_cmds hook, ``interfaces: []`` so no
  DHCP socket is opened). Tests share it, so each test takes its own
  addresses from ``kea.next_ip4()`` / ``kea.next_ip6()``.
- ``kea_factory``: starts extra instances for one test (no hook, basic
  auth, TLS, DDNS, one to be stopped); they are stopped after the test.
- ``kea_trapd_config``: the ``kea:`` section of trapd.yaml for the session's
  Kea (both transports), for end-to-end tests to reuse.

Everything runs from a tmp dir: sockets, lease files, logs, pid files
(KEA_PIDFILE_DIR / KEA_LOCKFILE_DIR point there). Kea 2.2 accepts any path;
2.6.3+ needs the KEA_*_DIR variables, which :func:`start_kea` sets too so the
same code drives a chroot's Kea (``chroot`` argument).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The sandbox itself lives in kea_sandbox.py (no pytest there, so scripts/demo.py can use it);
# these names are re-exported because tests import them from here.
from kea_sandbox import (
    Bind,
    DdnsTarget,
    KeaInstance,
    TlsFiles,
    dhcp_discover,
    free_port,
    make_tls_files,
    start_bind,
    start_kea,
)

__all__ = ["Bind", "DdnsTarget", "KeaInstance", "TlsFiles", "dhcp_discover", "free_port", "start_kea"]

# --- the opt-in tier: Kea 2.6.3 / 3.0.4 in chroots ---

CHROOT_BASE = Path(os.environ.get("TRAPD_KEA_CHROOT_BASE", "/var/cache/trapd-kea-chroots"))
CHROOT_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kea-chroots.sh"
CHROOT_VERSIONS = {"trixie": "2.6.3", "sid": "3.0.4"}


def ensure_chroots() -> None:
    """Skip unless TRAPD_KEA_CHROOTS=1; build the chroots when they are missing."""
    if os.environ.get("TRAPD_KEA_CHROOTS") != "1":
        pytest.skip("opt-in tier: set TRAPD_KEA_CHROOTS=1 (builds Kea 2.6.3 / 3.0.4 chroots when missing)")
    ready = (
        (CHROOT_BASE / s / ".trapd-ready").exists() and (CHROOT_BASE / s / "usr/sbin/kea-dhcp-ddns").exists()
        for s in CHROOT_VERSIONS
    )
    if all(ready):  # else the script builds what is missing (kea-dhcp-ddns joined the packages later)
        return
    r = subprocess.run([str(CHROOT_SCRIPT), str(CHROOT_BASE)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"scripts/kea-chroots.sh failed:\n{r.stdout}\n{r.stderr}")


# --- fixtures ---


def kea_available() -> bool:
    return all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in ("kea-dhcp4", "kea-ctrl-agent"))


@pytest.fixture(scope="session")
def kea(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeaInstance]:
    """The session's Kea 2.2: dhcp4 + dhcp6 + CA, unix sockets, lease_cmds."""
    if not kea_available():
        pytest.skip("Kea is not installed")
    # Unix socket paths are limited to 107 bytes: keep the directory short.
    inst = start_kea(Path(tmp_path_factory.mktemp("kea")))
    yield inst
    inst.stop()


@pytest.fixture
def kea_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., KeaInstance]]:
    """``kea_factory(**start_kea_options)`` starts an extra Kea, stopped after the test."""
    if not kea_available():
        pytest.skip("Kea is not installed")
    started: list[KeaInstance] = []

    def make(**kw: Any) -> KeaInstance:
        inst = start_kea(Path(tmp_path_factory.mktemp("keax")), **kw)
        started.append(inst)
        return inst

    yield make
    for inst in started:
        inst.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def bind_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    if not Path("/usr/sbin/named").exists():
        pytest.skip("BIND is not installed")
    b = start_bind(Path(tmp_path_factory.mktemp("bind")))
    yield b
    b.stop()


@pytest.fixture
def kea_trapd_config(kea: KeaInstance) -> dict[str, Any]:
    """The ``kea:`` section of trapd.yaml for the session's Kea (unix by default, CA endpoints too)."""
    return kea.trapd_kea_section()


# --- building what an action gets ---


def make_kea_clients(section: dict[str, Any]) -> Any:
    """KeaClients from a ``kea:`` section given as a dict (parsed like trapd.yaml)."""
    from trapd.kea.client import KeaClients
    from trapd.kea.config import KeaConfig
    from trapd.yamlsource import load_yaml

    return KeaClients(KeaConfig.from_yaml(load_yaml(json.dumps(section), "<test>"), Path("/")))


def make_action_context(kea_clients: Any, rule: str = "test-rule") -> Any:
    """A plain ActionContext around ``kea_clients`` for calling an action's run() directly."""
    import httpx
    import structlog

    from trapd.event import Event, new_event_id
    from trapd.listener.raw import Security
    from trapd.plugin import ActionContext

    event = Event(
        id=new_event_id(),
        received_at=time.time(),
        source="127.0.0.1",
        source_port=50162,
        version="v2c",
        kind="trap",
        security=Security(community="public"),
        uptime=0,
        trap_oid=(1, 3, 6, 1, 6, 3, 1, 1, 5, 3),
        trap_name="IF-MIB::linkDown",
        varbinds=(),
    )
    return ActionContext(
        event=event,
        rule=rule,
        action_id="a1",
        log=structlog.get_logger("test"),
        kea=kea_clients,
        http=httpx.AsyncClient(),
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)
