"""Calibrated drift thresholds: each feature's threshold is the score its stat test reaches under no drift with a
chosen small probability, for this reference and the window's row count.

**The budget.** Users choose the expected false alerts per feature per month. A run can only start an alert when
it flags the feature, so the expected number of false alerts in a month is at most (runs per month) x P(a run
flags the feature under no drift): whatever the traffic rate and whatever the alert's ``for:``, a per-run false-flag
probability ``alpha = budget / runs per month`` keeps the expected false alerts within budget (the union bound;
real rates are lower, since one alert spans several flagged runs).

**The null.** "No drift" means the window is m fresh rows of the population the reference's n rows came from.
The reference is itself a sample: its own error is in every window's score, which is why Evidently's chi-square
(reference shares taken as exact) flags far more than its p-value says. The null is simulated from the
reference alone: the population's shares are drawn from their posterior given the reference (a Dirichlet over
the reference's values, i.e. the Bayesian bootstrap), and the window is m draws from it.

**The tail.** alpha is ~1e-7, far beyond what a few thousand simulated windows show, so each test's tail has a
model whose one free constant is fitted to the simulation:
- K-S: Evidently's two-sample p-value is already exact (uniform under no drift for continuous data,
  conservative with ties): the threshold is alpha itself.
- Wasserstein (normed): sqrt(nm/(n+m)) W / std is, in the limit, the L1 norm of a Gaussian process whose largest
  one-dimensional variance is 1, attained by the difference of means (Var f(X) <= Var X for any 1-Lipschitz f).
  Its far tail is that of |N(0, 1)| shifted by the other directions' contribution d:
  P(score > x) ~ 2 Phi(-(x - d)); d is fitted at the simulation's 99.5th percentile.
- z (two values): exact; the window's count is beta-binomial under no drift.
- For value shares, the population's are drawn from Dirichlet(counts + 1) rather than the Bayesian bootstrap's
  Dirichlet(counts): a rare category's share needs the room an exact Poisson upper bound gives it.
- Chi-square and Jensen-Shannon (categories, and numbers with few values): in the limit scaled chi-square
  variables; a Gamma distribution through the simulated statistic's 90th and 99.75th percentiles carries the
  heavier tail of rare categories.
- Values the reference never showed are left out of the categorical tests (Evidently's chi-square would give them
  a p-value of 0 at any share); their share is judged on its own, see ``unseen_limit``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from exporter.stattests import ColumnStats

MONTH_SECONDS = 30 * 24 * 3600
CALIBRATED_TESTS = ("ks", "wasserstein", "chisquare", "z", "jensenshannon")
P_VALUE_TESTS = ("ks", "chisquare", "z")  # drift when the score is below the threshold; the others at or above it
REPLICATES = 2000  # simulated no-drift windows per (column, test, window size)
MAX_GRID = 1000  # a numerical column's distinct values are merged into at most this many quantile bins
WINDOW_STEP = 1.05  # window sizes are simulated on a geometric grid, rounded down: at most 5 % fewer rows


def per_run_alpha(false_alerts_per_month: float, interval_seconds: float) -> float:
    """The per-run probability of a false flag that keeps the expected false alerts per month within budget."""
    runs_per_month = MONTH_SECONDS / interval_seconds
    return min(0.5, false_alerts_per_month / runs_per_month)


@dataclass(frozen=True)
class NullModel:
    """A test's no-drift tail for one reference column and window size, in the test's normalised units."""

    test: str
    shift: float = 0.0  # Wasserstein: d in P(x > t) ~ 2 Phi(-(t - d))
    shape: float = 0.0  # chi-square, Jensen-Shannon: Gamma(shape, scale) of the normalised statistic
    scale: float = 0.0
    counts: tuple[int, int] = (0, 0)  # z: the reference's two category counts

    def threshold(self, alpha: float, n: int, m: int, categories: int) -> float:
        """The score threshold (in Evidently's units) flagged with probability alpha under no drift."""
        spread = 1 / n + 1 / m
        if self.test == "ks" or (self.test == "z" and not all(self.counts)):
            return alpha  # exact p-value (a one-valued reference: any other value is unseen, judged by its share)
        if self.test == "wasserstein":
            return (stats.norm.isf(alpha / 2) + self.shift) * math.sqrt(spread)
        if self.test == "z":
            return _z_threshold(self.counts, m, alpha)
        t = float(stats.gamma.isf(alpha, self.shape, scale=self.scale))
        if self.test == "chisquare":  # statistic / (1 + m/n) -> Evidently's p-value of that statistic
            return float(stats.chi2.sf(t * m * spread, max(categories - 1, 1)))
        return math.sqrt(t * spread / 8)  # 8 JSD / (1/n + 1/m) -> Jensen-Shannon distance

    def statistic_threshold(self, alpha: float, n: int, m: int) -> float:
        """Chi-square: the threshold as the statistic itself (its p-value is ``threshold``). A large window against
        a small reference puts that p-value below the smallest float, 0.0 as is a shifted window's: the verdict
        compares statistics (the same degrees of freedom), which do not underflow."""
        if self.test != "chisquare":
            raise ValueError(f"no statistic threshold for {self.test!r}")
        return float(stats.gamma.isf(alpha, self.shape, scale=self.scale)) * m * (1 / n + 1 / m)


def calibrated_threshold(ref: ColumnStats, test: str, m: int, alpha: float) -> float:
    """The threshold of ``test`` on a window of ``m`` values that flags it with probability alpha under no drift.
    The no-drift model is simulated once per (test, window size on a 5 % grid) and kept on the reference column;
    it does not depend on alpha."""
    return _null(ref, test, m).threshold(alpha, ref.rows, m, ref.unique_count)


def calibrated_statistic_threshold(ref: ColumnStats, test: str, m: int, alpha: float) -> float:
    """calibrated_threshold as the test's statistic (chi-square), for the verdict where the p-values underflow."""
    return _null(ref, test, m).statistic_threshold(alpha, ref.rows, m)


def _null(ref: ColumnStats, test: str, m: int) -> NullModel:
    if test not in CALIBRATED_TESTS:
        raise ValueError(f"no calibrated threshold for {test!r}")
    grid_m = window_grid(m)
    model = ref.null_models.get((test, grid_m))
    if model is None:
        rng = np.random.default_rng([zlib.crc32(test.encode()), ref.rows, grid_m])
        model = ref.null_models[(test, grid_m)] = null_model(ref, test, grid_m, rng)
    return model


def unseen_limit(n: int, alpha: float) -> float:
    """The largest share of the population a value can have and still be absent from n reference rows with
    probability alpha: a window share of values the reference never showed above it is drift, below it the
    reference may just have missed them."""
    return 1 - alpha ** (1 / n)


def window_grid(m: int) -> int:
    """``m`` rounded down onto a geometric grid (5 % steps): thresholds are simulated once per grid size."""
    if m <= 20:
        return max(m, 1)
    return int(WINDOW_STEP ** math.floor(math.log(m) / math.log(WINDOW_STEP) + 1e-9))


def null_model(ref: ColumnStats, test: str, m: int, rng: np.random.Generator,
               replicates: int = REPLICATES) -> NullModel:
    if test == "ks":
        return NullModel(test)
    if test == "z":
        counts = sorted(ref.counts.items())  # Evidently tests the first category in sorted order
        return NullModel(test, counts=(int(counts[0][1]), int(counts[1][1])) if len(counts) == 2 else (0, 0))
    if test == "wasserstein":
        scores = _wasserstein_null(ref, m, rng, replicates) / math.sqrt(1 / ref.rows + 1 / m)
        q = 1 - 10 / replicates
        shift = float(np.quantile(scores, q)) - float(stats.norm.isf((1 - q) / 2))
        return NullModel(test, shift=max(shift, 0.0))
    t = _categorical_null(ref, test, m, rng, 2 * replicates)
    low, high = np.quantile(t, [0.9, 1 - 10 / t.size])
    if not (0 < low < high):
        raise ValueError(f"{test}: degenerate no-drift distribution (one value only?)")
    # A Gamma through two upper quantiles rather than the moments: rare categories give the statistic a heavier
    # tail than its mean and variance say, and it is the tail that sets the threshold.
    ratio = high / low
    upper = stats.gamma.isf(10 / t.size, 1e-3) / stats.gamma.isf(0.1, 1e-3)
    shape = 1e-3 if ratio >= upper else optimize.brentq(
        lambda a: stats.gamma.isf(10 / t.size, a) / stats.gamma.isf(0.1, a) - ratio, 1e-3, 1e4)
    return NullModel(test, shape=shape, scale=low / stats.gamma.isf(0.1, shape))


def _population(counts: np.ndarray, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """Population shares drawn from their posterior given the reference counts (Dirichlet; Bayesian bootstrap)."""
    draws = rng.standard_gamma(np.broadcast_to(counts.astype(float), (replicates, counts.size)))
    return draws / draws.sum(axis=1, keepdims=True)


def _wasserstein_null(ref: ColumnStats, m: int, rng: np.random.Generator, replicates: int) -> np.ndarray:
    values, counts = np.unique(ref.sorted, return_counts=True)
    if values.size > MAX_GRID:  # merge neighbouring values into quantile bins, each placed at its last value
        ends = np.unique(np.searchsorted(np.cumsum(counts), np.linspace(0, ref.rows, MAX_GRID + 1)[1:], "left"))
        counts = np.diff(np.concatenate(([0], np.cumsum(counts)[ends])))
        values = values[ends]
    gaps = np.diff(values)
    ref_cdf = np.cumsum(counts)[:-1] / ref.rows
    out = np.empty(replicates)
    for start in range(0, replicates, 250):
        b = min(250, replicates - start)
        window = rng.poisson(m * _population(counts, rng, b)).astype(float)
        window_cdf = np.cumsum(window, axis=1)[:, :-1] / np.maximum(window.sum(axis=1, keepdims=True), 1)
        out[start:start + b] = np.abs(window_cdf - ref_cdf) @ gaps
    return out / max(ref.std, 0.001)


def _z_threshold(counts: tuple[int, int], m: int, alpha: float) -> float:
    """Exact for two values: the window's count of the first value is beta-binomial under no drift (binomial with
    the share drawn from its posterior given the reference). Evidently's z p-value of every possible count, and the
    largest p-value threshold whose flagged counts have at most probability alpha together."""
    a, b = counts
    n = a + b
    k = np.arange(m + 1)
    p1, p2 = a / n, k / m
    pooled = (a + k) / (n + m)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, np.abs(p1 - p2) / se, 0.0)
    p_values = 2 * stats.norm.sf(z)
    order = np.argsort(p_values, kind="stable")
    mass = np.cumsum(stats.betabinom.pmf(k[order], m, a + 1, b + 1))  # +1: as for the categories, see below
    allowed = int(np.searchsorted(mass, alpha, side="right"))  # the most extreme counts within alpha
    return float(p_values[order[allowed]]) if allowed < order.size else 1.0


def _categorical_null(ref: ColumnStats, test: str, m: int, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """The test's statistic on simulated no-drift windows, normalised so that its limit is chi-square."""
    counts = np.array(list(ref.counts.values()), dtype=float)
    n = ref.rows
    # Dirichlet(counts + 1): with the Bayesian bootstrap's Dirichlet(counts) a category seen 5 times is given too
    # little room to be truly 3 times as common, and references that undercount a rare category flag too many
    # windows; the +1 is the exact upper confidence bound of a Poisson count.
    window = rng.multinomial(m, _population(counts + 1, rng, replicates)).astype(float)
    ref_share = counts / n
    if test == "chisquare":  # Evidently: window counts against reference shares taken as exact
        expected = ref_share * m
        return ((window - expected) ** 2 / expected).sum(axis=1) / (1 + m / n)
    share = window / m
    mid = (share + ref_share) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_ref = np.where(ref_share > 0, ref_share * np.log(ref_share / mid), 0.0).sum(axis=1)
        kl_win = np.where(share > 0, share * np.log(share / mid), 0.0).sum(axis=1)
    return 8 * (kl_ref + kl_win) / 2 / (1 / n + 1 / m)
