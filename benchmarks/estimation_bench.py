"""Cost of label-free quality estimation (exporter.estimation) in the drift job: the per-run estimate over windows
of 3000 and 100k rows (classification: CBPE with its 200-draw bootstrap band; regression: DLE), the one-off fit on
the reference, and the estimate's time against compute_drift's on the same 30-feature window."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.common import drift_frame, feature_names, median

SIZES = (3000, 100_000)


def _classification(rows: int, seed: int) -> tuple[Any, Any, Any]:
    """Predictions and probabilities as the window query hands them over (one dict per row, three classes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 3)) * 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random(rows)[:, None] > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)
    names = np.array(["a", "b", "c"])

    return p, names[p.argmax(axis=1)], names[y]


def _timed(repeat: int, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """The last result of ``call(*args, **kwargs)`` and its median time over ``repeat`` calls, in seconds."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return result, median(times)


def run(quick: bool, log: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from exporter.drift import Reference, compute_drift
    from exporter.estimation import LABEL, PROBABILITIES, EstimationSetup, estimate_window

    warnings.simplefilter("ignore")
    sizes = (3000, 20_000) if quick else SIZES
    repeat = 1 if quick else 3
    num, cat = feature_names(20, 10)
    ref_frame = drift_frame(3000, 20, 10, seed=1)
    out: dict[str, Any] = {}

    # classification (CBPE)
    p_ref, pred_ref, y_ref = _classification(3000, 1)
    setup = EstimationSetup("classification", ["a", "b", "c"], y_ref.tolist(), pred_ref.tolist(), p_ref, None)
    start = time.perf_counter()
    setup.fit()
    out["estimation_fit_s_classification"] = time.perf_counter() - start
    # regression (DLE): y depends on a few features, the error's spread on others
    rng = np.random.default_rng(2)
    def regression_target(frame: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = frame[num].fillna(0).to_numpy()
        prediction = x[:, :5].sum(axis=1)
        return prediction, prediction + rng.normal(size=len(frame)) * (1 + np.abs(x[:, 5]))
    pred_r, y_r = regression_target(ref_frame, rng)
    reg = EstimationSetup("regression", [], y_r.tolist(), pred_r.tolist(), None, ref_frame[num + cat], num, cat)
    start = time.perf_counter()
    reg.fit()
    out["estimation_fit_s_regression"] = time.perf_counter() - start
    log(f"estimation: fit on a 3000-row reference {out['estimation_fit_s_classification']:.2f}s (CBPE), "
        f"{out['estimation_fit_s_regression']:.2f}s (DLE, 30 features)")

    reference = Reference(ref_frame, num, cat)
    for rows in sizes:
        key = "100000" if rows == SIZES[1] or (quick and rows == sizes[1]) else str(rows)
        window = drift_frame(rows, 20, 10, seed=3, drifted=True)
        _, pred, y = _classification(rows, 4)
        p_win = _classification(rows, 4)[0]
        cls_window = window.assign(prediction=pred)
        cls_window[PROBABILITIES] = [dict(zip(("a", "b", "c"), row, strict=True)) for row in p_win.tolist()]
        cls_window[LABEL] = [v if i % 10 == 0 else None for i, v in enumerate(y)]  # a tenth labelled
        result, cls_s = _timed(repeat, estimate_window, setup, cls_window)
        assert result is not None and result.metrics
        pred_r, y_r = regression_target(window, rng)
        reg_window = window.assign(prediction=pred_r)
        reg_window[LABEL] = [v if i % 10 == 0 else None for i, v in enumerate(y_r.tolist())]
        result, reg_s = _timed(repeat, estimate_window, reg, reg_window)
        assert result is not None and result.metrics
        _, drift_s = _timed(repeat, compute_drift, reference, window.assign(prediction=pred), min_rows=1)
        out[f"estimation_s_classification_{key}"] = cls_s
        out[f"estimation_s_regression_{key}"] = reg_s
        out[f"estimation_drift_s_{key}"] = drift_s
        out[f"estimation_vs_drift_ratio_classification_{key}"] = cls_s / drift_s
        out[f"estimation_vs_drift_ratio_regression_{key}"] = reg_s / drift_s
        log(f"estimation {rows} rows: CBPE {cls_s:.3f}s, DLE {reg_s:.3f}s; compute_drift (30 features) {drift_s:.3f}s")
    return out
