"""Configs that would start but could not work are refused at start with one line naming the key; and the drift
job's timeout covers the run, not the start-up of its worker process."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.config import load_settings
from exporter.db import Database
from exporter.runners import JobError, WorkerRunner
from exporter.startup import build
from tests.helpers import GOOD, ROOT, config_folder, flush, free_port, live_server, sample, terminate

# Root ignores file permissions through two capabilities; without them it is refused like any user. (The
# interpreter lives under /root, which an unprivileged user such as nobody cannot reach.)
UNPRIVILEGED = (
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if os.geteuid() == 0 else []
)


def serve_refused(config: Path, env: dict[str, str] | None = None, *, prefix: list[str] | None = None) -> str:
    """Run ``exporter serve`` on ``config``; assert it refuses to start (status 2, one line, no traceback) and
    return that line. A server that starts instead is stopped and the test fails at once."""
    port = free_port()
    proc = subprocess.Popen(
        [*(prefix or []), sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "DO_NOT_TRACK": "1", **(env or {})},
        cwd=config.parent,
    )
    deadline = time.monotonic() + 90
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    pytest.fail("the service started with this config")
            time.sleep(0.2)
    finally:
        terminate(proc, 30)
    out, err = (s.decode(errors="replace") for s in proc.communicate())
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exporter: error: "), err
    assert "Traceback" not in err + out
    return lines[0]


# Three cases through the real CLI (exit status 2, one line, no traceback): a config file's error, an environment
# variable's, and a start-up check's. Every case's message: tests/app/test_refusals.py.
@pytest.mark.parametrize(
    ("changes", "env", "expected"),
    [
        pytest.param({"drift": {"per_feature": {"bill_length_mm": {"method": "kss"}}}}, {},
                     ["drift.per_feature.bill_length_mm.method", "'kss'", "numerical", "anderson", "ks,", "psi",
                      "wasserstein", "!chisquare", "!TVD"], id="unknown-method"),
        pytest.param({}, {"EXPORTER_BATCHING__MAX_WAIT_MS": "500"},
                     ["batching.max_wait_ms", "less than or equal to 100"], id="batch-wait-too-long"),
        pytest.param({"database_url": "sqlite:///reference.csv/predictions.db"}, {},
                     ["database_url", "EXPORTER_DATABASE_URL", "reference.csv/predictions.db", "writable location"],
                     id="sqlite-parent-is-a-file"),
    ],
)
def test_refused_at_start(demo_dir: Path, tmp_path: Path, changes: dict[str, Any], env: dict[str, str],
                          expected: list[str]) -> None:
    config = config_folder(demo_dir, tmp_path, **changes)
    line = serve_refused(config, env)
    for part in expected:  # "!name": must not be in the line
        assert (part[1:] not in line) if part.startswith("!") else (part in line), (part, line)


# -- an SQLite database the service cannot write -----------------------------------------------------------------

def test_sqlite_in_a_read_only_config_folder_is_refused(demo_dir: Path, tmp_path: Path) -> None:
    """The default database sits next to the config: a read-only mount (a Kubernetes ConfigMap) cannot hold it."""
    config = config_folder(demo_dir, tmp_path / "ro")
    settings = yaml.safe_load(config.read_text())
    del settings["database_url"]  # the default: .exporter/predictions.db beside the config
    config.write_text(yaml.safe_dump(settings))
    (tmp_path / "writable").mkdir()
    try:
        config.parent.chmod(0o555)
        line = serve_refused(config, prefix=UNPRIVILEGED)
        assert f"{config.parent}/.exporter/predictions.db" in line, line
        assert "database_url" in line and "EXPORTER_DATABASE_URL" in line and "Permission denied" in line, line
        # the remedy the message gives works: the same check `serve` makes passes
        elsewhere = {"EXPORTER_DATABASE_URL": f"sqlite:///{tmp_path}/writable/predictions.db"}
        check = ("import sys; from exporter.config import load_settings; from exporter.startup import open_database;"
                 " open_database(load_settings(sys.argv[1])).dispose()")
        proc = subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-c", check, str(config)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "DO_NOT_TRACK": "1", **elsewhere},
        )
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "writable" / "predictions.db").is_file()
    finally:
        config.parent.chmod(0o755)


@pytest.mark.parametrize("read_only", ["folder", "file"])
def test_sqlite_database_not_writable_is_refused(demo_dir: Path, tmp_path: Path, read_only: str) -> None:
    """The folder exists but cannot be written, or the file exists read-only: every write would fail forever."""
    config = config_folder(demo_dir, tmp_path, database_url="sqlite:///data/predictions.db")
    data = config.parent / "data"
    if read_only == "file":
        # the file and its table exist: only a write finds the file read-only
        db = Database(load_settings(config).resolved_database_url)
        db.ensure_schema()
        db.dispose()
        locked = data / "predictions.db"
    else:
        data.mkdir()
        locked = data
    mode = locked.stat().st_mode
    try:
        locked.chmod(0o555 if read_only == "folder" else 0o444)
        line = serve_refused(config, prefix=UNPRIVILEGED)
        assert f"{data}/predictions.db" in line and "writable location" in line, line
    finally:
        locked.chmod(mode)


# -- authentication: one line at start says what is protected -----------------------------------------------------

@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({}, "authentication off: /monitoring, /drift, /feedback and /metrics are open"),
        ({"token": "t0ken"}, "authentication on: bearer token required on /monitoring, /drift, /feedback; "
                             "/metrics is open"),
        ({"token": "t0ken", "protect_metrics": True},
         "authentication on: bearer token required on /monitoring, /drift, /feedback, /metrics"),
    ],
)
def test_start_logs_whether_authentication_is_on(demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 auth: dict[str, Any], expected: str) -> None:
    config = config_folder(demo_dir, tmp_path, auth=auth)
    with caplog.at_level(logging.INFO, logger="exporter"):
        app = create_app(load_settings(config), start_scheduler=False)
    app.state.db.dispose()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("authentication ")]
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert "t0ken" not in lines[0]


def test_compose_readme_and_docs_pass_no_empty_token() -> None:
    root = ROOT
    docs = [p.relative_to(root).as_posix() for p in sorted((root / "docs").glob("*.md"))]
    for name in ("docker-compose.yml", "README.md", "Dockerfile", *docs):
        text = (root / name).read_text()
        for bad in ("EXPORTER_AUTH__TOKEN:", "EXPORTER_AUTH__TOKEN=\"\"", "EXPORTER_AUTH__TOKEN=''",
                    "${EXPORTER_AUTH__TOKEN"):
            assert bad not in text, (name, bad)


# -- the drift job's timeout ----------------------------------------------------------------------------------------

def test_short_timeout_covers_the_run_not_the_worker_start(demo_dir: Path, tmp_path: Path) -> None:
    """Starting the worker process (spawn, imports, the reference) takes 5 s or more; a 2 s timeout still works."""
    config = config_folder(demo_dir, tmp_path, drift={
        "timeout_seconds": 2, "interval_seconds": 1, "min_rows": 20, "window_size": 100, "report": False})
    with live_server(config) as server:
        assert httpx.post(f"{server.url}/predict/batch", json={"records": [GOOD] * 30}, timeout=10).status_code == 200
        metrics = server.wait_for(
            lambda m: m if (sample(m, "model_drift_job_runs_total") or 0) >= 4
            or (sample(m, "model_drift_job_failures_total") or 0) > 0 else None, timeout=90)
        assert sample(metrics, "model_drift_job_failures_total") == 0, server.log()
        assert sample(metrics, "model_drift_job_timeouts_total") == 0
        assert sample(metrics, "model_drift_window_rows") == 30


def test_worker_that_never_gets_ready_is_a_failed_run_and_killed(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"min_rows": 1})
    settings = load_settings(config)
    db = Database(settings.resolved_database_url)
    db.ensure_schema()
    runner = WorkerRunner(build(settings).job_spec())
    try:
        runner.startup_timeout = 0.01  # no worker process imports pandas that fast
        with pytest.raises(JobError, match=r"not ready within 0\.01s.*killed"):
            runner.run(60)
        assert not runner._proc.is_alive()
        runner.startup_timeout = 120
        output = runner.run(2)  # a fresh worker; the run alone is short
        assert output.drift.window_rows == 0 and runner.restarts == 1
    finally:
        runner.close()
        db.dispose()


def test_thread_isolation_counts_an_overrun_and_discards_its_result(demo_dir: Path, tmp_path: Path) -> None:
    """A thread cannot be stopped: the run ends, is counted as a timeout, and its result is not published."""
    config = config_folder(demo_dir, tmp_path, drift={"min_rows": 1, "isolation": "thread", "timeout_seconds": 0.05})
    app = create_app(load_settings(config), start_scheduler=False)
    job = app.state.job
    with TestClient(app) as client:
        assert client.post("/predict/batch", json={"records": [GOOD] * 30}).status_code == 200
        flush(client)
        job.tick()  # building the HTML report alone takes longer than 50 ms
        run = job.published
        assert run.stats.failures == 1 and run.stats.timeouts == 1
        assert "0.05s timeout" in (run.stats.last_error or "")
        assert run.drift is None and run.report is None and run.stats.last_success == 0
        job.cfg.timeout_seconds = 120
        job.tick()
        run = job.published
        assert run.stats.failures == 1 and run.stats.runs == 2
        assert run.drift is not None and run.drift.window_rows == 30
        text = client.get("/metrics").text
        assert "model_drift_job_timeouts_total 1.0" in text
        assert "model_drift_job_failures_total 1.0" in text
