"""Evidently's drift stat tests with the reference side computed once.

``DataDriftPreset`` picks a test per column and runs it on the reference and the window, and most of its cost is
the reference again at every run: sorting it, counting its categories, counting distinct values across both
samples to pick the test. Here those reference-side quantities are computed once per reference. The tests
Evidently picks by default are computed from them with its arithmetic: the normed Wasserstein and Jensen-Shannon
distances for large references, and the chi-square and two-proportion z tests for the categories of a small one.
Their scores match Evidently's to floating-point rounding (the tests hold them to 1e-12). Any other test, and any
configured method, runs through Evidently itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import chi2

if TYPE_CHECKING:
    from evidently.legacy.core import ColumnType
from scipy.spatial import distance

NUMERICAL = "numerical"
CATEGORICAL = "categorical"
SMALL_REFERENCE_ROWS = 1000  # Evidently: up to this many reference rows, p-value tests; above, distances


@dataclass(frozen=True)
class TestResult:
    name: str
    display: str
    score: float
    threshold: float
    detected: bool


@functools.cache
def evidently_stattests() -> Any:
    """Evidently's stat-test module, imported on first use: importing Evidently takes seconds, which the API process
    does not need to pay (the drift job's worker process pays it once, before it reports ready)."""
    from evidently.legacy.calculations import stattests

    return stattests


def column_type(kind: str) -> ColumnType:
    from evidently.legacy.core import ColumnType

    return ColumnType.Numerical if kind == NUMERICAL else ColumnType.Categorical


def check_method(method: str, kind: str) -> None:
    """Raise ValueError, listing the valid names, unless Evidently has a stat test ``method`` for columns of type
    ``kind``: ``get_stattest`` would raise the same at every run."""
    try:
        registry = evidently_stattests().registry
        registry.get_registered_stattest(method, column_type(kind))
    except ValueError:
        valid = sorted(
            name for name, by_type in registry._registered_stat_tests.items() if column_type(kind) in by_type
        )
        raise ValueError(
            f"{method!r} is not one of Evidently's stat tests for {kind} data: {', '.join(valid)}"
        ) from None


class ColumnStats:
    """One reference column (missing values already dropped) and what the tests need of it."""

    def __init__(self, values: pd.Series, kind: str) -> None:
        self.values = values
        self.kind = kind
        self.rows = len(values)
        self.unique_count = int(values.nunique())
        self._sorted: np.ndarray | None = None
        self._std: float | None = None
        self._counts: dict[Any, int] | None = None
        self._unique: set[Any] | None = None
        self.null_models: dict[tuple[str, int], Any] = {}  # calibration's no-drift models, by (test, window size)

    # computed on first use, then kept: most references need only some of these
    @property
    def sorted(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.sort(np.asarray(self.values, dtype=float))
        return self._sorted

    @property
    def std(self) -> float:
        if self._std is None:
            self._std = float(np.std(self.values))  # exactly as Evidently computes the norm
        return self._std

    @property
    def counts(self) -> dict[Any, int]:
        if self._counts is None:
            self._counts = dict(self.values.value_counts())
        return self._counts

    @property
    def unique(self) -> set[Any]:
        if self._unique is None:
            self._unique = set(self.values.unique())
        return self._unique

    def distinct_with(self, current: pd.Series, above: int) -> int:
        """Distinct values of reference and window together, exact whenever it is <= ``above`` (all that the
        choice of test looks at); the window is only looked at when the reference alone does not decide."""
        if self.unique_count > above:
            return self.unique_count
        return len(self.unique | set(current.unique()))

    def default_test(self, current: pd.Series) -> Any:
        """The test Evidently's DataDriftPreset picks for this column (``_get_default_stattest``)."""
        ev = evidently_stattests()
        if self.rows <= SMALL_REFERENCE_ROWS:
            if self.kind == NUMERICAL:
                n_values = self.distinct_with(current, 5)
                if n_values <= 5:
                    return ev.chi_stat_test if n_values > 2 else ev.z_stat_test
                return ev.ks_stat_test
            return ev.chi_stat_test if self.distinct_with(current, 2) > 2 else ev.z_stat_test
        if self.kind == NUMERICAL:
            return ev.jensenshannon_stat_test if self.distinct_with(current, 5) <= 5 else ev.wasserstein_stat_test
        return ev.jensenshannon_stat_test


def select_test(ref: ColumnStats, current: pd.Series, method: str | None = None) -> Any:
    """The stat test a run uses: the configured ``method``, else the one Evidently's preset would pick."""
    if method is None:
        return ref.default_test(current)
    return evidently_stattests().get_stattest(ref.values, current, column_type(ref.kind), method)


def run_test(ref: ColumnStats, current: pd.Series, method: str | None = None,
             threshold: float | None = None, test: Any = None,
             statistic_threshold: float | None = None) -> TestResult:
    """Drift of ``current`` (missing values dropped) against the reference column; ``test`` when already chosen
    by ``select_test``. ``statistic_threshold`` (chi-square over the reference's values): the verdict compares the
    statistic with it, as a large window's p-value and its threshold both underflow to 0.0."""
    ev = evidently_stattests()
    test = test or select_test(ref, current, method)
    if method is None:
        limit = test.default_threshold if threshold is None else threshold
        if test is ev.wasserstein_stat_test:
            score = _wasserstein_norm(ref, current)
            return TestResult(test.name, test.display_name, score, limit, bool(score >= limit))
        if test is ev.jensenshannon_stat_test:
            score = _jensenshannon_categories(ref, current)
            return TestResult(test.name, test.display_name, score, limit, bool(score >= limit))
        if test is ev.chi_stat_test:
            statistic, df = _chisquare_statistic(ref, current)
            score = float(chi2.sf(statistic, df))
            same_df = df == max(ref.unique_count - 1, 1)  # the values are the reference's (calibrated mode)
            drifted = statistic > statistic_threshold if statistic_threshold is not None and same_df else score < limit
            return TestResult(test.name, test.display_name, score, limit, bool(drifted))
        if test is ev.z_stat_test:
            score = _z_proportions(ref, current)
            return TestResult(test.name, test.display_name, score, limit, bool(score < limit))
    result = test(ref.values, current, column_type(ref.kind), threshold)
    return TestResult(test.name, test.display_name, float(result.drift_score), float(result.actual_threshold),
                      bool(result.drifted))


def _wasserstein_norm(ref: ColumnStats, current: pd.Series) -> float:
    """scipy.stats.wasserstein_distance / max(std(reference), 0.001), the reference already sorted."""
    u = ref.sorted
    v = np.sort(np.asarray(current, dtype=float))
    merged = np.concatenate((u, v))
    order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
    all_values = merged[order]
    deltas = np.diff(all_values)
    # scipy counts values <= x with two searchsorted calls; counting along the merge gives the same counts wherever
    # the next value differs, and where it does not the term is multiplied by a zero delta anyway.
    u_count = np.cumsum(order < u.size)[:-1]
    v_count = np.arange(1, merged.size) - u_count
    # np.dot (BLAS) rather than scipy's np.vecdot: the same sum up to rounding (~1e-16), several times faster here
    distance_ = float(np.dot(np.abs(u_count / u.size - v_count / v.size), deltas))
    return distance_ / max(ref.std, 0.001)


def _chisquare_categories(ref: ColumnStats, current: pd.Series) -> float:
    """Evidently's chi-square p-value (``_chi_stat_test``): the window's counts against the reference's scaled to
    the window, over the values of both; a value the reference lacks gives an infinite statistic (p-value 0)."""
    statistic, df = _chisquare_statistic(ref, current)
    return float(chi2.sf(statistic, df))


def _chisquare_statistic(ref: ColumnStats, current: pd.Series) -> tuple[float, int]:
    current_counts = dict(current.value_counts())
    keys = list(ref.unique | set(current_counts))
    k_norm = len(current) / ref.rows
    expected = np.array([ref.counts.get(k, 0) * k_norm for k in keys], dtype=float)
    observed = np.array([current_counts.get(k, 0) for k in keys], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(((observed - expected) ** 2 / expected).sum())
    return statistic, len(keys) - 1


def _z_proportions(ref: ColumnStats, current: pd.Series) -> float:
    """Evidently's two-proportion z test p-value (``_z_stat_test``) from counts instead of a per-row apply."""
    current_counts = current.value_counts()
    if ref.unique_count == 1 and len(current_counts) == 1 and current_counts.index[0] in ref.unique:
        return 1.0
    key = sorted(ref.unique | set(current_counts.index))[0]
    n1, n2 = ref.rows, len(current)
    p1 = float(n1 - ref.counts.get(key, 0)) / n1  # Evidently codes the first value in sorted order 0, others 1
    p2 = float(n2 - int(current_counts.get(key, 0))) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    from scipy.stats import norm

    return float(2 * (1 - norm.cdf(np.abs(z))))


def _jensenshannon_categories(ref: ColumnStats, current: pd.Series) -> float:
    """Evidently's Jensen-Shannon over value shares (its path for categories and for numbers with few values)."""
    keys = list(ref.unique | set(current.unique()))
    current_counts = dict(current.value_counts())
    ref_counts = ref.counts
    ref_percents = np.array([ref_counts.get(k, 0) / ref.rows for k in keys])
    current_percents = np.array([current_counts.get(k, 0) / len(current) for k in keys])
    return float(distance.jensenshannon(ref_percents, current_percents, None))
