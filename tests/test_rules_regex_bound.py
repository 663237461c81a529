"""A rule's regex meets trap text under a time bound: a pattern that backtracks without end
(``(a|aa)+``, ``(\\w+\\s?)+`` and their kind, written by an operator) against a value a switch, or
anyone who can send it a trap, chose must not hold the event loop past the watchdog.

Each case runs in a child process with a deadline, so that on code without the bound the test
fails in bounded time instead of running for hours.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# The event's ifDescr: 60 characters that (a|aa)+ can split in ~fib(60) ways, then one that fails.
HOSTILE = "a" * 60 + "!"

RULES = """
rules:
  - name: slow
    match:
      notification: IF-MIB::linkDown
      varbinds: {ifDescr: {regex: '(a|aa)+'}}
    actions: [{action: log, message: slow}]
  - name: negated
    match:
      notification: IF-MIB::linkDown
      varbinds: {ifDescr: {not: {regex: '(a|aa)+'}}}
    actions: [{action: log, message: negated}]
  - name: after
    match: {notification: IF-MIB::linkDown}
    actions: [{action: log, message: after}]
"""


def run_child(tmp_path: Path, body: str) -> dict[str, object]:
    """Compile RULES, run ``body`` (which sets ``result``) in a child; its JSON result."""
    script = (
        textwrap.dedent(
            f"""
        import json, sys
        sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]
        from pathlib import Path
        from trapd.event import VarBind
        from rules_support import event, ruleset, with_varbind
        rs = ruleset(Path({str(tmp_path)!r}), {RULES!r})
        ev = event("IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr={HOSTILE}")
        """
        )
        + textwrap.dedent(body)
        + "\nprint(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_a_regex_that_backtracks_without_end_is_stopped_and_the_event_goes_no_further(tmp_path: Path) -> None:
    result = run_child(
        tmp_path,
        """
        import time
        start = time.monotonic()
        out = rs.evaluate(ev)
        result = {
            "seconds": time.monotonic() - start,
            "matched": list(out.matched),
            "planned": [p.action for p in out.planned],
            "rejected": [[r.rule, r.kind, r.reason] for r in out.rejected],
        }
        """,
    )
    assert result["seconds"] < 5, result  # the bound is a fraction of a second; 5 s is load's margin
    # Neither the rule nor its negation matched, and no later rule ran in its place: with the
    # regex undecided, the rules after it (a stop: rule, a catch-all) cannot be decided either.
    assert result["matched"] == [] and result["planned"] == [], result
    [(rule, kind, reason)] = result["rejected"]  # type: ignore[misc]
    assert (rule, kind) == ("slow", "regex"), result
    assert "(a|aa)+" in reason and "time bound" in reason, reason


def test_trapd_test_shows_the_regex_that_ran_out_of_time(tmp_path: Path) -> None:
    result = run_child(
        tmp_path,
        """
        result = [[t.rule, t.status, t.reason] for t in rs.explain(ev)]
        """,
    )
    traces = {rule: (status, reason) for rule, status, reason in result}  # type: ignore[misc]
    status, reason = traces["slow"]
    assert status == "no-match" and "(a|aa)+" in reason and "time bound" in reason, traces
    assert traces["negated"][0] == "not-reached" and traces["after"][0] == "not-reached", traces


def test_ordinary_regexes_still_match_in_full_with_their_groups(tmp_path: Path) -> None:
    result = run_child(
        tmp_path,
        """
        rs = ruleset(Path(".") / "x", '''
        rules:
          - name: port
            match:
              notification: IF-MIB::linkDown
              varbinds: {ifDescr: {regex: 'Gi(?P<member>\\\\d+)/0/(?P<port>\\\\d+)'}}
            actions: [{action: log, message: "{{ member }}-{{ port }}"}]
        ''')
        out = rs.evaluate(event("IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17"))
        miss = rs.evaluate(event("IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=xGi1/0/17"))
        result = {"matched": list(out.matched), "message": out.planned[0].params["message"],
                  "miss": list(miss.matched)}
        """,
    )
    assert result == {"matched": ["port"], "message": "1-17", "miss": []}, result
