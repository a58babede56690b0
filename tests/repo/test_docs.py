"""The documentation site (docs/, mkdocs.yml): it builds with --strict, and its reference pages match the code.

- one strict build per module (a broken link or anchor, a page missing from the nav or a nav entry without a page,
  a configuration key the code lacks: each fails it), then the built pages are read;
- configuration: every key of the settings model (Settings and its nested sections) is in the generated table, and
  every key of the table exists;
- metrics: every family a real scrape of the app exposes (a served model after a drift run with labels, and a
  monitor-only one) is in the metrics table, and every family of the table is exposed;
- HTTP API and CLI: every route of the app and every command and option of the parser, both ways;
- runbook links: absolute, the published alerts page plus the alert's anchor, and the documented one-line change of
  the base moves it in the rules and in the promtool tests alike;
- the README: short, the CI's two commands in its Quick start, its links pointing at pages and headings that exist.

mkdocs and its theme come from the docs extra (`make` installs it); missing, these tests fail rather than skip.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tests.helpers import GOOD, ROOT, app_client, config_folder, flush, quiet

DOCS = ROOT / "docs"
MKDOCS = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
SITE_URL = MKDOCS["site_url"]
RUNBOOK_BASE = SITE_URL + "alerts/"
README = ROOT / "README.md"
README_MAX_LINES = 250


def _nav_files(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_files(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_files(value)


def _table_column(text: str) -> list[str]:
    """The first cells of a Markdown table's rows, when they are one code span."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    if "No module named mkdocs" in proc.stderr:
        pytest.fail("mkdocs is not installed: `make docs` (or pip install -e '.[test,docs]') installs it")
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _page(site: Path, name: str) -> str:
    """The built HTML of docs/<name>.md."""
    path = site / "index.html" if name == "index" else site / name / "index.html"
    assert path.is_file(), f"docs/{name}.md was not built"
    return path.read_text()


# ---- the site -----------------------------------------------------------------------------------------------------

def test_every_page_is_in_the_nav_and_built(site: Path) -> None:
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert set(_nav_files(MKDOCS["nav"])) == pages
    for page in pages:
        _page(site, page.removesuffix(".md"))


def test_the_tasks_have_their_pages() -> None:
    """The pages the site is organised by: get started, configure, operate, reference."""
    for name in ("getting-started", "configuration", "http-api", "metrics", "drift", "estimated-quality",
                 "monitor-only", "dashboards", "alerts", "operations", "scaling-out", "kubernetes", "docker-compose",
                 "performance"):
        assert (DOCS / f"{name}.md").is_file(), name


def test_no_page_points_at_readme_sections() -> None:
    """The README is short now: what it used to hold is on these pages."""
    for path in DOCS.glob("*.md"):
        text = path.read_text()
        found = re.search(r"README\.md#|see the README|the README's \"|in the README\b", text)
        assert not found, f"{path.name} refers to the README's sections: {found.group(0)!r}"


def test_the_pages_hold_no_history() -> None:
    """Current figures only: no narration of the code that came before."""
    for path in DOCS.glob("*.md"):
        for phrase in ("the code before", "before:", "used to", "as before"):
            assert phrase not in path.read_text(), f"{path.name}: {phrase!r}"


# ---- configuration ------------------------------------------------------------------------------------------------

def _settings_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the settings model, dotted; nested sections (X or X | None) are walked."""
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        args = getattr(field.annotation, "__args__", None) or (field.annotation,)
        sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if sections and len(sections) == len([a for a in args if a is not type(None)]):
            keys += _settings_keys(sections[0], f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_the_configuration_page_lists_every_key_and_only_those(site: Path) -> None:
    from exporter.config import Settings

    keys = _settings_keys(Settings)
    assert {"model.path", "drift.window_size", "prediction_log.retention.max_rows", "auth.token"} <= set(keys)
    page = _page(site, "configuration")
    listed = [html.unescape(k) for k in re.findall(r"<tr>\s*<td><code>([^<]+)</code></td>", page)]
    missing = [k for k in keys if k not in listed]
    assert not missing, f"keys missing from the configuration page: {missing}"
    unknown = [k for k in listed if k not in keys]
    assert not unknown, f"the configuration page lists keys the settings model lacks: {unknown}"
    assert len(listed) == len(set(listed))


def test_the_configuration_meanings_name_existing_keys() -> None:
    """The build refuses a meaning for a key the code lacks; this says so without a build."""
    from exporter.config import Settings

    meanings = yaml.safe_load((DOCS / "hooks" / "configuration.yml").read_text())
    assert set(meanings) <= set(_settings_keys(Settings))


# ---- metrics ------------------------------------------------------------------------------------------------------

def _families(text: str) -> set[str]:
    """The families of an exposition, as the metrics page names them: counters with their _total."""
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):  # prometheus_client's creation time of a counter or histogram
            continue
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


@pytest.fixture(scope="module")
def served(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A served model after predictions, labels and one drift run: every family a served model exports."""
    # shift adaptation on: its two gauges are families a served classifier exports then
    config = config_folder(demo_dir, tmp_path_factory.mktemp("served"),
                           **quiet(drift={"min_rows": 20, "segments": ["island"], "segment_min_rows": 10},
                                   reference={"shift_adaptation": "on"}))
    with app_client(config) as client:
        # segments by island: Biscoe and Dream judged, Torgersen (5 rows) too small
        records = [{**GOOD, "bill_length_mm": 36.0 + i % 20, "body_mass_g": 3300 + 25 * (i % 40),
                    "island": "Torgersen" if i < 5 else ("Biscoe", "Dream")[i % 2]} for i in range(60)]
        answer = client.post("/predict/batch", json={"records": records})
        assert answer.status_code == 200, answer.text
        flush(client)
        labels = [{"request_id": p["request_id"], "label": p["prediction"]} for p in answer.json()["predictions"]]
        assert client.post("/feedback/batch", json={"labels": labels}).status_code == 202
        flush(client)
        client.app.state.job.tick()
        yield client


@pytest.fixture(scope="module")
def monitor_only(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    config = config_folder(demo_dir, tmp_path_factory.mktemp("monitor"), "monitor.yaml", **quiet())
    with app_client(config) as client:
        yield client


def test_the_metrics_page_lists_every_exported_family_and_only_those(served: Any, monitor_only: Any) -> None:
    exposed = _families(served.get("/metrics").text) | _families(monitor_only.get("/metrics").text)
    # the run-derived and labelled families are there: drift, multivariate, quality, estimate, ingest outcomes
    assert {"model_feature_drift_score", "model_multivariate_drift_score", "model_quality",
            "model_quality_estimated", "model_quality_estimation_error", "model_log_records_total",
            "model_log_events_total", "model_batch_rows", "http_requests_total",
            "model_segment_feature_drift_score", "model_segment_window_rows"} <= exposed
    listed = _table_column((DOCS / "metrics.md").read_text())
    missing = sorted(exposed - set(listed))
    assert not missing, f"families missing from docs/metrics.md: {missing}"
    unknown = sorted(set(listed) - exposed)
    assert not unknown, f"docs/metrics.md lists families the app does not export: {unknown}"


# ---- HTTP API and CLI ---------------------------------------------------------------------------------------------

def _routes(client: Any) -> set[str]:
    app = client.app
    routes = {f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items() for method in ops}
    return routes | {f"GET {r.path}" for r in app.routes if getattr(r, "path", None) in ("/docs", "/redoc",
                                                                                          "/openapi.json")}


def test_the_http_api_page_lists_every_route_and_only_those(served: Any, monitor_only: Any) -> None:
    routes = _routes(served) | _routes(monitor_only)
    listed = _table_column((DOCS / "http-api.md").read_text())
    missing = sorted(routes - set(listed))
    assert not missing, f"routes missing from docs/http-api.md: {missing}"
    unknown = sorted(set(listed) - routes)
    assert not unknown, f"docs/http-api.md lists routes the app does not serve: {unknown}"
    assert "POST /predict" not in _routes(monitor_only)  # monitor-only: as the page says


def _commands() -> dict[str, list[str]]:
    from exporter.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]
            for name, parser in sub.choices.items()}


@pytest.mark.parametrize("where", ["docs/cli.md", "README.md"])
def test_the_cli_table_lists_every_command_and_option(where: str) -> None:
    text = (ROOT / where).read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `exporter (\w+) .*$", text, re.M)}
    assert set(rows) == set(_commands()), where
    for command, options in _commands().items():
        missing = [o for o in options if o not in rows[command]]
        assert not missing, f"{where}: exporter {command} lacks {missing}"


# ---- runbook links ------------------------------------------------------------------------------------------------

def _runbook_urls(prometheus: Path) -> dict[str, str]:
    return {rule["alert"]: rule["annotations"]["runbook_url"]
            for path in sorted((prometheus / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule}


def test_runbook_urls_open_the_alerts_page_where_the_docs_are_published(site: Path) -> None:
    urls = _runbook_urls(ROOT / "prometheus")
    assert urls
    page = _page(site, "alerts")
    for name, url in urls.items():
        assert url == f"{RUNBOOK_BASE}#{name.lower()}", name
        assert f'id="{name.lower()}"' in page, f"{name}: no section on the built alerts page"
    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "model-drift-exporter" / "values.yaml").read_text())
    assert chart["prometheusRule"]["runbookBaseUrl"] == RUNBOOK_BASE
    assert f"**`{RUNBOOK_BASE}`**" in (DOCS / "alerts.md").read_text()  # the documented default


def test_the_documented_one_line_change_moves_every_runbook_url(tmp_path: Path) -> None:
    """The command of docs/alerts.md ("Runbook links"), run on a copy of prometheus/: every runbook_url gets the
    new base and nothing else changes, in the rules and in the promtool tests alike, so those tests (which pass on
    the shipped files, test_prometheus_config) still pass: promtool compares the annotations as strings."""
    text = (DOCS / "alerts.md").read_text()
    (command,) = [line for line in text.splitlines() if line.startswith("sed -i ")]
    new_base = re.search(r"\|(https://[^|]+)\|' ", command).group(1)  # type: ignore[union-attr]
    assert new_base != RUNBOOK_BASE
    shutil.copytree(ROOT / "prometheus", tmp_path / "prometheus")
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=30)
    before, after = _runbook_urls(ROOT / "prometheus"), _runbook_urls(tmp_path / "prometheus")
    assert after == {name: url.replace(RUNBOOK_BASE, new_base) for name, url in before.items()}
    for folder in ("rules", "tests"):
        for path in (ROOT / "prometheus" / folder).glob("*.yml"):
            shipped, changed = path.read_text(), (tmp_path / "prometheus" / folder / path.name).read_text()
            assert new_base not in shipped and RUNBOOK_BASE not in changed, path.name
            assert changed.replace(new_base, RUNBOOK_BASE) == shipped, path.name
    expected = [line for path in (tmp_path / "prometheus" / "tests").glob("*.yml")
                for line in path.read_text().splitlines() if "runbook_url:" in line]
    assert expected and all(new_base in line for line in expected)


# ---- the README ---------------------------------------------------------------------------------------------------

def test_the_readme_is_short_and_keeps_the_ci_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    quick = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    # .ci/run runs `make lint` and `make test`, "the README's test command"
    assert re.search(r"^make run\s+#", quick, re.M) and re.search(r"^make test\s+#", quick, re.M)
    assert "docker compose --profile demo up" in text


def test_the_readmes_links_point_at_pages_and_headings_that_exist(site: Path) -> None:
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#([^)]+))?\)", README.read_text())
    assert len(links) > 10
    for target, anchor in links:
        page = _page(site, Path(target).relative_to("docs").as_posix().removesuffix(".md"))
        if anchor:
            assert f'id="{anchor}"' in page, f"README links to {target}#{anchor}, which has no such heading"
