"""What the hosts sharing a journal must agree on (trapd.yaml's Kea part, the rules), and where
they do not.

Copies of one notification are matched per HA peer (docs/pair.md): each host plans a part for
every peer it lists, and the second host's part for a peer is a copy of the first's. A peer
listed on one host only gets its part from that host alone: when that host is down, or misses
the notification, that server keeps the lease the other host deleted everywhere else. An
endpoint one host lacks, or a family whose default endpoint differs, sends the same rule to
other servers depending on which host journals it first. Nothing in one host's configuration
shows this; so each host publishes its view in the shared journal
(``Journal.share_view``) and compares it with the other live hosts' (``differences``).

The rules too: a host whose rules file differs (edited on one host only, not yet copied) acts
otherwise on the same trap, and a notification only that host receives, or only the other,
gets the other host's treatment. The view carries a digest of the rules as parsed, with the
mode (``RuleSet.digest``), republished at each reload; ``rule_differences`` says where it differs.
Beside it, what decides the same rules' outcome outside the rules files: the global caps and
retry defaults of trapd.yaml (``DispatchConfig.caps_digest``: an action one host holds under a
cap runs on the other) and the MIBs (``MibResolver.digest``: the names and values a rule's
conditions and templates see).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trapd.kea.config import FAMILIES, KeaConfig

# A view read back from the database is another process's text: bounded before it is parsed.
MAX_VIEW = 64 * 1024


def view(kea: KeaConfig | None, rules: str = "", *, caps: str = "", mibs: str = "") -> str:
    """This host's view, as published: every endpoint's families and peer names, the endpoint
    each family's actions go to when a rule names none, the rules' digest, and those of the
    global caps and retry defaults and of the MIBs ("": none to compare, as from a trapd that
    publishes none)."""
    endpoints: dict[str, Any] = {}
    defaults: dict[str, str | None] = {}
    if kea is not None:
        for name, ep in sorted(kea.endpoints.items()):
            endpoints[name] = {"families": list(ep.families), "peers": sorted(p.peer or "" for p in ep.peers)}
        for fam in FAMILIES:
            default = kea.endpoint_for(fam)
            defaults[fam] = default.name if default is not None else None
    out: dict[str, Any] = {"endpoints": endpoints, "default": defaults}
    for key, digest in (("rules", rules), ("caps", caps), ("mibs", mibs)):
        if digest:
            out[key] = digest
    return json.dumps(out, sort_keys=True)


def rule_differences(mine: str, others: Mapping[str, str]) -> list[str]:
    """The other hosts whose rules, global caps or MIBs differ from this host's, one line each
    (empty: none). A digest missing from a view (an older trapd publishes the rules' alone, or
    none), or a view that cannot be read (said by ``differences``), is not compared."""
    own = _parse(mine) or {}
    out: list[str] = []
    for host, text in sorted(others.items()):
        theirs = _parse(text) or {}
        whats: list[str] = []
        digests: list[str] = []
        for key, what in _DIGESTS:
            a, b = own.get(key), theirs.get(key)
            if isinstance(a, str) and isinstance(b, str) and a != b:
                whats.append(what)
                digests.append(f"{key} digest {b[:12]!r}, here {a[:12]!r}")
        if whats:  # one line per host: trapd_pair_rules_differ counts the hosts
            out.append(
                f"{host!r} {' and '.join(whats)} than this host ({'; '.join(digests)}): a "
                "notification is acted on differently depending on which host receives it and "
                "journals it first"
            )
    return out


# What each digest of a view stands for, as rule_differences says it.
_DIGESTS = (
    ("rules", "loads other rules (or another mode)"),
    ("caps", "has other global caps or retry defaults (trapd.yaml dispatch.caps, dispatch.retry)"),
    ("mibs", "loads other MIBs (the names and values its rules see)"),
)


def differences(mine: str, others: Mapping[str, str]) -> list[str]:
    """Where this host's view and each other host's differ in a way that changes what runs, one
    line each (empty: none)."""
    own = _parse(mine) or {}
    out: list[str] = []
    for host, text in sorted(others.items()):
        theirs = _parse(text)
        if theirs is None:
            out.append(f"the Kea configuration {host!r} published on the journal cannot be read")
            continue
        out.extend(_compare(own, theirs, host))
    return out


def _parse(text: str) -> dict[str, Any] | None:
    if len(text) > MAX_VIEW:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("endpoints"), dict):
        return None
    return data


def _names(values: Any) -> set[str]:
    return {str(v)[:100] for v in values} if isinstance(values, list) else set()


def _compare(own: Mapping[str, Any], theirs: Mapping[str, Any], host: str) -> list[str]:
    out: list[str] = []
    mine_eps: Mapping[str, Any] = own.get("endpoints", {})
    their_eps: Mapping[str, Any] = theirs["endpoints"]
    for name in sorted(set(mine_eps) | set(their_eps), key=str):
        shown = str(name)[:100]
        a, b = mine_eps.get(name), their_eps.get(name)
        if not isinstance(b, dict):
            out.append(
                f"Kea endpoint {shown!r} is in this host's trapd.yaml, not in {host!r}'s: "
                f"its actions are run only when this host receives the notification"
            )
            continue
        if not isinstance(a, dict):
            out.append(
                f"Kea endpoint {shown!r} is in {host!r}'s trapd.yaml, not in this host's: "
                f"its actions are run only when {host!r} receives the notification"
            )
            continue
        here, there = _names(a.get("peers")), _names(b.get("peers"))
        for peers, who in ((here - there, "this host's"), (there - here, f"{host!r}'s")):
            if peers:
                listed = ", ".join(sorted(peers))
                out.append(
                    f"Kea endpoint {shown!r}: peer(s) {listed} only in {who} trapd.yaml: their parts are "
                    "planned by that host alone, and skipped when it is down or misses a notification"
                )
        if _names(a.get("families")) != _names(b.get("families")):
            out.append(f"Kea endpoint {shown!r} serves other families in {host!r}'s trapd.yaml")
    own_defaults, their_defaults = own.get("default", {}), theirs.get("default", {})
    if isinstance(their_defaults, dict):
        for fam in FAMILIES:
            if own_defaults.get(fam) != their_defaults.get(fam):
                out.append(
                    f"the default {fam} Kea endpoint differs from {host!r}'s: a rule that names none "
                    "acts on other servers depending on which host journals it first"
                )
    return out
