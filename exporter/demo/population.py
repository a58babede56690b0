"""A generative model of a reference table: fresh rows from the reference's population, never the rows themselves.

Replaying the reference rows as "stationary" traffic hides every false drift alarm that real traffic raises (a
window of replayed rows is the reference, shuffled). The model here is simple and explicit: the categories and
target are drawn from the reference's joint frequencies, the numbers from a multivariate normal fitted per group,
rounded as the data are. A large sample of it has the reference's marginals and correlations within sampling error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

# Candidate measurement steps, coarsest first: a column is rounded to the coarsest one all its values are multiples of
STEPS = (1000.0, 500.0, 100.0, 50.0, 25.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.1, 0.05, 0.01, 0.001)
MIN_GROUP_ROWS = 20  # fewer complete rows: the group borrows its parent's normal (a 4x4 covariance needs data)


def data_step(values: np.ndarray) -> float | None:
    """The coarsest of STEPS every finite value is a multiple of (penguin body mass: 25 g), None when none is."""
    values = values[np.isfinite(values)]
    for step in STEPS:
        q = values / step
        if np.all(np.abs(q - np.round(q)) < 1e-6):
            return step
    return None


def round_to(values: np.ndarray, step: float | None) -> np.ndarray:
    """``values`` rounded to multiples of ``step``, without float noise (45.300000000000004)."""
    if step is None:
        return values
    decimals = max(0, math.ceil(-math.log10(step) - 1e-9))
    return np.round(np.round(values / step) * step, decimals)


@dataclass(frozen=True)
class Gaussian:
    """A multivariate normal; ``factor`` is the Cholesky factor of ``cov``."""

    mean: np.ndarray
    cov: np.ndarray
    factor: np.ndarray

    @classmethod
    def of(cls, mean: np.ndarray, cov: np.ndarray) -> Gaussian:
        return cls(mean, cov, np.linalg.cholesky(cov))

    @classmethod
    def fit(cls, rows: np.ndarray) -> Gaussian:
        mean = rows.mean(axis=0)
        cov = np.cov(rows, rowvar=False)
        try:
            return cls.of(mean, cov)
        except np.linalg.LinAlgError:  # a constant or collinear column: a ridge far below the data's precision
            return cls.of(mean, cov + np.eye(len(mean)) * 1e-9 * max(float(np.trace(cov)), 1.0))

    def with_covariance(self, i: int, j: int, factor: float) -> Gaussian:
        """This normal with cov[i, j] multiplied by ``factor``, moved back toward its value until the covariance is
        positive definite (the other correlations may rule the full change out; the original always is valid).

        The variances are kept, so each variable's marginal is unchanged; only the joint moves."""
        for t in np.linspace(0.0, 1.0, 201):
            cov = self.cov.copy()
            cov[i, j] = cov[j, i] = self.cov[i, j] * ((1 - t) * factor + t)
            try:
                return Gaussian.of(self.mean, cov)
            except np.linalg.LinAlgError:
                continue
        return self


@dataclass(frozen=True)
class Population:
    """Rows of a reference's population: categories and target jointly, numbers by a normal per group.

    ``combos`` holds each observed combination of the categorical columns (in ``categories`` order, None for a
    missing value) with its share ``weights``; ``combo_group`` maps it to its normal in ``gaussians``, fitted on
    the complete rows of its ``group_by`` group, or of a coarser group (a prefix of ``group_by``) when that one has
    fewer than MIN_GROUP_ROWS rows. Nullable numbers are None at the reference's rate, independently.
    """

    numerical: tuple[str, ...]
    categories: tuple[str, ...]
    combos: tuple[np.ndarray, ...]
    weights: np.ndarray
    combo_group: np.ndarray
    gaussians: tuple[Gaussian, ...]
    group_keys: tuple[tuple[Any, ...], ...]
    steps: tuple[float | None, ...]
    missing: tuple[float, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, numerical: Sequence[str], categories: Sequence[str], group_by: Sequence[str],
            nullable: Sequence[str] = ()) -> Population:
        """Fit on ``frame``; ``categories`` are drawn jointly (include the target), ``group_by`` lists those whose
        groups get their own normal, coarsest first (species, then sex). Only ``nullable`` numbers are ever None."""
        numerical, categories, group_by = tuple(numerical), tuple(categories), tuple(group_by)
        cats = frame[list(categories)].astype(object)
        cats = cats.where(cats.notna(), None)
        known = cats[[c for c in categories if c not in nullable]].notna().all(axis=1)
        counts = Counter(cats[known].itertuples(index=False, name=None))  # in order of first appearance
        combos = tuple(np.array([key[k] for key in counts], dtype=object) for k in range(len(categories)))
        weights = np.array(list(counts.values()), dtype=float) / int(known.sum())

        numbers = frame[list(numerical)].to_numpy(dtype=float)
        complete = np.isfinite(numbers).all(axis=1)
        group_values = cats[list(group_by)].to_numpy(dtype=object)
        positions = [categories.index(g) for g in group_by]
        keys: list[tuple[Any, ...]] = []
        gaussians: list[Gaussian] = []
        combo_group = np.empty(len(weights), dtype=np.int64)
        for c in range(len(weights)):
            key = tuple(combos[p][c] for p in positions)
            for depth in range(len(key), -1, -1):
                sub = key[:depth]
                if any(v is None for v in sub):
                    continue
                rows = complete & np.all(group_values[:, :depth] == np.array(sub, dtype=object), axis=1)
                if rows.sum() >= MIN_GROUP_ROWS or depth == 0:
                    break
            if sub not in keys:
                keys.append(sub)
                gaussians.append(Gaussian.fit(numbers[rows]))
            combo_group[c] = keys.index(sub)
        steps = tuple(data_step(numbers[:, k]) for k in range(len(numerical)))
        missing = tuple(float(np.mean(~np.isfinite(numbers[:, k]))) if name in nullable else 0.0
                        for k, name in enumerate(numerical))
        return cls(numerical, categories, combos, weights, combo_group, tuple(gaussians), tuple(keys), steps, missing)

    def with_covariance(self, a: str, b: str, factor: float) -> Population:
        """The same population with the within-group covariance of ``a`` and ``b`` multiplied by ``factor`` (-1 flips
        their correlation); every feature's marginal stays as it was."""
        i, j = self.numerical.index(a), self.numerical.index(b)
        return replace(self, gaussians=tuple(g.with_covariance(i, j, factor) for g in self.gaussians))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` fresh rows as columns: float arrays (NaN where missing) and object arrays (str or None)."""
        combo = rng.choice(len(self.weights), size=n, p=self.weights)
        group = self.combo_group[combo]
        z = rng.standard_normal((n, len(self.numerical)))
        numbers = np.empty_like(z)
        for k, gaussian in enumerate(self.gaussians):
            rows = group == k
            numbers[rows] = gaussian.mean + z[rows] @ gaussian.factor.T
        blanks = rng.random((n, len(self.numerical))) < np.array(self.missing)
        out: dict[str, np.ndarray] = {}
        for k, name in enumerate(self.numerical):
            column = round_to(numbers[:, k], self.steps[k])
            column[blanks[:, k]] = np.nan
            out[name] = column
        for k, name in enumerate(self.categories):
            out[name] = self.combos[k][combo]
        return out
