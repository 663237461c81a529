"""What trapd does at run time, run by tests/test_systemd_units.py under strace and under W^X.

PID 1 is not systemd on the test machine, so the unit's seccomp filter and
MemoryDenyWriteExecute= cannot be applied for real. Instead this script does
what the daemon does (uvloop, UDP receive, pysnmp v3 with AES, cryptography,
YAML, Jinja2, httpx, the metrics endpoint, unix sockets, threads, programs
run by exec actions) and the test checks every system call it makes against
the unit's SystemCallFilter=, and runs it under the kernel's own W^X lock
(PR_SET_MDWE). Extend it when trapd starts doing something new.

``--mdwe``: turn on PR_SET_MDWE first (exit 77 if the kernel lacks it), and
check that a writable+executable mapping is then refused.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

if "--mdwe" in sys.argv:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("PR_SET_MDWE unsupported, errno", ctypes.get_errno())
        sys.exit(77)

import asyncio  # noqa: E402  (after the W^X lock, so that every import runs under it)
import concurrent.futures  # noqa: E402
import mmap  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import httpx  # noqa: E402
import jinja2  # noqa: E402
import uvloop  # noqa: E402
import yaml  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from pysnmp.entity import config, engine  # noqa: E402
from trapd_actions.exec import exec_  # noqa: E402

import trapd.config  # noqa: E402
import trapd.listener.fastpath  # noqa: E402, F401
from trapd.service.exporter import MetricsServer  # noqa: E402
from trapd.service.logging import configure_logging, get_logger  # noqa: E402
from trapd.service.metrics import DaemonSnapshot, TrapdCollector, build_registry  # noqa: E402
from trapd.service.sdnotify import Notifier  # noqa: E402
from trapd.testing import run_action  # noqa: E402


async def main() -> None:
    configure_logging("info", "json")
    log = get_logger("workload")
    Cipher(algorithms.AES(b"k" * 16), modes.CBC(b"i" * 16)).encryptor().update(b"x" * 64)
    snmp = engine.SnmpEngine()
    config.add_v3_user(
        snmp, "u", config.USM_AUTH_HMAC96_SHA, "authkey12", config.USM_PRIV_CFB128_AES, "privkey12"
    )
    yaml.load("a: [1, 2]", Loader=yaml.CSafeLoader)
    assert jinja2.Environment().from_string("{{ a | upper }}").render(a="x") == "X"

    server = MetricsServer(build_registry(TrapdCollector(DaemonSnapshot)), port=0)
    await server.start()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/metrics")).status_code == 200
    await server.close()

    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("::1", 0))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"t", rx.getsockname())
    assert await loop.sock_recv(rx, 100) == b"t"
    rx.close()

    with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX) as us:
        us.bind(d + "/s")
        us.listen()
        _, writer = await asyncio.open_unix_connection(d + "/s")
        writer.close()

    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "echo hi", stdout=asyncio.subprocess.PIPE)
    assert (await proc.communicate())[0] == b"hi\n"
    subprocess.run(["/bin/true"], check=True)
    # The exec action's own start: pipes, Popen with close_fds, a thread that reaps the program.
    exec_run = await run_action(exec_, {"argv": ["/bin/sh", "-c", "echo hi"]})
    assert exec_run.result is not None and exec_run.result["stdout"] == "hi\n"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert await loop.run_in_executor(pool, sum, [1, 2]) == 3
    await loop.getaddrinfo("localhost", 162)
    Notifier().status("workload")
    log.info("workload done")


uvloop.run(main())
if "--mdwe" in sys.argv:
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("wx-refused")
print("ok")
