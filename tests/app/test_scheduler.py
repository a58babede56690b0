"""The drift job: one run at a time, missed runs coalesced, and /predict answering while it runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.config import load_settings
from exporter.scheduler import DriftScheduler
from exporter.stattests import evidently_stattests
from tests.helpers import GOOD, config_folder


def test_slow_job_never_overlaps_and_predict_keeps_answering(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(
        demo_dir, tmp_path, drift={"interval_seconds": 0.2, "min_rows": 1, "isolation": "thread", "report": False}
    )
    evidently_stattests()  # imported once per process (seconds): not part of the runs timed here
    app = create_app(load_settings(config), start_scheduler=False)
    job = app.state.job
    running = 0
    max_running = 0
    calls = 0
    lock = threading.Lock()
    original = job.tick

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

    scheduler = DriftScheduler(slow_job, 0.2)  # the app's own, with a tick that sleeps first
    with TestClient(app) as client:
        scheduler.start()
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
        scheduler.stop()
    assert max_running == 1
    assert 2 <= counted <= 1 + elapsed / 1.5  # coalesced: runs of 1.5 s back to back, not one per missed 0.2 s tick
    assert max(latencies) < 1.0  # a blocked event loop would wait out a whole 1.5 s run
    stats = job.published.stats
    assert stats.runs >= 2 and stats.failures == 0


def test_overrunning_run_is_abandoned_counted_and_next_run_recovers(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"min_rows": 1, "timeout_seconds": 0.05})
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
        deadline = time.monotonic() + 10
        while app.state.prediction_log.queued and time.monotonic() < deadline:
            time.sleep(0.05)
        job.tick()
        run = job.published
        assert run.stats.failures == 1 and run.stats.runs == 2
        assert run.drift is not None and run.drift.window_rows == 1
        assert job.runner.restarts == 1
        text = client.get("/metrics").text
        assert "model_drift_job_timeouts_total 1.0" in text
        assert "model_drift_job_failures_total 1.0" in text


def test_stop_does_not_wait_for_a_run_in_progress(demo_dir: Path, tmp_path: Path) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow_tick() -> None:
        started.set()
        release.wait(30)  # a run far longer than any shutdown grace period

    scheduler = DriftScheduler(slow_tick, 60)
    scheduler.start()
    assert started.wait(10)
    t0 = time.monotonic()
    scheduler.stop()
    stopped_in = time.monotonic() - t0
    release.set()
    assert stopped_in < 2.0
