"""A private, throwaway Kea on loopback: start it, wait until it answers, stop it.

Used by the test fixtures in kea_harness.py and by scripts/demo.py (which must
run without pytest). Everything runs from a work dir: sockets, lease files,
logs, pid files (KEA_PIDFILE_DIR / KEA_LOCKFILE_DIR point there). Kea 2.2
accepts any path; 2.6.3+ needs the KEA_*_DIR variables, which
:func:`start_kea` sets too so the same code drives a chroot's Kea
(``chroot`` argument).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ports

HOOKS_DIR = Path("/usr/lib/x86_64-linux-gnu/kea/hooks")
LEASE_CMDS = "libdhcp_lease_cmds.so"
HA_HOOK = "libdhcp_ha.so"
READY_TIMEOUT = 15.0

# Subnets every instance serves (ids are what tests filter on).
SUBNETS4 = {1: "10.1.0.0/16", 2: "10.2.0.0/16"}
SUBNETS6 = {1: "2001:db8:1::/64", 2: "2001:db8:2::/64"}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 for one of Kea's servers: TCP (the agents) unless ``kind`` says UDP."""
    return ports.free_port(kind)


def unix_command(
    path: str | Path, command: str, arguments: Any = None, timeout: float = 10.0
) -> dict[str, Any]:
    """One command over a Kea unix control socket (sync; for test setup and checks)."""
    msg: dict[str, Any] = {"command": command}
    if arguments is not None:
        msg["arguments"] = arguments
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(msg).encode())
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    return answer


@dataclass
class TlsFiles:
    """An openssl-made CA with a server cert (127.0.0.1) and two client certs."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that did not sign the server cert
    rogue_client_cert: Path  # signed by other_ca: Kea must refuse it
    rogue_client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    def ca(name: str) -> None:
        run(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=trapd test {name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )

    def leaf(name: str, ca_name: str, ext: str) -> None:
        run(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (directory / f"{name}.ext").write_text(ext)
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca_name}.pem",
            "-CAkey",
            f"{ca_name}.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )

    ca("ca")
    ca("otherca")
    leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    leaf("client", "ca", "extendedKeyUsage=clientAuth\n")
    leaf("rogue", "otherca", "extendedKeyUsage=clientAuth\n")
    d = directory
    return TlsFiles(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "otherca.pem",
        d / "rogue.pem",
        d / "rogue.key",
    )


@dataclass
class DdnsTarget:
    """Where kea-dhcp-ddns sends updates: BIND on loopback with a TSIG key."""

    dns_port: int
    key_name: str
    key_secret: str  # base64


@dataclass
class KeaInstance:
    workdir: Path
    dhcp4_socket: Path
    dhcp6_socket: Path | None
    d2_socket: Path | None
    ca_port: int | None
    auth: tuple[str, str] | None = None
    tls: TlsFiles | None = None
    tls_cert_required: bool = False
    version: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    chroot: Path | None = None
    http4_port: int | None = None  # Kea >= 3.0: the daemons' own HTTP control sockets
    http6_port: int | None = None
    _ip4: Iterator[int] = field(default_factory=lambda: itertools.count(10))
    _ip6: Iterator[int] = field(default_factory=lambda: itertools.count(0x10))

    # --- addresses a test can use without colliding with other tests ---
    def next_ip4(self, subnet_id: int = 1) -> str:
        net = ipaddress.ip_network(SUBNETS4[subnet_id])
        return str(net.network_address + next(self._ip4))

    def next_ip6(self, subnet_id: int = 1) -> str:
        net = ipaddress.ip_network(SUBNETS6[subnet_id])
        return str(net.network_address + next(self._ip6))

    @property
    def ca_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.ca_port}/"

    def host_path(self, p: Path) -> Path:
        """A path inside the instance as seen from the host (differs under a chroot)."""
        return self.chroot / p.relative_to("/") if self.chroot else p

    # --- direct commands for setup and checks (bypassing the code under test) ---
    def cmd4(self, command: str, arguments: Any = None) -> dict[str, Any]:
        return unix_command(self.host_path(self.dhcp4_socket), command, arguments)

    def cmd6(self, command: str, arguments: Any = None) -> dict[str, Any]:
        assert self.dhcp6_socket is not None
        return unix_command(self.host_path(self.dhcp6_socket), command, arguments)

    def add_lease4(self, ip: str, hw: str, **extra: Any) -> None:
        r = self.cmd4("lease4-add", {"ip-address": ip, "hw-address": hw, **extra})
        assert r["result"] == 0, r

    def add_lease6(self, ip: str, duid: str, iaid: int, **extra: Any) -> None:
        r = self.cmd6("lease6-add", {"ip-address": ip, "duid": duid, "iaid": iaid, **extra})
        assert r["result"] == 0, r

    def lease4(self, ip: str) -> dict[str, Any] | None:
        r = self.cmd4("lease4-get", {"ip-address": ip})
        assert r["result"] in (0, 3), r
        return r.get("arguments") if r["result"] == 0 else None

    def lease6(self, ip: str, type_: str = "IA_NA") -> dict[str, Any] | None:
        r = self.cmd6("lease6-get", {"ip-address": ip, "type": type_})
        assert r["result"] in (0, 3), r
        return r.get("arguments") if r["result"] == 0 else None

    # --- trapd configuration for this instance ---
    def endpoints(self) -> dict[str, dict[str, Any]]:
        """Endpoint entries for trapd.yaml's ``kea.endpoints`` (unix + CA)."""
        eps: dict[str, dict[str, Any]] = {
            "unix4": {"transport": "unix", "socket": str(self.host_path(self.dhcp4_socket)), "family": "v4"},
        }
        if self.dhcp6_socket:
            eps["unix6"] = {
                "transport": "unix",
                "socket": str(self.host_path(self.dhcp6_socket)),
                "family": "v6",
            }
        for fam, port in (("v4", self.http4_port), ("v6", self.http6_port)):
            if port:
                url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/"
                ep: dict[str, Any] = {"transport": "http", "url": url, "family": fam}
                if self.auth:
                    ep["user"], ep["password"] = self.auth
                ep.update(self._tls_keys())
                eps[f"http{fam[1]}"] = ep
        if self.ca_port:
            ca: dict[str, Any] = {
                "transport": "control-agent",
                "url": self.ca_url,
                "family": "v4",
                "timeout": 5,
            }
            if self.auth:
                ca["user"], ca["password"] = self.auth
            ca.update(self._tls_keys())
            eps["ca4"] = ca
            if self.dhcp6_socket:
                eps["ca6"] = {**ca, "family": "v6"}
        return eps

    def _tls_keys(self) -> dict[str, str]:
        """trapd's TLS settings for the instance's HTTPS listeners (none without ``tls``)."""
        if not self.tls:
            return {}
        keys = {"ca_file": str(self.tls.ca_cert)}
        if self.tls_cert_required:
            keys.update(cert_file=str(self.tls.client_cert), key_file=str(self.tls.client_key))
        return keys

    def trapd_kea_section(self, default_transport: str = "unix") -> dict[str, Any]:
        """``default_transport``: unix, ca or http (which endpoints are the family defaults)."""
        eps = self.endpoints()
        prefix = {"unix": "unix", "ca": "ca", "http": "http"}[default_transport]
        default = {"v4": f"{prefix}4", "v6": f"{prefix}6"}
        return {"default": {k: v for k, v in default.items() if v in eps}, "endpoints": eps}

    # --- lifecycle ---
    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll status-get on every control channel until each answers result 0."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    logs = self.logs()
                    self.stop()  # the daemons that did start must not outlive the failure
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{logs}")
            try:
                ok = self.cmd4("status-get")["result"] == 0
                if self.dhcp6_socket:
                    ok = ok and self.cmd6("status-get")["result"] == 0
                if self.d2_socket:
                    ok = ok and unix_command(self.host_path(self.d2_socket), "status-get")["result"] == 0
                for port in (self.http4_port, self.http6_port):
                    if ok and port:
                        ok = self.http_post(port, {"command": "status-get"})[0]["result"] == 0
                if ok and self.ca_port:
                    services = ["dhcp4"] + (["dhcp6"] if self.dhcp6_socket else [])
                    answer = self.ca_post({"command": "status-get", "service": services})
                    ok = all(a["result"] == 0 for a in answer)
                if ok:
                    self.version = str(self.cmd4("version-get")["text"])
                    return
            except (OSError, ValueError, http.client.HTTPException, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.03)
        self.stop()
        raise RuntimeError(f"Kea not ready after {timeout}s (last error {last!r}):\n{self.logs()}")

    def http_post(self, port: int, body: dict[str, Any]) -> Any:
        """POST to a Kea 3 daemon's HTTP socket (HTTPS with ``tls``; the instance's credentials)."""
        conn: http.client.HTTPConnection
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
            if self.tls_cert_required:
                ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Content-Type": "application/json"}
        if self.auth:
            import base64

            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.request("POST", "/", json.dumps(body), headers)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def ca_post(self, body: dict[str, Any]) -> Any:
        """POST to the CA with whatever credentials the instance was made with."""
        assert self.ca_port
        conn: http.client.HTTPConnection
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
            if self.tls_cert_required:
                ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
            conn = http.client.HTTPSConnection("127.0.0.1", self.ca_port, timeout=5, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.ca_port, timeout=5)
        headers = {"Content-Type": "application/json"}
        if self.auth:
            import base64

            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.request("POST", "/", json.dumps(body), headers)
            resp = conn.getresponse()
            return json.loads(resp.read())
        finally:
            conn.close()

    def logs(self) -> str:
        out = []
        for f in sorted(self.host_path(self.workdir).glob("*.log")) + sorted(
            self.host_path(self.workdir).glob("*.out")
        ):
            with contextlib.suppress(OSError):
                out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def spawn(self, daemon: str) -> None:
        argv, env = self.argv[daemon]
        out = open(self.host_path(self.workdir) / f"{daemon}.out", "ab")  # noqa: SIM115 - the child owns it
        self.procs[daemon] = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        out.close()

    def restart(self, daemon: str) -> None:
        """Stop one daemon and start it again with the same config; returns when all answer."""
        self.stop([daemon])
        self.spawn(daemon)
        self.wait_ready()

    def kill(self, daemon: str) -> None:
        """SIGKILL one daemon: it leaves its unix socket file behind (a stale socket)."""
        p = self.procs.pop(daemon)
        p.kill()
        p.wait()

    def stop(self, names: Sequence[str] | None = None) -> None:
        """SIGTERM the daemons we started (by pid), SIGKILL whatever is left after 5 s."""
        chosen = {n: p for n, p in self.procs.items() if names is None or n in names}
        for p in chosen.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in chosen.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for n in chosen:
            del self.procs[n]


def _loggers(name: str, workdir: Path, severity: str, dashes: bool = False) -> list[dict[str, Any]]:
    # Kea 2.2 knows only "output_options"; later versions spell it "output-options".
    key = "output-options" if dashes else "output_options"
    return [{"name": name, key: [{"output": str(workdir / f"{name}.log")}], "severity": severity}]


def _listed(relationships: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return relationships if isinstance(relationships, list) else [relationships]


def socket_tls(tls: TlsFiles, cert_required: bool) -> dict[str, Any]:
    """The TLS keys of a Control Agent or (Kea >= 3.0) a daemon's HTTP socket: HTTPS."""
    return {
        "trust-anchor": str(tls.ca_cert),
        "cert-file": str(tls.server_cert),
        "key-file": str(tls.server_key),
        "cert-required": cert_required,
    }


def start_kea(
    workdir: Path,
    *,
    lease_cmds: bool = True,
    dhcp6: bool = True,
    ca: bool = True,
    auth: tuple[str, str] | None = None,
    tls: TlsFiles | None = None,
    tls_cert_required: bool = False,
    ddns: DdnsTarget | None = None,
    severity: str = "WARN",
    dhcp_loopback: bool = False,
    http_sockets: bool = False,
    chroot: Path | None = None,
    hooks_dir: Path = HOOKS_DIR,
    ca_port: int | None = None,
    ha: dict[str, dict[str, Any] | list[dict[str, Any]]] | None = None,
    subnet4_context: dict[int, dict[str, Any]] | None = None,
) -> KeaInstance:
    """Write configs into ``workdir`` and start the daemons; returns when all answer.

    ``http_sockets`` (Kea >= 3.0): the daemons also get their own HTTP
    control sockets (basic auth with ``auth``), beside the unix ones.

    ``dhcp_loopback``: kea-dhcp4 also serves DHCP on 127.0.0.1:67 (UDP
    sockets) to relayed requests from 127.0.0.2 (see :func:`dhcp_discover`),
    the one way to see on Kea 2.2 whether DHCP service is disabled.

    With ``chroot``, ``workdir`` is a path inside the chroot and the daemons
    run as ``chroot CHROOT /usr/sbin/kea-...`` (Kea 2.6 / 3.0 from Debian
    trixie / sid).

    ``ha``: per daemon (``dhcp4``, ``dhcp6``) the HA hook's
    ``high-availability`` entry (this-server-name, mode, peers, timers),
    loaded after lease_cmds (see
    :func:`start_ha_pair`), or a list of them (a hub's relationships, see
    :func:`start_hub_and_spoke`); ``ca_port`` fixes the agent's port, which the
    partner's configuration names before this server starts.
    ``subnet4_context``: subnet-id -> its ``user-context`` (a hub's
    ``ha-server-name``: which relationship serves the subnet).
    """
    host_dir = chroot / workdir.relative_to("/") if chroot else workdir
    host_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(host_dir, 0o750)  # Kea >= 2.6 refuses a socket dir with other permissions
    hooks: list[dict[str, Any]] = [{"library": str(hooks_dir / LEASE_CMDS)}] if lease_cmds else []

    def hooks_of(daemon: str) -> list[dict[str, Any]]:
        if not ha or daemon not in ha:
            return hooks
        # The ARM wants lease_cmds before the HA hook. A list: the relationships of a hub (Kea >= 2.6).
        params = {"high-availability": _listed(ha[daemon])}
        entry = {"library": str(hooks_dir / HA_HOOK), "parameters": params}
        return [*hooks, entry]

    inst = KeaInstance(
        workdir=workdir,
        dhcp4_socket=workdir / "kea4.sock",
        dhcp6_socket=workdir / "kea6.sock" if dhcp6 else None,
        d2_socket=workdir / "kea-d2.sock" if ddns else None,
        ca_port=(ca_port or free_port()) if ca else None,
        auth=auth,
        tls=tls,
        tls_cert_required=tls_cert_required,
        chroot=chroot,
    )
    d2_port = free_port(kind=socket.SOCK_DGRAM) if ddns else 0
    dhcp4: dict[str, Any] = {
        "interfaces-config": {"interfaces": []},
        "control-socket": {"socket-type": "unix", "socket-name": str(inst.dhcp4_socket)},
        "lease-database": {
            "type": "memfile",
            "persist": True,
            "name": str(workdir / "leases4.csv"),
            "lfc-interval": 0,
        },
        "hooks-libraries": hooks_of("dhcp4"),
        "valid-lifetime": 3600,
        "subnet4": [{"id": i, "subnet": s} for i, s in SUBNETS4.items()],
        "loggers": _loggers("kea-dhcp4", workdir, severity, chroot is not None),
    }
    for subnet in dhcp4["subnet4"]:
        if subnet["id"] in (subnet4_context or {}):
            subnet["user-context"] = (subnet4_context or {})[subnet["id"]]
    dhcp6_cfg: dict[str, Any] = {
        "interfaces-config": {"interfaces": []},
        "control-socket": {"socket-type": "unix", "socket-name": str(workdir / "kea6.sock")},
        "lease-database": {
            "type": "memfile",
            "persist": True,
            "name": str(workdir / "leases6.csv"),
            "lfc-interval": 0,
        },
        "server-id": {"type": "LLT", "persist": False},
        "hooks-libraries": hooks_of("dhcp6"),
        "preferred-lifetime": 3000,
        "valid-lifetime": 4000,
        "subnet6": [{"id": i, "subnet": s} for i, s in SUBNETS6.items()],
        "loggers": _loggers("kea-dhcp6", workdir, severity, chroot is not None),
    }
    if http_sockets:
        inst.http4_port = free_port()
        inst.http6_port = free_port() if dhcp6 else None
        for cfg, port in ((dhcp4, inst.http4_port), (dhcp6_cfg, inst.http6_port)):
            http: dict[str, Any] = {"socket-type": "http", "socket-address": "127.0.0.1", "socket-port": port}
            if tls:
                http.update({"socket-type": "https", **socket_tls(tls, tls_cert_required)})
            if auth:
                http["authentication"] = {
                    "type": "basic",
                    "realm": "trapd-test",
                    "clients": [{"user": auth[0], "password": auth[1]}],
                }
            cfg["control-sockets"] = [cfg.pop("control-socket"), http]
    for daemon, cfg in (("dhcp4", dhcp4), ("dhcp6", dhcp6_cfg)):
        rels = (ha or {}).get(daemon, [])
        if any(r.get("multi-threading", {}).get("http-dedicated-listener") for r in _listed(rels)):
            # HA's own HTTP listener (http-dedicated-listener) needs a multi-threaded server.
            cfg["multi-threading"] = {
                "enable-multi-threading": True,
                "thread-pool-size": 2,
                "packet-queue-size": 16,
            }
    if dhcp_loopback:
        dhcp4["interfaces-config"] = {"interfaces": ["lo"], "dhcp-socket-type": "udp"}
        dhcp4["subnet4"].append(
            {
                "id": 3,
                "subnet": "192.0.2.0/24",
                "relay": {"ip-addresses": [RELAY_IP]},
                "pools": [{"pool": "192.0.2.100 - 192.0.2.200"}],
            }
        )
    if ddns:
        ddns_cfg = {"enable-updates": True, "server-ip": "127.0.0.1", "server-port": d2_port}
        dhcp4["dhcp-ddns"] = ddns_cfg
        dhcp6_cfg["dhcp-ddns"] = ddns_cfg
    configs: dict[str, dict[str, Any]] = {"kea-dhcp4": {"Dhcp4": dhcp4}}
    if dhcp6:
        configs["kea-dhcp6"] = {"Dhcp6": dhcp6_cfg}
    if ddns:
        servers = [{"ip-address": "127.0.0.1", "port": ddns.dns_port}]
        domains = ["1.10.in-addr.arpa.", "2.10.in-addr.arpa.", "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."]
        configs["kea-dhcp-ddns"] = {
            "DhcpDdns": {
                "ip-address": "127.0.0.1",
                "port": d2_port,
                "control-socket": {"socket-type": "unix", "socket-name": str(inst.d2_socket)},
                "tsig-keys": [{"name": ddns.key_name, "algorithm": "HMAC-SHA256", "secret": ddns.key_secret}],
                "forward-ddns": {
                    "ddns-domains": [
                        {"name": "example.org.", "key-name": ddns.key_name, "dns-servers": servers}
                    ]
                },
                "reverse-ddns": {
                    "ddns-domains": [
                        {"name": d, "key-name": ddns.key_name, "dns-servers": servers} for d in domains
                    ]
                },
                "loggers": _loggers("kea-dhcp-ddns", workdir, severity, chroot is not None),
            }
        }
    if ca:
        sockets: dict[str, Any] = {"dhcp4": {"socket-type": "unix", "socket-name": str(inst.dhcp4_socket)}}
        if dhcp6:
            sockets["dhcp6"] = {"socket-type": "unix", "socket-name": str(workdir / "kea6.sock")}
        agent: dict[str, Any] = {
            "http-host": "127.0.0.1",
            "http-port": inst.ca_port,
            "control-sockets": sockets,
            "loggers": _loggers("kea-ctrl-agent", workdir, severity, chroot is not None),
        }
        if auth:
            agent["authentication"] = {
                "type": "basic",
                "realm": "trapd-test",
                "clients": [{"user": auth[0], "password": auth[1]}],
            }
        if tls:
            agent.update(socket_tls(tls, tls_cert_required))
        configs["kea-ctrl-agent"] = {"Control-agent": agent}

    env = {**os.environ}
    for var in (
        "KEA_PIDFILE_DIR",
        "KEA_LOCKFILE_DIR",
        "KEA_LOG_FILE_DIR",
        "KEA_CONTROL_SOCKET_DIR",
        "KEA_DHCP_DATA_DIR",
    ):
        env[var] = str(workdir)
    if chroot:
        env["KEA_HOOKS_PATH"] = str(hooks_dir)
    try:
        # The daemons before the agent: the agent only forwards to their sockets.
        for daemon in ("kea-dhcp4", "kea-dhcp6", "kea-dhcp-ddns", "kea-ctrl-agent"):
            if daemon not in configs:
                continue
            conf = host_dir / f"{daemon}.conf"
            conf.write_text(json.dumps(configs[daemon], indent=1))
            argv = [f"/usr/sbin/{daemon}", "-c", str(workdir / f"{daemon}.conf")]
            if chroot:
                argv = ["chroot", str(chroot), *argv]
            inst.argv[daemon] = (argv, env)
            inst.spawn(daemon)
        inst.wait_ready()
    except BaseException:  # ^C, SIGTERM (the benchmarks), a failed spawn: no instance comes back to stop
        inst.stop()
        raise
    return inst


# --- an HA pair ---

HA_TIMERS = {
    "heartbeat-delay": 1000,
    "max-response-delay": 3000,
    "max-ack-delay": 1000,
    "max-unacked-clients": 0,
    "sync-timeout": 5000,
}
DAEMON_OF = {"v4": "dhcp4", "v6": "dhcp6"}


@dataclass
class HaPair:
    """Two Kea servers (kea-dhcp4 + kea-dhcp6 each) in one HA relationship per family.

    ``servers``: name -> instance, ``server1`` first (primary), ``server2``
    (standby in hot-standby, secondary in load-balancing). ``peer_urls``:
    (name, family) -> the URL its partner reaches it at: its Control Agent,
    or with ``dedicated`` the daemon's own HA listener (Kea >= 2.2 with
    multi-threading; on Kea 3.0 no Control Agent is started at all).
    """

    mode: str
    servers: dict[str, KeaInstance]
    peer_urls: dict[tuple[str, str], str]
    dedicated: bool = False

    def cmd(self, name: str, family: str, command: str, arguments: Any = None) -> dict[str, Any]:
        inst = self.servers[name]
        return inst.cmd4(command, arguments) if family == "v4" else inst.cmd6(command, arguments)

    def ha_status(self, name: str, family: str = "v4") -> dict[str, Any]:
        """The ``high-availability`` part of the server's status-get (one relationship)."""
        r = self.cmd(name, family, "status-get")
        assert r["result"] == 0, r
        return dict(r["arguments"]["high-availability"][0])

    def state(self, name: str, family: str = "v4") -> str:
        return str(self.ha_status(name, family)["ha-servers"]["local"]["state"])

    def wait_states(
        self, want: dict[str, set[str]], families: Sequence[str] = ("v4", "v6"), timeout: float = 90.0
    ) -> None:
        """Poll status-get until each named server is in one of its wanted HA states (every family)."""
        deadline = time.monotonic() + timeout
        seen: dict[tuple[str, str], str] = {}
        while time.monotonic() < deadline:
            for name in want:
                for fam in families:
                    try:
                        seen[(name, fam)] = self.state(name, fam)
                    except (OSError, ValueError, KeyError, AssertionError) as exc:
                        seen[(name, fam)] = f"unreachable: {exc}"
            if all(seen[(n, f)] in states for n, states in want.items() for f in families):
                return
            time.sleep(0.1)
        logs = "\n".join(inst.logs()[-4000:] for inst in self.servers.values())
        raise AssertionError(f"HA states not reached in {timeout}s: want {want}, saw {seen}\n{logs}")

    def stop_server(self, name: str) -> None:
        self.servers[name].stop()

    def restore(self, families: Sequence[str] = ("v4", "v6")) -> None:
        """After a test that stopped servers: each started again, and the pair back in its mode."""
        for name, inst in self.servers.items():
            if not inst.procs:
                self.start_server(name)
        self.wait_states({n: {self.mode} for n in self.servers}, families)

    def start_server(self, name: str) -> None:
        inst = self.servers[name]
        for daemon in inst.argv:
            inst.spawn(daemon)
        inst.wait_ready()

    def trapd_endpoints(self, transport: str = "unix", names: Sequence[str] | None = None) -> dict[str, Any]:
        """``kea.endpoints`` entries for trapd.yaml: ``pair4`` / ``pair6`` with their peers."""
        eps: dict[str, Any] = {}
        for fam in ("v4", "v6"):
            peers = []
            for name in names or list(self.servers):
                inst = self.servers[name]
                ep = inst.endpoints()
                key = {"unix": "unix", "ca": "ca", "http": "http"}[transport] + fam[1]
                peers.append({"name": name, **{k: v for k, v in ep[key].items() if k != "family"}})
            eps[f"pair{fam[1]}"] = {"family": fam, "peers": peers}
        return eps

    def stop(self) -> None:
        for inst in self.servers.values():
            inst.stop()


def start_ha_pair(
    base: Path,
    mode: str = "hot-standby",
    *,
    chroot: Path | None = None,
    dedicated: bool = False,
    auth: tuple[str, str] | None = None,
    ddns: DdnsTarget | None = None,
    hooks_dir: Path = HOOKS_DIR,
    wait: bool = True,
) -> HaPair:
    """Two servers in ``mode`` (hot-standby or load-balancing) on loopback; returns when both are in it.

    Kea 2.2: each server has a Control Agent and the HA peers' URLs are the
    agents. ``dedicated``: the peers talk to the daemons' own HA listeners
    (``http-dedicated-listener``, multi-threading on) and no agent is started
    (``http_sockets`` gives trapd the Kea 3 daemons' control sockets).
    """
    names = ("server1", "server2")
    roles = ("primary", "standby" if mode == "hot-standby" else "secondary")
    ca_ports = {n: free_port() for n in names}
    urls: dict[tuple[str, str], str] = {}
    for n in names:
        for fam in ("v4", "v6"):
            port = free_port() if dedicated else ca_ports[n]
            urls[(n, fam)] = f"http://127.0.0.1:{port}/"
    servers: dict[str, KeaInstance] = {}
    # The agents ask for the credentials too (the dedicated HA listeners have none here).
    peer_auth = {"basic-auth-user": auth[0], "basic-auth-password": auth[1]} if auth and not dedicated else {}
    for n in names:
        ha: dict[str, dict[str, Any] | list[dict[str, Any]]] = {}
        for fam in ("v4", "v6"):
            entry: dict[str, Any] = {
                "this-server-name": n,
                "mode": mode,
                **HA_TIMERS,
                "peers": [
                    {"name": p, "url": urls[(p, fam)], "role": r, "auto-failover": True, **peer_auth}
                    for p, r in zip(names, roles, strict=True)
                ],
            }
            if not dedicated:
                # Kea >= 2.4 runs HA multi-threaded with its own listener by default (on the peer's
                # URL, here the agent's port): off, so that the agent can listen there.
                entry["multi-threading"] = {"enable-multi-threading": False}
            else:
                entry["multi-threading"] = {
                    "enable-multi-threading": True,
                    "http-dedicated-listener": True,
                    "http-listener-threads": 1,
                    "http-client-threads": 1,
                }
            ha[DAEMON_OF[fam]] = entry
        try:
            servers[n] = start_kea(
                base / n,
                ca=not dedicated,
                ca_port=ca_ports[n],
                ha=ha,
                chroot=chroot,
                hooks_dir=hooks_dir,
                http_sockets=dedicated and chroot is not None,
                auth=auth,
                ddns=ddns,
            )
        except BaseException:
            for inst in servers.values():  # the partner already started must not outlive the failure
                inst.stop()
            raise
    pair = HaPair(mode, servers, urls, dedicated)
    if wait:
        try:
            pair.wait_states({n: {mode} for n in names})
        except BaseException:
            pair.stop()
            raise
    return pair


# --- a relayed DHCP exchange on loopback ---

RELAY_IP = "127.0.0.2"


def dhcp_discover(mac: str, timeout: float = 0.5) -> str | None:
    """Send a DHCPDISCOVER as a relay at 127.0.0.2 would; the offered address, or None.

    Kea (``dhcp_loopback``) listens on 127.0.0.1:67 and answers relays at
    their port 67, so this binds 127.0.0.2:67 (root) and puts 127.0.0.2 in giaddr.
    """
    import struct

    xid = int.from_bytes(os.urandom(4), "big")
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    pkt = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,
        1,
        6,
        1,
        xid,
        0,
        0,
        bytes(4),
        bytes(4),
        bytes(4),
        socket.inet_aton(RELAY_IP),
        chaddr,
        bytes(64),
        bytes(128),
    )
    pkt += bytes([0x63, 0x82, 0x53, 0x63, 53, 1, 1, 255])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((RELAY_IP, 67))
        s.settimeout(timeout)
        s.sendto(pkt, ("127.0.0.1", 67))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(4096)
            except TimeoutError:
                return None
            if len(data) >= 240 and struct.unpack("!I", data[4:8])[0] == xid and data[0] == 2:
                return socket.inet_ntoa(data[16:20])
    return None


# --- BIND for the DDNS tests ---


@dataclass
class Bind:
    port: int
    key_name: str
    key_secret: str
    proc: subprocess.Popen[bytes]
    workdir: Path

    def dig(self, name: str, rtype: str = "A") -> list[str]:
        args = [
            "dig",
            "+noall",
            "+answer",
            "+norecurse",
            "+time=2",
            "+tries=1",
            "@127.0.0.1",
            "-p",
            str(self.port),
        ]
        args += ["-x", name] if rtype == "PTR" else [name, rtype]
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout
        return [line.split()[-1] for line in out.splitlines() if line and not line.startswith(";")]

    def dig_until(self, name: str, rtype: str, expected: list[str], timeout: float = 5.0) -> list[str]:
        """dig until the answer is ``expected`` or time runs out (Kea answers before DNS changes)."""
        deadline = time.monotonic() + timeout
        answer = self.dig(name, rtype)
        while answer != expected and time.monotonic() < deadline:
            time.sleep(0.05)
            answer = self.dig(name, rtype)
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


ZONE = """$TTL 300
@ IN SOA ns.example.org. admin.example.org. 1 3600 600 86400 300
@ IN NS ns.example.org.
"""


def start_bind(workdir: Path) -> Bind:
    """named on 127.0.0.1:PORT, primary for example.org and the test reverse zones, TSIG updates."""
    import base64

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    zones = {
        "example.org": "example.org.db",
        "1.10.in-addr.arpa": "r4a.db",
        "2.10.in-addr.arpa": "r4b.db",
        "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa": "r6.db",
    }
    zone_conf = ""
    for zone, f in zones.items():
        text = ZONE + ("ns IN A 127.0.0.1\n" if zone == "example.org" else "")
        (workdir / f).write_text(text)
        zone_conf += (
            f'zone "{zone}" {{ type primary; file "{workdir / f}"; allow-update {{ key "kea-key"; }}; }};\n'
        )
    (workdir / "named.conf").write_text(f"""
options {{
  directory "{workdir}";
  pid-file "{workdir}/named.pid";
  session-keyfile "{workdir}/session.key";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  allow-query {{ 127.0.0.1; }};
}};
controls {{ }};
key "kea-key" {{ algorithm hmac-sha256; secret "{secret}"; }};
{zone_conf}
""")
    out = open(workdir / "named.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["/usr/sbin/named", "-g", "-c", str(workdir / "named.conf")],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    bind = Bind(port, "kea-key", secret, proc, workdir)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("named exited:\n" + (workdir / "named.out").read_text())
            r = subprocess.run(
                [
                    "dig",
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "@127.0.0.1",
                    "-p",
                    str(port),
                    "ns.example.org",
                    "A",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if r.stdout.strip() == "127.0.0.1":
                return bind
            time.sleep(0.05)
    except BaseException:
        bind.stop()
        raise
    bind.stop()
    raise RuntimeError("named not ready:\n" + (workdir / "named.out").read_text())


# --- hub and spoke (Kea >= 2.6) ---


@dataclass
class HubAndSpoke:
    """A hub (kea-dhcp4 with two HA relationships) and a spoke per relationship, hot-standby.

    Relationship ``a``: spoke1 (primary) with the hub as ``hub-a`` (standby), serving subnet 1;
    ``b``: spoke2 with the hub as ``hub-b``, serving subnet 2 (the hub's subnets say which
    relationship serves them: ``user-context: {ha-server-name: ...}``). Each server has a
    Control Agent, which the peers' URLs name.
    """

    servers: dict[str, KeaInstance]
    names: dict[str, tuple[str, str]]  # relationship -> (the hub's name in it, its spoke)

    def relationships(self, name: str) -> list[dict[str, Any]]:
        r = self.servers[name].cmd4("status-get")
        assert r["result"] == 0, r
        return list(r["arguments"]["high-availability"])

    def wait_states(self, want: dict[str, set[str]], timeout: float = 60.0) -> None:
        """Poll status-get until each named server is in a wanted state in every relationship it has."""
        deadline = time.monotonic() + timeout
        seen: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            for name in want:
                try:
                    seen[name] = [r["ha-servers"]["local"]["state"] for r in self.relationships(name)]
                except (OSError, ValueError, KeyError, AssertionError) as exc:
                    seen[name] = [f"unreachable: {exc}"]
            if all(seen[n] and set(seen[n]) <= states for n, states in want.items()):
                return
            time.sleep(0.1)
        raise AssertionError(f"HA states not reached in {timeout}s: want {want}, saw {seen}")

    def wait_relationships(self, name: str, states: list[str], timeout: float = 60.0) -> None:
        """Poll status-get until the server's relationships are in ``states``, in Kea's order."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = [r["ha-servers"]["local"]["state"] for r in self.relationships(name)]
            if seen == states:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name}'s relationships not in {states} after {timeout}s: {seen}")

    def trapd_endpoints(self) -> dict[str, Any]:
        """``hub_a`` / ``hub_b`` for trapd.yaml: the hub first (its name in that relationship), the spoke."""
        eps: dict[str, Any] = {}
        for rel, (hub_name, spoke) in self.names.items():
            peers = []
            for peer, inst in ((hub_name, self.servers["hub"]), (spoke, self.servers[spoke])):
                unix = inst.endpoints()["unix4"]
                peers.append({"name": peer, **{k: v for k, v in unix.items() if k != "family"}})
            eps[f"hub_{rel}"] = {"family": "v4", "peers": peers}
        return eps

    def stop(self) -> None:
        for inst in self.servers.values():
            inst.stop()


def start_hub_and_spoke(base: Path, *, chroot: Path, auth: tuple[str, str]) -> HubAndSpoke:
    """The three servers of :class:`HubAndSpoke` (dhcp4 only); returns when all are in hot-standby."""
    ca_ports = {n: free_port() for n in ("hub", "spoke1", "spoke2")}
    url = {n: f"http://127.0.0.1:{p}/" for n, p in ca_ports.items()}
    peer_auth = {"basic-auth-user": auth[0], "basic-auth-password": auth[1]}
    names = {"a": ("hub-a", "spoke1"), "b": ("hub-b", "spoke2")}

    def relationship(this: str, hub_name: str, spoke: str) -> dict[str, Any]:
        peers = [
            {"name": spoke, "url": url[spoke], "role": "primary", "auto-failover": True, **peer_auth},
            {"name": hub_name, "url": url["hub"], "role": "standby", "auto-failover": True, **peer_auth},
        ]
        # HA's own listener off (Kea >= 2.4 has it on by default): the agents take the URLs.
        return {"this-server-name": this, "mode": "hot-standby", **HA_TIMERS, "peers": peers,
                "multi-threading": {"enable-multi-threading": False}}  # fmt: skip

    servers: dict[str, KeaInstance] = {}
    try:
        servers["hub"] = start_kea(
            base / "hub", dhcp6=False, ca_port=ca_ports["hub"], chroot=chroot, auth=auth,
            ha={"dhcp4": [relationship(h, h, s) for h, s in names.values()]},
            subnet4_context={1: {"ha-server-name": "hub-a"}, 2: {"ha-server-name": "hub-b"}},
        )  # fmt: skip
        for hub_name, spoke in names.values():
            servers[spoke] = start_kea(
                base / spoke, dhcp6=False, ca_port=ca_ports[spoke], chroot=chroot, auth=auth,
                ha={"dhcp4": relationship(spoke, hub_name, spoke)},
            )  # fmt: skip
        hs = HubAndSpoke(servers, names)
        hs.wait_states({n: {"hot-standby"} for n in servers})
    except BaseException:
        for inst in servers.values():
            inst.stop()
        raise
    return hs
