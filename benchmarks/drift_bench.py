"""Drift computation: ``exporter.drift.compute_drift`` (with a prepared ``Reference``) against Evidently's
``Report([DataDriftPreset()])`` on the same reference and window; speed, per-column score delta, drift flags."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from benchmarks.common import drift_frame, feature_names, median


@dataclass(frozen=True)
class Case:
    key: str            # results key suffix, e.g. "3000x30"
    rows: int           # window rows
    cols: int           # features (a third categorical)
    ref_rows: int       # reference rows (> 1000: Wasserstein / Jensen-Shannon; <= 1000: K-S / chi2 / z)
    ours_repeat: int
    preset_repeat: int
    preset_cols: tuple[int, ...] = ()  # run the preset on these column counts and extrapolate linearly; () = all
    headline: bool = True              # one of the speedup keys


def full_cases() -> list[Case]:
    return [
        Case("3000x30", 3000, 30, 3000, ours_repeat=5, preset_repeat=3),
        Case("100000x30", 100_000, 30, 100_000, ours_repeat=3, preset_repeat=1),
        Case("10000x1000", 10_000, 1000, 10_000, ours_repeat=1, preset_repeat=1, preset_cols=(30, 90)),
        Case("3000x30_ref1000", 3000, 30, 1000, ours_repeat=5, preset_repeat=1, headline=False),
    ]


def quick_cases() -> list[Case]:
    return [
        Case("3000x30", 3000, 30, 3000, ours_repeat=2, preset_repeat=1),
        Case("100000x30", 20_000, 30, 20_000, ours_repeat=1, preset_repeat=1),
        Case("10000x1000", 2000, 200, 2000, ours_repeat=1, preset_repeat=1, preset_cols=(15, 30)),
        Case("3000x30_ref1000", 3000, 30, 1000, ours_repeat=1, preset_repeat=1, headline=False),
    ]


def preset_scores(
    ref: Any, cur: Any, num: list[str], cat: list[str]
) -> tuple[float, dict[str, tuple[str, float, float]]]:
    """(seconds, {column: (method display name, score, threshold)}) of Report([DataDriftPreset()]).run()."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(cur[num + cat], data_definition=definition),
        reference_data=Dataset.from_pandas(ref[num + cat], data_definition=definition),
    )
    seconds = time.perf_counter() - start
    out = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            out[config["column"]] = (config["method"], float(metric["value"]), float(config["threshold"]))
    return seconds, out


def preset_detected(method: str, score: float, threshold: float) -> bool:
    return score < threshold if "p_value" in method else score >= threshold


def _subset(num: list[str], cat: list[str], k: int) -> tuple[list[str], list[str]]:
    k_cat = round(k * len(cat) / (len(num) + len(cat)))
    return num[: k - k_cat], cat[:k_cat]


def run_case(case: Case, log: Any) -> dict[str, Any]:
    from exporter.drift import Reference, compute_drift
    from exporter.multivariate import CLASSIFIER, METHOD

    n_cat = case.cols // 3
    n_num = case.cols - n_cat
    num, cat = feature_names(n_num, n_cat)
    ref = drift_frame(case.ref_rows, n_num, n_cat, seed=1)
    cur = drift_frame(case.rows, n_num, n_cat, seed=2, drifted=True)

    # The speedup compares like with like: the preset's per-feature tests against ours with the cheap multivariate
    # method. The default method (the domain classifier) is timed on its own below, reported without a target.
    start = time.perf_counter()
    reference = Reference(ref, num, cat, multivariate_method=METHOD)
    reference_s = time.perf_counter() - start
    ours_times = []
    result = None
    for _ in range(case.ours_repeat):
        start = time.perf_counter()
        result = compute_drift(reference, cur, min_rows=1)
        ours_times.append(time.perf_counter() - start)
    assert result is not None
    ours_s = median(ours_times)
    log(f"drift {case.key}: compute_drift {ours_s:.3f}s (reference prepared in {reference_s:.2f}s)")

    with_classifier = Reference(ref, num, cat, multivariate_method=CLASSIFIER)
    classifier_times = []
    for _ in range(min(case.ours_repeat, 2)):
        start = time.perf_counter()
        compute_drift(with_classifier, cur, min_rows=1)
        classifier_times.append(time.perf_counter() - start)
    log(f"drift {case.key}: compute_drift with the classifier (the default) {median(classifier_times):.3f}s")
    out: dict[str, Any] = {"rows": case.rows, "cols": case.cols, "ref_rows": case.ref_rows,
                           "ours_s": ours_s, "reference_build_s": reference_s,
                           "ours_classifier_s": median(classifier_times)}
    compared: dict[str, tuple[str, float, float]] = {}
    if not case.preset_cols:
        times = []
        for _ in range(case.preset_repeat):
            seconds, scores = preset_scores(ref, cur, num, cat)
            times.append(seconds)
            compared = scores
        preset_s = median(times)
        out["preset_extrapolated"] = False
    else:
        points = []
        for k in case.preset_cols:
            sub_num, sub_cat = _subset(num, cat, k)
            seconds, scores = preset_scores(ref, cur, sub_num, sub_cat)
            points.append((k, seconds))
            compared.update(scores)
            log(f"drift {case.key}: preset on {k} columns {seconds:.2f}s")
        (k1, t1), (k2, t2) = points[0], points[-1]
        slope = (t2 - t1) / (k2 - k1) if k2 != k1 else t2 / k2
        preset_s = max(t2, t2 + slope * (case.cols - k2))
        out.update(preset_extrapolated=True, preset_points=points, preset_columns_run=len(compared))
    out["preset_s"] = preset_s
    out["speedup"] = preset_s / ours_s

    deltas = []
    mismatched = []
    methods: dict[str, int] = {}
    for name, (method, score, threshold) in compared.items():
        ours = result.features[name]
        methods[method] = methods.get(method, 0) + 1
        if ours.score is None or ours.threshold != threshold:
            mismatched.append(name)
            continue
        deltas.append(abs(ours.score - score))
        if ours.detected != preset_detected(method, score, threshold):
            mismatched.append(name)
    out.update(
        columns_compared=len(compared),
        max_abs_delta=max(deltas) if deltas else float("nan"),
        flags_mismatched=len(mismatched),
        mismatched_sample=mismatched[:5],
        drifted_by_preset=sum(preset_detected(*v) for v in compared.values()),
        methods=methods,
    )
    log(f"drift {case.key}: preset {preset_s:.2f}s{' (extrapolated)' if case.preset_cols else ''}, "
        f"speedup {out['speedup']:.1f}x, max |delta| {out['max_abs_delta']:.2e}, {len(mismatched)} flag mismatches")
    return out


def importance_cost(rows: int = 50_000, cols: int = 30) -> dict[str, float]:
    """Seconds to compute the feature importance once per reference (exporter.importance): permutation (with a
    target, on a 5000-row sample) and native, for a scaled / one-hot logistic-regression pipeline."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from exporter.importance import setup

    n_cat = cols // 3
    num, cat = feature_names(cols - n_cat, n_cat)
    frame = drift_frame(rows, cols - n_cat, n_cat, seed=3)
    logit = frame[num[0]].fillna(0) - frame[num[1]].fillna(0) + (frame[cat[0]] == frame[cat[0]].iloc[0])
    frame["y"] = np.where(np.random.default_rng(3).random(rows) < 1 / (1 + np.exp(-logit)), "1", "0")
    pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), num),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), cat)])
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))]).fit(frame[num + cat][:10_000],
                                                                                      frame["y"][:10_000])
    out = {}
    for method, target in (("permutation", "y"), ("native", None)):
        started = time.perf_counter()
        result = setup(model, "classification", num + cat, frame, target).compute()
        assert result is not None and result.method == method
        out[method] = time.perf_counter() - started
    return out


def run(quick: bool, log: Any) -> dict[str, Any]:
    # Evidently's and pandas' warnings (PerformanceWarning from normalise() at 1000 columns)
    warnings.simplefilter("ignore")
    cases = quick_cases() if quick else full_cases()
    details = {case.key: run_case(case, log) for case in cases}
    results: dict[str, Any] = {"drift_details": details}
    for case in cases:
        d = details[case.key]
        results[f"drift_speedup_{case.key}"] = d["speedup"]
        results[f"drift_ours_s_{case.key}"] = d["ours_s"]
        results[f"drift_ours_classifier_s_{case.key}"] = d["ours_classifier_s"]
        results[f"drift_preset_s_{case.key}"] = d["preset_s"]
    results["drift_preset_10000x1000_extrapolated"] = details["10000x1000"]["preset_extrapolated"]
    results["drift_max_abs_delta"] = max(d["max_abs_delta"] for d in details.values())
    results["drift_flags_mismatched"] = sum(d["flags_mismatched"] for d in details.values())
    results["drift_columns_compared"] = sum(d["columns_compared"] for d in details.values())
    importance = importance_cost(10_000 if quick else 50_000)
    log(f"feature importance, 50000 x 30: permutation {importance['permutation']:.2f}s, "
        f"native {importance['native']:.2f}s")
    results["importance_permutation_s_50000x30"] = importance["permutation"]
    results["importance_native_s_50000x30"] = importance["native"]
    return results
