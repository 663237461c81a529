"""Prometheus metrics, read from the components' own counters at scrape time.

The receive path must stay cheap, so components do not touch
prometheus-client objects (each ``inc()`` takes a lock). They keep plain ints
in dicts, which they own and bump on the event loop thread. At scrape time
:class:`TrapdCollector` asks the daemon for a :class:`DaemonSnapshot` and turns
it into metric families. The scrape runs on the same event loop (see
:mod:`trapd.service.exporter`), so the dicts are never read while they change.

The snapshot the daemon builds (every field optional; counts only grow,
except the gauges ``journal`` and ``kea_up``)::

    DaemonSnapshot(
        received={("v2c", "access-switches"): 1200, ("v3", "core"): 7},  # (version, source group) -> n
        dropped={"malformed": 3, "unknown-community": 40},               # reason -> n
        dropped_detail={("malformed", "bad-length"): 3},                 # (reason, detail) -> n
        matched={"port-down-release-lease": 310},                        # rule name -> n
        rejected={("port-down-release-lease", "parameter"): 2},          # (rule, kind) -> n
        unmatched=890,                                                   # events no rule matched
        actions={("kea.lease-del", "done"): 300, ("webhook", "retry"): 2},   # (plugin, outcome) -> n
        action_latency=Histogram(),  # trapd.dispatch.stats: once per finished action, received -> done
        journal={"pending": 0, "scheduled": 4, "held": 1, "dead": 0},    # state -> entries now
        kea_up={"local4/v4": True, "pair4/server2/v4": False},           # server/family -> up
        kea_ha_state={"pair4/server1/v4": "partner-down"},               # HA peers: their state
        kea_last_ok={"local4/v4": 1796600000.0},                         # wall time of its last answer
        kea_breaker={"local4/v4": "closed", "pair4/server2/v4": "open"},  # its circuit breaker
        kea_warnings=("Kea pair4/server2/v4 unreachable for 75s: ...",),
        reloads={"ok": 3, "failed": 1},
        last_reload_ok=True,
    )

Action outcomes are the dispatcher's words (:data:`trapd.dispatch.stats.Outcome`:
done, retry, dead, cancelled, duplicate, held, dry-run, deferred, expired);
the exporter passes them through as label values.

Exported names (all prefixed ``trapd_``):

=============================================  =========  ==========================================
trapd_notifications_received_total             counter    version, source_group
trapd_notifications_dropped_total              counter    reason
trapd_notifications_dropped_detail_total       counter    reason, detail
trapd_kernel_udp_rcvbuf_errors_total           counter    family (ipv4, ipv6); host-wide, since start
trapd_socket_drops_total                       counter    socket (address; summed over workers' sockets)
trapd_socket_receive_queue_bytes               gauge      socket (address); bytes waiting to be read
trapd_rule_matches_total                       counter    rule
trapd_actions_rejected_total                   counter    rule, reason (template, parameter, decoder, regex)
trapd_events_unmatched_total                   counter
trapd_outcomes_lost_total                      counter    matched, not journaled (backlog full, journal down)
trapd_informs_resent_total                     counter    resent copies of an inform: answered, not run
trapd_informs_too_big_total                    counter    informs answered tooBig: their varbinds' echo would
                                                          not fit the sender's msgMaxSize or a datagram
trapd_dispatch_backlog                         gauge      matched outcomes waiting to be journaled
trapd_dispatch_backlog_bytes                   gauge      their estimated size in memory (lost beyond 32 MiB)
trapd_rate_limit_exempted_total                counter    over a rate limit, kept: they clear pending actions
trapd_receive_pauses_total                     counter    reading paused (<= 10 ms) in a storm for due actions
trapd_v3_engines_pushed_out_total              counter    v3 sender engines pushed out at their bounds
trapd_index_undecodable_total                  counter    instance suffixes their table's INDEX clause does
                                                          not describe (hostile, or a MIB that does not fit
                                                          the agent), met by rules and templates on index
                                                          objects; logged at most once a minute
trapd_actions_total                            counter    plugin, outcome
trapd_actions_blocked_loop_total               counter    plugin; steps that held the event loop >= 0.5 s
trapd_action_latency_seconds                   histogram  from notification received to action done
trapd_journal_entries                          gauge      state (pending, scheduled, held, dead)
trapd_journal_available                        gauge      1 when the journal can commit (0: database down)
trapd_journal_failed_writes_total              counter    journal writes that failed for want of the journal
trapd_journal_taken_over_total                 counter    running actions of other hosts whose claims' lease
                                                          ran out, taken over here (shared journal)
trapd_journal_claims_put_back_total            counter    this host's claims whose answer was lost (the
                                                          connection broke after the commit), put back in
                                                          line: they never started (shared journal)
trapd_journal_unreadable_rows_total            counter    due (or expired held) actions whose journal row
                                                          could not be read back (damaged), set aside as dead
                                                          so the others run
trapd_journal_integrity_checks_total           counter    result (ok, damaged, error): periodic PRAGMA
                                                          quick_check of the SQLite journal file
trapd_journal_integrity_check_duration_seconds gauge      how long the last of those checks took
trapd_journal_wal_bytes                        gauge      SQLite: WAL its last checkpoint could not get rid
                                                          of (a reader holds it: grows until the disk is full)
trapd_journal_instance_conflict                gauge      1 while another live trapd renews under this host's
                                                          dispatch.journal.instance (shared journal)
trapd_pair_kea_differences                     gauge      differences between this host's Kea endpoints and
                                                          peers and another live host's (shared journal)
trapd_pair_rules_differ                        gauge      other live hosts whose rules (or mode), global caps
                                                          or MIBs differ from this host's (shared journal)
trapd_kea_endpoint_up                          gauge      endpoint (1: answers and its circuit breaker does
                                                          not hold actions back; 0: down), e.g. pair4/srv1/v4
trapd_kea_ha_state                             gauge      endpoint, state (1 for the peer's HA state now,
                                                          0 for the others; "unknown": it does not answer)
trapd_kea_last_success_age_seconds             gauge      endpoint: since Kea last answered trapd
trapd_kea_breaker_state                        gauge      endpoint, state (1 for its circuit breaker's state
                                                          now: closed, half-open (cool-down over, the next
                                                          action probes), open; 0 for the others)
trapd_reloads_total                            counter    result (ok, failed)
trapd_config_last_reload_successful            gauge
trapd_workers_up                               gauge      workers up and answering (1 for a single trapd)
trapd_worker_restarts_total                    counter    workers that died and were restarted
trapd_workers_other_rules                      gauge      workers running other rules than the supervisor's
trapd_build_info                               gauge      version
process_*, python_*                            (prometheus-client's default collectors)
=============================================  =========  ==========================================
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from trapd import __version__
from trapd.dispatch.breaker import STATES as BREAKER_STATES
from trapd.dispatch.stats import Histogram
from trapd.kea.monitor import HA_STATES
from trapd.listener.stats import read_kernel_drops
from trapd.service.socket_activation import describe

# /proc/self/net rather than /proc/net: the latter is a symlink that
# ProcSubset=pid hides; the former is the same table and stays visible.
PROC_NET = Path("/proc/self/net")


@dataclass(frozen=True)
class DaemonSnapshot:
    """What the daemon's components have counted so far (shape documented at the top of the module)."""

    received: Mapping[tuple[str, str], int] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)
    dropped_detail: Mapping[tuple[str, str], int] = field(default_factory=dict)
    matched: Mapping[str, int] = field(default_factory=dict)
    # Actions never dispatched: a template failed, a trap value failed its parameter type
    # (``1.2.3.4; reboot`` as an ip-address), or a decoder met a malformed value.
    rejected: Mapping[tuple[str, str], int] = field(default_factory=dict)
    unmatched: int = 0
    actions: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # Steps of actions that held the event loop 0.5 s or more, by plugin (a blocking call in a plugin).
    actions_blocked_loop: Mapping[str, int] = field(default_factory=dict)
    # The dispatcher's own histogram, not a copy: it is read during the scrape, on the loop that observes.
    action_latency: Histogram | None = None
    journal: Mapping[str, int] = field(default_factory=dict)
    kea_up: Mapping[str, bool] = field(default_factory=dict)
    # HA peers' states, the wall time of each server's last answer, standing Kea warnings
    # (trapd.kea.monitor); the labels are trapd.kea.monitor.label's.
    kea_ha_state: Mapping[str, str] = field(default_factory=dict)
    kea_last_ok: Mapping[str, float] = field(default_factory=dict)
    # The dispatcher's circuit breaker per endpoint: closed, half-open (one probe) or open.
    kea_breaker: Mapping[str, str] = field(default_factory=dict)
    kea_warnings: tuple[str, ...] = ()
    reloads: Mapping[str, int] = field(default_factory=dict)
    last_reload_ok: bool = True
    # Matched outcomes that never reached the journal: the daemon's queue or the journal was full.
    outcomes_lost: int = 0
    # Copies of an inform taken in before (resent: its Response was late or lost), answered without
    # running the rules again (trapd.listener.resends).
    informs_resent: int = 0
    # Informs answered with a tooBig Response without varbinds (RFC 3416 4.2.7): the usual Response
    # would not fit the sender's msgMaxSize or a UDP datagram.
    informs_too_big: int = 0
    # Over a rate limit, but let through because they clear pending actions (linkUp...).
    rate_limit_exempted: int = 0
    # Times the listener stopped reading in a storm for the dispatcher's actions (udp.RECEIVE_SLICE).
    receive_pauses: int = 0
    # v3 sender engines' time notions and learned engines pushed out at their fixed maximums.
    v3_engines_pushed_out: int = 0
    index_undecodable: int = 0
    # The journal cannot commit now (a PostgreSQL journal's database is unavailable): why; None when it can.
    journal_problem: str | None = None
    # Journal writes that failed because it could not commit (outcomes not journaled, among others).
    journal_failed_writes: int = 0
    # A shared journal: running actions of other hosts taken over here after their claims' lease ran out.
    journal_taken_over: int = 0
    # A shared journal: this host's claims whose answer was lost, put back in line (never started).
    journal_put_back: int = 0
    # The SQLite journal's periodic integrity checks by result (ok, damaged, error), and the
    # duration of the last one in seconds (a gauge; the longest of the workers').
    journal_integrity_checks: Mapping[str, int] = field(default_factory=dict)
    # usmStats column -> this process's count (trapd.listener.v3.reports.usm_stats_counts): not
    # exported (the drops by reason are), summed for the reports of a unit with workers.
    usm_stats: Mapping[int, int] = field(default_factory=dict)
    journal_integrity_check_seconds: float = 0.0
    # The SQLite journal's WAL that its last checkpoint could not get rid of (gauge, bytes).
    journal_wal_bytes: int = 0
    # Due actions whose row could not be read back (damaged), set aside as dead so the others run.
    journal_unreadable: int = 0
    # A shared journal: another live process renews under this host's name (dispatch.journal.instance).
    journal_name_conflict: bool = False
    # A shared journal: differences from the other live hosts' Kea servers (trapd.kea.pairview).
    pair_differences: int = 0
    # A shared journal: the other live hosts whose rules (or mode) differ from this host's, a line each.
    pair_rule_differences: tuple[str, ...] = ()
    # Matched outcomes received but not yet journaled, and their estimated size in memory
    # (gauges): a backlog near its bounds (10,000 outcomes, 32 MiB) is about to lose outcomes.
    dispatch_backlog: int = 0
    dispatch_backlog_bytes: int = 0
    # The supervisor's own with service.workers > 1 (a single trapd is its one worker): workers up
    # and answering now, and workers that died while trapd ran (restarted, until the unit gives up).
    workers_up: int = 1
    worker_restarts: int = 0
    # Workers whose rules (RuleSet.digest) are not the supervisor's: the unit acts on a trap by
    # whichever worker its source lands on (a reload half taken). 0 for a single trapd.
    workers_other_rules: int = 0


@dataclass(frozen=True, slots=True)
class SocketQueue:
    """One UDP socket's row in /proc/net/udp{,6}: bytes queued and datagrams dropped."""

    rx_queue: int
    drops: int


def read_socket_queues(inodes: Iterable[int], proc_net: Path = PROC_NET) -> dict[int, SocketQueue]:
    """Receive-queue bytes and drop counts of the UDP sockets with these inode numbers.

    The kernel keeps a drop count per socket (the last column of
    /proc/net/udp), which, unlike RcvbufErrors, counts only trapd's sockets.
    """
    wanted = set(inodes)
    found: dict[int, SocketQueue] = {}
    if not wanted:
        return found
    for table in ("udp", "udp6"):
        try:
            lines = (proc_net / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            # sl local rem st tx_queue:rx_queue tr:tm retrnsmt uid timeout inode ref pointer drops
            if len(parts) < 13 or not parts[9].isdigit():
                continue
            inode = int(parts[9])
            if inode in wanted:
                rx = int(parts[4].partition(":")[2] or "0", 16)
                found[inode] = SocketQueue(rx_queue=rx, drops=int(parts[12]))
    return found


class TrapdCollector:
    """A prometheus-client collector over :class:`DaemonSnapshot` and the kernel's UDP counters.

    ``snapshot`` is called once per scrape. ``sockets`` returns the daemon's
    receive sockets (they can change on reload) for the per-socket counters.
    Host-wide RcvbufErrors are reported relative to their value when the
    collector was made, so the counter starts at 0 with trapd.
    """

    def __init__(
        self,
        snapshot: Callable[[], DaemonSnapshot],
        sockets: Callable[[], Iterable[socket.socket]] | None = None,
        *,
        proc_net: Path = PROC_NET,
    ) -> None:
        self._snapshot = snapshot
        self._sockets = sockets
        self._proc_net = proc_net
        self._udp_base = read_kernel_drops(proc_net)
        self._taken: DaemonSnapshot | None = None

    def describe(self) -> list[Metric]:
        # Empty: registering the collector must not take a snapshot.
        return []

    def take(self) -> None:
        """On the event loop: take the snapshot the next :meth:`collect` reports, so that the
        rendering may run in another thread (the counters it reads are then copies, not the
        dicts the loop changes). The dispatcher's latency histogram is copied here too."""
        snap = self._snapshot()
        hist = snap.action_latency
        if hist is not None:
            copy = Histogram(hist.buckets)
            copy.counts, copy.sum, copy.count = list(hist.counts), hist.sum, hist.count
            snap = replace(snap, action_latency=copy)
        self._taken = snap

    def collect(self) -> Iterator[Metric]:
        snap, self._taken = self._taken, None
        if snap is None:
            snap = self._snapshot()
        yield from self._flow(snap)
        yield from self._kernel()
        yield from self._state(snap)

    def _flow(self, snap: DaemonSnapshot) -> Iterator[Metric]:
        yield _counter_by_two(
            "trapd_notifications_received",
            "SNMP notifications accepted, by version and source group.",
            ("version", "source_group"),
            snap.received,
        )
        yield _counter_by(
            "trapd_notifications_dropped", "Notifications dropped, by reason.", "reason", snap.dropped
        )
        yield _counter_by_two(
            "trapd_notifications_dropped_detail",
            "Notifications dropped, by reason and finer cause.",
            ("reason", "detail"),
            snap.dropped_detail,
        )
        yield _counter_by("trapd_rule_matches", "Events matched, by rule.", "rule", snap.matched)
        yield _counter_by_two(
            "trapd_actions_rejected",
            "Actions never dispatched: a template failed (template), a value failed its parameter type "
            "(parameter), or a decoder met a malformed value (decoder). By rule and reason.",
            ("rule", "reason"),
            snap.rejected,
        )
        yield CounterMetricFamily("trapd_events_unmatched", "Events no rule matched.", value=snap.unmatched)
        yield CounterMetricFamily(
            "trapd_outcomes_lost",
            "Matched events whose actions were not journaled: the dispatch backlog was full (a storm), "
            "or the journal could not commit (its database unavailable).",
            value=snap.outcomes_lost,
        )
        yield CounterMetricFamily(
            "trapd_informs_resent",
            "Copies of an inform already taken in, resent by its sender because the Response was late "
            "or lost: answered with the first one's Response, and its rules not run again.",
            value=snap.informs_resent,
        )
        yield CounterMetricFamily(
            "trapd_informs_too_big",
            "Informs answered with a tooBig Response and no varbinds: the Response echoing their "
            "varbinds would not fit the sender's msgMaxSize (v3) or a UDP datagram (RFC 3416 4.2.7).",
            value=snap.informs_too_big,
        )
        yield GaugeMetricFamily(
            "trapd_dispatch_backlog",
            "Matched outcomes received and not yet journaled (a storm, or a journal that commits slowly).",
            value=snap.dispatch_backlog,
        )
        yield GaugeMetricFamily(
            "trapd_dispatch_backlog_bytes",
            "Estimated memory those outcomes hold; beyond its bound (32 MiB a process) new ones are lost "
            "and counted in trapd_outcomes_lost_total.",
            value=snap.dispatch_backlog_bytes,
        )
        yield CounterMetricFamily(
            "trapd_rate_limit_exempted",
            "Notifications over a rate limit let through because a cancel: rule uses them.",
            value=snap.rate_limit_exempted,
        )
        yield CounterMetricFamily(
            "trapd_receive_pauses",
            "Times the receive path stopped reading for up to 10 ms in a storm, to let due actions "
            "run (what arrived meanwhile queued in the socket, or was dropped and counted there).",
            value=snap.receive_pauses,
        )
        yield CounterMetricFamily(
            "trapd_v3_engines_pushed_out",
            "v3 sender engines whose time notion and replay memory (or learned keys) were pushed out "
            "at their fixed maximums (4,096 engines, 2^18 MACs, 1,024 learned): docs/snmpv3.md.",
            value=snap.v3_engines_pushed_out,
        )
        yield CounterMetricFamily(
            "trapd_index_undecodable",
            "Instance suffixes that their table's INDEX clause does not describe (an octet above 255, "
            "too short, left over), met by a rule condition or template on index objects: no condition "
            "on them holds, and a template naming one is rejected. Counted each time one is decoded.",
            value=snap.index_undecodable,
        )
        yield _counter_by_two(
            "trapd_actions", "Actions finished, by plugin and outcome.", ("plugin", "outcome"), snap.actions
        )
        yield _counter_by(
            "trapd_actions_blocked_loop",
            "Steps of actions that held the event loop 0.5 s or more in one go, by plugin: a blocking "
            "call in an async action, which holds every trap and every other action meanwhile "
            "(the log names the action; docs/plugins.md, 'Never block the event loop').",
            "plugin",
            snap.actions_blocked_loop,
        )
        hist = snap.action_latency or Histogram()
        latency = HistogramMetricFamily(
            "trapd_action_latency_seconds", "Time from notification received to action done.", unit="seconds"
        )
        latency.add_metric([], hist.cumulative(), sum_value=hist.sum)
        yield latency

    def _kernel(self) -> Iterator[Metric]:
        now = read_kernel_drops(self._proc_net)
        kernel = CounterMetricFamily(
            "trapd_kernel_udp_rcvbuf_errors",
            "Host-wide UDP datagrams dropped by the kernel for a full receive buffer, since trapd started.",
            labels=["family"],
        )
        kernel.add_metric(["ipv4"], max(0, now.udp - self._udp_base.udp))
        kernel.add_metric(["ipv6"], max(0, now.udp6 - self._udp_base.udp6))
        yield kernel
        drops = CounterMetricFamily(
            "trapd_socket_drops", "Datagrams the kernel dropped on trapd's own sockets.", labels=["socket"]
        )
        queued = GaugeMetricFamily(
            "trapd_socket_receive_queue_bytes",
            "Bytes waiting in a receive socket's buffer.",
            labels=["socket"],
        )
        if self._sockets is not None:
            by_inode: dict[int, str] = {}
            for sock in self._sockets():
                try:
                    by_inode[os.fstat(sock.fileno()).st_ino] = describe(sock)
                except (OSError, ValueError):
                    continue  # closed during a reload
            # Per address: with service.workers > 1 each address has one socket per worker
            # (SO_REUSEPORT), and one series per label set is what Prometheus accepts.
            drop_sum: dict[str, int] = {}
            queue_sum: dict[str, int] = {}
            for inode, row in read_socket_queues(by_inode, self._proc_net).items():
                label = by_inode[inode]
                drop_sum[label] = drop_sum.get(label, 0) + row.drops
                queue_sum[label] = queue_sum.get(label, 0) + row.rx_queue
            for label in sorted(drop_sum):
                drops.add_metric([label], drop_sum[label])
                queued.add_metric([label], queue_sum[label])
        yield drops
        yield queued

    def _state(self, snap: DaemonSnapshot) -> Iterator[Metric]:
        journal = GaugeMetricFamily("trapd_journal_entries", "Journal entries, by state.", labels=["state"])
        for state in sorted({"pending", "scheduled", "held", "dead", *snap.journal}):
            journal.add_metric([state], snap.journal.get(state, 0))
        yield journal
        yield GaugeMetricFamily(
            "trapd_journal_available",
            "1 when the journal can commit; 0 while it cannot (a PostgreSQL journal's database is down).",
            value=0 if snap.journal_problem is not None else 1,
        )
        yield CounterMetricFamily(
            "trapd_journal_failed_writes",
            "Journal writes that failed because the journal could not commit.",
            value=snap.journal_failed_writes,
        )
        yield CounterMetricFamily(
            "trapd_journal_taken_over",
            "Running actions of other hosts taken over after their claims' lease ran out (shared journal).",
            value=snap.journal_taken_over,
        )
        yield GaugeMetricFamily(
            "trapd_journal_instance_conflict",
            "1 while another live trapd renews under this host's dispatch.journal.instance (shared journal).",
            value=1 if snap.journal_name_conflict else 0,
        )
        yield GaugeMetricFamily(
            "trapd_pair_kea_differences",
            "Differences from the Kea endpoints and peers of another live host sharing the journal.",
            value=snap.pair_differences,
        )
        yield GaugeMetricFamily(
            "trapd_pair_rules_differ",
            "Other live hosts sharing the journal whose rules (or mode), global caps or MIBs differ "
            "from this host's.",
            value=len(snap.pair_rule_differences),
        )
        yield CounterMetricFamily(
            "trapd_journal_claims_put_back",
            "This host's claims whose answer the database lost (the connection broke after the commit), "
            "put back in line: they never started (shared journal).",
            value=snap.journal_put_back,
        )
        checks = CounterMetricFamily(
            "trapd_journal_integrity_checks",
            "Periodic checks of the whole SQLite journal file (PRAGMA quick_check), by result "
            "(ok, damaged, error: the check could not run).",
            labels=["result"],
        )
        for result in sorted({"ok", "damaged", "error", *snap.journal_integrity_checks}):
            checks.add_metric([result], snap.journal_integrity_checks.get(result, 0))
        yield checks
        yield GaugeMetricFamily(
            "trapd_journal_integrity_check_duration_seconds",
            "How long the last periodic check of the SQLite journal file took.",
            value=snap.journal_integrity_check_seconds,
        )
        yield GaugeMetricFamily(
            "trapd_journal_wal_bytes",
            "SQLite journal: WAL its last checkpoint could not get rid of (a reader holds it); "
            "it grows with every commit while that lasts.",
            value=snap.journal_wal_bytes,
        )
        yield CounterMetricFamily(
            "trapd_journal_unreadable_rows",
            "Due actions whose journal row could not be read back (damaged), set aside as dead.",
            value=snap.journal_unreadable,
        )
        kea = GaugeMetricFamily(
            "trapd_kea_endpoint_up",
            "Kea endpoint answering, its circuit breaker not holding actions back (1), or not (0).",
            labels=["endpoint"],
        )
        for endpoint, up in sorted(snap.kea_up.items()):
            kea.add_metric([endpoint], 1 if up else 0)
        yield kea
        ha = GaugeMetricFamily(
            "trapd_kea_ha_state", "Kea HA peer in this state (1) or not (0).", labels=["endpoint", "state"]
        )
        for endpoint, now_in in sorted(snap.kea_ha_state.items()):
            for state in HA_STATES:
                ha.add_metric([endpoint, state], 1 if state == now_in else 0)
        yield ha
        age = GaugeMetricFamily(
            "trapd_kea_last_success_age_seconds",
            "Seconds since the Kea server last answered trapd.",
            labels=["endpoint"],
        )
        now = time.time()
        for endpoint, at in sorted(snap.kea_last_ok.items()):
            age.add_metric([endpoint], max(0.0, now - at))
        yield age
        breaker = GaugeMetricFamily(
            "trapd_kea_breaker_state",
            "The circuit breaker of a Kea endpoint in this state (1) or not (0); open: actions for it wait; "
            "half-open: its cool-down is over, the next action probes.",
            labels=["endpoint", "state"],
        )
        for endpoint, now_in in sorted(snap.kea_breaker.items()):
            for state in BREAKER_STATES:
                breaker.add_metric([endpoint, state], 1 if state == now_in else 0)
        yield breaker
        reloads = CounterMetricFamily("trapd_reloads", "Configuration reloads, by result.", labels=["result"])
        for result in sorted({"ok", "failed", *snap.reloads}):
            reloads.add_metric([result], snap.reloads.get(result, 0))
        yield reloads
        yield GaugeMetricFamily(
            "trapd_config_last_reload_successful",
            "1 if the last reload (or the start) loaded its configuration, 0 if it kept the old one.",
            value=1 if snap.last_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "trapd_workers_up",
            "Receiving processes up and answering the supervisor (service.workers; 1 for a single trapd).",
            value=snap.workers_up,
        )
        yield CounterMetricFamily(
            "trapd_worker_restarts",
            "Worker processes that died while trapd ran, restarted by the supervisor (service.workers > 1).",
            value=snap.worker_restarts,
        )
        yield GaugeMetricFamily(
            "trapd_workers_other_rules",
            "Workers running other rules than the supervisor's (a reload half taken; service.workers > 1).",
            value=snap.workers_other_rules,
        )
        info = GaugeMetricFamily("trapd_build_info", "trapd version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _counter_by(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def _counter_by_two(
    name: str, doc: str, labels: tuple[str, str], values: Mapping[tuple[str, str], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, n in sorted(values.items()):
        family.add_metric(list(key), n)
    return family


def build_registry(
    collector: TrapdCollector | None = None, *, process_metrics: bool = True
) -> CollectorRegistry:
    """A registry of its own (not the global one) with trapd's collector and process/python metrics."""
    registry = CollectorRegistry()
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    if collector is not None:
        registry.register(collector)
    return registry


def status_line(snap: DaemonSnapshot) -> str:
    """The one line for systemd's STATUS= (``systemctl status trapd``), from the same snapshot.

    e.g. ``1207 received, 43 dropped, 312 matched, actions 300 done 2 failed,
    journal 4 scheduled 1 held, kea 1/2 up``; parts with nothing to say are left out.
    """
    parts = [f"{sum(snap.received.values())} received"]
    dropped = sum(snap.dropped.values())
    if dropped:
        parts.append(f"{dropped} dropped")
    parts.append(f"{sum(snap.matched.values())} matched")
    rejected = sum(snap.rejected.values())
    if rejected:
        parts.append(f"{rejected} rejected")
    outcomes: dict[str, int] = {}
    for (_plugin, outcome), n in snap.actions.items():
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    if outcomes:
        parts.append("actions " + " ".join(f"{n} {o}" for o, n in sorted(outcomes.items())))
    states = ("pending", "scheduled", "held", "dead")
    journal = [f"{snap.journal[s]} {s}" for s in states if snap.journal.get(s)]
    if journal:
        parts.append("journal " + " ".join(journal))
    if snap.kea_up:
        parts.append(f"kea {sum(1 for up in snap.kea_up.values() if up)}/{len(snap.kea_up)} up")
    if not snap.last_reload_ok:
        parts.append("last reload FAILED")
    if snap.journal_problem is not None:
        parts.append("JOURNAL UNAVAILABLE")
    if snap.journal_name_conflict:
        parts.append("ANOTHER TRAPD UNDER THIS INSTANCE NAME")
    return ", ".join(parts)
