"""Feature importance: which drifted features matter to the model. Computed once per reference, where the runs
happen (the drift job's worker), and published with every run.

- With a target: permutation importance of the served model on the labelled reference rows, the drop in the task's
  main metric (accuracy; regression: the rise in mean absolute error) when one feature's values are shuffled, on at
  most MAX_ROWS rows with REPEATS shuffles (``method="permutation"``). It measures what the model uses, whatever
  the model is.
- Without a target: the model's own importances (``feature_importances_`` of trees, or |coef| times the standard
  deviation of the column it multiplies, i.e. |coef| on standardised inputs), mapped back from the columns a
  pipeline makes (one-hot levels, scaled numbers) to the configured features by summing (``method="native"``).
- Neither: no importance (the start-up log says why).

Pure: a model and frames in, an Importance out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

MAX_ROWS = 5000  # reference rows permuted: the cost stays bounded (a 50k-row reference is sampled)
REPEATS = 5
SEED = 0
SCORING = {"classification": "accuracy", "regression": "neg_mean_absolute_error"}


@dataclass(frozen=True)
class Importance:
    method: str  # "permutation" or "native"
    values: dict[str, float] = field(default_factory=dict)  # per configured feature
    rows: int = 0  # reference rows it was computed on (permutation)
    seconds: float = 0.0


@dataclass
class ImportanceSetup:
    """What the worker needs to compute the importance once: the estimator, the reference rows as the model reads
    them (a bounded sample) and, with a target, their labels."""

    estimator: Any
    task: str
    features: list[str]
    frame: pd.DataFrame
    labels: list[Any] | None = None

    def compute(self) -> Importance | None:
        started = time.monotonic()
        result: tuple[str, dict[str, float]] | None
        if self.labels is not None:
            result = permuted(self.estimator, self.task, self.frame[self.features], self.labels)
        else:
            result = native(self.estimator, self.features, self.frame[self.features])
        if result is None:
            return None
        return Importance(result[0], result[1], len(self.frame) if result[0] == "permutation" else 0,
                          round(time.monotonic() - started, 3))


def setup(estimator: Any, task: str, features: list[str], frame: pd.DataFrame, target: str | None) -> ImportanceSetup:
    """The rows the importance is computed on: with a target, at most MAX_ROWS labelled reference rows (a fixed
    sample); without, the same bound (the native importances read only their spread)."""
    rows = frame[frame[target].notna()] if target is not None else frame
    if len(rows) > MAX_ROWS:
        rows = rows.sample(MAX_ROWS, random_state=SEED)
    labels = rows[target].tolist() if target is not None else None
    return ImportanceSetup(estimator, task, list(features), rows[features].reset_index(drop=True), labels)


def permuted(estimator: Any, task: str, X: pd.DataFrame, y: list[Any]) -> tuple[str, dict[str, float]]:
    if task == "classification":
        # The labels as the model's classes are typed (a target read as text against integer classes, or back).
        classes = getattr(estimator, "classes_", None)
        if classes is not None:
            by_text = {str(c): c for c in classes}
            y = [by_text.get(str(v), v) for v in y]
    result = permutation_importance(estimator, X, np.asarray(y, dtype=object if task == "classification" else float),
                                    scoring=SCORING[task], n_repeats=REPEATS, random_state=SEED, n_jobs=1)
    return "permutation", {name: float(v) for name, v in zip(X.columns, result.importances_mean, strict=True)}


def native(estimator: Any, features: list[str], X: pd.DataFrame) -> tuple[str, dict[str, float]] | None:
    """The final estimator's own importances summed per configured feature, or None when it has none."""
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    if hasattr(final, "feature_importances_"):
        weights = np.asarray(final.feature_importances_, dtype=float)
        scale = None
    elif hasattr(final, "coef_"):
        coef = np.abs(np.atleast_2d(np.asarray(final.coef_, dtype=float)))
        weights = coef.mean(axis=0)  # several classes: the mean over them
        scale = True
    else:
        return None
    if isinstance(estimator, Pipeline) and len(estimator) > 1:
        pre = estimator[:-1]
        columns = [str(c) for c in pre.get_feature_names_out(features)]
        if scale:
            transformed = pre.transform(X)
            transformed = transformed.toarray() if hasattr(transformed, "toarray") else np.asarray(transformed)
            weights = weights * transformed.astype(float).std(axis=0)
    else:
        columns = list(features)
        if scale:
            weights = weights * X.apply(pd.to_numeric, errors="coerce").std().fillna(0).to_numpy()
    if len(columns) != len(weights):
        log.warning("feature importance: %d model columns but %d importances", len(columns), len(weights))
        return None
    out = {name: 0.0 for name in features}
    for column, weight in zip(columns, weights, strict=True):
        source = source_feature(column, features)
        if source is None:
            log.warning("feature importance: model column %r maps to no configured feature", column)
            return None
        out[source] += float(weight)
    return "native", out


def source_feature(column: str, features: list[str]) -> str | None:
    """The configured feature a pipeline's output column comes from: ``num__x`` -> x, ``cat__island_Dream`` ->
    island (a ColumnTransformer's prefix, then the longest feature name the rest starts with)."""
    rest = column.split("__", 1)[1] if "__" in column else column
    candidates = [f for f in features if rest == f or rest.startswith(f + "_")]
    return max(candidates, key=len) if candidates else None
