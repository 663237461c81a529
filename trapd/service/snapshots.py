"""DaemonSnapshot across processes: a JSON wire form, and the sum the supervisor exports.

With ``service.workers`` > 1 every worker counts on its own; the supervisor
serves one /metrics for the unit, so it adds the workers' snapshots up.

How each field combines, and why:

* counters (received, dropped, matched, rejected, actions, the latency histogram, the
  usmStats counts...): summed. A worker that died and was restarted starts again from zero, so
  the supervisor keeps the last snapshot of every worker that ended and adds
  it too (:class:`RetiredCounts`): the unit's counters never go backwards.
  What the dead worker counted after its last snapshot is not in them.
* ``journal`` (entries by state): every worker reads the same SQLite file,
  so adding would count each entry N times. The first worker's figures are
  taken (they are all the same file read at nearly the same moment).
* ``kea_up``: an endpoint is up if any worker reached it (each probes at its
  own start; a worker restarted while Kea is down says down, its sibling
  that saw it up is not wrong either, and a dead endpoint is down everywhere).
* ``kea_ha_state``: the first worker's that knows the peer (they poll the same
  servers); ``kea_last_ok``: the latest any worker saw; ``kea_warnings``: all
  of them, once each; ``kea_breaker``: the worst of the workers' breakers
  (each worker has its own: one that opened is what the operator must see).
* ``dispatch_backlog`` / ``_bytes``: summed over the live workers (each has its
  own queue before the journal); a gone worker's are not kept (gauges).
* ``journal_problem``: any live worker's (the journal cannot commit); a gone
  worker's is not kept: its successor commits or says so itself. Likewise
  the verdicts about the other hosts on a shared journal
  (``journal_name_conflict``, ``pair_differences``, ``pair_rule_differences``):
  kept, they held /healthz at 503 (or "warning") after the other host was fixed.
* ``reloads`` / ``last_reload_ok``: the supervisor's own (one SIGHUP is one
  reload of the unit, not N), filled in by the supervisor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trapd.dispatch.breaker import STATES as BREAKER_STATES
from trapd.dispatch.stats import Histogram
from trapd.service.metrics import DaemonSnapshot

SEP = "\x1f"  # joins tuple keys in JSON objects; no label value trapd makes contains it


def _pairs(d: Mapping[tuple[str, str], int]) -> dict[str, int]:
    return {SEP.join(k): v for k, v in d.items()}


def _unpairs(d: Mapping[str, int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for k, v in d.items():
        a, _, b = k.partition(SEP)
        out[(a, b)] = int(v)
    return out


def to_wire(snap: DaemonSnapshot) -> dict[str, Any]:
    """``snap`` as JSON-safe data (what a worker sends)."""
    hist = snap.action_latency
    return {
        "received": _pairs(snap.received),
        "dropped": dict(snap.dropped),
        "dropped_detail": _pairs(snap.dropped_detail),
        "matched": dict(snap.matched),
        "rejected": _pairs(snap.rejected),
        "unmatched": snap.unmatched,
        "actions": _pairs(snap.actions),
        "actions_blocked_loop": dict(snap.actions_blocked_loop),
        "action_latency": None
        if hist is None
        else {
            "buckets": list(hist.buckets),
            "counts": list(hist.counts),
            "sum": hist.sum,
            "count": hist.count,
        },
        "journal": dict(snap.journal),
        "kea_up": dict(snap.kea_up),
        "kea_ha_state": dict(snap.kea_ha_state),
        "kea_last_ok": dict(snap.kea_last_ok),
        "kea_breaker": dict(snap.kea_breaker),
        "kea_warnings": list(snap.kea_warnings),
        "reloads": dict(snap.reloads),
        "last_reload_ok": snap.last_reload_ok,
        "outcomes_lost": snap.outcomes_lost,
        "informs_resent": snap.informs_resent,
        "informs_too_big": snap.informs_too_big,
        "usm_stats": {str(k): v for k, v in snap.usm_stats.items()},
        "rate_limit_exempted": snap.rate_limit_exempted,
        "receive_pauses": snap.receive_pauses,
        "v3_engines_pushed_out": snap.v3_engines_pushed_out,
        "index_undecodable": snap.index_undecodable,
        "journal_problem": snap.journal_problem,
        "journal_failed_writes": snap.journal_failed_writes,
        "journal_taken_over": snap.journal_taken_over,
        "journal_put_back": snap.journal_put_back,
        "journal_integrity_checks": dict(snap.journal_integrity_checks),
        "journal_integrity_check_seconds": snap.journal_integrity_check_seconds,
        "journal_wal_bytes": snap.journal_wal_bytes,
        "journal_unreadable": snap.journal_unreadable,
        "journal_name_conflict": snap.journal_name_conflict,
        "pair_differences": snap.pair_differences,
        "pair_rule_differences": list(snap.pair_rule_differences),
        "dispatch_backlog": snap.dispatch_backlog,
        "dispatch_backlog_bytes": snap.dispatch_backlog_bytes,
    }


def from_wire(data: Mapping[str, Any]) -> DaemonSnapshot:
    """The inverse of :func:`to_wire`."""
    hist = None
    raw = data.get("action_latency")
    if raw:
        hist = Histogram(raw["buckets"])
        if len(raw["counts"]) == len(hist.counts):
            hist.counts = [int(n) for n in raw["counts"]]
            hist.sum = float(raw["sum"])
            hist.count = int(raw["count"])
    return DaemonSnapshot(
        received=_unpairs(data.get("received", {})),
        dropped={k: int(v) for k, v in data.get("dropped", {}).items()},
        dropped_detail=_unpairs(data.get("dropped_detail", {})),
        matched={k: int(v) for k, v in data.get("matched", {}).items()},
        rejected=_unpairs(data.get("rejected", {})),
        unmatched=int(data.get("unmatched", 0)),
        actions=_unpairs(data.get("actions", {})),
        actions_blocked_loop={k: int(v) for k, v in data.get("actions_blocked_loop", {}).items()},
        action_latency=hist,
        journal={k: int(v) for k, v in data.get("journal", {}).items()},
        kea_up={k: bool(v) for k, v in data.get("kea_up", {}).items()},
        kea_ha_state={k: str(v) for k, v in data.get("kea_ha_state", {}).items()},
        kea_last_ok={k: float(v) for k, v in data.get("kea_last_ok", {}).items()},
        kea_breaker={k: str(v) for k, v in data.get("kea_breaker", {}).items()},
        kea_warnings=tuple(str(w) for w in data.get("kea_warnings", [])),
        reloads={k: int(v) for k, v in data.get("reloads", {}).items()},
        last_reload_ok=bool(data.get("last_reload_ok", True)),
        outcomes_lost=int(data.get("outcomes_lost", 0)),
        informs_resent=int(data.get("informs_resent", 0)),
        informs_too_big=int(data.get("informs_too_big", 0)),
        usm_stats={int(k): int(v) for k, v in data.get("usm_stats", {}).items()},
        rate_limit_exempted=int(data.get("rate_limit_exempted", 0)),
        receive_pauses=int(data.get("receive_pauses", 0)),
        v3_engines_pushed_out=int(data.get("v3_engines_pushed_out", 0)),
        index_undecodable=int(data.get("index_undecodable", 0)),
        journal_problem=str(data["journal_problem"]) if data.get("journal_problem") else None,
        journal_failed_writes=int(data.get("journal_failed_writes", 0)),
        journal_taken_over=int(data.get("journal_taken_over", 0)),
        journal_put_back=int(data.get("journal_put_back", 0)),
        journal_integrity_checks={k: int(v) for k, v in data.get("journal_integrity_checks", {}).items()},
        journal_integrity_check_seconds=float(data.get("journal_integrity_check_seconds", 0.0)),
        journal_wal_bytes=int(data.get("journal_wal_bytes", 0)),
        journal_unreadable=int(data.get("journal_unreadable", 0)),
        journal_name_conflict=bool(data.get("journal_name_conflict", False)),
        pair_differences=int(data.get("pair_differences", 0)),
        pair_rule_differences=tuple(str(w) for w in data.get("pair_rule_differences", [])),
        dispatch_backlog=int(data.get("dispatch_backlog", 0)),
        dispatch_backlog_bytes=int(data.get("dispatch_backlog_bytes", 0)),
    )


def _add(into: dict[Any, int], more: Mapping[Any, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _add_histogram(total: Histogram | None, more: Histogram | None) -> Histogram | None:
    if more is None:
        return total
    if total is None:
        total = Histogram(more.buckets)
    if total.buckets != more.buckets:
        return total  # same code on both ends makes this impossible; never mix bucket layouts
    total.counts = [a + b for a, b in zip(total.counts, more.counts, strict=True)]
    total.sum += more.sum
    total.count += more.count
    return total


def _counters_of(snap: DaemonSnapshot) -> DaemonSnapshot:
    """Only the counters: a gone worker's gauges (journal, Kea) say nothing about now."""
    return replace(
        snap,
        journal={},
        kea_up={},
        kea_ha_state={},
        kea_last_ok={},
        kea_breaker={},
        kea_warnings=(),
        dispatch_backlog=0,
        dispatch_backlog_bytes=0,
        journal_problem=None,
        journal_integrity_check_seconds=0.0,
        journal_wal_bytes=0,
        journal_name_conflict=False,
        pair_differences=0,
        pair_rule_differences=(),
    )


def _breaker_rank(state: str) -> int:
    return BREAKER_STATES.index(state) if state in BREAKER_STATES else len(BREAKER_STATES)


def sum_snapshots(snaps: Iterable[DaemonSnapshot]) -> DaemonSnapshot:
    """The unit's snapshot from its workers' (module docstring: what is summed, what is not)."""
    received: dict[Any, int] = {}
    dropped: dict[Any, int] = {}
    detail: dict[Any, int] = {}
    matched: dict[Any, int] = {}
    rejected: dict[Any, int] = {}
    actions: dict[Any, int] = {}
    blocked_loop: dict[Any, int] = {}
    kea_up: dict[str, bool] = {}
    kea_ha_state: dict[str, str] = {}
    kea_last_ok: dict[str, float] = {}
    kea_breaker: dict[str, str] = {}
    kea_warnings: dict[str, None] = {}  # ordered set
    journal: Mapping[str, int] | None = None
    hist: Histogram | None = None
    unmatched = lost = resent = exempted = failed_writes = taken_over = pauses = backlog = backlog_bytes = 0
    unreadable = put_back = pushed_out = undecodable = too_big = 0
    checks: dict[Any, int] = {}
    usm_stats: dict[Any, int] = {}
    check_seconds = 0.0
    wal_bytes = 0
    problem: str | None = None
    name_conflict = False
    pair_differences = 0
    rule_differences: dict[str, None] = {}  # each worker compares the same: one line per host
    for s in snaps:
        _add(received, s.received)
        _add(dropped, s.dropped)
        _add(detail, s.dropped_detail)
        _add(matched, s.matched)
        _add(rejected, s.rejected)
        _add(actions, s.actions)
        _add(blocked_loop, s.actions_blocked_loop)
        hist = _add_histogram(hist, s.action_latency)
        for endpoint, up in s.kea_up.items():
            kea_up[endpoint] = kea_up.get(endpoint, False) or up
        for endpoint, state in s.kea_ha_state.items():
            kea_ha_state.setdefault(endpoint, state)
        for endpoint, at in s.kea_last_ok.items():
            kea_last_ok[endpoint] = max(at, kea_last_ok.get(endpoint, at))
        for endpoint, state in s.kea_breaker.items():
            # Each worker has its own breakers: the unit's is the worst of them (open > half-open > closed).
            worst = max(state, kea_breaker.get(endpoint, state), key=_breaker_rank)
            kea_breaker[endpoint] = worst
        kea_warnings.update(dict.fromkeys(s.kea_warnings))
        if journal is None and s.journal:
            journal = s.journal
        unmatched += s.unmatched
        lost += s.outcomes_lost
        resent += s.informs_resent
        too_big += s.informs_too_big
        exempted += s.rate_limit_exempted
        pauses += s.receive_pauses
        pushed_out += s.v3_engines_pushed_out
        undecodable += s.index_undecodable
        failed_writes += s.journal_failed_writes
        taken_over += s.journal_taken_over
        put_back += s.journal_put_back
        _add(checks, s.journal_integrity_checks)
        _add(usm_stats, s.usm_stats)
        check_seconds = max(check_seconds, s.journal_integrity_check_seconds)
        wal_bytes = max(wal_bytes, s.journal_wal_bytes)  # one file: each worker measures it
        unreadable += s.journal_unreadable
        backlog += s.dispatch_backlog  # each worker's own queue before the shared journal
        backlog_bytes += s.dispatch_backlog_bytes
        problem = problem or s.journal_problem
        name_conflict = name_conflict or s.journal_name_conflict
        pair_differences = max(pair_differences, s.pair_differences)  # each worker compares the same
        rule_differences.update(dict.fromkeys(s.pair_rule_differences))
    return DaemonSnapshot(
        received=received,
        dropped=dropped,
        dropped_detail=detail,
        matched=matched,
        rejected=rejected,
        unmatched=unmatched,
        actions=actions,
        actions_blocked_loop=blocked_loop,
        action_latency=hist,
        journal=dict(journal or {}),
        kea_up=kea_up,
        kea_ha_state=kea_ha_state,
        kea_last_ok=kea_last_ok,
        kea_breaker=kea_breaker,
        kea_warnings=tuple(kea_warnings),
        outcomes_lost=lost,
        informs_resent=resent,
        informs_too_big=too_big,
        rate_limit_exempted=exempted,
        receive_pauses=pauses,
        v3_engines_pushed_out=pushed_out,
        index_undecodable=undecodable,
        journal_problem=problem,
        journal_failed_writes=failed_writes,
        journal_taken_over=taken_over,
        journal_put_back=put_back,
        journal_integrity_checks=checks,
        usm_stats=usm_stats,
        journal_integrity_check_seconds=check_seconds,
        journal_wal_bytes=wal_bytes,
        journal_unreadable=unreadable,
        journal_name_conflict=name_conflict,
        pair_differences=pair_differences,
        pair_rule_differences=tuple(rule_differences),
        dispatch_backlog=backlog,
        dispatch_backlog_bytes=backlog_bytes,
    )


@dataclass
class RetiredCounts:
    """The counters of workers that ended, kept so that the unit's counters never go backwards.

    Only counters: a retired worker's journal figures and Kea verdicts are
    stale the moment it is gone.
    """

    snapshots: list[DaemonSnapshot] = field(default_factory=list)

    def retire(self, last: DaemonSnapshot | None) -> None:
        if last is not None:
            # Collapsed into one, so a worker that keeps crashing does not grow this list.
            total = sum_snapshots(
                [
                    *self.snapshots,
                    _counters_of(last),
                ]
            )
            self.snapshots = [total]

    def with_live(self, live: Iterable[DaemonSnapshot]) -> DaemonSnapshot:
        live = list(live)
        # Live ones first: the journal figures and the Kea verdicts come from them.
        total = sum_snapshots([*live, *self.snapshots])
        return total
