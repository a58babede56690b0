"""Drift methods and thresholds chosen in the config are the ones a run uses, for the features named and the
prediction, while the other features keep the defaults."""

from __future__ import annotations

from pathlib import Path

from exporter.config import load_settings
from exporter.demo import Traffic
from exporter.drift import MethodOverride
from exporter.startup import build
from tests.helpers import app_client, config_folder, drift_run


def test_valid_methods_are_accepted_and_in_force(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={
        "per_feature": {"bill_length_mm": {"method": "psi"}, "island": {"method": "TVD", "threshold": 0.3}},
        "prediction": {"method": "jensenshannon"}, "window_size": 100, "min_rows": 100,
        "isolation": "thread", "report": False})
    spec = build(load_settings(config)).job_spec()
    assert spec.overrides == {"bill_length_mm": MethodOverride("psi", None), "island": MethodOverride("TVD", 0.3)}
    assert spec.prediction_override == MethodOverride("jensenshannon", None)

    with app_client(config) as client:
        records, _ = Traffic("none", seed=3).records(100)
        assert client.post("/predict/batch", json={"records": records}).status_code == 200
        metrics = drift_run(client)
    tests = {dict(labels)["feature"]: dict(labels)["stat_test"] for (name, labels), _ in metrics.items()
             if name == "model_feature_drift_score"}
    assert tests["bill_length_mm"] == "psi" and tests["island"] == "TVD", tests
    assert tests["bill_depth_mm"] not in ("psi", "TVD"), tests  # not named: the default method
    island = [v for (name, labels), v in metrics.items()
              if name == "model_feature_drift_threshold" and dict(labels)["feature"] == "island"]
    assert island == [0.3]
    predicted = [dict(labels)["stat_test"] for (name, labels), _ in metrics.items()
                 if name == "model_prediction_drift_score"]
    assert predicted == ["jensenshannon"]


def test_the_multivariate_method_in_force_is_the_configured_one(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={
        "multivariate": {"method": "pca_reconstruction"}, "window_size": 200, "min_rows": 100, "isolation": "thread",
        "report": False})
    with app_client(config) as client:
        records, _ = Traffic("none", seed=4).records(200)
        assert client.post("/predict/batch", json={"records": records}).status_code == 200
        metrics = drift_run(client)
        body = client.get("/drift").json()
    methods = [dict(labels)["method"] for (name, labels), _ in metrics.items()
               if name == "model_multivariate_drift_score"]
    assert methods == ["pca_reconstruction"]  # not the default (classifier)
    mv = body["result"]["multivariate"]
    assert mv["method"] == "pca_reconstruction"
    assert 0 < mv["score"] < mv["threshold"]  # a reconstruction error; fresh rows, not flagged
