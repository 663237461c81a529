"""Look into the action journal and act on it: the audit trail and the operator's levers.

    trapd journal list                       # not finished: scheduled, pending, failed, held, running
    trapd journal list --state dead          # given up; also: held, running, done, cancelled, all
    trapd journal list --state held          # HELD AT (when a cap held it) and HOLD EXPIRES
    trapd journal list --state all --host dhcp2   # shared journal: what dhcp2 journaled or claimed
    trapd journal show 1234                  # one action: parameters, event, attempts, result, error
    trapd journal retry 1234 1240            # dead / failed / held / cancelled -> run again now
    trapd journal cancel 1234                # a waiting action will not run
    trapd journal release 1234               # held by a rate cap -> run now, exempt from caps
    trapd journal release --rule mac-removed # every held action of a rule (shows them, asks)
    trapd journal release --all --dry-run    # what would be released; nothing changes
    trapd journal release --all              # shows them and asks; --yes off a terminal
    trapd journal history --mac 00:11:22:33:44:55            # "which trap deleted this lease?"
    trapd journal history --ip 10.1.2.3 --since 2d
    trapd journal history --source 10.20.1.5 --since 2026-01-05T10:00 --until 2026-01-05T11:00
    trapd journal history --rule port-down --state dead --json
    trapd journal migrate                    # PostgreSQL: create or upgrade trapd's schema
    trapd journal check                      # SQLite: PRAGMA quick_check of the whole file

The journal is the SQLite file in the state directory (``--state-dir``, or
``state_dir`` of trapd.yaml, default /var/lib/trapd). Reading is safe while
the daemon runs (WAL mode). retry / cancel / release write to the journal
directly; the running daemon notices the change within
``dispatch.journal.poll_interval`` (1 s by default) and acts on it.

With ``dispatch.journal.url`` (PostgreSQL, docs/pair.md) the same commands
work on the shared database, and ``migrate`` creates or upgrades trapd's
schema in it (trapd refuses to start on a schema older or newer than itself).

list, show and history read what they show and no more (a damaged page they read says so);
``check`` reads the whole file (about 7 s per GB), as the daemon does at start-up.

Times: ISO 8601 (``2026-01-05T10:00``, local time unless it says otherwise),
a duration meaning "that long ago" (``90m``, ``2d``), or Unix seconds.
Exit status: 0 done, 1 nothing matched (unknown id, nothing to release; retry, cancel and
release: an id given that was left unchanged, named on stderr; retry and release refuse an
action whose row cannot be read back, saying why: docs/dispatch.md), 2 usage or no usable journal.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list, show, retry, cancel and release journaled actions; history by MAC, IP, switch, rule, time"

HOST_HELP = "shared journal: the actions this host journaled or claimed (JOURNALED or HOST column)"

LIST_STATES = (
    "waiting",
    "scheduled",
    "pending",
    "running",
    "failed",
    "held",
    "dead",
    "done",
    "cancelled",
    "all",
)


def action_id(text: str) -> int:
    """argparse type of a journal id: the ids SQLite and PostgreSQL give (1 .. 2**63 - 1)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(
            f"not an action id: {text!r} (a number, as trapd journal list shows)"
        )
    return value


def positive(text: str) -> int:
    """argparse type of a --limit: 1 .. 2**63 - 1 (what SQLite's LIMIT takes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE", help="trapd.yaml (default /etc/trapd/trapd.yaml if present)"
    )
    p.add_argument("--state-dir", metavar="DIR", help="state directory holding journal.sqlite")
    p.add_argument("--journal", metavar="FILE", help="the journal file itself")
    p.add_argument("--json", action="store_true", help="JSON output (one object per line for lists)")
    sub = p.add_subparsers(dest="journal_command", metavar="SUBCOMMAND", required=True)

    ls = sub.add_parser("list", help="waiting actions (or those in --state)")
    ls.add_argument(
        "--state", choices=LIST_STATES, default="waiting",
        help="waiting (default): scheduled, pending, failed, held, running; all: every state",
    )  # fmt: skip
    ls.add_argument("--limit", type=positive, default=100, help="at most N actions, the newest (default 100)")
    ls.add_argument("--host", help=HOST_HELP)

    show = sub.add_parser("show", help="one action in full")
    show.add_argument("id", type=action_id, help="the journal id (the ID column of list and history)")

    for name, what in (("retry", "run dead / failed / held / cancelled actions again"),
                       ("cancel", "cancel waiting or held actions")):  # fmt: skip
        sp = sub.add_parser(name, help=what)
        sp.add_argument("ids", type=action_id, nargs="+", metavar="ID", help="journal ids")

    rel = sub.add_parser("release", help="release actions held by a rate cap")
    rel.add_argument("ids", type=action_id, nargs="*", metavar="ID", help="journal ids (or --rule / --all)")
    rel.add_argument("--rule", help="every held action of this rule")
    rel.add_argument("--all", action="store_true", help="every held action")
    rel.add_argument("--dry-run", action="store_true", help="list what would be released, release nothing")
    rel.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="--all / --rule: release without asking (needed off a terminal)",
    )

    mig = sub.add_parser("migrate", help="PostgreSQL journal: create or upgrade trapd's schema")
    chk = sub.add_parser("check", help="SQLite journal: check the whole file (PRAGMA quick_check)")

    hist = sub.add_parser("history", help="actions by MAC, IP, switch, rule, time (newest first)")
    hist.add_argument("--mac", help="MAC address the action was about (any spelling)")
    hist.add_argument("--ip", help="IP address the action was about")
    hist.add_argument("--source", "--switch", dest="source", help="address of the switch that sent the trap")
    hist.add_argument("--rule", help="rule name")
    hist.add_argument("--action", help="action plugin name")
    hist.add_argument("--state", choices=LIST_STATES[1:-1], action="append", help="repeatable")
    hist.add_argument("--since", help="from this time (ISO 8601, or a duration ago: 2h)")
    hist.add_argument("--until", help="before this time")
    hist.add_argument("--host", help=HOST_HELP)
    hist.add_argument("--limit", type=positive, default=100, help="at most N actions (default 100)")

    # The common options work after the subcommand too: `trapd journal history --json`.
    for sp in (ls, show, rel, hist, mig, chk, *(sub.choices[n] for n in ("retry", "cancel"))):
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
        sp.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sp.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sp.add_argument("--journal", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from trapd.dispatch.journal import JournalError
    from trapd.yamlsource import ConfigError

    try:
        path, jc = journal_location(args)
    except ConfigError as exc:
        print(f"trapd journal: {exc}", file=sys.stderr)
        return 2
    if args.journal_command == "migrate":
        return _migrate(jc, args.json)
    if args.journal_command == "check" and jc is not None:
        print(
            "trapd journal: check is for the SQLite journal; PostgreSQL checks its own pages "
            "(pg_amcheck checks a database's tables and indexes)",
            file=sys.stderr,
        )
        return 2
    if jc is None:
        try:
            path.stat()
        except FileNotFoundError:
            print(f"trapd journal: no journal at {path} (see --state-dir)", file=sys.stderr)
            return 2
        except PermissionError:
            # trapd keeps its state directory 0700 and the journal 0600: an admin without sudo.
            print(
                f"trapd journal: cannot read {path.parent}: permission denied (trapd's state directory: "
                "run this as root, or as the user trapd runs as)",
                file=sys.stderr,
            )
            return 2
        except OSError as exc:
            print(f"trapd journal: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    try:
        if args.journal_command == "check":
            return asyncio.run(_check(path, args.json))
        return asyncio.run(_run(args, path, jc))
    except (ValueError, JournalError) as exc:
        print(f"trapd journal: {exc}", file=sys.stderr)
        return 2


def _migrate(jc: Any, as_json: bool) -> int:
    import asyncio
    import json
    import sys

    from trapd.dispatch.journal import JournalError

    if jc is None:
        if as_json:
            print(json.dumps({"backend": "sqlite", "before": None, "after": None}))
        else:
            print("the SQLite journal needs no migration: trapd upgrades it when it opens it")
        return 0
    from trapd.dispatch.journal.postgres import COMPATIBLE_SINCE, migrate

    try:
        before, after = asyncio.run(migrate(jc.conninfo()))
    except JournalError as exc:
        print(f"trapd journal: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"backend": "postgresql", "before": before, "after": after}))
    elif before == after:
        print(f"journal schema {after}: up to date")
    else:
        print(f"journal schema {'created' if before is None else before} -> {after}")
        if before is not None:
            # A pair upgraded one host at a time: what of the other host, still on the older trapd.
            print(
                f"a trapd of schema {COMPATIBLE_SINCE} or later runs on it; "
                + ("the other host's older trapd keeps running" if before >= COMPATIBLE_SINCE
                   else f"an older one (this was schema {before}) must be stopped and upgraded")
            )  # fmt: skip
    return 0


async def _check(path: Any, as_json: bool) -> int:
    """The daemon's start-up check (PRAGMA quick_check) of the file, read-only, on request: the
    looking commands no longer run it. 0 sound, 1 damaged (what, and how to recover)."""
    import json
    import time

    from trapd.dispatch.journal import SQLiteJournal

    journal = SQLiteJournal(path, read_only=True, check_at_open=True)
    started = time.monotonic()
    await journal.open()
    try:
        elapsed = time.monotonic() - started
        problem = journal.damage
    finally:
        await journal.close()
    if as_json:
        print(
            json.dumps({"journal": str(path), "ok": problem is None, "problem": problem, "seconds": elapsed})
        )
    elif problem is None:
        print(f"{path}: ok (PRAGMA quick_check, {elapsed:.1f} s)")
    else:
        print(str(journal._damaged(f"integrity check: {problem}")))
    return 0 if problem is None else 1


def journal_location(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the SQLite file, None) or (None, the JournalConfig of a PostgreSQL journal)."""
    from pathlib import Path

    from trapd.config import DEFAULT_CONFIG, default_config_present, load_config

    if args.journal or (args.state_dir and args.journal_command != "migrate"):
        # Named on the command line: that SQLite file, also where trapd.yaml names a shared
        # journal (the old journal of a pair moved to PostgreSQL was listed as the shared one).
        # Not for migrate, whose job is trapd.yaml's shared journal: given the same options as
        # the other commands, it answered "the SQLite journal needs no migration".
        return journal_path(args), None
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    config = load_config(config_path) if (args.config or default_config_present()) else None
    if config is not None and config.dispatch.journal.url is not None:
        return None, config.dispatch.journal
    return journal_path(args), None


def journal_path(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from trapd.config import DEFAULT_CONFIG, default_config_present, load_config
    from trapd.dispatch.config import DispatchConfig

    if args.journal:
        return Path(args.journal)
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    config = load_config(config_path) if (args.config or default_config_present()) else None
    dispatch = config.dispatch if config else DispatchConfig()
    if args.state_dir:
        return dispatch.journal.file(Path(args.state_dir))
    return dispatch.journal.file(config.state_dir if config else Path("/var/lib/trapd"))


async def _run(args: argparse.Namespace, path: Any, jc: Any = None) -> int:
    # release --dry-run only looks too: read-only, unchecked, also on a read-only mount.
    inspect = args.journal_command in ("list", "show", "history") or (
        args.journal_command == "release" and args.dry_run
    )
    # Looking: a row that cannot be read back is shown as far as it can be read (and says so),
    # not the end of the listing; also in release's preview, which then leaves such a row alone
    # (_release_ids). (`trapd kea restore` reads strictly: it acts on what it reads.)
    lenient = inspect or args.journal_command == "release"
    if getattr(args, "host", None) is not None and jc is None:
        # No host names in it: 'no actions' read as "that host did nothing".
        raise ValueError(f"--host is for a shared journal (dispatch.journal.url); {path} is one host's")
    journal = await open_cli_journal(path, jc, read_only=inspect, command="trapd journal", lenient=lenient)
    args.shared_journal = jc is not None  # several hosts: which one claimed each action is shown
    try:
        cmd = args.journal_command
        now = journal.now()
        if cmd == "list":
            return await _list(journal, args)
        if cmd == "show":
            return await _show(journal, args)
        if cmd == "history":
            return await _history(journal, args)
        if cmd == "retry":
            return await _retry(journal, args, now)
        if cmd == "cancel":
            return _changed(
                "cancelled", await journal.cancel(args.ids, now, "cancelled by an operator"), args
            )
        if cmd == "release":
            if not (args.ids or args.rule or args.all):
                raise ValueError("release needs IDs, --rule RULE or --all")
            return await _release(journal, args, now)
        raise ValueError(f"unknown subcommand {cmd}")
    finally:
        await journal.close()


async def open_cli_journal(
    path: Any, jc: Any, *, read_only: bool, command: str, lenient: bool = False
) -> Any:
    """The journal an operator's command works on, opened: the SQLite file at ``path``, or the
    PostgreSQL journal of ``jc`` (a JournalConfig with a url; else None).

    ``read_only`` (looking, not changing): the file is opened read-only, so that nothing is
    made (no state directory, no empty journal), written or upgraded behind a running trapd;
    also when it is damaged, so that what survived can be read (the damage is said on stderr).
    ``lenient`` (looking only): a damaged row is read as far as it can be, and says so.
    Raises JournalError (no journal there, cannot open it)."""
    import sys

    from trapd.dispatch.journal import SQLiteJournal, open_journal

    if jc is None and not read_only:
        from trapd.dispatch.journal.sqlite import header_problem, not_a_journal

        # What the file is, before a write's open gives the daemon's advice (mv it aside ...).
        if (problem := header_problem(path)) is not None:
            raise not_a_journal(path, problem)
    journal = (
        SQLiteJournal(path, read_only=read_only, lenient=lenient)
        if jc is None
        else open_journal(path, jc, owner="cli")
    )
    if jc is not None:
        from trapd.dispatch.journal.postgres import PostgresJournal  # a url: psycopg is needed anyway

        if isinstance(journal, PostgresJournal):
            journal.lenient = lenient
    await journal.open()
    damage = getattr(journal, "damage", None)
    if damage:
        print(f"{command}: {path} is damaged ({damage}); using what can still be read", file=sys.stderr)
    return journal


async def _retry(journal: Any, args: argparse.Namespace, now: float) -> int:
    """Retry, but not an action whose row cannot be read back: run again, the daemon would meet the
    same damage and set it aside again (logged, counted, /healthz 503 again). Refused by id, why
    and what to do instead; once the row is repaired it can be retried."""

    unreadable: dict[int, str] = await journal.unreadable_rows(args.ids)
    retried = await journal.retry([i for i in args.ids if i not in unreadable], now)
    _refuse_unreadable("retried", unreadable, args)
    return _changed("retried", retried, args, refused=unreadable)


_VERB = {"retried": "retry", "released": "release"}


def _refuse_unreadable(verb: str, unreadable: dict[int, str], args: argparse.Namespace) -> None:
    """On stderr, per action left alone because its row cannot be read back: why, what instead."""
    import sys

    if args.json:
        return  # in the JSON answer (see _changed)
    for id_, problem in sorted(unreadable.items()):
        print(
            f"not {verb}: {id_}: its journal row cannot be read back ({problem}), so the daemon "
            f"would only set it aside (dead, never run). `trapd journal show {id_}` shows what is "
            f"left of it: do by hand what it was to do, or repair the row and {_VERB[verb]} it then "
            '(docs/dispatch.md, "A row that cannot be read back")',
            file=sys.stderr,
        )


def _changed(
    verb: str, ids: list[int], args: argparse.Namespace, *, refused: dict[int, str] | None = None
) -> int:
    """Say what changed, and which of the ids asked for did not: exit 1 unless all of them did
    (or, without ids, unless something did). ``refused``: ids left unchanged for a reason said
    already (on stderr; in --json as ``"unreadable"``: id -> why)."""
    import json
    import sys

    asked = list(dict.fromkeys(getattr(args, "ids", None) or ()))
    unchanged = [i for i in asked if i not in set(ids)]
    if args.json:
        out: dict[str, Any] = {verb: ids, "unchanged": unchanged}
        if refused is not None:
            out["unreadable"] = {str(i): why for i, why in sorted(refused.items())}
        print(json.dumps(out))
    elif ids:
        print(f"{verb}: {' '.join(map(str, ids))}")
        print("the running daemon picks this up within its poll interval (1 s by default)")
    elif refused and all(i in refused for i in unchanged):
        print(f"nothing {verb}")  # why: said above, on stderr
    else:
        print(f"nothing {verb}: no such id, or not in a state that allows it (see trapd journal show ID)")
    unsaid = [i for i in unchanged if i not in (refused or {})]
    if unsaid and not args.json:
        why = " (no such id, or not in a state that allows it)" if ids else ""  # else said above
        print(f"not {verb}: {' '.join(map(str, unsaid))}{why}", file=sys.stderr)
    return 0 if ids and not unchanged and not refused else 1


# A terminal's preview of a bulk release shows this many held actions (and the count of the rest):
# the question is asked where the operator can still see its start.
PREVIEW_ROWS = 20
# Ids per release statement when releasing exactly what was shown (SQLite's variable limit).
RELEASE_CHUNK = 500


async def _release(journal: Any, args: argparse.Namespace, now: float) -> int:
    """Release held actions. Ids named one by one are released as asked. A bulk release (--all,
    --rule: possibly thousands of held lease deletions) is previewed: --dry-run lists them and
    changes nothing; on a terminal they are shown and the operator is asked, and exactly what was
    shown is released (an action held meanwhile waits for its own decision); off a terminal (a
    script, ssh without a tty, output to a file) or with --json, --yes is needed."""
    import asyncio
    import sys

    bulk = not args.ids
    if not args.dry_run and not bulk:
        return await _release_ids(journal, args, now, args.ids, args.rule)
    held = await _held(journal, args)
    if args.dry_run:
        _print_entries(held, args)
        if not args.json:
            print(f"would release {_count(len(held))} (dry run: nothing changed)")
        return 0 if held else 1
    if not held:
        return _changed("released", [], args)
    if args.yes:
        return await _release_ids(journal, args, now, [e.id for e in held], None)
    what = "--all" if args.all else f"--rule {args.rule}"
    # Asked only where the operator sees the list and the question and can answer: stdin and
    # stdout a terminal (typed with its output to a file, both would go there unseen).
    unasked = "--json" if args.json else None
    unasked = unasked or next((f"{n} is not a terminal" for n in ("stdin", "stdout")
                               if not getattr(sys, n).isatty()), None)  # fmt: skip
    if unasked is not None:
        print(
            f"trapd journal: release {what} would release {_count(len(held))}: "
            f"see them with --dry-run, and give --yes to release them without being asked ({unasked})",
            file=sys.stderr,
        )
        return 2
    _print_entries(held[:PREVIEW_ROWS], args)
    if len(held) > PREVIEW_ROWS:
        print(f"… {len(held) - PREVIEW_ROWS} more (trapd journal release {what} --dry-run lists all)")
    try:
        # In a thread: the journal's connection (PostgreSQL's keepalives) lives on while the
        # operator reads.
        answer = await asyncio.to_thread(input, f"release these {_count(len(held))}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing released")
        return 1
    return await _release_ids(journal, args, now, [e.id for e in held], None)


async def _release_ids(
    journal: Any, args: argparse.Namespace, now: float, ids: list[int], rule: str | None
) -> int:
    """Release exactly ``ids`` (of ``rule``, if given), but not an action whose row cannot be read
    back (see :func:`_retry`): it stays held, named on stderr with why."""
    import sys

    unreadable: dict[int, str] = {}
    for start in range(0, len(ids), RELEASE_CHUNK):
        unreadable.update(await journal.unreadable_rows(ids[start : start + RELEASE_CHUNK]))
    _refuse_unreadable("released", unreadable, args)
    wanted = [i for i in ids if i not in unreadable]
    released: list[int] = []
    for start in range(0, len(wanted), RELEASE_CHUNK):  # never none: no ids means every held action
        released += await journal.release(now, wanted[start : start + RELEASE_CHUNK], rule)
    if not args.ids and len(released) < len(wanted):
        gone = len(wanted) - len(released)
        print(f"{gone} of them no longer held (released, cancelled or expired meanwhile)", file=sys.stderr)
    return _changed("released", sorted(released), args, refused=unreadable)


async def _held(journal: Any, args: argparse.Namespace) -> list[Any]:
    """The held actions a release selects (ids, --rule, --all), oldest first."""
    from trapd.dispatch.journal import HistoryFilter

    if args.ids:
        found = [await journal.get(i, with_event=False) for i in dict.fromkeys(args.ids)]
        held = [e for e in found if e is not None and e.state == "held"]
        return [e for e in held if args.rule is None or e.rule == args.rule]
    entries = await journal.history(HistoryFilter(states=("held",), rule=args.rule, limit=2**62))
    return sorted(entries, key=lambda e: e.id)


def _count(n: int) -> str:
    return f"{n} held action{'' if n == 1 else 's'}"


async def _list(journal: Any, args: argparse.Namespace) -> int:
    from trapd.dispatch.journal import HistoryFilter

    states: tuple[str, ...]
    if args.state == "waiting":
        states = ("scheduled", "pending", "failed", "held", "running")
    elif args.state == "all":
        states = ()
    else:
        states = (args.state,)
    entries = await journal.history(HistoryFilter(states=states, host=args.host, limit=args.limit))
    entries.sort(key=lambda e: e.id)
    _print_entries(entries, args)
    if len(entries) == args.limit and not args.json:
        print(f"(the newest {args.limit} shown; --limit N for more)")
    return 0


async def _history(journal: Any, args: argparse.Namespace) -> int:
    from trapd.dispatch.journal import HistoryFilter
    from trapd.params import Param, ParamError, convert

    mac = ip = None
    try:
        if args.mac:
            mac = convert(Param("mac-address"), args.mac, "--mac")
        if args.ip:
            ip = convert(Param("ip-address"), args.ip, "--ip")
    except ParamError as exc:
        raise ValueError(str(exc)) from None
    # "2h ago" by the clock the journal's times are on: a shared journal's is the database's,
    # which a host's own may be off from.
    now = journal.now()
    flt = HistoryFilter(
        mac=mac,
        ip=ip,
        source=_address(args.source) if args.source else None,
        rule=args.rule,
        action=args.action,
        states=tuple(args.state or ()),
        since=parse_time(args.since, now) if args.since else None,
        until=parse_time(args.until, now) if args.until else None,
        host=args.host,
        limit=args.limit,
    )
    entries = await journal.history(flt)
    _print_entries(entries, args)
    return 0 if entries else 1


def _address(text: str) -> str:
    """A switch's address as the journal has it (as its socket named it: 2001:db8::5), from any
    spelling (2001:DB8:0::5); a text that is no address is looked for as it is."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text


async def _show(journal: Any, args: argparse.Namespace) -> int:
    import json
    import sys

    e = await journal.get(args.id, with_event=True)
    if e is None:
        print(f"no action {args.id} in the journal", file=sys.stderr)  # stdout: the action (JSON) only
        return 1
    d = _unveiled(e)
    d["host"] = _host(e.owner) if getattr(args, "shared_journal", False) else None  # as list has it
    if args.json:
        print(json.dumps(d, default=str))
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        if k in ("event", "params", "result", "item", "caps"):
            continue
        if k in ("received_at", "created", "due", "started", "finished", "age_from") and v:
            v = f"{_when(v)}  ({v:.3f})"
        print(f"{k:<{width}}  {_safe(str(v))}")
    for k in ("params", "caps", "item", "result", "event"):
        if d.get(k) not in (None, [], {}):
            print(f"{k}:")
            print("  " + json.dumps(d[k], indent=2, default=str).replace("\n", "\n  "))
    return 0


def _unveiled(e: Any) -> dict[str, Any]:
    """An entry as show and list --json print it: the parameters the plugin declares secret as
    ***, and the secrets this command loaded (trapd.yaml's) masked in the result and the error.
    Those were masked where they were journaled, by what the writing process knew then: a row an
    older trapd wrote (which knew fewer forms of a secret: base64, percent-encoded), or one whose
    process had not read the secret yet, holds it in clear."""
    from trapd.secrets import REDACTOR

    d: dict[str, Any] = e.to_dict()
    d["params"] = masked_params(e.action, e.params)
    d["result"] = REDACTOR.redact_data(d.get("result"))
    if d.get("last_error"):
        d["last_error"] = REDACTOR.redact(d["last_error"])
    return d


def masked_params(action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters with the values the plugin declares secret replaced by ***."""
    from trapd.plugin import load_actions

    specs, _ = load_actions()
    spec = specs.get(action)
    if spec is None:
        return params
    return {k: ("***" if k in spec.params and spec.params[k].secret else v) for k, v in params.items()}


def _print_entries(entries: list[Any], args: argparse.Namespace) -> None:
    import json

    if args.json:
        for e in entries:
            d = _unveiled(e)
            held = e.state == "held"  # the keys on every line (null unless held): one shape per line
            d["held_at"] = e.held_since if held else None
            d["hold_expires"] = e.due if held else None
            d["host"] = _host(e.owner) if getattr(args, "shared_journal", False) else None
            print(json.dumps(d, default=str))
        return
    if not entries:
        print("no actions")
        return
    from trapd.secrets import REDACTOR

    # WHEN is the time that matters in each state: due (waiting), finished, started (running), and for
    # a held action when it was held. Its expiry gets a column of its own, labelled, not WHEN.
    any_held = any(e.state == "held" for e in entries)
    only_held = any_held and all(e.state == "held" for e in entries)
    head = ("ID", "STATE", "HELD AT" if only_held else "WHEN", *(("HOLD EXPIRES",) if any_held else ()))
    # On a shared journal, JOURNALED: the host (HOST/worker-N: its worker) that journaled it, and
    # HOST: the one that claimed it last, that is ran it or runs it ("-" before any claim: held by
    # a cap, delayed, a copy journaled cancelled). A journal of one host leaves both out.
    shared = getattr(args, "shared_journal", False)
    hosts = ("JOURNALED", "HOST") if shared else ()
    rows = [(*head, "TRY", *hosts, "RULE", "ACTION", "SOURCE", "ABOUT", "NOTE")]
    for e in entries:
        if e.state == "held":
            when = e.held_since
        else:
            when = e.finished or (e.due if e.state in ("scheduled", "pending", "failed") else e.started)
            when = when or e.created
        expires = (_when(e.due) if e.state == "held" else "",) if any_held else ()
        about = e.mac or e.ip or e.key
        # A dry-run action is journaled done without running: not the line of one that ran.
        note = e.last_error or ("dry run: nothing was run" if e.mode == "dry-run" else "")
        note = _late_end_first(note)
        note = REDACTOR.cut(note, 59)  # as _unveiled; masked before the column cuts it
        rows.append(
            (str(e.id), e.state, _when(when) if when else "?", *expires, str(e.attempts),
             *((_cut(e.journaled_by or "-", 40), _cut(e.owner or "-", 40)) if shared else ()), _safe(e.rule),
             _safe(e.action), _safe(e.source), _cut(about, 28), _cut(note, 60))
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _late_end_first(note: str) -> str:
    """A held row's note with its late end first ("dhcp1 ran it to its end after the takeover:
    done", docs/pair.md): after "interrupted while running; it may have taken effect: ..." the
    column's cut hid it from the operator deciding whether to release the action."""
    from trapd.dispatch.journal.model import LATE_END

    if LATE_END not in note:
        return note
    parts = note.split("; ")
    return "; ".join([p for p in parts if LATE_END in p] + [p for p in parts if LATE_END not in p])


def _host(owner: str | None) -> str | None:
    """The host of a shared journal's claim owner (``HOST``, or ``HOST/worker-N``)."""
    return owner.partition("/")[0] if owner else None


def _cut(text: str, n: int) -> str:
    text = _safe(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _safe(text: str) -> str:
    """Text for the terminal: a key, cancel key or error can carry a trap value or a program's
    stderr, whose control characters (CR, ESC, C1) would rewrite the screen; shown as escapes."""
    from trapd.service.logging import escape_controls

    return escape_controls(text)


def _when(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def parse_time(text: str, now: float) -> float:
    """ISO 8601, a duration ago (``2h``), or Unix seconds."""
    import datetime
    import math

    from trapd.params import ParamError, parse_duration

    s = text.strip()
    if s and s[-1].isalpha():
        try:
            return now - parse_duration(s)
        except ParamError:
            pass
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise ValueError(f"not a time: {text!r} (use 2026-01-05T10:00, 2h, or Unix seconds)")
    try:
        dt = datetime.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 2026-01-05T10:00, 2h, or Unix seconds)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as an operator types it
    return dt.timestamp()
