"""Bring your own model: another dataset, another task, served through a config file alone. The app runs in
process; the drift run is ticked once the rows and labels are written. (A config, model or reference that cannot
be used makes `exporter serve` exit: tests/process/test_startup_errors.py.)"""

from __future__ import annotations

import textwrap
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_diabetes, load_wine
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tests.helpers import app_client, flush, parse_metrics, quiet, sample


def test_regression_pipeline_with_parquet_reference_served(tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True).frame  # ten numerical features and a numeric target
    features = [c for c in data.columns if c != "target"]
    joblib.dump(make_pipeline(StandardScaler(), Ridge()).fit(data[features], data["target"]), tmp_path / "ridge.joblib")
    data.to_parquet(tmp_path / "train.parquet")
    (tmp_path / "config.yaml").write_text(textwrap.dedent(f"""\
        model: {{path: ridge.joblib, name: diabetes, version: "7", task: regression}}
        reference: {{path: train.parquet}}
        features: {{numerical: [{', '.join(features)}]}}
        target: target
        database_url: sqlite:///log.db
        drift: {{window_size: 200, min_rows: 50, interval_seconds: 1}}
    """))
    # the drift job is run here, in this process; no HTML report, no reference rule (nothing here asserts them)
    no_extras = {"drift": {"isolation": "thread", "report": False}, "reference": {"check_held_out": False}}
    with app_client(tmp_path / "config.yaml", **no_extras) as client:
        rows = data[features].head(120).to_dict("records")
        resp = client.post("/predict", json=rows[0])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert isinstance(body["prediction"], float) and "probabilities" not in body
        assert body["model_version"] == "7"
        batch = client.post("/predict/batch", json={"records": rows[1:]}).json()
        ids = [body["request_id"]] + [p["request_id"] for p in batch["predictions"]]
        labels = data["target"].head(120).tolist()
        fb = client.post(
            "/feedback/batch",
            json={"labels": [{"request_id": i, "label": float(y)} for i, y in zip(ids, labels, strict=True)]},
        )
        assert fb.status_code == 202, fb.text
        flush(client)
        client.app.state.job.tick()  # type: ignore[attr-defined]
        metrics = parse_metrics(client.get("/metrics").text)
        assert sample(metrics, "model_drift_window_rows") == 120
        assert sample(metrics, "model_quality_window_rows") == 120
        info = [dict(labels) for (name, labels) in metrics if name == "model_info"]
        assert [(i["name"], i["version"]) for i in info] == [("diabetes", "7")]
        scored = {dict(labels)["feature"]: dict(labels)["stat_test"]
                  for (name, labels) in metrics if name == "model_feature_drift_score"}
        assert set(scored) == set(features)
        assert scored["bmi"] == "ks" and scored["sex"] == "z"  # Evidently's choice: two distinct values -> z-test
        assert sample(metrics, "model_prediction_drift_score", stat_test="ks") is not None
        assert sample(metrics, "model_quality", metric="mae") is not None
        assert sample(metrics, "model_quality_reference", metric="rmse") is not None
        assert sample(metrics, "model_quality", metric="accuracy") is None
        assert client.post("/feedback", json={"request_id": ids[0], "label": "high"}).status_code == 422


def test_classifier_without_predict_proba_and_integer_classes(tmp_path: Path) -> None:
    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns=lambda c: c.replace("/", "_"))
    features = [c for c in frame.columns if c != "target"][:6]
    frame["grade"] = pd.cut(frame["alcohol"], 3, labels=["low", "mid", "high"]).astype(str)
    model = make_pipeline(StandardScaler(), LinearSVC()).fit(frame[features], frame["target"])
    joblib.dump(model, tmp_path / "svc.joblib")
    frame.to_csv(tmp_path / "ref.csv", index=False)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(f"""\
        model: {{path: svc.joblib, name: wine}}
        reference: {{path: ref.csv}}
        features: {{numerical: [{', '.join(features)}]}}
        target: target
        database_url: sqlite:///log.db
    """))
    with app_client(tmp_path / "config.yaml", **quiet()) as client:
        record = frame[features].iloc[0].to_dict()
        resp = client.post("/predict", json=record)
        assert resp.status_code == 200, resp.text
        assert resp.json()["prediction"] == 0 and "probabilities" not in resp.json()
        assert client.post("/feedback", json={"request_id": resp.json()["request_id"], "label": 0}).status_code == 202
        assert client.post("/feedback", json={"request_id": resp.json()["request_id"], "label": 9}).status_code == 422
        assert client.post("/feedback", json={"request_id": "nope", "label": 0}).status_code == 404
        reference = client.get("/drift").json()["quality_reference"]
        assert set(reference) == {"accuracy", "f1_macro"}  # no probabilities: no ROC AUC
