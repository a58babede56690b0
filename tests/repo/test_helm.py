"""The Helm chart (deploy/helm/model-drift-exporter), rendered with the real helm, offline (no cluster here).

- `helm lint --strict` and `helm template` with the defaults and with every `ci/*-values.yaml`;
- the core objects validated against the Kubernetes JSON schemas of two versions (kubernetes-validate bundles them);
- the prometheus-operator objects, which those schemas do not know, checked field by field against the Service;
- the PrometheusRule groups equal prometheus/rules/*.yml and the dashboard ConfigMaps equal grafana/dashboards/*.json;
- the container's arguments, environment and config.yaml, given to the exporter's own CLI parser and config loader;
- everything the service writes on a writable emptyDir, the root filesystem read-only;
- values the chart must refuse (several replicas without PostgreSQL, ...).

helm comes from `make test` (scripts/get-helm.py puts it in the venv's bin); a missing helm fails these tests, it
never skips them.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_settings
from tests.helpers import ROOT

CHART = ROOT / "deploy" / "helm" / "model-drift-exporter"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = ["defaults", *(p.name for p in CI_VALUES)]
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
DASHBOARD_FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RELEASE, NAMESPACE = "mde", "models"
FULLNAME = f"{RELEASE}-model-drift-exporter"
# The chart's kubeVersion floor and a recent release.
KUBE_VERSIONS = ["1.25.0", "1.35.0"]
MONITORING = "monitoring.coreos.com/v1"
# A URL standing for the content of a Secret the user creates (database.existingSecret).
USER_SECRETS = {"EXPORTER_DATABASE_URL": "postgresql+psycopg://exporter:pw@postgres:5432/exporter",
                "EXPORTER_AUTH__TOKEN": "a-token"}


def _find_helm() -> Path | None:
    beside = Path(sys.executable).parent / "helm"  # where scripts/get-helm.py puts it
    if beside.is_file():
        return beside
    given = os.environ.get("HELM")
    found = given or shutil.which("helm")
    return Path(found) if found else None


HELM = _find_helm()
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the dashboards make 200 KB of YAML


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if HELM is None:
        pytest.fail("helm not found: `make test` (or `.venv/bin/python scripts/get-helm.py`) puts it in the venv")
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/helm-test/cache", "HELM_CONFIG_HOME": "/tmp/helm-test/config",
           "HELM_DATA_HOME": "/tmp/helm-test/data"}
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def _values_args(case: str) -> list[str]:
    return [] if case == "defaults" else ["-f", str(CHART / "ci" / case)]


@cache
def _render(chart: str, *args: str) -> tuple[dict[str, Any], ...]:
    out = _helm("template", RELEASE, chart, "--namespace", NAMESPACE, *args).stdout
    return tuple(doc for doc in yaml.load_all(out, Loader=SafeLoader) if doc)


def render(case: str = "defaults", *sets: str) -> list[dict[str, Any]]:
    extra = [a for s in sets for a in ("--set", s)]
    return list(_render(str(CHART), *_values_args(case), *extra))


def render_fails(*sets: str) -> str:
    proc = _helm("template", RELEASE, str(CHART), *[a for s in sets for a in ("--set", s)], check=False)
    assert proc.returncode != 0, f"the chart rendered with {sets}, which it must refuse"
    return proc.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = of_kind(docs, kind)
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def ci_values(case: str) -> dict[str, Any]:
    return {} if case == "defaults" else yaml.safe_load((CHART / "ci" / case).read_text()) or {}


def test_helm_is_there() -> None:
    assert HELM is not None, (
        "helm not found: `make test` (or `.venv/bin/python scripts/get-helm.py`) puts it in the venv"
    )
    assert "v4." in _helm("version", "--short").stdout or "v3." in _helm("version", "--short").stdout


def test_ci_values_cases_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"kube-prometheus-stack-values.yaml", "postgres-replicas-values.yaml"} <= names


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str) -> None:
    proc = _helm("lint", "--strict", str(CHART), *_values_args(case), check=False)
    assert proc.returncode == 0 and "0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(case: str, kube_version: str) -> None:
    docs = render(case)
    core = [d for d in docs if d["apiVersion"] != MONITORING]
    assert {"Deployment", "Service", "ServiceAccount"} <= {d["kind"] for d in core}
    for doc in core:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{case}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("case", CASES)
def test_every_object_is_in_the_release_namespace_and_labelled(case: str) -> None:
    for doc in render(case):
        meta = doc["metadata"]
        assert meta["namespace"] == NAMESPACE, doc["kind"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, doc["kind"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63


# ---- Deployment and Service ----------------------------------------------------------------------------------------

def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert container(render())["image"] == f"model-drift-exporter:{project['version']}"


@pytest.mark.parametrize("case", CASES)
def test_service_selects_the_pods_through_a_named_port(case: str) -> None:
    docs = render(case)
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in container(docs)["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] in ports


@pytest.mark.parametrize("case", CASES)
def test_probes(case: str) -> None:
    c = container(render(case))
    port_names = {p["name"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in port_names


@pytest.mark.parametrize("case", CASES)
def test_non_root_read_only_root_and_resources(case: str) -> None:
    docs = render(case)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))  # the image's user
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    assert pod["automountServiceAccountToken"] is False


def _emptydir_mounts(docs: list[dict[str, Any]]) -> list[PurePosixPath]:
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    return [PurePosixPath(m["mountPath"]) for m in container(docs)["volumeMounts"]
            if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")]


def _writable(path: str, mounts: list[PurePosixPath]) -> bool:
    p = PurePosixPath(path)
    return any(p == m or m in p.parents for m in mounts)


@pytest.mark.parametrize("case", CASES)
def test_everything_the_service_writes_is_on_an_emptydir(case: str) -> None:
    """Read-only root: the data dir (demo, SQLite log and its drift-lock file), TMPDIR (multiprocessing, the
    metrics directory of --workers), HOME and PROMETHEUS_MULTIPROC_DIR must be writable volumes."""
    docs = render(case)
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    mounts = _emptydir_mounts(docs)
    for name in ("EXPORTER_DATA_DIR", "TMPDIR", "HOME"):
        assert _writable(env[name], mounts), f"{name}={env[name]} is not on a writable emptyDir"
    workers = int(_parse_args(container(docs)).workers)
    if workers > 1:
        assert _writable(env["PROMETHEUS_MULTIPROC_DIR"], mounts)
    else:
        # set with one worker, the app would use multiprocess mode without the CLI emptying the directory
        assert "PROMETHEUS_MULTIPROC_DIR" not in env


@pytest.mark.parametrize("case", CASES)
def test_pod_disruption_budget_only_with_several_replicas(case: str) -> None:
    docs = render(case)
    deployment = one(docs, "Deployment")
    pdbs = of_kind(docs, "PodDisruptionBudget")
    if deployment["spec"]["replicas"] > 1:
        (pdb,) = pdbs
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    else:
        assert pdbs == []


def test_topology_spread_gets_the_release_selector() -> None:
    docs = render("postgres-replicas-values.yaml")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (constraint,) = pod["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


# ---- the exporter's own CLI and config loader on what the chart renders --------------------------------------------

def _parse_args(c: dict[str, Any]) -> Any:
    assert c["command"] == ["exporter"]
    return build_parser().parse_args(c["args"])


def _demo_config() -> str:
    """exporter.demo.CONFIG_TEMPLATE, read from the source: importing the module (scikit-learn) takes seconds."""
    tree = ast.parse((ROOT / "exporter" / "demo" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["CONFIG_TEMPLATE"]:
            return str(ast.literal_eval(node.value))
    raise AssertionError("exporter/demo/__init__.py has no CONFIG_TEMPLATE")


def _secret_value(docs: list[dict[str, Any]], env_name: str, ref: dict[str, str]) -> str:
    for secret in of_kind(docs, "Secret"):
        if secret["metadata"]["name"] == ref["name"]:
            return base64.b64decode(secret["data"][ref["key"]]).decode()
    return USER_SECRETS[env_name]  # a Secret the user creates (existingSecret)


@pytest.mark.parametrize("case", CASES)
def test_the_container_is_a_valid_exporter_serve(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's args through the CLI's parser; its config.yaml and EXPORTER_* environment through the config
    loader the service runs at start. The database the loaded settings point at is PostgreSQL when there are
    several replicas, and an SQLite file on a writable emptyDir otherwise."""
    docs = render(case)
    deployment, c = one(docs, "Deployment"), container(docs)
    args = _parse_args(c)
    assert args.command == "serve"
    assert args.host == "0.0.0.0"  # reachable through the Service
    assert args.port == c["ports"][0]["containerPort"]
    assert args.workers >= 1

    env: dict[str, str] = {}
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = _secret_value(docs, e["name"], ref) if ref else e["value"]

    if args.config:
        config = PurePosixPath(args.config)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent]
        configmap_name = volumes[mount["name"]]["configMap"]["name"]
        (configmap,) = [m for m in of_kind(docs, "ConfigMap") if m["metadata"]["name"] == configmap_name]
        (tmp_path / config.name).write_text(configmap["data"][config.name])
        real_dir = str(config.parent)
        assert yaml.safe_load(configmap["data"][config.name]) == ci_values(case)["config"]
    else:
        (tmp_path / "config.yaml").write_text(_demo_config())  # no config: the demo's, in EXPORTER_DATA_DIR
        real_dir = env["EXPORTER_DATA_DIR"]

    for name in [n for n in os.environ if n.startswith("EXPORTER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("EXPORTER_"):
            monkeypatch.setenv(name, value)
    settings = load_settings(tmp_path / "config.yaml")  # raises ConfigError on anything the service would refuse

    url = settings.resolved_database_url.replace(str(tmp_path), real_dir)
    if deployment["spec"]["replicas"] > 1:
        assert url.startswith("postgresql+psycopg://")
    if url.startswith("sqlite"):
        database = url.removeprefix("sqlite:///")
        assert _writable(database, _emptydir_mounts(docs)), f"the SQLite file {database} is not on a writable emptyDir"


# ---- what the chart refuses -----------------------------------------------------------------------------------------

def test_several_replicas_need_postgresql() -> None:
    assert "PostgreSQL" in render_fails("replicaCount=2")
    assert "PostgreSQL" in render_fails("replicaCount=2", "database.url=sqlite:////data/predictions.db")
    assert "PostgreSQL" in render_fails("replicaCount=3", "workers=2")


def test_several_replicas_with_postgresql_render() -> None:
    docs = render("defaults", "replicaCount=2", "database.url=postgresql+psycopg://u:p@db:5432/x")
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert of_kind(docs, "PodDisruptionBudget")
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["database-url"]).decode() == "postgresql+psycopg://u:p@db:5432/x"
    (db_env,) = [e for e in container(docs)["env"] if e["name"] == "EXPORTER_DATABASE_URL"]
    assert db_env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "database-url"}
    # the URL in the user's config is accepted too (e.g. no password: the server trusts the pod's identity)
    docs = render("model-volume-values.yaml", "replicaCount=2", "config.database_url=postgresql+psycopg://db/x")
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert "EXPORTER_DATABASE_URL" not in {e["name"] for e in container(docs)["env"]}


def test_other_refusals() -> None:
    # the config's folder is a read-only ConfigMap mount
    assert "/data" in render_fails("config.database_url=sqlite:///predictions.db", "config.model.path=/m")
    assert "not both" in render_fails("database.url=postgresql+psycopg://db/x", "database.existingSecret=s")
    assert "protectMetrics" in render_fails("auth.protectMetrics=true")
    assert "workers" in render_fails("workers=0")


def test_existing_configmap_is_mounted_as_the_config_folder() -> None:
    docs = render("defaults", "existingConfigMap=my-model")
    assert "ConfigMap" not in {d["kind"] for d in docs}
    args = _parse_args(container(docs))
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "my-model"}} in volumes
    assert args.config == "/etc/exporter/config.yaml"


# ---- ServiceMonitor (a CRD: checked here, not by the Kubernetes schemas) -------------------------------------------

SERVICE_MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                        "sampleLimit", "targetLimit", "attachMetadata"}
ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels",
                   "honorTimestamps", "authorization", "basicAuth", "bearerTokenSecret", "tlsConfig",
                   "relabelings", "metricRelabelings", "followRedirects", "enableHttp2", "filterRunning"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                   "uppercase", "keepequal", "dropequal"}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


@pytest.mark.parametrize("case", CASES)
def test_service_monitor(case: str) -> None:
    docs = render(case)
    monitors = of_kind(docs, "ServiceMonitor")
    if not ci_values(case).get("serviceMonitor", {}).get("enabled"):
        assert monitors == []
        return
    (monitor,) = monitors
    service = one(docs, "Service")
    assert monitor["apiVersion"] == MONITORING
    assert ci_values(case)["serviceMonitor"]["additionalLabels"].items() <= monitor["metadata"]["labels"].items()
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= ENDPOINT_FIELDS
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert DURATION.fullmatch(endpoint["interval"]) and DURATION.fullmatch(endpoint["scrapeTimeout"])
    for relabel in endpoint["relabelings"] + endpoint.get("metricRelabelings", []):
        assert relabel.get("action", "replace") in RELABEL_ACTIONS
    # the rules and dashboards select job="exporter"; the replicas must not differ by a pod label
    rules_text = "".join(p.read_text() for p in RULE_FILES)
    assert 'job="exporter"' in rules_text
    assert {"action": "replace", "targetLabel": "job", "replacement": "exporter"} in endpoint["relabelings"]
    assert {"action": "labeldrop", "regex": "pod"} in endpoint["relabelings"]
    token_env = [e for e in container(docs)["env"] if e["name"] == "EXPORTER_AUTH__TOKEN"]
    protected = {e["name"]: e.get("value") for e in container(docs)["env"]}.get("EXPORTER_AUTH__PROTECT_METRICS")
    if protected == "true":
        # Prometheus sends the token the exporter checks
        assert endpoint["authorization"]["type"] == "Bearer"
        assert endpoint["authorization"]["credentials"] == token_env[0]["valueFrom"]["secretKeyRef"]
    else:
        assert "authorization" not in endpoint


# ---- PrometheusRule and dashboards: the repository's files, unchanged ----------------------------------------------

def test_rules_and_dashboards_are_links_to_the_repository_files() -> None:
    """One source of truth: the chart reads prometheus/rules and grafana/dashboards through symlinks (helm follows
    them, and `helm package` stores the files they point at)."""
    for link, target in ((CHART / "files" / "rules", ROOT / "prometheus" / "rules"),
                         (CHART / "files" / "dashboards", ROOT / "grafana" / "dashboards")):
        assert link.is_symlink(), f"{link} should be a symlink to {target}"
        assert link.resolve() == target.resolve()


def _rule_groups(docs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    rules = of_kind(docs, "PrometheusRule")
    for rule in rules:
        assert rule["apiVersion"] == MONITORING
        assert set(rule["spec"]) == {"groups"}
    return {r["metadata"]["name"]: r["spec"]["groups"] for r in rules}


@pytest.mark.parametrize("case", CASES)
def test_prometheus_rule_groups_equal_the_rule_files(case: str) -> None:
    docs = render(case)
    enabled = ci_values(case).get("prometheusRule", {}).get("enabled")
    groups = _rule_groups(docs)
    if not enabled:
        assert groups == {}
        return
    assert RULE_FILES
    expected = {f"{FULLNAME}-{p.stem}": yaml.safe_load(p.read_text())["groups"] for p in RULE_FILES}
    assert groups == expected  # every group, rule, expr, for:, label and annotation, verbatim
    labels = ci_values(case)["prometheusRule"]["additionalLabels"]
    for rule in of_kind(docs, "PrometheusRule"):
        assert labels.items() <= rule["metadata"]["labels"].items()


@pytest.mark.parametrize("case", CASES)
def test_dashboard_configmaps_equal_the_dashboard_files(case: str) -> None:
    docs = render(case)
    values = ci_values(case).get("dashboards", {})
    dashboards = [m for m in of_kind(docs, "ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard")]
    if not values.get("enabled"):
        assert dashboards == []
        return
    assert DASHBOARD_FILES
    by_file = {}
    for cm in dashboards:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # kube-prometheus-stack's sidecar label
        assert cm["metadata"].get("annotations", {}) == values.get("annotations", {})
        (name,) = cm["data"]
        by_file[name] = cm["data"][name]
        assert len(json.dumps(cm)) < 1024 * 1024  # a ConfigMap holds 1 MiB at most
    assert by_file == {p.name: p.read_text() for p in DASHBOARD_FILES}  # byte for byte


def test_the_packaged_chart_carries_the_linked_files(tmp_path: Path) -> None:
    """`helm package` resolves the links: the archive renders the same objects as the chart folder."""
    _helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("model-drift-exporter-*.tgz")
    case = "kube-prometheus-stack-values.yaml"
    packaged = list(_render(str(archive), *_values_args(case)))
    assert packaged == render(case)
    assert of_kind(packaged, "PrometheusRule") and of_kind(packaged, "ConfigMap")


@pytest.mark.parametrize("base", ["https://wiki.example.com/ml/model-drift-runbook/",
                                  "https://docs.example.com/runbooks/model-drift.html"])
def test_runbook_base_url_replaces_the_base_of_every_runbook_url(base: str) -> None:
    """prometheusRule.runbookBaseUrl: every alert's runbook_url becomes <value>#<alertname lower-cased>, and nothing
    else of the rules changes."""
    case = "kube-prometheus-stack-values.yaml"
    groups = _rule_groups(render(case, f"prometheusRule.runbookBaseUrl={base}"))
    expected = {f"{FULLNAME}-{p.stem}": yaml.safe_load(p.read_text())["groups"] for p in RULE_FILES}
    alerts = 0
    for file_groups in expected.values():
        for group in file_groups:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["annotations"]["runbook_url"] = f"{base}#{rule['alert'].lower()}"
                    alerts += 1
    assert alerts and groups == expected


def test_runbook_base_url_defaults_to_the_rule_files_base() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    bases = {rule["annotations"]["runbook_url"].split("#")[0]
             for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"] for rule in g["rules"]
             if "alert" in rule}
    assert bases == {values["prometheusRule"]["runbookBaseUrl"]}


@pytest.mark.parametrize("base", ["", "docs/alerts.md", "https://example.com/alerts/#x", "ftp://example.com/"])
def test_runbook_base_url_must_be_absolute(base: str) -> None:
    err = render_fails("prometheusRule.enabled=true", f"prometheusRule.runbookBaseUrl={base}")
    assert "prometheusRule.runbookBaseUrl" in err


# ---- docs: the Kubernetes page ---------------------------------------------------------------------------------------

def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("resources", "podSecurityContext", "securityContext",
                                                            "startupProbe", "livenessProbe", "readinessProbe"):
            keys += _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_the_kubernetes_page_documents_every_value() -> None:
    page = (ROOT / "docs" / "kubernetes.md").read_text()
    section = page.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    leaves = _leaf_keys(values)
    missing = [k for k in leaves if f"| `{k}` |" not in section]
    assert not missing, f"values missing from the Values table of docs/kubernetes.md: {missing}"
    listed = re.findall(r"^\| `([\w.]+)` \|", section, re.M)
    unknown = [k for k in listed if k not in leaves]
    assert not unknown, f"docs/kubernetes.md lists values the chart does not have: {unknown}"
