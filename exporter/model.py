"""Load a joblib-saved scikit-learn estimator or pipeline and predict on records."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from exporter.features import FeatureTypes


class ModelLoadError(Exception):
    pass


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so predictions serialise to JSON and compare equal after a round trip."""
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Predictions:
    values: list[Any]
    probabilities: list[dict[str, float]] | None

    @property
    def finite(self) -> bool:
        """No NaN or infinity among the numeric predictions and probabilities."""
        numbers = [v for v in self.values if isinstance(v, float)]
        if self.probabilities is not None:
            numbers += [p for row in self.probabilities for p in row.values()]
        return all(math.isfinite(v) for v in numbers)

    def rows(self, start: int, stop: int) -> Predictions:
        """The predictions of rows ``start:stop`` (one request's share of a gathered model call)."""
        probabilities = None if self.probabilities is None else self.probabilities[start:stop]
        return Predictions(self.values[start:stop], probabilities)


class Model:
    def __init__(self, estimator: Any, types: FeatureTypes, task: str) -> None:
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"{type(estimator).__name__} has no predict method")
        self.estimator = estimator
        self.types = types
        self.features = types.names
        self.task = task
        self.has_proba = task == "classification" and hasattr(estimator, "predict_proba")
        classes = getattr(estimator, "classes_", None)
        self.classes: list[Any] = [plain(c) for c in classes] if classes is not None else []

    @classmethod
    def load(cls, path: Path, types: FeatureTypes, task: str) -> Model:
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        try:
            estimator = joblib.load(path)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load model with joblib: {exc}") from exc
        return cls(estimator, types, task)

    def frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Validated request records as the frame the model was trained on (see exporter.features)."""
        return self.types.model_frame(records)

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        X = frame[self.features]
        final = self.estimator
        if self.has_proba and isinstance(self.estimator, Pipeline) and len(self.estimator) > 1:
            # What Pipeline.predict and .predict_proba each do, with the (costly) transforms run once for both.
            X = self.estimator[:-1].transform(X)
            final = self.estimator[-1]
        values = [plain(v) for v in final.predict(X)]
        probabilities = None
        if self.has_proba:
            proba = final.predict_proba(X)
            names = [str(c) for c in self.classes]
            probabilities = [dict(zip(names, (float(p) for p in row), strict=True)) for row in proba]
        return Predictions(values, probabilities)

    def predict(self, records: list[dict[str, Any]]) -> Predictions:
        return self.predict_frame(self.frame(records))
