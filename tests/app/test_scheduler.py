"""The drift job: one run at a time, missed runs coalesced, and /predict answering while it runs."""

from __future__ import annotations

import threading
from pathlib import Path

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED
from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.config import load_settings
from exporter.scheduler import DriftScheduler
from tests.helpers import GOOD, config_folder, flush, quiet, wait_until


def test_slow_job_never_overlaps_and_predict_keeps_answering(demo_dir: Path, tmp_path: Path) -> None:
    """Runs held in progress by the test, far longer than the 0.2 s interval: the ticks that come due meanwhile are
    skipped, not run beside it nor queued behind it; the job carries on after; /predict answers during a run."""
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"min_rows": 1}))
    app = create_app(load_settings(config), start_scheduler=False)
    job = app.state.job
    held = 2  # the first two runs wait for the test to release them
    entered = [threading.Event() for _ in range(held)]
    gates = [threading.Event() for _ in range(held)]
    left = [threading.Event() for _ in range(held)]
    running = max_running = calls = 0
    lock = threading.Lock()
    original = job.tick

    def slow_job() -> None:
        nonlocal running, max_running, calls
        with lock:
            run, running, calls = calls, running + 1, calls + 1
            max_running = max(max_running, running)
        try:
            if run < held:
                entered[run].set()
                gates[run].wait(30)  # a run far longer than the interval, until the test releases it
            original()
        finally:
            with lock:
                running -= 1
            if run < held:
                left[run].set()

    scheduler = DriftScheduler(slow_job, 0.2)  # the app's own, with a tick the test holds
    submitted: list[int] = []  # per submission to the executor: how many scheduled run times it carries
    skipped: list[int] = []  # ticks that came due while a run was in progress
    scheduler._scheduler.add_listener(
        lambda e: (submitted if e.code == EVENT_JOB_SUBMITTED else skipped).append(len(e.scheduled_run_times)),
        EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES,
    )
    with TestClient(app) as client:
        assert client.post("/predict", json=GOOD).status_code == 200
        flush(client)
        scheduler.start()
        assert entered[0].wait(30), "the first run did not start"
        for _ in range(5):
            # answered while the run is in progress: a blocked event loop would answer only once the run is over
            assert client.post("/predict", json=GOOD).status_code == 200
            assert not left[0].is_set()
        wait_until(lambda: len(skipped) >= 5, 30, what="five ticks coming due during the held run")
        assert calls == 1 and len(submitted) == 1  # those ticks started no run, beside it or behind it
        gates[0].set()
        assert entered[1].wait(60), "no run after the long one"  # the real run, then the job carries on
        before = len(skipped)
        wait_until(lambda: len(skipped) >= before + 2, 30, what="ticks coming due during the second held run")
        assert calls == 2 and len(submitted) == 2
        scheduler.stop()
        assert not left[1].is_set()  # stop() returned while the run was still held
        gates[1].set()
        assert left[1].wait(60), "the second run did not finish"
    assert max_running == 1
    # Every run is the run of one tick that found none in progress, for one scheduled time: missed ticks coalesced,
    # never run later as a backlog.
    assert calls == len(submitted) == 2 and submitted == [1, 1] and len(skipped) >= 7
    stats = job.published.stats
    assert stats.runs >= 2 and stats.failures == 0


def test_stop_does_not_wait_for_a_run_in_progress() -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def slow_tick() -> None:
        started.set()
        release.wait(30)  # a run far longer than any shutdown grace period
        finished.set()

    scheduler = DriftScheduler(slow_tick, 60)
    scheduler.start()
    assert started.wait(10)
    try:
        scheduler.stop()
        # stop() returned while the run was still blocked: had it waited, the run would have ended first
        assert not finished.is_set()
    finally:
        release.set()
    assert finished.wait(10)
