"""Ground truth in process: labels in, model quality out; missing values per feature.

The app runs in the test's process (TestClient, real SQLite file); the test writes the log out and runs the drift
job itself, so each assertion reads the run that saw every label."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from exporter.demo import CATEGORICAL, NULLABLE, NUMERICAL, Traffic
from tests.helpers import app_client, config_folder, flush, parse_metrics, quiet, sample


def test_quality_equals_what_was_sent_and_labels_are_idempotent(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"window_size": 1000, "min_rows": 50}))
    traffic = Traffic("none", seed=5)
    with app_client(config) as client:
        records, truth = traffic.records(300)
        answers = client.post("/predict/batch", json={"records": records}).json()["predictions"]
        predicted = [a["prediction"] for a in answers]
        # every fourth label deliberately wrong, so accuracy is well below the model's own
        classes = ["Adelie", "Chinstrap", "Gentoo"]
        labels = [t if i % 4 else classes[(classes.index(t) + 1) % 3] for i, t in enumerate(truth)]
        # labels arrive later, in several calls, some of them twice
        for start in range(0, 300, 100):
            body = {"labels": [{"request_id": a["request_id"], "label": y}
                               for a, y in zip(answers[start:start + 100], labels[start:start + 100], strict=True)]}
            assert client.post("/feedback/batch", json=body).status_code == 202
        again = client.post("/feedback", json={"request_id": answers[1]["request_id"], "label": labels[1]})
        assert again.status_code == 202 and again.json() == {"accepted": 1}
        # a different label replaces the first one and is counted
        replaced = "Gentoo" if labels[2] != "Gentoo" else "Adelie"
        assert client.post(
            "/feedback", json={"request_id": answers[2]["request_id"], "label": replaced}
        ).status_code == 202
        labels[2] = replaced

        assert client.post("/feedback", json={"request_id": "0" * 32, "label": "Adelie"}).status_code == 404
        wrong_type = client.post("/feedback", json={"request_id": answers[0]["request_id"], "label": ["Adelie"]})
        assert wrong_type.status_code == 422
        unknown_class = client.post("/feedback", json={"request_id": answers[0]["request_id"], "label": "Emperor"})
        assert unknown_class.status_code == 422 and "Emperor" in unknown_class.text
        mixed = client.post("/feedback/batch", json={"labels": [
            {"request_id": answers[0]["request_id"], "label": "Gentoo"}, {"request_id": "f" * 32, "label": "Adelie"}]})
        assert mixed.status_code == 404 and "f" * 32 in mixed.text

        flush(client)  # every label written, the replaced one included
        client.app.state.job.tick()  # type: ignore[attr-defined]
        metrics = parse_metrics(client.get("/metrics").text)
        assert sample(metrics, "model_drift_job_failures_total") == 0
        assert sample(metrics, "model_quality_window_rows") == 300
        assert sample(metrics, "model_quality", metric="accuracy") == pytest.approx(
            accuracy_score(labels, predicted), abs=1e-12)
        assert sample(metrics, "model_quality", metric="f1_macro") == pytest.approx(
            f1_score(labels, predicted, average="macro"), abs=1e-12)
        assert 0 < sample(metrics, "model_quality", metric="roc_auc") <= 1  # type: ignore[operator]
        assert sample(metrics, "model_quality_reference", metric="accuracy") > 0.95  # type: ignore[operator]
        assert sample(metrics, "model_feedback_replaced_total") == 1
        assert sample(metrics, "model_feedback_total") == 302


def test_missing_scenario_moves_missing_share_of_touched_features_only(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"window_size": 400, "min_rows": 50}))
    traffic = Traffic("missing", seed=8)
    with app_client(config) as client:
        records, _ = traffic.records(400)
        assert client.post("/predict/batch", json={"records": records}).status_code == 200
        expected = {f: sum(r[f] is None for r in records) / 400 for f in NUMERICAL + CATEGORICAL}
        flush(client)
        client.app.state.job.tick()  # type: ignore[attr-defined]
        metrics = parse_metrics(client.get("/metrics").text)
    assert sample(metrics, "model_drift_window_rows") == 400
    for feature, share in expected.items():
        assert sample(metrics, "model_feature_missing_share", feature=feature) == pytest.approx(share)
        if feature in NULLABLE:
            assert 0.2 < share < 0.4
        else:
            assert share == 0
