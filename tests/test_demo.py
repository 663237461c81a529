"""The README's main job (scripts/demo.py) works on this machine and leaves nothing behind.

It is the first thing a new user runs: a real Kea, the example rules.yaml
unchanged, real traps from snmptrap, leases deleted or kept as the rules say.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo creates a network namespace: needs root")
def test_demo_deletes_what_the_example_rules_say_and_cleans_up() -> None:
    # Only this run's namespace and processes are looked for: another demo may run beside it.
    demo = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = demo.communicate(timeout=180)
    finally:
        if demo.returncode is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, out[-3000:] + err[-3000:]
    assert "Result: as expected" in out
    # The MAC-removed rule deleted the phone's leases in both subnets; the journal shows why.
    assert "mac-removed-delete-lease" in out and "done" in out
    # The flap was cancelled by the linkUp; the port that stayed down waits in the journal.
    assert "cancelled" in out and "scheduled" in out
    assert 'trapd_rule_matches_total{rule="access-port-up-cancel"} 1.0' in out
    # The forged trap ('1.2.3.4; reboot' where MAC entries belong) was rejected, said why, and
    # nothing of it reached Kea: the one Kea action that ran is the phone's deletion.
    assert 'trapd_actions_rejected_total{reason="decoder",rule="mac-removed-delete-lease"} 1.0' in out
    assert "action not dispatched: rejected (decoder)" in out and "truncated tuple" in out
    assert 'trapd_actions_total{outcome="done",plugin="kea.lease-del"} 1.0' in out
    assert "forged '1.2.3.4; reboot': rejected, nothing sent to Kea" in out
    assert f"trapd-demo-{demo.pid}" not in _netns()  # the demo's namespace is gone (demo.py names it)
    work = re.search(r"its log: (\S+)/trapd\.log", out)
    assert work is not None, out[-3000:]
    leftovers = subprocess.run(["pgrep", "-f", work.group(1)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == ""  # no Kea or trapd left running


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo creates a network namespace: needs root")
def test_a_demo_stopped_by_sigterm_leaves_nothing_behind() -> None:
    # `timeout`, `kill` or a CI job's cancel send SIGTERM: the demo's own clean-up must still run.
    demo = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert demo.stdout is not None
    work = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # a line at a time, until trapd is up (or the demo ends)
            line = demo.stdout.readline()
            if not line:
                break
            found = re.search(r"its log: (\S+)/trapd\.log", line)
            if found:
                work = found.group(1)
                break
        assert work is not None, "the demo never said trapd was ready"
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.returncode is None:
            demo.kill()
            demo.communicate()
    assert "(demo finished" in rest  # its finally ran
    assert f"trapd-demo-{demo.pid}" not in _netns()
    leftovers = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == ""
    assert not Path(work).exists()
