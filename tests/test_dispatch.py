"""The dispatcher with a real SQLite journal: retries, delays, cancels, dedup, order, caps, breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import BreakerConfig, DispatchConfig, GlobalCap, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import HistoryFilter, SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, ActionSpec, PermanentError, RetryableError, action
from trapd.rules.outcome import RateCap, RetryPolicy
from trapd.secrets import Secret

FAST = DispatchConfig(
    workers=4,
    queue_size=100,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=3, max_age=60.0, backoff=0.05, max_backoff=1.0, jitter=0.0),
    breaker=BreakerConfig(failures=3, cool_down=0.2, max_cool_down=0.4),
)


class EndpointDown(RetryableError):
    def __init__(self, endpoint: str) -> None:
        super().__init__(f"{endpoint} refused the connection")
        self.endpoint = endpoint


@dataclass
class Call:
    tag: str
    attempt: int
    start: float
    end: float = 0.0


@dataclass
class Recorder:
    """Backs the test action ``rec``: what ran, when, and how the test wants it to fail."""

    calls: list[Call] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # endpoints that refuse

    def done_tags(self) -> list[str]:
        return [c.tag for c in self.calls if c.end]

    def spec(self) -> ActionSpec:
        @action(
            "rec",
            params={
                "tag": Param("string", required=True),
                "sleep": Param("duration", default=0.0),
                "fail_times": Param("integer", default=0),
                "permanent": Param("boolean", default=False),
                "server": Param("string"),
                "mac": Param("mac-address"),
            },
            idempotent=True,
        )
        async def rec(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            """Record the call (test action)."""
            key = params["tag"].split(":")[0]
            call = Call(params["tag"], ctx.attempt, time.monotonic())
            self.calls.append(call)
            if self.running.get(key):
                self.overlaps.append(params["tag"])
            self.running[key] = self.running.get(key, 0) + 1
            try:
                if params.get("sleep"):
                    await asyncio.sleep(params["sleep"])
                server = params.get("server")
                if server in self.down:
                    raise EndpointDown(server)
                if params.get("permanent"):
                    raise PermanentError("no such thing")
                if ctx.attempt <= params.get("fail_times", 0):
                    raise RetryableError(f"transient failure {ctx.attempt}")
                call.end = time.monotonic()
                return {"tag": params["tag"]}
            finally:
                self.running[key] -= 1

        return rec


async def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SQLiteJournal]:
    j = SQLiteJournal(tmp_path / "journal.sqlite")
    await j.open()
    yield j
    await j.close()


@pytest.fixture
async def make(journal: SQLiteJournal, rec: Recorder) -> AsyncIterator[Callable[..., Any]]:
    made: list[Dispatcher] = []

    async def factory(config: DispatchConfig = FAST, start: bool = True) -> Dispatcher:
        d = Dispatcher(config, journal, {"rec": rec.spec()}, kea=None)
        if start:
            await d.start()
        made.append(d)
        return d

    yield factory
    for d in made:
        await d.stop(0.5)


def rec_plan(tag: str, key: str | None = None, **kw: Any) -> Any:
    params = {"tag": tag}
    for name in ("sleep", "fail_times", "permanent", "server", "mac"):
        if name in kw:
            params[name] = kw.pop(name)
    return plan("rec", params, key=key or tag.split(":")[0], **kw)


async def state_of(journal: SQLiteJournal, id_: str) -> str:
    e = await journal.get(int(id_), with_event=False)
    assert e is not None
    return e.state


async def test_runs_and_records_the_result(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    ev = make_event()
    ids = await d.submit(ev, make_outcome(rec_plan("a", mac="0011.2233.4455")))
    await wait_for(lambda: rec.done_tags() == ["a"])
    await wait_for(lambda: d.stats.outcomes[("rec", "done")] == 1)
    e = await journal.get(int(ids[0]))
    assert e is not None and e.state == "done" and e.result == {"tag": "a"} and e.attempts == 1
    assert e.mac == "0011.2233.4455"  # what the rule passed; the column makes it searchable
    assert d.stats.done_latency.count == 1 and d.stats.start_latency.count == 1


async def test_a_result_json_cannot_hold_is_journaled_as_its_repr(journal: SQLiteJournal) -> None:
    @action("odd", params={}, idempotent=True)
    async def odd(params: dict[str, Any], ctx: ActionContext) -> dict[Any, Any]:
        """Return what JSON cannot encode (test action)."""
        return {("port", 1): "down"}

    d = Dispatcher(FAST, journal, {"odd": odd}, kea=None)
    await d.start()
    try:
        ids = await d.submit(make_event(), make_outcome(plan("odd", {}, key="k")))
        await wait_for(lambda: d.stats.outcomes[("odd", "done")] == 1)
        await journal.flush()
        e = await journal.get(int(ids[0]))
        assert e is not None and e.state == "done"
        assert e.result == {"repr": "{('port', 1): 'down'}"}
    finally:
        await d.stop(0.5)


async def test_retry_timing_then_dead_letter(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    ids = await d.submit(make_event(), make_outcome(rec_plan("x", fail_times=99)))
    await wait_for(lambda: d.stats.outcomes[("rec", "dead")] == 1)
    starts = [c.start for c in rec.calls]
    assert [c.attempt for c in rec.calls] == [1, 2, 3]  # max_attempts 3
    # backoff 0.05 s doubled each time, no jitter in this config
    assert starts[1] - starts[0] >= 0.05 - 0.005
    assert starts[2] - starts[1] >= 0.10 - 0.005
    e = await journal.get(int(ids[0]))
    assert e is not None and e.state == "dead" and "gave up after 3 attempts" in (e.last_error or "")


async def test_retry_succeeds_and_per_rule_override(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    ids = await d.submit(
        make_event(),
        make_outcome(rec_plan("y", fail_times=4, retry=RetryPolicy(max_attempts=5, backoff=0.01))),
    )
    await wait_for(lambda: rec.done_tags() == ["y"])
    await wait_for(lambda: d.stats.outcomes[("rec", "done")] == 1)
    assert (await journal.get(int(ids[0]))).attempts == 5  # type: ignore[union-attr]


async def test_permanent_error_is_dead_at_once(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    ids = await d.submit(make_event(), make_outcome(rec_plan("p", permanent=True)))
    await wait_for(lambda: d.stats.outcomes[("rec", "dead")] == 1)
    assert len(rec.calls) == 1
    assert "permanent error: no such thing" in ((await journal.get(int(ids[0]))).last_error or "")  # type: ignore[union-attr]


async def test_max_age_ends_retries(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    # The retry would come 50 ms later, past the 30 ms max age: dead instead.
    short = RetryPolicy(max_age=0.03)
    ids = await d.submit(make_event(), make_outcome(rec_plan("old", fail_times=1, retry=short)))
    await wait_for(lambda: d.stats.outcomes[("rec", "dead")] == 1)
    assert "max age" in ((await journal.get(int(ids[0]))).last_error or "")  # type: ignore[union-attr]


async def test_delay_cancelled_by_clearing_event(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    # 1.5 s: the clearing event comes well within it on a loaded machine (with 0.3 s, three submits,
    # each a journal commit, could let it fall due first); the check waits until past it.
    due = time.monotonic() + 1.5
    down = await d.submit(make_event(), make_outcome(rec_plan("cleanup", delay=1.5, cancel_key="sw1:17")))
    other = await d.submit(make_event(), make_outcome(rec_plan("other", delay=0.1, cancel_key="sw1:18")))
    assert await state_of(journal, down[0]) == "scheduled"
    up = make_event(trap_name="IF-MIB::linkUp")
    await d.submit(up, make_outcome(cancels=["sw1:17"]))
    assert await state_of(journal, down[0]) == "cancelled"
    assert d.stats.outcomes[("rec", "cancelled")] == 1  # counted under the cancelled action's plugin
    assert ("*", "cancelled") not in d.stats.outcomes
    await wait_for(lambda: rec.done_tags() == ["other"])
    await asyncio.sleep(max(0.0, due - time.monotonic()) + 0.1)
    assert rec.done_tags() == ["other"]  # the cleanup never ran
    e = await journal.get(int(down[0]))
    assert e is not None and e.result == {"cancelled_by": up.id}
    assert await state_of(journal, other[0]) == "done"


async def test_delay_waits_then_runs(make: Any, rec: Recorder) -> None:
    d = await make()
    t0 = time.monotonic()
    await d.submit(make_event(), make_outcome(rec_plan("later", delay=0.2)))
    await wait_for(lambda: rec.done_tags() == ["later"])
    assert rec.calls[0].start - t0 >= 0.19


async def test_delayed_action_survives_restart(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    first = await make()
    # 1 s: the submit's commit and the stop end well within it on a loaded machine (with 0.2 s a
    # slow commit could let it fall due, and run, before the stop).
    due = time.monotonic() + 1.0
    ids = await first.submit(make_event(), make_outcome(rec_plan("survivor", delay=1.0, cancel_key="k")))
    await first.stop()
    await asyncio.sleep(max(0.0, due - time.monotonic()) + 0.2)  # the dispatcher is down when it falls due
    assert rec.calls == []
    second = await make()
    await wait_for(lambda: rec.done_tags() == ["survivor"])  # late rather than never
    await wait_for(lambda: second.stats.outcomes[("rec", "done")] == 1)
    assert await state_of(journal, ids[0]) == "done"


async def test_once_within_runs_one(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    ids = []
    for tag, key in (("del", "mac:aa"), ("del", "mac:aa"), ("del", "mac:aa"), ("del2", "mac:bb")):
        ids += await d.submit(make_event(), make_outcome(rec_plan(tag, once_within=300.0, once_key=key)))
    await wait_for(lambda: sorted(rec.done_tags()) == ["del", "del2"])
    assert [await state_of(journal, i) for i in ids[1:3]] == ["cancelled", "cancelled"]
    assert d.stats.outcomes[("rec", "duplicate")] == 2


async def test_per_key_order_under_concurrency(make: Any, rec: Recorder) -> None:
    d = await make(replace(FAST, workers=8))
    tags = [f"{k}:{i}" for i in range(12) for k in ("a", "b", "c")]
    await asyncio.gather(*(d.submit(make_event(), make_outcome(rec_plan(t, sleep=0.005))) for t in tags))
    await wait_for(lambda: len(rec.done_tags()) == len(tags), timeout=10)
    assert rec.overlaps == []  # never two of one key at once
    for k in ("a", "b", "c"):
        seen = [int(t.split(":")[1]) for t in rec.done_tags() if t.startswith(k + ":")]
        # gather() submits in list order up to the journal; the journal's ids fix the order from there.
        assert seen == sorted(seen)
    keys_running_together = {c.tag.split(":")[0] for c in rec.calls if c.start < rec.calls[0].end}
    assert len(keys_running_together) > 1  # different keys did run concurrently


async def test_the_lag_window_of_done_actions_stays_bounded(make: Any, rec: Recorder) -> None:
    # The dispatcher's list of loaded actions for lag() dropped done ones only when lag() read
    # it, and only the receive path in a storm does: at a steady rate it kept every action run,
    # with its event, for good (bench_soak.py: 1.6 MB/s per worker at 1,000 traps/s).
    d = await make(replace(FAST, queue_size=10))
    n = 400
    for i in range(n):
        await d.submit(make_event(), make_outcome(rec_plan(f"k{i}:x")))
    await wait_for(lambda: d.stats.outcomes[("rec", "done")] == n, timeout=30)
    assert len(d._waiting) <= 4 * 10 + 64, len(d._waiting)


async def test_retry_keeps_its_place_in_the_key(make: Any, rec: Recorder) -> None:
    d = await make()
    await d.submit(make_event(), make_outcome(rec_plan("port:disable", fail_times=1)))
    await d.submit(make_event(), make_outcome(rec_plan("port:enable")))
    await wait_for(lambda: len(rec.done_tags()) == 2)
    # enable must not overtake the failed disable: the key waits for the retry.
    assert rec.done_tags() == ["port:disable", "port:enable"]
    calls = [(c.tag, c.attempt) for c in rec.calls]
    assert calls == [("port:disable", 1), ("port:disable", 2), ("port:enable", 1)]


async def test_rule_cap_holds_then_release_runs(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    cap = RateCap("deletions", limit=2, per=60.0, key="sw1", hold_for=600.0)
    ids = []
    for i in range(4):
        ids += await d.submit(make_event(), make_outcome(rec_plan(f"d{i}", caps=[cap])))
    await wait_for(lambda: d.stats.outcomes[("rec", "held")] == 2)
    assert sorted(rec.done_tags()) == ["d0", "d1"]
    assert d.stats.held_by_cap["test-rule/deletions"] == 2
    held = [i for i in ids if await state_of(journal, i) == "held"]
    assert len(held) == 2
    assert await d.release([held[0]]) == [int(held[0])]
    await wait_for(lambda: len(rec.done_tags()) == 3)
    assert await d.release(rule="test-rule") == [int(held[1])]
    await wait_for(lambda: len(rec.done_tags()) == 4)
    assert [await state_of(journal, i) for i in ids] == ["done"] * 4


async def test_a_storm_held_by_a_cap_logs_lines_per_cap_not_per_action(make: Any, rec: Recorder) -> None:
    # bench_soak.py: a storm past a cap wrote a warning per held action and, when their hold ran
    # out, an error per action (50,820 + 50,767 lines in 10 minutes), past journald's rate limit,
    # which then drops the lines that matter. Now one line per cap and interval, with suppressed=N.
    from structlog.testing import capture_logs

    cap = RateCap("deletions", limit=2, per=60.0, key="sw1", hold_for=0.5)
    with capture_logs() as logs:
        d = await make()
        for i in range(60):
            await d.submit(make_event(), make_outcome(rec_plan(f"d{i}", caps=[cap])))
        await wait_for(lambda: d.stats.outcomes[("rec", "expired")] == 58, timeout=30)
        assert d.stats.outcomes[("rec", "held")] == 58 and sorted(rec.done_tags()) == ["d0", "d1"]
        await d.stop(0.5)  # writes the counts held back
    for event in ("rate cap reached: action held", "held action expired without release"):
        lines = [e for e in logs if e["event"] == event]
        assert 1 <= len(lines) <= 4, (event, len(lines))
        assert sum(e.get("suppressed", 0) for e in lines) >= 58 - len(lines), lines
        assert lines[0].get("cap", lines[0].get("held_by")) == "test-rule/deletions", lines[0]
        assert lines[0]["action_id"] and lines[0]["rule"] == "test-rule", lines[0]


async def test_global_cap_by_source(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    cfg = replace(FAST, caps=(GlobalCap("per-switch", limit=1, per=60.0, by="source", actions=("rec",)),))
    d = await make(cfg)
    for src in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        await d.submit(make_event(source=src), make_outcome(rec_plan(f"{src}-{time.monotonic()}", key=src)))
    await wait_for(lambda: d.stats.outcomes[("rec", "held")] == 1 and len(rec.done_tags()) == 2)
    held = await journal.history(HistoryFilter(states=("held",)))
    assert [e.source for e in held] == ["10.0.0.1"] and held[0].held_by == "global/per-switch"


async def test_release_from_another_process_is_picked_up(
    make: Any, rec: Recorder, journal: SQLiteJournal, tmp_path: Path
) -> None:
    d = await make()
    cap = RateCap("none-allowed", limit=0, per=60.0)
    ids = await d.submit(make_event(), make_outcome(rec_plan("gated", caps=[cap])))
    await wait_for(lambda: d.stats.outcomes[("rec", "held")] == 1)
    async with SQLiteJournal(tmp_path / "journal.sqlite") as cli:  # what `trapd journal release` does
        assert await cli.release(time.time(), [int(ids[0])]) == [int(ids[0])]
    await wait_for(lambda: rec.done_tags() == ["gated"])


async def test_cancel_from_another_process_stops_a_delayed_action(
    make: Any, rec: Recorder, journal: SQLiteJournal, tmp_path: Path
) -> None:
    d = await make()
    # 1.5 s: opening a second journal and cancelling takes well under it on a loaded machine (with
    # 0.2 s it could fall due first and run); the check waits until past it.
    due = time.monotonic() + 1.5
    ids = await d.submit(make_event(), make_outcome(rec_plan("doomed", delay=1.5)))
    async with SQLiteJournal(tmp_path / "journal.sqlite") as cli:
        assert await cli.cancel([int(ids[0])], time.time(), "operator") == [int(ids[0])]
    await asyncio.sleep(max(0.0, due - time.monotonic()) + 0.1)
    assert rec.calls == []
    assert await d.retry(ids[0])  # and an operator retry brings it back
    await wait_for(lambda: rec.done_tags() == ["doomed"])


async def test_circuit_breaker_pauses_and_recovers(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    cfg = replace(FAST, retry=replace(FAST.retry, max_attempts=50, backoff=0.02, max_backoff=0.05))
    d = await make(cfg)
    rec.down.add("kea1")
    ids = []
    for i in range(6):
        ids += await d.submit(make_event(), make_outcome(rec_plan(f"m{i}:x", server="kea1")))
    await wait_for(lambda: d.breakers.get("kea1") is not None and d.breakers["kea1"].state != "closed")
    await asyncio.sleep(0.5)
    attempts_while_down = len(rec.calls)
    # Without the breaker, 6 actions retrying every <= 50 ms for 0.5 s would make ~60 attempts.
    assert attempts_while_down < 25
    assert d.stats.outcomes[("rec", "deferred")] > 0
    rec.down.clear()
    await wait_for(lambda: len(rec.done_tags()) == 6, timeout=5)
    assert sorted(rec.done_tags()) == sorted(f"m{i}:x" for i in range(6))  # none lost, none twice
    await wait_for(lambda: d.breakers["kea1"].state == "closed")
    assert [await state_of(journal, i) for i in ids] == ["done"] * 6


async def test_backlog_stays_in_the_journal(make: Any, rec: Recorder) -> None:
    d = await make(replace(FAST, workers=2, queue_size=5))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(d._loaded))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    n = 150
    for i in range(n):
        await d.submit(make_event(), make_outcome(rec_plan(f"k{i % 7}:{i}", sleep=0.001)))
    await wait_for(lambda: len(rec.done_tags()) == n, timeout=15)
    watcher.cancel()
    assert peak <= 5
    assert rec.overlaps == []
    for k in range(7):
        seen = [int(t.split(":")[1]) for t in rec.done_tags() if t.startswith(f"k{k}:")]
        assert seen == sorted(seen)


async def test_dry_run_journals_but_never_runs(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make()
    ids = await d.submit(make_event(), make_outcome(rec_plan("dry", dry_run=True)))
    await asyncio.sleep(0.1)
    assert rec.calls == []
    e = await journal.get(int(ids[0]))
    assert e is not None and e.state == "done" and e.result == {"dry_run": True}
    assert d.stats.outcomes[("rec", "dry-run")] == 1


async def test_unknown_plugin_is_dead_not_lost(make: Any, journal: SQLiteJournal) -> None:
    d = await make()
    ids = await d.submit(make_event(), make_outcome(plan("no.such", {"a": 1})))
    e = await journal.get(int(ids[0]))
    assert e is not None and e.state == "dead" and "no action plugin" in (e.last_error or "")


async def test_stop_lets_running_finish_and_interrupted_rerun(
    make: Any, rec: Recorder, journal: SQLiteJournal
) -> None:
    d = await make()
    quick = await d.submit(make_event(), make_outcome(rec_plan("quick", sleep=0.1)))
    slow = await d.submit(make_event(), make_outcome(rec_plan("slow", sleep=5)))
    await wait_for(lambda: len(rec.calls) == 2)
    await d.stop(timeout=0.3)
    assert await state_of(journal, quick[0]) == "done"
    assert await state_of(journal, slow[0]) == "running"  # cut off: stays for the next start
    d2 = Dispatcher(FAST, journal, {"rec": rec.spec()}, kea=None)
    await d2.start()
    try:
        assert await state_of(journal, slow[0]) in ("pending", "running")
        await wait_for(lambda: [c.tag for c in rec.calls].count("slow") == 2)
    finally:
        await d2.stop(0.1)


async def test_submit_before_start_runs_after_start(make: Any, rec: Recorder) -> None:
    d = await make(start=False)
    await d.submit(make_event(), make_outcome(rec_plan("early")))
    await d.start()
    await wait_for(lambda: rec.done_tags() == ["early"])


async def test_key_order_holds_for_rows_memory_has_not_seen(
    make: Any, rec: Recorder, journal: SQLiteJournal
) -> None:
    d = await make()
    # An earlier action with the key reaches the journal behind the dispatcher's back (as after
    # an overflow): the newer one, handed straight to memory, must still wait for it.
    first = d._plan(make_event(), rec_plan("port:first"), time.time())
    older = await journal.add(make_event().to_dict(), [first], [], time.time())
    await d.submit(make_event(), make_outcome(rec_plan("port:second")))
    await wait_for(lambda: len(rec.done_tags()) == 2)
    assert rec.done_tags() == ["port:first", "port:second"]
    assert await state_of(journal, str(older.ids[0])) == "done"


async def test_a_probe_that_does_not_run_leaves_the_breaker_usable(make: Any, rec: Recorder) -> None:
    cfg = replace(
        FAST,
        breaker=BreakerConfig(failures=1, cool_down=0.1, max_cool_down=0.1),
        retry=replace(FAST.retry, max_attempts=1),
    )
    d = await make(cfg)
    rec.down.add("kea1")
    await d.submit(make_event(), make_outcome(rec_plan("first:x", server="kea1")))
    await wait_for(lambda: "kea1" in d.breakers and d.breakers["kea1"].state == "open")
    rec.down.clear()
    await asyncio.sleep(0.15)  # cool-down over: the next action for kea1 is the probe, and a cap holds it
    held = rec_plan("probe:x", server="kea1", caps=[RateCap("nothing", limit=0, per=60.0)])
    await d.submit(make_event(), make_outcome(held))
    await wait_for(lambda: d.stats.outcomes[("rec", "held")] == 1)
    await d.submit(make_event(), make_outcome(rec_plan("after:x", server="kea1")))
    await wait_for(lambda: "after:x" in rec.done_tags())
    await wait_for(lambda: d.breakers["kea1"].state == "closed")


async def test_submit_many_keeps_order_and_shares_commits(
    make: Any, rec: Recorder, journal: SQLiteJournal
) -> None:
    d = await make(start=False)
    items = [(make_event(), make_outcome(rec_plan(f"k:{i}"))) for i in range(50)]
    commits = journal.commits
    results = await d.submit_many(items)
    assert journal.commits - commits < 10  # 50 outcomes, a few group commits
    ids = [int(r[0]) for r in results if isinstance(r, list)]
    assert ids == sorted(ids) and len(ids) == 50  # journal order is the order given
    await d.start()
    await wait_for(lambda: len(rec.done_tags()) == 50)
    assert rec.done_tags() == [f"k:{i}" for i in range(50)]


async def test_action_timeout_counts_as_a_failure(make: Any, rec: Recorder, journal: SQLiteJournal) -> None:
    d = await make(replace(FAST, action_timeout=0.1))
    ids = await d.submit(
        make_event(), make_outcome(rec_plan("stuck", sleep=5, retry=RetryPolicy(max_attempts=2)))
    )
    await wait_for(lambda: d.stats.outcomes[("rec", "dead")] == 1)
    assert len(rec.calls) == 2  # retried once, then given up
    e = await journal.get(int(ids[0]))
    assert e is not None and "gave up after 2 attempts: timed out after 0.1s" in (e.last_error or "")


@pytest.mark.parametrize("raised", [asyncio.CancelledError, SystemExit], ids=["CancelledError", "SystemExit"])
async def test_a_plugin_raising_a_base_exception_itself_is_a_retryable_failure(
    journal: SQLiteJournal, rec: Recorder, raised: type[BaseException]
) -> None:
    # Not a cancellation of the action nor trapd's exit: the plugin raised it (awaited a future that
    # was cancelled elsewhere; a library called sys.exit). Before, CancelledError ended the worker
    # with the action left 'running', and SystemExit left the event loop and stopped trapd.
    @action("raiser", params={}, idempotent=True)
    async def raiser(params: dict[str, Any], ctx: ActionContext) -> None:
        """Raise what the test says (test action)."""
        raise raised()

    d = Dispatcher(FAST, journal, {"raiser": raiser, "rec": rec.spec()}, kea=None)
    await d.start()
    try:
        ids = await d.submit(
            make_event(), make_outcome(plan("raiser", {}, retry=RetryPolicy(max_attempts=2)))
        )
        await wait_for(lambda: d.stats.outcomes[("raiser", "dead")] == 1, timeout=10)
        e = await journal.get(int(ids[0]), with_event=False)
        assert e is not None and f"gave up after 2 attempts: {raised.__name__}" in (e.last_error or "")
        assert not any(w.done() for w in d._workers)  # every worker still takes actions
        await d.submit(make_event(), make_outcome(*(rec_plan(f"after{i}") for i in range(FAST.workers))))
        await wait_for(lambda: len(rec.done_tags()) == FAST.workers, timeout=10)
    finally:
        await d.stop(0.5)


async def test_a_secret_in_a_result_or_an_error_is_not_journaled(journal: SQLiteJournal) -> None:
    # An exec program that prints its environment, a receiver that echoes the request: the action
    # quotes a secret it was given in its result or its error, which the journal would keep in clear.
    secret = Secret("quoted-s3cret-token", "test")

    @action("quoter", params={"fail": Param("boolean", default=False)}, idempotent=True)
    async def quoter(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Quote the secret (test action)."""
        if params.get("fail"):
            raise RetryableError(f"refused: Authorization: Bearer {secret.reveal()}")
        return {"stdout": f"TOKEN={secret.reveal()}"}

    d = Dispatcher(FAST, journal, {"quoter": quoter}, kea=None)
    await d.start()
    try:
        done_ids = await d.submit(make_event(), make_outcome(plan("quoter", {}, key="a")))
        dead_ids = await d.submit(
            make_event(),
            make_outcome(plan("quoter", {"fail": True}, key="b", retry=RetryPolicy(max_attempts=2))),
        )
        await wait_for(lambda: d.stats.outcomes[("quoter", "dead")] == 1, timeout=10)
        await wait_for(lambda: d.stats.outcomes[("quoter", "done")] == 1, timeout=10)
    finally:
        await d.stop(0.5)
    done = await journal.get(int(done_ids[0]), with_event=False)
    dead = await journal.get(int(dead_ids[0]), with_event=False)
    assert done is not None and done.result == {"stdout": "TOKEN=***"}
    assert dead is not None and dead.last_error is not None and "Bearer ***" in dead.last_error
    for path in journal.path.parent.iterdir():
        assert secret.reveal().encode() not in path.read_bytes(), path.name


async def test_an_action_that_returns_an_unawaited_coroutine_is_not_done(journal: SQLiteJournal) -> None:
    # `return ctx.http.post(...)` without await: nothing was sent. Before, the action was journaled
    # done with '<coroutine object ...>' as its result.
    sent: list[str] = []

    async def send() -> dict[str, Any]:
        sent.append("sent")
        return {}

    @action("forgot.await", params={}, idempotent=True)
    async def forgot(params: dict[str, Any], ctx: ActionContext) -> Any:
        """Forgets to await (test action)."""
        return send()

    d = Dispatcher(FAST, journal, {"forgot.await": forgot}, kea=None)
    await d.start()
    try:
        ids = await d.submit(
            make_event(), make_outcome(plan("forgot.await", {}, retry=RetryPolicy(max_attempts=1)))
        )
        await wait_for(lambda: sum(d.stats.outcomes.values()) >= 1, timeout=10)
    finally:
        await d.stop(0.5)
    assert d.stats.outcomes[("forgot.await", "done")] == 0
    e = await journal.get(int(ids[0]), with_event=False)
    assert e is not None and e.state == "dead" and "coroutine" in (e.last_error or ""), e
    assert sent == []


async def test_an_unexpected_error_from_the_journal_does_not_stop_the_pump_or_the_maintenance(
    make: Callable[..., Any], journal: SQLiteJournal, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pump (which loads what falls due) and the maintenance (which notices `trapd journal`'s
    # writes) handled only JournalError: any other error a backend let through (sqlite3's own
    # 'database is locked' did, until it was made a JournalError) ended the task for good, and
    # delayed actions never ran until trapd restarted. A backend defect is injected once each.
    failed: list[str] = []
    real_due, real_changed = journal.due, journal.changed

    async def due_fails_once(now: float, limit: int, skip: frozenset[int] = frozenset()) -> Any:
        if "due" not in failed:
            failed.append("due")
            raise RuntimeError("a backend defect")
        return await real_due(now, limit, skip)

    async def changed_fails_once() -> bool:
        if "changed" not in failed:
            failed.append("changed")
            raise RuntimeError("a backend defect")
        return await real_changed()

    monkeypatch.setattr(journal, "due", due_fails_once)
    monkeypatch.setattr(journal, "changed", changed_fails_once)
    d = await make()
    await d.submit(make_event(), make_outcome(rec_plan("delayed", delay=0.2)))
    await wait_for(lambda: rec.done_tags() == ["delayed"], timeout=10)
    assert sorted(failed) == ["changed", "due"]
    # The maintenance still runs: an operator's retry of a dead action from another process.
    other = SQLiteJournal(journal.path)
    await other.open()
    try:
        now = time.time()
        (dead,) = (
            await other.add(
                make_event().to_dict(),
                [replace(d._plan(make_event(), rec_plan("retried"), now), state="dead")],
                [],
                now,
            )
        ).ids
        assert await other.retry([dead], time.time()) == [dead]
    finally:
        await other.close()
    await wait_for(lambda: "retried" in rec.done_tags(), timeout=10)


async def test_a_failing_expiry_of_held_actions_does_not_hold_back_the_journals_notices(
    make: Callable[..., Any], journal: SQLiteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk fails expire_held (it writes) at every poll. The maintenance stopped at that
    # step, so what came after it waited, unlogged, until the disk was freed: the periodic
    # integrity check's findings, takeovers, the counts gauges. The failure is injected.
    from structlog.testing import capture_logs

    from trapd.dispatch.journal import JournalError, JournalNotice

    async def expire_fails(now: float) -> Any:
        raise JournalError("journal commit failed: database or disk is full")

    given: list[int] = []

    def one_notice() -> list[JournalNotice]:
        if given:
            return []
        given.append(1)
        return [JournalNotice("error", "journal file damaged", {"detail": "page 7"})]

    monkeypatch.setattr(journal, "expire_held", expire_fails)
    monkeypatch.setattr(journal, "notices", one_notice)
    with capture_logs() as logs:
        d = await make()
        await wait_for(lambda: any(e["event"] == "journal maintenance failed" for e in logs), timeout=10)
        await wait_for(lambda: any(e["event"] == "journal file damaged" for e in logs), timeout=10)
    assert d.stats.gauges is not None
