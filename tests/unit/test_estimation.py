"""Honesty of label-free quality estimation (exporter.estimation), on synthetic populations whose truth is known:
labels are drawn from the true probabilities, never replayed from the reference. Vectorised: many windows in
seconds, no service runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.db import Database
from exporter.drift import DriftResult
from exporter.estimation import (
    LABEL,
    PROBABILITIES,
    Calibration,
    ClassificationEstimator,
    EstimateResult,
    EstimationSetup,
    MetricEstimate,
    RegressionEstimator,
    estimate_window,
    expected_auc,
    expected_metrics,
    realized_metrics_many,
)
from exporter.reference_check import ReferenceCheck, reference_looks_like_training
from exporter.store import RunStore

METRICS = ("accuracy", "f1_macro", "roc_auc")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class World:
    """x ~ N(0, scale^2) in 4 dimensions, P(y|x) = softmax(xW) (fixed: no concept drift); the model answers the
    true probabilities sharpened by ``temperature`` (1: calibrated)."""

    def __init__(self, classes: int, temperature: float = 1.0, seed: int = 1) -> None:
        self.W = np.random.default_rng(seed).normal(size=(4, classes)) * 1.2
        self.temperature = temperature

    def draw(self, n: int, rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        p = softmax(rng.normal(size=(n, self.W.shape[0])) * scale @ self.W)
        y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)
        return softmax(np.log(p) * self.temperature), y

    def estimator(self, rng: np.random.Generator, rows: int = 3000) -> ClassificationEstimator:
        model, y = self.draw(rows, rng)
        return ClassificationEstimator.fit(list(range(self.W.shape[1])), model, list(y))


def realized(y: np.ndarray, model: np.ndarray) -> dict[str, float]:
    many = realized_metrics_many(y[None, :].astype(np.int8), model, model.argmax(axis=1))
    return {k: float(v[0]) for k, v in many.items()}


def test_realized_metrics_match_scikit_learn() -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    for k in (2, 3):
        model, y = World(k).draw(500, rng)
        got = realized(y, model)
        pred = model.argmax(axis=1)
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
        auc = skm.roc_auc_score(y, model[:, 1]) if k == 2 else skm.roc_auc_score(y, model, multi_class="ovr")
        assert got["roc_auc"] == pytest.approx(auc)


def test_expected_auc_of_certain_labels_is_the_realized_auc() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores = np.round(rng.random(400), 2)  # ties
    y = (rng.random(400) < scores).astype(float)
    assert expected_auc(scores, y) == pytest.approx(roc_auc_score(y, scores))


@pytest.mark.parametrize("classes", [2, 3])
def test_a_calibrated_model_estimate_is_unbiased_and_its_band_holds_99_percent(classes: int) -> None:
    # (a) labels drawn from the model's own (calibrated) probabilities: over many windows the mean of estimate
    # minus realized is about 0, and about 99 % of the windows' realized values fall inside the band.
    rng = np.random.default_rng(10 + classes)
    world = World(classes)
    est = world.estimator(rng)
    windows, n = 200, 1000
    diffs = {m: np.empty(windows) for m in METRICS}
    inside = {m: np.empty(windows, dtype=bool) for m in METRICS}
    for w in range(windows):
        model, y = world.draw(n, rng)
        estimate = est.estimate(model, model.argmax(axis=1), rng, draws=100)
        truth = realized(y, model)
        for m in METRICS:
            diffs[m][w] = estimate[m].value - truth[m]
            inside[m][w] = estimate[m].lower <= truth[m] <= estimate[m].upper
    for m in METRICS:
        bias, se = diffs[m].mean(), diffs[m].std(ddof=1) / math.sqrt(windows)
        print(f"{classes} classes {m}: mean(estimate - realized) {bias:+.4f} (se {se:.4f}), "
              f"in band {inside[m].mean():.3f}")
        assert abs(bias) < max(4 * se, 0.002), m
        assert inside[m].mean() >= 0.965, m  # 99 % nominal; 200 windows: 0.965 is 3.5 standard errors below


@pytest.mark.parametrize("classes", [2, 3])
def test_b_a_sharpened_model_is_calibrated_back(classes: int) -> None:
    # (b) probabilities sharpened (overconfident): the calibrated estimate stays within tolerance, the estimate
    # from the raw probabilities does not.
    rng = np.random.default_rng(20 + classes)
    world = World(classes, temperature=3.0)
    est = world.estimator(rng)
    assert est.calibration.calibrated, "isotonic calibration must win on an overconfident model"
    calibrated_err, raw_err = [], []
    for _ in range(20):
        model, y = world.draw(2000, rng)
        pred = model.argmax(axis=1)
        truth = realized(y, model)
        cal = expected_metrics(model, est.calibration.apply(model), pred)
        raw = expected_metrics(model, model, pred)
        calibrated_err.append([cal[m] - truth[m] for m in METRICS])
        raw_err.append([raw[m] - truth[m] for m in METRICS])
    cal_mean, raw_mean = np.mean(calibrated_err, axis=0), np.mean(raw_err, axis=0)
    print(f"{classes} classes, estimate - realized: calibrated {np.round(cal_mean, 4)}, raw {np.round(raw_mean, 4)}")
    assert np.all(np.abs(cal_mean) < 0.025)  # multiclass: one-vs-rest isotonic + renormalising leaves ~0.015
    assert np.all(np.abs(raw_mean) > 0.08)


def test_c_a_covariate_shift_that_lowers_accuracy_lowers_the_estimate() -> None:
    # (c) the features move toward the decision boundaries (P(y|x) unchanged): realized accuracy falls, and the
    # estimate falls with it.
    rng = np.random.default_rng(30)
    world = World(3)
    est = world.estimator(rng)
    rows = []
    for scale in (1.0, 0.6, 0.3):
        model, y = world.draw(3000, rng, scale=scale)
        e = est.estimate(model, model.argmax(axis=1), rng, draws=100)
        rows.append((realized(y, model)["accuracy"], e["accuracy"]))
    print("realized, estimated accuracy by shift:", [(round(t, 4), round(e.value, 4)) for t, e in rows])
    assert rows[0][0] - rows[2][0] > 0.1  # the shift costs accuracy
    for truth, estimate in rows:
        assert abs(estimate.value - truth) <= max(estimate.upper - estimate.value, estimate.value - estimate.lower)
    assert rows[0][1].value - rows[2][1].value > 0.8 * (rows[0][0] - rows[2][0])


def test_calibration_keeps_a_calibrated_model_as_it_is() -> None:
    rng = np.random.default_rng(4)
    model, y = World(2).draw(3000, rng)
    assert Calibration.fit(model, y).calibrated == []


def _regression_world(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    x = rng.normal(size=n) + shift
    c = rng.choice(["calm", "wild"], n, p=[0.7, 0.3])
    noise_sd = 0.5 + np.abs(x) + np.where(c == "wild", 1.0, 0.0)  # heteroscedastic: where the model errs more
    frame = pd.DataFrame({"x": x, "z": rng.normal(size=n), "c": c})
    frame["prediction"] = 2 * x  # the model is the true mean
    frame["y"] = frame["prediction"] + rng.normal(size=n) * noise_sd
    return frame


def test_dle_follows_the_error_where_the_traffic_moves() -> None:
    rng = np.random.default_rng(40)
    ref = _regression_world(3000, rng)
    est = RegressionEstimator.fit(ref[["x", "z", "c"]], ["x", "z"], ["c"], ref["prediction"], ref["y"])
    for shift in (0.0, 0.0, 2.0):
        w = _regression_world(2000, rng, shift)
        e = est.estimate(w, w["prediction"])
        err = w["y"] - w["prediction"]
        mae, rmse = float(err.abs().mean()), math.sqrt(float((err**2).mean()))
        print(f"shift {shift}: mae {e['mae'].value:.3f} [{e['mae'].lower:.3f}, {e['mae'].upper:.3f}] realized "
              f"{mae:.3f}; rmse {e['rmse'].value:.3f} [{e['rmse'].lower:.3f}, {e['rmse'].upper:.3f}] "
              f"realized {rmse:.3f}")
        assert abs(e["mae"].value - mae) / mae < 0.06
        assert abs(e["rmse"].value - rmse) / rmse < 0.08
    assert e["mae"].value > 1.5 * float((ref["y"] - ref["prediction"]).abs().mean())  # the shift doubled the error


def test_dle_band_holds_99_percent_over_references_and_windows() -> None:
    # The DLE band: each window's label noise plus the noise of the loss level learnt from a finite reference, over
    # several references (the level's error differs between them) and many windows each.
    errors: dict[str, list[float]] = {"mae": [], "rmse": []}
    inside: dict[str, list[bool]] = {"mae": [], "rmse": []}
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        ref = _regression_world(3000, rng)
        est = RegressionEstimator.fit(ref[["x", "z", "c"]], ["x", "z"], ["c"], ref["prediction"], ref["y"])
        for _ in range(50):
            w = _regression_world(1000, rng)
            e = est.estimate(w, w["prediction"])
            err = (w["y"] - w["prediction"]).to_numpy()
            truth = {"mae": float(np.abs(err).mean()), "rmse": math.sqrt(float((err**2).mean()))}
            for m in errors:
                errors[m].append(e[m].value - truth[m])
                inside[m].append(e[m].lower <= truth[m] <= e[m].upper)
    for m in errors:
        print(f"DLE {m}: mean(estimate - realized) {np.mean(errors[m]):+.4f}, in band {np.mean(inside[m]):.3f}")
        assert abs(np.mean(errors[m])) < 0.03
        assert np.mean(inside[m]) >= 0.965


def test_the_window_estimate_and_its_self_check() -> None:
    rng = np.random.default_rng(50)
    world = World(3)
    model, y = world.draw(2000, rng)
    setup = EstimationSetup("classification", ["a", "b", "c"], [["a", "b", "c"][i] for i in y],
                            [["a", "b", "c"][i] for i in model.argmax(1)], model, None)
    model, y = world.draw(1000, rng)
    names = np.array(["a", "b", "c"])
    window = pd.DataFrame({
        "prediction": names[model.argmax(1)],
        PROBABILITIES: [dict(zip(names, row, strict=True)) for row in model.tolist()],
        LABEL: [names[v] if i % 2 == 0 else None for i, v in enumerate(y)],  # half labelled
    })
    result = estimate_window(setup, window)
    assert result is not None and result.method == "cbpe" and result.rows == 1000 and result.error_rows == 500
    labelled = np.arange(1000) % 2 == 0
    truth = realized(y[labelled], model[labelled])
    for m in METRICS:
        point = result.metrics[m]
        assert point.lower <= point.value <= point.upper
        assert result.error[m] == pytest.approx(
            expected_metrics(model[labelled], setup.estimator.calibration.apply(model[labelled]),  # type: ignore[union-attr]
                             model[labelled].argmax(1))[m] - truth[m])


def test_the_regression_window_estimate_and_its_self_check() -> None:
    rng = np.random.default_rng(60)
    ref = _regression_world(2000, rng)
    setup = EstimationSetup("regression", [], ref["y"].tolist(), ref["prediction"].tolist(), None,
                            ref[["x", "z", "c"]], ["x", "z"], ["c"])
    w = _regression_world(800, rng)
    window = w[["x", "z", "c", "prediction"]].assign(**{LABEL: [v if i % 4 == 0 else None
                                                              for i, v in enumerate(w["y"])]})
    result = estimate_window(setup, window)
    assert result is not None and result.method == "dle" and result.rows == 800 and result.error_rows == 200
    labelled = w.iloc[::4]
    err = labelled["y"] - labelled["prediction"]
    point = setup.estimator.point(labelled, labelled["prediction"])  # type: ignore[union-attr]
    assert result.error["mae"] == pytest.approx(point["mae"] - float(err.abs().mean()))
    assert result.error["rmse"] == pytest.approx(point["rmse"] - math.sqrt(float((err**2).mean())))


def test_the_estimate_is_stored_with_the_run_and_reads_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'runs.db'}")
    runs = RunStore(db, "1")
    db.ensure_schema()
    estimate = EstimateResult("cbpe", 3000, {"accuracy": MetricEstimate(0.91, 0.9, 0.92)}, 120, {"accuracy": -0.01})
    run_id = runs.save(DriftResult(1.0, 3000, 100, 0.5), None, None, estimate=estimate)
    stored = runs.load(run_id)
    assert stored is not None and stored.estimate == estimate
    assert runs.load(runs.save(DriftResult(1.0, 3000, 100, 0.5), None, None)).estimate is None  # type: ignore[union-attr]


def test_a_reference_of_training_rows_is_recognised() -> None:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(1200, n_features=6, n_informative=4, flip_y=0.1, random_state=0)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    train, held = slice(0, 600), slice(600, 1200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RandomForestClassifier(n_estimators=30, random_state=0).fit(frame[train], y[train])
        on_training = reference_looks_like_training(model, frame[train], y[train], model.predict(frame[train]),
                                                    "classification")
        on_held_out = reference_looks_like_training(model, frame[held], y[held], model.predict(frame[held]),
                                                    "classification")
    assert on_training is not None and "training data" in on_training
    assert on_held_out is None


def test_the_reference_check_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(600, n_features=6, n_informative=4, flip_y=0.1, random_state=1)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)]).assign(target=y)
    features = list(frame.columns[:6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RandomForestClassifier(n_estimators=30, random_state=0).fit(frame[features], y)  # on the reference
        joblib.dump(model, tmp_path / "model.joblib")
        check = ReferenceCheck.of(str(tmp_path / "model.joblib"), "classification", frame, features, "target",
                                  pd.Series(model.predict(frame[features])))
        with caplog.at_level("WARNING", logger="exporter.reference_check"):
            assert check.run() is not None
    assert "looks like the model's training data" in caplog.text
