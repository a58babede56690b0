"""Labels that are accepted must be stored or counted: strict regression labels, label losses exported as
``model_feedback_dropped_total``, left-over labels at shutdown counted apart, and a model version that fits the
predictions table.

Every request goes to the app in the test's process (TestClient: its lifespan runs the writer thread over a real
database). What needs a process (database outages, a shutdown flush that times out, the CLI refusing a model
version) is in tests/process/test_feedback_process.py.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import yaml
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import create_engine, select

from exporter.db import Database, predictions_table
from exporter.demo import Traffic
from exporter.prediction_log import PredictionLog
from exporter.store import LabelUpdate, PredictionRow, PredictionStore
from tests.helpers import (
    NO_JOB,
    app_client,
    config_folder,
    deep_update,
    flush,
    labels_in_table,
    parse_metrics,
    quiet,
    sample,
    wait_until,
)


# -- helpers (tests/process/test_feedback_process.py imports labels_in_table) ---------------------------------------
def regression_config(folder: Path, **changes: Any) -> tuple[Path, list[dict[str, float]]]:
    """A Ridge pipeline on scikit-learn's diabetes data, its config (``changes`` merged in) and some feature rows.
    No drift job to wait for, no report, no reference-rule refits (NO_JOB): these tests are about labels."""
    data = load_diabetes(as_frame=True).frame
    features = [c for c in data.columns if c != "target"]
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(make_pipeline(StandardScaler(), Ridge()).fit(data[features], data["target"]), folder / "ridge.joblib")
    data.to_csv(folder / "reference.csv", index=False)
    config: dict[str, Any] = {
        "model": {"path": "ridge.joblib", "name": "diabetes", "version": "1", "task": "regression"},
        "reference": {"path": "reference.csv"},
        "features": {"numerical": features},
        "target": "target",
        "database_url": "sqlite:///log.db",
    }
    deep_update(config, quiet(**changes))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, data[features].head(20).to_dict("records")


def names_field(resp: httpx.Response, *loc: Any) -> bool:
    """Whether the 422 names the field at ``loc`` (a union type adds the member it tried after it)."""
    return any(item["loc"][:len(loc)] == list(loc) for item in resp.json()["detail"])


def scrape(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(client.get("/metrics").text)


def scraped_until(client: Any, predicate: Any, what: str, timeout: float = 20) -> Any:
    """Scrape /metrics until ``predicate(metrics)`` holds; the metrics that satisfied it."""
    return wait_until(lambda: m if predicate(m := scrape(client)) else None, timeout, what=what, interval=0.05)


# -- regression labels ------------------------------------------------------------------------------------------
def test_regression_label_must_be_a_finite_number(tmp_path: Path) -> None:
    config, rows = regression_config(tmp_path)
    with app_client(config) as http:
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": rows[:3]}).json()["predictions"]]
        for bad in ("NaN", "Infinity", "-Infinity", '"2.5"', "true", "false", "null", '"high"', "[1.5]"):
            # Python's json (the server's parser) reads NaN and Infinity, so send the body as raw text.
            one = http.post("/feedback", content=f'{{"request_id": "{ids[0]}", "label": {bad}}}',
                            headers={"content-type": "application/json"})
            assert one.status_code == 422, (bad, one.text)
            assert names_field(one, "body", "label"), (bad, one.text)
            batch = http.post(
                "/feedback/batch",
                content=f'{{"labels": [{{"request_id": "{ids[1]}", "label": 1.5}}, '
                        f'{{"request_id": "{ids[2]}", "label": {bad}}}]}}',
                headers={"content-type": "application/json"},
            )
            assert batch.status_code == 422, (bad, batch.text)
            assert names_field(batch, "body", "labels", 1, "label"), (bad, batch.text)
        assert sample(scrape(http), "model_feedback_total") == 0

        assert http.post("/feedback", json={"request_id": ids[0], "label": 3}).status_code == 202
        fb = http.post("/feedback/batch", json={"labels": [{"request_id": ids[1], "label": 2.5},
                                                           {"request_id": ids[2], "label": -7.25}]})
        assert fb.status_code == 202, fb.text
        flush(http)
        metrics = scrape(http)
        assert sample(metrics, "model_prediction_log_queue_rows") == 0
        assert sample(metrics, "model_feedback_total") == 3
        assert sample(metrics, "model_feedback_dropped_total") == 0
    stored = labels_in_table(f"sqlite:///{tmp_path / 'log.db'}")
    assert {rid: stored[rid] for rid in ids} == {ids[0]: "3.0", ids[1]: "2.5", ids[2]: "-7.25"}


def test_classification_label_refuses_nan_and_infinity(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, **NO_JOB)
    records, _ = Traffic("none", seed=3).records(2)
    with app_client(config) as http:
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": records}).json()["predictions"]]
        for bad in ("NaN", "Infinity", "-Infinity"):
            one = http.post("/feedback", content=f'{{"request_id": "{ids[0]}", "label": {bad}}}',
                            headers={"content-type": "application/json"})
            assert one.status_code == 422 and names_field(one, "body", "label"), (bad, one.text)
            batch = http.post("/feedback/batch",
                              content=f'{{"labels": [{{"request_id": "{ids[1]}", "label": {bad}}}]}}',
                              headers={"content-type": "application/json"})
            assert batch.status_code == 422 and names_field(batch, "body", "labels", 0, "label"), (bad, batch.text)
        assert sample(scrape(http), "model_feedback_total") == 0


# -- accepted labels that cannot be stored are counted ----------------------------------------------------------
def test_labels_accepted_but_not_stored_are_exported_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Batches of exactly three items and no timed flush: which items share an INSERT/UPDATE is fixed by the test.
    config, rows = regression_config(tmp_path, prediction_log={"batch_size": 3, "flush_interval_seconds": 60})
    poison = {**rows[1], "age": 0.0123456789}
    with caplog.at_level(logging.ERROR, logger="exporter.prediction_log"), app_client(config) as http:
        # The database refuses one prediction row and one label value (real triggers on the real file).
        with sqlite3.connect(tmp_path / "log.db") as db:
            db.execute("CREATE TRIGGER refuse_row BEFORE INSERT ON predictions "
                       "WHEN NEW.features LIKE '%0.0123456789%' BEGIN SELECT RAISE(ABORT, 'row refused'); END")
            db.execute("CREATE TRIGGER refuse_label BEFORE UPDATE OF label ON predictions "
                       "WHEN NEW.label = '666.0' BEGIN SELECT RAISE(ABORT, 'label refused'); END")
        good = http.post("/predict", json=rows[0]).json()["request_id"]
        refused = http.post("/predict", json=poison).json()["request_id"]
        # Accepted while its prediction is still queued; the prediction is then refused, so the label is lost.
        assert http.post("/feedback", json={"request_id": refused, "label": 10.0}).status_code == 202
        scraped_until(http, lambda m: sample(m, "model_prediction_log_dropped_total") == 1, "the refused row dropped")

        assert http.post("/feedback", json={"request_id": good, "label": 666}).status_code == 202  # refused
        assert http.post("/feedback", json={"request_id": good, "label": 100}).status_code == 202
        http.post("/predict", json=rows[2])  # the third item of the batch
        metrics = scraped_until(http, lambda m: sample(m, "model_prediction_log_queue_rows") == 0
                                and sample(m, "model_prediction_log_written_total") == 2, "the last batch written")
        assert sample(metrics, "model_feedback_total") == 3
        assert sample(metrics, "model_feedback_dropped_total") == 2
        assert sample(metrics, "model_prediction_log_dropped_total") == 1
        assert "# TYPE model_feedback_dropped_total counter" in http.get("/metrics").text
    stored = labels_in_table(f"sqlite:///{tmp_path / 'log.db'}")
    assert refused not in stored and stored[good] == "100.0"
    assert "label row refused by the database" in caplog.text


def test_left_over_rows_and_labels_at_shutdown_are_counted_apart(tmp_path: Path) -> None:
    store = PredictionStore(Database(f"sqlite:///{tmp_path / 'log.db'}"))
    log = PredictionLog(store, queue_size=10)  # writer not started: everything is still queued at stop()
    rows = [PredictionRow(f"id{i}", time.time(), "1", {"a": 1.0}, "A", None) for i in range(3)]
    assert log.enqueue(rows) == 0
    assert log.enqueue_labels([LabelUpdate("id0", "B", time.time()), LabelUpdate("id1", "A", time.time())])
    assert not log.enqueue_labels([LabelUpdate(f"id{i % 3}", "B", time.time()) for i in range(6)])  # 5 free places
    assert log.queued == 5
    log.stop(timeout=1.0)
    assert (log.written, log.dropped, log.labels_dropped) == (0, 3, 2)


# -- model.version and PostgreSQL's column lengths --------------------------------------------------------------
def test_model_version_of_64_characters_is_stored_on_postgres(
    postgres_url: str, demo_dir: Path, tmp_path: Path
) -> None:
    version = "2024-06-01-" + "x" * 53
    assert len(version) == 64
    config = config_folder(demo_dir, tmp_path, **quiet(database_url=postgres_url, model={"version": version}))
    records, _ = Traffic("none", seed=8).records(2)
    with app_client(config) as http:
        answers = http.post("/predict/batch", json={"records": records}).json()["predictions"]
        assert [a["model_version"] for a in answers] == [version, version]
        flush(http)
        metrics = scrape(http)
        assert sample(metrics, "model_prediction_log_written_total") == 2
        assert sample(metrics, "model_prediction_log_dropped_total") == 0
        assert [dict(labels)["version"] for name, labels in metrics if name == "model_info"] == [version]
        # The longest request_id /feedback allows is longer than the column: an unknown id, not a database error.
        assert http.post("/feedback", json={"request_id": "a" * 64, "label": "Adelie"}).status_code == 404
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            t = predictions_table.c
            stored = dict(conn.execute(select(t.request_id, t.model_version)).all())
    finally:
        engine.dispose()
    assert stored == {a["request_id"]: version for a in answers}
