"""One deployment, one drift job: the job lock (a file beside SQLite, a PostgreSQL advisory lock), the stored runs
every process serves, and real `exporter serve` processes sharing one database."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select

from exporter.calibration import per_run_alpha
from exporter.db import Database, runs_table
from exporter.drift import Reference, compute_drift
from exporter.locks import AdvisoryJobLock, FileJobLock, job_lock
from exporter.quality import QualityResult
from exporter.report import CachedReport, ColumnVerdict
from exporter.store import RunStore
from tests.helpers import GOOD, LiveServer, config_folder, free_port, live_server, parse_metrics, sample, wait_until


def test_file_lock_has_one_holder_until_released(tmp_path: Path) -> None:
    path = tmp_path / "predictions.db.drift-lock"
    first, second = FileJobLock(path), FileJobLock(path)
    assert first.acquire() and first.acquire()  # kept
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_advisory_lock_passes_on_when_its_session_dies(postgres_url: str) -> None:
    first = job_lock(postgres_url, "m", "1")
    second = job_lock(postgres_url, "m", "1")
    other_version = job_lock(postgres_url, "m", "2")
    assert isinstance(first, AdvisoryJobLock)
    try:
        assert first.acquire() and not second.acquire()
        assert other_version.acquire()  # a deployment per model version
        first._conn.invalidate()  # type: ignore[union-attr]  # the holder's connection is gone, as on SIGKILL
        assert wait_until(second.acquire, 10, what="the lock to pass on")
        assert not first.acquire()  # the old holder notices it lost the lock
    finally:
        for lock in (first, second, other_version):
            lock.release()


def test_a_lock_that_cannot_reach_the_database_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    lock = AdvisoryJobLock(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none", 1)
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.locks"):
            assert not any(lock.acquire() for _ in range(3))
    finally:
        lock.release()
    lines = [r.getMessage() for r in caplog.records if "cannot reach the database" in r.getMessage()]
    assert len(lines) == 1 and "Connection refused" in lines[0], lines


def test_a_stored_run_reads_back_as_it_was(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=500), "y": rng.normal(size=500), "c": rng.choice(list("ab"), 500)})
    reference = Reference(frame, ["x", "y"], ["c"], predictions=frame["c"])
    window = frame.sample(300, random_state=2).assign(prediction=lambda f: f["c"])
    drift = compute_drift(reference, window, alpha=per_run_alpha(0.01, 60))
    assert drift.multivariate is not None and drift.prediction is not None
    quality = QualityResult(120, {"accuracy": 0.9})
    report = CachedReport(b"\x1f\x8b gzipped", 123.5, 300, {"x": ColumnVerdict("ks", 1e-7, 0.4)})
    db = Database(f"sqlite:///{tmp_path / 'runs.db'}")
    engine = db.engine
    runs = RunStore(db, "1")
    db.ensure_schema()
    for _ in range(25):
        run_id = runs.save(drift, quality, report)
    stored = runs.load(run_id)
    assert stored is not None
    assert stored.drift == drift and stored.quality == quality and stored.report == report
    assert runs.newest_id() == run_id
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(runs_table)).scalar() == 20  # a bounded history
    assert RunStore(db, "2").newest_id() is None  # another model version's runs are its own


def _runs(db: Path) -> int:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(runs_table)).scalar() or 0)
    finally:
        engine.dispose()


def test_two_workers_run_one_job_and_serve_the_same_result(demo_dir: Path, tmp_path: Path) -> None:
    # One run, at start: a first run on a loaded machine can take most of a short interval, and a second run
    # during the scrapes below would show two (correct) timestamps.
    config = config_folder(demo_dir, tmp_path, drift={"interval_seconds": 600, "min_rows": 1, "report": False})
    with live_server(config, workers=2) as server:
        httpx.post(f"{server.url}/predict/batch", json={"records": [GOOD] * 50}, timeout=10)
        db = tmp_path / "predictions.db"
        wait_until(lambda: _runs(db) >= 1, 60, what="a stored run")
        # Both workers have ticked at start: only the lock holder ran.
        wait_until(lambda: "another process of the deployment runs it" in server.log(), 30,
                   what="the second worker's tick", details=server.log)
        assert "drift job: this process runs it" in server.log()
        assert _runs(db) == 1
        answers = {httpx.get(f"{server.url}/drift", timeout=10).json()["result"]["computed_at"] for _ in range(20)}
        assert len(answers) == 1, answers  # whichever worker answered
        scraped = {
            line for _ in range(20)
            for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
            if line.startswith(("model_feature_drift_score", "model_drift_job_last_success_timestamp_seconds"))
        }
        assert len([x for x in scraped if x.startswith("model_drift_job_last")]) == 1, scraped

        # Counters are the sum over the workers, the same on every scrape, whichever worker answers.
        with httpx.Client(timeout=10) as client:  # new connections: the kernel spreads them over the workers
            for _ in range(30):
                assert (
                    client.post(f"{server.url}/predict", json=GOOD, headers={"connection": "close"}).status_code == 200
                )
        # The other worker's counts reach the shared files within 0.5 s.
        server.wait_for(lambda m: sample(m, "model_predictions_total") == 80, timeout=10, interval=0.1)
        for _ in range(10):
            metrics = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
            assert sample(metrics, "model_predictions_total") == 80
            http = sum(v for (name, labels), v in metrics.items()
                       if name == "http_requests_total" and dict(labels).get("handler") == "/predict")
            assert http == 30


def _drift_workers(pid: int) -> list[int]:
    """The drift worker processes (multiprocessing spawn children) of process ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


INTERVAL = 2.0


def test_sigkill_of_the_job_runner_hands_the_job_over(demo_dir: Path, tmp_path: Path, postgres_url: str) -> None:
    config = config_folder(demo_dir, tmp_path, database_url=postgres_url,
                           drift={"interval_seconds": INTERVAL, "min_rows": 1, "report": False})
    engine = create_engine(postgres_url)

    def newest() -> int | None:
        with engine.connect() as conn:
            return conn.execute(select(func.max(runs_table.c.id))).scalar()

    runs_key = ("model_drift_job_runs_total", frozenset())

    def runs_of(server: LiveServer) -> float:
        return float(server.wait_for(lambda m: m if runs_key in m else None)[runs_key])

    try:
        with live_server(config) as first, live_server(config) as second:
            httpx.post(f"{first.url}/predict/batch", json={"records": [GOOD] * 50}, timeout=10)
            before = wait_until(newest, 90, what="a stored run")  # the first run includes its worker's start
            counts = {s.url: runs_of(s) for s in (first, second)}
            leader, follower = (first, second) if counts[first.url] > counts[second.url] else (second, first)
            assert counts[follower.url] == 0, counts  # one job per deployment: the other replica ran nothing
            # only the job's process keeps a drift worker process (about 300 MB each)
            assert len(_drift_workers(leader.proc.pid)) == 1  # type: ignore[union-attr]
            assert _drift_workers(follower.proc.pid) == []  # type: ignore[union-attr]
            taking = "drift job: this process runs it"
            assert taking not in follower.log()
            os.kill(leader.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            killed = time.monotonic()
            # the database frees the dead session's lock; the survivor takes it at its next tick
            wait_until(lambda: taking in follower.log(), 2 * INTERVAL, interval=0.1,
                       what="the surviving replica takes the job lock within two intervals")
            assert time.monotonic() - killed <= 2 * INTERVAL
            leader.proc.wait(timeout=10)  # type: ignore[union-attr]
            before = newest()  # the dead leader commits nothing more: a newer run is the survivor's
            wait_until(lambda: (newest() or 0) > (before or 0), 90, what="a run stored by the surviving replica")
            follower.wait_for(lambda m: (m.get(runs_key) or 0) >= 1, timeout=30)
            # The killed replica restarts and joins as a follower: it runs nothing and serves the stored runs.
            with live_server(config) as restarted:
                taken = newest()
                wait_until(lambda: (newest() or 0) >= (taken or 0) + 2, 60, what="two more runs")
                restarted_runs = restarted.metrics()
                assert restarted_runs.get(runs_key) == 0
                assert _drift_workers(restarted.proc.pid) == []  # type: ignore[union-attr]
                assert (restarted_runs.get(("model_drift_job_last_success_timestamp_seconds", frozenset())) or 0) > 0
    finally:
        engine.dispose()
