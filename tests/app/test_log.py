"""Monitor-only: predictions of a model served elsewhere, through /log and /log/batch, in process (TestClient, a
real SQLite file, the drift job ticked by hand)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.helpers import (
    NO_JOB,
    app_client,
    config_folder,
    deep_update,
    drift_run,
    flush,
    parse_metrics,
    sample,
    stored_rows,
)

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]


def monitor(demo_dir: Path, tmp_path: Path, **changes: Any) -> Path:
    return config_folder(demo_dir, tmp_path, "monitor.yaml", **deep_update(
        {"drift": {"window_size": 400, "min_rows": 100, "isolation": "thread", "report": False,
                   "interval_seconds": 3600}}, changes))


@pytest.fixture
def client(demo_dir: Path, tmp_path: Path) -> Iterator[Any]:
    with app_client(monitor(demo_dir, tmp_path)) as c:
        yield c


def served_elsewhere(demo_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the model's own server would log for ``records``: its prediction and probabilities."""
    model = joblib.load(demo_dir / "model.joblib")
    frame = pd.DataFrame.from_records(records, columns=NUMERICAL + CATEGORICAL)
    predicted = model.predict(frame)
    probabilities = model.predict_proba(frame)
    return [
        {"features": record, "prediction": str(p), "probabilities": dict(zip(CLASSES, map(float, row), strict=True))}
        for record, p, row in zip(records, predicted, probabilities, strict=True)
    ]


def test_monitor_only_serves_no_predict_route(client: Any) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/log", "/log/batch"} <= paths
    assert not {"/predict", "/predict/batch"} & paths
    record = Traffic("none", seed=1).records(1)[0][0]
    assert client.post("/predict", json=record).status_code in (404, 405)
    assert client.get("/readyz").json()["checks"] == {"model": True, "reference": True, "database": True}


def test_with_a_model_predict_and_log_work_side_by_side(demo_dir: Path, tmp_path: Path) -> None:
    with app_client(config_folder(demo_dir, tmp_path, **NO_JOB)) as client:
        record = Traffic("none", seed=2).records(1)[0][0]
        predicted = client.post("/predict", json=record).json()
        logged = client.post("/log", json={"features": record, "prediction": "Gentoo", "request_id": "mine-1"})
        assert logged.status_code == 202 and logged.json() == {"request_id": "mine-1"}
        rows = stored_rows(client)
        assert set(rows) == {predicted["request_id"], "mine-1"}
        assert json.loads(rows["mine-1"]["prediction"]) == "Gentoo"
        metrics = parse_metrics(client.get("/metrics").text)
        assert sample(metrics, "model_predictions_total") == 2
        assert sample(metrics, "model_log_records_total", outcome="accepted") == 1


def test_logged_rows_are_stored_as_sent(client: Any, demo_dir: Path) -> None:
    records = served_elsewhere(demo_dir, Traffic("none", seed=3).records(5)[0])
    at = datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
    one = client.post("/log", json={**records[0], "request_id": "order-17", "timestamp": at.isoformat()})
    assert one.status_code == 202 and one.json() == {"request_id": "order-17"}
    batch = client.post("/log/batch", json={"records": [records[1], {**records[2], "request_id": "order-18"},
                                                        *records[3:]]})
    assert batch.status_code == 202
    ids = batch.json()["request_ids"]
    assert len(ids) == 4 and ids[1] == "order-18" and len(set(ids)) == 4
    rows = stored_rows(client)
    assert set(rows) == {"order-17", *ids}
    for rid, sent in zip(["order-17", *ids], records, strict=True):
        row = rows[rid]
        assert json.loads(row["features"]) == {**dict.fromkeys(NUMERICAL + CATEGORICAL), **sent["features"]}
        assert json.loads(row["prediction"]) == sent["prediction"]
        assert json.loads(row["probabilities"]) == pytest.approx(sent["probabilities"])
        assert row["model_version"] == "1"
    assert rows["order-17"]["created_at"] == pytest.approx(at.timestamp())  # an old timestamp is kept: backfills
    assert abs(rows[ids[0]]["created_at"] - datetime.now(UTC).timestamp()) < 60  # none given: now
    metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_predictions_total") == 5
    assert sample(metrics, "model_log_records_total", outcome="accepted") == 5


def test_a_request_id_logged_again_is_ignored_and_counted(client: Any, demo_dir: Path) -> None:
    first, second = served_elsewhere(demo_dir, Traffic("none", seed=4).records(2)[0])
    assert client.post("/log", json={**first, "request_id": "a"}).status_code == 202
    # Again while still queued, then once written, then twice within one batch beside a new one.
    assert client.post("/log", json={**second, "request_id": "a"}).json() == {"request_id": "a"}
    flush(client)
    assert client.post("/log", json={**second, "request_id": "a"}).status_code == 202
    batch = client.post("/log/batch", json={"records": [{**second, "request_id": "b"}, {**second, "request_id": "b"},
                                                        {**second, "request_id": "a"}]})
    assert batch.status_code == 202 and batch.json() == {"request_ids": ["b", "b", "a"]}
    rows = stored_rows(client)
    assert set(rows) == {"a", "b"}
    assert json.loads(rows["a"]["features"])["bill_length_mm"] == first["features"]["bill_length_mm"]  # the first kept
    metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_log_records_total", outcome="accepted") == 2
    assert sample(metrics, "model_log_records_total", outcome="duplicate") == 4
    assert sample(metrics, "model_predictions_total") == 2


GOOD_PROBABILITIES = {"Adelie": 0.7, "Chinstrap": 0.2, "Gentoo": 0.1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"features": {"island": 3}}, "valid string", id="wrong-feature-type"),
        pytest.param({"features": {"bill_length_mm": "39.1"}}, "valid number", id="number-as-text"),
        pytest.param({"features": {"beak": 1.0}}, "Extra inputs", id="unknown-feature"),
        pytest.param({"prediction": "Emperor"}, "not among the model's classes", id="not-a-class"),
        pytest.param({"probabilities": {"Adelie": 0.7, "Chinstrap": 0.2, "Gentoo": 0.2}}, "sum to 1",
                     id="probabilities-sum"),
        pytest.param({"probabilities": {"Adelie": 0.9, "Gentoo": 0.1}}, "as keys", id="probabilities-keys"),
        pytest.param({"probabilities": {"Adelie": 1.5, "Chinstrap": -0.5, "Gentoo": 0.0}}, "[0, 1]",
                     id="probabilities-range"),
        pytest.param({"timestamp": "+future"}, "in the future", id="future-timestamp"),
        pytest.param({"timestamp": "2026-01-02T03:04:05"}, "timezone", id="timestamp-without-offset"),
        pytest.param({"request_id": "x" * 101}, "at most 100", id="request-id-too-long"),
        pytest.param({"request_id": ""}, "at least 1", id="request-id-empty"),
    ],
)
def test_bad_records_are_refused_and_nothing_of_their_batch_is_logged(
    client: Any, demo_dir: Path, change: dict[str, Any], message: str
) -> None:
    good = [{**r, "probabilities": GOOD_PROBABILITIES, "prediction": "Adelie"}
            for r in served_elsewhere(demo_dir, Traffic("none", seed=5).records(3)[0])]
    bad = {**good[1], **change, "features": {**good[1]["features"], **change.get("features", {})}}
    if change.get("timestamp") == "+future":
        bad["timestamp"] = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    one = client.post("/log", json=bad)
    batch = client.post("/log/batch", json={"records": [good[0], bad, good[2]]})
    for resp in (one, batch):
        assert resp.status_code == 422, resp.text
        assert message in resp.text, resp.text
    assert batch.json()["detail"][0]["loc"][:3] == ["body", "records", 1]  # names the record
    assert stored_rows(client) == {}
    metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_log_records_total", outcome="refused") == 4
    assert sample(metrics, "model_predictions_total") == 0


def test_drift_quality_and_estimate_of_logged_predictions(client: Any, demo_dir: Path) -> None:
    """Fresh rows of the reference's population: no drift; shifted rows: drift. Labels by the caller's ids give
    realized quality; the logged probabilities give an estimate that holds against it."""
    records, labels = Traffic("none", seed=6).records(400)
    logged = [{**r, "request_id": f"calm-{i}"} for i, r in enumerate(served_elsewhere(demo_dir, records))]
    assert client.post("/log/batch", json={"records": logged}).status_code == 202
    feedback = [{"request_id": f"calm-{i}", "label": label} for i, label in enumerate(labels)]
    assert client.post("/feedback/batch", json={"labels": feedback}).status_code == 202
    calm = drift_run(client)
    assert sample(calm, "model_drift_window_rows") == 400
    assert sample(calm, "model_dataset_drift_detected") == 0
    assert sample(calm, "model_feature_drift_detected", feature="bill_length_mm") == 0
    realized = sample(calm, "model_quality", metric="accuracy")
    estimated = sample(calm, "model_quality_estimated", metric="accuracy")
    lower = sample(calm, "model_quality_estimated_lower", metric="accuracy")
    upper = sample(calm, "model_quality_estimated_upper", metric="accuracy")
    assert realized is not None and estimated is not None and lower is not None and upper is not None
    assert lower <= realized <= upper, (lower, realized, upper)
    assert realized > 0.9

    shifted, _ = Traffic("shift", seed=7).records(400)
    assert client.post("/log/batch", json={"records": served_elsewhere(demo_dir, shifted)}).status_code == 202
    moved = drift_run(client)
    assert sample(moved, "model_feature_drift_detected", feature="bill_length_mm") == 1
    assert sample(moved, "model_drift_window_rows") == 400


def test_without_probability_columns_estimation_is_off_and_says_so(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = monitor(demo_dir, tmp_path)
    text = config.read_text().replace("probability_columns:", "probability_columns_off:")
    import yaml

    settings = yaml.safe_load(config.read_text())
    del settings["reference"]["probability_columns"]
    config.write_text(yaml.safe_dump(settings))
    assert "probability_columns_off" in text
    with caplog.at_level("WARNING"), app_client(config) as client:
        assert client.app.state.parts.estimation is None
    assert "quality estimation off" in caplog.text and "reference.probability_columns" in caplog.text


def test_a_regression_model_served_elsewhere(tmp_path: Path) -> None:
    """Regression: the prediction is a finite number, probabilities are refused; drift and the DLE estimate run."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes(as_frame=True).frame
    features = [c for c in data.columns if c != "target"]
    reference, live = data.iloc[:250].copy(), data.iloc[250:]
    model = Ridge().fit(data[features], data["target"])  # served elsewhere; here only to make its answers
    reference["predicted"] = model.predict(reference[features])
    reference.to_csv(tmp_path / "reference.csv", index=False)
    (tmp_path / "config.yaml").write_text(json.dumps({
        "model": {"name": "diabetes", "task": "regression"},
        "reference": {"path": "reference.csv", "prediction_column": "predicted"},
        "features": {"numerical": features}, "target": "target",
        "database_url": "sqlite:///predictions.db",
        "drift": {"window_size": 200, "min_rows": 100, "isolation": "thread", "report": False,
                  "interval_seconds": 3600},
    }))
    with app_client(tmp_path / "config.yaml") as client:
        rows = live.iloc[:150]
        batch = [{"features": {f: float(r[f]) for f in features}, "prediction": float(p)}
                 for (_, r), p in zip(rows.iterrows(), model.predict(rows[features]), strict=True)]
        assert client.post("/log/batch", json={"records": batch}).status_code == 202
        refused = [client.post("/log", json={**batch[0], "prediction": "high"}),
                   client.post("/log", json={**batch[0], "probabilities": {"high": 1.0}})]
        assert [r.status_code for r in refused] == [422, 422]
        assert "for classification models" in refused[1].text
        metrics = drift_run(client)
        assert sample(metrics, "model_drift_window_rows") == 150
        assert sample(metrics, "model_quality_estimated", metric="mae") is not None
        assert sample(metrics, "model_prediction_drift_score", stat_test=dict(next(
            labels for (name, labels), _ in metrics.items() if name == "model_prediction_drift_score"))["stat_test"])


def test_log_takes_the_bearer_token_and_the_batch_limit_of_the_api(demo_dir: Path, tmp_path: Path) -> None:
    config = monitor(demo_dir, tmp_path, auth={"token": "s3cret"}, max_batch_records=3)
    with app_client(config) as client:
        record = {"features": Traffic("none", seed=8).records(1)[0][0], "prediction": "Adelie"}
        assert client.post("/log", json=record).status_code == 401
        authorized = {"Authorization": "Bearer s3cret"}
        assert client.post("/log", json=record, headers=authorized).status_code == 202
        too_many = client.post("/log/batch", json={"records": [record] * 4}, headers=authorized)
        assert too_many.status_code == 422 and "at most 3" in too_many.text


def test_an_older_postgresql_table_gets_the_longer_request_id(postgres_url: str) -> None:
    """Tables made before /log held 36-character ids (a UUID); a caller's id with ":<i>" needs more."""
    from sqlalchemy import text

    from exporter.db import REQUEST_ID_LENGTH, Database

    db = Database(postgres_url)
    try:
        db.ensure_schema()
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE predictions ALTER COLUMN request_id TYPE VARCHAR(36)"))
        db.schema_ready = False
        db.ensure_schema()
        with db.engine.connect() as conn:
            length = conn.execute(text("SELECT character_maximum_length FROM information_schema.columns "
                                       "WHERE table_name = 'predictions' AND column_name = 'request_id'")).scalar()
        assert length == REQUEST_ID_LENGTH
    finally:
        db.dispose()
