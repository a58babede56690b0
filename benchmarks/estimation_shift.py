"""CBPE under covariate shift: the plain estimate against the shift-adapted one (exporter.shift), on populations whose
truth is known. ``python -m benchmarks.estimation_shift`` prints the table of docs/estimated-quality.md and writes
``benchmarks/estimation_shift.json``; tests/unit/test_estimation_shift.py checks the same targets on fewer windows.

The world: three numbers and a category; the labels are drawn from the true probabilities, whose logits are linear in
all four features. The model (a logistic regression) knows x1 and x2 only, as models often miss a cause: it is
fitted on its own training rows; the reference is fresh rows, so its calibration is right on the reference's mix. A
shifted window moves x3's mean by ``shift`` sd (P(y|x) unchanged): the model's score means another probability
among the rows that now dominate, and the plain calibration is wrong for them. Several references, since each
reference's own calibration error is common to all its windows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.estimation import (
    PROBABILITIES,
    EstimationSetup,
    estimate_window,
    realized_metrics_many,
    setup_from_reference,
)

OUT = Path(__file__).resolve().parent / "estimation_shift.json"
METRICS = ("accuracy", "f1_macro", "roc_auc")
SHIFTS = (0.0, 0.5, 1.0, 1.5)
NUMERICAL, CATEGORICAL = ["x1", "x2", "x3"], ["c"]


class World:
    """``classes`` classes; logit of class k: its column of x @ W, plus 1 for category c in the last class."""

    metrics = METRICS

    def __init__(self, classes: int, seed: int = 7) -> None:
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        self.classes = classes
        self.W = rng.normal(size=(3, classes)) * 1.2
        x, y = self.draw(20_000, rng)
        self.model = LogisticRegression(max_iter=500).fit(x[["x1", "x2"]], y)

    def draw(self, n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
        x = rng.normal(size=(n, 3))
        x[:, 2] += shift
        c = rng.choice(np.array(["a", "b", "c"], dtype=object), n, p=[0.6, 0.3, 0.1])
        logits = x @ self.W
        logits[:, -1] += np.where(c == "c", 1.0, 0.0)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)
        return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "c": c}), y

    def probas(self, frame: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(frame[["x1", "x2"]])

    def rows(self, probas: np.ndarray) -> list[dict[str, float]]:
        return [dict(zip(map(str, range(self.classes)), row, strict=True)) for row in probas.tolist()]

    def setup(self, frame: pd.DataFrame, y: np.ndarray) -> EstimationSetup | None:
        probas = self.probas(frame)
        return setup_from_reference("classification", list(range(self.classes)), frame.assign(y=y), "y",
                                    pd.Series(probas.argmax(1)), self.rows(probas), NUMERICAL, CATEGORICAL,
                                    shift_adaptation=True)

    def window(self, frame: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
        probas = self.probas(frame)
        predicted = probas.argmax(1)
        truth = {k: float(v[0]) for k, v in
                 realized_metrics_many(y[None, :].astype(np.int8), probas, predicted).items()}
        return frame.assign(prediction=predicted, **{PROBABILITIES: self.rows(probas)}), truth


class RegressionWorld:
    """Regression: y is linear in x1..x3 plus 0.3 x3^2 and a category effect, with noise whose sd grows with |x3|;
    the model is a linear regression on all the features, so its error depends on x3: moving x3 moves the error."""

    metrics = ("mae", "rmse")

    def __init__(self, seed: int = 7) -> None:
        from sklearn.linear_model import LinearRegression

        rng = np.random.default_rng(seed)
        x, y = self.draw(20_000, rng)
        self.model = LinearRegression().fit(x[NUMERICAL], y)

    def draw(self, n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
        x = rng.normal(size=(n, 3))
        x[:, 2] += shift
        c = rng.choice(np.array(["a", "b", "c"], dtype=object), n, p=[0.6, 0.3, 0.1])
        sd = 0.5 + 0.5 * np.abs(x[:, 2]) ** 1.5
        y = x[:, 0] + 0.5 * x[:, 1] + 0.3 * x[:, 2] ** 2 + np.where(c == "c", 0.5, 0.0) + rng.normal(size=n) * sd
        return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "c": c}), y

    def setup(self, frame: pd.DataFrame, y: np.ndarray) -> EstimationSetup | None:
        return setup_from_reference("regression", [], frame.assign(y=y), "y",
                                    pd.Series(self.model.predict(frame[NUMERICAL])), None, NUMERICAL, CATEGORICAL,
                                    shift_adaptation=True)

    def window(self, frame: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
        predicted = self.model.predict(frame[NUMERICAL])
        errors = y - predicted
        truth = {"mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt(np.mean(errors**2)))}
        return frame.assign(prediction=predicted), truth


def compare(world: World | RegressionWorld, reference_rows: int, window_rows: int, references: int, windows: int,
            shifts: tuple[float, ...] = SHIFTS, seed: int = 0) -> list[dict[str, Any]]:
    """Per shift: each estimate's error against the realized metric, band coverage, how often the adaptation was
    used, and its seconds per run (the plain estimate's are subtracted)."""
    metrics = world.metrics
    cells: dict[float, dict[str, Any]] = {s: {"plain": [], "adapted": [], "plain_in": [], "adapted_in": [],
                                              "used": [], "seconds": []} for s in shifts}
    for r in range(references):
        rng = np.random.default_rng([seed, r])
        setup = world.setup(*world.draw(reference_rows, rng))
        assert setup is not None
        setup.fit()
        assert setup.estimator is not None
        adapter = setup.estimator.adapter
        for shift in shifts:
            cell = cells[shift]
            for _ in range(windows):
                window, truth = world.window(*world.draw(window_rows, rng, shift))
                started = time.perf_counter()
                adapted = estimate_window(setup, window)
                seconds = time.perf_counter() - started
                setup.estimator.adapter = None  # the plain estimate: no adapter, no domain classifier
                started = time.perf_counter()
                plain = estimate_window(setup, window)
                cell["seconds"].append(seconds - (time.perf_counter() - started))
                setup.estimator.adapter = adapter
                assert adapted is not None and plain is not None
                cell["used"].append(adapted.adapted)
                for name, result in (("plain", plain), ("adapted", adapted)):
                    cell[name].append([result.metrics[m].value - truth[m] for m in metrics])
                    cell[f"{name}_in"].append([result.metrics[m].lower <= truth[m] <= result.metrics[m].upper
                                               for m in metrics])
    out = []
    for shift, cell in cells.items():
        row: dict[str, Any] = {"shift": shift, "windows": len(cell["used"]),
                               "adapted_share": float(np.mean(cell["used"])),
                               "extra_seconds_median": float(np.median(cell["seconds"]))}
        for name in ("plain", "adapted"):
            errors, inside = np.array(cell[name]), np.array(cell[f"{name}_in"])
            row[name] = {m: {"bias": float(errors[:, i].mean()),
                             "mean_abs_error": float(np.abs(errors[:, i]).mean()),
                             "in_band": float(inside[:, i].mean())} for i, m in enumerate(metrics)}
        out.append(row)
    return out


def markdown(rows: list[dict[str, Any]], title: str, metrics: tuple[str, ...] = METRICS) -> str:
    lines = [f"**{title}**", "", "| x3 shift | adapted in | metric | plain: bias / mean abs error / in band | "
             "adapted: bias / mean abs error / in band |", "|---|---|---|---|---|"]
    for r in rows:
        for m in metrics:
            p, a = r["plain"][m], r["adapted"][m]
            lines.append(f"| {r['shift']:.1f} sd | {r['adapted_share']:.0%} of {r['windows']} | {m} | "
                         f"{p['bias']:+.4f} / {p['mean_abs_error']:.4f} / {p['in_band']:.0%} | "
                         f"{a['bias']:+.4f} / {a['mean_abs_error']:.4f} / {a['in_band']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    doc: dict[str, Any] = {}
    title = "3000-row references (5), 2000-row windows (8 per reference)"
    for classes in (2, 3):
        rows = compare(World(classes), 3000, 2000, references=5, windows=8)
        doc[f"{classes}_classes"] = rows
        print(markdown(rows, f"{classes} classes, {title}"), end="\n\n")
    rows = compare(RegressionWorld(), 3000, 2000, references=5, windows=8)
    doc["regression"] = rows
    print(markdown(rows, f"Regression, {title}", RegressionWorld.metrics), end="\n\n")
    doc["seconds"] = round(time.monotonic() - started, 1)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{doc['seconds']} s")


if __name__ == "__main__":
    main()
