"""The reference rule, checked once when the drift job's runner starts: the reference must be data the model was
not trained on, or label-free estimates of its quality come out too optimistic (in-sample error).

The check refits a copy of the model five times, so it runs off the request path and only warns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from exporter.features import category_text

log = logging.getLogger(__name__)

CV_FOLDS = 5
Z = 2.5758293035489  # two-sided 99 % of a normal


@dataclass
class ReferenceCheck:
    """The inputs of the check: the model file (loaded where the check runs, never pickled over), and the
    labelled reference rows' features, labels and the served model's predictions of them."""

    model_path: str
    task: str
    features: pd.DataFrame
    labels: list[Any]
    predictions: list[Any]

    @classmethod
    def of(cls, model_path: str, task: str, frame: pd.DataFrame, feature_columns: list[str], target: str,
           predictions: pd.Series) -> ReferenceCheck:
        labelled = frame[target].notna().to_numpy()
        return cls(model_path, task, frame.loc[labelled, feature_columns].reset_index(drop=True),
                   frame.loc[labelled, target].tolist(), predictions[labelled].tolist())

    def run(self) -> str | None:
        """Warn (log, and return the sentence) when the reference looks like the model's training data; a model
        that cannot be cloned and refitted is not checked."""
        import joblib

        try:
            warning = reference_looks_like_training(joblib.load(self.model_path), self.features, self.labels,
                                                    self.predictions, self.task)
        except Exception as exc:
            log.info("reference check skipped: %s: %s", type(exc).__name__, exc)
            return None
        if warning:
            log.warning("reference: %s", warning)
        return warning


def reference_looks_like_training(estimator: Any, frame: pd.DataFrame, labels: Any, predictions: Any, task: str,
                                  max_rows: int = 2000) -> str | None:
    """A sentence when the model is much better on the reference than a copy of it refitted and cross-validated
    on the reference: the sign of rows the model was trained on (in-sample error), which make estimated quality
    too optimistic. None when it looks held out, or when the model cannot be cloned and refitted."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    y = pd.Series(list(labels)).reset_index(drop=True)
    X = frame.reset_index(drop=True)
    served = pd.Series(list(predictions)).reset_index(drop=True)
    if len(y) > max_rows:
        keep = np.random.default_rng(0).choice(len(y), max_rows, replace=False)
        X, y, served = X.iloc[keep], y.iloc[keep], served.iloc[keep]
    if len(y) < 50:
        return None
    try:
        cv = KFold(CV_FOLDS, shuffle=True, random_state=0)
        refit = cross_val_predict(clone(estimator), X, y.to_numpy(), cv=cv)
    except Exception as exc:  # a custom model clone cannot refit: no check
        log.debug("reference check skipped: %s", exc)
        return None
    n = len(y)
    if task == "regression":
        truth = y.to_numpy(dtype=float)
        served_err = float(np.abs(truth - served.to_numpy(dtype=float)).mean())
        cv_err = float(np.abs(truth - np.asarray(refit, dtype=float)).mean())
        suspicious = served_err < 0.5 * cv_err
        what = f"mean absolute error {served_err:.4g} on the reference against {cv_err:.4g} cross-validated"
    else:
        truth = np.array([category_text(v) for v in y])
        served_err = float((truth != np.array([category_text(v) for v in served])).mean())
        cv_err = float((truth != np.array([category_text(v) for v in refit])).mean())
        noise = Z * math.sqrt(cv_err * (1 - cv_err) / n)
        suspicious = served_err < 0.5 * cv_err and cv_err - served_err > noise
        what = f"error rate {served_err:.4g} on the reference against {cv_err:.4g} cross-validated"
    if not suspicious:
        return None
    return (f"the reference looks like the model's training data ({what} by a refitted copy of the model): "
            "estimated quality will be too optimistic; use held-out data the model was not trained on as reference")
