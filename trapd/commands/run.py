"""Run the trapd daemon.

Receives notifications on the configured listeners, matches the rules and
dispatches actions through the journal. Under systemd (Type=notify) it
reports READY once the sockets are bound and the journal is open.

Signals: SIGHUP reloads trapd.yaml and the rules atomically (a bad file keeps
the running configuration and says why in the log and in systemd's STATUS);
SIGTERM / SIGINT stop receiving, let running actions finish up to the
shutdown timeout and leave the rest in the journal (exit 0).

With service.workers: N (or --workers N) above 1, this process supervises N
receiving processes on the same ports (SO_REUSEPORT) and one journal: it
serves the metrics for all of them, passes reloads and SIGTERM on, and
restarts a worker that dies (see docs/service.md, "Several workers").
"""

from __future__ import annotations

import argparse
import sys

HELP = "run the daemon (receive, match, dispatch)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE", default=None, help="trapd.yaml (default /etc/trapd/trapd.yaml)"
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="listen address, repeatable; replaces the config's (IPv6: [::1]:162)",
    )
    p.add_argument(
        "--community",
        action="append",
        metavar="NAME",
        help="accepted v1/v2c community, repeatable; env:VAR or file:PATH reads it from there "
        "(plain text is in the process list for every local user to read)",
    )
    p.add_argument(
        "--rules", action="append", metavar="FILE", help="rule file, repeatable; replaces the config's"
    )
    p.add_argument("--state-dir", metavar="DIR", help="journal and caches (default /var/lib/trapd)")
    p.add_argument("--dry-run", action="store_true", help="render and log every action, run none")
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    p.add_argument(
        "--log-format", choices=("auto", "journal", "json", "console"), help="log format (default auto)"
    )
    p.add_argument("--metrics", metavar="HOST:PORT", help="metrics and /healthz address ('off' to disable)")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="receiving processes on the same ports (replaces service.workers; 1: no supervisor)",
    )


def main(args: argparse.Namespace) -> int:
    import contextlib
    import faulthandler
    import gc

    # A fatal signal (SIGSEGV in an extension, SIGABRT from systemd's watchdog) writes every
    # thread's Python stack to stderr: the journal.
    # Without a usable stderr (closed, not a file) there is nowhere to write a stack.
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        faulthandler.enable(all_threads=True)
    # Off while start-up builds what trapd keeps; trapd.service.daemon.settle_memory turns it back on.
    gc.disable()
    from trapd.service.options import RunOptions

    _forbid_core_dumps()  # before the configuration, and its secrets, are read
    options = RunOptions.from_args(args)
    config = options.load_or_exit()
    if any(c.on_command_line for c in config.listener.communities):
        # Once, at start (stderr: the journal under systemd); a reload reads the same argv.
        print(
            "trapd run: warning: a --community given as plain text is visible to every local user "
            "(ps, /proc); give env:VAR or file:PATH, or put it in trapd.yaml",
            file=sys.stderr,
        )
    if config.service.workers > 1:
        from trapd.service.workers import run_supervisor

        return run_supervisor(config, options)
    from trapd.service.daemon import run_daemon

    return run_daemon(config, options)


_PR_SET_DUMPABLE = 4  # <linux/prctl.h>
ALLOW_CORE_DUMPS = "TRAPD_ALLOW_CORE_DUMPS"  # =1: leave core dumps to the limit (debugging a crash)


def _forbid_core_dumps() -> None:
    """No core dump of trapd (or of the workers it forks), whatever the core limit it was started
    with: one holds every community, v3 key and Kea password in clear. The unit sets LimitCORE=0;
    started otherwise (a shell, a container), a SIGABRT or a crash dumped them into the working
    directory. Not dumpable, its /proc/PID/environ and mem are also root's alone, not readable by
    a program of the same user (an exec action's). A program it executes is dumpable again."""
    import os

    if os.environ.get(ALLOW_CORE_DUMPS) == "1" or not sys.platform.startswith("linux"):
        return
    import contextlib
    import ctypes
    import resource

    # The unit's system call filter refuses setrlimit (EPERM): LimitCORE=0 did it already.
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    # The limit alone is not enough: a core_pattern pipe (apport, systemd-coredump) gets the dump
    # whatever it is, and not every helper honours it.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        print(
            f"trapd run: warning: prctl(PR_SET_DUMPABLE) failed: {os.strerror(ctypes.get_errno())}",
            file=sys.stderr,
        )
