"""The drift job's worker process: a run that overruns its timeout is abandoned by killing the worker, and the
next run starts a fresh one (a process of its own: spawned, killed, replaced)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.config import load_settings
from tests.helpers import GOOD, config_folder, flush


def test_overrunning_run_is_abandoned_counted_and_next_run_recovers(demo_dir: Path, tmp_path: Path) -> None:
    # The worker process is what is abandoned and replaced: the default isolation. The reference rule's refits,
    # which each worker start would run, are no part of this.
    config = config_folder(demo_dir, tmp_path, drift={"min_rows": 1, "timeout_seconds": 0.05},
                           reference={"check_held_out": False})
    app = create_app(load_settings(config), start_scheduler=False)
    job = app.state.job
    with TestClient(app) as client:
        assert client.post("/predict", json=GOOD).status_code == 200
        job.tick()  # building the HTML report alone takes longer than 50 ms
        run = job.published
        assert run.stats.failures == 1 and run.stats.timeouts == 1
        assert "timeout" in (run.stats.last_error or "")
        assert not job.runner._proc.is_alive()  # abandoned: the worker was killed
        assert run.drift is None and run.stats.last_success == 0
        job.cfg.timeout_seconds = 120
        flush(client)
        job.tick()
        run = job.published
        assert run.stats.failures == 1 and run.stats.runs == 2
        assert run.drift is not None and run.drift.window_rows == 1
        assert job.runner.restarts == 1
        text = client.get("/metrics").text
        assert "model_drift_job_timeouts_total 1.0" in text
        assert "model_drift_job_failures_total 1.0" in text
