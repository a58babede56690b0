"""Checks of the Prometheus and Alertmanager files the product ships (prometheus/).

The tools themselves validate the files (promtool, amtool); these tests add what the tools let pass silently:
an alert without a runbook (or with a relative runbook_url, which opens nothing from a receiver), a promtool test
whose alert name is misspelt (its empty exp_alerts then always passes), a rule reading a metric the exporter does
not export.

promtool and amtool come from the Debian packages `prometheus` and `prometheus-alertmanager`; a missing binary
fails the test (it never skips), so a CI machine without them cannot pass by accident.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

PROM = ROOT / "prometheus"
PROMETHEUS_YML = PROM / "prometheus.yml"
ALERTMANAGER_YML = PROM / "alertmanager.yml"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
ALERTS_PAGE = ROOT / "docs" / "alerts.md"
# Where the docs are published (mkdocs.yml's site_url): every runbook_url is this runbook page + "#<alert lower>".
RUNBOOK_BASE = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["site_url"] + "alerts/"

# The metric contract (docs: ARCHITECTURE.md "Metrics"). Counters with their exposed _total suffix.
EXPORTED_METRICS = {
    "model_feature_drift_score",
    "model_feature_drift_threshold",
    "model_feature_drift_detected",
    "model_dataset_drift_share",
    "model_dataset_drift_share_threshold",
    "model_dataset_drifted_features",
    "model_dataset_drift_detected",
    "model_prediction_drift_score",
    "model_prediction_drift_threshold",
    "model_prediction_drift_detected",
    "model_multivariate_drift_score",
    "model_multivariate_drift_threshold",
    "model_segment_feature_drift_score",
    "model_segment_feature_drift_threshold",
    "model_segment_feature_drift_detected",
    "model_segment_window_rows",
    "model_segment_quality",
    "model_segment_quality_reference",
    "model_segment_quality_estimated",
    "model_segment_quality_estimated_lower",
    "model_segment_quality_estimated_upper",
    "model_multivariate_drift_detected",
    "model_feature_missing_share",
    "model_feature_unseen_share",
    "model_drift_window_rows",
    "model_drift_job_last_success_timestamp_seconds",
    "model_drift_job_duration_seconds",
    "model_drift_job_interval_seconds",
    "model_drift_job_runs_total",
    "model_drift_job_failures_total",
    "model_predictions_total",
    "model_prediction_log_written_total",
    "model_prediction_log_dropped_total",
    "model_log_records_total",
    "model_log_events_total",
    "model_prediction_log_pruned_total",
    "model_prediction_log_queue_rows",
    "model_info",
    "model_quality",
    "model_quality_reference",
    "model_quality_estimated",
    "model_quality_estimated_lower",
    "model_quality_estimated_upper",
    "model_quality_estimation_error",
    "model_quality_estimation_shift_auc",
    "model_quality_estimation_adapted",
    "model_quality_window_rows",
    "model_feedback_total",
    "model_feedback_dropped_total",
    "model_prediction_errors_total",
    "model_batch_rows_bucket",
    "model_batch_rows_sum",
    "model_batch_rows_count",
    "model_inference_duration_seconds_bucket",
    "model_inference_duration_seconds_sum",
    "model_inference_duration_seconds_count",
}
OTHER_METRICS = {  # not model_*: scrape health, ProcessCollector, prometheus-fastapi-instrumentator
    "up",
    "process_start_time_seconds",
    "http_requests_total",
    "http_request_duration_seconds_bucket",
}
SEVERITIES = {"critical", "warning"}
# Alerts on a drift run's flags must outlast one run (the job runs every 60 s by default): calibrated thresholds keep
# false flags rare whatever the `for:`, which only has to ride out one odd burst of traffic (three runs).
MIN_FOR_DRIFT_FLAGS_SECONDS = 2 * 60


# --- helpers ------------------------------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"`{name}` not found: install the Debian package `{package}` (apt-get install -y {package})")
    return path


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{output}"
    return output


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in _load(path)["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _unit_tests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, test) for path in TEST_FILES for test in (_load(path).get("tests") or [])]


def _rule_test_cases() -> list[tuple[Path, str, dict[str, Any]]]:
    return [
        (path, test.get("name", "?"), case)
        for path, test in _unit_tests()
        for case in test.get("alert_rule_test") or []
    ]


ALERTS = _alert_rules()
ALERT_NAMES = [r["alert"] for r in ALERTS]


# --- the tools ----------------------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    out = _run([_tool("promtool", "prometheus"), "check", "config", str(PROMETHEUS_YML)])
    assert f"{len(RULE_FILES)} rule files found" in out, out


def test_promtool_check_rules() -> None:
    assert RULE_FILES, "no prometheus/rules/*.yml"
    _run([_tool("promtool", "prometheus"), "check", "rules", *map(str, RULE_FILES)])


def test_promtool_test_rules() -> None:
    assert TEST_FILES, "no prometheus/tests/*.yml"
    out = _run([_tool("promtool", "prometheus"), "test", "rules", *map(str, TEST_FILES)])
    assert "FAILED" not in out, out


def test_amtool_check_config() -> None:
    out = _run([_tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER_YML)])
    assert "SUCCESS" in out, out


def test_commented_receiver_examples_are_valid(tmp_path: Path) -> None:
    """The Slack and e-mail receivers are shipped commented out; uncommented they must still be a valid config."""
    lines, out, in_block = ALERTMANAGER_YML.read_text().splitlines(), [], False
    for line in lines:
        if line.startswith("  # - name:"):
            in_block = True
        if in_block and line.startswith("  #"):
            out.append("  " + line[4:])
            continue
        in_block = in_block and bool(line.strip())
        out.append(line)
    uncommented = tmp_path / "alertmanager.yml"
    uncommented.write_text("\n".join(out) + "\n")
    receivers = {r["name"] for r in _load(uncommented)["receivers"]}
    assert {"webhook", "slack-pager", "email-tickets"} <= receivers, receivers
    _run([_tool("amtool", "prometheus-alertmanager"), "check-config", str(uncommented)])


# --- the rules ----------------------------------------------------------------------------------------------------


def test_alert_names_are_unique_and_prefixed() -> None:
    assert ALERT_NAMES, "no alert rules"
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)), ALERT_NAMES
    for name in ALERT_NAMES:
        assert re.fullmatch(r"Model(?:[A-Z][a-z0-9]+)+", name), f"{name}: CamelCase with the Model prefix"


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_rule_has_severity_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: labels.severity must be one of {SEVERITIES}"
    ann = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(ann.get(key, "")).strip(), f"{name}: annotation {key} missing"
    assert "{{" not in ann["summary"], f"{name}: summary is a static sentence"
    assert "{{" in ann["description"], f"{name}: description is templated ($labels / $value)"
    assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", f"{name}: runbook_url, absolute"


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_drift_flag_alerts_outlast_a_noisy_run(rule: dict[str, Any]) -> None:
    if "drift_detected" not in rule["expr"]:
        return
    assert _duration_seconds(rule.get("for", "0s")) >= MIN_FOR_DRIFT_FLAGS_SECONDS, rule["alert"]


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_rule_reads_only_exported_metrics(rule: dict[str, Any]) -> None:
    """A misspelt metric passes promtool (its unit tests would use the same spelling): check against the contract."""
    texts = [rule["expr"], *map(str, rule.get("annotations", {}).values())]
    names = set()
    for text in texts:
        text = re.sub(r"#[^\n]*", "", text)  # PromQL comments
        text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # label values and format strings
        text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
        names |= {
            n for n in re.findall(r"\b[a-z_][a-z0-9_]*\b", text) if n.startswith(("model_", "http_", "process_"))
        } | ({"up"} if re.search(r"\bup\b", text) else set())
    # Also the selectors inside printf "...%q..." | query templates.
    for text in texts:
        names |= set(re.findall(r'"(model_[a-z0-9_]+)\{', text))
    unknown = names - EXPORTED_METRICS - OTHER_METRICS
    assert not unknown, f"{rule['alert']} reads metrics outside the contract: {sorted(unknown)}"


# --- the unit tests of the rules ----------------------------------------------------------------------------------


def test_unit_test_files_use_the_promtool_2_42_subset() -> None:
    for path in TEST_FILES:
        doc = _load(path)
        assert "evaluation_interval" in doc, f"{path.name}: evaluation_interval"
        for rule_file in doc["rule_files"]:
            assert (path.parent / rule_file).exists(), f"{path.name}: rule file {rule_file} not found"
        for test in doc["tests"]:
            assert "interval" in test, f"{path.name}: test {test.get('name')!r} needs interval: (promtool 2.42)"
            for key in ("labels", "fuzzy_compare", "start_timestamp", "query_offset"):
                assert key not in test, f"{path.name}: {key!r} does not exist in promtool 2.42"
        assert "fuzzy_compare" not in doc, path.name
    covered = {(p.parent / f).resolve() for p in TEST_FILES for f in _load(p)["rule_files"]}
    assert {p.resolve() for p in RULE_FILES} <= covered, "a rule file is not loaded by any unit test"


def test_unit_tests_name_existing_alerts() -> None:
    """promtool passes an empty exp_alerts for an alert that does not exist: every name must be a real alert."""
    unknown = {(p.name, t, c["alertname"]) for p, t, c in _rule_test_cases() if c["alertname"] not in ALERT_NAMES}
    assert not unknown, f"unit tests name alerts that no rule defines: {sorted(unknown)}"


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_has_a_firing_and_a_not_firing_case(name: str) -> None:
    cases = [c for _, _, c in _rule_test_cases() if c["alertname"] == name]
    assert any(c.get("exp_alerts") for c in cases), f"{name}: no unit test case where it fires"
    assert any(not c.get("exp_alerts") for c in cases), f"{name}: no unit test case where it stays silent"


def test_firing_cases_check_severity_and_every_annotation() -> None:
    severity = {r["alert"]: r["labels"]["severity"] for r in ALERTS}
    for path, test, case in _rule_test_cases():
        for alert in case.get("exp_alerts") or []:
            where = f"{path.name} / {test!r} / {case['alertname']}"
            assert alert.get("exp_labels", {}).get("severity") == severity.get(case["alertname"]), where
            assert set(alert.get("exp_annotations", {})) == {"summary", "description", "runbook_url"}, where
            # promtool compares these with the rendered annotations: the tests pin the absolute URL
            assert alert["exp_annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#{case['alertname'].lower()}", where


# --- prometheus.yml and alertmanager.yml --------------------------------------------------------------------------


def test_prometheus_yml_scrapes_the_exporter_and_alerts_to_alertmanager() -> None:
    cfg = _load(PROMETHEUS_YML)
    assert cfg["global"]["scrape_interval"] == "15s"
    assert cfg["global"]["evaluation_interval"] == "15s"
    assert cfg["rule_files"] == ["rules/*.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    exporter = jobs["exporter"]
    assert exporter.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in exporter["static_configs"] for t in sc["targets"]] == ["app:8000"]
    am_targets = [t for am in cfg["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert am_targets == ["alertmanager:9093"]
    # The e2e tests rewrite these literals in the raw text.
    text = PROMETHEUS_YML.read_text()
    assert '"app:8000"' in text and '"alertmanager:9093"' in text


def test_alertmanager_routes_by_severity_to_the_webhook() -> None:
    cfg = _load(ALERTMANAGER_YML)
    route = cfg["route"]
    assert {"alertname", "feature"} <= set(route["group_by"])
    for key in ("group_wait", "group_interval", "repeat_interval"):
        _duration_seconds(route[key])
    by_matcher = {tuple(r.get("matchers", [])): r for r in route["routes"]}
    receivers = {r["name"]: r for r in cfg["receivers"]}
    for severity in sorted(SEVERITIES):
        sub = by_matcher.get((f'severity="{severity}"',))
        assert sub is not None, f"no route for severity {severity}"
        assert sub["receiver"] in receivers
    assert route["receiver"] in receivers
    urls = [w["url"] for w in receivers["webhook"]["webhook_configs"]]
    assert urls == ["http://app-webhook:5001/alerts"]
    assert ALERTMANAGER_YML.read_text().count("http://app-webhook:5001/alerts") == 1, "keep the URL one literal"


def test_inhibit_rules_name_existing_alerts() -> None:
    for rule in _load(ALERTMANAGER_YML).get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname="(\w+)"', matcher)
            assert m is None or m.group(1) in ALERT_NAMES, f"inhibit rule names an unknown alert: {matcher}"


def test_no_secrets_in_alertmanager_yml() -> None:
    text = ALERTMANAGER_YML.read_text()
    assert "hooks.slack.com" not in text
    assert not re.search(r"^\s*#?\s*(auth_password|api_url|api_key)\s*:", text, re.M), "use the *_file variants"


def test_the_alerts_page_has_a_runbook_section_per_alert() -> None:
    """runbook_url points at docs/alerts.md#<alertname lower-cased>: the heading must exist (the strict docs build,
    tests/repo/test_docs.py, also fails on the alert table's links to missing sections)."""
    assert ALERTS_PAGE.exists(), "docs/alerts.md missing (its sections are the target of every runbook_url)"
    sections = re.findall(r"^##\s+(\S+)\s*\n(.*?)(?=^##\s|\Z)", ALERTS_PAGE.read_text(), re.M | re.S)
    bodies = {name: body for name, body in sections}
    missing = [n for n in ALERT_NAMES if n not in bodies]
    assert not missing, f"docs/alerts.md lacks '## <AlertName>' runbook sections for {missing}"
    for name in ALERT_NAMES:
        assert "First check" in bodies[name], f"{name}: its runbook section says what to check first"
    extra = [n for n in bodies if re.fullmatch(r"Model[A-Z]\w+", n) and n not in ALERT_NAMES]
    assert not extra, f"docs/alerts.md has runbook sections for alerts no rule defines: {extra}"
