"""Monitor-only end to end, with real processes: `exporter serve` on a config without a model (on PostgreSQL, its
drift job in its worker process), fed through every way in: /log, /log/batch, the Python client, and
/log/cloudevents as KServe (V1 and V2) and Seldon Core send them, in binary and structured mode.

The events' headers are those the loggers send (tests/fixtures/inference_events, read from their source).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import joblib
import pandas as pd
from sqlalchemy import create_engine, select

from exporter.client import PredictionLogger
from exporter.db import predictions_table
from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.helpers import config_folder, live_server, sample, wait_until

FEATURES = NUMERICAL + CATEGORICAL
CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
WINDOW = 600


class ServedElsewhere:
    """The demo model as another server runs it: what it answers for records."""

    def __init__(self, demo_dir: Path) -> None:
        self.model = joblib.load(demo_dir / "model.joblib")

    def answer(self, records: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, float]]]:
        frame = pd.DataFrame.from_records(records, columns=FEATURES)
        probabilities = [dict(zip(CLASSES, map(float, row), strict=True)) for row in self.model.predict_proba(frame)]
        return [str(p) for p in self.model.predict(frame)], probabilities


def kserve(kind: str, ce_id: str, body: dict[str, Any], structured: bool = False) -> tuple[dict[str, str], bytes]:
    """A KServe logger event (pkg/logger): the request and its response share the ce-id."""
    attributes = {"specversion": "1.0", "id": ce_id, "source": "http://localhost:9081/",
                  "type": f"org.kubeflow.serving.inference.{kind}", "time": datetime.now(UTC).isoformat(),
                  "component": "predictor", "endpoint": "default", "inferenceservicename": "penguins",
                  "namespace": "models"}
    return _event(attributes, body, structured)


def seldon(kind: str, request_id: str, body: dict[str, Any], structured: bool = False) -> tuple[dict[str, str], bytes]:
    """A Seldon Core executor logger event: a fresh ce-id each, the pair shares ce-requestid (the Seldon-Puid)."""
    attributes = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "http://:8000/",
                  "type": f"io.seldon.serving.inference.{kind}", "time": datetime.now(UTC).isoformat(),
                  "modelid": "classifier", "requestid": request_id, "inferenceservicename": "penguins",
                  "namespace": "seldon", "endpoint": "default", "protocol": "seldon"}
    return _event(attributes, body, structured)


def _event(attributes: dict[str, str], body: dict[str, Any], structured: bool) -> tuple[dict[str, str], bytes]:
    if structured:
        return ({"content-type": "application/cloudevents+json"},
                json.dumps({**attributes, "datacontenttype": "application/json", "data": body}).encode())
    return ({"content-type": "application/json", **{f"ce-{k}": v for k, v in attributes.items()}},
            json.dumps(body).encode())


def v2_request(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One V2 tensor per feature (named inputs): FP64 numbers, BYTES categories."""
    return {"inputs": [
        {"name": f, "shape": [len(records)], "datatype": "FP64" if f in NUMERICAL else "BYTES",
         "data": [r[f] for r in records]} for f in FEATURES]}


def test_every_way_in_logs_the_rows_sent_and_drift_quality_and_estimates_follow(
    demo_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    config = config_folder(demo_dir, tmp_path, "monitor.yaml", database_url=postgres_url,
                           drift={"window_size": WINDOW, "min_rows": 100, "interval_seconds": 2, "report": False},
                           log={"pair_timeout_seconds": 2})
    model = ServedElsewhere(demo_dir)
    traffic = Traffic("none", seed=31)
    expected: dict[str, tuple[dict[str, Any], str]] = {}  # request_id -> (features, prediction)
    labels: dict[str, str] = {}  # request_id -> true label, for the rows with a caller's id

    def draw(n: int, complete: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """Fresh rows; ``complete``: without missing values (a V2 FP64 or BYTES tensor carries no null)."""
        records, truth = traffic.records(n * 3 if complete else n)
        if complete:
            kept = [(r, t) for r, t in zip(records, truth, strict=True) if all(r.get(f) is not None for f in FEATURES)]
            records, truth = [r for r, _ in kept[:n]], [t for _, t in kept[:n]]
        return records, truth

    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        def post_event(event: tuple[dict[str, str], bytes]) -> dict[str, Any]:
            resp = http.post("/log/cloudevents", headers=event[0], content=event[1])
            assert resp.status_code == 202, resp.text
            return dict(resp.json())

        # /log, one at a time, with the caller's ids
        records, truth = draw(20)
        predictions, probabilities = model.answer(records)
        for i, (record, prediction, proba) in enumerate(zip(records, predictions, probabilities, strict=True)):
            body = {"features": record, "prediction": prediction, "probabilities": proba, "request_id": f"one-{i}"}
            assert http.post("/log", json=body).json() == {"request_id": f"one-{i}"}
            expected[f"one-{i}"], labels[f"one-{i}"] = (record, prediction), truth[i]
        # /log/batch, with the caller's ids
        records, truth = draw(230)
        predictions, probabilities = model.answer(records)
        batch = [{"features": r, "prediction": p, "probabilities": q, "request_id": f"batch-{i}"}
                 for i, (r, p, q) in enumerate(zip(records, predictions, probabilities, strict=True))]
        assert http.post("/log/batch", json={"records": batch}).status_code == 202
        expected.update({f"batch-{i}": (r, p) for i, (r, p) in enumerate(zip(records, predictions, strict=True))})
        labels.update({f"batch-{i}": t for i, t in enumerate(truth)})
        # the Python client, ids made by it
        records, _ = draw(100)
        predictions, probabilities = model.answer(records)
        with PredictionLogger(server.url, batch_size=40) as client:
            for record, prediction, proba in zip(records, predictions, probabilities, strict=True):
                expected[client.log(record, prediction, proba)] = (record, prediction)
        assert (client.sent, client.dropped) == (100, 0)
        # KServe V1 (instances as lists, binary; as objects, structured), the response first for some
        for e in range(10):
            records, _ = draw(5)
            predictions, _ = model.answer(records)
            ce_id, structured = str(uuid.uuid4()), e % 2 == 1
            instances: list[Any] = ([dict(r) for r in records] if structured
                                    else [[r.get(f) for f in FEATURES] for r in records])
            request = kserve("request", ce_id, {"instances": instances}, structured)
            response = kserve("response", ce_id, {"predictions": predictions}, structured)
            first, second = (response, request) if e % 3 == 0 else (request, response)
            assert post_event(first)["status"].startswith("waiting for its")
            assert post_event(second) == {"status": "logged", "request_ids": [f"{ce_id}:{i}" for i in range(5)]}
            expected.update({f"{ce_id}:{i}": (r, p) for i, (r, p) in enumerate(zip(records, predictions, strict=True))})
        # KServe V2 (one tensor per feature), binary and structured; one instance gives the ce-id itself
        for e in range(10):
            n = 1 if e == 0 else 5
            records, _ = draw(n, complete=True)
            predictions, _ = model.answer(records)
            ce_id, structured = str(uuid.uuid4()), e % 2 == 1
            post_event(kserve("request", ce_id, v2_request(records), structured))
            answer = post_event(kserve("response", ce_id, {"model_name": "penguins", "outputs": [
                {"name": "predict", "shape": [n], "datatype": "BYTES", "data": predictions}]}, structured))
            ids = [ce_id] if n == 1 else [f"{ce_id}:{i}" for i in range(n)]
            assert answer["request_ids"] == ids
            expected.update({rid: (r, p) for rid, r, p in zip(ids, records, predictions, strict=True)})
            v2_last = (ce_id, predictions)
        # Seldon Core: SeldonMessage with names, paired by ce-requestid
        for e in range(10):
            records, _ = draw(5)
            predictions, _ = model.answer(records)
            puid, structured = str(uuid.uuid4()), e % 2 == 1
            post_event(seldon("request", puid, {"data": {"names": FEATURES, "ndarray": [
                [r.get(f) for f in FEATURES] for r in records]}}, structured))
            answer = post_event(seldon("response", puid, {"data": {"names": ["species"], "ndarray": [
                [p] for p in predictions]}, "meta": {}}, structured))
            assert answer["request_ids"] == [f"{puid}:{i}" for i in range(5)]
            expected.update({f"{puid}:{i}": (r, p) for i, (r, p) in enumerate(zip(records, predictions, strict=True))})
        total = 20 + 230 + 100 + 50 + 46 + 50
        assert len(expected) == total

        # -- delivered again: ignored and counted; a request alone: expired and counted ----------------------------
        assert http.post("/log/batch", json={"records": batch[:10]}).status_code == 202
        again = kserve("response", v2_last[0], {"model_name": "penguins", "outputs": [
            {"name": "predict", "shape": [5], "datatype": "BYTES", "data": v2_last[1]}]})
        assert post_event(again)["status"] == "duplicate"  # its pair was logged: 5 rows counted duplicate
        lone, _ = draw(2)
        post_event(kserve("request", str(uuid.uuid4()), {"instances": [[r.get(f) for f in FEATURES] for r in lone]}))
        metrics = server.wait_for(
            lambda m: m if sample(m, "model_log_events_total", outcome="unpaired_expired") == 1 else None, timeout=20)

        # -- exactly the rows sent -----------------------------------------------------------------------------------
        wait_until(lambda: sample(server.metrics(), "model_prediction_log_written_total") == total, 20,
                   what="every row written", details=server.log)
        engine = create_engine(postgres_url)
        try:
            with engine.connect() as conn:
                rows = {r.request_id: r for r in conn.execute(select(predictions_table))}
        finally:
            engine.dispose()
        assert set(rows) == set(expected)
        for rid, (record, prediction) in expected.items():
            assert json.loads(rows[rid].prediction) == prediction
            stored = json.loads(rows[rid].features)
            assert stored == {**dict.fromkeys(FEATURES), **record}, rid

        metrics = server.metrics()
        assert sample(metrics, "model_predictions_total") == total
        assert sample(metrics, "model_log_records_total", outcome="accepted") == total
        assert sample(metrics, "model_log_records_total", outcome="duplicate") == 10 + 5
        assert sample(metrics, "model_log_records_total", outcome="refused") == 0
        assert sample(metrics, "model_log_events_total", outcome="paired") == 2 * 30
        assert sample(metrics, "model_log_events_total", outcome="unparsable") == 0

        # -- fresh rows of the reference's population: no drift; labels by the caller's ids: realized quality ----
        assert http.post("/feedback/batch", json={"labels": [
            {"request_id": rid, "label": label} for rid, label in labels.items()]}).status_code == 202
        written = wait_until(lambda: sample(server.metrics(), "model_drift_job_last_success_timestamp_seconds"), 60,
                             what="a drift run")
        calm = server.wait_for(lambda m: m if (sample(m, "model_drift_job_last_success_timestamp_seconds") or 0)
                               > written and sample(m, "model_quality_window_rows") == len(labels) else None)
        assert sample(calm, "model_drift_window_rows") == total
        assert sample(calm, "model_dataset_drift_detected") == 0
        assert sample(calm, "model_feature_drift_detected", feature="bill_length_mm") == 0
        realized = sample(calm, "model_quality", metric="accuracy")
        estimated = sample(calm, "model_quality_estimated", metric="accuracy")  # from the logged probabilities
        assert realized is not None and estimated is not None
        assert realized > 0.9 and abs(estimated - realized) < 0.05, (estimated, realized)

        # -- shifted rows: drift ---------------------------------------------------------------------------------
        shifted, _ = Traffic("shift", seed=32).records(WINDOW)
        predictions, probabilities = model.answer(shifted)
        assert http.post("/log/batch", json={"records": [
            {"features": r, "prediction": p, "probabilities": q}
            for r, p, q in zip(shifted, predictions, probabilities, strict=True)]}).status_code == 202
        moved = server.wait_for(
            lambda m: m if sample(m, "model_feature_drift_detected", feature="bill_length_mm") == 1 else None,
            timeout=60)
        assert sample(moved, "model_drift_window_rows") == WINDOW
        assert sample(moved, "model_feature_drift_detected", feature="island") == 0
