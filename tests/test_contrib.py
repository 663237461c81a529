"""The Grafana dashboard and the Prometheus alerting rules shipped in contrib/.

promtool (Debian's prometheus package, installed by scripts/setup.sh --test)
checks the rules, and every metric they and the dashboard use must be one a
real ``trapd run`` exports: a renamed metric breaks this test, not someone's
dashboard months later.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import TrapdDaemon

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "contrib" / "prometheus" / "trapd-alerts.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "trapd-dashboard.json"
# Metric names in PromQL: trapd's own, prometheus-client's process/python ones, and Prometheus's `up`.
METRIC = re.compile(r"\b(trapd_[a-z0-9_]+|process_[a-z0-9_]+|python_[a-z0-9_]+|up)\b")
FROM_PROMETHEUS = {"up"}  # made by Prometheus for every scrape target, not by trapd
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def alert_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    panels = doc["panels"] + [q for p in doc["panels"] for q in p.get("panels", ())]  # a collapsed row's too
    exprs = [t["expr"] for p in panels for t in p.get("targets", ())]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v.get("definition")]
    return exprs


def used(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)} - FROM_PROMETHEUS


def exported_by_a_running_trapd(tmp_path: Path) -> set[str]:
    """Every sample name a real ``trapd run``'s /metrics can have (its families' names and suffixes)."""
    from prometheus_client.parser import text_string_to_metric_families

    rules = "rules:\n  - {name: r, match: {notification: linkDown}, actions: [{action: log, message: x}]}\n"
    d = TrapdDaemon.start(tmp_path, rules=rules)
    try:
        status, body = d.http_get("/metrics")
        assert status == 200
        assert d.stop() == 0
    finally:
        d.close()
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        # The parser names a counter's family without its _total, and a histogram's family name
        # is no series: only the suffixed names are (a family with no series yet has no samples).
        suffixes = SUFFIXES.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
        names.update(s.name for s in family.samples)
    return names


def test_promtool_accepts_the_alerting_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh --test installs Debian's prometheus package"
    r = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in r.stdout


def test_the_alerts_fire_when_they_should() -> None:
    """promtool's unit tests of the rules (contrib/prometheus/trapd-alerts.test.yml)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh --test installs Debian's prometheus package"
    tests = ALERTS.with_name("trapd-alerts.test.yml")
    r = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return exported_by_a_running_trapd(tmp_path_factory.mktemp("trapd"))


def test_the_check_catches_a_metric_trapd_does_not_export(exported: set[str]) -> None:
    """A misspelt name, and a counter or histogram named without the suffix Prometheus stores it
    under (``trapd_reloads`` for ``trapd_reloads_total``): each selects nothing, and the check
    must say so."""
    for wrong in (
        "trapd_reload_total",
        "trapd_reloads",
        "trapd_action_latency_seconds",
        "trapd_journal_available_total",
    ):
        expr = f'sum(rate({wrong}{{instance=~"$instance"}}[5m]))'
        assert used([expr]) - exported == {wrong}, wrong
    assert used(['sum(rate(trapd_reloads_total{instance=~"$instance"}[5m]))']) - exported == set()


def test_every_metric_the_dashboard_and_alerts_use_is_exported(exported: set[str]) -> None:
    for what, exprs in (("alerts", alert_exprs()), ("dashboard", dashboard_exprs())):
        names = used(exprs)
        assert names, what
        assert names - exported == set(), f"{what} use metrics trapd does not export"


SELECTOR = re.compile(r"\b(trapd_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
FROM_THE_SCRAPE = {"instance", "job"}  # added by Prometheus to every series


def trapd_labels() -> dict[str, set[str]]:
    """Each trapd_ family's label names, as the collector declares them (whether or not it has
    series now: a trapd with no Kea has no trapd_kea_* series to read them from)."""
    from trapd.service.metrics import DaemonSnapshot, TrapdCollector

    labels: dict[str, set[str]] = {}
    for family in TrapdCollector(lambda: DaemonSnapshot()).collect():
        names = set(getattr(family, "_labelnames", ()))
        for suffix in SUFFIXES.get(family.type, ("",)):
            labels[family.name + suffix] = names | ({"le"} if suffix == "_bucket" else set())
    return labels


def unknown_labels(expr: str, labels: dict[str, set[str]]) -> set[str]:
    """Labels an expression selects on or groups by that none of its trapd metrics has."""
    metrics = {m for m in used([expr]) if m in labels}
    known = FROM_THE_SCRAPE.union(*(labels[m] for m in metrics))
    wrong = {
        f"{metric}{{{name}}}"
        for metric, body in SELECTOR.findall(expr)
        for name in MATCHER.findall(body)
        if name not in labels.get(metric, set()) | FROM_THE_SCRAPE
    }
    if all(m.startswith("trapd_") for m in used([expr])):  # process_*, python_*: not checked
        wrong |= {
            f"by ({n})" for group in GROUPING.findall(expr) for n in re.split(r"\s*,\s*", group.strip()) if n
        }
        wrong -= {f"by ({n})" for n in known}
    return wrong


def test_the_label_check_catches_a_label_trapd_does_not_export() -> None:
    labels = trapd_labels()
    assert unknown_labels('trapd_kea_endpoint_up{server="dhcp4/v4"} == 0', labels) == {
        "trapd_kea_endpoint_up{server}"
    }
    assert unknown_labels("sum by (plugin, result) (rate(trapd_actions_total[5m]))", labels) == {
        "by (result)"
    }
    assert unknown_labels('trapd_kea_ha_state{instance=~"a",state="terminated"} == 1', labels) == set()


def test_every_label_the_dashboard_and_alerts_use_is_exported() -> None:
    labels = trapd_labels()
    for what, exprs in (("alerts", alert_exprs()), ("dashboard", dashboard_exprs())):
        assert {e: unknown_labels(e, labels) for e in exprs if unknown_labels(e, labels)} == {}, what


def label_values() -> dict[tuple[str, str], set[str]]:
    """The values trapd gives a label, where it has a fixed set: the code's own lists."""
    from typing import get_args

    from trapd.dispatch.breaker import STATES as BREAKER_STATES
    from trapd.dispatch.journal.model import State
    from trapd.kea.monitor import HA_STATES
    from trapd.service.metrics import DaemonSnapshot, TrapdCollector

    values = {
        ("trapd_journal_entries", "state"): set(get_args(State)),
        ("trapd_kea_ha_state", "state"): set(HA_STATES),
        ("trapd_kea_breaker_state", "state"): set(BREAKER_STATES),
    }
    for family in TrapdCollector(lambda: DaemonSnapshot()).collect():  # every result, at 0
        if family.name in ("trapd_reloads", "trapd_journal_integrity_checks"):
            values[family.name + "_total", "result"] = {sample.labels["result"] for sample in family.samples}
    return values


def unknown_values(expr: str, values: dict[tuple[str, str], set[str]]) -> set[str]:
    """Label values an expression selects that trapd never sets (``state="terminate"``)."""
    return {
        f'{metric}{{{name}="{value}"}}'
        for metric, body in SELECTOR.findall(expr)
        for name, value in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=~?\s*"([^"]*)"', body)
        if (metric, name) in values
        for value in value.split("|")
        if value not in values[metric, name]
    }


def test_the_value_check_catches_a_value_trapd_never_sets() -> None:
    values = label_values()
    wrong = 'trapd_kea_ha_state{state="terminate"} == 1 or trapd_journal_entries{state=~"pending|waiting"}'
    assert unknown_values(wrong, values) == {
        'trapd_kea_ha_state{state="terminate"}',
        'trapd_journal_entries{state="waiting"}',
    }
    assert unknown_values('trapd_kea_breaker_state{state="half-open"} == 1', values) == set()


def test_every_label_value_the_dashboard_and_alerts_select_is_one_trapd_sets() -> None:
    values = label_values()
    for what, exprs in (("alerts", alert_exprs()), ("dashboard", dashboard_exprs())):
        assert {e: unknown_values(e, values) for e in exprs if unknown_values(e, values)} == {}, what


def test_the_metrics_table_of_docs_service_md_is_what_trapd_exports(exported: set[str]) -> None:
    """Every trapd_ metric a running trapd exports has a row in docs/service.md, and every row is exported."""
    doc = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(trapd_[a-z0-9_]+)` \|", doc, re.M))
    samples = ("_created", "_bucket", "_count", "_sum")
    # A histogram's row names its family, which is no series.
    histograms = {n.removesuffix("_bucket") for n in exported if n.endswith("_bucket")}
    families = {n for n in exported | histograms if n.startswith("trapd_") and not n.endswith(samples)}
    assert rows - families == set(), "docs/service.md lists metrics trapd does not export"
    assert families - rows == set(), "trapd exports metrics docs/service.md does not list"


@pytest.mark.parametrize(
    "family",
    [
        "trapd_notifications_received_total",  # traps by version and source group
        "trapd_notifications_dropped_total",  # drops by reason
        "trapd_socket_drops_total",
        "trapd_rule_matches_total",  # matches by rule
        "trapd_actions_rejected_total",  # rejections by rule and reason
        "trapd_actions_total",  # actions by outcome and plugin
        "trapd_journal_entries",  # journal backlog by state
        "trapd_kea_endpoint_up",  # Kea endpoints
        "trapd_kea_breaker_state",  # ... and their circuit breakers
        "trapd_reloads_total",  # reloads
        "trapd_config_last_reload_successful",
        "trapd_journal_available",  # a journal that cannot commit (full disk, damage): /healthz 503
        "trapd_workers_up",  # service.workers: workers up, and restarts systemd does not see
        "trapd_worker_restarts_total",
        # The pair on a shared journal: what its alerts say, and its takeovers.
        "trapd_pair_rules_differ",
        "trapd_pair_kea_differences",
        "trapd_journal_instance_conflict",
        "trapd_journal_taken_over_total",
        # The journal's health beyond "can it commit".
        "trapd_journal_wal_bytes",
        "trapd_journal_integrity_checks_total",
        "trapd_journal_unreadable_rows_total",
        "trapd_actions_blocked_loop_total",  # a plugin blocking the event loop
        "trapd_index_undecodable_total",  # index objects a rule could not decode
    ],
)
def test_the_dashboard_shows(family: str) -> None:
    assert family in used(dashboard_exprs())


def test_the_dashboard_imports_with_a_datasource_choice() -> None:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        for t in p.get("targets", ()):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_action_outcomes_in_the_alerts_dashboard_and_docs_are_the_dispatchers() -> None:
    """``outcome`` values an alert or a panel selects are ones the dispatcher counts (a typo, or
    ``failed`` for ``retry``, selects nothing and the alert never fires), and docs/service.md's
    row for trapd_actions_total lists every one of them."""
    from typing import get_args

    from trapd.dispatch.stats import Outcome

    outcomes = set(get_args(Outcome))
    selected = {
        value
        for expr in alert_exprs() + dashboard_exprs()
        for values in re.findall(r'\boutcome\s*=~?\s*"([^"]*)"', expr)
        for value in values.split("|")
    }
    assert selected, "the alerts select no outcome: this test checks nothing"
    assert selected - outcomes == set()
    doc = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    (row,) = re.findall(r"^\| `trapd_actions_total` \|.*$", doc, re.M)
    assert {o for o in outcomes if f"`{o}`" not in row} == set(), row


def alert_tests() -> tuple[set[str], set[str]]:
    """The alerts trapd-alerts.test.yml sees firing, and those it sees not firing."""
    doc = yaml.safe_load(ALERTS.with_name("trapd-alerts.test.yml").read_text())
    cases = [case for test in doc["tests"] for case in test.get("alert_rule_test", ())]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    return firing, {c["alertname"] for c in cases if not c["exp_alerts"]}


def test_every_alert_has_a_promtool_test_firing_and_not_firing() -> None:
    """An alert whose expression selects nothing (a label value trapd never sets, a threshold the
    wrong way round) passes promtool check: only a test that sees it fire says so."""
    doc = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    firing, quiet = alert_tests()
    assert {"never seen firing": sorted(alerts - firing), "never seen quiet": sorted(alerts - quiet)} == {
        "never seen firing": [],
        "never seen quiet": [],
    }


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        # The pair on a shared journal: each says what /healthz says, for an operator to act on.
        ("TrapdPairRulesDiffer", "trapd_pair_rules_differ"),
        ("TrapdPairKeaDiffers", "trapd_pair_kea_differences"),
        ("TrapdJournalInstanceConflict", "trapd_journal_instance_conflict"),
        # The Kea HA pair: a peer in terminated serves without lease updates to its partner until
        # an operator restarts HA (docs/kea-ha.md).
        ("TrapdKeaHaTerminated", "trapd_kea_ha_state"),
    ],
)
def test_an_alert_the_pair_needs_is_shipped_and_tested(alert: str, metric: str) -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert metric in used([rule["expr"]])
    firing, quiet = alert_tests()
    assert alert in firing, "no promtool test sees it fire"
    assert alert in quiet, "no promtool test sees it not fire"


def _panel_expr(title: str) -> str:
    doc = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in doc["panels"] if p.get("title") == title]
    (target,) = panel["targets"]
    # What Grafana sends for the dashboard's variables: every instance, a 5 minute rate window.
    return str(target["expr"]).replace("$instance", ".*").replace("$__rate_interval", "5m")


@pytest.mark.parametrize(
    ("title", "metric", "labels"),
    [
        (
            "Rejections, by rule and reason",
            "trapd_actions_rejected_total",
            '{rule="port-down",reason="parameter"}',
        ),
        (
            "Actions that blocked the event loop, by plugin",
            "trapd_actions_blocked_loop_total",
            '{plugin="site.slow"}',
        ),
    ],
)
def test_a_panel_shows_a_series_first_count(tmp_path: Path, title: str, metric: str, labels: str) -> None:
    """trapd makes a (rule, reason) or plugin series at its first count, at 1: increase() alone shows
    0 there, so a rule that rejected one action was never seen on the dashboard (promtool evaluates
    the panel's query over series as trapd exports them)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh --test installs Debian's prometheus package"
    series = metric + '{job="trapd",instance="dhcp1:9163",' + labels[1:]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": "_ _ _ 1x10 2x10"}],
                "promql_expr_test": [
                    {"expr": _panel_expr(title), "eval_time": t, "exp_samples": exp}
                    for t, exp in (
                        ("2m", []),
                        ("4m", [{"labels": labels, "value": 1}]),
                        ("12m", []),
                        ("14m", [{"labels": labels, "value": 1}]),
                    )
                ],
            }
        ],
    }
    path = tmp_path / "panel.test.yml"
    path.write_text(yaml.safe_dump(test))
    r = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
