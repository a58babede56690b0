"""The drift job: one run at a time, missed runs coalesced, and /predict answering while it runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.config import load_settings
from exporter.stattests import evidently_stattests
from tests.helpers import config_folder
from tests.test_api import GOOD


def test_slow_job_never_overlaps_and_predict_keeps_answering(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"interval_seconds": 0.2, "min_rows": 1, "isolation": "thread", "report": False})
    evidently_stattests()  # imported once per process (seconds): not part of the runs timed here
    app = create_app(load_settings(config))
    service = app.state.service
    running = 0
    max_running = 0
    calls = 0
    lock = threading.Lock()
    original = service.run_drift_job

    def slow_job() -> None:
        nonlocal running, max_running, calls
        with lock:
            running += 1
            calls += 1
            max_running = max(max_running, running)
        try:
            time.sleep(1.5)  # a run several times longer than the interval
            original()
        finally:
            with lock:
                running -= 1

    service.run_drift_job = slow_job
    with TestClient(app) as client:
        latencies = []
        begun = time.monotonic()
        # at least 3.5 s, and until a second run has started (a first run on a busy machine can take seconds:
        # it calibrates the thresholds and fits the estimators)
        while time.monotonic() < begun + 3.5 or (calls < 2 and time.monotonic() < begun + 20):
            started = time.monotonic()
            assert client.post("/predict", json=GOOD).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        elapsed, counted = time.monotonic() - begun, calls
    assert max_running == 1
    assert 2 <= counted <= 1 + elapsed / 1.5  # coalesced: runs of 1.5 s back to back, not one per missed 0.2 s tick
    assert max(latencies) < 1.0  # a blocked event loop would wait out a whole 1.5 s run
    assert service.job_stats.runs >= 2 and service.job_stats.failures == 0


def test_overrunning_run_is_abandoned_counted_and_next_run_recovers(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"min_rows": 1, "timeout_seconds": 0.05})
    app = create_app(load_settings(config), start_scheduler=False)
    service = app.state.service
    with TestClient(app) as client:
        assert client.post("/predict", json=GOOD).status_code == 200
        service.run_drift_job()  # building the HTML report alone takes longer than 50 ms
        assert service.job_stats.failures == 1 and service.job_stats.timeouts == 1
        assert "timeout" in (service.job_stats.last_error or "")
        assert not service.drift_job.runner._proc.is_alive()  # abandoned: the worker was killed
        assert service.drift_result is None and service.job_stats.last_success == 0
        service.settings.drift.timeout_seconds = 120
        deadline = time.monotonic() + 10
        while service.prediction_log.queued and time.monotonic() < deadline:
            time.sleep(0.05)
        service.run_drift_job()
        assert service.job_stats.failures == 1 and service.job_stats.runs == 2
        assert service.drift_result is not None and service.drift_result.window_rows == 1
        assert service.drift_job.runner.restarts == 1
        text = client.get("/metrics").text
        assert "model_drift_job_timeouts_total 1.0" in text
        assert "model_drift_job_failures_total 1.0" in text


def test_stop_does_not_wait_for_a_run_in_progress(demo_dir: Path, tmp_path: Path) -> None:
    from exporter.scheduler import DriftScheduler

    config = config_folder(demo_dir, tmp_path)
    app = create_app(load_settings(config), start_scheduler=False)
    started = threading.Event()
    release = threading.Event()

    class SlowService:
        def run_drift_job(self) -> None:
            started.set()
            release.wait(30)  # a run far longer than any shutdown grace period

    scheduler = DriftScheduler(SlowService(), 60)  # type: ignore[arg-type]
    scheduler.start()
    assert started.wait(10)
    t0 = time.monotonic()
    scheduler.stop()
    stopped_in = time.monotonic() - t0
    release.set()
    app.state.service.stop()
    assert stopped_in < 2.0
