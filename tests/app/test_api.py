"""Routes in-process (TestClient runs the app's lifespan: writer thread, real SQLite file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import GOOD, app_client, config_folder, flush, parse_metrics, quiet, sample, table_rows


@pytest.fixture
def client(demo_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The demo app without a scheduler (a test runs the drift job itself), a report or reference-rule refits."""
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"min_rows": 5}))
    with app_client(config) as c:
        yield c


@pytest.fixture
def reporting_client(demo_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The same, building the HTML report that /monitoring serves."""
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"min_rows": 5, "report": True}))
    with app_client(config) as c:
        yield c


def test_predict_classification_with_probabilities(client: TestClient) -> None:
    resp = client.post("/predict", json=GOOD)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["prediction"] == "Adelie"
    assert set(body["probabilities"]) == {"Adelie", "Chinstrap", "Gentoo"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["model_version"] == "1" and len(body["request_id"]) == 32
    flush(client)
    assert table_rows(client) == 1


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"bill_length_mm": None}, "bill_length_mm", "float_type"),       # required feature null
        ({"island": None}, "island", "string_type"),
        ({"bill_length_mm": "39.1"}, "bill_length_mm", "float_type"),     # string in a numeric field
        ({"bill_length_mm": True}, "bill_length_mm", "float_type"),
        ({"island": 3}, "island", "string_type"),
        ({"colour": "blue"}, "colour", "extra_forbidden"),                 # unknown feature
    ],
)
def test_bad_record_is_422_naming_the_field_and_not_logged(
    client: TestClient, change: dict[str, object], field: str, kind: str
) -> None:
    resp = client.post("/predict", json={**GOOD, **change})
    assert resp.status_code == 422
    errors = resp.json()["detail"]
    assert any(e["loc"][-1] == field and e["type"] == kind for e in errors), errors
    flush(client)
    assert table_rows(client) == 0
    assert client.app.state.service.predictions_total == 0  # type: ignore[attr-defined]


def test_missing_required_feature_and_nullable_feature(client: TestClient) -> None:
    record = dict(GOOD)
    del record["flipper_length_mm"]
    resp = client.post("/predict", json=record)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "flipper_length_mm"]
    assert resp.json()["detail"][0]["type"] == "missing"
    # bill_depth_mm and sex are nullable in the demo config: null or absent is accepted
    ok = client.post("/predict", json={**GOOD, "bill_depth_mm": None, "sex": None})
    assert ok.status_code == 200, ok.text
    absent = {k: v for k, v in GOOD.items() if k not in ("sex",)}
    assert client.post("/predict", json=absent).status_code == 200


def test_non_finite_number_rejected(client: TestClient) -> None:
    resp = client.post(
        "/predict", content=b'{"bill_length_mm": NaN, "bill_depth_mm": 18.7, "flipper_length_mm": 181, '
        b'"body_mass_g": 3750, "island": "Torgersen", "sex": "male"}', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422


def test_batch_counts_rows_and_rejects_whole_bad_batch(client: TestClient) -> None:
    resp = client.post("/predict/batch", json={"records": [GOOD] * 5})
    assert resp.status_code == 200
    assert len(resp.json()["predictions"]) == 5
    bad = client.post("/predict/batch", json={"records": [GOOD, {**GOOD, "island": 1}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "records", 1, "island"]
    too_many = client.post("/predict/batch", json={"records": [GOOD] * 1001})
    assert too_many.status_code == 422
    flush(client)
    assert table_rows(client) == 5
    metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_predictions_total") == 5
    assert sample(metrics, "model_prediction_log_written_total") == 5
    assert sample(metrics, "model_prediction_log_dropped_total") == 0
    assert sample(metrics, "model_prediction_log_queue_rows") == 0


def test_metrics_info_http_and_no_drift_before_first_run(client: TestClient) -> None:
    client.post("/predict", json=GOOD)
    text = client.get("/metrics").text
    metrics = parse_metrics(text)
    reference_hash = client.app.state.job.spec.reference.hash  # type: ignore[attr-defined]
    assert sample(metrics, "model_info", name="penguins", version="1", reference_hash=reference_hash) == 1
    assert sample(metrics, "http_requests_total", handler="/predict", method="POST", status="2xx") == 1
    assert "model_feature_drift_score" not in text  # no run yet: nothing stale or invented
    assert sample(metrics, "model_drift_job_last_success_timestamp_seconds") == 0


def test_drift_run_publishes_and_monitoring_serves_gzip_report(reporting_client: TestClient) -> None:
    client = reporting_client
    page = client.get("/monitoring")
    assert page.status_code == 200 and "No drift report yet" in page.text
    client.post("/predict/batch", json={"records": [GOOD] * 20})
    flush(client)
    client.app.state.job.tick()  # type: ignore[attr-defined]
    metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_drift_window_rows") == 20
    assert sample(metrics, "model_drift_job_runs_total") == 1
    assert sample(metrics, "model_drift_job_failures_total") == 0
    drift = client.get("/drift").json()
    assert drift["result"]["window_rows"] == 20
    # 20 copies of one record: bill_length_mm is 39.1 in every row, a point mass where the 333 reference rows spread
    # from 32 to 60 mm. The K-S distance to the reference is about 0.8, a p-value far below any threshold: drifted,
    # in the gauge and in /drift alike.
    bill_length = drift["result"]["features"]["bill_length_mm"]
    assert bill_length["stat_test"] == "ks" and bill_length["detected"] is True, bill_length
    assert sample(metrics, "model_feature_drift_detected", feature="bill_length_mm") == 1.0
    assert drift["result"]["features"]["island"]["stat_test"]
    mv = drift["result"]["multivariate"]
    assert mv["method"] == "classifier" and mv["rows"] == 20
    assert sample(metrics, "model_multivariate_drift_score", method="classifier") == mv["score"]
    assert sample(metrics, "model_multivariate_drift_threshold", method="classifier") == mv["threshold"]
    assert sample(metrics, "model_multivariate_drift_detected") == (1.0 if mv["score"] >= mv["threshold"] else 0.0)
    raw = client.get("/monitoring", headers={"accept-encoding": "gzip"})
    assert raw.status_code == 200
    assert raw.headers["content-encoding"] == "gzip"
    assert "bill_length_mm" in raw.text  # httpx decodes gzip
    assert len(raw.content) > 10_000


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"model": True, "reference": True, "database": True}


def test_openapi_names_every_feature(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    props = spec["components"]["schemas"]["PredictionRecord"]["properties"]
    assert set(props) == set(GOOD)


def test_cached_drift_text_equals_a_fresh_collection_and_follows_new_runs(client: TestClient) -> None:
    from prometheus_client import generate_latest

    from exporter.metrics import Families, drift_families

    job = client.app.state.job  # type: ignore[attr-defined]
    client.post("/predict/batch", json={"records": [GOOD] * 20})
    flush(client)
    job.tick()

    def fresh() -> str:
        return generate_latest(Families(drift_families(job.published.drift))).decode()

    def drift_samples(text: str) -> dict[object, float]:
        return {k: v for k, v in parse_metrics(text).items()
                if k[0].startswith(("model_feature_", "model_dataset_", "model_prediction_drift", "model_drift_window",
                                     "model_multivariate_")) and k[0] != "model_dataset_drift_share_threshold"}

    served = drift_samples(client.get("/metrics").text)
    assert served == drift_samples(fresh()) and len(served) > 30
    first = job.published.drift
    client.post("/predict/batch", json={"records": [{**GOOD, "island": "Dream"}] * 20})
    flush(client)
    job.tick()
    assert job.published.drift is not first
    again = drift_samples(client.get("/metrics").text)
    assert sample(again, "model_drift_window_rows") == 40
    assert again == drift_samples(fresh())


def test_a_long_label_is_refused_without_echoing_it_whole(client: TestClient) -> None:
    rid = client.post("/predict", json=GOOD).json()["request_id"]
    resp = client.post("/feedback", json={"request_id": rid, "label": "Adelie" * 20_000})
    assert resp.status_code == 422
    assert any(e["type"] == "string_too_long" for e in resp.json()["detail"]), resp.text
    assert len(resp.content) < 2_000  # the 120 000-character label is named by its start and length only
    not_a_class = client.post("/feedback", json={"request_id": rid, "label": "Emperor" * 30})
    assert not_a_class.status_code == 422 and len(not_a_class.content) < 1_000
    assert client.post("/feedback", json={"request_id": rid, "label": "Adelie"}).status_code == 202
