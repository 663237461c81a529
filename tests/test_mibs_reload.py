"""A MIB file added to the MIB directory is loaded by ``systemctl reload`` (SIGHUP), not only by a restart.

An operator who drops a vendor's MIB into /etc/trapd/mibs and reloads with a rule that names its
notification expects the reload to take both. It used to refuse the rule ("unknown MIB symbol")
until a restart, with an error that told them to load the MIB they had just added.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send
from test_mibs import VENDOR_MIB

pytestmark = [pytest.mark.integration, needs_netsnmp]

LINK_DOWN_RULE = """\
rules:
  - name: port-down
    match: {notification: IF-MIB::linkDown}
    actions: [{action: log, level: warning, message: "down {{ ifIndex }}"}]
"""

MAC_RULE = """\
  - name: mac
    match:
      notification: TRAPD-TEST-MIB::trapdMacNotification
      varbinds: {trapdMacChange: removed}
    actions: [{action: log, level: warning, message: "mac {{ trapdMacChange }} on {{ ifIndex }}"}]
"""

MAC_NOTIFICATION = "1.3.6.1.4.1.99999.0.1"
MAC_CHANGE = "1.3.6.1.4.1.99999.1.2.0"
IF_INDEX_7 = "1.3.6.1.2.1.2.2.1.1.7"


def reload(d: TrapdDaemon) -> dict[str, str]:
    assert d.notify is not None
    d.notify.pending()
    d.signal(signal.SIGHUP)
    d.notify.wait_for("RELOADING", timeout=30)
    return d.notify.wait_for("READY", timeout=120)  # the reload compiles the new MIB (seconds)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_mib_added_before_a_reload_is_loaded_by_it(tmp_path: Path, workers: int) -> None:
    mibs = tmp_path / "mibs"
    mibs.mkdir()
    config = {"mibs": {"dirs": [str(mibs)]}, "service": {"workers": workers}}
    d = TrapdDaemon.start(tmp_path / "d", rules=LINK_DOWN_RULE, config=config, timeout=60)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1), check=True)
        d.wait_log("down 1")

        (mibs / "trapd-test.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
        d.rules_path.write_text(LINK_DOWN_RULE + MAC_RULE)
        ready = reload(d)
        assert "failed" not in ready.get("STATUS", ""), ready
        d.wait_log("reloaded", timeout=30)

        trap = ["-v", "2c", "-c", "public", d.target(), "", MAC_NOTIFICATION]
        snmp_send("snmptrap", *trap, IF_INDEX_7, "i", "7", MAC_CHANGE, "i", "2", check=True)
        # The rule matched by the enum label, and the trap was named by the new MIB.
        (line,) = d.wait_log("mac 2 on 7", timeout=30)
        assert line["trap"] == "TRAPD-TEST-MIB::trapdMacNotification", line
        snmp_send("snmptrap", *link_down(d.target(), 2), check=True)
        d.wait_log("down 2")  # the rules of before still work
    finally:
        d.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_start_that_compiles_site_mibs_keeps_systemd_waiting(tmp_path: Path, workers: int) -> None:
    """The first start after a vendor bundle arrives compiles it before READY=1: minutes for a
    thousand of Cisco's MIBs, past systemd's default 90 s start timeout, after which systemd killed
    trapd (and Restart= began the compile again). trapd asks for more time while it compiles."""
    mibs = tmp_path / "mibs"
    mibs.mkdir()
    (mibs / "trapd-test.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    config = {"mibs": {"dirs": [str(mibs)]}, "service": {"workers": workers}}
    d = TrapdDaemon.start(tmp_path / "d", rules=LINK_DOWN_RULE, config=config, timeout=120)
    try:
        assert d.notify is not None
        ready = next(i for i, m in enumerate(d.notify.messages) if "READY" in m)
        before = d.notify.messages[:ready]
        extend = [m for m in before if "EXTEND_TIMEOUT_USEC" in m]
        assert extend, d.notify.messages
        assert int(extend[0]["EXTEND_TIMEOUT_USEC"]) >= 30_000_000
        assert any("compiling site MIBs" in m.get("STATUS", "") for m in before), before
    finally:
        d.stop()


def test_a_reloads_mib_compile_killed_under_the_supervisor_says_so(tmp_path: Path) -> None:
    """With service.workers > 1 the supervisor compiles changed MIB files for a reload, in a child.
    Its SIGCHLD handler reaped every child, that one too, so the compile's wait found no child and
    took status 0: a compile killed by the OOM killer was reported as a missing output file
    ('FileNotFoundError') instead of 'killed by SIGKILL: most likely out of memory'."""
    import os
    import threading
    import time

    mibs = tmp_path / "mibs"
    mibs.mkdir()
    config = {"mibs": {"dirs": [str(mibs)]}, "service": {"workers": 2}}
    d = TrapdDaemon.start(tmp_path / "d", rules=LINK_DOWN_RULE, config=config, timeout=60)
    killed: list[int] = []

    def kill_the_compiler() -> None:
        assert d.proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for proc in Path("/proc").iterdir():
                try:
                    ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                    if ppid == d.proc.pid and b"trapd.mibcompile" in (proc / "cmdline").read_bytes():
                        os.kill(int(proc.name), signal.SIGKILL)
                        killed.append(int(proc.name))
                        return
                except (OSError, ValueError, IndexError):
                    continue
            time.sleep(0.01)

    try:
        (mibs / "trapd-test.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
        killer = threading.Thread(target=kill_the_compiler)
        killer.start()
        try:
            reload(d)
        finally:
            killer.join()
        assert killed
        problems = [e for e in d.logs() if str(e.get("event", "")).startswith("MIB problem")]
        assert any("killed by SIGKILL" in str(e.get("problem")) for e in problems), problems
    finally:
        d.stop()
