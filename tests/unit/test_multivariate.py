"""Multivariate drift (PCA reconstruction error) on synthetic populations whose truth is known.

"No drift" windows are fresh samples of the reference's population, never the reference rows replayed: the PCA fits
its own rows better than fresh ones, so replaying them would hide the false alarms real traffic raises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from exporter.calibration import per_run_alpha
from exporter.drift import Reference, compute_drift, normalise
from exporter.multivariate import (
    MAX_WIDTH,
    MAX_WINDOW_ROWS,
    METHOD,
    METHODS,
    MultivariateDrift,
    MultivariateReference,
)

DEFAULT_ALPHA = per_run_alpha(0.01, 60.0)
NUMERICAL = ["x1", "x2", "x3", "x4"]
CATEGORICAL = ["c1"]


def population(n: int, rng: np.random.Generator, corr: float = 0.8) -> pd.DataFrame:
    """x1, x2 standard normal with correlation ``corr``; x3 skewed; x4 depends on x3; c1 a categorical."""
    xy = rng.multivariate_normal([0.0, 0.0], [[1.0, corr], [corr, 1.0]], size=n)
    x3 = rng.gamma(2.0, 1.0, n)
    return pd.DataFrame({
        "x1": xy[:, 0],
        "x2": xy[:, 1],
        "x3": x3,
        "x4": rng.normal(size=n) + 0.5 * x3,
        "c1": rng.choice(["a", "b", "c", "d"], p=[0.4, 0.3, 0.2, 0.1], size=n).astype(object),
    })


@pytest.fixture(scope="module")
def reference() -> MultivariateReference:
    return MultivariateReference(population(5000, np.random.default_rng(1)), NUMERICAL, CATEGORICAL)


def fresh_windows(m: int, references: int = 10, windows: int = 20) -> list[tuple[MultivariateReference, pd.DataFrame]]:
    """(reference, fresh window) pairs: several references, since alpha is a probability over both (the threshold
    counts the reference's own sampling error: given one reference the rate may lie above or below alpha)."""
    rng = np.random.default_rng(100 + m)
    pairs = []
    for _ in range(references):
        reference = MultivariateReference(population(5000, rng), NUMERICAL, CATEGORICAL)
        fresh = population(windows * m, rng)
        pairs += [(reference, fresh.iloc[i * m:(i + 1) * m]) for i in range(windows)]
    return pairs


@pytest.mark.parametrize("m", [300, 3000])
def test_no_drift_false_flag_share_is_at_most_alpha(m: int) -> None:
    """200 fresh windows (20 for each of 10 references): the share flagged at alpha = 0.01 is within a binomial
    margin of at most alpha, none is flagged at the default alpha, and the threshold is not vacuously high."""
    alpha, pairs = 0.01, fresh_windows(m)
    results = [(reference, reference.score(window, alpha)) for reference, window in pairs]
    flagged = sum(r.detected for _, r in results)
    assert flagged <= stats.binom.ppf(0.999, len(results), alpha), f"{flagged} of {len(results)} fresh windows flagged"
    assert not any(r.score >= reference.threshold(m, DEFAULT_ALPHA) for reference, r in results)
    assert all(r.rows == m for _, r in results)
    # Not vacuous: the threshold sits a few standard deviations of a fresh window's mean above the fresh mean.
    scores = np.array([r.score for _, r in results])
    z = [(results[i][1].threshold - scores[i:i + 20].mean()) / scores[i:i + 20].std() for i in range(0, 200, 20)]
    assert 1.5 < np.median(z) < 5.0, z


def test_correlation_flip_with_unchanged_marginals_is_flagged() -> None:
    """corr(x1, x2) 0.8 -> -0.8 (x2 negated: its marginal is symmetric, so unchanged) in a 300-row window: the
    per-feature distributions do not move, the multivariate score does, at the default tiny alpha."""
    rng = np.random.default_rng(2)
    ref = population(2000, rng)
    reference = Reference(ref, NUMERICAL, CATEGORICAL, multivariate_method=METHOD)
    window = population(300, rng)
    flipped = window.assign(x2=-window["x2"])
    assert np.corrcoef(flipped["x1"], flipped["x2"])[0, 1] < -0.7
    for name in ("x1", "x2"):  # the marginals: K-S cannot tell them from the reference
        assert stats.ks_2samp(flipped[name], ref[name]).pvalue > 0.05, name

    drifted = compute_drift(reference, flipped)
    stable = compute_drift(reference, window)
    assert isinstance(drifted.multivariate, MultivariateDrift) and stable.multivariate is not None
    assert drifted.multivariate.detected, drifted.multivariate
    assert not stable.multivariate.detected, stable.multivariate
    # c1 weighs as much as a number in the encoding, so it takes a share of the components: a margin, not 1.2
    assert drifted.multivariate.score > 1.1 * drifted.multivariate.threshold
    assert drifted.multivariate.threshold == stable.multivariate.threshold  # same rows, same alpha
    out = drifted.to_dict()["multivariate"]
    assert out == {"method": "pca_reconstruction", "score": drifted.multivariate.score,
                   "threshold": drifted.multivariate.threshold, "detected": True, "rows": 300}


def mixed_population(n: int, rng: np.random.Generator, swap: bool = False) -> pd.DataFrame:
    """A categorical that sets a number's sign (swapped: the other sign; both marginals unchanged), missing values
    in both, and a categorical with more categories than are one-hot encoded."""
    kind = rng.choice(["up", "down"], size=n)
    sign = np.where(kind == "up", 1.0, -1.0) * (-1.0 if swap else 1.0)
    x = 2.0 * sign + rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    kind = kind.astype(object)
    kind[rng.random(n) < 0.1] = None
    return pd.DataFrame({
        "x": x,
        "y": rng.normal(size=n),
        "kind": kind,
        "code": rng.integers(0, 30, n),  # integer codes, read as text categories; 30 > the 20 one-hot columns
    })


@pytest.mark.parametrize("method", METHODS)
def test_categorical_and_missing_values(method: str) -> None:
    rng = np.random.default_rng(3)
    reference = Reference(mixed_population(3000, rng), ["x", "y"], ["kind", "code"], multivariate_method=method)
    assert reference.multivariate is not None

    fresh = compute_drift(reference, mixed_population(500, rng)).multivariate
    assert fresh is not None and np.isfinite(fresh.score) and not fresh.detected, fresh

    swapped = compute_drift(reference, mixed_population(500, rng, swap=True)).multivariate
    assert swapped is not None and swapped.detected, swapped

    # Unseen categories, a number missing everywhere, a categorical missing everywhere: scored, and flagged.
    odd = mixed_population(500, rng).assign(x=np.nan, kind=None, code=rng.integers(100, 200, 500))
    scored = compute_drift(reference, odd).multivariate
    assert scored is not None and np.isfinite(scored.score) and scored.detected, scored


def test_a_large_window_is_scored_on_a_bounded_subsample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100 000-row window costs what MAX_WINDOW_ROWS rows cost: only that many are encoded and scored, and the
    threshold is the one of the rows scored. (The seconds it takes are measured by ``make bench-detection``:
    ``multivariate_cost`` -> ``score_seconds_100000_rows`` in benchmarks/detection.json.)"""
    rng = np.random.default_rng(4)
    names = [f"n{i}" for i in range(10)]
    ref = pd.DataFrame(rng.normal(size=(20_000, 10)) @ rng.normal(size=(10, 10)), columns=names)
    ref["c"] = rng.choice(list("abcdefgh"), size=len(ref))
    reference = MultivariateReference(normalise(ref, names, ["c"]), names, ["c"])
    window = normalise(ref.sample(100_000, replace=True, random_state=5), names, ["c"])
    encoder = type(reference.model.encoder)
    transform = encoder.transform
    encoded: list[int] = []

    def spy(self: Any, frame: pd.DataFrame) -> np.ndarray:
        encoded.append(len(frame))
        return transform(self, frame)

    monkeypatch.setattr(encoder, "transform", spy)
    result = reference.score(window, DEFAULT_ALPHA)
    assert encoded == [MAX_WINDOW_ROWS] and result.rows == MAX_WINDOW_ROWS
    assert result.threshold == reference.threshold(MAX_WINDOW_ROWS, DEFAULT_ALPHA)
    assert reference.score(window, DEFAULT_ALPHA) == result  # the subsample has a fixed seed


def test_one_feature_or_a_failed_fit_leaves_multivariate_drift_out() -> None:
    rng = np.random.default_rng(6)
    ref = population(500, rng)
    single = Reference(ref, ["x1"], [])
    assert single.multivariate is None
    assert compute_drift(single, population(100, rng)).multivariate is None
    # Too few reference rows to cross-fit: logged, no multivariate model, the per-feature drift still runs.
    tiny = Reference(ref.head(6), NUMERICAL, CATEGORICAL)
    assert tiny.multivariate is None
    result = compute_drift(tiny, population(100, rng))
    assert result.multivariate is None and result.to_dict()["multivariate"] is None
    assert len(result.evaluated) == len(NUMERICAL + CATEGORICAL)


def test_threshold_falls_with_rows_and_rises_as_alpha_shrinks(reference: MultivariateReference) -> None:
    assert reference.threshold(100, DEFAULT_ALPHA) > reference.threshold(300, DEFAULT_ALPHA) > reference.threshold(
        3000, DEFAULT_ALPHA) > reference.fresh_mean
    assert reference.threshold(300, 1e-9) > reference.threshold(300, DEFAULT_ALPHA) > reference.threshold(300, 0.01)
    # The reference's own uncertainty keeps the threshold above mu however large the window.
    assert reference.threshold(10**9, DEFAULT_ALPHA) > reference.fresh_mean + 4 * reference.fresh_sd / np.sqrt(
        reference.fit_rows)


def test_many_features_are_projected_and_still_scored() -> None:
    """Encoded wider than MAX_WIDTH (here 100 numbers + 20 categoricals of 10 levels: 340 columns), rows are
    projected onto MAX_WIDTH random directions: a shared factor whose sign flips in half of the numbers (every
    marginal symmetric, so unchanged) is still seen, and fresh rows are not flagged."""
    rng = np.random.default_rng(8)
    numerical = [f"n{i}" for i in range(100)]
    categorical = [f"c{i}" for i in range(20)]

    def frame(n: int, flip: bool = False) -> pd.DataFrame:
        factor = rng.normal(size=(n, 1))
        signs = np.where((np.arange(100) < 50) & flip, -1.0, 1.0)
        numbers = (factor + rng.normal(size=(n, 100))) * signs
        cats = rng.choice(list("abcdefghij"), size=(n, 20)).astype(object)
        return pd.concat([pd.DataFrame(numbers, columns=numerical), pd.DataFrame(cats, columns=categorical)], axis=1)

    reference = MultivariateReference(frame(2000), numerical, categorical)
    assert reference.model.encoder.projection is not None and reference.model.encoder.width == MAX_WIDTH
    assert not reference.score(frame(300), DEFAULT_ALPHA).detected
    flipped = reference.score(frame(300, flip=True), DEFAULT_ALPHA)
    assert flipped.detected, flipped
