"""Look at the Kea endpoints trapd is configured for, and undo lease deletions.

trapd kea status [--config FILE] [--json]
    For every endpoint in trapd.yaml (each peer of an HA relationship, and
    each family it serves): can trapd reach it, which Kea version answers
    (version-get), whether the lease_cmds hook is loaded (list-commands has
    lease4-del / lease6-del), and for an HA peer the relationship's mode,
    the peer's role and its HA state (status-get), and for a unix or http
    endpoint whether the server serves that family (its statistics: the
    v4 and v6 sockets swapped is an error). Exit status 0 when every
    endpoint answered without an error, 1 otherwise.

trapd kea restore JOURNAL_ID [--config FILE] [--journal FILE]
trapd kea restore --file leases.json [--endpoint NAME]
    Re-add the leases a kea.lease-del recorded before deleting them: from
    the journal entry's result (--journal FILE: in that SQLite journal, one
    moved aside as damaged or another host's copy, not this host's), or from
    a JSON file holding that result, a list of leases, or {"leases": [...]}. Each lease goes back with
    lease4-add / lease6-add exactly as Kea had it (same expiry); a lease
    that exists again is left alone and reported, and one whose time has
    run out since is reported as expired and not sent. --dry-run prints the
    lease*-add commands instead of sending them. On an HA relationship the
    journal holds one entry per peer; any of them restores on every peer
    where the lease was removed (--peer NAME: on that one only); a partner
    entry whose row cannot be read back is named and not acted on (exit 1),
    and so is an entry whose deletion has not ended (pending, scheduled,
    failed and to be retried, or running, as the row of a host that died
    is until another host takes it over): when it runs, it would delete
    what the restore put back.
    A copy (the same notification journaled again, cancelled with
    duplicate_of) restores what the entry it copies deleted.
    Leases go back to the endpoint they were deleted from, as recorded. A
    record whose endpoint trapd.yaml no longer has (renamed, removed), or
    that names none (a bare list of leases), is refused with the endpoint
    it needs: --endpoint NAME says where to restore it instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELP = "Kea endpoints: status (reachable, version, lease_cmds, HA state) and restore of deleted leases"

STATUS_DESCRIPTION = """\
One row for every endpoint in trapd.yaml, each peer of an HA relationship and
each family it serves:

  REACHABLE   it answered version-get and list-commands (NO: the error is on stderr)
  VERSION     the Kea version that answered
  LEASE_CMDS  the lease_cmds hook is loaded (kea.lease-del and restore need it)
  HA          (when a server has the HA hook) the relationship's mode, the peer's
              role and its HA state, from status-get; e.g. "hot-standby standby
              hot-standby". "-": no HA hook, or status-get failed. A hub of several
              relationships (Kea >= 2.6): the one where it goes by the peer's name.
  TARGET      the unix socket or URL trapd reaches it at

What an HA state means for trapd's actions (docs/kea-ha.md has the table):
hot-standby, load-balancing: normal. partner-down: it serves every scope
alone; the partner's parts of a deletion retry until it is back.
waiting, syncing, ready: not serving yet; its parts run as soon as it answers.
in-maintenance / partner-in-maintenance: the partner serves / it serves.
terminated: it serves its own scopes without heartbeats or lease updates to its
partner; Kea needs an operator (the daemon warns in the log and /healthz).
kea.ddns-resend goes through the first peer that serves scopes now.

--json: the same, and under "ha" also "scopes" (what it serves now; [] when
not serving), "partner_state", "in_touch" and "server_name" (Kea >= 2.6).

Exit status 0 when every endpoint answered without an error, 1 otherwise (an
endpoint unreachable, or serving the other family). An HA state, terminated
included, does not change it: read the HA column, or the daemon's
trapd_kea_ha_state metric and /healthz.
"""


def configure(p: argparse.ArgumentParser) -> None:
    from trapd.commands.journal import action_id

    sub = p.add_subparsers(dest="kea_command", metavar="SUBCOMMAND", required=True)
    st = sub.add_parser(
        "status",
        help="reachability, version, lease_cmds and HA state of every endpoint",
        description=STATUS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rs = sub.add_parser("restore", help="re-add leases recorded by kea.lease-del")
    rs.add_argument(
        "journal_id", nargs="?", type=action_id, metavar="JOURNAL_ID", help="journal entry of a kea.lease-del"
    )
    rs.add_argument(
        "--file", metavar="FILE", help="JSON: a kea.lease-del result, a list of leases or {leases: [...]}"
    )
    rs.add_argument(
        "--endpoint",
        metavar="NAME",
        help="endpoint to restore through (default: the recorded one; needed for a record "
        "naming none, or one trapd.yaml does not have)",
    )
    rs.add_argument(
        "--peer", metavar="NAME", help="HA relationship: restore on this peer only (default: where removed)"
    )
    rs.add_argument("--dry-run", action="store_true", help="print the commands, send nothing")
    rs.add_argument(
        "--journal",
        metavar="FILE",
        help="read JOURNAL_ID from this SQLite journal (one moved aside, another host's copy)",
    )
    for sp in (st, rs):
        sp.add_argument(
            "--config", "-c", metavar="FILE", default=None, help="trapd.yaml (default /etc/trapd/trapd.yaml)"
        )


def main(args: argparse.Namespace) -> int:
    import asyncio

    from trapd.config import DEFAULT_CONFIG, load_config
    from trapd.yamlsource import ConfigError

    try:
        config = load_config(args.config or DEFAULT_CONFIG)
    except ConfigError as exc:
        print(f"trapd kea: {exc}", file=sys.stderr)
        return 2
    if args.kea_command == "status":
        return asyncio.run(_status(config, args.json))
    return asyncio.run(_restore(config, args))


async def _status(config: Any, as_json: bool) -> int:
    from trapd.kea.client import KeaClients
    from trapd.kea.probe import probe
    from trapd.secrets import REDACTOR

    clients = KeaClients(config.kea)
    if not len(clients):
        print("no Kea endpoints configured (kea.endpoints in trapd.yaml)", file=sys.stderr)
        return 1
    try:
        statuses = await probe(clients)
    finally:
        await clients.aclose()
    if as_json:
        # An error may quote what a server answered (one that echoes the request's Authorization
        # header, base64 of user:password): the secrets masked, in every form, as in the log.
        print(REDACTOR.redact(json.dumps([s.to_dict() for s in statuses], indent=2)))
    else:
        # PEER and HA only where there is something to show in them (HA relationships).
        peers = any(s.peer for s in statuses)
        has_ha = any(s.ha for s in statuses)
        rows = [
            ("ENDPOINT", *(("PEER",) if peers else ()), "FAMILY", "TRANSPORT", "REACHABLE", "VERSION",
             "LEASE_CMDS", *(("HA",) if has_ha else ()), "TARGET")
        ]  # fmt: skip
        for s in statuses:
            ha = s.ha
            rows.append(
                (
                    s.endpoint,
                    *((s.peer or "-",) if peers else ()),
                    s.family,
                    s.transport,
                    "yes" if s.reachable else "NO",
                    s.version or "-",
                    ("yes" if s.lease_cmds else "NO (load libdhcp_lease_cmds.so)") if s.reachable else "-",
                    *((f"{ha.mode} {ha.role} {ha.state}" if ha is not None else "-",) if has_ha else ()),
                    s.target,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        for s in statuses:
            if s.error:
                print(REDACTOR.redact(f"{s.label} ({s.family}): {s.error}"), file=sys.stderr)
    return 0 if all(s.error is None for s in statuses) else 1  # unreachable, or the other family


@dataclass
class _Part:
    """One recorded deletion: its leases, and the endpoint (and HA peer) it removed them from."""

    result: Any
    endpoint: str | None
    peer: str | None
    journal_id: int | None = None
    # A shared journal's: the host that ran it (its claim's owner), whose own Kea a host-local
    # endpoint name (a unix socket, an agent on loopback) means.
    host: str | None = None


# A deletion in these states has not ended: it runs (again, or on, after a takeover), and deletes
# what a restore puts back now.
UNFINISHED = ("scheduled", "pending", "running", "failed")


async def _recorded(
    config: Any, args: argparse.Namespace, unreadable: list[Any], unfinished: list[Any]
) -> list[_Part]:
    """The recorded kea.lease-del result(s): on an HA relationship one per peer it ran on.

    The partner entries whose rows cannot be read back are put in ``unreadable``, and the
    entries whose deletion has not ended in ``unfinished``: neither is acted on."""
    if args.file:
        data = json.loads(Path(args.file).read_text(encoding="utf-8"))
        _check_file_leases(args.file, data)
        named = data if isinstance(data, dict) else {}
        return [_Part(data, named.get("endpoint"), named.get("peer"))]
    from trapd.commands.journal import open_cli_journal
    from trapd.dispatch.journal import HistoryFilter
    from trapd.dispatch.journal.rows import damaged

    jc = config.dispatch.journal
    # Read-only: a restore reads what was deleted; it makes, changes and upgrades nothing there.
    if args.journal:
        where, pg = Path(args.journal), None
    else:
        where, pg = jc.file(config.state_dir), (jc if jc.url is not None else None)
    journal = await open_cli_journal(where, pg, read_only=True, command="trapd kea restore")
    try:
        entry = await journal.get(args.journal_id, with_event=False)
        if entry is None:
            raise LookupError(f"no journal entry {args.journal_id}")
        if entry.action != "kea.lease-del":
            raise LookupError(f"journal entry {args.journal_id} is {entry.action}, not kea.lease-del")
        original = _copy_of(entry)
        if original is not None:
            # A copy of a notification journaled again (the other host of a pair got it too, or
            # the switch resent it), cancelled, not run: what was deleted is on the row it copies.
            # Said "nothing to restore" before, as if nothing had been deleted.
            print(  # stderr: --dry-run's stdout is JSON lines
                f"journal entry {entry.id} is a copy of {original}: restoring what {original} deleted",
                file=sys.stderr,
            )
            entry = await journal.get(original, with_event=False)
            if entry is None or entry.action != "kea.lease-del":
                raise LookupError(
                    f"journal entry {args.journal_id} copies entry {original}, which is not there"
                )
        entries = [entry]
        if isinstance(entry.params.get("peer"), str):
            # One peer's part of a deletion on an HA relationship: its partners' parts were
            # journaled with it, in the same transaction (same event, rule and action position,
            # same created time), one entry per peer, with the same parameters but ``peer``.
            # The parameters tell them from the other items of a foreach (another MAC of the
            # same trap), which share all the rest.
            same = _without_peer(entry.params)
            flt = HistoryFilter(
                rule=entry.rule,
                action=entry.action,
                since=entry.created - 0.001,
                until=entry.created + 0.001,
                limit=10_000,
            )
            # Read as far as each row can be: a damaged row among them (a partner's, or another
            # item's of the same trap) failed the whole read, so that nothing could be restored,
            # not even through --peer, and the error named no row.
            journal.lenient = True
            entries = []
            for e in await journal.history(flt):
                if e.event_id != entry.event_id or e.index != entry.index or e.id == entry.id:
                    continue
                if damaged(e):
                    # Its parameters may be what is damaged: then whether it is a partner cannot be
                    # told, and it is said as one (never acted on).
                    if "unreadable" in e.params or _without_peer(e.params) == same:
                        unreadable.append(e)
                elif _without_peer(e.params) == same:
                    entries.append(e)
            entries.insert(0, entry)
    finally:
        await journal.close()
    parts = []
    for e in entries:
        if e.state in UNFINISHED and not args.journal:
            # Its leases put back now would be deleted again when it runs: by this host's retry,
            # or, a host that died while running it, by the host that takes its claim over. (A
            # journal read with --journal, moved aside or copied, is run by no daemon.)
            unfinished.append(e)
            continue
        result = json.loads(e.result) if isinstance(e.result, str) else e.result
        if not result:
            if e.id == entry.id:
                raise LookupError(f"journal entry {e.id} ({e.state}) has no recorded result")
            print(f"journal entry {e.id} (peer {e.params.get('peer')}, {e.state}): nothing recorded, skipped")
            continue
        endpoint = (result.get("endpoint") if isinstance(result, dict) else None) or e.endpoint
        peer = result.get("peer") if isinstance(result, dict) else None
        host = e.owner.partition("/")[0] if pg is not None and e.owner else None
        parts.append(_Part(result, endpoint, peer if isinstance(peer, str) else None, e.id, host))
    return parts


def _copy_of(entry: Any) -> int | None:
    """The id of the row a cancelled copy duplicates (its result says ``duplicate_of``), else None."""
    if entry.state != "cancelled":
        return None
    result = entry.result
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            return None
    dup = result.get("duplicate_of") if isinstance(result, dict) else None
    return dup if isinstance(dup, int) and not isinstance(dup, bool) and dup != entry.id else None


def _check_file_leases(name: str, data: Any) -> None:
    """A --file is what the operator says it is: a file of something else is an error, not
    "nothing to restore" with success, and each lease's address is one (ValueError otherwise)."""
    import ipaddress

    from trapd.kea.restore import leases_from_result

    listed = data.get("leases") if isinstance(data, dict) else data
    if listed == []:
        return  # a deletion that found no lease: nothing to restore, rightly
    leases = leases_from_result(data)
    if not leases:
        raise ValueError(
            f"{name} holds no leases: expected a kea.lease-del result (trapd journal show --json ID, "
            'its "result"), a list of leases, or {"leases": [...]}'
        )
    for n, lease in enumerate(leases, 1):
        address = lease["ip-address"]
        try:
            ipaddress.ip_address(address if isinstance(address, str) else "")
        except ValueError:
            raise ValueError(f"{name}: lease {n}: {address!r} is not an IP address") from None


def _this_host(config: Any) -> str:
    """This host's name in a shared journal's claims (as the daemon here names itself)."""
    import socket

    return str(config.dispatch.journal.instance or socket.gethostname())


def _host_local(ep: Any) -> bool:
    """An endpoint that reaches this host's own Kea: a unix socket, or a URL to a loopback address."""
    import ipaddress
    import urllib.parse

    if ep.transport == "unix":
        return True
    host = (urllib.parse.urlsplit(str(ep.url)).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recorded_endpoint(part: _Part, config: Any, args: argparse.Namespace) -> str:
    """The endpoint a recorded deletion removed its leases from, if trapd.yaml still has it.

    A record whose endpoint is gone from the configuration (renamed, removed, another host's
    trapd.yaml), or that names none (a bare list of leases), is refused (LookupError): the
    family's default endpoint may be another Kea than the one the leases were deleted from, and
    a lease put into the wrong server is worse than none. The operator names one with --endpoint."""
    configured = config.kea.endpoints
    where = f"journal entry {part.journal_id}" if part.journal_id is not None else args.file
    choices = f"(configured: {', '.join(configured) or 'none'})"
    if part.endpoint is None:
        raise LookupError(
            f"{where} does not say which Kea endpoint its leases were deleted from; "
            f"name it with --endpoint NAME {choices}"
        )
    if part.endpoint not in configured:
        raise LookupError(
            f"{where} was deleted from endpoint {part.endpoint!r}, which trapd.yaml does not have "
            f"(renamed or removed?); restore through the same Kea with --endpoint NAME {choices}"
        )
    ep = configured[part.endpoint]
    here = _this_host(config)
    if part.host is not None and part.host != here and not ep.peers and _host_local(ep):
        raise LookupError(
            f"{where} was run by {part.host} through endpoint {part.endpoint}, which on this host "
            f"({here}) is another Kea ({ep.target}: each host's own); restore it on {part.host}, or "
            f"name the endpoint that reaches that Kea from here with --endpoint NAME {choices}"
        )
    if args.peer is None and part.peer is not None and ep.peers and ep.peer_named(part.peer) is None:
        # Checked before anything is sent: a failure at this part, after others went back, said
        # only the error, not what had been restored.
        peers = ", ".join(str(p.peer) for p in ep.peers)
        raise LookupError(
            f"{where} was deleted from peer {part.peer!r} of {part.endpoint}, which trapd.yaml does not "
            f"have (renamed or removed?); restore on the same server with --peer NAME (peers: {peers})"
        )
    return str(part.endpoint)


def _without_peer(params: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(params).items() if k != "peer"}


async def _restore(config: Any, args: argparse.Namespace) -> int:
    from trapd.kea.client import KeaClients
    from trapd.kea.errors import KeaError
    from trapd.kea.restore import (
        RestoreOutcome,
        add_arguments,
        expired,
        lease_family,
        leases_from_result,
        restore_leases,
    )
    from trapd.secrets import REDACTOR

    if (args.journal_id is None) == (args.file is None):
        print("trapd kea restore: give a JOURNAL_ID or --file, not both", file=sys.stderr)
        return 2
    from trapd.dispatch.journal import JournalError

    unreadable: list[Any] = []
    unfinished: list[Any] = []
    try:
        parts = await _recorded(config, args, unreadable, unfinished)
    except (OSError, ValueError, LookupError, JournalError) as exc:
        print(f"trapd kea restore: {exc}", file=sys.stderr)
        return 1
    if args.peer and any(p.peer == args.peer for p in parts):
        # --peer: what was removed from that peer, once; not its partners' records as well.
        parts = [p for p in parts if p.peer == args.peer]
    if args.peer:
        unreadable = [e for e in unreadable if e.params.get("peer") in (None, args.peer)]
        unfinished = [e for e in unfinished if e.params.get("peer") in (None, args.peer)]
    for e in unfinished:
        peer = e.params.get("peer")
        later = (
            "wait for its end (a host that died running it: another host takes it over once its "
            "claim's lease has run out) and restore again"
            if e.state == "running"
            else f"`trapd journal cancel {e.id}` first to keep what a restore puts back, then restore again"
        )
        print(
            f"trapd kea restore: journal entry {e.id}"
            + (f" (peer {peer})" if isinstance(peer, str) else "")
            + f" is {e.state}: its deletion has not ended, and when it runs it deletes what a restore "
            f"would put back now: nothing restored from it; {later}",
            file=sys.stderr,
        )
    for e in unreadable:
        peer = e.params.get("peer")
        print(
            f"trapd kea restore: journal entry {e.id}"
            + (f" (peer {peer})" if isinstance(peer, str) else "")
            + f", part of the same deletion, cannot be read back ({e.last_error}): nothing restored "
            f"from it; `trapd journal show {e.id}` shows what is left of it (with its result, "
            "--file FILE restores it)",
            file=sys.stderr,
        )
    failed = 1 if unreadable or unfinished else 0
    todo = [(p, leases_from_result(p.result)) for p in parts]
    if not any(leases for _, leases in todo):
        print("nothing to restore: no leases recorded")
        return failed
    configured = config.kea.endpoints
    if args.endpoint is not None and args.endpoint not in configured:
        print(
            f"trapd kea restore: --endpoint {args.endpoint}: no such endpoint in kea.endpoints "
            f"(configured: {', '.join(configured) or 'none'})",
            file=sys.stderr,
        )
        return 2
    try:
        targets = [args.endpoint or _recorded_endpoint(p, config, args) for p, _ in todo]
    except LookupError as exc:
        print(f"trapd kea restore: {exc}", file=sys.stderr)
        return 1
    # On an HA relationship: the peer named (--peer), else the one it was removed from when it
    # goes back through the same relationship, else (None) every peer of the endpoint.
    peers = [
        args.peer or (p.peer if e == p.endpoint else None) for (p, _), e in zip(todo, targets, strict=True)
    ]
    if args.dry_run:
        now = time.time()
        for (_, leases), endpoint, peer in zip(todo, targets, peers, strict=True):
            every = [str(p.peer) for p in config.kea.endpoints[endpoint].peers]
            where: dict[str, Any] = {"peer": peer} if peer else ({"peers": every} if every else {})
            for lease in leases:
                if expired(lease, now):
                    print(json.dumps({"expired": lease["ip-address"], "not sent": True}))
                    continue
                cmd = "lease4-add" if lease_family(lease) == "v4" else "lease6-add"
                print(
                    json.dumps(
                        {"command": cmd, "arguments": add_arguments(lease), "endpoint": endpoint, **where}
                    )
                )
        return failed
    clients = KeaClients(config.kea)
    outcomes: list[RestoreOutcome] = []
    try:
        for (_, leases), endpoint, peer in zip(todo, targets, peers, strict=True):
            outcomes += await restore_leases(clients, leases, endpoint, peer)
    except KeaError as exc:
        print(REDACTOR.redact(f"trapd kea restore: {exc}"), file=sys.stderr)  # as status's errors
        return 1
    finally:
        await clients.aclose()
    for o in outcomes:
        print(
            f"{o.status:9} {o.ip_address}"
            + (f"  on {o.peer}" if o.peer else "")
            + (f"  ({o.detail})" if o.detail and o.status != "restored" else "")
        )
    return failed or (0 if all(o.status in ("restored", "exists", "expired") for o in outcomes) else 1)
