"""The `exporter` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.helpers import config_folder, free_port, live_server, sample, wait_http


def run(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_demo_writes_model_reference_and_commented_config(tmp_path: Path) -> None:
    proc = run("demo", "--out", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    files = {p.name for p in (tmp_path / "d").iterdir()}
    assert files == {"model.joblib", "reference.csv", "config.yaml", "monitor.yaml", "reference_logged.csv"}
    assert "monitor.yaml" in proc.stdout
    monitor = yaml.safe_load((tmp_path / "d" / "monitor.yaml").read_text())
    assert "path" not in monitor["model"]  # monitor-only
    assert monitor["reference"]["probability_columns"] == {c: f"proba_{c}" for c in ("Adelie", "Chinstrap", "Gentoo")}
    text = (tmp_path / "d" / "config.yaml").read_text()
    assert text.count("#") > 10  # commented for the user
    config = yaml.safe_load(text)
    assert config["features"]["categorical"] == ["island", "sex"]
    assert len(config["features"]["numerical"]) == 4


def test_simulate_then_drift_table(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"window_size": 400, "min_rows": 50, "interval_seconds": 3600})
    with live_server(config) as server:
        proc = run("simulate", "--url", server.url, "--rows", "400", "--rate", "400", "--scenario", "categories",
                   "--batch-size", "20", "--seed", "3", "--labels", "--label-error-rate", "0.5")
        assert proc.returncode == 0, proc.stderr
        assert "sent 400 rows, 0 failed, 400 labelled" in proc.stdout
        server.wait_for(lambda m: sample(m, "model_prediction_log_written_total") == 400)
        assert sample(server.metrics(), "model_feedback_total") == 400
    table = run("drift", "--config", str(config))
    assert table.returncode == 0, table.stderr
    lines = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") > 5}
    assert "yes" in lines["island"]           # the category mix changed
    assert "no" in lines["bill_length_mm"]
    assert "Drift of the last 400 predictions" in table.stdout
    assert "multivariate drift: classifier" in table.stdout
    # the demo has a target: permutation importance, its column last and the rows most important first
    assert "importance (permutation)" in table.stdout
    ranked = [float(line.split("│")[-2]) for line in lines.values() if line.split("│")[-2].strip() != "-"]
    assert len(ranked) == 6 and ranked == sorted(ranked, reverse=True) and ranked[0] > 0.05
    accuracy = float(table.stdout.split("accuracy ")[1].split()[0])
    assert 0.35 < accuracy < 0.65  # half the labels were sent wrong on purpose
    # estimated without labels (so the wrong labels do not move it), with its 99% band
    assert "estimated quality over 400 predictions (cbpe, 99% band): accuracy " in table.stdout


def test_simulate_via_log_to_a_monitor_only_service(demo_dir: Path, tmp_path: Path) -> None:
    """A local copy of the demo model predicts; its predictions are logged; the drift table and the quality are
    those of the logged rows."""
    config = config_folder(demo_dir, tmp_path, "monitor.yaml",
                           drift={"window_size": 400, "min_rows": 50, "interval_seconds": 3600})
    with live_server(config) as server:
        proc = run("simulate", "--url", server.url, "--via", "log", "--rows", "400", "--rate", "0", "--scenario",
                   "shift", "--batch-size", "50", "--seed", "4", "--labels")
        assert proc.returncode == 0, proc.stderr
        assert "sent 400 rows, 0 failed, 400 labelled" in proc.stdout
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_written_total") == 400 else None)
        assert sample(metrics, "model_log_records_total", outcome="accepted") == 400
    table = run("drift", "--config", str(config))
    assert table.returncode == 0, table.stderr
    lines = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") > 5}
    assert "yes" in lines["bill_length_mm"] and "no" in lines["island"]  # the shift, and only it
    accuracy = float(table.stdout.split("accuracy ")[1].split()[0])
    assert accuracy < 0.95  # shifted bills mislead the model: the true labels say so
    assert "estimated quality over 400 predictions (cbpe, 99% band): accuracy " in table.stdout


def test_simulate_rejects_unknown_scenario() -> None:
    proc = run("simulate", "--url", "http://127.0.0.1:9", "--scenario", "sideways", "--rows", "1")
    assert proc.returncode == 2
    assert "unknown scenario 'sideways'" in proc.stderr


def test_serve_without_config_uses_demo_in_data_dir(tmp_path: Path) -> None:
    env = {**os.environ, "EXPORTER_DATA_DIR": str(tmp_path / "data")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, 90, "exporter serve")
        resp = httpx.post(f"http://127.0.0.1:{port}/predict", json={
            "bill_length_mm": 46.1, "bill_depth_mm": 13.2, "flipper_length_mm": 211, "body_mass_g": 4500,
            "island": "Biscoe", "sex": "female"}, timeout=10)
        assert resp.status_code == 200 and resp.json()["prediction"] == "Gentoo"
    finally:
        proc.terminate()
        proc.wait(30)
    written = {p.name for p in (tmp_path / "data").iterdir()}
    assert written >= {"model.joblib", "reference.csv", "config.yaml", "predictions.db"}
