"""Opt-in tier: the Kea actions against Kea 2.6.3 (Debian trixie) and 3.0.4 (Debian sid) in chroots.

    TRAPD_KEA_CHROOTS=1 .venv/bin/pytest tests/test_kea_chroot.py

Builds the chroots first when they are missing (scripts/kea-chroots.sh: about
a minute and 300 MB each, in $TRAPD_KEA_CHROOT_BASE or
/var/cache/trapd-kea-chroots). 2.6.3 is driven through its Control Agent and
unix sockets; 3.0.4 also through the daemons' own HTTP sockets, with basic
auth on the agent and the sockets; HTTPS with client certificates on the
agents and 3.0.4's own socket. kea.ddns-resend and lease-del's
update-ddns go through each version's kea-dhcp-ddns to the session's BIND 9.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kea_harness import (
    CHROOT_BASE,
    CHROOT_VERSIONS,
    Bind,
    DdnsTarget,
    KeaInstance,
    ensure_chroots,
    make_action_context,
    make_kea_clients,
    start_kea,
)

from trapd.kea.errors import KeaAuthError, KeaCommandError, KeaUnavailableError, KeaUnsupportedError
from trapd.kea.probe import probe
from trapd.kea.restore import leases_from_result, restore_leases
from trapd.params import validate
from trapd.plugin import ActionContext, PermanentError, load_actions

pytestmark = [pytest.mark.integration, pytest.mark.chroot]

BASE = CHROOT_BASE
VERSIONS = CHROOT_VERSIONS
TRANSPORTS = {"trixie": ("unix", "ca"), "sid": ("unix", "ca", "http")}
AUTH = {"sid": ("trapd", "chroot-pw-30")}
ACTIONS = load_actions()[0]


@pytest.fixture(scope="module", params=list(VERSIONS))
def chroot_kea(request: pytest.FixtureRequest) -> Iterator[KeaInstance]:
    ensure_chroots()
    suite: str = request.param
    root = BASE / suite
    workdir = Path(f"/tmp/trapd-kea-{os.getpid()}")
    inst = start_kea(workdir, chroot=root, http_sockets=suite == "sid", auth=AUTH.get(suite))
    yield inst
    inst.stop()
    shutil.rmtree(root / workdir.relative_to("/"), ignore_errors=True)


@pytest.fixture(params=["unix", "ca", "http"])
async def ctx(request: pytest.FixtureRequest, chroot_kea: KeaInstance) -> AsyncIterator[ActionContext]:
    suite = chroot_kea.chroot.name if chroot_kea.chroot else ""
    if request.param not in TRANSPORTS[suite]:
        pytest.skip(f"Kea {VERSIONS[suite]} has no {request.param} transport")
    clients = make_kea_clients(chroot_kea.trapd_kea_section(default_transport=request.param))
    c = make_action_context(clients)
    yield c
    await clients.aclose()
    await c.http.aclose()


async def run(name: str, ctx: ActionContext, **values: Any) -> dict[str, Any]:
    spec = ACTIONS[name]
    result = await spec.run(validate(spec.params, values), ctx)
    assert result is not None
    return result


MAC = iter(f"0a:00:27:c4:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(1, 60000))


async def test_probe(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    suite = chroot_kea.chroot.name if chroot_kea.chroot else ""
    for status in await probe(ctx.kea):
        assert status.reachable and status.error is None, status.error
        assert status.version == VERSIONS[suite] and status.lease_cmds
        if status.transport != "control-agent":  # each server's statistics name its family
            assert status.serves == status.family, status


async def test_lease_del_by_ip_and_restore(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    ip4, ip6, mac = chroot_kea.next_ip4(), chroot_kea.next_ip6(), next(MAC)
    chroot_kea.add_lease4(ip4, mac, hostname="c.example.org", **{"user-context": {"k": 1}})
    chroot_kea.add_lease6(ip6, "00:03:00:01:" + mac, 5)
    before4, before6 = chroot_kea.lease4(ip4), chroot_kea.lease6(ip6)
    r4 = await run("kea.lease-del", ctx, **{"ip-address": ip4})
    r6 = await run("kea.lease-del", ctx, **{"ip-address": ip6})
    assert r4["leases"] == [before4] and r6["leases"] == [before6]
    assert chroot_kea.lease4(ip4) is None and chroot_kea.lease6(ip6) is None
    assert (await run("kea.lease-del", ctx, **{"ip-address": ip4}))["not_found"]
    leases = leases_from_result(r4) + leases_from_result(r6)
    assert [o.status for o in await restore_leases(ctx.kea, leases)] == ["restored", "restored"]
    assert chroot_kea.lease4(ip4) == before4 and chroot_kea.lease6(ip6) == before6
    # Kea >= 2.6 answers a duplicate with result 4 (conflict)
    assert [o.status for o in await restore_leases(ctx.kea, leases)] == ["exists", "exists"]


async def test_restore_into_a_subnet_kea_no_longer_has_is_a_failure(
    chroot_kea: KeaInstance, ctx: ActionContext
) -> None:
    """Kea >= 2.6 answers result 4 (conflict) also for a subnet-id it does not have: not "exists".

    A lease recorded before its subnet was renumbered cannot go back; restore must say so
    (failed, exit 1) instead of reporting it as present again.
    """
    lease = {"ip-address": chroot_kea.next_ip4(), "hw-address": next(MAC), "subnet-id": 77,
             "valid-lft": 3600, "cltt": int(time.time())}  # fmt: skip
    [outcome] = await restore_leases(ctx.kea, [lease])
    assert outcome.status == "failed" and "subnet" in outcome.detail, outcome
    assert chroot_kea.lease4(lease["ip-address"]) is None


async def test_command_result_masks_trapd_password(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    """Kea 3.0's config-get lists its HTTP sockets' clients with their passwords, trapd's among them.

    kea.command's result is journaled and shown by `trapd journal show`: trapd's own Kea password
    (and any field named password) is masked there, the rest of Kea's answer kept.
    """
    import json

    suite = chroot_kea.chroot.name if chroot_kea.chroot else ""
    if suite not in AUTH:
        pytest.skip(f"Kea {VERSIONS[suite]} here has no password in its configuration")
    password = AUTH[suite][1]
    assert password in json.dumps(chroot_kea.cmd4("config-get"))  # what Kea itself answers
    result = await run("kea.command", ctx, command="config-get", family="v4")
    assert result["result"] == 0 and "Dhcp4" in result["arguments"]
    assert password not in json.dumps(result)


async def test_lease_del_by_mac_in_two_subnets(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    mac = next(MAC)
    a, b = chroot_kea.next_ip4(1), chroot_kea.next_ip4(2)
    chroot_kea.add_lease4(a, mac)
    chroot_kea.add_lease4(b, mac)
    result = await run("kea.lease-del", ctx, **{"hw-address": mac})
    assert result["deleted"] == 2 and chroot_kea.lease4(a) is None and chroot_kea.lease4(b) is None


async def test_lease_del_by_relay(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    port = f"xe-1/0/{next(chroot_kea._ip4)}".encode()
    subs = bytes([1, len(port)]) + port + bytes([2, 3]) + b"sw9"
    new_style = {
        "ISC": {"relay-agent-info": {"sub-options": "0x" + subs.hex().upper(), "remote-id": "737739"}}
    }
    old_style = {"ISC": {"relay-agent-info": "0x" + subs.hex().upper()}}
    hit1, hit2, miss = chroot_kea.next_ip4(), chroot_kea.next_ip4(), chroot_kea.next_ip4()
    chroot_kea.add_lease4(hit1, next(MAC), **{"user-context": new_style})
    chroot_kea.add_lease4(hit2, next(MAC), **{"user-context": old_style})
    chroot_kea.add_lease4(miss, next(MAC))
    result = await run(
        "kea.lease-del", ctx, **{"circuit-id": port.decode(), "remote-id": "sw9", "page-size": 2}
    )
    assert sorted(lease["ip-address"] for lease in result["leases"]) == sorted([hit1, hit2])
    assert chroot_kea.lease4(miss) is not None


async def test_lease_del_by_v6_relay(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    """v6 leases with the relay-info Kea 2.6.3 / 3.0.4 store (measured from a real relayed exchange)."""
    port = f"Gi2/0/{next(chroot_kea._ip6)}".encode()

    def relay_info(interface_id: bytes, remote_id: bytes) -> dict[str, Any]:
        opts = b"".join(
            code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
            for code, data in ((18, interface_id), (37, bytes(4) + remote_id))
        )
        hop = {"hop": 0, "link": "2001:db8:1::1", "peer": "fe80::aa", "options": "0x" + opts.hex().upper(),
               "remote-id": (bytes(4) + remote_id).hex().upper()}  # fmt: skip
        return {"ISC": {"relay-info": [hop]}}

    hit, miss = chroot_kea.next_ip6(), chroot_kea.next_ip6()
    chroot_kea.add_lease6(hit, "00:03:00:01:" + next(MAC), 1, **{"user-context": relay_info(port, b"sw9")})
    chroot_kea.add_lease6(miss, "00:03:00:01:" + next(MAC), 1, **{"user-context": relay_info(port, b"sw8")})
    stored = chroot_kea.lease6(hit)
    assert stored is not None and "relay-info" in stored["user-context"]["ISC"]  # kept as Kea writes it
    result = await run("kea.lease-del", ctx, **{"interface-id": port.decode(), "remote-id": "sw9"})
    assert [lease["ip-address"] for lease in result["leases"]] == [hit]
    assert chroot_kea.lease6(hit) is None and chroot_kea.lease6(miss) is not None


async def test_dhcp_disable_enable_seen_in_dhcp_state(chroot_kea: KeaInstance, ctx: ActionContext) -> None:
    result = await run("kea.dhcp-disable", ctx, **{"max-period": "1h"})
    assert result["arguments"] == {"max-period": 3600, "origin-id": 1}  # origin-id on Kea >= 2.6
    state = chroot_kea.cmd4("status-get")["arguments"]["dhcp-state"]
    assert state["disabled-by-user"] is True and state["globally-disabled"] is True
    await run("kea.dhcp-enable", ctx)
    state = chroot_kea.cmd4("status-get")["arguments"]["dhcp-state"]
    assert state["disabled-by-user"] is False and state["globally-disabled"] is False
    await run("kea.dhcp-disable", ctx, **{"max-period": "1h", "family": "v6"})
    assert chroot_kea.cmd6("status-get")["arguments"]["dhcp-state"]["disabled-by-user"] is True
    await run("kea.dhcp-enable", ctx, family="v6")


async def test_hook_not_loaded(chroot_kea: KeaInstance) -> None:
    assert chroot_kea.chroot is not None
    workdir = Path(f"/tmp/trapd-kea-bare-{os.getpid()}")
    bare = start_kea(workdir, chroot=chroot_kea.chroot, lease_cmds=False, dhcp6=False, ca=False)
    try:
        clients = make_kea_clients(bare.trapd_kea_section())
        c = make_action_context(clients)
        with pytest.raises(KeaUnsupportedError, match=r"libdhcp_lease_cmds\.so") as info:
            await run("kea.lease-del", c, **{"ip-address": "10.1.0.1"})
        assert isinstance(info.value, PermanentError)
        await clients.aclose()
        await c.http.aclose()
    finally:
        bare.stop()
        shutil.rmtree(chroot_kea.chroot / workdir.relative_to("/"), ignore_errors=True)


async def test_ddns_resend_adds_records_and_lease_del_removes_them(
    chroot_kea: KeaInstance, bind_server: Bind
) -> None:
    """kea.ddns-resend and lease-del's update-ddns through each version's kea-dhcp-ddns to BIND 9."""
    assert chroot_kea.chroot is not None
    suite = chroot_kea.chroot.name
    workdir = Path(f"/tmp/trapd-kea-ddns-{os.getpid()}")
    target = DdnsTarget(bind_server.port, bind_server.key_name, bind_server.key_secret)
    inst = start_kea(workdir, chroot=chroot_kea.chroot, dhcp6=False, ca=False, ddns=target)
    try:
        clients = make_kea_clients(inst.trapd_kea_section())
        c = make_action_context(clients)
        # Names and addresses of their own per version: the BIND server is the session's.
        ip = {"trixie": "10.1.0.121", "sid": "10.1.0.122"}[suite]
        name = f"chroot-{suite}.example.org"
        inst.add_lease4(ip, next(MAC), hostname=name, **{"fqdn-fwd": True, "fqdn-rev": True})
        result = await run("kea.ddns-resend", c, **{"ip-address": ip})
        assert result["sent"][0]["text"].startswith("NCR generated"), result
        assert bind_server.dig_until(name, "A", [ip]) == [ip]
        assert bind_server.dig_until(ip, "PTR", [name + "."]) == [name + "."]
        await run("kea.lease-del", c, **{"ip-address": ip, "update-ddns": True})
        assert bind_server.dig_until(name, "A", []) == []
        assert bind_server.dig_until(ip, "PTR", []) == []
        await clients.aclose()
        await c.http.aclose()
    finally:
        inst.stop()
        shutil.rmtree(chroot_kea.chroot / workdir.relative_to("/"), ignore_errors=True)


async def test_command_service_reaches_that_daemon_or_is_refused(
    chroot_kea: KeaInstance, ctx: ActionContext
) -> None:
    """kea.command's service: [d2] goes to kea-dhcp-ddns through a Control Agent only.

    A unix socket and Kea 3.0's own HTTP socket belong to one daemon, which ignores "service":
    the command must not run on kea-dhcp4 instead of the daemon the rule names.
    """
    transport = ctx.kea.get().transport_name
    if transport == "control-agent":  # the agent forwards, or says d2 is not behind it
        with pytest.raises(KeaCommandError, match="server type d2"):
            await run("kea.command", ctx, command="status-get", service=["d2"])
    else:
        with pytest.raises(PermanentError, match="control-agent") as info:
            await run("kea.command", ctx, command="status-get", service=["d2"])
        assert not isinstance(info.value, KeaCommandError), info.value  # refused before sending
    own = await run("kea.command", ctx, command="status-get", service=["dhcp4"])  # its own: fine
    assert own["result"] == 0 and "pid" in own["arguments"]


async def test_tls_on_the_daemon_socket_and_the_agent(chroot_kea: KeaInstance) -> None:
    """HTTPS with a required client certificate: Kea 3.0's own socket and each version's agent.

    A missing or foreign client certificate and a server trapd does not trust are permanent
    errors that say TLS, at once (not a retried "closed without an answer" or a timeout).
    """
    from kea_sandbox import make_tls_files

    assert chroot_kea.chroot is not None
    suite = chroot_kea.chroot.name
    workdir = Path(f"/tmp/trapd-kea-tls-{os.getpid()}")
    tls_dir = Path(f"/tmp/trapd-kea-tls-files-{os.getpid()}")  # the same path inside the chroot
    tls = make_tls_files(tls_dir)
    shutil.copytree(tls_dir, chroot_kea.chroot / tls_dir.relative_to("/"), dirs_exist_ok=True)
    inst = start_kea(workdir, chroot=chroot_kea.chroot, dhcp6=False, http_sockets=suite == "sid",
                     tls=tls, tls_cert_required=True, auth=("trapd", "tls-pw"))  # fmt: skip
    try:
        eps = inst.trapd_kea_section()["endpoints"]
        assert ("http4" in eps) == (suite == "sid")  # Kea 3.0's own socket, HTTPS here
        for name in [n for n in ("ca4", "http4") if n in eps]:
            ep = eps[name]
            good = make_kea_clients({"endpoints": {name: ep}})
            assert (await good.get(name).command("version-get")).text == VERSIONS[suite]
            await good.aclose()
            variants: dict[str, dict[str, Any]] = {
                "no client certificate": {k: v for k, v in ep.items() if k not in ("cert_file", "key_file")},
                "client certificate from another CA": {
                    **ep, "cert_file": str(tls.rogue_client_cert), "key_file": str(tls.rogue_client_key),
                },
                "server not trusted": {**ep, "ca_file": str(tls.other_ca_cert)},
            }  # fmt: skip
            for what, variant in variants.items():
                # A 30 s timeout, far from the bound: the handshake with a loaded Kea has its time.
                clients = make_kea_clients({"endpoints": {name: {**variant, "timeout": 30}}})
                started = time.monotonic()
                with pytest.raises(KeaAuthError, match="TLS") as info:
                    await clients.get(name).command("status-get")
                assert isinstance(info.value, PermanentError), (name, what)
                assert time.monotonic() - started < 10, (name, what)  # at once, not at the timeout
                await clients.aclose()
            # http:// to the HTTPS listener: Kea closes without a word; the error says what to check
            plain = {k: v for k, v in ep.items() if k not in ("ca_file", "cert_file", "key_file")}
            plain["url"] = ep["url"].replace("https://", "http://")
            clients = make_kea_clients({"endpoints": {name: plain}})
            with pytest.raises(KeaUnavailableError, match=r"without an answer.*https://") as info:
                await clients.get(name).command("status-get")
            await clients.aclose()
    finally:
        inst.stop()
        shutil.rmtree(chroot_kea.chroot / workdir.relative_to("/"), ignore_errors=True)
        shutil.rmtree(chroot_kea.chroot / tls_dir.relative_to("/"), ignore_errors=True)
        shutil.rmtree(tls_dir, ignore_errors=True)


async def test_dhcp_disable_max_period_kea_cannot_keep_is_refused(
    chroot_kea: KeaInstance, ctx: ActionContext
) -> None:
    """Kea keeps max-period as a 32-bit count of milliseconds: it answers "disabled for 4294968
    seconds" and is enabled again 0.7 s later (4294968000 mod 2**32 ms); 50 days became 7 hours.
    Measured on 2.6.3 and 3.0.4 (dhcp-state) and answered the same by 2.2. trapd refuses a
    max-period over 4294967 s (49 days 17 h) when the rule is read; that one holds."""
    from trapd.params import ParamError

    spec = ACTIONS["kea.dhcp-disable"]
    for too_long in ("4294968s", "50d"):
        with pytest.raises(ParamError, match="max-period"):
            validate(spec.params, {"max-period": too_long})
    await run("kea.dhcp-disable", ctx, **{"max-period": "4294967s"})
    try:
        deadline = time.monotonic() + 1.5  # past the 0.7 s a wrapped period would have left
        while time.monotonic() < deadline:
            assert chroot_kea.cmd4("status-get")["arguments"]["dhcp-state"]["globally-disabled"] is True
            time.sleep(0.1)
    finally:
        await run("kea.dhcp-enable", ctx)


CONNECT_AS_GROUP_MEMBER = """
import asyncio, json, sys
from pathlib import Path
from trapd.kea.client import KeaClients
from trapd.kea.config import KeaConfig
from trapd.yamlsource import load_yaml

section = {"endpoints": {"u": {"transport": "unix", "socket": sys.argv[1], "family": "v4"}}}
clients = KeaClients(KeaConfig.from_yaml(load_yaml(json.dumps(section), "<test>"), Path("/")))

async def main():
    try:
        print("answered", (await clients.get("u").command("status-get")).result)
    except Exception as exc:
        print(type(exc).__name__, exc)

asyncio.run(main())
"""


def test_unix_socket_for_a_member_of_kea_s_group(chroot_kea: KeaInstance) -> None:
    """Whatever its umask, Kea 2.6.3 makes its socket srwxr-x--- (it forces umask 027) and 3.0.4
    srwxrwx---: a trapd in Kea's group connects to 3.0.4 but not to 2.6.3, where UMask=0007
    (what makes Kea 2.2 connectable) changes nothing. The error must say so and name the way
    out (the Control Agent), not send the operator to the group they are already in."""
    import stat
    import subprocess
    import sys

    suite = chroot_kea.chroot.name if chroot_kea.chroot else ""
    sock = chroot_kea.host_path(chroot_kea.dhcp4_socket)
    st = sock.stat()
    assert bool(st.st_mode & stat.S_IWGRP) == (suite == "sid"), stat.filemode(st.st_mode)

    def member_not_owner() -> None:  # nobody, with the socket's group as a supplementary group
        os.setgroups([st.st_gid])
        os.setgid(65534)
        os.setuid(65534)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", CONNECT_AS_GROUP_MEMBER, str(sock)],
        capture_output=True, text=True, timeout=60, preexec_fn=member_not_owner, env=env, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    if suite == "sid":
        assert out.stdout.strip() == "answered 0", out.stdout
    else:
        assert out.stdout.startswith("KeaPermanentError"), out.stdout
        assert "srwxr-x---" in out.stdout and "control-agent" in out.stdout, out.stdout
