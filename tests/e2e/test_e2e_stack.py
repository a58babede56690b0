"""The whole monitoring stack, natively: app -> Prometheus (shipped rules) -> Alertmanager (shipped routing) -> webhook.

One stack per module (see tests/e2e_stack.py): the demo app under ``exporter serve`` with a drift run every
second over the last 666 predictions (two passes over the 333 reference rows), real Prometheus and Alertmanager
(Debian packages ``prometheus`` and ``prometheus-alertmanager``; missing binaries fail, never skip) reading the
shipped files with only hosts and intervals rewritten, and a webhook sink recording what Alertmanager delivers.

The tests run in file order and build on each other's traffic:
  a. stationary traffic: no drift alert pending, firing or delivered;
  b. shifted bill length: ModelFeatureDrift{feature="bill_length_mm"} delivered, no other feature alerted;
  c. every Grafana panel query has data in that Prometheus; every metric name they use is exported live.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.dashboards import VARIABLE_RE, iter_dashboard_queries, metric_names_in_expr, promql_of
from tests.e2e.stack import (
    ALERTMANAGER_YML,
    DRIFT_ALERTS,
    PROMETHEUS_YML,
    RULE_FILES,
    Stack,
    alertmanager_text,
    check_only_intervals_and_hosts_changed,
    drift_run_after_rows_written,
    duration_seconds,
    prometheus_text,
    rules_text,
    running_stack,
    send,
    send_feedback,
)
from tests.helpers import config_folder, parse_metrics, sample, wait_until

pytestmark = pytest.mark.e2e

WINDOW = 666  # two full passes over the 333 reference rows: stationary traffic is the reference distribution
FEATURES = NUMERICAL + CATEGORICAL
SHIFTED = "bill_length_mm"  # the feature Traffic("shift") moves


def _longest_for(names: tuple[str, ...]) -> float:
    """The longest (scaled) ``for:`` of the named alerts in the rule files the stack runs."""
    longest = 0.0
    for path in RULE_FILES:
        for group in yaml.safe_load(rules_text(path))["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in names:
                    longest = max(longest, duration_seconds(rule.get("for", "0s")))
    return longest


DRIFT_FOR_SECONDS = _longest_for(DRIFT_ALERTS)


@pytest.fixture(scope="module")
def stack(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e-stack")
    # `exporter serve` as shipped (drift in its worker process, on its scheduler), without what no test here reads:
    # the HTML report (rebuilt every second, it would keep a core busy) and the reference rule's refits. Shift
    # adaptation on (off by default for a classifier): the quality dashboard's panel of its gauges gets data.
    config = config_folder(
        demo_dir, workdir / "app", database_url="sqlite:///predictions.db",
        drift={"window_size": WINDOW, "min_rows": 100, "interval_seconds": 1, "report": False,
               # segments by island: the segment panels and the segment rules get data (the demo's islands hold
               # 60-170 reference rows, so the minimum is lowered from 200)
               "segments": ["island"], "segment_min_rows": 20},
        reference={"check_held_out": False, "shift_adaptation": "on"},
    )
    with running_stack(config, workdir) as running:
        yield running


# ---------------------------------------------------------------------------------------------------------------
# Without processes: the stack runs the shipped files, rewritten only where a test machine must differ
# ---------------------------------------------------------------------------------------------------------------


def test_stack_configs_differ_from_the_shipped_files_only_in_hosts_and_intervals() -> None:
    for path in RULE_FILES:
        changes = check_only_intervals_and_hosts_changed(path.read_text(), rules_text(path), path.name)
        assert changes and all(b.strip().startswith("for:") for _, b in changes), path.name
    changes = check_only_intervals_and_hosts_changed(
        PROMETHEUS_YML.read_text(), prometheus_text(["127.0.0.1:1"], "127.0.0.1:2", "127.0.0.1:3"), "prometheus.yml"
    )
    assert len(changes) >= 6, changes  # 2 intervals + app, alertmanager (x2), self targets
    changes = check_only_intervals_and_hosts_changed(
        ALERTMANAGER_YML.read_text(), alertmanager_text("http://127.0.0.1:1/alerts"), "alertmanager.yml"
    )
    assert any("127.0.0.1:1/alerts" in b for _, b in changes)
    # The drift alerts still need the flag held over consecutive drift runs (one per second here), not one run.
    assert _longest_for(("ModelFeatureDrift",)) >= 2


# ---------------------------------------------------------------------------------------------------------------
# The live stack
# ---------------------------------------------------------------------------------------------------------------


def _drift_alerts_in_prometheus(stack: Stack) -> list[dict[str, Any]]:
    return stack.prometheus.alerts(*DRIFT_ALERTS)


def _describe(alerts: list[dict[str, Any]]) -> list[str]:
    return sorted(
        f"{a['labels']['alertname']}{{feature={a['labels'].get('feature', '')}}} {a.get('state') or a.get('status')}"
        for a in alerts
    )


def _send(stack: Stack, scenario: str, seed: int, rows: int) -> list[tuple[str, str]]:
    traffic = stack.traffic.setdefault(scenario, Traffic(scenario, seed=seed))
    answered = send(stack.app, traffic, rows)
    stack.sent += len(answered)
    return answered


def test_a_stationary_traffic_raises_no_drift_alert(stack: Stack) -> None:
    _send(stack, "none", seed=21, rows=WINDOW)
    metrics = drift_run_after_rows_written(stack.app, stack.sent)
    assert sample(metrics, "model_drift_window_rows") == WINDOW
    assert {f: sample(metrics, "model_feature_drift_detected", feature=f) for f in FEATURES} == dict.fromkeys(
        FEATURES, 0.0
    )

    prom = stack.prometheus
    # Prometheus has scraped a run over the full stationary window: six features, none drifted.
    wait_until(
        lambda: prom.query(f"model_drift_window_rows == {WINDOW}")
        and len(prom.query("model_feature_drift_detected == 0")) == len(FEATURES)
        and prom.query("model_dataset_drift_detected == 0")
        and prom.query("model_prediction_drift_detected == 0"),
        30, "Prometheus did not scrape a drift run over the stationary window", stack.logs,
    )
    # Several evaluations: more than any drift alert's `for:` lasts (one to turn pending, `for:` to fire, one to
    # spare), so a held flag would have fired by now. None fires meanwhile.
    iterations = 'sum(prometheus_rule_group_iterations_total{rule_group=~".*;model-drift"})'

    def evaluated() -> float:
        (series,) = prom.query(iterations)
        return float(series["value"][1])

    start = evaluated()

    def held_long_enough() -> bool:
        firing = [a for a in _drift_alerts_in_prometheus(stack) if a["state"] == "firing"]
        assert not firing, f"drift alert firing on stationary traffic: {_describe(firing)}\n{stack.logs()}"
        return evaluated() - start >= DRIFT_FOR_SECONDS + 2

    wait_until(held_long_enough, DRIFT_FOR_SECONDS + 30, "drift rule evaluations", stack.logs, interval=0.5)
    assert _drift_alerts_in_prometheus(stack) == [], _describe(_drift_alerts_in_prometheus(stack))
    health = {r["name"]: r["health"] for g in prom.api("rules", type="alert")["groups"] for r in g["rules"]}
    assert {name: health.get(name) for name in DRIFT_ALERTS} == dict.fromkeys(DRIFT_ALERTS, "ok"), health
    assert stack.sink.alerts(*DRIFT_ALERTS) == [], _describe(stack.sink.alerts(*DRIFT_ALERTS))


def test_b_shifted_feature_alert_reaches_the_webhook(stack: Stack) -> None:
    _send(stack, "shift", seed=22, rows=WINDOW)
    metrics = drift_run_after_rows_written(stack.app, stack.sent)
    flags = {f: sample(metrics, "model_feature_drift_detected", feature=f) for f in FEATURES}
    assert flags == {f: float(f == SHIFTED) for f in FEATURES}

    def delivered() -> list[dict[str, Any]]:
        return [
            a for a in stack.sink.alerts("ModelFeatureDrift")
            if a["status"] == "firing" and a["labels"].get("feature") == SHIFTED
        ]

    (alert, *_) = wait_until(
        delivered, DRIFT_FOR_SECONDS + 45, f"ModelFeatureDrift{{feature={SHIFTED}}} never reached the webhook",
        stack.logs,
    )
    others = {a["labels"].get("feature") for a in stack.sink.alerts("ModelFeatureDrift")} - {SHIFTED}
    assert not others, f"ModelFeatureDrift delivered for features that did not move: {sorted(others)}"
    others = {a["labels"].get("feature") for a in stack.prometheus.alerts("ModelFeatureDrift")} - {SHIFTED}
    assert not others, f"ModelFeatureDrift pending/firing for features that did not move: {sorted(others)}"

    # What the receiver gets is what the rule and routing promise: labels, and annotations rendered from live data.
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["job"] == "exporter"
    # absolute, so that it opens from the receiver: the published runbook page and the alert's anchor
    assert alert["annotations"]["runbook_url"] == (
        "https://model-drift-exporter.github.io/model-drift-exporter/alerts/#modelfeaturedrift"
    )
    description = alert["annotations"]["description"]
    assert SHIFTED in description
    assert re.search(r"\(\w+ score [-+0-9.e]+,\s+threshold [-+0-9.e]+\)", description), description
    payload = next(p for p in stack.sink.payloads if alert in p.get("alerts", []))
    assert payload["path"] == "/alerts"
    assert payload["receiver"] == "webhook"
    assert payload["groupLabels"] == {"alertname": "ModelFeatureDrift", "feature": SHIFTED}


# Queries that cannot have data in this stack, with the reason. Keyed by (dashboard uid, panel title, refId).
NO_DATA_EXPECTED = {
    ("model-quality", f"{metric}: realized, estimated, reference", ref): "mae/rmse exist only for regression; the "
    "demo classifies"
    for metric in ("mae", "rmse") for ref in "ABCDE"
}
# The feature picker is multi-valued (Grafana sends a regex): a number and a category, so that the quantile and the
# category-share panels both have data.
VARIABLES = {"feature": f"({SHIFTED}|island)", "segment_by": "island", "segment": "Biscoe",
             "handler": "/predict", "__rate_interval": "1m", "__interval": "15s", "__range": "6h"}
# Series Prometheus makes for every scrape target (not in any /metrics page).
SCRAPE_SERIES = {
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}


def _substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        assert name in VARIABLES, f"no test value for dashboard variable ${name} in {expr!r}"
        return VARIABLES[name]

    return VARIABLE_RE.sub(value, expr)


def _key(uid: str, where: str) -> tuple[str, str, str] | None:
    match = re.fullmatch(r"panel \d+ '(?P<title>.*)' ref (?P<ref>\w+)", where)
    return (uid, match["title"], match["ref"]) if match else None


@pytest.fixture(scope="module")
def labelled_traffic(stack: Stack) -> None:
    """Recent traffic with labels, so every panel can have data: drift, quality, /predict latency, feedback."""
    labelled = _send(stack, "none", seed=21, rows=150)
    send_feedback(stack.app, labelled)
    stack.app.wait_for(
        lambda m: (sample(m, "model_quality_window_rows") or 0) >= len(labelled)
        and sample(m, "model_quality", metric="roc_auc") is not None
        and sample(m, "model_drift_window_rows") == min(stack.sent, WINDOW)
    )


@pytest.mark.usefixtures("labelled_traffic")
def test_c_every_dashboard_query_has_data(stack: Stack) -> None:
    queries = [(uid, where, expr, _substitute(promql_of(expr))) for uid, where, expr in iter_dashboard_queries()]
    assert queries
    known_keys = {_key(uid, where) for uid, where, _, _ in queries}
    assert set(NO_DATA_EXPECTED) <= known_keys, f"stale exceptions: {set(NO_DATA_EXPECTED) - known_keys}"

    def empty() -> list[str]:
        return [
            f"{uid} / {where}: {query}"
            for uid, where, _, query in queries
            if _key(uid, where) not in NO_DATA_EXPECTED and not stack.prometheus.query(query)
        ]

    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = empty()
        return not missing

    try:
        wait_until(all_have_data, 60, "dashboard queries without data", interval=2)
    except AssertionError:
        pytest.fail("dashboard queries without data in the live Prometheus:\n" + "\n".join(missing))
    for uid, where, _, query in queries:
        if _key(uid, where) in NO_DATA_EXPECTED:
            assert not stack.prometheus.query(query), f"{uid} / {where} has data now: drop it from NO_DATA_EXPECTED"

    # The template variables offer the values the panels were just queried with.
    features = {s["metric"]["feature"] for s in stack.prometheus.query("model_feature_drift_score")}
    assert features == set(FEATURES)
    handlers = {
        s["metric"]["handler"] for s in stack.prometheus.query('http_request_duration_seconds_bucket{job="exporter"}')
    }
    assert {"/predict", "/predict/batch", "/feedback/batch"} <= handlers, handlers


@pytest.mark.usefixtures("labelled_traffic")
def test_c_dashboard_metric_names_are_exported_live(stack: Stack) -> None:
    """Every metric name a dashboard query references is in the app's live scrape or Prometheus' own metrics."""
    def names(url: str) -> set[str]:
        return {name for name, _ in parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)}

    app_names = names(stack.app.url)
    live = app_names | names(stack.prometheus.url) | SCRAPE_SERIES
    missing = {
        f"{uid} / {where}": sorted(unknown)
        for uid, where, expr in iter_dashboard_queries()
        if (unknown := metric_names_in_expr(promql_of(expr)) - live)
    }
    assert not missing, f"dashboard queries name metrics nothing exports: {missing}"
    # The check is not vacuous: the dashboards do read the app's drift, serving and quality series.
    used = {n for _, _, expr in iter_dashboard_queries() for n in metric_names_in_expr(promql_of(expr))}
    assert {"model_feature_drift_score", "http_request_duration_seconds_bucket", "model_quality"} <= used & app_names
