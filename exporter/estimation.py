"""Model quality before the labels arrive: label-free performance estimation. Pure: frames in, results out.

Classification follows NannyML's confidence-based performance estimation (CBPE): the model's probabilities are
calibrated on the reference (isotonic, one class against the rest, kept only where cross-validation on the
reference shows it lowers the calibration error, rows renormalised), and every metric is the value expected when
each row's label is drawn from its calibrated probabilities. Regression follows NannyML's direct loss estimation
(DLE): gradient-boosting models fitted on the reference predict each row's absolute and squared error from its
features and prediction.

Both assume the relation between features and target, P(y|x), is the reference's (no concept drift) and that the
reference is data the model was not trained on. The band around an estimate (99 %) is the sampling noise of the
realized metric on the window's rows if those assumptions hold, not the estimator's own error. With
reference.shift_adaptation on, where the window's mix of rows differs from the reference's, the calibration
(regression: the loss models) is refitted on reference rows weighted toward the window, and the band adds that
refit's uncertainty (exporter.shift).
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold

from exporter.drift import normalise, threadpools
from exporter.features import category_text, category_texts
from exporter.quality import classification_quality, regression_quality
from exporter.serde import known_fields
from exporter.shift import ADAPTED_METRICS, ShiftAdapter, ShiftWeights

log = logging.getLogger(__name__)

Z = 2.5758293035489  # two-sided 99 % of a normal
DRAWS = 200  # label draws of the parametric bootstrap (f1_macro, roc_auc bands)
BOOTSTRAP_ROWS = 20_000  # larger windows: the band's width is measured on this many rows and scaled by sqrt(m/n)
CV_FOLDS = 5
MAX_CATEGORIES = 254  # HistGradientBoosting's categorical limit (max_bins 255); rarer categories are grouped as missing
PROBABILITIES, LABEL = "__probabilities__", "__label__"  # the window columns run_job asks the store for


@dataclass(frozen=True)
class MetricEstimate:
    value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class EstimateResult:
    method: str  # "cbpe" or "dle"
    rows: int  # window rows the estimate is computed on
    metrics: dict[str, MetricEstimate] = field(default_factory=dict)
    error_rows: int = 0  # labelled rows of the window
    error: dict[str, float] = field(default_factory=dict)  # estimate minus realized, on those labelled rows
    shift_auc: float | None = None  # the domain classifier's AUC, reference vs window (exporter.shift)
    adapted: bool = False  # the calibration (DLE: the loss models) was weighted toward the window's mix of rows

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EstimateResult:
        return known_fields(cls, doc, metrics={k: known_fields(MetricEstimate, v)
                                               for k, v in doc.get("metrics", {}).items()})


# --- calibration (CBPE) -------------------------------------------------------------------------------------------


def _fit_isotonic(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> IsotonicRegression:
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y, sample_weight=w)


def needs_calibration(p: np.ndarray, y: np.ndarray, seed: int = 0, w: np.ndarray | None = None) -> bool:
    """Whether isotonic calibration lowers the calibration error, judged out of fold on the reference.

    The judge is the Brier score of the out-of-fold calibrated probabilities against the model's own. Isotonic
    regression is monotone, so both rank the rows alike and share the refinement term of Murphy's decomposition:
    their Brier difference is their difference in calibration error, without the noise and the upward bias that
    binning gives an expected calibration error on a few hundred rows. With row weights ``w``, both are weighted."""
    if len(p) < 2 * CV_FOLDS or y.min() == y.max() or np.ptp(p) == 0:
        return False
    calibrated = np.empty_like(p)
    for train, test in KFold(CV_FOLDS, shuffle=True, random_state=seed).split(p):
        if y[train].min() == y[train].max():
            return False
        calibrated[test] = _fit_isotonic(p[train], y[train], None if w is None else w[train]).predict(p[test])
    return float(np.average((calibrated - y) ** 2, weights=w)) < float(np.average((p - y) ** 2, weights=w))


def _all_classes_calibrate_better(probas: np.ndarray, labels: np.ndarray, chosen: list[Any],
                                  weights: np.ndarray | None) -> bool:
    """Multiclass: whether calibrating every class, rows renormalised, has a lower out-of-fold Brier score than the
    per-class choice ``chosen``. Each class judged alone misses what the renormalisation does (the measurement is in
    docs/estimated-quality.md and the commit that added this)."""
    k = probas.shape[1]
    if len(probas) < 2 * CV_FOLDS:
        return False
    onehot = np.eye(k)[labels]
    mixed, every = np.empty_like(probas, dtype=float), np.empty_like(probas, dtype=float)
    for train, test in KFold(CV_FOLDS, shuffle=True, random_state=0).split(probas):
        if np.any(onehot[train].min(axis=0) == onehot[train].max(axis=0)):
            return False
        fitted = [_fit_isotonic(probas[train, c], onehot[train, c], None if weights is None else weights[train])
                  for c in range(k)]
        every[test] = Calibration(list(fitted)).apply(probas[test])
        mixed[test] = Calibration([f if chosen[c] is not None else None
                                   for c, f in enumerate(fitted)]).apply(probas[test])

    def brier(m: np.ndarray) -> float:
        return float(np.average(np.square(m - onehot).sum(axis=1), weights=weights))

    return brier(every) < brier(mixed)


@dataclass
class Calibration:
    """One-vs-rest isotonic calibrators (None: that class's probabilities are kept as they are)."""

    calibrators: list[IsotonicRegression | None]

    @classmethod
    def fit(cls, probas: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Calibration:
        """Fitted on the reference rows, each weighing ``weights`` (default: alike)."""
        k = probas.shape[1]
        columns = [1] if k == 2 else range(k)  # binary: the positive class, the other is its complement
        calibrators: list[IsotonicRegression | None] = [None] * k
        for c in columns:
            y = (labels == c).astype(float)
            if needs_calibration(probas[:, c], y, w=weights):
                calibrators[c] = _fit_isotonic(probas[:, c], y, weights)
        if k > 2 and None in calibrators and _all_classes_calibrate_better(probas, labels, calibrators, weights):
            calibrators = [_fit_isotonic(probas[:, c], (labels == c).astype(float), weights) for c in range(k)]
        return cls(calibrators)

    @property
    def calibrated(self) -> list[int]:
        return [c for c, cal in enumerate(self.calibrators) if cal is not None]

    def apply(self, probas: np.ndarray) -> np.ndarray:
        out = probas.astype(float, copy=True)
        if not self.calibrated:
            return out
        for c in self.calibrated:
            out[:, c] = self.calibrators[c].predict(probas[:, c])  # type: ignore[union-attr]
        if out.shape[1] == 2:
            out[:, 0] = 1.0 - out[:, 1]
            return out
        total = out.sum(axis=1, keepdims=True)
        ok = total[:, 0] > 0
        out[ok] /= total[ok]
        out[~ok] = probas[~ok]  # every calibrated probability 0: keep the model's row
        return out


# --- expected metrics from (calibrated) probabilities -------------------------------------------------------------


def expected_auc(scores: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC expected when row i is positive with probability p_i, rows ranked by ``scores`` (ties count half):
    the CBPE estimate, expected concordant pairs over expected positive-negative pairs, a row never paired with
    itself."""
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], p[order]
    neg = 1.0 - pos
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g, neg_g = np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)
    own_g = np.add.reduceat(pos * neg, starts)
    neg_below = np.cumsum(neg_g) - neg_g
    concordant = float((pos_g * neg_below).sum() + 0.5 * (pos_g * neg_g - own_g).sum())
    pairs = float(pos.sum() * neg.sum() - (pos * neg).sum())
    return concordant / pairs if pairs > 0 else math.nan


def expected_metrics(raw: np.ndarray, calibrated: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """CBPE point estimates: accuracy, f1_macro (from the expected confusion matrix) and roc_auc (scores: the model's
    own probabilities, as the realized metric ranks them; labels: expected from the calibrated ones)."""
    n, k = calibrated.shape
    rows = np.arange(n)
    out = {"accuracy": float(calibrated[rows, predicted].mean())}
    f1s = []
    for c in range(k):
        mine = predicted == c
        tp = calibrated[mine, c].sum()
        fp = mine.sum() - tp
        fn = calibrated[~mine, c].sum()
        if tp + fp + fn > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    out["f1_macro"] = float(np.mean(f1s))
    aucs = [expected_auc(raw[:, c], calibrated[:, c]) for c in ([1] if k == 2 else range(k))]
    if all(math.isfinite(a) for a in aucs):
        out["roc_auc"] = float(np.mean(aucs))
    return out


def draw_labels(calibrated: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` x n labels, row i's drawn from its calibrated probabilities (int8 class indices)."""
    cum = np.cumsum(calibrated, axis=1)[:, :-1]
    u = rng.random((draws, calibrated.shape[0]))
    return (u[:, :, None] > cum[None, :, :]).sum(axis=2, dtype=np.int8)


def score_ranks(raw: np.ndarray) -> list[np.ndarray]:
    """Per class, the rows' ranks by the model's probability of it (ties averaged), as the AUC ranks them."""
    k = raw.shape[1]
    return [rankdata(raw[:, c]) if (k > 2 or c == 1) else np.empty(0) for c in range(k)]


def realized_metrics_many(labels: np.ndarray, raw: np.ndarray, predicted: np.ndarray,
                          ranks: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Accuracy, f1_macro and roc_auc of many label draws at once (``labels``: draws x n), vectorised: the scores
    do not change between draws, so each AUC is one rank sum (Mann-Whitney) and each count a matrix product."""
    draws, n = labels.shape
    k = raw.shape[1]
    if ranks is None:
        ranks = score_ranks(raw)
    out = {"accuracy": (labels == predicted[None, :]).mean(axis=1)}
    f1_sum = np.zeros(draws)
    f1_count = np.zeros(draws)
    aucs = []
    for c in range(k):
        is_c = (labels == c).astype(np.float32)
        mine = (predicted == c).astype(np.float32)
        positives = is_c.sum(axis=1)
        tp = is_c @ mine
        predicted_c = mine.sum()
        denominator = positives + predicted_c
        present = denominator > 0
        f1_sum += np.where(present, 2 * tp / np.where(present, denominator, 1), 0.0)
        f1_count += present
        if k > 2 or c == 1:
            negatives = n - positives
            with np.errstate(divide="ignore", invalid="ignore"):
                auc = (is_c.astype(np.float64) @ ranks[c] - positives * (positives + 1) / 2) / (positives * negatives)
            aucs.append(np.where((positives > 0) & (negatives > 0), auc, np.nan))
    out["f1_macro"] = f1_sum / np.maximum(f1_count, 1)
    out["roc_auc"] = np.mean(aucs, axis=0)
    return out


@dataclass
class ClassificationEstimator:
    classes: list[str]  # the model's classes as category texts, in predict_proba's column order
    calibration: Calibration
    reference_rows: int
    keys: list[str] = field(default_factory=list)  # the classes as /predict keys its probabilities (str)
    adapter: ShiftAdapter | None = None  # the reference rows a calibration weighted toward a window is fitted on

    @classmethod
    def fit(cls, classes: list[Any], probas: np.ndarray, labels: list[Any], frame: pd.DataFrame | None = None,
            numerical: list[str] | None = None, categorical: list[str] | None = None) -> ClassificationEstimator:
        """``frame``: the reference rows' features (as in ``labels``' order); without it, no shift adaptation."""
        names = [category_text(c) for c in classes]
        index = {name: i for i, name in enumerate(names)}
        y = np.array([index.get(category_text(v), -1) for v in labels])
        known = y >= 0
        adapter = None
        if frame is not None and (numerical or categorical):
            features = normalise(frame.reset_index(drop=True), numerical or [], categorical or []).loc[known]
            adapter = ShiftAdapter(features, numerical or [], categorical or [], probas[known], y[known])
        return cls(names, Calibration.fit(probas[known], y[known]), int(known.sum()), [str(c) for c in classes],
                   adapter)

    def index(self, values: list[Any] | pd.Series) -> np.ndarray:
        """Each value's class index (-1: missing or not one of the model's classes), vectorised."""
        lookup = {name: i for i, name in enumerate(self.classes)}
        texts = category_texts(pd.Series(list(values), dtype=object))
        return texts.map(lookup).fillna(-1).to_numpy(dtype=int)

    def matrix(self, probabilities: list[Any] | pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """The rows' probabilities as a matrix (keyed as /predict answers them) and which rows had them."""
        keys = self.keys or self.classes
        rows = list(probabilities)
        try:  # every row a dict with every class: one C-level getter per row
            m = np.array(list(map(operator.itemgetter(*keys), rows)), dtype=float).reshape(len(rows), len(keys))
            return m, np.ones(len(rows), dtype=bool)
        except (KeyError, TypeError, ValueError):
            pass
        ok = np.array([isinstance(p, dict) for p in rows], dtype=bool)
        empty: dict[str, float] = {}
        m = np.array([[(p if isinstance(p, dict) else empty).get(key, 0.0) for key in keys] for p in rows],
                     dtype=float).reshape(len(ok), len(keys))
        return m, ok

    def estimate(self, raw: np.ndarray, predicted: np.ndarray, rng: np.random.Generator, draws: int = DRAWS,
                 calibration: Calibration | None = None,
                 calibration_sd: dict[str, float] | None = None) -> dict[str, MetricEstimate]:
        """The estimate and its 99 % band: the label noise, and ``calibration_sd`` (per metric) added in
        quadrature. ``calibration``: one weighted toward the window (default: the reference's)."""
        calibrated = (calibration or self.calibration).apply(raw)
        point = expected_metrics(raw, calibrated, predicted)
        n = len(predicted)
        spread = {"accuracy": math.sqrt(float((calibrated[np.arange(n), predicted]
                                                * (1 - calibrated[np.arange(n), predicted])).sum())) / n}
        # The band of f1_macro and roc_auc: a parametric bootstrap, labels drawn from the calibrated probabilities.
        # On a large window it runs on a random subset of m rows and its spread is scaled by sqrt(m / n) (these
        # metrics' sampling spread shrinks as 1/sqrt(n)): a 100k-row window costs what a 20k-row one does.
        m = min(n, BOOTSTRAP_ROWS)
        rows = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
        sub_raw, sub_cal, sub_pred = raw[rows], calibrated[rows], predicted[rows]
        ranks = score_ranks(sub_raw)
        chunk = max(1, min(draws, 4_000_000 // max(m * raw.shape[1], 1)))
        samples: dict[str, list[np.ndarray]] = {"f1_macro": [], "roc_auc": []}
        done = 0
        while done < draws:
            b = min(chunk, draws - done)
            many = realized_metrics_many(draw_labels(sub_cal, b, rng), sub_raw, sub_pred, ranks)
            for name in samples:
                samples[name].append(many[name])
            done += b
        for name, parts in samples.items():
            values = np.concatenate(parts)
            values = values[np.isfinite(values)]
            if len(values) > 1:
                spread[name] = float(values.std(ddof=1)) * math.sqrt(m / n)
        for name, sd in (calibration_sd or {}).items():
            if name in spread:
                spread[name] = math.hypot(spread[name], sd)
        return {name: _band(value, spread.get(name, math.nan), 0.0, 1.0) for name, value in point.items()
                if math.isfinite(value)}


def _band(value: float, sd: float, low: float, high: float) -> MetricEstimate:
    if not math.isfinite(sd):
        return MetricEstimate(value, value, value)
    return MetricEstimate(value, max(low, value - Z * sd), min(high, value + Z * sd))


# --- direct loss estimation (regression) --------------------------------------------------------------------------


@dataclass
class RegressionEstimator:
    numerical: list[str]
    categorical: list[str]
    categories: dict[str, dict[str, int]]
    abs_model: HistGradientBoostingRegressor
    sq_model: HistGradientBoostingRegressor
    kurtosis: float  # E[e^4] / E[q(x)^2] on the reference: a squared error's spread around its predicted mean q(x)
    reference_rows: int
    level_var: tuple[float, float] = (0.0, 0.0)  # Var|e| / n and Var e^2 / n of the reference: its level's noise
    adapter: ShiftAdapter | None = None  # the reference rows the loss models weighted toward a window are fitted on
    design_rows: np.ndarray | None = None  # the adapter's rows: the loss models' inputs
    error_rows: np.ndarray | None = None  # and the model's errors on them

    @staticmethod
    def _codes(frame: pd.DataFrame, categorical: list[str]) -> dict[str, dict[str, int]]:
        out = {}
        for name in categorical:
            counts = category_texts(frame[name]).dropna().value_counts()
            out[name] = {value: i for i, value in enumerate(counts.index[:MAX_CATEGORIES])}
        return out

    def design(self, frame: pd.DataFrame, predictions: Any) -> np.ndarray:
        """Features (numbers; categories as codes, unknown ones missing) and the prediction, as one float matrix."""
        columns = [pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float) if name in frame
                   else np.full(len(frame), np.nan) for name in self.numerical]
        for name in self.categorical:
            if name not in frame:
                columns.append(np.full(len(frame), np.nan))
                continue
            texts = category_texts(frame[name])
            columns.append(texts.map(self.categories[name]).to_numpy(dtype=float, na_value=np.nan))
        columns.append(np.asarray(predictions, dtype=float))
        return np.column_stack(columns) if columns else np.empty((len(frame), 0))

    @classmethod
    def fit(cls, frame: pd.DataFrame, numerical: list[str], categorical: list[str], predictions: Any,
            labels: Any, shift_adaptation: bool = False) -> RegressionEstimator:
        y = pd.to_numeric(pd.Series(list(labels)), errors="coerce").to_numpy(dtype=float)
        pred = np.asarray(predictions, dtype=float)
        known = np.isfinite(y) & np.isfinite(pred)
        frame = frame.reset_index(drop=True).loc[known].reset_index(drop=True)
        errors = y[known] - pred[known]
        self = cls(numerical, categorical, cls._codes(frame, categorical), _hgb(categorical, numerical),
                   _hgb(categorical, numerical), 3.0, int(known.sum()))
        X = self.design(frame, pred[known])
        with _one_thread():
            self.abs_model.fit(X, np.abs(errors))
            self.sq_model.fit(X, errors**2)
        with _one_thread():
            q = np.clip(self.sq_model.predict(X), 1e-12, None)
        fourth = float(np.mean(errors**4))
        # E[e^4 | x] = kurtosis * q(x)^2 (3 for normal errors); taken against the predicted q(x), not the overall
        # E[e^2]^2, which heteroscedastic errors inflate (and the band with it).
        self.kurtosis = max(fourth / float(np.mean(q**2)), 1.0) if fourth > 0 else 3.0
        n = max(len(errors), 1)
        self.level_var = (float(np.var(np.abs(errors))) / n, float(np.var(errors**2)) / n)
        if shift_adaptation and (numerical or categorical):
            self.adapter = ShiftAdapter(normalise(frame, numerical, categorical), numerical, categorical,
                                        pred[known][:, None])
            self.design_rows, self.error_rows = X[self.adapter.rows], errors[self.adapter.rows]
        return self

    def weighted(self, shift: ShiftWeights) -> RegressionEstimator:
        """The loss models refitted on the adapter's rows, each weighing its weight toward a window's mix; the
        level's noise counts Kish's effective rows, which weighting shrinks."""
        assert self.design_rows is not None and self.error_rows is not None
        out = replace(self, abs_model=_hgb(self.categorical, self.numerical),
                      sq_model=_hgb(self.categorical, self.numerical), adapter=None)
        e, weights = self.error_rows, shift.weights
        with _one_thread():
            out.abs_model.fit(self.design_rows, np.abs(e), sample_weight=weights)
            out.sq_model.fit(self.design_rows, e**2, sample_weight=weights)
        effective = max(shift.effective_rows, 1.0)
        out.level_var = (float(np.cov(np.abs(e), aweights=weights)) / effective,
                         float(np.cov(e**2, aweights=weights)) / effective)
        return out

    def estimate(self, frame: pd.DataFrame, predictions: Any) -> dict[str, MetricEstimate]:
        X = self.design(frame, predictions)
        with _one_thread():
            a = np.clip(self.abs_model.predict(X), 0, None)
            q = np.clip(self.sq_model.predict(X), 0, None)
        n = len(a)
        mae, mse = float(a.mean()), float(q.mean())
        # Sampling noise of the realized metric if each row's error has these predicted moments: Var|e| = E e^2 -
        # (E|e|)^2; Var e^2 = (kurtosis - 1) (E e^2)^2, the kurtosis taken from the reference's errors. Plus the
        # noise of the level the loss models learnt from a finite reference (its mean loss's variance): without it,
        # the band is too narrow.
        sd_mae = math.sqrt(float(np.clip(q - a**2, 0, None).sum()) / n**2 + self.level_var[0])
        sd_mse = math.sqrt(max(self.kurtosis - 1, 0.0) * float((q**2).sum()) / n**2 + self.level_var[1])
        rmse = math.sqrt(mse)
        return {
            "mae": _band(mae, sd_mae, 0.0, math.inf),
            "rmse": MetricEstimate(rmse, math.sqrt(max(mse - Z * sd_mse, 0.0)), math.sqrt(mse + Z * sd_mse)),
        }

    def point(self, frame: pd.DataFrame, predictions: Any) -> dict[str, float]:
        return {k: v.value for k, v in self.estimate(frame, predictions).items()}


def _one_thread() -> Any:
    """One OpenMP thread for the gradient boosting: the drift job is background work on a shared machine, and
    OpenMP threads spinning for a busy second core made a 3000-row fit take 20 s instead of under one."""
    return threadpools().limit(limits=1, user_api="openmp")


def _hgb(categorical: list[str], numerical: list[str]) -> HistGradientBoostingRegressor:
    mask = [False] * len(numerical) + [True] * len(categorical) + [False]
    return HistGradientBoostingRegressor(
        max_iter=200, learning_rate=0.1, min_samples_leaf=20, early_stopping=True, validation_fraction=0.2,
        n_iter_no_change=10, categorical_features=mask if any(mask) else None, random_state=0,
    )


# --- the run's entry point ----------------------------------------------------------------------------------------


@dataclass
class EstimationSetup:
    """What the drift job needs to fit the estimator once (in its worker process at start) and to use it each run.
    Picklable: travels in the JobSpec; the fitted estimator stays in the process that fitted it."""

    task: str
    classes: list[Any]
    labels: list[Any]  # the reference's labels (rows with a label)
    predictions: list[Any]  # the model's predictions of those rows
    probabilities: np.ndarray | None  # and its probabilities (classification), in the model's class order
    frame: pd.DataFrame | None  # and their features
    numerical: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    shift_adaptation: bool = False  # reference.shift_adaptation: weight the fit toward each window's mix of rows
    estimator: ClassificationEstimator | RegressionEstimator | None = None

    def fit(self) -> None:
        if self.estimator is not None:
            return
        if self.task == "classification" and self.probabilities is not None:
            self.estimator = ClassificationEstimator.fit(self.classes, self.probabilities, self.labels,
                                                         self.frame if self.shift_adaptation else None,
                                                         self.numerical, self.categorical)
        elif self.task == "regression" and self.frame is not None:
            self.estimator = RegressionEstimator.fit(self.frame, self.numerical, self.categorical, self.predictions,
                                                     self.labels, self.shift_adaptation)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["estimator"] = None  # fitted where it is used
        return state


def setup_from_reference(task: str, classes: list[Any], frame: pd.DataFrame, target: str, predictions: pd.Series,
                         probabilities: list[dict[str, float]] | None, numerical: list[str],
                         categorical: list[str], shift_adaptation: bool = False) -> EstimationSetup | None:
    """The estimation's inputs from the labelled reference rows; None when the model gives no probabilities."""
    labelled = frame[target].notna().to_numpy()
    if task == "classification":
        if probabilities is None or not classes:
            return None
        keys = [str(c) for c in classes]  # keyed as /predict answers them
        matrix = np.array([[p.get(k, 0.0) for k in keys] for p, ok in zip(probabilities, labelled, strict=True) if ok])
        return EstimationSetup(task, list(classes), frame.loc[labelled, target].tolist(),
                               predictions[labelled].tolist(), matrix.reshape(-1, len(keys)),
                               # the features only where shift adaptation uses them: the setup travels to the worker
                               frame.loc[labelled, numerical + categorical].reset_index(drop=True)
                               if shift_adaptation else None,
                               list(numerical), list(categorical), shift_adaptation)
    return EstimationSetup(task, [], frame.loc[labelled, target].tolist(), predictions[labelled].tolist(), None,
                           frame.loc[labelled, numerical + categorical].reset_index(drop=True),
                           list(numerical), list(categorical), shift_adaptation)


def estimate_window(setup: EstimationSetup, window: pd.DataFrame, seed: int = 0) -> EstimateResult | None:
    """The estimate over every row of ``window`` (columns: features, ``prediction``, PROBABILITIES, LABEL), and
    its error on the labelled rows. None when the model gives no probabilities (classification)."""
    setup.fit()
    est = setup.estimator
    rng = np.random.default_rng(seed)
    labels = window[LABEL] if LABEL in window else pd.Series([None] * len(window))
    labelled = labels.notna().to_numpy()
    if isinstance(est, ClassificationEstimator):
        raw, has = est.matrix(window[PROBABILITIES].tolist())
        predicted = est.index(window["prediction"].tolist())
        ok = has & (predicted >= 0)
        if not ok.any():
            return None
        metrics = est.estimate(raw[ok], predicted[ok], rng)
        calibration, shift = est.calibration, None
        if est.adapter is not None:
            features = normalise(window.reset_index(drop=True).loc[ok], est.adapter.numerical,
                                 est.adapter.categorical)
            shift = est.adapter.weights(features, raw[ok])
            if shift is not None and shift.shifted:
                calibration = est.adapter.calibration(shift.weights)
                sd = est.adapter.calibration_sd(shift.weights, raw[ok], predicted[ok], rng)
                adapted = est.estimate(raw[ok], predicted[ok], rng, calibration=calibration, calibration_sd=sd)
                metrics.update({k: v for k, v in adapted.items() if k in ADAPTED_METRICS})
        error: dict[str, float] = {}
        sub = ok & labelled
        if sub.sum() >= 2:
            point = expected_metrics(raw[sub], est.calibration.apply(raw[sub]), predicted[sub])
            if calibration is not est.calibration:
                shifted = expected_metrics(raw[sub], calibration.apply(raw[sub]), predicted[sub])
                point.update({k: v for k, v in shifted.items() if k in ADAPTED_METRICS})
            # realized as the model_quality gauge computes it (exporter.quality), on the same rows
            realized = classification_quality(labels[sub].tolist(), window["prediction"][sub].tolist(),
                                              window[PROBABILITIES][sub].tolist(), setup.classes)
            error = {k: float(point[k] - realized[k]) for k in point if k in realized}
        return EstimateResult("cbpe", int(ok.sum()), metrics, int(sub.sum()), error,
                              None if shift is None else shift.auc, calibration is not est.calibration)
    if isinstance(est, RegressionEstimator):
        predictions = pd.to_numeric(window["prediction"], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(predictions)
        if not ok.any():
            return None
        frame = window.reset_index(drop=True)
        used, shift = est, None
        if est.adapter is not None:
            features = normalise(frame.loc[ok], est.adapter.numerical, est.adapter.categorical)
            shift = est.adapter.weights(features, predictions[ok][:, None])
            if shift is not None and shift.shifted:
                used = est.weighted(shift)
        metrics = used.estimate(frame.loc[ok], predictions[ok])
        error = {}
        y = pd.to_numeric(labels.reset_index(drop=True), errors="coerce").to_numpy(dtype=float)
        sub = ok & np.isfinite(y)
        if sub.sum() >= 2:
            point = used.point(frame.loc[sub], predictions[sub])
            realized = regression_quality(y[sub].tolist(), predictions[sub].tolist())
            error = {k: point[k] - realized[k] for k in point}
        return EstimateResult("dle", int(ok.sum()), metrics, int(sub.sum()), error,
                              None if shift is None else shift.auc, used is not est)
    return None
