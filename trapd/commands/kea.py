"""Look at the Kea endpoints trapd is configured for, and undo lease deletions.

trapd kea status [--config FILE] [--json]
    For every endpoint in trapd.yaml (and each family it serves): can
    trapd reach it, which Kea version answers (version-get), and whether
    the lease_cmds hook is loaded (list-commands has lease4-del /
    lease6-del). Exit status 0 when every endpoint answered, 1 otherwise.

trapd kea restore JOURNAL_ID [--config FILE]
trapd kea restore --file leases.json [--endpoint NAME]
    Re-add the leases a kea.lease-del recorded before deleting them: from
    the journal entry's result, or from a JSON file holding that result, a
    list of leases, or {"leases": [...]}. Each lease goes back with
    lease4-add / lease6-add exactly as Kea had it (same expiry); a lease
    that exists again is left alone and reported. --dry-run prints the
    lease*-add commands instead of sending them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "Kea endpoints: status (reachable, version, lease_cmds) and restore of deleted leases"


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kea_command", metavar="SUBCOMMAND", required=True)
    st = sub.add_parser("status", help="reachability, version and lease_cmds of every endpoint")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rs = sub.add_parser("restore", help="re-add leases recorded by kea.lease-del")
    rs.add_argument(
        "journal_id", nargs="?", type=int, metavar="JOURNAL_ID", help="journal entry of a kea.lease-del"
    )
    rs.add_argument(
        "--file", metavar="FILE", help="JSON: a kea.lease-del result, a list of leases or {leases: [...]}"
    )
    rs.add_argument(
        "--endpoint", metavar="NAME", help="endpoint to restore through (default: the recorded one)"
    )
    rs.add_argument("--dry-run", action="store_true", help="print the commands, send nothing")
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

    clients = KeaClients(config.kea)
    if not len(clients):
        print("no Kea endpoints configured (kea.endpoints in trapd.yaml)", file=sys.stderr)
        return 1
    try:
        statuses = await probe(clients)
    finally:
        await clients.aclose()
    if as_json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        rows = [("ENDPOINT", "FAMILY", "TRANSPORT", "REACHABLE", "VERSION", "LEASE_CMDS", "TARGET")]
        for s in statuses:
            rows.append(
                (
                    s.endpoint,
                    s.family,
                    s.transport,
                    "yes" if s.reachable else "NO",
                    s.version or "-",
                    ("yes" if s.lease_cmds else "NO (load libdhcp_lease_cmds.so)") if s.reachable else "-",
                    s.target,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        for s in statuses:
            if s.error:
                print(f"{s.endpoint} ({s.family}): {s.error}", file=sys.stderr)
    return 0 if all(s.reachable for s in statuses) else 1


async def _recorded(config: Any, args: argparse.Namespace) -> tuple[Any, str | None]:
    """The recorded kea.lease-del result and the endpoint it went through."""
    if args.file:
        data = json.loads(Path(args.file).read_text(encoding="utf-8"))
        endpoint = data.get("endpoint") if isinstance(data, dict) else None
        return data, endpoint
    from trapd.dispatch.journal import open_journal

    journal = open_journal(config.dispatch.journal.file(config.state_dir), config.dispatch.journal)
    await journal.open()
    try:
        entry = await journal.get(args.journal_id, with_event=False)
    finally:
        await journal.close()
    if entry is None:
        raise LookupError(f"no journal entry {args.journal_id}")
    if entry.action != "kea.lease-del":
        raise LookupError(f"journal entry {args.journal_id} is {entry.action}, not kea.lease-del")
    result = entry.result
    if isinstance(result, str):
        result = json.loads(result)
    if not result:
        raise LookupError(f"journal entry {args.journal_id} ({entry.state}) has no recorded result")
    return result, (result.get("endpoint") if isinstance(result, dict) else None) or entry.endpoint


async def _restore(config: Any, args: argparse.Namespace) -> int:
    from trapd.kea.client import KeaClients
    from trapd.kea.errors import KeaError
    from trapd.kea.restore import add_arguments, lease_family, leases_from_result, restore_leases

    if (args.journal_id is None) == (args.file is None):
        print("trapd kea restore: give a JOURNAL_ID or --file, not both", file=sys.stderr)
        return 2
    try:
        recorded, endpoint = await _recorded(config, args)
    except (OSError, ValueError, LookupError) as exc:
        print(f"trapd kea restore: {exc}", file=sys.stderr)
        return 1
    leases = leases_from_result(recorded)
    if not leases:
        print("nothing to restore: no leases recorded")
        return 0
    endpoint = args.endpoint or (endpoint if endpoint in config.kea.endpoints else None)
    if args.dry_run:
        for lease in leases:
            cmd = "lease4-add" if lease_family(lease) == "v4" else "lease6-add"
            print(json.dumps({"command": cmd, "arguments": add_arguments(lease)}))
        return 0
    clients = KeaClients(config.kea)
    try:
        outcomes = await restore_leases(clients, leases, endpoint)
    except KeaError as exc:
        print(f"trapd kea restore: {exc}", file=sys.stderr)
        return 1
    finally:
        await clients.aclose()
    for o in outcomes:
        print(
            f"{o.status:9} {o.ip_address}"
            + (f"  ({o.detail})" if o.detail and o.status != "restored" else "")
        )
    return 0 if all(o.status in ("restored", "exists") for o in outcomes) else 1
