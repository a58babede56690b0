"""Bad input gets a clear 4xx naming the problem and nothing of it is logged; private endpoints need the token.
The app runs in process, without a drift job (quiet()); the streamed body goes over real HTTP (InProcessServer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import GOOD, InProcessServer, app_client, config_folder, flush, quiet, sample, table_rows


@pytest.fixture
def client(demo_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = config_folder(demo_dir, tmp_path, max_batch_records=50, max_body_bytes=20_000, **quiet())
    with app_client(config) as c:
        yield c


def raw(client: TestClient, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (b"", "missing"),                                   # empty body
        (b"{", "json_invalid"),                             # malformed JSON
        (b"[1, 2]", "model_attributes_type"),               # JSON, but not an object
        (json.dumps({**GOOD, "body_mass_g": 1e400}).replace("inf", "Infinity").encode(), "finite_number"),
        (json.dumps(GOOD).replace("3750", "-Infinity").encode(), "finite_number"),
        (json.dumps(GOOD).replace("3750", "NaN").encode(), "finite_number"),
    ],
)
def test_malformed_bodies_are_422_and_not_logged(client: TestClient, body: bytes, expect: str) -> None:
    resp = raw(client, "/predict", body)
    assert resp.status_code == 422, resp.text
    assert expect in resp.text
    resp.json()  # always valid JSON, even when the input held NaN
    flush(client)
    assert table_rows(client) == 0


def test_batch_bounds_and_body_limit(client: TestClient) -> None:
    assert client.post("/predict/batch", json={"records": []}).status_code == 422
    over = client.post("/predict/batch", json={"records": [GOOD] * 51})
    assert over.status_code == 422 and "50" in over.text
    huge = client.post("/predict/batch", json={"records": [GOOD] * 200})  # ~30 kB > max_body_bytes
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["detail"]
    assert client.post("/predict/batch", json={"records": [GOOD] * 50}).status_code == 200
    flush(client)
    assert table_rows(client) == 50


def test_streamed_huge_body_is_cut_off_over_real_http(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, max_body_bytes=100_000, **quiet())

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count what arrives
        yield b'{"records": ['
        for _ in range(2000):
            yield json.dumps(GOOD).encode() + b","
        yield json.dumps(GOOD).encode() + b"]}"

    with InProcessServer(config) as server:
        resp = httpx.post(f"{server.url}/predict/batch", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
        assert resp.status_code == 413
        assert httpx.post(f"{server.url}/predict", json=GOOD, timeout=10).status_code == 200
        flush(server)
        metrics = server.metrics()
        assert sample(metrics, "model_prediction_log_written_total") == 1  # the good request only
        assert sample(metrics, "model_predictions_total") == 1


def test_bearer_token_protects_private_endpoints(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, auth={"token": "s3cret-token", "protect_metrics": True}, **quiet())
    with app_client(config) as client:
        request_id = client.post("/predict", json=GOOD).json()["request_id"]  # /predict stays open
        for method, path, body in [("get", "/drift", None), ("get", "/monitoring", None), ("get", "/metrics", None),
                                   ("post", "/feedback", {"request_id": request_id, "label": "Adelie"})]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
                resp = client.request(method, path, json=body, headers=headers)
                assert resp.status_code == 401, (path, headers)
                assert resp.headers["www-authenticate"] == "Bearer"
            ok = client.request(method, path, json=body, headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code in (200, 202), (path, ok.text)
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_token_from_environment_and_metrics_open_by_default(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORTER_AUTH__TOKEN", "from-env")
    config = config_folder(demo_dir, tmp_path, **quiet())
    with app_client(config) as client:
        assert client.get("/drift").status_code == 401
        assert client.get("/drift", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert client.get("/metrics").status_code == 200
