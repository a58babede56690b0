"""Labels that are accepted must be stored or counted: strict regression labels, all-or-nothing feedback batches,
label losses exported as ``model_feedback_dropped_total``, 503 (not 500) while the database is down, and a model
version that fits the predictions table.

Every request goes through a real ``exporter serve`` process. Database outages stop a private PostgreSQL server
(tests/pg_private.py), never the shared one; "nothing listens on this port" stands in for a database that never
comes up.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
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
from tests.helpers import config_folder, deep_update, free_port, live_server, sample, wait_until
from tests.pg_private import PrivatePostgres


# -- helpers ----------------------------------------------------------------------------------------------------
def regression_config(folder: Path, **changes: Any) -> tuple[Path, list[dict[str, float]]]:
    """A Ridge pipeline on scikit-learn's diabetes data, its config (``changes`` merged in) and some feature rows."""
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
        "drift": {"interval_seconds": 60, "report": False},
    }
    deep_update(config, changes)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, data[features].head(20).to_dict("records")


def labels_in_table(database_url: str) -> dict[str, str | None]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            t = predictions_table.c
            return {r.request_id: r.label for r in conn.execute(select(t.request_id, t.label))}
    finally:
        engine.dispose()


def names_field(resp: httpx.Response, *loc: Any) -> bool:
    """Whether the 422 names the field at ``loc`` (a union type adds the member it tried after it)."""
    return any(item["loc"][:len(loc)] == list(loc) for item in resp.json()["detail"])


def nothing_listens() -> str:
    """A PostgreSQL URL on a loopback port where no server listens: connections are refused at once."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/absent"


# -- regression labels ------------------------------------------------------------------------------------------
def test_regression_label_must_be_a_finite_number(tmp_path: Path) -> None:
    config, rows = regression_config(tmp_path)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
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
        assert sample(server.metrics(), "model_feedback_total") == 0

        assert http.post("/feedback", json={"request_id": ids[0], "label": 3}).status_code == 202
        fb = http.post("/feedback/batch", json={"labels": [{"request_id": ids[1], "label": 2.5},
                                                           {"request_id": ids[2], "label": -7.25}]})
        assert fb.status_code == 202, fb.text
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0
                                  and sample(m, "model_feedback_total") == 3 else None, timeout=20)
        assert sample(metrics, "model_feedback_dropped_total") == 0
    stored = labels_in_table(f"sqlite:///{tmp_path / 'log.db'}")
    assert {rid: stored[rid] for rid in ids} == {ids[0]: "3.0", ids[1]: "2.5", ids[2]: "-7.25"}


def test_classification_label_refuses_nan_and_infinity(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"interval_seconds": 60, "report": False})
    records, _ = Traffic("none", seed=3).records(2)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": records}).json()["predictions"]]
        for bad in ("NaN", "Infinity", "-Infinity"):
            one = http.post("/feedback", content=f'{{"request_id": "{ids[0]}", "label": {bad}}}',
                            headers={"content-type": "application/json"})
            assert one.status_code == 422 and names_field(one, "body", "label"), (bad, one.text)
            batch = http.post("/feedback/batch",
                              content=f'{{"labels": [{{"request_id": "{ids[1]}", "label": {bad}}}]}}',
                              headers={"content-type": "application/json"})
            assert batch.status_code == 422 and names_field(batch, "body", "labels", 0, "label"), (bad, batch.text)
        assert sample(server.metrics(), "model_feedback_total") == 0


# -- accepted labels that cannot be stored are counted ----------------------------------------------------------
def test_labels_accepted_but_not_stored_are_exported_as_dropped(tmp_path: Path) -> None:
    # Batches of exactly three items and no timed flush: which items share an INSERT/UPDATE is fixed by the test.
    config, rows = regression_config(tmp_path, prediction_log={"batch_size": 3, "flush_interval_seconds": 60})
    poison = {**rows[1], "age": 0.0123456789}
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
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
        server.wait_for(lambda m: sample(m, "model_prediction_log_dropped_total") == 1, timeout=20)

        assert http.post("/feedback", json={"request_id": good, "label": 666}).status_code == 202  # refused
        assert http.post("/feedback", json={"request_id": good, "label": 100}).status_code == 202
        http.post("/predict", json=rows[2])  # the third item of the batch
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0
                                  and sample(m, "model_prediction_log_written_total") == 2 else None, timeout=20)
        assert sample(metrics, "model_feedback_total") == 3
        assert sample(metrics, "model_feedback_dropped_total") == 2
        assert sample(metrics, "model_prediction_log_dropped_total") == 1
        exposition = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert "# TYPE model_feedback_dropped_total counter" in exposition
    stored = labels_in_table(f"sqlite:///{tmp_path / 'log.db'}")
    assert refused not in stored and stored[good] == "100.0"
    assert "label row refused by the database" in server.log()


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


def test_labels_still_queued_when_the_shutdown_flush_times_out_are_logged_as_labels(
    demo_dir: Path, tmp_path: Path
) -> None:
    config = config_folder(demo_dir, tmp_path, database_url=nothing_listens(),
                           drift={"interval_seconds": 60, "report": False},
                           prediction_log={"shutdown_timeout_seconds": 1})
    records, truth = Traffic("none", seed=4).records(3)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        answers = http.post("/predict/batch", json={"records": records}).json()["predictions"]
        labels = [{"request_id": a["request_id"], "label": y} for a, y in zip(answers[:2], truth[:2], strict=True)]
        assert http.post("/feedback/batch", json={"labels": labels}).status_code == 202  # the predictions are queued
        metrics = server.metrics()
        assert sample(metrics, "model_prediction_log_queue_rows") == 5
        assert sample(metrics, "model_feedback_total") == 2
        assert sample(metrics, "model_feedback_dropped_total") == 0
    assert server.proc is not None and server.proc.returncode in (0, -15), server.log()[-3000:]
    assert "3 prediction rows and 2 labels could not be written before shutdown" in server.log(), server.log()[-3000:]


# -- a feedback batch is queued entirely or not at all ----------------------------------------------------------
def test_feedback_batch_that_does_not_fit_is_refused_whole(pg: PrivatePostgres, demo_dir: Path, tmp_path: Path) -> None:
    database_url = pg.create_database()
    # Room for 10 items: the queue, plus the one item the writer holds while it retries (batch_size 1).
    config = config_folder(demo_dir, tmp_path, database_url=database_url,
                           drift={"interval_seconds": 60, "report": False},
                           prediction_log={"queue_size": 10, "batch_size": 1}, max_batch_records=10)
    records, _ = Traffic("none", seed=6).records(8)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=15) as http:
        pg.stop("fast")
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": records}).json()["predictions"]]
        assert len(ids) == 8
        # 8 predictions buffered leave 2 or 3 free places (3 once the writer holds one): 4 labels cannot fit.
        refused = http.post("/feedback/batch", json={"labels": [{"request_id": i, "label": "Adelie"} for i in ids[:4]]})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
        metrics = server.metrics()
        assert sample(metrics, "model_prediction_log_queue_rows") == 8, "a refused batch must queue nothing"
        assert sample(metrics, "model_feedback_total") == 0
        assert sample(metrics, "model_feedback_dropped_total") == 0, "the client was told to retry: nothing was lost"
        accepted = http.post(
            "/feedback/batch", json={"labels": [{"request_id": i, "label": "Gentoo"} for i in ids[4:6]]}
        )
        assert accepted.status_code == 202, accepted.text
        pg.start()
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0
                                  and sample(m, "model_prediction_log_written_total") == 8 else None, timeout=30)
        assert sample(metrics, "model_feedback_total") == 2
        assert sample(metrics, "model_feedback_dropped_total") == 0
    stored = labels_in_table(database_url)
    assert stored == {**{i: None for i in ids}, ids[4]: '"Gentoo"', ids[5]: '"Gentoo"'}


# -- model.version and PostgreSQL's column lengths --------------------------------------------------------------
def test_model_version_of_64_characters_is_stored_on_postgres(
    postgres_url: str, demo_dir: Path, tmp_path: Path
) -> None:
    version = "2024-06-01-" + "x" * 53
    assert len(version) == 64
    config = config_folder(demo_dir, tmp_path, database_url=postgres_url, model={"version": version},
                           drift={"interval_seconds": 60, "report": False})
    records, _ = Traffic("none", seed=8).records(2)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        answers = http.post("/predict/batch", json={"records": records}).json()["predictions"]
        assert [a["model_version"] for a in answers] == [version, version]
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_written_total") == 2 else None,
                                  timeout=20)
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


@pytest.mark.parametrize("via", ["file", "environment"])
def test_model_version_over_64_characters_is_refused_at_start(via: str, demo_dir: Path, tmp_path: Path) -> None:
    version = "v" * 65
    if via == "file":
        config, env = config_folder(demo_dir, tmp_path, model={"version": version}), {}
    else:
        config, env = config_folder(demo_dir, tmp_path), {"EXPORTER_MODEL__VERSION": version}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"`exporter serve` started with a {len(version)}-character model.version:\n{err[-2000:]}")
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exporter: error:"), err
    assert "model.version" in lines[0] and "64" in lines[0], lines[0]
    assert "Traceback" not in err + out


# -- /feedback while the database is down -----------------------------------------------------------------------
def test_feedback_while_the_database_is_down_answers_503(pg: PrivatePostgres, demo_dir: Path, tmp_path: Path) -> None:
    database_url = pg.create_database()
    config = config_folder(
        demo_dir, tmp_path, database_url=database_url, drift={"interval_seconds": 60, "report": False}
    )
    traffic = Traffic("none", seed=2)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=15) as http:
        records, truth = traffic.records(3)
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": records}).json()["predictions"]]
        server.wait_for(lambda m: sample(m, "model_prediction_log_written_total") == 3, timeout=20)
        one = {"request_id": ids[0], "label": truth[0]}
        batch = {"labels": [{"request_id": i, "label": y} for i, y in zip(ids[1:], truth[1:], strict=True)]}

        pg.stop("fast")
        predicted_during = 0
        for _ in range(3):
            for path, body in (("/feedback", one), ("/feedback/batch", batch)):
                resp = http.post(path, json=body)
                assert resp.status_code == 503, (path, resp.status_code, resp.text)
                assert int(resp.headers["retry-after"]) > 0
                assert "database" in resp.json()["detail"]
            resp = http.post("/predict", json=traffic.records(1)[0][0])
            assert resp.status_code == 200, resp.text
            predicted_during += 1
        metrics = server.metrics()
        assert sample(metrics, "model_feedback_total") == 0
        assert sample(metrics, "model_prediction_log_queue_rows") == predicted_during, "no label may be queued"

        pg.start()
        first = wait_until(lambda: (r := http.post("/feedback", json=one)).status_code == 202 and r, 20,
                           what="/feedback accepted again")
        assert first.json() == {"accepted": 1}
        again = http.post("/feedback/batch", json=batch)
        assert again.status_code == 202, again.text
        assert http.post("/predict", json=traffic.records(1)[0][0]).status_code == 200
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0
                                  and sample(m, "model_prediction_log_written_total") == 3 + predicted_during + 1
                                  else None, timeout=30)
        assert sample(metrics, "model_feedback_total") == 3
        assert sample(metrics, "model_feedback_dropped_total") == 0
        assert sample(metrics, "model_prediction_log_dropped_total") == 0
    stored = labels_in_table(database_url)
    assert {i: stored[i] for i in ids} == {i: f'"{y}"' for i, y in zip(ids, truth, strict=True)}
    log = server.log()
    assert log.count("request_id lookup failed") == 1, log[-3000:]
    serving = log.split("Shutting down")[0]
    assert "Traceback" not in serving, serving[-3000:]
