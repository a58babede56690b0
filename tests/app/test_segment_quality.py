"""Quality per segment through the app: predictions from /predict/batch, labels from /feedback/batch, one drift
run; model_segment_quality is scikit-learn's metric on the same rows of each segment, and the segments' estimates
and reference baselines are published beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from exporter.demo import Traffic
from tests.helpers import app_client, config_folder, drift_run, flush, quiet, sample


def test_realized_quality_per_segment_is_scikit_learns_on_its_rows(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, **quiet(drift={"min_rows": 20, "window_size": 400,
                                                               "segments": ["island"], "segment_min_rows": 30}))
    records, species = Traffic("none", seed=5).records(400)
    with app_client(config) as client:
        answer = client.post("/predict/batch", json={"records": records})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        flush(client)
        # a label for 3 rows in 4: the labelled window is not the drift window
        labels = [{"request_id": p["request_id"], "label": s}
                  for i, (p, s) in enumerate(zip(predictions, species, strict=True)) if i % 4]
        assert client.post("/feedback/batch", json={"labels": labels}).status_code == 202
        metrics = drift_run(client)
    by_island: dict[str, tuple[list[str], list[str]]] = {}
    for i, (record, p, s) in enumerate(zip(records, predictions, species, strict=True)):
        if i % 4:
            by_island.setdefault(record["island"], ([], []))[0].append(s)
            by_island[record["island"]][1].append(p["prediction"])
    judged = 0
    for island, (truth, predicted) in by_island.items():
        got = sample(metrics, "model_segment_quality", segment_by="island", segment=island, metric="accuracy")
        if len(truth) < 30:
            assert got is None, island  # too few labelled rows: no value rather than a noisy one
            continue
        judged += 1
        assert got == pytest.approx(accuracy_score(truth, predicted)), island
        assert sample(metrics, "model_segment_quality", segment_by="island", segment=island,
                      metric="f1_macro") == pytest.approx(f1_score(truth, predicted, average="macro")), island
        assert sample(metrics, "model_segment_quality_reference", segment_by="island", segment=island,
                      metric="accuracy") is not None
        estimated = sample(metrics, "model_segment_quality_estimated", segment_by="island", segment=island,
                           metric="accuracy")
        low = sample(metrics, "model_segment_quality_estimated_lower", segment_by="island", segment=island,
                     metric="accuracy")
        high = sample(metrics, "model_segment_quality_estimated_upper", segment_by="island", segment=island,
                      metric="accuracy")
        assert estimated is not None and low is not None and high is not None and low <= estimated <= high
    assert judged >= 2

