"""Lint the Grafana provisioning and dashboards that docker-compose.yml mounts into Grafana.

Grafana cannot be installed on these machines, so these checks stand in for "Grafana loads it": the files are
found through the grafana service's mounts in docker-compose.yml (the same files compose ships), every panel
points at the provisioned datasource, every template variable a query uses is defined, and every metric name a
query references is one the exporter exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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


# ---------------------------------------------------------------------------------------------------------------
# PromQL tokenizer: which identifiers in an expression are metric names
# ---------------------------------------------------------------------------------------------------------------

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


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (handler) (rate(http_requests_total{job="exporter", status="5xx"}[$__rate_interval]))',
         {"http_requests_total"}),
        ("histogram_quantile(0.95, sum by (le) "
         '(rate(http_request_duration_seconds_bucket{handler="/predict"}[5m])))',
         {"http_request_duration_seconds_bucket"}),
        ("(time() - model_drift_job_last_success_timestamp_seconds) "
         "and (model_drift_job_last_success_timestamp_seconds > 0)",
         {"model_drift_job_last_success_timestamp_seconds"}),
        ("model_quality - on (metric) group_left model_quality_reference",
         {"model_quality", "model_quality_reference"}),
        ("max without (instance, job) (model_feature_drift_score) / ignoring(stat_test) group_left(feature_type) "
         "model_feature_drift_threshold",
         {"model_feature_drift_score", "model_feature_drift_threshold"}),
        ('model_feature_drift_score{feature=~"$feature", stat_test!="by"} offset 1h', {"model_feature_drift_score"}),
        ('label_replace(model_info, "dst", "$1 and more", "version", "(.*)")', {"model_info"}),
        ("SUM BY (le) (rate(http_request_duration_seconds_bucket[${__rate_interval}]))",
         {"http_request_duration_seconds_bucket"}),
        ("2 * model_drift_job_interval_seconds > bool 1e3", {"model_drift_job_interval_seconds"}),
        ("max_over_time(model_dataset_drift_share[1h:5m])", {"model_dataset_drift_share"}),
        ("vector(1) + scalar(count(up))", {"up"}),
    ],
)
def test_metric_names_in_expr(expr: str, expected: set[str]) -> None:
    assert metric_names_in_expr(expr) == expected


def test_misspelt_metric_is_caught() -> None:
    known = known_metric_names()
    good = "sum(rate(model_predictions_total[$__rate_interval]))"
    misspelt = "sum(rate(model_prediction_total[$__rate_interval])) / sum(rate(http_request_total[5m]))"
    assert unknown_metric_names(good, known) == set()
    assert unknown_metric_names(misspelt, known) == {"model_prediction_total", "http_request_total"}


def test_known_names_include_histogram_series_not_the_bare_family() -> None:
    known = known_metric_names()
    assert {"http_request_duration_seconds_bucket", "http_request_duration_seconds_count"} <= known
    assert "http_request_duration_seconds" not in known
    assert "model_dataset_drift_share_threshold" in known


# ---------------------------------------------------------------------------------------------------------------
# Where compose mounts things, and what is mounted
# ---------------------------------------------------------------------------------------------------------------


def _grafana_mounts() -> dict[str, Path]:
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
    return _grafana_mounts()[PROVISIONING_IN_CONTAINER]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def datasource_uid() -> str:
    """The uid of the provisioned Prometheus datasource: the one every dashboard must reference."""
    path = provisioning_dir() / "datasources" / "prometheus.yml"
    sources = [s for s in _load_yaml(path)["datasources"] if s["type"] == "prometheus"]
    assert len(sources) == 1, f"expected one Prometheus datasource in {path}"
    return str(sources[0]["uid"])


def _provider_paths() -> list[str]:
    path = provisioning_dir() / "dashboards" / "dashboards.yml"
    return [p["options"]["path"].rstrip("/") for p in _load_yaml(path)["providers"]]


def dashboards_dir() -> Path:
    """Host directory compose mounts where the dashboard provider reads."""
    mounts = _grafana_mounts()
    (provider_path,) = _provider_paths()
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
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z0-9_]+)(?:[:.][^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]")


def variables_used(text: str) -> set[str]:
    # "$1" style regex back-references (label_replace) are not variables.
    return {
        name for groups in _VARIABLE_RE.findall(text) for name in groups if name and not name.isdigit()
    }


DASHBOARDS = load_dashboards() if COMPOSE_FILE.exists() else {}
DASHBOARD_IDS = [path.name for path in DASHBOARDS]


def _dash(name: str) -> dict[str, Any]:
    return next(d for p, d in DASHBOARDS.items() if p.name == name)


# ---------------------------------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------------------------------


def test_provisioning_mounts_exist() -> None:
    mounts = _grafana_mounts()
    assert PROVISIONING_IN_CONTAINER in mounts
    for target, host in mounts.items():
        assert host.exists(), f"compose mounts missing {host} at {target}"
        assert ROOT in host.parents, f"{host} is outside the repository"


def test_datasource_provisioning() -> None:
    (source,) = _load_yaml(provisioning_dir() / "datasources" / "prometheus.yml")["datasources"]
    assert source["uid"] == datasource_uid()
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    assert source["editable"] is False


def test_dashboard_provider_path_is_the_compose_mount() -> None:
    providers = _load_yaml(provisioning_dir() / "dashboards" / "dashboards.yml")["providers"]
    assert len(providers) == 1
    assert providers[0]["type"] == "file"
    assert providers[0]["folder"] == "Model monitoring"
    (provider_path,) = _provider_paths()
    mounts = _grafana_mounts()
    assert provider_path in mounts, f"provider reads {provider_path}, which compose does not mount"
    assert mounts[provider_path] == (ROOT / "grafana" / "dashboards").resolve()


def test_expected_dashboards_are_shipped() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert {"model-drift-overview", "model-feature-drilldown", "model-service", "model-quality"} <= uids


# ---------------------------------------------------------------------------------------------------------------
# Dashboards
# ---------------------------------------------------------------------------------------------------------------


def test_dashboard_uids_are_fixed_unique_and_short() -> None:
    uids = [d.get("uid") for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids)), f"duplicate uids: {uids}"
    for path, dashboard in DASHBOARDS.items():
        uid = dashboard.get("uid")
        assert isinstance(uid, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid), f"{path.name}: bad uid {uid!r}"
        assert path.stem == uid, f"{path.name}: file name should be the uid"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_dashboard_header(name: str) -> None:
    dashboard = _dash(name)
    assert "id" in dashboard and dashboard["id"] is None
    assert 39 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"]
    assert dashboard["tags"] and "model-monitoring" in dashboard["tags"]
    assert dashboard["refresh"] == "30s"
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_panel_ids_unique_and_layout_sane(name: str) -> None:
    panels = list(iter_panels(_dash(name)["panels"]))
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel.get("title"), f"panel {panel['id']} has no title"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_every_panel_and_target_uses_the_provisioned_datasource(name: str) -> None:
    expected = {"type": "prometheus", "uid": datasource_uid()}
    dashboard = _dash(name)
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == expected, f"panel {panel['title']!r}"
        assert panel.get("targets"), f"panel {panel['title']!r} has no queries"
        for target in panel["targets"]:
            assert target.get("datasource") == expected, f"panel {panel['title']!r} target {target.get('refId')}"
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            assert variable.get("datasource") == expected, f"variable {variable['name']}"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_panels_have_units(name: str) -> None:
    for panel in iter_panels(_dash(name)["panels"]):
        if panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline"}:
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit, f"panel {panel['title']!r} has no unit"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_ref_ids_unique_per_panel(name: str) -> None:
    for panel in iter_panels(_dash(name)["panels"]):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r}: {refs}"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_every_variable_used_is_defined(name: str) -> None:
    dashboard = _dash(name)
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    used: dict[str, str] = {}
    for where, expr in iter_queries(dashboard):
        used.update(dict.fromkeys(variables_used(expr), where))
    for panel in iter_panels(dashboard["panels"]):
        for text in [panel.get("title", ""), panel.get("repeat", "") and "$" + panel["repeat"]]:
            used.update(dict.fromkeys(variables_used(text), f"panel {panel['title']!r}"))
        for target in panel.get("targets", []):
            used.update(dict.fromkeys(variables_used(target.get("legendFormat", "")), f"panel {panel['title']!r}"))
    undefined = {name: where for name, where in used.items() if name not in defined | GRAFANA_BUILTIN_VARIABLES}
    assert not undefined, f"undefined variables: {undefined}"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_every_metric_name_is_exported(name: str) -> None:
    known = known_metric_names()
    unknown = {
        where: sorted(missing)
        for where, expr in iter_queries(_dash(name))
        if (missing := unknown_metric_names(promql_of(expr), known))
    }
    assert not unknown, f"queries reference names the exporter does not export: {unknown}"


_RANGE_FUNCTION_RE = re.compile(r"\b(?:rate|irate|increase|delta|idelta|deriv)\s*\(")


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_rates_use_rate_interval(name: str) -> None:
    for where, expr in iter_queries(_dash(name)):
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        if _RANGE_FUNCTION_RE.search(expr):
            assert ranges and all(r == "$__rate_interval" for r in ranges), f"{where}: {expr}"


def test_feature_variable_lists_monitored_features() -> None:
    (dashboard,) = [d for d in DASHBOARDS.values() if d["uid"] == "model-feature-drilldown"]
    (feature,) = [v for v in dashboard["templating"]["list"] if v["name"] == "feature"]
    assert feature["type"] == "query"
    assert feature["query"]["query"] == "label_values(model_feature_drift_score, feature)"


def _substitute_variables(expr: str) -> str:
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "6h", "feature": ".*", "handler": "/predict"}
    return _VARIABLE_RE.sub(lambda m: values.get(next(g for g in m.groups() if g), "x"), expr)


def test_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Every query is valid PromQL (variables substituted), checked by promtool's rule parser."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed")
        pytest.skip("promtool is not installed")
    rules = [
        {"record": f"lint:query_{i}", "expr": _substitute_variables(promql_of(expr))}
        for i, (_, _, expr) in enumerate(iter_dashboard_queries())
        if promql_of(expr)
    ]
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
