"""End to end on a real uvicorn process: traffic in, drift gauges out, every answered row in the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from exporter.db import predictions_table
from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.helpers import LiveServer, config_folder, live_server, sample

WINDOW = 666  # two full passes over the 333 reference rows


def send(server: LiveServer, traffic: Traffic, rows: int, batch: int = 37) -> int:
    answered = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while answered < rows:
            records, _ = traffic.records(min(batch, rows - answered))
            if len(records) == 1:
                resp = client.post("/predict", json=records[0])
                assert resp.status_code == 200, resp.text
            else:
                resp = client.post("/predict/batch", json={"records": records})
                assert resp.status_code == 200, resp.text
                assert len(resp.json()["predictions"]) == len(records)
            answered += len(records)
    return answered


def run_after_rows_written(server: LiveServer, written: int) -> dict[Any, float]:
    """Metrics of a drift run that started after ``written`` rows were in the table."""
    server.wait_for(lambda m: sample(m, "model_prediction_log_written_total") == written)
    runs = sample(server.metrics(), "model_drift_job_runs_total") or 0
    # two more runs: the first may have started before the last rows were committed
    return server.wait_for(lambda m: m if (sample(m, "model_drift_job_runs_total") or 0) >= runs + 2 else None)


def detected(metrics: dict[Any, float]) -> dict[str, float | None]:
    return {f: sample(metrics, "model_feature_drift_detected", feature=f) for f in NUMERICAL + CATEGORICAL}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stationary_then_shifted_traffic(
    backend: str, demo_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database_url = (
        request.getfixturevalue("postgres_url") if backend == "postgresql" else "sqlite:///predictions.db"
    )
    config = config_folder(
        demo_dir, tmp_path, database_url=database_url,
        drift={"window_size": WINDOW, "min_rows": 100, "interval_seconds": 1},
    )
    with live_server(config) as server:
        answered = send(server, Traffic("none", seed=11), WINDOW)
        metrics = run_after_rows_written(server, answered)
        assert sample(metrics, "model_drift_window_rows") == WINDOW
        assert detected(metrics) == {f: 0.0 for f in NUMERICAL + CATEGORICAL}, server.log()[-2000:]
        assert sample(metrics, "model_dataset_drift_detected") == 0
        assert sample(metrics, "model_prediction_drift_detected") == 0

        answered += send(server, Traffic("shift", seed=12), WINDOW)
        metrics = run_after_rows_written(server, answered)
        flags = detected(metrics)
        assert flags.pop("bill_length_mm") == 1.0
        assert flags == {f: 0.0 for f in flags}
        assert sample(metrics, "model_dataset_drifted_features") == 1
        assert sample(metrics, "model_predictions_total") == answered
        assert sample(metrics, "model_prediction_log_dropped_total") == 0
        assert sample(metrics, "model_drift_job_failures_total") == 0
        page = httpx.get(f"{server.url}/monitoring", timeout=10)
        assert page.status_code == 200 and "bill_length_mm" in page.text
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says how it ended
    assert server.proc is not None and server.proc.returncode in (0, -15), server.log()[-2000:]
    assert "Application shutdown complete" in server.log()

    url = database_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'predictions.db'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(predictions_table)).scalar_one()
    engine.dispose()
    assert rows == answered
