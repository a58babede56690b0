"""Window + reference -> DriftResult. Pure: no HTTP, SQL or Prometheus here.

Per-feature scores come from Evidently's own stat tests (the ones ``DataDriftPreset`` runs, chosen the same way:
K-S / chi² / z for a reference of at most 1000 rows, Wasserstein / Jensen-Shannon above), called directly on each
column instead of through the report layer, which is an order of magnitude slower for the same numbers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from exporter.calibration import (
    CALIBRATED_TESTS,
    calibrated_statistic_threshold,
    calibrated_threshold,
    per_run_alpha,
    unseen_limit,
)
from exporter.features import category_texts
from exporter.multivariate import DEFAULT_METHOD as MULTIVARIATE_METHOD
from exporter.multivariate import MultivariateDrift, fit_multivariate
from exporter.serde import known_fields
from exporter.stattests import CATEGORICAL, NUMERICAL, ColumnStats, TestResult, run_test, select_test

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodOverride:
    method: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    feature_type: str
    stat_test: str | None
    stat_test_display: str | None
    score: float | None
    threshold: float | None
    detected: bool | None
    missing_share: float
    unseen_share: float
    error: str | None = None
    importance: float | None = None  # exporter.importance: set by the run, when the reference has one
    # The window's distribution and the reference's on the same terms: numbers, QUANTILES ("0.05" -> value); a
    # category, the shares of the reference's TOP_CATEGORIES most frequent values and OTHER (missing left out).
    distribution: dict[str, float] = field(default_factory=dict)
    reference_distribution: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionDrift:
    stat_test: str
    stat_test_display: str
    score: float
    threshold: float
    detected: bool


@dataclass(frozen=True)
class SegmentDrift:
    """One segment's drift: its window rows against the reference rows of the same segment, feature by feature
    (not the segmenting feature). ``features`` is empty when the segment is too small to judge (``too_small``)."""

    segment_by: str
    segment: str
    window_rows: int
    reference_rows: int
    too_small: bool
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    # With a target: realized quality on the segment's labelled rows (when at least segment_min_rows of them), the
    # same metrics on its reference rows, and the label-free estimate on its window rows (metric -> value, lower,
    # upper; judged segments only).
    quality_rows: int = 0
    quality: dict[str, float] = field(default_factory=dict)
    quality_reference: dict[str, float] = field(default_factory=dict)
    estimated: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features.values() if f.detected]


@dataclass(frozen=True)
class DriftResult:
    computed_at: float
    window_rows: int
    min_rows: int
    drift_share_threshold: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    prediction: PredictionDrift | None = None
    skipped_reason: str | None = None
    multivariate: MultivariateDrift | None = None  # None: fewer than 2 features, or its computation failed (logged)
    segments: list[SegmentDrift] = field(default_factory=list)  # drift.segments unset: none
    importance_method: str | None = None  # "permutation" or "native" when the features carry an importance

    @property
    def evaluated(self) -> list[FeatureDrift]:
        return [f for f in self.features.values() if f.detected is not None]

    @property
    def drifted_features(self) -> int:
        return sum(1 for f in self.evaluated if f.detected)

    @property
    def drift_share(self) -> float | None:
        evaluated = self.evaluated
        return self.drifted_features / len(evaluated) if evaluated else None

    @property
    def dataset_drift(self) -> bool | None:
        share = self.drift_share
        return None if share is None else share >= self.drift_share_threshold

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted_features"] = self.drifted_features
        out["drift_share"] = self.drift_share
        out["dataset_drift"] = self.dataset_drift
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DriftResult:
        """The inverse of ``asdict`` (and of ``to_dict``: its derived keys are ignored)."""
        prediction, multivariate = doc.get("prediction"), doc.get("multivariate")
        return known_fields(
            cls, doc,
            features={k: known_fields(FeatureDrift, v) for k, v in doc.get("features", {}).items()},
            prediction=None if prediction is None else known_fields(PredictionDrift, prediction),
            multivariate=None if multivariate is None else known_fields(MultivariateDrift, multivariate),
            segments=[known_fields(SegmentDrift, seg, features={k: known_fields(FeatureDrift, v)
                                                                for k, v in seg.get("features", {}).items()})
                      for seg in doc.get("segments", [])],
        )


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TOP_CATEGORIES = 10  # a categorical feature's shares are published for these, fixed per reference, and OTHER
OTHER = "__other__"


class Columns:
    """Per-feature reference columns of a normalised frame: each feature's stats and numeric range. A feature with
    no values here has neither (``stats`` lacks it): the whole reference refuses that (Reference), a segment's rows
    may well lack one."""

    def __init__(self, frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> None:
        self.numerical = list(numerical)
        self.categorical = list(categorical)
        self.rows = len(frame)
        self.stats: dict[str, ColumnStats] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        for name in numerical:
            col = frame[name].replace([np.inf, -np.inf], np.nan).dropna()
            if not col.empty:
                self.stats[name] = ColumnStats(col, NUMERICAL)
                self.ranges[name] = (float(col.min()), float(col.max()))
        for name in categorical:
            col = frame[name].dropna()
            if not col.empty:
                self.stats[name] = ColumnStats(col, CATEGORICAL)

    def feature_type(self, name: str) -> str:
        return NUMERICAL if name in self.numerical else CATEGORICAL

    def top_categories(self, name: str) -> list[Any]:
        """The reference's TOP_CATEGORIES most frequent values of a categorical feature (ties: the first seen)."""
        counts = self.stats[name].counts
        return sorted(counts, key=lambda v: -counts[v])[:TOP_CATEGORIES]

    def distribution(self, name: str, present: pd.Series) -> dict[str, float]:
        """``present`` (a feature's values, missing dropped) as FeatureDrift.distribution describes."""
        if present.empty:
            return {}
        if self.feature_type(name) == NUMERICAL:
            values = np.quantile(present.to_numpy(dtype=float), QUANTILES)
            return {f"{q:g}": float(v) for q, v in zip(QUANTILES, values, strict=True)}
        top = self.top_categories(name)
        shares = present.value_counts(normalize=True)
        out = {str(v): float(shares.get(v, 0.0)) for v in top}
        out[OTHER] = max(0.0, 1.0 - sum(out.values()))
        return out

    def reference_distribution(self, name: str) -> dict[str, float]:
        cache = self.__dict__.setdefault("_reference_distributions", {})
        if name not in cache:
            cache[name] = self.distribution(name, self.stats[name].values)
        return dict(cache[name])


class Reference(Columns):
    """The reference (training) data, cleaned once: per-feature columns, category sets and numeric ranges."""

    def __init__(
        self,
        frame: pd.DataFrame,
        numerical: list[str],
        categorical: list[str],
        predictions: pd.Series | None = None,
        prediction_type: str = CATEGORICAL,
        multivariate_method: str = MULTIVARIATE_METHOD,
    ) -> None:
        missing = [c for c in numerical + categorical if c not in frame.columns]
        if missing:
            raise ValueError(f"reference data lacks configured feature(s): {', '.join(missing)}")
        self.frame = normalise(frame, numerical, categorical)
        super().__init__(self.frame, numerical, categorical)
        for name in numerical + categorical:
            if name not in self.stats:
                raise ValueError(f"reference column {name!r} has no {'finite ' if name in numerical else ''}values")
        self.prediction_type = prediction_type
        self.prediction_stats = None
        if predictions is not None:
            cleaned = _clean(_typed(predictions, prediction_type))
            if not cleaned.empty:
                self.prediction_stats = ColumnStats(cleaned, prediction_type)
        self.multivariate = fit_multivariate(self.frame, self.numerical, self.categorical, multivariate_method)
        digest = hashlib.sha256(pd.util.hash_pandas_object(self.frame[numerical + categorical], index=False).values)
        self.hash = digest.hexdigest()[:12]


def _typed(col: pd.Series, kind: str) -> pd.Series:
    if kind == NUMERICAL:
        return pd.to_numeric(col, errors="coerce").astype(float)
    return category_texts(col)  # 3, 3.0 and "3" of an integer code are one category


def _clean(col: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col):
        col = col.replace([np.inf, -np.inf], np.nan)
    return col.dropna()


def normalise(frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numbers as float, categories as their text (missing stays missing), in one fixed column order."""
    columns: dict[str, pd.Series] = {}
    for name in numerical:
        columns[name] = (
            _typed(frame[name], NUMERICAL) if name in frame else pd.Series(np.nan, index=frame.index, dtype=float)
        )
    for name in categorical:
        columns[name] = (
            _typed(frame[name], CATEGORICAL) if name in frame else pd.Series(None, index=frame.index, dtype=object)
        )
    return pd.DataFrame(columns, index=frame.index)


def feature_drift(
    reference: Columns, window: pd.DataFrame, name: str, override: MethodOverride | None = None,
    alpha: float | None = None,
) -> FeatureDrift:
    kind = reference.feature_type(name)
    raw = window[name]  # normalise() gives every configured feature a column
    rows = len(raw)
    present = _clean(raw)
    missing_share = 1 - len(present) / rows if rows else 0.0
    if name not in reference.stats:  # a segment whose reference rows all lack the feature
        return FeatureDrift(name, kind, None, None, None, None, None, missing_share, 0.0,
                            "no values in the reference rows")
    if kind == NUMERICAL:
        low, high = reference.ranges[name]
        unseen = int(((present < low) | (present > high)).sum())
    else:
        unseen = int((~present.isin(reference.stats[name].unique)).sum())
    unseen_share = unseen / rows if rows else 0.0

    window_shape, reference_shape = reference.distribution(name, present), reference.reference_distribution(name)

    def made(
        stat_test: str | None = None,
        display: str | None = None,
        score: float | None = None,
        threshold: float | None = None,
        detected: bool | None = None,
        error: str | None = None,
    ) -> FeatureDrift:
        return FeatureDrift(name, kind, stat_test, display, score, threshold, detected, missing_share, unseen_share,
                            error, distribution=window_shape, reference_distribution=reference_shape)

    if present.empty:
        return made(error="no values in the window (all missing)")
    try:
        r = judge(reference.stats[name], present, override or MethodOverride(), alpha)
    except Exception as exc:  # one broken feature must not hide the others
        log.warning("drift: feature %s failed: %s", name, exc)
        return made(error=f"{type(exc).__name__}: {exc}")
    if not np.isfinite(r.score):
        return made(r.name, r.display, threshold=r.threshold, error=f"{r.display} gave a non-finite score")
    return made(r.name, r.display, r.score, r.threshold, r.detected)


CATEGORY_TESTS = ("chisquare", "z", "jensenshannon")  # tests of value shares


def seen(ref: ColumnStats, values: pd.Series) -> pd.Series:
    """Which of ``values`` the reference showed. With calibrated thresholds the CATEGORY_TESTS judge only these;
    the share of the others is judged on its own (calibration.unseen_limit). The report masks the same values."""
    return values.isin(ref.unique)


def judge(ref: ColumnStats, present: pd.Series, override: MethodOverride, alpha: float | None) -> TestResult:
    """One column's test, score, threshold in force and verdict. ``alpha`` None: Evidently's thresholds; else the
    threshold calibrated to that per-run false-flag probability (a configured threshold wins either way)."""
    test = select_test(ref, present, override.method)
    if alpha is None or override.threshold is not None or test.name not in CALIBRATED_TESTS:
        return run_test(ref, present, override.method, override.threshold, test)
    if test.name in CATEGORY_TESTS:
        # values the reference never showed are judged by their share, not by the test (calibration.unseen_limit)
        shown = seen(ref, present)
        if not shown.all():
            unseen_drift = bool(1 - shown.mean() > unseen_limit(ref.rows, alpha))
            if not shown.any():
                r = run_test(ref, present, override.method, None, test)
                return TestResult(r.name, r.display, r.score, r.threshold, unseen_drift)
            r = judge(ref, present[shown], override, alpha)
            return TestResult(r.name, r.display, r.score, r.threshold, r.detected or unseen_drift)
    statistic_limit = (calibrated_statistic_threshold(ref, test.name, len(present), alpha)
                       if test.name == "chisquare" else None)
    return run_test(ref, present, override.method, calibrated_threshold(ref, test.name, len(present), alpha), test,
                    statistic_limit)


@functools.cache
def threadpools() -> ThreadpoolController:
    """The process's BLAS and OpenMP thread pools, found once: threadpoolctl scans the loaded libraries each time
    it is built (~7 ms), too slow for every run. Found after the imports that load them (scikit-learn's OpenMP
    comes with exporter.estimation)."""
    return ThreadpoolController()


def compute_drift(
    reference: Reference,
    window: pd.DataFrame,
    *,
    min_rows: int = 1,
    drift_share: float = 0.5,
    per_feature: dict[str, MethodOverride] | None = None,
    prediction_override: MethodOverride | None = None,
    alpha: float | None = None,
    now: float | None = None,
) -> DriftResult:
    """Drift of every feature (and of the model's predictions) in ``window`` against ``reference``. ``alpha``: the
    per-run false-flag probability calibrated thresholds are set to (``calibration.per_run_alpha``); None for
    Evidently's fixed thresholds (the multivariate score, which Evidently lacks, then uses the default budget)."""
    # One BLAS thread: the vectors here are small, and on a busy machine a second OpenBLAS thread waking up for
    # each dot product costs more than the product.
    with threadpools().limit(limits=1, user_api="blas"):
        return _compute_drift(reference, window, min_rows=min_rows, drift_share=drift_share, per_feature=per_feature,
                              prediction_override=prediction_override, alpha=alpha, now=now)


def _compute_drift(
    reference: Reference,
    window: pd.DataFrame,
    *,
    min_rows: int,
    drift_share: float,
    per_feature: dict[str, MethodOverride] | None,
    prediction_override: MethodOverride | None,
    alpha: float | None,
    now: float | None,
) -> DriftResult:
    computed_at = time.time() if now is None else now
    rows = len(window)
    if rows < min_rows:
        return DriftResult(computed_at, rows, min_rows, drift_share,
                           skipped_reason=f"window has {rows} rows, fewer than min_rows={min_rows}")
    window = normalise(window, reference.numerical, reference.categorical).assign(
        **({"prediction": window["prediction"]} if "prediction" in window else {})
    )
    per_feature = per_feature or {}
    features = {
        name: feature_drift(reference, window, name, per_feature.get(name), alpha)
        for name in reference.numerical + reference.categorical
    }
    prediction = None
    if reference.prediction_stats is not None and "prediction" in window:
        current = _clean(_typed(window["prediction"], reference.prediction_type))
        if not current.empty:
            try:
                r = judge(reference.prediction_stats, current, prediction_override or MethodOverride(), alpha)
                if np.isfinite(r.score):
                    prediction = PredictionDrift(r.name, r.display, r.score, r.threshold, r.detected)
            except Exception as exc:
                log.warning("drift: prediction drift failed: %s", exc)
    multivariate = None
    if reference.multivariate is not None:
        try:
            multivariate = reference.multivariate.score(window, per_run_alpha(0.01, 60.0) if alpha is None else alpha)
        except Exception as exc:  # logged and absent from the metrics; per-feature drift is still published
            log.warning("drift: multivariate drift failed: %s", exc)
    return DriftResult(computed_at, rows, min_rows, drift_share, features=features, prediction=prediction,
                       multivariate=multivariate)
