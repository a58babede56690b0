"""Covariate-shift adaptation of the label-free estimates (reference.shift_adaptation). Pure: arrays and frames
in, results out.

CBPE calibrates the model's probabilities on the reference's mix of rows (DLE learns its loss models there). When
the window's mix differs (covariate shift: P(x) moves, P(y|x) stays), a calibration that was right on average is
wrong for the rows that now dominate: P(y | score) depends on which x carry that score. The fix is importance
weighting: each reference row weighs as much as its density ratio p_window(x) / p_reference(x), read from a domain
classifier that tells the window's rows from the reference's (the multivariate `classifier` method's; a row's ratio
comes from a model that did not see it), clipped at MAX_WEIGHT. The calibration (the loss models) is then refitted
on the weighted reference rows.

Used only when the domain classifier's AUC says the window's mix differs (one-sided, GATE_ALPHA); otherwise the
run's estimate is the plain one, bit for bit. CBPE's band adds the weighted calibration's own uncertainty (a
bootstrap of the reference rows, weights kept) to the label noise: weighting shrinks the calibration's effective
rows, and the realized value then strays further than the label noise alone allows. Where P(y|x) moves with the
mix, the weighting follows the reference's P(y|x) to the wrong place: hence on by default for regression only
(docs/estimated-quality.md has the measured figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from exporter.multivariate import CLASSIFIER_REFERENCE_ROWS, SEED, Encoder, domain_auc_threshold, domain_classifier

if TYPE_CHECKING:
    from exporter.estimation import Calibration

GATE_ALPHA = 1e-3  # per run: a window this unlikely under no shift has its calibration weighted toward it
# The reference rows a weighted calibration is fitted on, more than the domain classifier learns from: the
# calibration's own noise shrinks with them (figures in the commit that raised it from 5000).
CALIBRATION_ROWS = 20_000
MAX_WEIGHT = 20.0  # density ratios clipped here (times the mean): a few reference rows must not carry the estimate
BOOTSTRAPS = 30  # resamples of the weighted reference: the calibration's sd to ~13 %, a fraction of a second
# The metrics the weighted calibration estimates. Not roc_auc: it ranks rows, a shift the model's score does not see
# barely moves it, and the weighted calibration's own noise (fewer effective rows) made its estimate worse in
# benchmarks/estimation_shift.py (docs/estimated-quality.md).
ADAPTED_METRICS = ("accuracy", "f1_macro")
MIN_WINDOW_ROWS = 50  # fewer: the domain classifier has too little to learn from; the plain CBPE is used


@dataclass(frozen=True)
class ShiftWeights:
    """The domain classifier's verdict on one window and the reference rows' weights toward it (mean 1)."""

    auc: float  # mean out-of-fold AUC, reference vs window: 0.5 when the mix is the reference's
    threshold: float  # the AUC a no-shift window exceeds with probability GATE_ALPHA
    weights: np.ndarray

    @property
    def shifted(self) -> bool:
        return self.auc >= self.threshold

    @property
    def effective_rows(self) -> float:
        """Kish's effective sample size of the weighted reference."""
        return float(self.weights.sum() ** 2 / np.square(self.weights).sum())


class ShiftAdapter:
    """The labelled reference rows a weighted calibration (or weighted loss models) is fitted on, encoded for the
    domain classifier.

    ``frame``: the rows' features (normalised, see exporter.drift.normalise), ``probas`` the model's outputs of them
    (probabilities; a regression's predictions as one column), ``labels`` their class indices (classification).
    At most CALIBRATION_ROWS rows, a fixed-seed sample, are kept (``rows``: their positions); the domain classifier
    is fitted on CLASSIFIER_REFERENCE_ROWS of them and its folds' models weigh the others."""

    def __init__(self, frame: pd.DataFrame, numerical: list[str], categorical: list[str], probas: np.ndarray,
                 labels: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(SEED)
        self.rows = np.arange(len(frame))
        if len(frame) > CALIBRATION_ROWS:
            self.rows = np.sort(rng.choice(len(frame), CALIBRATION_ROWS, replace=False))
            frame, probas = frame.iloc[self.rows], probas[self.rows]
            labels = None if labels is None else labels[self.rows]
        self.numerical, self.categorical = list(numerical), list(categorical)
        self.encoder = Encoder.fit(frame, numerical, categorical)
        self.probas, self.labels = probas, labels
        self.design = self._design(frame, probas)
        self.fitted = np.zeros(len(frame), dtype=bool)  # the rows the domain classifier learns from
        self.fitted[rng.choice(len(frame), min(len(frame), CLASSIFIER_REFERENCE_ROWS), replace=False)] = True

    def _design(self, frame: pd.DataFrame, probas: np.ndarray) -> np.ndarray:
        # The model's outputs ride along: the calibration is a function of them, and a tree finds a shift along
        # the model's score in one split rather than many. float32: the trees bin their inputs anyway.
        return np.column_stack([self.encoder.transform(frame), probas]).astype(np.float32)

    def weights(self, window: pd.DataFrame, probas: np.ndarray) -> ShiftWeights | None:
        """The reference rows' density ratios toward ``window`` (normalised features, the model's outputs of it);
        None for a window too small to tell."""
        rows = len(window)
        if rows < MIN_WINDOW_ROWS:
            return None
        auc, own, others = domain_classifier(self.design[self.fitted], self._design(window, probas),
                                             self.design[~self.fitted])
        q = np.empty(len(self.design))
        q[self.fitted], q[~self.fitted] = own, others
        q = np.clip(q, 1e-6, 1 - 1e-6)
        # P(window | x) / P(reference | x) is p_window(x) / p_reference(x) up to the prior odds of the pooled sizes, a
        # constant that scaling the weights to mean 1 removes.
        ratio = q / (1 - q)
        ratio = np.minimum(ratio / ratio.mean(), MAX_WEIGHT)
        return ShiftWeights(auc, domain_auc_threshold(int(self.fitted.sum()), rows, GATE_ALPHA), ratio / ratio.mean())

    def calibration(self, weights: np.ndarray) -> Calibration:
        from exporter.estimation import Calibration

        assert self.labels is not None
        return Calibration.fit(self.probas, self.labels, weights)

    def calibration_sd(self, weights: np.ndarray, raw: np.ndarray, predicted: np.ndarray,
                       rng: np.random.Generator) -> dict[str, float]:
        """Per metric: the sd of the window's point estimate over bootstrap resamples of the weighted reference,
        each calibration refitted (with its choice of which classes to calibrate)."""
        from exporter.estimation import Calibration, expected_metrics

        assert self.labels is not None
        n = len(self.labels)
        points: dict[str, list[float]] = {}
        for _ in range(BOOTSTRAPS):
            pick = rng.integers(0, n, n)
            calibration = Calibration.fit(self.probas[pick], self.labels[pick], weights[pick])
            for name, value in expected_metrics(raw, calibration.apply(raw), predicted).items():
                points.setdefault(name, []).append(value)
        return {name: float(np.std(values, ddof=1)) for name, values in points.items()
                if len(values) > 1 and np.all(np.isfinite(values))}
