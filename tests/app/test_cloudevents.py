"""/log/cloudevents in process: what is refused (and that nothing of it is logged), V2 probabilities, and pairs
whose halves reach two processes of one deployment (two apps on one database file)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.helpers import app_client, config_folder, flush, parse_metrics, sample, table_rows

FEATURES = NUMERICAL + CATEGORICAL
NO_JOB = {"drift": {"interval_seconds": 3600, "report": False, "isolation": "thread"}}


def event(kind: str, ce_id: str, body: Any, **headers: str) -> dict[str, Any]:
    return {"headers": {"ce-specversion": "1.0", "ce-id": ce_id, "ce-source": "http://localhost:9081/",
                        "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-component": "predictor",
                        "content-type": "application/json", **headers},
            "content": body if isinstance(body, bytes) else json.dumps(body).encode()}


def complete_records(n: int, seed: int) -> list[dict[str, Any]]:
    records = Traffic("none", seed=seed).records(4 * n)[0]
    return [r for r in records if all(r.get(f) is not None for f in FEATURES)][:n]


@pytest.fixture
def client(demo_dir: Path, tmp_path: Path) -> Iterator[Any]:
    config = config_folder(demo_dir, tmp_path, "monitor.yaml", **NO_JOB,
                           log={"prediction_output": "predict", "probabilities_output": "predict_proba"})
    with app_client(config) as c:
        yield c


def lists(records: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r.get(f) for f in FEATURES] for r in records]


@pytest.mark.parametrize(
    ("request_body", "response_body", "status", "message"),
    [
        pytest.param({"instances": [[1.0, 2.0]]}, None, 422, "6", id="width-not-input-columns"),
        pytest.param({"instances": [[39.1, 18.7, 181, 3750, 3, "male"]]}, None, 422, "island",
                     id="wrong-feature-type"),
        pytest.param({"inputs": [{"name": "x", "shape": [2, 6], "datatype": "FP64", "data": [1.0] * 11}]}, None,
                     422, "shape", id="malformed-tensor"),
        pytest.param({"inputs": [{"name": "x", "shape": [1], "datatype": "COMPLEX", "data": [1]}]}, None, 422,
                     "datatype", id="unknown-datatype"),
        pytest.param(b"not json", None, 400, "JSON", id="body-not-json"),
        pytest.param(None, {"outputs": [{"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["Emperor"]},
                                        {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64",
                                         "data": [0.2, 0.3, 0.5]}]}, 422, "not among the model's classes",
                     id="prediction-not-a-class"),
        pytest.param(None, {"outputs": [{"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["Adelie"]},
                                        {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64",
                                         "data": [0.2, 0.3, 0.6]}]}, 422, "sum to 1", id="probabilities-sum"),
        pytest.param(None, {"outputs": [{"name": "scores", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
                     422, "predict", id="output-not-found"),
    ],
)
def test_a_bad_half_is_refused_on_arrival_and_nothing_is_logged(
    client: Any, request_body: Any, response_body: Any, status: int, message: str
) -> None:
    kind, body = ("request", request_body) if request_body is not None else ("response", response_body)
    resp = client.post("/log/cloudevents", **event(kind, "e-1", body))
    assert resp.status_code == status and message in resp.json()["detail"], resp.text
    # Its partner, good, then waits alone: the refused half was not kept.
    partner_kind = "response" if kind == "request" else "request"
    partner = ({"instances": lists(complete_records(1, 1))} if partner_kind == "request" else
               {"outputs": [{"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["Adelie"]},
                            {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": [0.7, 0.2, 0.1]}]})
    assert client.post("/log/cloudevents", **event(partner_kind, "e-1", partner)).json()["status"].startswith("waiting")
    flush(client)
    assert table_rows(client) == 0
    metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_log_events_total", outcome="unparsable") == 1
    assert sample(metrics, "model_log_events_total", outcome="paired") == 0


@pytest.mark.parametrize(
    ("headers", "content", "message"),
    [
        pytest.param({"ce-type": "com.example.order.created"}, None, "unknown event type", id="unknown-type"),
        pytest.param({"ce-specversion": None}, None, "specversion", id="no-specversion"),
        pytest.param({"ce-id": None, "ce-type": None, "ce-specversion": None, "ce-source": None, "ce-component": None},
                     None, "not a CloudEvent", id="plain-json"),
    ],
)
def test_what_is_not_a_payload_logger_event_is_a_400(client: Any, headers: dict[str, str | None],
                                                     content: bytes | None, message: str) -> None:
    sent = event("request", "e-2", {"instances": lists(complete_records(1, 2))})
    sent["headers"] = {k: v for k, v in {**sent["headers"], **headers}.items() if v is not None}
    resp = client.post("/log/cloudevents", **sent)
    assert resp.status_code == 400 and message in resp.json()["detail"], resp.text
    assert sample(parse_metrics(client.get("/metrics").text), "model_log_events_total", outcome="unparsable") == 1


def test_a_request_and_response_that_do_not_match_are_refused(client: Any) -> None:
    records = complete_records(3, 3)
    assert client.post("/log/cloudevents", **event("request", "e-3", {"instances": lists(records)})).status_code == 202
    response = {"outputs": [{"name": "predict", "shape": [2], "datatype": "BYTES", "data": ["Adelie", "Gentoo"]},
                            {"name": "predict_proba", "shape": [2, 3], "datatype": "FP64",
                             "data": [0.7, 0.2, 0.1, 0.1, 0.1, 0.8]}]}
    resp = client.post("/log/cloudevents", **event("response", "e-3", response))
    assert resp.status_code == 422 and "3 instances" in resp.json()["detail"], resp.text
    flush(client)
    assert table_rows(client) == 0


def test_v2_probabilities_are_logged_in_the_order_of_the_classes(client: Any) -> None:
    records = complete_records(2, 4)
    client.post("/log/cloudevents", **event("request", "e-4", {"instances": [dict(r) for r in records]}))
    response = {"outputs": [{"name": "predict_proba", "shape": [2, 3], "datatype": "FP64",
                             "data": [0.7, 0.2, 0.1, 0.05, 0.15, 0.8]},
                            {"name": "predict", "shape": [2], "datatype": "BYTES", "data": ["Adelie", "Gentoo"]}]}
    answer = client.post("/log/cloudevents", **event("response", "e-4", response)).json()
    assert answer == {"status": "logged", "request_ids": ["e-4:0", "e-4:1"]}
    flush(client)
    log = client.app.state.prediction_log.store
    window = log.window(10, outcomes=("probabilities", "label"))
    assert window["prediction"].tolist() == ["Adelie", "Gentoo"]
    assert window["probabilities"].tolist() == [{"Adelie": 0.7, "Chinstrap": 0.2, "Gentoo": 0.1},
                                                {"Adelie": 0.05, "Chinstrap": 0.15, "Gentoo": 0.8}]


def test_halves_reaching_two_processes_are_paired_once(demo_dir: Path, tmp_path: Path) -> None:
    """The request reaches one process of the deployment, the response another: the database pairs them."""
    config = config_folder(demo_dir, tmp_path, "monitor.yaml", **NO_JOB)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(app_client(config))
        second = stack.enter_context(app_client(config))
        for e in range(20):
            records = complete_records(2, 10 + e)
            request = event("request", f"p-{e}", {"instances": lists(records)})
            response = event("response", f"p-{e}", {"predictions": ["Adelie", "Chinstrap"]})
            a, b = (first, second) if e % 2 else (second, first)
            assert a.post("/log/cloudevents", **request).json()["status"] == "waiting for its response"
            assert b.post("/log/cloudevents", **response).json()["status"] == "logged"
        flush(first)
        flush(second)
        assert table_rows(first) == 40
        assert first.app.state.intake.pairs.waiting() == 0
        paired = [sample(parse_metrics(c.get("/metrics").text), "model_log_events_total", outcome="paired")
                  for c in (first, second)]
        assert sum(p or 0 for p in paired) == 40  # 20 pairs of two events, each counted by the process pairing it


def test_a_half_whose_partner_never_comes_expires_and_is_counted(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_folder(demo_dir, tmp_path, "monitor.yaml", **NO_JOB, log={"pair_timeout_seconds": 60})
    with app_client(config) as client:
        client.post("/log/cloudevents", **event("request", "lonely", {"instances": lists(complete_records(1, 5))}))
        intake = client.app.state.intake
        intake.expire()  # within the timeout: kept
        assert intake.pairs.waiting() == 1
        later = time.time() + 61
        monkeypatch.setattr(intake, "clock", lambda: later)
        intake.expire()
        assert intake.pairs.waiting() == 0
        metrics = parse_metrics(client.get("/metrics").text)
        assert sample(metrics, "model_log_events_total", outcome="unpaired_expired") == 1
        # Its response arriving late waits alone in turn: no rows from a half that was dropped.
        client.post("/log/cloudevents", **event("response", "lonely", {"predictions": ["Adelie"]}))
        flush(client)
        assert table_rows(client) == 0


def test_a_pair_refused_for_a_full_queue_is_kept_for_the_senders_retry(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = complete_records(2, 6)
    response = {"outputs": [{"name": "predict", "shape": [2], "datatype": "BYTES", "data": ["Adelie", "Gentoo"]},
                            {"name": "predict_proba", "shape": [2, 3], "datatype": "FP64",
                             "data": [0.7, 0.2, 0.1, 0.05, 0.15, 0.8]}]}
    client.post("/log/cloudevents", **event("request", "full-1", {"instances": lists(records)}))
    log = client.app.state.prediction_log
    monkeypatch.setattr(log, "enqueue_all", lambda rows: False)  # the queue has no room for the pair
    refused = client.post("/log/cloudevents", **event("response", "full-1", response))
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert client.app.state.intake.pairs.waiting() == 2  # both halves kept, neither lost
    monkeypatch.undo()
    retried = client.post("/log/cloudevents", **event("response", "full-1", response))  # the logger retries
    assert retried.json() == {"status": "logged", "request_ids": ["full-1:0", "full-1:1"]}
    flush(client)
    assert table_rows(client) == 2 and client.app.state.intake.pairs.waiting() == 0
