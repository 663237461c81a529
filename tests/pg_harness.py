"""A private PostgreSQL 15 for the tests: initdb + pg_ctl in a temp dir, unix socket only.

The server runs as an unprivileged user (``trapd-pgtest``, created here when
missing; PostgreSQL refuses to run as root), listens on no TCP port
(``listen_addresses=''``) and on a socket in its own temp dir, trusts local
connections (only processes on this machine that can reach the socket), and is
removed after the session. Each test that asks for ``pg_url`` gets a database
of its own, already migrated to trapd's schema.

Debian 12 package: ``postgresql`` (scripts/setup.sh --test installs it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("TRAPD_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "trapd-pgtest"
SUPERUSER = "trapd"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    if os.geteuid() == 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)
    return pwd.getpwuid(os.geteuid())  # not root: run it as ourselves


class PgServer:
    """One PostgreSQL cluster in a temp dir; ``stop()``/``start()`` for outage tests."""

    def __init__(
        self, *, fsync: bool = False, netns: str | None = None, listen: tuple[str, ...] = ()
    ) -> None:
        """``fsync``: False for the tests (speed); True for benchmarks (what a real server does).
        ``netns``: the network namespace the server runs in, ``listen``: its TCP addresses there
        (none: the unix socket only)."""
        self.netns = netns
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"PostgreSQL 15 not installed ({PG_BIN}); scripts/setup.sh --test installs it")
        self.user = _ensure_user()
        self.dir = Path(tempfile.mkdtemp(prefix="trapd-pg-"))
        try:
            self.data = self.dir / "data"
            self.socket_dir = self.dir / "sock"
            self.socket_dir.mkdir()
            self.log = self.dir / "server.log"
            os.chmod(self.dir, 0o755)  # the tests (root) reach the socket; the data dir stays 0700
            for p in (self.dir, self.socket_dir):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
            self._run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            )
            with open(self.data / "postgresql.conf", "a") as f:
                f.write(
                    f"listen_addresses = '{','.join(listen)}'\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    f"fsync = {'on' if fsync else 'off'}\n"  # tests: speed over durability across power loss
                    "max_connections = 200\n"
                    "shared_buffers = 32MB\n"
                )
        except BaseException:  # initdb failed or was interrupted (^C, SIGTERM in a benchmark)
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self._dbs = itertools.count()

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        def demote() -> None:
            if self.netns is not None:
                _enter_netns(self.netns)
            if os.geteuid() == 0:
                os.setgid(self.user.pw_gid)
                os.setgroups([])
                os.setuid(self.user.pw_uid)

        return subprocess.run(
            argv, check=check, capture_output=True, text=True, preexec_fn=demote, cwd=self.dir, timeout=120
        )

    def start(self) -> None:
        r = self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"],
            check=False,
        )
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {r.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"]
        self._run(argv, check=False)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)
            return "" if cur.description is None else "\n".join("|".join(map(str, r)) for r in cur.fetchall())

    def new_database(self, migrated: bool = True) -> str:
        name = f"t{os.getpid()}_{next(self._dbs)}"
        self.psql(f"CREATE DATABASE {name}")
        url = self.url(name)
        if migrated:
            import asyncio
            from concurrent.futures import ThreadPoolExecutor

            from trapd.dispatch.journal.postgres import migrate

            # A thread of its own: callers may be inside a running event loop.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, migrate(url)).result()
        return url

    def cpu_by_process(self) -> dict[int, float]:
        """User + system CPU seconds so far of each of the server's processes (postmaster, children).

        By process: a connection's backend leaves /proc when it closes, so a benchmark takes
        the difference per process between two of these (:meth:`cpu_between`).
        """
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
                out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return out

    @staticmethod
    def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds the server's processes used between two :meth:`cpu_by_process`."""
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(predicate: object, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met within the timeout")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database with trapd's journal schema, on the session's server."""
    return pg_server.new_database()


class AnswerFault:
    """What :class:`PgProxy` does to the answer of the next statement that carries a marker."""

    def __init__(self, marker: bytes, delay: float | None) -> None:
        self.marker = marker
        self.delay = delay  # None: the answer is dropped and the connection cut
        self.hit = threading.Event()  # the statement reached the server, its answer was held
        self.done = threading.Event()  # the answer was dropped (connection cut) or let through


class PgProxy:
    """A unix-socket relay in front of a :class:`PgServer` that can lose or hold back one answer.

    The one fault a real server cannot be made to produce on cue: a statement that commits on
    the server while its answer never reaches trapd (the connection cut right after COMMIT was
    sent, before its answer was read), or reaches it late. :meth:`arm` picks the next statement
    whose bytes (query text or parameters) contain a marker; every answer of the server on that
    connection is held from then on until its ReadyForQuery says the transaction ended
    (status ``I``: committed or rolled back, the server is idle), then dropped with the
    connection, or let through after ``delay`` seconds. Everything else passes untouched.
    """

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.dir = Path(tempfile.mkdtemp(prefix="trapd-pgproxy-"))
        self.path = self.dir / ".s.PGSQL.5432"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._fault: AnswerFault | None = None
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="pgproxy-accept", daemon=True).start()

    def url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.dir}"

    def arm(self, marker: bytes, *, delay: float | None = None) -> AnswerFault:
        fault = AnswerFault(marker, delay)
        with self._lock:
            self._fault = fault
        return fault

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.server.socket_dir / ".s.PGSQL.5432"))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        target: list[AnswerFault] = []  # the fault this connection's next answers are subject to
        held = bytearray()  # the server's bytes not yet parsed into whole messages, or held back

        def cut() -> None:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 1.0)
                if self._closed:
                    break
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    with self._lock:
                        fault = self._fault
                        if fault is not None and fault.marker in data and not target:
                            self._fault = None
                            target.append(fault)
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    if not target:
                        client.sendall(data)
                        continue
                    held.extend(data)
                    if not _ends_transaction(held):
                        continue
                    fault = target.pop()
                    fault.hit.set()
                    if fault.delay is None:
                        # Done before the cut: the client raises as soon as its connection drops,
                        # and a test may look at ``done`` at once.
                        fault.done.set()
                        cut()  # the transaction ended on the server; its answer is lost
                        return
                    time.sleep(fault.delay)
                    client.sendall(bytes(held))
                    held.clear()
                    fault.done.set()
        except OSError:
            pass
        finally:
            cut()


def _ends_transaction(stream: bytes | bytearray) -> bool:
    """Whether backend messages in ``stream`` (whole ones from its start) include a ReadyForQuery
    with status I: the server finished a transaction (or a statement outside one) and is idle."""
    at = 0
    while at + 5 <= len(stream):
        kind = stream[at : at + 1]
        length = int.from_bytes(stream[at + 1 : at + 5], "big")
        end = at + 1 + length
        if end > len(stream):
            return False
        if kind == b"Z" and stream[at + 5 : at + 6] == b"I":
            return True
        at = end
    return False


def _enter_netns(name: str) -> None:
    """This process into a network namespace made with `ip netns add` (Python 3.11 has no os.setns)."""
    import ctypes

    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


class SplitPg:
    """A PostgreSQL server in a network namespace of its own, reached over TCP by each host through
    a veth pair of its own: two routes to one server, so that one host can be cut off while the
    other still reaches the database (a partition). Cut, the route's link is down on the server's
    side: the host's open connections hang (their packets are dropped, as on a network that
    fails) and its new ones fail; healed, the same connections carry on.

    The addresses are in 198.18.0.0/15 (RFC 2544, benchmarking), one /30 per route."""

    def __init__(self, routes: int = 2) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("a network namespace needs root and iproute2")
        pid = os.getpid()
        self.ns = f"trapd-split-{pid}"
        self.routes = routes
        self._tag = f"tps{pid % 100000}"
        n = pid % 256
        self.addrs = [(f"198.18.{n}.{4 * i + 1}", f"198.18.{n}.{4 * i + 2}") for i in range(routes)]
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        self.server: PgServer | None = None
        try:
            self._ns("ip", "link", "set", "lo", "up")
            for i, (here, there) in enumerate(self.addrs):
                a, b = f"{self._tag}a{i}", f"{self._tag}b{i}"
                for argv in (
                    ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                    ["ip", "link", "set", b, "netns", self.ns],
                    ["ip", "addr", "add", f"{here}/30", "dev", a],
                    ["ip", "link", "set", a, "up"],
                ):
                    subprocess.run(argv, check=True, capture_output=True)
                self._ns("ip", "addr", "add", f"{there}/30", "dev", b)
                self._ns("ip", "link", "set", b, "up")
            self.server = PgServer(netns=self.ns, listen=tuple(there for _, there in self.addrs))
            with open(self.server.data / "pg_hba.conf", "a") as f:
                f.write("host all all 198.18.0.0/15 trust\n")
            self.server.start()
        except BaseException:
            self.close()
            raise

    def _ns(self, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns, *argv], check=True, capture_output=True)

    def url(self, dbname: str, route: int) -> str:
        """The database over TCP through route ``route``."""
        return f"postgresql://{SUPERUSER}@{self.addrs[route][1]}:5432/{dbname}"

    def cut(self, route: int) -> None:
        self._ns("ip", "link", "set", f"{self._tag}b{route}", "down")

    def heal(self, route: int) -> None:
        self._ns("ip", "link", "set", f"{self._tag}b{route}", "up")

    def close(self) -> None:
        if self.server is not None:
            self.server.remove()
        for i in range(self.routes):
            subprocess.run(["ip", "link", "del", f"{self._tag}a{i}"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
