"""Lint the Grafana provisioning and dashboards that docker-compose.yml mounts into Grafana.

Grafana cannot be installed on these machines, so these checks stand in for "Grafana loads it": the files are
found through the grafana service's mounts in docker-compose.yml (the same files compose ships), every panel
points at the provisioned datasource, every template variable a query uses is defined, and every metric name a
query references is one the exporter exports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboards import (
    DASHBOARD_IDS,
    DASHBOARDS,
    GRAFANA_BUILTIN_VARIABLES,
    PROVISIONING_IN_CONTAINER,
    VARIABLE_RE,
    datasource_uid,
    grafana_mounts,
    iter_dashboard_queries,
    iter_panels,
    iter_queries,
    known_metric_names,
    load_yaml,
    metric_names_in_expr,
    promql_of,
    provider_paths,
    provisioning_dir,
    unknown_metric_names,
    variables_used,
)
from tests.helpers import ROOT


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


def _dash(name: str) -> dict[str, Any]:
    return next(d for p, d in DASHBOARDS.items() if p.name == name)


def test_provisioning_mounts_exist() -> None:
    mounts = grafana_mounts()
    assert PROVISIONING_IN_CONTAINER in mounts
    for target, host in mounts.items():
        assert host.exists(), f"compose mounts missing {host} at {target}"
        assert ROOT in host.parents, f"{host} is outside the repository"


def test_datasource_provisioning() -> None:
    (source,) = load_yaml(provisioning_dir() / "datasources" / "prometheus.yml")["datasources"]
    assert source["uid"] == datasource_uid()
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    assert source["editable"] is False


def test_dashboard_provider_path_is_the_compose_mount() -> None:
    providers = load_yaml(provisioning_dir() / "dashboards" / "dashboards.yml")["providers"]
    assert len(providers) == 1
    assert providers[0]["type"] == "file"
    assert providers[0]["folder"] == "Model monitoring"
    (provider_path,) = provider_paths()
    mounts = grafana_mounts()
    assert provider_path in mounts, f"provider reads {provider_path}, which compose does not mount"
    assert mounts[provider_path] == (ROOT / "grafana" / "dashboards").resolve()


def test_expected_dashboards_are_shipped() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert {"model-drift-overview", "model-feature-drilldown", "model-service", "model-quality"} <= uids


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
    return VARIABLE_RE.sub(lambda m: values.get(next(g for g in m.groups() if g), "x"), expr)


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

