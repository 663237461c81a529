"""`trapd journal` and `trapd actions` against a real journal file and the installed plugins."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from trapd.cli import main
from trapd.dispatch.journal import CapCheck, NewEntry, SQLiteJournal
from trapd.dispatch.testing import make_event

_keys = itertools.count()


def new(action: str, params: dict[str, object], **kw: object) -> NewEntry:
    base: dict[str, object] = dict(
        rule="mac-removed", action=action, index=0, params=params, key=f"k{next(_keys)}", mode="enforce",
        state="pending",
        due=time.time(), max_attempts=3, backoff=1.0, max_age=3600.0,
    )  # fmt: skip
    base.update(kw)
    return NewEntry(**base)  # type: ignore[arg-type]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A journal with: 1 pending (MAC), 2 held, 3 dead, 4 done webhook with a secret header, 5 scheduled."""

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            now = time.time()
            sw = make_event(source="10.20.1.5").to_dict()
            await j.add(sw, [new("log", {"message": "m"}, mac="00:11:22:33:44:55", ip="10.1.2.3")], [], now)
            cap = CapCheck("mac-removed/deletions", "10.20.1.5", 0, 60.0, 3600.0)
            r = await j.add(sw, [new("log", {"message": "held"}, caps=(cap,))], [], now)
            assert (await j.claim(r.ids[0], now)).outcome == "held"
            other = make_event(source="10.20.1.6").to_dict()
            r = await j.add(other, [new("log", {"message": "x"}, rule="other")], [], now)
            await j.claim(r.ids[0], now)
            await j.finish(r.ids[0], "dead", now, None, "gave up after 3 attempts: refused")
            hook = new(
                "webhook", {"url": "http://127.0.0.1:1/x", "headers": {"Authorization": "Bearer s3cr3t"}}
            )
            r = await j.add(sw, [hook], [], now - 7200)
            await j.claim(r.ids[0], now - 7200)
            await j.finish(r.ids[0], "done", now - 7200, {"status": 200})
            await j.add(sw, [new("log", {"message": "later"}, state="scheduled", due=now + 600)], [], now)

    asyncio.run(fill())
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().out


def test_list_waiting_and_by_state(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "journal", "--state-dir", str(state_dir), "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "WHEN"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["1", "pending"], ["2", "held"], ["5", "scheduled"]]
    rc, out = run(capsys, "journal", "--state-dir", str(state_dir), "list", "--state", "dead")
    assert "gave up after 3 attempts" in out and out.splitlines()[1].split()[:2] == ["3", "dead"]


def test_held_actions_show_when_they_were_held_and_when_the_hold_expires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cap held one action 10 minutes ago for 1 h; a restart held another (hold-unsafe) for a day."""
    held_at = time.time() - 600

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            sw = make_event(source="10.20.1.5").to_dict()
            cap = CapCheck("mac-removed/deletions", "10.20.1.5", 0, 60.0, 3600.0)
            r = await j.add(sw, [new("log", {"message": "held"}, caps=(cap,))], [], held_at)
            assert (await j.claim(r.ids[0], held_at)).outcome == "held"
            r = await j.add(sw, [new("exec", {"argv": ["/bin/true"]})], [], held_at)
            assert (await j.claim(r.ids[0], held_at)).outcome == "running"
            assert (await j.recover(held_at + 60, hold_unless=()))["held"] == 1
            await j.add(sw, [new("log", {"message": "waiting"})], [], held_at)

    asyncio.run(fill())

    def stamp(t: float) -> str:
        return datetime.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")

    rc, out = run(capsys, "journal", "--state-dir", str(tmp_path), "list", "--state", "held")
    assert rc == 0
    head, cap_row, restart_row = out.splitlines()  # only the held ones
    assert head.startswith("ID  STATE  HELD AT") and "HOLD EXPIRES" in head
    assert cap_row.startswith(f"1   held   {stamp(held_at)}  {stamp(held_at + 3600)}"), out
    assert restart_row.startswith(f"2   held   {stamp(held_at + 60)}  {stamp(held_at + 60 + 86400)}"), out
    # Among the other waiting actions too: WHEN is when it was held, the expiry has its own column.
    _, out = run(capsys, "journal", "--state-dir", str(tmp_path), "list")
    lines = [re.split(r"\s{2,}", line) for line in out.splitlines()]
    assert lines[0][:4] == ["ID", "STATE", "WHEN", "HOLD EXPIRES"]
    assert lines[1][:4] == ["1", "held", stamp(held_at), stamp(held_at + 3600)], out
    assert lines[3][:2] == ["3", "pending"]
    _, out = run(capsys, "journal", "--state-dir", str(tmp_path), "--json", "list", "--state", "held")
    first = json.loads(out.splitlines()[0])
    assert first["held_at"] == pytest.approx(held_at)
    assert first["hold_expires"] == pytest.approx(held_at + 3600)


def test_show_masks_secret_parameters(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "journal", "--state-dir", str(state_dir), "show", "4")
    assert rc == 0
    assert "s3cr3t" not in out and '"headers": "***"' in out
    assert '"source": "10.20.1.5"' in out  # the event that caused it
    rc, out = run(capsys, "journal", "show", "4", "--json", "--state-dir", str(state_dir))  # options after
    d = json.loads(out)
    assert (
        d["params"]["headers"] == "***"
        and d["result"] == {"status": 200}
        and d["event"]["source"] == "10.20.1.5"
    )
    assert run(capsys, "journal", "--state-dir", str(state_dir), "show", "99")[0] == 1


def test_history_filters(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("journal", "--state-dir", str(state_dir), "--json", "history")
    _, out = run(capsys, *base, "--mac", "0011.2233.4455")  # any spelling finds it
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [1]
    _, out = run(capsys, *base, "--ip", "10.1.2.3")
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [1]
    _, out = run(capsys, *base, "--switch", "10.20.1.6")
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [3]
    _, out = run(capsys, *base, "--rule", "mac-removed", "--since", "1h")
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [5, 2, 1]  # newest first; 4 is older
    _, out = run(capsys, *base, "--until", "1h")
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [4]
    rc, _ = run(capsys, *base, "--mac", "00:99:99:99:99:99")
    assert rc == 1
    assert main(["journal", "--state-dir", str(state_dir), "history", "--mac", "not-a-mac"]) == 2


def test_retry_cancel_release(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = ("journal", "--state-dir", str(state_dir))
    assert run(capsys, *j, "retry", "3") == (0, "retried: 3\n" + _PICKUP)
    assert run(capsys, *j, "retry", "1")[0] == 1  # pending: nothing to retry
    assert run(capsys, *j, "cancel", "5")[0] == 0
    assert main([*j, "release"]) == 2  # needs ids, --rule or --all
    assert run(capsys, *j, "release", "--rule", "other")[0] == 1
    assert run(capsys, *j, "release", "--all", "--yes")[1].startswith("released: 2")
    _, out = run(capsys, *j, "--json", "list", "--state", "all")
    states = {d["id"]: d["state"] for d in map(json.loads, out.splitlines())}
    assert states == {1: "pending", 2: "pending", 3: "pending", 4: "done", 5: "cancelled"}


def held_journal(tmp_path: Path, n: int) -> tuple[str, ...]:
    """A journal of ``n`` held lease deletions (rule mac-removed) and one held log (rule other)."""

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as j:
            now = time.time()
            sw = make_event(source="10.20.1.5").to_dict()
            cap = CapCheck("mac-removed/deletions", "10.20.1.5", 0, 60.0, 3600.0)
            for i in range(n):
                ip = f"10.1.0.{i + 1}"
                r = await j.add(sw, [new("kea.lease-del", {"ip-address": ip}, ip=ip, caps=(cap,))], [], now)
                assert (await j.claim(r.ids[0], now)).outcome == "held"
            other = CapCheck("other/all", "", 0, 60.0, 3600.0)
            r = await j.add(sw, [new("log", {"message": "x"}, rule="other", caps=(other,))], [], now)
            assert (await j.claim(r.ids[0], now)).outcome == "held"

    asyncio.run(fill())
    return ("journal", "--state-dir", str(tmp_path))


def held_ids(capsys: pytest.CaptureFixture[str], j: tuple[str, ...]) -> list[int]:
    _, out = run(capsys, *j, "--json", "list", "--state", "held", "--limit", "1000")
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_release_all_previews_and_needs_a_yes_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`release --all` (or --rule) let every held destructive action run at once, with no look at
    what they are. --dry-run lists them and changes nothing; without a terminal to ask on, a
    bulk release needs --yes (refused, exit 2, saying how many and how to look); on a terminal
    it shows them and asks, and releases exactly what it showed. Ids named one by one need no
    confirmation: the operator named each."""
    j = held_journal(tmp_path, 3)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    rc, out = run(capsys, *j, "release", "--all", "--dry-run")
    assert rc == 0, out
    assert [ln.split()[:2] for ln in out.splitlines()[1:4]] == [[str(i), "held"] for i in (1, 2, 3)], out
    assert "10.1.0.1" in out and "kea.lease-del" in out
    assert "would release 4 held actions (dry run: nothing changed)" in out, out
    assert held_ids(capsys, j) == [1, 2, 3, 4]
    _, out = run(capsys, *j, "--json", "release", "--rule", "other", "--dry-run")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [4]

    rc = main([*j, "release", "--all"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert "4 held actions" in captured.err and "--yes" in captured.err and "--dry-run" in captured.err
    assert held_ids(capsys, j) == [1, 2, 3, 4]  # nothing released
    assert main([*j, "release", "--rule", "mac-removed"]) == 2
    assert held_ids(capsys, j) == [1, 2, 3, 4]
    assert run(capsys, *j, "release", "2")[0] == 0  # named: no confirmation
    assert held_ids(capsys, j) == [1, 3, 4]

    # Typed on a terminal, its output to a file: the list and the question would go there unseen.
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert main([*j, "release", "--all"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "stdout is not a terminal" in captured.err, captured
    assert held_ids(capsys, j) == [1, 3, 4]

    # On a terminal: shown, asked; "n" (or nothing) releases nothing, "y" what was shown.
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt="": (print(prompt, end=""), next(answers))[1])
    rc, out = run(capsys, *j, "release", "--rule", "mac-removed")
    assert rc == 1 and "release these 2 held actions? [y/N]" in out and "nothing released" in out, out
    assert held_ids(capsys, j) == [1, 3, 4]
    rc, out = run(capsys, *j, "release", "--rule", "mac-removed")
    assert rc == 0 and "released: 1 3" in out, out
    assert held_ids(capsys, j) == [4]


def test_release_on_a_terminal_releases_only_what_it_showed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An action held while the operator reads the list is not released by the "y" they gave to
    the list without it; and a list too long for the screen is shown in part, with the count."""
    j = held_journal(tmp_path, 30)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)

    def answer(prompt: str = "") -> str:
        print(prompt, end="")
        held_journal(tmp_path, 1)  # one more held meanwhile: id 32 (a lease deletion)
        return "yes"

    monkeypatch.setattr("builtins.input", answer)
    rc, out = run(capsys, *j, "release", "--rule", "mac-removed")
    assert rc == 0, out
    assert "… 10 more" in out and "release these 30 held actions? [y/N]" in out, out
    assert held_ids(capsys, j) == [31, 32, 33]


_PICKUP = "the running daemon picks this up within its poll interval (1 s by default)\n"


def test_missing_journal_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "--state-dir", str(tmp_path / "nothing"), "list"]) == 2
    assert "no journal at" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # reading never creates one


def test_journal_found_through_trapd_yaml(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(f"state_dir: {state_dir}\n")
    rc, out = run(capsys, "journal", "--config", str(cfg), "list")
    assert rc == 0 and "pending" in out


def test_actions_lists_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, "actions")
    assert rc == 0
    for name in ("log", "exec", "webhook"):
        assert f"\n{name}" in "\n" + out
    assert "argv: list[string], required" in out
    assert "level: enum(debug|info|warning|error), default 'info'" in out
    rc, out = run(capsys, "actions", "webhook")
    assert rc == 0 and "5xx" in out and "headers: mapping, optional (secret)" in out
    assert run(capsys, "actions", "nope")[0] == 1
    rc, out = run(capsys, "actions", "--json")
    names = [a["name"] for a in json.loads(out)["actions"]]
    assert {"log", "exec", "webhook"} <= set(names)


def test_list_on_a_shared_journal_names_the_host_of_each_action(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pair on one PostgreSQL journal: which host claimed (ran, runs) each action was nowhere in
    `trapd journal list` / `history`. A HOST column (a worker's claims as HOST/worker-N), `host` and
    `owner` in --json on every line (null before a claim), and --host NAME to see one host's."""
    from trapd.dispatch.journal.postgres import PostgresJournal

    async def fill() -> None:
        sw = make_event(source="10.20.1.5").to_dict()
        for name, owner in (("dhcp1", None), ("dhcp2", None), ("dhcp2", "worker-1")):
            async with PostgresJournal(pg_url, instance=name, owner=owner) as j:
                now = time.time()
                r = await j.add(sw, [new("log", {"message": name})], [], now)
                assert (await j.claim(r.ids[0], now)).outcome == "running"
                await j.finish(r.ids[0], "done", now, None)
        async with PostgresJournal(pg_url, instance="dhcp1") as j:
            await j.add(
                sw, [new("log", {"message": "waits"}, state="scheduled", due=time.time() + 600)], [], now
            )

    asyncio.run(fill())
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    j = ("journal", "-c", str(cfg))
    rc, out = run(capsys, *j, "list", "--state", "all")
    assert rc == 0, out
    head, *rows = out.splitlines()
    col = head.split().index("HOST") + 1  # WHEN is two words in a row: date, time
    assert [r.split()[col] for r in rows] == ["dhcp1", "dhcp2", "dhcp2/worker-1", "-"], out
    _, out = run(capsys, *j, "--json", "list", "--state", "all")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["host"], d["owner"]) for d in lines] == [
        ("dhcp1", "dhcp1"), ("dhcp2", "dhcp2"), ("dhcp2", "dhcp2/worker-1"), (None, None)
    ]  # fmt: skip
    _, out = run(capsys, *j, "--json", "list", "--state", "all", "--host", "dhcp2")
    assert [json.loads(line)["owner"] for line in out.splitlines()] == ["dhcp2", "dhcp2/worker-1"]
    _, out = run(capsys, *j, "--json", "history", "--host", "dhcp1")  # also what dhcp1 journaled
    assert [json.loads(line)["host"] for line in out.splitlines()] == [None, "dhcp1"]
    assert run(capsys, *j, "history", "--host", "dhcp") == (1, "no actions\n")  # a name, not a prefix
    _, out = run(capsys, *j, "--json", "show", "3")
    assert (json.loads(out)["host"], json.loads(out)["owner"]) == ("dhcp2", "dhcp2/worker-1")


def test_the_host_column_is_left_out_of_a_journal_of_one_host(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite: every action is this host's; the JSON keys are there all the same (null)."""
    _, out = run(capsys, "journal", "--state-dir", str(state_dir), "list", "--state", "all")
    assert "HOST" not in out.splitlines()[0]
    _, out = run(capsys, "journal", "--state-dir", str(state_dir), "--json", "list")
    assert all(json.loads(line)["host"] is None for line in out.splitlines())


def test_a_list_of_one_state_in_a_large_journal_sorts_ids_not_whole_rows(tmp_path: Path) -> None:
    """`list --state done` (or history by rule, switch) on a journal of 30 days: the matching rows
    were read whole (parameters, results) and sorted, to keep the newest 100: 3.1 s for 500,000
    done actions. The ids are sorted from the index alone, then 100 rows read (0.32 s). Counted in
    SQLite's VM steps, which do not depend on the machine's load: against a count of the same
    rows through the same index (the least any answer costs), at most a few times that."""
    import sqlite3

    from trapd.dispatch.journal import HistoryFilter
    from trapd.dispatch.journal.sqlite import _op_history

    path = tmp_path / "journal.sqlite"

    async def make() -> None:
        async with SQLiteJournal(path):
            pass  # the schema

    asyncio.run(make())
    conn = sqlite3.connect(path)
    conn.execute(
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 20000) "
        "INSERT INTO actions (event_id, received_at, source, rule, action, idx, params, key, mode, state, "
        "max_attempts, backoff, max_age, age_from, created, due, finished, result) "
        "SELECT 'e', x, '10.0.0.' || (x % 50), 'r' || (x % 4), 'log', 0, '{\"message\": \"m\"}', 'k' || x, "
        "'enforce', CASE WHEN x % 1000 = 0 THEN 'held' ELSE 'done' END, 3, 1, 3600, x, x, x, x, "
        '\'{"status": 200, "answer": "\' || hex(randomblob(64)) || \'"}\' FROM g'
    )
    conn.commit()

    def steps(run: Callable[[], object]) -> int:
        n = [0]

        def count() -> int:
            n[0] += 1
            return 0

        conn.set_progress_handler(count, 100)
        try:
            run()
        finally:
            conn.set_progress_handler(None, 0)
        return n[0]

    for flt, floor_sql, args in (
        (HistoryFilter(states=("done",)), "SELECT count(*) FROM actions WHERE state = ?", ("done",)),
        (HistoryFilter(rule="r1"), "SELECT count(*) FROM actions WHERE rule = ?", ("r1",)),
    ):
        got: list[Any] = []
        cost = steps(lambda flt=flt, got=got: got.extend(_op_history(conn, flt)))
        floor = steps(lambda sql=floor_sql, a=args: conn.execute(sql, a).fetchall())
        assert [e.id for e in got] == sorted((e.id for e in got), reverse=True) and len(got) == 100
        assert got[0].id == (19999 if flt.states else 19997), got[0].id  # the newest first
        assert cost < 6 * floor, (flt, cost, floor)  # 3.4 now; whole rows sorted: 16.7
    conn.close()


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime is not installed (scripts/setup.sh --test)")
def test_history_since_a_duration_goes_by_the_shared_journal_s_clock(pg_url: str, tmp_path: Path) -> None:
    """A shared journal's times are the database's clock; `history --since 10m` on a host whose
    clock is an hour ahead counted the 10 minutes back from its own clock, and found nothing of
    the last 10 minutes (exit 1). It counts them back from the journal's clock, as it stores them."""
    import os
    import subprocess
    import sys

    from trapd.dispatch.journal.postgres import PostgresJournal

    async def fill() -> None:
        async with PostgresJournal(pg_url, instance="dhcp1") as j:
            await j.add(make_event().to_dict(), [new("log", {"message": "just now"})], [], j.now())

    asyncio.run(fill())
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    skew = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": "+1h", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "trapd", "journal", "-c", str(cfg), "--json", "history", "--since", "10m"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **skew},
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert [json.loads(line)["params"]["message"] for line in r.stdout.splitlines()] == ["just now"]


def test_the_lists_of_a_large_shared_journal_read_no_whole_table(pg_url: str) -> None:
    """PostgreSQL with 40,000 finished actions and a few waiting (analysed, as autovacuum does):
    `trapd journal list` (waiting, held, dead, all) and history by rule or host plan through an
    index, never a sequential scan of every action, whatever their number."""
    import psycopg

    from trapd.dispatch.journal import HistoryFilter
    from trapd.dispatch.journal.postgres import _op_history

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trapd_actions (event_id, received_at, source, rule, action, idx, params, key, mode, "
            "state, max_attempts, backoff, max_age, age_from, created, due, finished, owner) "
            "SELECT 'e', g, '10.0.0.' || (g % 50), 'r' || (g % 20), 'log', 0, '{}', 'k' || g, 'enforce', "
            "CASE WHEN g % 2000 = 0 THEN 'held' WHEN g % 3000 = 0 THEN 'pending' ELSE 'done' END, "
            "3, 1, 3600, g, g, g, g, 'dhcp' || (g % 2 + 1) FROM generate_series(1, 40000) g"
        )
        conn.execute("ANALYZE trapd_actions")

        class Explaining:
            """A cursor that plans the statement _op_history sends instead of running it."""

            plans: list[str] = []

            async def execute(self, sql: str, args: Any = ()) -> None:
                cur = conn.execute("EXPLAIN (FORMAT JSON) " + sql, args)
                self.plans.append(json.dumps(cur.fetchone()))

            async def fetchall(self) -> list[Any]:
                return []

        waiting = ("scheduled", "pending", "failed", "held", "running")
        for flt in (
            HistoryFilter(states=waiting),
            HistoryFilter(states=("held",)),
            HistoryFilter(states=("dead",)),
            HistoryFilter(),
            HistoryFilter(rule="r3"),
            HistoryFilter(states=waiting, host="dhcp1"),
        ):
            cursor = Explaining()
            asyncio.run(_op_history(cursor, flt))
            assert '"Seq Scan"' not in cursor.plans[-1], (flt, cursor.plans[-1])


def test_a_shared_journal_names_the_host_that_journaled_each_action(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pair on one PostgreSQL journal: an action held by a rate cap (never claimed) showed `-`
    under HOST, and a copy of a notification journaled cancelled did too: which host journaled it
    was recorded nowhere. A JOURNALED column (and `journaled_by` in --json, the full name, a
    worker's included) says which host journaled each action; HOST still says which ran it."""
    from trapd.dispatch.journal.postgres import PostgresJournal

    async def fill() -> None:
        sw = make_event(source="10.20.1.5").to_dict()
        now = time.time()
        cap = CapCheck("mac-removed/deletions", "10.20.1.5", 0, 60.0, 3600.0)
        async with PostgresJournal(pg_url, instance="dhcp1") as j:
            r = await j.add(sw, [new("log", {"message": "held"}, caps=(cap,))], [], now)
            assert (await j.claim(r.ids[0], now)).outcome == "held"
        async with PostgresJournal(pg_url, instance="dhcp2", owner="worker-0") as j:
            r = await j.add(sw, [new("log", {"message": "ran"})], [], now)
            async with PostgresJournal(pg_url, instance="dhcp1") as j1:
                assert (await j1.claim(r.ids[0], now)).outcome == "running"
                await j1.finish(r.ids[0], "done", now, None)

    asyncio.run(fill())
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    j = ("journal", "-c", str(cfg))
    rc, out = run(capsys, *j, "list", "--state", "all")
    assert rc == 0, out
    head, *rows = out.splitlines()
    by, host = head.index("JOURNALED"), head.index("HOST ")  # columns by position: some cells are blank
    assert [(r[by:].split()[0], r[host:].split()[0]) for r in rows] == [
        ("dhcp1", "-"), ("dhcp2/worker-0", "dhcp1")
    ], out  # fmt: skip
    _, out = run(capsys, *j, "--json", "history")
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted((d["journaled_by"], d["owner"]) for d in lines) == [
        ("dhcp1", None), ("dhcp2/worker-0", "dhcp1")
    ]  # fmt: skip
    rc, out = run(capsys, *j, "show", "1")
    assert re.search(r"^journaled_by\s+dhcp1$", out, re.M), out


def test_a_held_row_that_ran_to_its_end_says_so_first_in_the_list(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host cut off from the database ran an action to its end after the other host held it
    (docs/pair.md): the end is noted after "interrupted while running; it may have taken effect:
    release it ...", and `list --state held`, where an operator decides what to release, cut
    the NOTE at 60 characters before it. The note comes first in the column."""
    from trapd.dispatch.journal.postgres import PostgresJournal

    async def fill() -> int:
        async with PostgresJournal(pg_url, instance="dhcp1") as j:
            now = time.time()
            r = await j.add(make_event(source="10.20.1.5").to_dict(), [new("log", {"message": "m"})], [], now)
            assert (await j.claim(r.ids[0], now)).outcome == "running"
            with psycopg.connect(pg_url, autocommit=True) as conn:  # dhcp2's takeover, hold-unsafe
                conn.execute(
                    "UPDATE trapd_actions SET state = 'held', held_by = 'interrupted', due = %s, "
                    "lease_until = NULL, last_error = 'interrupted while running; it may have taken "
                    "effect: release it to run it again' WHERE id = %s",
                    (now + 3600, r.ids[0]),
                )
            await j.finish(r.ids[0], "done", now + 1)
            return r.ids[0]

    id_ = asyncio.run(fill())
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    rc, out = run(capsys, "journal", "-c", str(cfg), "list", "--state", "held")
    assert rc == 0, out
    (row,) = [line for line in out.splitlines() if line.startswith(f"{id_} ")]
    assert "dhcp1 ran it to its end after the takeover: done" in row, out


def test_host_lists_what_a_host_journaled_as_well_as_what_it_claimed(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--host dhcp2` listed only the actions dhcp2 claimed: what dhcp2 journaled and dhcp1 ran
    (claimed as it fell due), what dhcp2 journaled that a cap holds (never claimed) and the copy
    of a notification dhcp2 journaled cancelled were not there, though the JOURNALED column says
    dhcp2. An operator asking "what did dhcp2 do" about a trap dhcp2 got found nothing. `--host`
    now matches either column (a worker's names included); the columns say which."""
    from trapd.dispatch.journal.postgres import PostgresJournal

    async def fill() -> None:
        sw = make_event(source="10.20.1.5").to_dict()
        now = time.time()
        cap = CapCheck("mac-removed/deletions", "10.20.1.5", 0, 60.0, 3600.0)
        async with (
            PostgresJournal(pg_url, instance="dhcp1") as d1,
            PostgresJournal(pg_url, instance="dhcp2", owner="worker-0") as d2,
        ):
            r = await d1.add(sw, [new("log", {"message": "dhcp1 alone"})], [], now)  # 1
            assert (await d1.claim(r.ids[0], now)).outcome == "running"
            await d1.finish(r.ids[0], "done", now, None)
            r = await d2.add(sw, [new("log", {"message": "dhcp2 got, dhcp1 ran"})], [], now)  # 2
            assert (await d1.claim(r.ids[0], now)).outcome == "running"
            await d1.finish(r.ids[0], "done", now, None)
            r = await d2.add(sw, [new("log", {"message": "held"}, caps=(cap,))], [], now)  # 3
            assert (await d2.claim(r.ids[0], now)).outcome == "held"
            r = await d1.add(sw, [new("log", {"message": "dhcp1 got, dhcp2 ran"})], [], now)  # 4
            assert (await d2.claim(r.ids[0], now)).outcome == "running"
            await d2.finish(r.ids[0], "done", now, None)

    asyncio.run(fill())
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    j = ("journal", "-c", str(cfg), "--json")

    def listed(*argv: str) -> list[str]:
        rc, out = run(capsys, *j, *argv)
        assert rc in (0, 1), out
        return [json.loads(line)["params"]["message"] for line in out.splitlines()]

    for cmd in (("list", "--state", "all"), ("history",)):
        got = listed(*cmd, "--host", "dhcp2")
        assert sorted(got) == ["dhcp1 got, dhcp2 ran", "dhcp2 got, dhcp1 ran", "held"], (cmd, got)
        got = listed(*cmd, "--host", "dhcp1")
        assert sorted(got) == ["dhcp1 alone", "dhcp1 got, dhcp2 ran", "dhcp2 got, dhcp1 ran"], (cmd, got)
    assert listed("list", "--host", "dhcp2") == ["held"]  # waiting ones only
    got = listed("history", "--host", "dhcp2/worker-0")  # one worker: the same three here
    assert sorted(got) == ["dhcp1 got, dhcp2 ran", "dhcp2 got, dhcp1 ran", "held"], got


def test_state_dir_reads_that_sqlite_journal_also_where_trapd_yaml_names_a_shared_one(
    pg_url: str, state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pair moved to PostgreSQL keeps its old SQLite journal in the state directory; `trapd
    journal --state-dir /var/lib/trapd list` (the directory holding journal.sqlite, as its help
    says) listed the shared PostgreSQL journal instead, without a word, because trapd.yaml names
    one: what the admin read was not the file asked for. --state-dir, like --journal, is that file."""
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    rc, out = run(capsys, "journal", "-c", str(cfg), "--state-dir", str(state_dir), "list")
    assert rc == 0, out
    assert [ln.split()[:2] for ln in out.splitlines()[1:]] == [
        ["1", "pending"],
        ["2", "held"],
        ["5", "scheduled"],
    ]
    assert "HOST" not in out.splitlines()[0]  # one host's journal


def test_host_on_a_journal_of_one_host_is_a_usage_error(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --host dhcp1` on an SQLite journal (one host's: no host names in it) printed 'no
    actions' (exit 0; history: exit 1): an operator read that dhcp1 had done nothing."""
    for cmd in ("list", "history"):
        rc = main(["journal", "--state-dir", str(state_dir), cmd, "--host", "dhcp1"])
        captured = capsys.readouterr()
        assert rc == 2 and "--host" in captured.err and "shared" in captured.err, (cmd, captured)
        assert "no actions" not in captured.out


def test_migrate_with_a_state_dir_still_migrates_the_shared_journal(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--state-dir names an SQLite journal for the looking and changing commands; `migrate` with
    it (a habit: every command given the same options) must still migrate trapd.yaml's shared
    journal, not answer 'the SQLite journal needs no migration' (exit 0) and leave trapd refusing
    to start for an old schema."""
    url = pg_server.new_database(migrated=False)
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": url}}}))
    rc, out = run(capsys, "journal", "-c", str(cfg), "--state-dir", str(tmp_path), "migrate")
    assert rc == 0 and "created ->" in out, out
