"""Multivariate drift: one dataset-level score that sees changes of the joint distribution of the features, such as
a correlation that flips sign while every marginal (and so every per-feature test) stays the same.

Two methods (``drift.multivariate.method``). ``pca_reconstruction``: PCA data reconstruction error, as NannyML's
"data reconstruction drift". The reference is encoded (numbers imputed and standardised, categories one-hot, each
feature's block scaled to unit variance), a PCA keeping 65 % of the variance is fitted, and a window's score is the
mean Euclidean distance between its encoded rows and their reconstruction from the kept components. Rows that break
the reference's correlations leave the kept subspace and reconstruct badly. ``classifier``: a domain classifier's
cross-validated AUC, reference rows against window rows (ClassifierReference); it also sees a joint shift of the
features' means, which keeps to the subspace.

The threshold is calibrated, as the per-feature ones: the window mean that a window of fresh rows of the
reference's population exceeds with probability ``alpha`` (see exporter.calibration). The PCA fits its own rows
better than fresh ones, so the per-row error of fresh rows is measured by cross-fitting (fit on K-1 folds of the
reference, measure on the held-out fold).

Each row's error is capped at the 99th percentile of those fresh-row errors. Without the cap, a heavy-tailed feature
makes the per-row errors heavy-tailed too, and the tail of a window mean at alpha ~ 1e-7 is then set by the few
largest rows, which no moment-matched distribution (nor a reference of a few thousand rows) describes: measured
with a log-normal feature, an uncapped Gamma threshold was exceeded 500 times more often than alpha. A few extreme
rows are the per-feature tests' and the unseen share's business; this score is about the bulk of the window.
The false-flag rate this gives is measured in benchmarks/detection.py.

Cost: a window is scored on at most MAX_WINDOW_ROWS rows, each encoded into at most MAX_WIDTH columns.
Pure: frames in, a frozen result out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

METHOD = "pca_reconstruction"
CLASSIFIER = "classifier"
METHODS = (METHOD, CLASSIFIER)
# The default: on the detection benchmark it raised fewer false flags than the reconstruction error and was the only
# one to see a joint shift of the means, about as fast on the rest (docs/drift.md, "Multivariate drift").
DEFAULT_METHOD = CLASSIFIER
CLASSIFIER_REFERENCE_ROWS = 5_000  # the reference rows the classifier tells the window from (a fixed-seed sample)
CLASSIFIER_TREES = 50  # boosting rounds of depth 3: enough for a joint shift or a flipped correlation, ~0.1 s a fold
# The folds' AUCs are correlated (their models share most of their training rows), so their mean varies more than a
# Mann-Whitney statistic: the threshold widens its sd by this measured margin (docs/drift.md has the figures).
CLASSIFIER_NULL_SD_FACTOR = 1.5
VARIANCE_KEPT = 0.65  # NannyML's default
MAX_CATEGORIES = 20  # per categorical feature: the most frequent ones; the rest share one "other" column
# Encoded wider than this (say 1000 features, a third categorical: ~3700 columns), rows are projected onto MAX_WIDTH
# fixed random directions first: the PCA of a 10000 x 3700 matrix, cross-fitted, would take minutes at start-up.
MAX_WIDTH = 256
MAX_FIT_ROWS = 20_000  # the reference rows the PCA is fitted on (and cross-fitted), a fixed-seed subsample above
MAX_WINDOW_ROWS = 5_000  # a larger window is scored on a fixed-seed subsample: the cost stays bounded
# The reference's share of the no-drift variance of a window mean is REFERENCE_VARIANCE * sigma^2 / n: the fitted
# model's mean error on fresh rows departs from its cross-fitted estimate by about sigma / sqrt(n) (see
# benchmarks/README.md), and 2 covers it.
REFERENCE_VARIANCE = 2.0
CAP_QUANTILE = 0.99  # of the fresh-row errors: the per-row error is capped there (see the module docstring)
FOLDS = 5
SEED = 0


@dataclass(frozen=True, kw_only=True)
class MultivariateDrift:
    """One run's multivariate drift: mean (capped) reconstruction error of the window's rows against its threshold."""

    method: str = METHOD
    score: float
    threshold: float
    detected: bool
    rows: int  # the window rows scored (after subsampling)


@dataclass(frozen=True)
class Encoder:
    """Frame -> numeric matrix: numbers median-imputed and standardised, categories one-hot (kept levels, other,
    missing); wider than MAX_WIDTH columns, then randomly projected to MAX_WIDTH. Fitted on reference rows only.

    Each categorical feature's block is scaled so that its total variance on the reference is 1, as a standardised
    number's: every feature then weighs alike in the PCA. Unscaled, a feature's one-hot block has a variance of
    1 - sum(p_k^2) < 1, so a shift of categories registers less than one of numbers; scaling each column to unit
    variance instead (standardised one-hot) lets rare levels dominate and hides a correlation flip among numbers
    (docs/drift.md has the measured scores)."""

    numerical: list[str]
    medians: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    categorical: list[str]
    levels: list[list[str]]
    block_scales: np.ndarray  # per categorical feature: 1 / sqrt(its block's variance on the reference)
    projection: np.ndarray | None  # (one-hot width, MAX_WIDTH) or None

    @classmethod
    def fit(cls, frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> Encoder:
        values = _numbers(frame, numerical)
        medians = np.zeros(len(numerical))
        for j in range(len(numerical)):
            present = values[:, j][~np.isnan(values[:, j])]
            medians[j] = float(np.median(present)) if present.size else 0.0
        imputed = np.where(np.isnan(values), medians, values)
        means = imputed.mean(axis=0) if len(frame) else np.zeros(len(numerical))
        scales = imputed.std(axis=0) if len(frame) else np.ones(len(numerical))
        scales = np.where(scales > 0, scales, 1.0)
        levels = [[str(v) for v in frame[name].value_counts().index[:MAX_CATEGORIES]] for name in categorical]
        block_scales = np.ones(len(categorical))
        for j, (name, kept) in enumerate(zip(categorical, levels, strict=True)):
            shares = _level_codes(frame[name], kept).value_counts(normalize=True).to_numpy() if len(frame) else []
            variance = 1.0 - float(np.sum(np.square(shares)))
            block_scales[j] = 1 / math.sqrt(variance) if variance > 1e-9 else 1.0  # one level only: nothing to scale
        one_hot_width = len(numerical) + sum(len(kept) + 2 for kept in levels)
        projection = None
        if one_hot_width > MAX_WIDTH:  # Johnson-Lindenstrauss: distances kept, the PCA's cost bounded
            projection = np.random.default_rng(SEED).normal(0, 1 / math.sqrt(MAX_WIDTH), (one_hot_width, MAX_WIDTH))
        return cls(list(numerical), medians, means, scales, list(categorical), levels, block_scales, projection)

    @property
    def width(self) -> int:
        if self.projection is not None:
            return MAX_WIDTH
        return len(self.numerical) + sum(len(kept) + 2 for kept in self.levels)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        n, p = len(frame), len(self.numerical)
        values = _numbers(frame, self.numerical)
        numbers = (np.where(np.isnan(values), self.medians, values) - self.means) / self.scales
        # Each row has one 1 per categorical feature: at its kept level, at "other" (rarer or unseen), or "missing".
        hot = np.empty((n, len(self.categorical)), dtype=np.int64)
        offset = p
        for j, (name, kept) in enumerate(zip(self.categorical, self.levels, strict=True)):
            hot[:, j] = offset + _level_codes(frame[name], kept).to_numpy()
            offset += len(kept) + 2
        hot_values = np.broadcast_to(self.block_scales, hot.shape)
        if self.projection is None:
            out = np.zeros((n, offset))
            out[:, :p] = numbers
            out[np.arange(n)[:, None], hot] = hot_values
            return out
        out = numbers @ self.projection[:p]
        if self.categorical:
            one_hot = sparse.csr_matrix(
                (hot_values.ravel(), hot.ravel(), np.arange(0, hot.size + 1, hot.shape[1])),
                shape=(n, offset),
            )
            out += one_hot @ self.projection
        return out


def _level_codes(column: pd.Series, kept: list[str]) -> pd.Series:
    """Each value's column within its feature's one-hot block: a kept level's index, len(kept) for "other" (rarer or
    unseen), len(kept) + 1 for missing."""
    codes = pd.Categorical(column, categories=kept).codes.astype(np.int64)
    return pd.Series(np.where(codes >= 0, codes, np.where(column.isna().to_numpy(), len(kept) + 1, len(kept))),
                     index=column.index)


def _numbers(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    values = frame[names].to_numpy(dtype=float, na_value=np.nan) if names else np.zeros((len(frame), 0))
    return np.where(np.isfinite(values), values, np.nan)


def _pca(x: np.ndarray, components: float | int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components) of the PCA of ``x``; the components as orthonormal rows."""
    pca = PCA(n_components=components, svd_solver="covariance_eigh").fit(x)
    return pca.mean_, pca.components_


def _distances(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Per row: the Euclidean distance between the row and its reconstruction from the components."""
    centred = x - mean
    residual = centred - (centred @ components.T) @ components
    return np.sqrt(np.einsum("ij,ij->i", residual, residual))


@dataclass(frozen=True)
class _Model:
    encoder: Encoder
    mean: np.ndarray
    components: np.ndarray  # (kept components, width), orthonormal rows

    def errors(self, frame: pd.DataFrame) -> np.ndarray:
        return _distances(self.encoder.transform(frame), self.mean, self.components)


class MultivariateReference:
    """The PCA of the reference and the no-drift distribution of a fresh row's reconstruction error.

    ``frame`` is the normalised reference (numbers float with NaN for missing, categories as text with None)."""

    def __init__(self, frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> None:
        # One BLAS thread: these matrices are narrow, and a second thread on a busy machine makes each SVD several
        # times slower.
        with threadpool_limits(1, user_api="blas"):
            self._fit(frame, numerical, categorical)

    def _fit(self, frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> None:
        if len(numerical) + len(categorical) < 2:
            raise ValueError("multivariate drift needs at least 2 features")
        rng = np.random.default_rng(SEED)
        if len(frame) > MAX_FIT_ROWS:
            frame = frame.iloc[np.sort(rng.choice(len(frame), MAX_FIT_ROWS, replace=False))]
        n = len(frame)
        if n < 2 * FOLDS:
            raise ValueError(f"multivariate drift needs at least {2 * FOLDS} reference rows, got {n}")
        self.numerical = list(numerical)
        self.categorical = list(categorical)
        encoder = Encoder.fit(frame, numerical, categorical)
        encoded = encoder.transform(frame)
        mean, components = _pca(encoded, VARIANCE_KEPT)
        # Keep at least one dimension out: with every component kept every row reconstructs exactly.
        self.n_components = min(len(components), encoder.width - 1)
        if self.n_components < len(components):
            mean, components = _pca(encoded, self.n_components)
        self.model = _Model(encoder, mean, components)
        # Cross-fitting: each row's error under a PCA fitted without it, as a fresh row's. The encoder (medians,
        # scales, kept categories: a few numbers per feature) is shared; the PCA is where the over-fitting is.
        fold = rng.permutation(n) % FOLDS
        held_out = np.empty(n)
        for k in range(FOLDS):
            held_out[fold == k] = _distances(encoded[fold == k], *_pca(encoded[fold != k], self.n_components))
        cap = float(np.quantile(held_out, CAP_QUANTILE))
        self.cap = cap if cap > 1e-12 else math.inf  # errors of a reference that lies in the subspace are 0 (+ noise)
        capped = np.minimum(held_out, self.cap)
        self.fresh_mean = float(capped.mean())
        self.fresh_sd = float(capped.std(ddof=1))
        self.fresh_skew = float(stats.skew(capped)) if self.fresh_sd > 0 else 0.0
        self.fit_rows = n
        self.fitted_mean = float(np.minimum(_distances(encoded, mean, components), self.cap).mean())  # biased low

    def threshold(self, rows: int, alpha: float) -> float:
        """The window mean (capped) error that ``rows`` fresh rows exceed with probability ``alpha``.

        Under no drift the window mean has mean ~ mu and variance ~ sigma^2 (1/m + 2/n): the window's sampling noise
        plus the reference's (mu and the fitted model are estimates from n rows; see REFERENCE_VARIANCE). The
        per-row errors are right-skewed and alpha is tiny, so the quantile is a Gamma's matched to that mean and
        variance rather than a normal one, whose tail is too thin; where the measured skewness of the window mean is
        larger than that Gamma's, the shifted Gamma (Pearson type III) matched to the skewness too is used, whichever
        is higher."""
        mu, sd = self.fresh_mean, self.fresh_sd
        if mu <= 0 or sd <= 0:  # the reference lies exactly in the kept subspace: any residual is a change
            return mu + 1e-9 * (1 + mu)
        var = sd**2 * (1 / rows + REFERENCE_VARIANCE / self.fit_rows)
        threshold = float(stats.gamma.isf(alpha, mu**2 / var, scale=var / mu))
        # Third cumulant of a mean of m rows: k3 / m^2; the reference's part of the variance counted as symmetric.
        skew = self.fresh_skew * sd**3 / rows**2 / var**1.5
        if skew > 2 * math.sqrt(var) / mu:
            shape, scale = 4 / skew**2, math.sqrt(var) * skew / 2
            threshold = max(threshold, float(stats.gamma.isf(alpha, shape, loc=mu - shape * scale, scale=scale)))
        return threshold

    def score(self, window: pd.DataFrame, alpha: float) -> MultivariateDrift:
        """Score ``window`` (normalised as the reference); a window above MAX_WINDOW_ROWS is scored on a fixed-seed
        subsample of that many rows, so the cost is bounded and the threshold uses the rows actually scored."""
        if len(window) == 0:
            raise ValueError("the window has no rows")
        if len(window) > MAX_WINDOW_ROWS:
            pick = np.random.default_rng(SEED).choice(len(window), MAX_WINDOW_ROWS, replace=False)
            window = window.iloc[np.sort(pick)]
        rows = len(window)
        score = float(np.minimum(self.model.errors(window), self.cap).mean())
        threshold = self.threshold(rows, alpha)
        if not (math.isfinite(score) and math.isfinite(threshold)):
            raise ValueError(f"non-finite multivariate score {score} or threshold {threshold}")
        return MultivariateDrift(score=score, threshold=threshold, detected=score >= threshold, rows=rows)


class ClassifierReference:
    """Domain classifier ("Failing Loudly"; NannyML, alibi-detect): a gradient-boosted classifier learns to tell the
    window's rows from a fixed sample of the reference's, cross-validated on the pooled rows; the score is the AUC of
    its out-of-fold predictions. Unlike the reconstruction error it sees a joint shift of the features' means, and
    categories count as much as numbers (trees split on them whatever their encoding).

    Threshold: under no drift each fold's labels are independent of its model's scores, so each fold's AUC is a
    Mann-Whitney statistic, mean 1/2; the score is their mean, and the threshold the normal quantile at ``alpha`` of
    a Mann-Whitney sd for the pooled sizes, (n + m + 1) / (12 n m), widened by CLASSIFIER_NULL_SD_FACTOR for the
    folds' correlation."""

    def __init__(self, frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> None:
        if len(numerical) + len(categorical) < 2:
            raise ValueError("multivariate drift needs at least 2 features")
        if len(frame) < 2 * FOLDS:
            raise ValueError(f"multivariate drift needs at least {2 * FOLDS} reference rows, got {len(frame)}")
        if len(frame) > CLASSIFIER_REFERENCE_ROWS:
            pick = np.random.default_rng(SEED).choice(len(frame), CLASSIFIER_REFERENCE_ROWS, replace=False)
            frame = frame.iloc[np.sort(pick)]
        self.numerical, self.categorical = list(numerical), list(categorical)
        self.encoder = Encoder.fit(frame, numerical, categorical)
        self.reference = self.encoder.transform(frame)

    def threshold(self, rows: int, alpha: float) -> float:
        return domain_auc_threshold(len(self.reference), rows, alpha)

    def score(self, window: pd.DataFrame, alpha: float) -> MultivariateDrift:
        if len(window) < FOLDS:
            raise ValueError(f"the window has {len(window)} rows: the classifier needs at least {FOLDS}")
        if len(window) > MAX_WINDOW_ROWS:
            pick = np.random.default_rng(SEED).choice(len(window), MAX_WINDOW_ROWS, replace=False)
            window = window.iloc[np.sort(pick)]
        rows = len(window)
        auc, _, _ = domain_classifier(self.reference, self.encoder.transform(window))
        threshold = self.threshold(rows, alpha)
        return MultivariateDrift(method=CLASSIFIER, score=auc, threshold=threshold, detected=auc >= threshold,
                                 rows=rows)


def domain_auc_threshold(reference_rows: int, window_rows: int, alpha: float) -> float:
    """The mean fold AUC of domain_classifier that no-drift windows exceed with probability ``alpha`` (see
    ClassifierReference)."""
    n, m = reference_rows, window_rows
    sd = CLASSIFIER_NULL_SD_FACTOR * math.sqrt((n + m + 1) / (12 * n * m))
    return 0.5 + float(stats.norm.isf(alpha)) * sd


def domain_classifier(reference: np.ndarray, window: np.ndarray,
                      others: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """A classifier telling the window's rows from the reference's, cross-fitted: (the mean of the folds' AUCs, each
    reference row's out-of-fold probability of being a window row, and the folds' mean probability for ``others``,
    rows of the reference's that took no part in the fit)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold

    x = np.vstack([reference, window])
    y = np.r_[np.zeros(len(reference)), np.ones(len(window))]
    out_of_fold = np.empty(len(x))
    rest = np.zeros(0 if others is None else len(others))
    aucs = []
    with threadpool_limits(1):  # as the PCA: one thread, the service's other threads keep theirs
        for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(x, y):
            model = HistGradientBoostingClassifier(max_iter=CLASSIFIER_TREES, max_depth=3, early_stopping=False,
                                                   random_state=SEED).fit(x[train], y[train])
            out_of_fold[test] = model.predict_proba(x[test])[:, 1]
            aucs.append(_auc(out_of_fold[test], y[test]))
            if others is not None and len(others):
                rest += model.predict_proba(others)[:, 1] / FOLDS
    # The mean of the folds' AUCs: each compares rows scored by one model, so each is a Mann-Whitney statistic
    # under no drift; pooling the folds' scores would also compare the models' offsets.
    return float(np.mean(aucs)), out_of_fold[: len(reference)], rest


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = stats.rankdata(scores)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def fit_multivariate(frame: pd.DataFrame, numerical: list[str], categorical: list[str],
                     method: str = DEFAULT_METHOD) -> MultivariateReference | ClassifierReference | None:
    """The reference's multivariate model, or None: fewer than 2 features, or a failed fit (logged; the per-feature
    drift goes on without it)."""
    if len(numerical) + len(categorical) < 2:
        return None
    try:
        if method == CLASSIFIER:
            return ClassifierReference(frame, numerical, categorical)
        return MultivariateReference(frame, numerical, categorical)
    except Exception as exc:
        log.warning("drift: the multivariate drift model could not be fitted: %s", exc)
        return None
