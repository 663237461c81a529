"""The main job, shown end to end on this machine, then cleaned up.

1. A private Kea 2.2 on loopback: unix control socket, memfile leases in a temp dir.
2. A few leases, as a DHCP server would hold them for clients on an access switch
   (with option 82 stored, as Kea does with store-extended-info).
3. ``trapd run`` with the example rules.yaml, unchanged.
4. Real traps from net-snmp's snmptrap, sent *from the access switch's address*:
   the rules only act on traps from access-switches (10.20.0.0/16). So trapd
   and the sender run in a private network namespace whose loopback also
   carries 10.20.1.5; nothing leaves the machine and the host's own network
   is not touched. Kea stays outside: its unix socket works across namespaces.
   One of them is forged: a MAC notification whose message is the text
   ``1.2.3.4; reboot`` instead of MAC entries. It is rejected, and nothing of
   it reaches Kea.
5. The leases before and after, what the journal recorded, the rejection.

Run it through scripts/demo.sh (which sets the machine up first), as root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from benchproc import sigterm_unwinds  # noqa: E402
from kea_sandbox import KeaInstance, start_kea  # noqa: E402

TRAPD = REPO / ".venv" / "bin" / "trapd"
SWITCH = "10.20.1.5"  # an access switch, per rules.yaml's `sources:`
TRAP_PORT = 1162
METRICS_PORT = 19163  # inside the namespace, so it cannot clash with a trapd on the host
NETNS = f"trapd-demo-{os.getpid()}"

LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
LINK_UP = "1.3.6.1.6.3.1.1.5.4"
IF_INDEX, IF_DESCR = "1.3.6.1.2.1.2.2.1.1", "1.3.6.1.2.1.2.2.1.2"
IF_ADMIN, IF_OPER = "1.3.6.1.2.1.2.2.1.7", "1.3.6.1.2.1.2.2.1.8"
CMN_MAC_CHANGED = "1.3.6.1.4.1.9.9.215.2.0.1"
CMN_HIST_MSG = "1.3.6.1.4.1.9.9.215.1.1.8.1.2"

HOSTILE = "1.2.3.4; reboot"  # what a forged or broken trap may carry where a value belongs
PHONE_MAC = "00:1b:54:aa:01:17"  # leaves its port: its leases go after the rule's 30 s grace
FLAP_MAC = "00:1b:54:aa:02:17"  # behind Gi1/0/17, which flaps: its lease stays
DOWN_MAC = "00:1b:54:aa:03:18"  # behind Gi1/0/18, which stays down: deletion scheduled (2 min)


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def relay_info(circuit: str, remote: str) -> dict[str, Any]:
    """user-context as Kea 2.2 stores option 82: hex of the sub-options (1 circuit-id, 2 remote-id)."""
    c, r = circuit.encode(), remote.encode()
    subs = bytes([1, len(c)]) + c + bytes([2, len(r)]) + r
    return {"ISC": {"relay-agent-info": "0x" + subs.hex().upper()}}


def show_leases(kea: KeaInstance, ips: list[str]) -> None:
    for ip in ips:
        lease = kea.lease4(ip)
        if lease is None:
            print(f"  {ip:<12} (no lease)")
        else:
            print(f"  {ip:<12} {lease['hw-address']}  {lease.get('hostname', '')}")


def in_netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def snmptrap(*args: str, show: int = 1) -> None:
    cmd = in_netns("snmptrap", f"--clientaddr={SWITCH}", "-v", "2c", "-c", "public",
                   f"127.0.0.1:{TRAP_PORT}", "", *args)  # fmt: skip
    print("  $ snmptrap -v 2c -c public ... " + " ".join(repr(a) if " " in a else a for a in args[:show]))
    subprocess.run(cmd, check=True)


def port_trap(oid: str, if_index: int, descr: str, oper: int) -> None:
    snmptrap(oid, f"{IF_INDEX}.{if_index}", "i", str(if_index), f"{IF_DESCR}.{if_index}", "s", descr,
             f"{IF_ADMIN}.{if_index}", "i", "1", f"{IF_OPER}.{if_index}", "i", str(oper))  # fmt: skip


def mac_removed(mac: str, vlan: int, port: int) -> None:
    # cmnHistMacChangedMsg: operation(1) VLAN(2) MAC(6) dot1dBasePort(2), then 0 ends the list.
    msg = bytes([2]) + vlan.to_bytes(2, "big") + bytes.fromhex(mac.replace(":", "")) + port.to_bytes(2, "big")
    snmptrap(CMN_MAC_CHANGED, f"{CMN_HIST_MSG}.1", "x", (msg + b"\x00").hex())


def metric_lines(prefixes: tuple[str, ...]) -> list[str]:
    """The lines of trapd's /metrics (served inside the namespace) that start with one of ``prefixes``."""
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    fetch = f"import urllib.request as u; print(u.urlopen({url!r}).read().decode())"
    text = subprocess.run(in_netns(sys.executable, "-c", fetch), capture_output=True, text=True, check=False)
    return [line for line in text.stdout.splitlines() if line.startswith(prefixes)]


def metric(lines: list[str], sample: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(sample))


EVENT_ID = re.compile(r"event_id=(\S+)")


def rejection_lines(log: Path) -> list[str]:
    """The daemon's "action not dispatched" lines (console format), one per rejected action."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line.strip() for line in text.splitlines() if "action not dispatched" in line]


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates a network namespace)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="trapd-demo-"))
    kea: KeaInstance | None = None
    trapd: subprocess.Popen[bytes] | None = None
    try:
        say("1. A private Kea 2.2 on loopback (unix socket, leases in a temp dir)")
        kea = start_kea(work / "kea", dhcp6=False, ca=False)
        print(f"  control socket {kea.dhcp4_socket}")

        say("2. Leases of clients behind access switch " + SWITCH)
        phone = [kea.next_ip4(1), kea.next_ip4(2)]  # the same phone, two subnets (voice + data)
        for ip in phone:
            kea.add_lease4(ip, PHONE_MAC, hostname="phone-17")
        flap = kea.next_ip4(1)
        kea.add_lease4(flap, FLAP_MAC, hostname="pc-17",
                       **{"user-context": relay_info("GigabitEthernet1/0/17", SWITCH)})  # fmt: skip
        down = kea.next_ip4(1)
        kea.add_lease4(down, DOWN_MAC, hostname="pc-18",
                       **{"user-context": relay_info("GigabitEthernet1/0/18", SWITCH)})  # fmt: skip
        ips = [*phone, flap, down]
        show_leases(kea, ips)

        say(
            "3. trapd run with the example rules.yaml (in a namespace where loopback also carries "
            + SWITCH
            + ")"
        )
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        subprocess.run(in_netns("ip", "link", "set", "lo", "up"), check=True)
        subprocess.run(in_netns("ip", "addr", "add", f"{SWITCH}/32", "dev", "lo"), check=True)
        config = {
            "listener": {"listen": [f"127.0.0.1:{TRAP_PORT}"], "communities": ["public"]},
            "rules": {"files": [str(REPO / "rules.yaml")]},
            "state_dir": str(work / "state"),
            "kea": {
                "endpoints": {
                    "local4": {"transport": "unix", "socket": str(kea.dhcp4_socket), "family": "v4"}
                }
            },
            "service": {"metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}, "log": {"format": "console"}},
        }
        (work / "trapd.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        subprocess.run([TRAPD, "check", "--config", work / "trapd.yaml"], check=True)
        log = (work / "trapd.log").open("wb")
        trapd = subprocess.Popen(in_netns(str(TRAPD), "run", "--config", str(work / "trapd.yaml")),
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        if not wait_for(lambda: b"trapd ready" in (work / "trapd.log").read_bytes(), 20):
            print((work / "trapd.log").read_text(), file=sys.stderr)
            return 1
        print(f"  trapd is ready; its log: {work / 'trapd.log'}")

        say("4. Real traps from the switch")
        print("  Gi1/0/17 goes down and comes back 2 s later (a flap: the pending deletion is cancelled)")
        port_trap(LINK_DOWN, 10017, "GigabitEthernet1/0/17", 2)
        time.sleep(2)
        port_trap(LINK_UP, 10017, "GigabitEthernet1/0/17", 1)
        print("  Gi1/0/18 goes down and stays down (its clients' leases go after 2 minutes)")
        port_trap(LINK_DOWN, 10018, "GigabitEthernet1/0/18", 2)
        print(f"  the phone {PHONE_MAC} leaves its port (Cisco MAC change notification, 'removed')")
        mac_removed(PHONE_MAC, vlan=20, port=17)
        print(f"  a forged MAC change notification: its message is the text {HOSTILE!r}, not MAC entries")
        snmptrap(CMN_MAC_CHANGED, f"{CMN_HIST_MSG}.1", "s", HOSTILE, show=4)
        rejected = 'trapd_actions_rejected_total{reason="decoder",rule="mac-removed-delete-lease"}'
        wait_for(lambda: metric(metric_lines(("trapd_actions_rejected",)), rejected) >= 1, 20)
        wait_for(lambda: bool(rejection_lines(work / "trapd.log")), 20)
        print("  trapd's log says why it did nothing with it:")
        for line in rejection_lines(work / "trapd.log"):
            print("    " + line)
        forged = {m.group(1) for m in map(EVENT_ID.search, rejection_lines(work / "trapd.log")) if m}

        say("5. Waiting for the 30 s grace of mac-removed-delete-lease")
        gone = wait_for(lambda: all(kea.lease4(ip) is None for ip in phone), 45)  # type: ignore[union-attr]
        show_leases(kea, ips)
        print("\n  The journal (what trapd did and will do, and why):")
        subprocess.run([TRAPD, "journal", "--state-dir", work / "state", "history"], check=False)
        print("\n  Some of trapd's metrics (http://127.0.0.1:9163/metrics in production):")
        shown = ("trapd_notifications_received", "trapd_rule_matches", "trapd_actions")
        metrics = metric_lines(shown)
        for line in metrics:
            print("  " + line)
        # The forged trap was rejected, and nothing of it reached Kea: no action of its event was
        # journaled (trapd runs nothing it has not journaled first).
        journaled = subprocess.run(
            [TRAPD, "journal", "--state-dir", work / "state", "--json", "history"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        events = {json.loads(line)["event_id"] for line in journaled.splitlines() if line.strip()}
        refused = metric(metrics, rejected) == 1 and len(forged) == 1 and not forged & events
        ok = gone and kea.lease4(flap) is not None and kea.lease4(down) is not None and refused
        say("Result: " + ("as expected" if ok else "NOT as expected"))
        print("  phone (both subnets): " + ("deleted after the 30 s grace" if gone else "NOT deleted"))
        print("  pc-17 (port flapped):  kept, the linkUp cancelled its deletion")
        print("  pc-18 (port down):     kept for now, deletion scheduled in the journal")
        print(f"  forged {HOSTILE!r}: " + ("rejected, nothing sent to Kea" if refused else "NOT rejected"))
        return 0 if ok else 1
    finally:
        if trapd is not None:
            trapd.send_signal(signal.SIGTERM)
            try:
                trapd.wait(15)
            except subprocess.TimeoutExpired:
                trapd.kill()
        subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL, check=False)
        if kea is not None:
            kea.stop()
        shutil.rmtree(work, ignore_errors=True)
        print("\n(demo finished: trapd, Kea and the namespace are stopped and removed)")


if __name__ == "__main__":
    # SIGTERM (timeout, kill, a CI cancel) unwinds like ^C, so main's finally stops trapd and
    # Kea and removes the namespace; it used to leave all three behind.
    with sigterm_unwinds():
        sys.exit(main())
