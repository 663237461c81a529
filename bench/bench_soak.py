"""Memory of the whole daemon over time, under varied and partly hostile traffic.

The standard: no input from the network grows memory past a fixed bound. Each
cache on the receive path was bounded on its own; this runs them all at once for
minutes: one ``trapd run`` with ``service.workers: 2``, a real Kea 2.2
(tests/kea_harness.py's sandbox), and a rules file whose actions journal with caps
keyed by templates, once-keys, cancel-keys, delays, a ``log`` action and a
``kea.lease-del`` action. For ``--minutes`` it sends, at ``--rate`` a second, a mix
in which every key varies at once:

- v2c linkDown / linkUp from thousands of source addresses (any 127.x.y.z is a
  source on Linux loopback: sent with IP_PKTINFO, no socket per address), ifIndex
  and a varbind value varying (the delayed Kea deletes, their cancels and once-keys);
- v2c and v1 notifications whose notification OID, one varbind's OID and value
  are new in every message (ten sub-identifiers patched per message), some with a
  community that is new in every message (refused: the drop log's keys);
- v3 authPriv traps from the bench user on its engine (fast path), from a user
  without ``engine_ids`` on a thousand and more engines (learned engines), and
  from unknown user names (pysnmp's slow path, refused);
- v2c informs from thousands of sources, each with its own request-id, a share of
  them sent twice (the inform resend table), and v3 informs through net-snmp's
  ``snmpinform`` (discovery, the slow path), a known user and an unknown one;
- malformed datagrams: truncated and bit-flipped copies of the above, random bytes;
- SIGHUP (reload) to the supervisor every ``--reload-every`` seconds.

Every ``--sample`` seconds it reads, for each process of the tree, RSS and PSS
(``/proc/PID/smaps_rollup``), the open file descriptors and the threads; the
journal file and its WAL; every ``--scrape`` seconds the number of series on
/metrics (by family). The report compares the second third of the run with the
last third: memory that still grows there (more than ``--tolerance`` %) did not
level off. Results: ``bench/results/soak-*.json`` and a summary on stdout::

    .venv/bin/python bench/bench_soak.py --minutes 5 --rate 3000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import bench_listener as bl  # sibling scripts, not a package
import bench_storm as bs
import benchproc
import kea_sandbox
import loadgen

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SEQ_OID = loadgen.SEQ_OID_STR
VENDOR = (1, 3, 6, 1, 4, 1, 99999, 2)  # + ten patched sub-identifiers: a new notification per message
VALUE_OID = (1, 3, 6, 1, 4, 1, 99999, 3)  # + ten patched sub-identifiers: a new varbind OID per message
LINK_UP = (1, 3, 6, 1, 6, 3, 1, 1, 5, 4)
IF_INDICES = 24
# Sentinels replaced per message: ten OID sub-identifiers (< 0x80, one byte each, replaced by
# the digits 0x30-0x39), a ten-byte OctetString, a community, a four-byte request-id.
OID_SENTINEL = bytes(range(0x76, 0x80))
COMMUNITY_SENTINEL = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0b"
REQID_SENTINEL = 0x7E5C3B1A
IP_PKTINFO = 8  # linux/in.h; the socket module does not export it

V3_INFORM_USER = "soakinform"
V3_ANY_ENGINE_USER = "soakany"
SOAK_ENGINE_PREFIX = bytes.fromhex("80001f8804") + b"soak"  # + six digits: the learned engines
TRAPD_ENGINE_ID = "80001f8804736f616b2d7472617064"  # 0x80 | net-snmp, text, "soak-trapd"

RULES = """
rules:
  - name: soak-port-down
    match:
      notification: IF-MIB::linkDown
      source: 127.0.0.0/8
    actions:
      - action: log
        message: "down {{ source }} {{ ifIndex }} {{ varbinds['SEQ'].value }}"
        cap: {limit: 3, per: 10s, key: "{{ source }}", hold-for: 20s}
      - action: kea.lease-del
        ip-address: "10.1.{{ ifIndex }}.{{ source.split('.')[3] }}"
        delay: 3s
        cancel-key: "port:{{ source }}:{{ ifIndex }}"
        once-within: 30s
        once-key: "del:{{ source }}:{{ ifIndex }}"
        cap: {limit: 1000000, per: 1m, key: "{{ source }}:{{ ifIndex }}", hold-for: 20s}
  - name: soak-port-up
    match:
      notification: IF-MIB::linkUp
      source: 127.0.0.0/8
    cancel: "port:{{ source }}:{{ ifIndex }}"
  - name: soak-vendor
    match:
      notification: {under: VENDOR}
      source: 127.0.0.0/8
    actions:
      - action: log
        message: "vendor {{ source }} {{ trap_oid }}"
        once-within: 20s
        once-key: "vendor:{{ source }}"
"""


# --no-actions: every datagram is received, decoded, normalized and tried against the rules, and
# nothing is journaled: tells growth on the receive path from growth in the dispatcher and journal.
NO_ACTION_RULES = """
rules:
  - name: soak-nothing
    match:
      notification: SNMPv2-MIB::coldStart
      source: 192.0.2.0/24
    actions:
      - {action: log, message: "never"}
"""


# --- messages ---------------------------------------------------------------------------------


class Patchable:
    """An encoded message and the sentinels in it that are replaced (every occurrence) per message."""

    def __init__(self, data: bytes, sentinels: tuple[bytes, ...]) -> None:
        for s in sentinels:
            if data.count(s) < 1:
                raise RuntimeError(f"sentinel {s!r} is not in the message")
        self.data = data
        self.sentinels = sentinels

    def render(self, *values: bytes) -> bytes:
        out = self.data
        for s, v in zip(self.sentinels, values, strict=True):
            out = out.replace(s, v)
        return out


def _encode_v2c(community: bytes, pdu_kind: str, trap_oid: tuple[int, ...], varbinds: list[Any]) -> bytes:
    from pyasn1.codec.ber import encoder
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = p.InformRequestPDU() if pdu_kind == "inform" else p.TrapPDU()
    p.apiTrapPDU.set_defaults(pdu)
    p.apiTrapPDU.set_request_id(pdu, REQID_SENTINEL)
    p.apiTrapPDU.set_varbinds(
        pdu,
        [
            (p.ObjectIdentifier(p.apiTrapPDU.sysUpTime), p.TimeTicks(123456)),
            (p.ObjectIdentifier(p.apiTrapPDU.snmpTrapOID), p.ObjectIdentifier(trap_oid)),
            *[(p.ObjectIdentifier(o), v) for o, v in varbinds],
        ],
    )
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def _port_vbs(if_index: int) -> list[Any]:
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    return [
        ((*loadgen.IF_INDEX, if_index), p.Integer(if_index)),
        ((*loadgen.IF_DESCR, if_index), p.OctetString(f"GigabitEthernet1/0/{if_index}".encode())),
        (loadgen.SEQ_OID, p.OctetString(COMMUNITY_SENTINEL)),
    ]


def _vendor_vbs() -> list[Any]:
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    return [((*VALUE_OID, *OID_SENTINEL), p.OctetString(COMMUNITY_SENTINEL))]


def _v1_vendor(community: bytes) -> bytes:
    from pyasn1.codec.ber import encoder
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]
    pdu = p.TrapPDU()
    p.apiTrapPDU.set_defaults(pdu)
    p.apiTrapPDU.set_enterprise(pdu, (*VENDOR, *OID_SENTINEL))
    p.apiTrapPDU.set_agent_address(pdu, "127.0.0.1")
    p.apiTrapPDU.set_generic_trap(pdu, 6)
    p.apiTrapPDU.set_specific_trap(pdu, 7)
    p.apiTrapPDU.set_timestamp(pdu, 123456)
    p.apiTrapPDU.set_varbinds(pdu, [(p.ObjectIdentifier((*VALUE_OID, 1)), p.OctetString(b"x" * 10))])
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


_REQID = struct.pack(">I", REQID_SENTINEL)


def _digits(n: int) -> bytes:
    return b"%010d" % (n % 10**10)


def _reqid(n: int) -> bytes:
    return struct.pack(">I", 0x10000000 + n % 0x6FFFFFFF)


@cache
def _localized_key(password: str, engine_id: bytes, hash_name: str) -> bytes:
    return _LOCALIZED_KEY(password, engine_id, hash_name)


_LOCALIZED_KEY = loadgen.localized_key
# The v3 encoders of a thousand engines share two passwords: derive each key once.
loadgen.localized_key = _localized_key  # type: ignore[assignment]


class Mix:
    """Builds the next message of each kind; ``n`` makes every varying part new."""

    def __init__(self, v3_engines: int, seed: int) -> None:
        self.rng = random.Random(seed)
        pub = b"public"
        self.port_down = [
            Patchable(_encode_v2c(pub, "trap", loadgen.LINK_DOWN, _port_vbs(i)), (COMMUNITY_SENTINEL,))
            for i in range(1, IF_INDICES + 1)
        ]
        self.port_up = [
            Patchable(_encode_v2c(pub, "trap", LINK_UP, _port_vbs(i)), (COMMUNITY_SENTINEL,))
            for i in range(1, IF_INDICES + 1)
        ]
        vendor = _encode_v2c(pub, "trap", (*VENDOR, *OID_SENTINEL), _vendor_vbs())
        self.vendor = Patchable(vendor, (OID_SENTINEL, COMMUNITY_SENTINEL))
        # A community of ten bytes, new in every message: refused as unknown-community.
        bad = _encode_v2c(COMMUNITY_SENTINEL, "trap", (*VENDOR, *OID_SENTINEL), [])
        self.bad_community = Patchable(bad, (COMMUNITY_SENTINEL, OID_SENTINEL))
        self.v1 = Patchable(_v1_vendor(pub), (OID_SENTINEL,))
        self.inform = [
            Patchable(
                _encode_v2c(pub, "inform", loadgen.LINK_DOWN, _port_vbs(i)), (_REQID, COMMUNITY_SENTINEL)
            )
            for i in range(1, IF_INDICES + 1)
        ]
        self.inform.append(
            Patchable(
                _encode_v2c(pub, "inform", (*VENDOR, *OID_SENTINEL), _vendor_vbs()),
                (_REQID, OID_SENTINEL, COMMUNITY_SENTINEL),
            )
        )
        known = loadgen.V3User()
        self.v3_known = loadgen.V3Encoder(known)
        self.v3_engines = [
            loadgen.V3Encoder(
                loadgen.V3User(user=V3_ANY_ENGINE_USER, engine_id=SOAK_ENGINE_PREFIX + b"%06d" % k)
            )
            for k in range(v3_engines)
        ]
        # Unknown users on the known engine: a new name now and then (encoders cost a key each).
        self.v3_unknown = [loadgen.V3Encoder(loadgen.V3User(user=f"nobody{k:04d}")) for k in range(64)]
        self.recent: list[bytes] = []

    def next(self, n: int) -> tuple[str, bytes]:
        """(kind, message) for message number ``n``."""
        r = self.rng.random()
        d = _digits(n)
        if r < 0.30:
            kind, m = "link-down", self.rng.choice(self.port_down).render(d)
        elif r < 0.40:
            kind, m = "link-up", self.rng.choice(self.port_up).render(d)
        elif r < 0.55:
            kind, m = "vendor-v2c", self.vendor.render(d, d)
        elif r < 0.60:
            kind, m = "vendor-v1", self.v1.render(d)
        elif r < 0.63:
            kind, m = "bad-community", self.bad_community.render(d, d)
        elif r < 0.71:
            kind = "inform-v2c"
            t = self.rng.choice(self.inform)
            m = t.render(_reqid(n), *([d] * (len(t.sentinels) - 1)))
        elif r < 0.79:
            kind, m = "v3-known", self.v3_known.encode(n)
        elif r < 0.86:
            kind, m = "v3-any-engine", self.rng.choice(self.v3_engines).encode(n)
        elif r < 0.88:
            kind, m = "v3-unknown-user", self.rng.choice(self.v3_unknown).encode(n)
        else:
            kind, m = "malformed", self._malformed()
        if len(self.recent) < 256:
            self.recent.append(m)
        else:
            self.recent[n % 256] = m
        return kind, m

    def _malformed(self) -> bytes:
        rng = self.rng
        if not self.recent or rng.random() < 0.1:
            return rng.randbytes(rng.randrange(1, 300))
        m = bytearray(rng.choice(self.recent))
        how = rng.random()
        if how < 0.4 and len(m) > 1:
            return bytes(m[: rng.randrange(1, len(m))])
        if how < 0.8 and m:
            for _ in range(rng.randrange(1, 4)):
                m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
            return bytes(m)
        return rng.randbytes(rng.randrange(1, 1500))


# --- sending ----------------------------------------------------------------------------------


@dataclass
class SendStats:
    sent: int = 0
    errors: int = 0
    resent: int = 0
    by_kind: dict[str, int] | None = None
    v3_informs: int = 0
    v3_informs_ok: int = 0


class Sender(threading.Thread):
    """Sends the mix at ``rate`` from ``sources`` loopback addresses (IP_PKTINFO), per 10 ms tick."""

    def __init__(self, mix: Mix, port: int, rate: float, seconds: float, sources: int) -> None:
        super().__init__(daemon=True)
        self.mix, self.rate, self.seconds = mix, rate, seconds
        self.dest = ("127.0.0.1", port)
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        for s in self.socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        # 127.1.0.1 ... : never 127.0.0.1, the address trapd and Kea use themselves.
        self.sources = [
            struct.pack("=i4s4s", 0, bytes((127, 1 + k // 62500, k // 250 % 250 + 1, k % 250 + 1)), b"\0" * 4)
            for k in range(sources)
        ]
        self.stats = SendStats(by_kind={})
        self.stop_event = threading.Event()

    def _send(self, n: int, data: bytes, src: bytes) -> None:
        sock = self.socks[n % len(self.socks)]  # a resend: the same socket, so the same source port
        try:
            sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, src)], 0, self.dest)
            self.stats.sent += 1
        except OSError:
            self.stats.errors += 1

    def run(self) -> None:
        t0 = time.monotonic()
        n = 0
        tick = 0.01
        assert self.stats.by_kind is not None
        by_kind = self.stats.by_kind
        while not self.stop_event.is_set():
            elapsed = time.monotonic() - t0
            if elapsed >= self.seconds:
                break
            due = int(elapsed * self.rate) + 1
            while n < due:
                n += 1
                kind, m = self.mix.next(n)
                by_kind[kind] = by_kind.get(kind, 0) + 1
                src = self.sources[self.mix.rng.randrange(len(self.sources))]
                self._send(n, m, src)
                if kind == "inform-v2c" and n % 4 == 0:  # the same inform from the same sender: a resend
                    self._send(n, m, src)
                    self.stats.resent += 1
            delay = t0 + (n / self.rate) - time.monotonic()
            time.sleep(max(delay, tick / 4) if delay > 0 else tick / 4)


class V3Informer(threading.Thread):
    """net-snmp's snmpinform (v3, discovery included) in a loop: a known user, then an unknown one."""

    def __init__(self, port: int, seconds: float, gap: float) -> None:
        super().__init__(daemon=True)
        self.port, self.seconds, self.gap = port, seconds, gap
        self.sent = self.ok = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        env = dict(os.environ, MIBS="", MIBDIRS="/nonexistent", SNMPCONFPATH="/nonexistent")
        t0 = time.monotonic()
        k = 0
        while not self.stop_event.is_set() and time.monotonic() - t0 < self.seconds:
            k += 1
            user = V3_INFORM_USER if k % 3 else f"stranger{k}"
            src = f"127.2.{k // 250 % 250 + 1}.{k % 250 + 1}"
            argv = ["snmpinform", "-v", "3", "-u", user, "-l", "authPriv", "-a", "SHA-256",
                    "-A", "inform-auth-1", "-x", "AES", "-X", "inform-priv-1", "-r", "0", "-t", "2",
                    f"--clientaddr={src}",
                    f"udp:127.0.0.1:{self.port}", "", "1.3.6.1.6.3.1.1.5.3",
                    f"1.3.6.1.2.1.2.2.1.1.{k % IF_INDICES + 1}", "i", str(k % IF_INDICES + 1)]  # fmt: skip
            with contextlib.suppress(subprocess.TimeoutExpired):
                r = subprocess.run(argv, capture_output=True, timeout=10, env=env)
                self.sent += 1
                self.ok += r.returncode == 0
            self.stop_event.wait(self.gap)


# --- sampling ---------------------------------------------------------------------------------


def _proc_figures(pid: int) -> dict[str, int] | None:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    out = {"fds": fds}
    for line in rollup.splitlines():
        key = line.split(":", 1)[0]
        if key in ("Rss", "Pss", "Anonymous"):
            out[key.lower() + "_kb"] = int(line.split()[1])
    for line in status.splitlines():
        if line.startswith("Threads:"):
            out["threads"] = int(line.split()[1])
    return out


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    return ""


def _file_kb(p: Path) -> int:
    try:
        return p.stat().st_size // 1024
    except OSError:
        return 0


def series_by_family(body: str) -> dict[str, int]:
    """Samples per metric family (the name before the first ``{``, without _bucket/_sum/... suffixes)."""
    out: dict[str, int] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        out[name] = out.get(name, 0) + 1
    return out


# --- the run ----------------------------------------------------------------------------------


def trend(samples: list[tuple[float, int]], duration: float) -> dict[str, float]:
    """Median of the second third and of the last third of the run, and the growth between them."""
    second = [v for t, v in samples if duration / 3 <= t < 2 * duration / 3]
    last = [v for t, v in samples if t >= 2 * duration / 3]
    if not second or not last:
        return {}
    a, b = statistics.median(second), statistics.median(last)
    return {
        "first": samples[0][1],
        "second_third": a,
        "last_third": b,
        "max": max(v for _, v in samples),
        "growth_pct": round((b - a) / a * 100, 2) if a else 0.0,
    }


WAITING = ("scheduled", "pending", "running", "failed")


def journal_states(journal: Path) -> dict[str, int]:
    """Actions by ``action:state``, read from the journal file (another reader of the WAL)."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT action, state, count(*) FROM actions GROUP BY 1, 2").fetchall()
    finally:
        conn.close()
    return {f"{a}:{s}": int(n) for a, s, n in rows}


def drain(journal: Path, timeout: float) -> tuple[dict[str, int], float]:
    """Polls until no action waits (delays, retries, the backlog) or ``timeout``; the last states."""
    t0 = time.monotonic()
    while True:
        states = journal_states(journal)
        waiting = sum(n for k, n in states.items() if k.rsplit(":", 1)[1] in WAITING)
        if not waiting or time.monotonic() - t0 > timeout:
            return states, round(time.monotonic() - t0, 1)
        time.sleep(1.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = bl.machine_info()  # its load average: at the start
    workroot = Path(tempfile.mkdtemp(prefix="trapd-soak-"))
    log: Callable[[str], None] = lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True)  # noqa: E731
    log(f"building the mix ({args.v3_engines} v3 engines)")
    mix = Mix(args.v3_engines, args.seed)
    kea = kea_sandbox.start_kea(workroot / "kea", dhcp6=False, ca=False)
    pipeline: bs.Pipeline | None = None
    sender: Sender | None = None
    informer: V3Informer | None = None
    try:
        for i in range(1, IF_INDICES + 1):  # some leases for the deletes to find
            for j in range(1, 21):
                kea.add_lease4(f"10.1.{i}.{j}", f"0a:00:27:00:{i:02x}:{j:02x}")
        rules = RULES.replace("SEQ", SEQ_OID).replace("VENDOR", ".".join(map(str, VENDOR)))
        if args.no_actions:  # the receive path alone: rules that nothing sent matches
            rules = NO_ACTION_RULES
        bench_engine = loadgen.DEFAULT_ENGINE_ID.hex()
        bench_keys = {
            "auth_protocol": "SHA-256",
            "auth_key": loadgen.DEFAULT_V3_AUTH_KEY,
            "priv_protocol": "AES-128",
            "priv_key": loadgen.DEFAULT_V3_PRIV_KEY,
        }
        extra: dict[str, Any] = {
            "kea": kea.trapd_kea_section(),
            "service": {"workers": args.workers, "log": {"format": "json", "level": "warning"}},
            "listener": {
                "engine_id": TRAPD_ENGINE_ID,
                "v3_users": [
                    {**bench_keys, "user": loadgen.DEFAULT_V3_USER, "engine_ids": [bench_engine]},
                    {**bench_keys, "user": V3_ANY_ENGINE_USER},
                    {"user": V3_INFORM_USER, "auth_protocol": "SHA-256", "auth_key": "inform-auth-1",
                     "priv_protocol": "AES-128", "priv_key": "inform-priv-1"},
                ],
            },
        }  # fmt: skip
        saved = dict(os.environ)
        os.environ.update(kv.split("=", 1) for kv in args.trapd_env)  # for trapd's processes only
        try:
            pipeline = bs.Pipeline(workroot, 0, extra, rules=rules)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        pipeline.wait_ready(120)
        root = pipeline.proc.pid
        journal = workroot / "state" / "journal.sqlite"
        log(f"trapd ready (pid {root}), workdir {workroot}; sending {args.rate}/s for {args.minutes} min")
        duration = args.minutes * 60
        sender = Sender(mix, pipeline.port, args.rate, duration, args.sources)
        informer = V3Informer(pipeline.port, duration, args.v3_inform_gap)
        samples: dict[int, list[dict[str, Any]]] = {}
        names: dict[int, str] = {}
        pss_total: list[tuple[float, int]] = []
        files: list[dict[str, Any]] = []
        series: list[dict[str, Any]] = []
        reloads = 0
        t0 = time.monotonic()
        sender.start()
        informer.start()
        next_sample = next_scrape = 0.0
        next_reload = args.reload_every
        cpu0 = bl.cpu_seconds(root)
        while sender.is_alive():
            now = time.monotonic() - t0
            if pipeline.proc.poll() is not None:
                raise RuntimeError(f"trapd exited with {pipeline.proc.returncode}; see {pipeline.log_path}")
            if now >= next_sample:
                next_sample += args.sample
                total = 0
                for pid in bl.process_tree(root):
                    f = _proc_figures(pid)
                    if f is None:
                        continue
                    names.setdefault(pid, _cmdline(pid))
                    samples.setdefault(pid, []).append({"t": round(now, 1), **f})
                    total += f.get("pss_kb", 0)
                pss_total.append((round(now, 1), total))
                files.append({
                    "t": round(now, 1),
                    "journal_kb": _file_kb(journal),
                    "wal_kb": _file_kb(journal.with_name(journal.name + "-wal")),
                })  # fmt: skip
            if now >= next_scrape:
                next_scrape += args.scrape
                with contextlib.suppress(OSError, RuntimeError):
                    status, body = pipeline.http("/metrics", timeout=20)
                    if status == 200:
                        fam = series_by_family(body.decode())
                        series.append({"t": round(now, 1), "total": sum(fam.values()), "by_family": fam})
            if args.reload_every and now >= next_reload:
                next_reload += args.reload_every
                os.kill(root, signal.SIGHUP)
                reloads += 1
            time.sleep(0.2)
        duration = time.monotonic() - t0
        informer.stop_event.set()
        informer.join(15)
        cpu = bl.cpu_seconds(root) - cpu0
        log("load stopped; waiting for the journal's waiting actions to end")
        states, drain_s = drain(journal, args.drain_timeout)
        # What trapd counted.
        scrape = pipeline.scrape()
        counts = bs.Counts.of(scrape)
        outcome = {
            dict(lb).get("outcome", "?") + ":" + dict(lb).get("plugin", dict(lb).get("action", "?")): v
            for (n, lb), v in scrape.items()
            if n == "trapd_actions_total"
        }
        per_process = {}
        for pid, ss in samples.items():
            if len(ss) < 6:
                continue  # a short-lived child (a rules compile)
            per_process[str(pid)] = {
                "role": "supervisor" if pid == root else "worker",
                "cmd": names[pid],
                "samples": len(ss),
                **{
                    k: trend([(s["t"], s[k]) for s in ss if k in s], duration)
                    for k in ("rss_kb", "pss_kb", "anonymous_kb", "fds", "threads")
                },
            }
        first_fam = series[min(1, len(series) - 1)]["by_family"] if series else {}
        last_fam = series[-1]["by_family"] if series else {}
        grown = {k: (first_fam.get(k, 0), v) for k, v in last_fam.items() if v > first_fam.get(k, 0)}
        return {
            "machine": machine,
            "code": bl.code_version(),
            "args": vars(args),
            "loadavg_end": bl._loadavg(),
            "seconds": round(duration, 1),
            "sent": sender.stats.sent,
            "send_errors": sender.stats.errors,
            "inform_resends_sent": sender.stats.resent,
            # What trapd's counters say of the parts of the mix that fill its tables.
            "counters": {
                name: bs.metric(scrape, f"trapd_{name}_total")
                for name in ("informs_resent", "v3_engines_pushed_out", "receive_pauses", "outcomes_lost")
            },
            "sent_by_kind": sender.stats.by_kind,
            "v3_informs": {"sent": informer.sent, "acknowledged": informer.ok},
            "reloads": reloads,
            "received": counts.received,
            "dropped": counts.dropped,
            "socket_drops": counts.socket_drops,
            "actions": outcome,
            "journal_states": states,
            "drain_seconds": drain_s,
            "cpu_us_per_sent": round(cpu / max(sender.stats.sent, 1) * 1e6, 1),
            "pss_total_kb": trend(pss_total, duration),
            "per_process": per_process,
            "files_kb": {
                k: trend([(f["t"], f[k]) for f in files], duration) for k in ("journal_kb", "wal_kb")
            },
            "metrics_series": trend([(s["t"], s["total"]) for s in series], duration),
            "metrics_series_grown": grown,
            "raw": {
                "pss_total": pss_total,
                "files": files,
                "samples": {str(k): v for k, v in samples.items()},
            },
        }
    finally:
        if sender is not None:
            sender.stop_event.set()
        if informer is not None:
            informer.stop_event.set()
        if pipeline is not None:
            pipeline.stop()
        kea.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workroot, ignore_errors=True)


def summary(r: dict[str, Any], tolerance: float) -> list[str]:
    lines = [
        f"{r['seconds']} s, sent {r['sent']} ({r['sent'] / r['seconds']:.0f}/s), received {r['received']}, "
        f"dropped {r['dropped']}, socket drops {r['socket_drops']}, reloads {r['reloads']}, "
        f"v3 informs {r['v3_informs']}, load average {r['machine']['loadavg_at_start']} at the start, "
        f"{r['loadavg_end']} at the end",
        f"actions: {r['actions']}",
        f"counters: {r['counters']} (inform resends sent: {r['inform_resends_sent']})",
        f"journal after {r['drain_seconds']} s of drain: {r['journal_states']}",
        "| what | first | 2nd third | last third | max | growth |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    bad = []

    def row(name: str, t: dict[str, float], check: bool) -> None:
        if not t:
            return
        flag = ""
        if check and t["growth_pct"] > tolerance:
            flag = " **grows**"
            bad.append(name)
        figures = " | ".join(f"{t[k]:.0f}" for k in ("first", "second_third", "last_third", "max"))
        lines.append(f"| {name} | {figures} | {t['growth_pct']:+.1f} %{flag} |")

    row("PSS, whole tree, KiB", r["pss_total_kb"], True)
    for pid, p in r["per_process"].items():
        role = p["role"]
        for k in ("rss_kb", "pss_kb", "anonymous_kb", "fds", "threads"):
            row(f"{role} {pid} {k}", p[k], True)
    for k, t in r["files_kb"].items():
        row(k, t, False)
    row("/metrics series", r["metrics_series"], True)
    if r["metrics_series_grown"]:
        lines.append(f"series that grew: {r['metrics_series_grown']}")
    left = {k: n for k, n in r["journal_states"].items() if k.rsplit(":", 1)[1] in WAITING}
    if left:
        lines.append(f"STILL WAITING after the drain: {left}")
    lines.append("levels off" if not bad else f"DOES NOT LEVEL OFF: {', '.join(bad)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=3000.0, help="datagrams a second (plus resent informs)")
    ap.add_argument("--sources", type=int, default=5000, help="distinct loopback source addresses")
    ap.add_argument("--v3-engines", type=int, default=1500, help="engines of the user without engine_ids")
    ap.add_argument("--v3-inform-gap", type=float, default=0.2, help="seconds between two snmpinform runs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--no-actions", action="store_true", help="rules that match nothing: the receive path alone"
    )
    ap.add_argument("--reload-every", type=float, default=30.0, help="seconds between SIGHUPs (0: none)")
    ap.add_argument("--sample", type=float, default=2.0)
    ap.add_argument("--scrape", type=float, default=10.0)
    ap.add_argument("--tolerance", type=float, default=3.0, help="growth, %%, from the 2nd to the last third")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for waiting actions")
    ap.add_argument(
        "--trapd-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of trapd's processes only (PYTHONTRACEMALLOC=8 and a sitecustomize: what grows)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (trapd's log, journal)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.minutes > 120 or args.rate <= 0 or args.rate > 50000:
        ap.error("--minutes in (0, 120], --rate in (0, 50000]")
    with benchproc.sigterm_unwinds():
        r = run(args)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(r, indent=1))
    for line in summary(r, args.tolerance):
        print(line)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
