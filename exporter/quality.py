"""Model quality over labelled predictions (and the same metrics on the reference data as a baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn import metrics as skm

from exporter.features import category_text
from exporter.serde import known_fields


@dataclass(frozen=True)
class QualityResult:
    rows: int
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> QualityResult:
        return known_fields(cls, doc)


def classification_quality(
    labels: list[Any], predictions: list[Any], probabilities: list[dict[str, float]] | None, classes: list[Any]
) -> dict[str, float]:
    # One text per class: an integer target read as float (a column with gaps) equals the model's integer classes.
    y_true = [category_text(v) for v in labels]
    y_pred = [category_text(v) for v in predictions]
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    names = [category_text(c) for c in classes]
    present = set(y_true)
    if probabilities is not None and len(present) >= 2 and present <= set(names):
        keys = [str(c) for c in classes]  # the probabilities are keyed as /predict answers them
        scores = np.array([[p.get(k, 0.0) for k in keys] for p in probabilities])
        try:
            if len(names) == 2:
                auc = skm.roc_auc_score([1 if y == names[1] else 0 for y in y_true], scores[:, 1])
            else:
                auc = skm.roc_auc_score(y_true, scores, multi_class="ovr", average="macro", labels=names)
            if math.isfinite(auc):
                out["roc_auc"] = float(auc)
        except ValueError:
            pass  # e.g. a class of the model never labelled in this window
    return out


def regression_quality(labels: list[Any], predictions: list[Any]) -> dict[str, float]:
    y_true = np.asarray(labels, dtype=float)
    y_pred = np.asarray(predictions, dtype=float)
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y_true, y_pred))),
    }


def quality(
    task: str,
    labels: list[Any],
    predictions: list[Any],
    probabilities: list[dict[str, float]] | None = None,
    classes: list[Any] | None = None,
) -> QualityResult:
    if not labels:
        return QualityResult(0)
    if task == "regression":
        return QualityResult(len(labels), regression_quality(labels, predictions))
    return QualityResult(len(labels), classification_quality(labels, predictions, probabilities, classes or []))
