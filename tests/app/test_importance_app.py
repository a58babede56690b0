"""Feature importance through the app: computed once in the drift job, published with each run."""

from __future__ import annotations

from pathlib import Path

from exporter.demo import Traffic
from tests.helpers import app_client, config_folder, drift_run, quiet


def test_the_served_models_importance_orders_the_features(demo_dir: Path, tmp_path: Path) -> None:
    """With a target, permutation importance of the demo model on its reference: published per feature, /drift
    lists the features most important first."""
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"min_rows": 20}))
    records, _ = Traffic("none", seed=6).records(100)
    with app_client(config) as client:
        assert client.post("/predict/batch", json={"records": records}).status_code == 200
        metrics = drift_run(client)
        features = client.get("/drift").json()["result"]["features"]
    importance = {dict(labels)["feature"]: v for (name, labels), v in metrics.items()
                  if name == "model_feature_importance"}
    assert set(importance) == set(features)
    assert {dict(labels)["method"] for (name, labels) in metrics if name == "model_feature_importance"} == {
        "permutation"}
    listed = [f["importance"] for f in features.values()]
    assert listed == sorted(listed, reverse=True) and listed[0] > 0.05  # the model relies on its best feature
    assert [f for f in features] == sorted(importance, key=lambda f: -importance[f])
