"""Drift job faults: whatever the window holds, the other features are published and failures are visible."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import exporter.drift as drift_module
from exporter.app import create_app
from exporter.config import load_settings
from tests.helpers import GOOD, config_folder, flush, parse_metrics, sample


@pytest.fixture
def client(demo_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = config_folder(demo_dir, tmp_path, drift={"min_rows": 20, "isolation": "thread"})
    with TestClient(create_app(load_settings(config), start_scheduler=False)) as c:
        yield c


def run(client: TestClient) -> tuple[dict[Any, float], dict[str, Any]]:
    flush(client)
    client.app.state.job.tick()  # type: ignore[attr-defined]
    return parse_metrics(client.get("/metrics").text), client.get("/drift").json()


def test_empty_window_and_under_min_rows_publish_the_size_only(client: TestClient) -> None:
    metrics, body = run(client)
    assert sample(metrics, "model_drift_window_rows") == 0
    assert "window has 0 rows" in body["result"]["skipped_reason"]
    assert not [k for k in metrics if k[0] == "model_feature_drift_score"]
    client.post("/predict/batch", json={"records": [GOOD] * 5})
    metrics, _ = run(client)
    assert sample(metrics, "model_drift_window_rows") == 5
    assert sample(metrics, "model_drift_job_failures_total") == 0
    assert sample(metrics, "model_drift_job_last_success_timestamp_seconds") > 0  # type: ignore[operator]


def test_constant_all_missing_and_unseen_columns(client: TestClient) -> None:
    records = [{**GOOD, "bill_length_mm": 40.0 + i % 7, "island": "Atlantis" if i % 2 else "Dream",
                "sex": None} for i in range(60)]   # body_mass_g, flipper constant; sex all missing
    assert client.post("/predict/batch", json={"records": records}).status_code == 200
    metrics, body = run(client)
    features = body["result"]["features"]
    assert features["sex"]["error"] and features["sex"]["detected"] is None
    assert sample(metrics, "model_feature_drift_error", feature="sex") == 1
    assert sample(metrics, "model_feature_drift_detected", feature="sex") is None  # absent, reason in /drift
    assert sample(metrics, "model_feature_missing_share", feature="sex") == 1.0
    assert sample(metrics, "model_feature_unseen_share", feature="island") == 0.5
    for name in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island"):
        assert sample(metrics, "model_feature_drift_detected", feature=name) is not None, name
        assert sample(metrics, "model_feature_drift_error", feature=name) == 0
    assert sample(metrics, "model_feature_drift_detected", feature="island") == 1
    assert sample(metrics, "model_dataset_drift_share") is not None


def test_exception_in_one_feature_leaves_the_others(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    original = drift_module.run_test

    def broken(ref: Any, cur: Any, *args: Any) -> Any:
        if ref.values.name == "flipper_length_mm":
            raise RuntimeError("stat test exploded")
        return original(ref, cur, *args)

    monkeypatch.setattr(drift_module, "run_test", broken)
    client.post("/predict/batch", json={"records": [GOOD] * 30})
    metrics, body = run(client)
    assert "stat test exploded" in body["result"]["features"]["flipper_length_mm"]["error"]
    assert sample(metrics, "model_feature_drift_error", feature="flipper_length_mm") == 1
    assert sample(metrics, "model_feature_drift_score", feature="flipper_length_mm", feature_type="numerical",
                  stat_test="ks") is None
    assert sample(metrics, "model_feature_drift_score", feature="bill_length_mm", feature_type="numerical",
                  stat_test="ks") is not None
    assert sample(metrics, "model_drift_job_failures_total") == 0  # the run itself succeeded


def test_failed_run_keeps_last_success_and_counts(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client.post("/predict/batch", json={"records": [GOOD] * 30})
    metrics, _ = run(client)
    last_success = sample(metrics, "model_drift_job_last_success_timestamp_seconds")
    job = client.app.state.job  # type: ignore[attr-defined]
    monkeypatch.setattr(job.runner.store, "window", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    metrics, body = run(client)
    assert sample(metrics, "model_drift_job_failures_total") == 1
    assert sample(metrics, "model_drift_job_runs_total") == 2
    assert sample(metrics, "model_drift_job_last_success_timestamp_seconds") == last_success
    assert "disk gone" in body["job"]["last_error"]
    # the previous result stays published until a run succeeds again
    assert sample(metrics, "model_drift_window_rows") == 30
    monkeypatch.undo()
    metrics, body = run(client)
    assert sample(metrics, "model_drift_job_failures_total") == 1 and body["job"]["last_error"] is None
