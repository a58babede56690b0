"""The shipped Grafana provisioning and dashboards, as docker-compose.yml mounts them: their files, panels,
queries, and the metric names and variables a query uses. Read by the dashboard lint (tests/repo) and the e2e
stack, which runs every dashboard query against a real Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROVISIONING_IN_CONTAINER = "/etc/grafana/provisioning"


# Names exported by the app, with their types where the suffixes depend on them. Gauges and counters are listed
# as exposed (counters with their _total). The end-to-end test checks the dashboards against a live scrape of the
# demo; this list keeps the lint fast and runnable without the app.
EXPORTED_METRICS: dict[str, str] = {
    # drift (custom collector)
    "model_feature_drift_score": "gauge",
    "model_feature_drift_threshold": "gauge",
    "model_feature_drift_detected": "gauge",
    "model_dataset_drift_share": "gauge",
    "model_dataset_drift_share_threshold": "gauge",
    "model_dataset_drifted_features": "gauge",
    "model_dataset_drift_detected": "gauge",
    "model_prediction_drift_score": "gauge",
    "model_prediction_drift_threshold": "gauge",
    "model_prediction_drift_detected": "gauge",
    "model_multivariate_drift_score": "gauge",
    "model_multivariate_drift_threshold": "gauge",
    "model_segment_feature_drift_score": "gauge",
    "model_segment_feature_drift_threshold": "gauge",
    "model_segment_feature_drift_detected": "gauge",
    "model_segment_window_rows": "gauge",
    "model_segment_feature_quantile": "gauge",
    "model_segment_feature_category_share": "gauge",
    "model_feature_quantile": "gauge",
    "model_feature_category_share": "gauge",
    "model_feature_importance": "gauge",
    "model_segment_quality": "gauge",
    "model_segment_quality_reference": "gauge",
    "model_segment_quality_estimated": "gauge",
    "model_segment_quality_estimated_lower": "gauge",
    "model_segment_quality_estimated_upper": "gauge",
    "model_multivariate_drift_detected": "gauge",
    "model_feature_missing_share": "gauge",
    "model_feature_unseen_share": "gauge",
    "model_feature_drift_error": "gauge",
    "model_drift_window_rows": "gauge",
    # drift job
    "model_drift_job_last_success_timestamp_seconds": "gauge",
    "model_drift_job_duration_seconds": "gauge",
    "model_drift_job_interval_seconds": "gauge",
    "model_drift_job_runs_total": "counter",
    "model_drift_job_failures_total": "counter",
    # serving and prediction log
    "model_predictions_total": "counter",
    "model_prediction_log_written_total": "counter",
    "model_prediction_log_dropped_total": "counter",
    "model_log_records_total": "counter",
    "model_log_events_total": "counter",
    "model_prediction_log_pruned_total": "counter",
    "model_prediction_log_queue_rows": "gauge",
    "model_info": "gauge",
    # quality
    "model_quality": "gauge",
    "model_quality_reference": "gauge",
    "model_quality_estimated": "gauge",
    "model_quality_estimated_lower": "gauge",
    "model_quality_estimated_upper": "gauge",
    "model_quality_estimation_error": "gauge",
    "model_quality_estimation_shift_auc": "gauge",
    "model_quality_estimation_adapted": "gauge",
    "model_quality_window_rows": "gauge",
    "model_feedback_total": "counter",
    "model_feedback_dropped_total": "counter",
    "model_prediction_errors_total": "counter",
    # model calls (batching)
    "model_batch_rows": "histogram",
    "model_inference_duration_seconds": "histogram",
    # prometheus_client ProcessCollector
    "process_start_time_seconds": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    # prometheus-fastapi-instrumentator defaults
    "http_requests_total": "counter",
    "http_request_duration_seconds": "histogram",
    "http_request_duration_highr_seconds": "histogram",
    "http_request_size_bytes": "summary",
    "http_response_size_bytes": "summary",
}


_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def known_metric_names() -> set[str]:
    """Every series name a dashboard may query: exported gauges/counters plus histogram and summary series."""
    names: set[str] = set()
    for name, kind in EXPORTED_METRICS.items():
        if kind in _SUFFIXES:
            names.update(name + suffix for suffix in _SUFFIXES[kind])
        else:
            names.add(name)
    return names


_TOKEN_RE = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)


# Keywords and aggregation operators: never metric names, whether or not a '(' follows.
_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
        "offset", "atan2", "inf", "nan",
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
        "quantile", "limitk", "limit_ratio",
    }
)


# Keywords whose parenthesised list holds label names.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [
        (m.lastgroup or "other", m.group())
        for m in _TOKEN_RE.finditer(expr)
        if m.lastgroup != "space"
    ]


def metric_names_in_expr(expr: str) -> set[str]:
    """Metric names an expression selects.

    An identifier is a metric name unless it is a function (followed by '('), a keyword or aggregation operator,
    a label name (inside {...} or in the list after by/without/on/ignoring/group_left/group_right), or part of a
    string, a range/subquery selector [...] or a Grafana variable ($var, ${var}, [[var]]).
    """
    tokens = _tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "open" and text in "{[":
            # Label matchers or a range: skip to the matching close; strings were tokenised whole.
            closer = "}" if text == "{" else "]"
            while i < len(tokens) and tokens[i][1] != closer:
                i += 1
        elif kind == "ident":
            nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            lowered = text.lower()
            if lowered in _LABEL_LIST_KEYWORDS and nxt == "(":
                i += 1
                while i < len(tokens) and tokens[i][1] != ")":
                    i += 1
            elif lowered in _KEYWORDS or nxt == "(":
                pass
            else:
                names.add(text)
        i += 1
    return names


def unknown_metric_names(expr: str, known: set[str]) -> set[str]:
    return metric_names_in_expr(expr) - known


def grafana_mounts() -> dict[str, Path]:
    """Container path -> host path for the grafana service's bind mounts in docker-compose.yml."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts: dict[str, Path] = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target.rstrip("/")] = (ROOT / source).resolve()
    return mounts


def provisioning_dir() -> Path:
    return grafana_mounts()[PROVISIONING_IN_CONTAINER]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def datasource_uid() -> str:
    """The uid of the provisioned Prometheus datasource: the one every dashboard must reference."""
    path = provisioning_dir() / "datasources" / "prometheus.yml"
    sources = [s for s in load_yaml(path)["datasources"] if s["type"] == "prometheus"]
    assert len(sources) == 1, f"expected one Prometheus datasource in {path}"
    return str(sources[0]["uid"])


def provider_paths() -> list[str]:
    path = provisioning_dir() / "dashboards" / "dashboards.yml"
    return [p["options"]["path"].rstrip("/") for p in load_yaml(path)["providers"]]


def dashboards_dir() -> Path:
    """Host directory compose mounts where the dashboard provider reads."""
    mounts = grafana_mounts()
    (provider_path,) = provider_paths()
    return mounts[provider_path]


def dashboard_files() -> list[Path]:
    return sorted(dashboards_dir().glob("*.json"))


def load_dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in dashboard_files()}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def iter_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable of a dashboard."""
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('id')} {panel.get('title')!r} ref {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else query
            if text:
                yield f"variable {variable['name']}", text


def iter_dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, where, expr) over every dashboard compose ships; also used by the end-to-end test."""
    for dashboard in load_dashboards().values():
        for where, expr in iter_queries(dashboard):
            yield dashboard["uid"], where, expr


_LABEL_VALUES_RE = re.compile(r"^\s*label_values\((?:(?P<selector>.+),)?\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def promql_of(expr: str) -> str:
    """The PromQL inside a Grafana variable query such as label_values(metric{...}, label)."""
    match = _LABEL_VALUES_RE.match(expr)
    if match:
        return match.group("selector") or ""
    return expr


# Grafana's own variables (https://grafana.com/docs/grafana/latest/dashboards/variables/add-template-variables/).
GRAFANA_BUILTIN_VARIABLES = frozenset(
    {
        "__rate_interval", "__rate_interval_ms", "__interval", "__interval_ms", "__range", "__range_s",
        "__range_ms", "__from", "__to", "__name", "__dashboard", "__org", "__user", "__timeFilter",
        "__all", "timeFilter",
    }
)


VARIABLE_RE = re.compile(r"\$\{([A-Za-z0-9_]+)(?:[:.][^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]")


def variables_used(text: str) -> set[str]:
    # "$1" style regex back-references (label_replace) are not variables.
    return {
        name for groups in VARIABLE_RE.findall(text) for name in groups if name and not name.isdigit()
    }


DASHBOARDS = load_dashboards() if COMPOSE_FILE.exists() else {}


DASHBOARD_IDS = [path.name for path in DASHBOARDS]

