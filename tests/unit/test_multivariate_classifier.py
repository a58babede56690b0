"""The domain-classifier multivariate method: its no-drift flag rate on fresh rows of the reference's population,
and the changes it sees, a joint shift of the means among them, which the reconstruction error cannot see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.detection import CATEGORICAL, CATEGORY_LEVELS, CATEGORY_SHARES, NUMERICAL, draw
from exporter.calibration import per_run_alpha
from exporter.drift import Reference, compute_drift, normalise
from exporter.multivariate import CLASSIFIER, METHOD, ClassifierReference, fit_multivariate


def fresh(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    return normalise(draw(rows, rng), NUMERICAL, CATEGORICAL)


@pytest.fixture(scope="module")
def reference() -> ClassifierReference:
    model = fit_multivariate(fresh(2000, np.random.default_rng(1)), NUMERICAL, CATEGORICAL, CLASSIFIER)
    assert isinstance(model, ClassifierReference)
    return model


def test_fresh_windows_are_flagged_at_most_at_alpha(reference: ClassifierReference) -> None:
    """At a countable alpha (0.02), 40 fresh windows: at most the flags a binomial(40, 0.02) exceeds with
    probability 0.0013."""
    rng = np.random.default_rng(2)
    results = [reference.score(fresh(1000, rng), 0.02) for _ in range(40)]
    assert all(r.method == CLASSIFIER and r.rows == 1000 for r in results)
    assert sum(r.detected for r in results) <= 4
    scores = np.array([r.score for r in results])
    assert abs(scores.mean() - 0.5) < 0.01  # an AUC near one half: no signal in fresh rows


@pytest.mark.parametrize("change", ["means", "categories", "correlation"])
def test_joint_changes_are_flagged_at_the_default_alpha(reference: ClassifierReference, change: str) -> None:
    rng = np.random.default_rng(3)
    window = draw(3000, rng, "correlation" if change == "correlation" else None)
    if change == "means":  # each well inside its range: a per-feature test at this size barely sees it
        window[["normal", "partner"]] += 0.1
        window["integers"] += 0.25
    if change == "categories":
        shares = CATEGORY_SHARES.copy()
        shares[0] -= 0.10
        shares[-1] += 0.10
        window["category"] = CATEGORY_LEVELS[rng.choice(4, size=len(window), p=shares)]
        window["flag"] = np.where(rng.random(len(window)) < 0.80, "no", "yes")  # and the flag five points
    alpha = per_run_alpha(0.01, 60.0)
    result = reference.score(normalise(window, NUMERICAL, CATEGORICAL), alpha)
    assert result.detected, result
    assert reference.score(fresh(3000, rng), alpha).detected is False


def test_a_joint_mean_shift_the_reconstruction_error_cannot_see() -> None:
    rng = np.random.default_rng(4)
    frame = draw(2000, rng)
    window = draw(3000, rng)
    window[["normal", "partner"]] += 0.1
    window["integers"] += 0.25
    alpha = per_run_alpha(0.01, 60.0)
    for method, seen in ((METHOD, False), (CLASSIFIER, True)):
        reference = Reference(frame, NUMERICAL, CATEGORICAL, multivariate_method=method)
        result = compute_drift(reference, window, alpha=alpha, min_rows=1).multivariate
        assert result is not None and result.method == method
        assert result.detected is seen, (method, result)


def test_the_classifier_needs_two_features_and_enough_rows() -> None:
    rng = np.random.default_rng(5)
    assert fit_multivariate(fresh(100, rng), ["normal"], [], CLASSIFIER) is None
    assert fit_multivariate(fresh(5, rng), NUMERICAL, CATEGORICAL, CLASSIFIER) is None  # logged, drift goes on
    model = fit_multivariate(fresh(300, rng), NUMERICAL, CATEGORICAL, CLASSIFIER)
    assert isinstance(model, ClassifierReference)
    with pytest.raises(ValueError, match="at least 5"):
        model.score(fresh(3, rng), 0.01)
