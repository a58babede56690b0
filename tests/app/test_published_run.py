"""The one run a process publishes: readers never mix two runs, a tick publishes once, unreadable runs are counted.

In process (TestClient, a real SQLite file), the drift job driven by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from exporter.app import create_app
from exporter.config import load_settings
from exporter.db import runs_table
from exporter.drift import DriftResult, FeatureDrift
from exporter.estimation import EstimateResult, MetricEstimate
from exporter.quality import QualityResult
from exporter.report import CachedReport
from exporter.store import RunStore
from tests.helpers import GOOD, config_folder, flush, parse_metrics, sample


@pytest.fixture
def app(demo_dir: Path, tmp_path: Path) -> Iterator[Any]:
    config = config_folder(demo_dir, tmp_path, drift={"interval_seconds": 3600, "min_rows": 5, "isolation": "thread",
                                                      "report": False})
    app = create_app(load_settings(config), start_scheduler=False)
    yield app


def numbered_run(k: int) -> tuple[DriftResult, QualityResult, CachedReport, EstimateResult]:
    """A run whose every part carries the number k, so a reader can tell which run each part came from."""
    feature = FeatureDrift("bill_length_mm", "numerical", "ks", "K-S p_value", k / 1e6, 0.05, False, 0.0, 0.0)
    drift = DriftResult(float(k), k, 1, 0.5, {"bill_length_mm": feature})
    return (drift, QualityResult(k, {"accuracy": k / 1e6}), CachedReport(b"", float(k), k),
            EstimateResult("cbpe", k, {"accuracy": MetricEstimate(k / 1e6, 0.0, 1.0)}))


def test_readers_never_see_parts_of_two_runs(app: Any) -> None:
    """A publisher stores and serves run after run while readers take /drift and /metrics: every response holds
    one run's parts only (the run's number is in its window, its quality rows, its estimate and its time)."""
    job = app.state.job
    runs = RunStore(app.state.db, "1")
    stop = threading.Event()
    mixed: list[str] = []
    seen: set[int] = set()

    def publish() -> None:
        k = 100
        while not stop.is_set():
            k += 1
            drift, quality, report, estimate = numbered_run(k)
            runs.save(drift, quality, report, created_at=float(k), estimate=estimate)
            job.serve_newest(force=True)

    def read(client: TestClient) -> None:
        while not stop.is_set():
            body = client.get("/drift").json()
            if body["result"] is not None:
                parts = {body["result"]["window_rows"], body["quality"]["rows"], body["estimated_quality"]["rows"],
                         int(body["job"]["last_success"])}
                seen.update(parts)
                if len(parts) > 1:
                    mixed.append(f"/drift: {sorted(parts)}")
            metrics = parse_metrics(client.get("/metrics").text)
            window = sample(metrics, "model_drift_window_rows")
            if window is not None:
                parts = {int(window), int(sample(metrics, "model_quality_window_rows") or -1),
                         int(sample(metrics, "model_drift_job_last_success_timestamp_seconds") or -1),
                         round((sample(metrics, "model_quality_estimated", metric="accuracy") or -1) * 1e6)}
                if len(parts) > 1:
                    mixed.append(f"/metrics: {sorted(parts)}")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads change hands often: a reader between two stores would be caught
    try:
        with TestClient(app) as client:
            threads = [threading.Thread(target=publish)] + [threading.Thread(target=read, args=(client,))
                                                             for _ in range(3)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while len(seen) < 60 and time.monotonic() < deadline and not mixed:
                time.sleep(0.1)
            stop.set()
            for t in threads:
                t.join(10)
    finally:
        sys.setswitchinterval(switch)
    assert not mixed, mixed[:5]
    assert len(seen) >= 20, f"too few runs read to tell: {len(seen)}"


def test_a_tick_publishes_its_run_once_without_reading_it_back(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = app.state.job
    loads: list[int] = []
    original = job.runs.load
    monkeypatch.setattr(job.runs, "load", lambda run_id: loads.append(run_id) or original(run_id))
    with TestClient(app) as client:
        client.post("/predict/batch", json={"records": [GOOD] * 20})
        flush(client)
        job.tick()
        published = job.published
        assert published.run_id == job.runs.newest_id() and published.drift is not None
        assert published.drift.window_rows == 20
        job.serve_newest(force=True)  # a request after the tick finds it serves the newest already
        assert client.get("/drift").json()["result"]["window_rows"] == 20
    assert loads == []
    assert job.published is published


def _store_document(app: Any, doc: str, created_at: float) -> int:
    with app.state.db.engine.begin() as conn:
        key = conn.execute(insert(runs_table).values(model_version="1", created_at=created_at, result=doc,
                                                     report=None)).inserted_primary_key
    return int(key[0])  # type: ignore[index]


def test_an_unreadable_stored_run_is_counted_warned_once_and_the_last_one_kept(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    job = app.state.job
    with TestClient(app) as client:
        client.post("/predict/batch", json={"records": [GOOD] * 20})
        flush(client)
        job.tick()
        good = job.published
        bad = _store_document(app, '{"drift": {"computed_at": "not JSON of a run"', time.time())
        with caplog.at_level(logging.WARNING, logger="exporter.drift_job"):
            for _ in range(3):
                job.serve_newest(force=True)
                metrics = parse_metrics(client.get("/metrics").text)
        warnings = [r.getMessage() for r in caplog.records if f"drift run {bad}" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert sample(metrics, "model_drift_runs_unreadable_total") == 1
        assert job.published.drift is good.drift and sample(metrics, "model_drift_window_rows") == 20
        job.tick()  # a newer run that can be read is served again
        assert job.published.run_id is not None and job.published.run_id > bad


def test_runs_stored_by_an_older_or_a_newer_version_read_back(app: Any) -> None:
    """A rolling upgrade: a run stored before fields existed, and one stored with fields this version lacks."""
    drift, quality, _, estimate = numbered_run(7)
    doc = {"drift": dataclasses.asdict(drift), "quality": dataclasses.asdict(quality),
           "estimate": dataclasses.asdict(estimate), "report": None}
    older = json.loads(json.dumps(doc))
    del older["drift"]["multivariate"], older["drift"]["features"]["bill_length_mm"]["error"], older["estimate"]
    del older["drift"]["segments"]
    newer = json.loads(json.dumps(doc))
    newer["drift"]["heatmap"] = {"island=Dream": {}}
    newer["drift"]["features"]["bill_length_mm"]["shap_value"] = 0.3
    newer["quality"]["by_segment"] = {}
    newer["future_part"] = [1, 2]
    job = app.state.job
    with TestClient(app):
        for version in (older, newer):
            run_id = _store_document(app, json.dumps(version), 7.0)
            job.serve_newest(force=True)
            assert job.published.run_id == run_id
            assert job.published.drift == drift and job.published.quality == quality
            assert job.published.stats.unreadable_runs == 0
        assert job.published.estimate == estimate
        with app.state.db.engine.connect() as conn:
            assert len(conn.execute(select(runs_table.c.id)).all()) == 2
