"""Detection benchmark (``make bench-detection``): false alerts on stationary traffic and detection delay after a
change, for Evidently's fixed thresholds and for calibrated ones, side by side, through the real drift code
(``compute_drift`` on simulated job runs; no HTTP).

Populations are synthetic, so the truth is known: "stationary" is fresh rows of the reference's population, never
the reference replayed. Six features: normal, skewed (log-normal), integers with ties (Poisson), a second normal
correlated 0.8 with the first, a 4-level category and a 2-level one.

Each simulated run is one drift job run (one a minute): ``traffic`` fresh rows join the 3000-row window. An alert is
a feature flagged in ``for`` consecutive runs (calibrated: 3, the shipped ``for: 2m``; evidently: 10, the
``for: 10m`` its thresholds need), counted once per streak.

Reaching a month. A feature-month is 43 200 runs; with the real code for every cell that is hours, so each cell
simulates ``--days`` days over several references (seeds) and reports false alerts per feature-month with an exact
Poisson 95 % interval over the feature-days simulated. At the default budget (0.01 a feature-month) a cell's direct
count is expected to be zero and its upper bound is set by the time simulated, not by the product. So the same
scores are also judged at a budget 10 000 times larger (100 a feature-month, per-run alpha 2.3e-3), where false
alerts are frequent enough to count: a measured rate within that budget shows that the chain from budget to threshold
(simulated null, tail model, union bound) holds on real runs. The default's tail lies beyond any direct count;
its model is in exporter/calibration.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.common import BENCH_DIR, machine_info

NUMERICAL = ["normal", "skewed", "integers", "partner"]
CATEGORICAL = ["category", "flag"]
FEATURES = NUMERICAL + CATEGORICAL
CATEGORY_LEVELS = np.array(["a", "b", "c", "d"])
CATEGORY_SHARES = np.array([0.5, 0.3, 0.15, 0.05])
WINDOW = 3000
RUNS_PER_MONTH = 43_200  # one run a minute
BUDGET = 0.01  # false alerts per feature-month, the default
CHECK_BUDGET = 100.0  # the same scores judged at 10 000x the budget, where false alerts are countable
FOR_RUNS = {"evidently": 10, "calibrated": 3}
REFERENCES = (300, 1000, 5000, 50_000)
TRAFFIC = (10, 100, 1000)
CHANGES = {  # name: (how, amount)
    "mean +0.1 sd": ("mean", 0.1),
    "mean +0.2 sd": ("mean", 0.2),
    "mean +0.5 sd": ("mean", 0.5),
    "category +10 points": ("category", 0.1),
    "variance x1.5": ("variance", 1.5),
}


def draw(rows: int, rng: np.random.Generator, how: str | None = None, amount: float = 0.0) -> pd.DataFrame:
    """``rows`` fresh rows of the population, or of it changed by ``how``."""
    z1, z2 = rng.standard_normal(rows), rng.standard_normal(rows)
    rho = -0.8 if how == "correlation" else 0.8  # the joint flips, every marginal stays N(0, 1)
    normal = z1 * (math.sqrt(amount) if how == "variance" else 1.0) + (amount if how == "mean" else 0.0)
    shares = CATEGORY_SHARES.copy()
    if how == "category":  # ten points of share move from the largest level to the smallest
        shares[0] -= amount
        shares[-1] += amount
    return pd.DataFrame({
        "normal": normal,
        "skewed": rng.lognormal(0.0, 0.75, rows),
        "integers": rng.poisson(6, rows).astype(float),
        "partner": rho * z1 + math.sqrt(1 - rho * rho) * z2,
        "category": CATEGORY_LEVELS[rng.choice(4, size=rows, p=shares)],
        "flag": np.where(rng.random(rows) < 0.85, "no", "yes"),
    })


def alerts(flags: list[bool], for_runs: int) -> int:
    """Streaks of at least ``for_runs`` consecutive flagged runs (an alert fires once per streak)."""
    count = streak = 0
    for flagged in flags:
        streak = streak + 1 if flagged else 0
        count += streak == for_runs
    return count


def first_alert(flags: list[bool], for_runs: int) -> int | None:
    """The run (1-based) at which the alert fires, or None."""
    streak = 0
    for run, flagged in enumerate(flags, 1):
        streak = streak + 1 if flagged else 0
        if streak == for_runs:
            return run
    return None


def poisson_interval(count: int, exposure: float) -> tuple[float, float]:
    """Exact (Garwood) 95 % interval of a Poisson rate: ``count`` events in ``exposure`` units."""
    low = stats.chi2.ppf(0.025, 2 * count) / 2 if count else 0.0
    high = stats.chi2.ppf(0.975, 2 * count + 2) / 2
    return low / exposure, high / exposure


class Stream:
    """The drift window: the last WINDOW rows of a stream that gets ``traffic`` rows per run."""

    def __init__(self, rng: np.random.Generator, traffic: int) -> None:
        self.rng, self.traffic = rng, traffic
        self.blocks: list[pd.DataFrame] = [draw(WINDOW, rng)]

    def run(self, how: str | None = None, amount: float = 0.0) -> pd.DataFrame:
        self.blocks.append(draw(self.traffic, self.rng, how, amount))
        window = pd.concat(self.blocks, ignore_index=True).iloc[-WINDOW:]
        self.blocks = [window]
        return window


@dataclass
class Modes:
    """The per-run false-flag probabilities of the modes compared (None: Evidently's fixed thresholds)."""

    evidently: float | None = None
    calibrated: float = BUDGET / RUNS_PER_MONTH
    check: float = CHECK_BUDGET / RUNS_PER_MONTH


def flagged(test: str, score: float, threshold: float) -> bool:
    from exporter.calibration import P_VALUE_TESTS

    return score < threshold if test in P_VALUE_TESTS else score >= threshold


def default_threshold(test: str) -> float:
    from exporter.stattests import evidently_stattests

    ev = evidently_stattests()
    tests = (ev.ks_stat_test, ev.chi_stat_test, ev.z_stat_test, ev.wasserstein_stat_test, ev.jensenshannon_stat_test)
    return next(t.default_threshold for t in tests if t.name == test)


def stationary(ref_rows: int, traffic: int, seeds: int, runs: int) -> dict[str, Any]:
    """False alerts per feature-month on stationary traffic, for both modes (and the calibrated scores judged at the
    larger check budget), and the multivariate alert's."""
    from exporter.calibration import calibrated_threshold
    from exporter.drift import Reference, compute_drift

    modes = Modes()
    flags: dict[str, dict[str, list[bool]]] = {}
    started = time.monotonic()
    for seed in range(seeds):
        rng = np.random.default_rng([ref_rows, traffic, seed])
        reference = Reference(draw(ref_rows, rng), NUMERICAL, CATEGORICAL)
        stream = Stream(rng, traffic)
        per_seed: dict[str, dict[str, list[bool]]] = {m: {f: [] for f in FEATURES} for m in ("evidently", "calibrated",
                                                                                              "check")}
        per_seed["multivariate"] = {"dataset": []}
        for _ in range(runs):
            window = stream.run()
            result = compute_drift(reference, window, alpha=modes.calibrated, min_rows=1)
            # The same scores judged by Evidently's fixed thresholds and at the check budget: one computation per
            # run (the window has no missing or unseen values, so every mode scores the same sample).
            for name, f in result.features.items():
                per_seed["calibrated"][name].append(bool(f.detected))
                per_seed["evidently"][name].append(flagged(f.stat_test, f.score, default_threshold(f.stat_test)))
                check = calibrated_threshold(reference.stats[name], f.stat_test, len(window), modes.check)
                per_seed["check"][name].append(flagged(f.stat_test, f.score, check))
            if getattr(result, "multivariate", None) is not None:
                per_seed["multivariate"]["dataset"].append(bool(result.multivariate.detected))
        for mode, by_feature in per_seed.items():
            for name, seq in by_feature.items():
                flags.setdefault(mode, {}).setdefault(f"{seed}:{name}", seq)
    out: dict[str, Any] = {"ref_rows": ref_rows, "traffic": traffic, "seeds": seeds, "runs_per_seed": runs,
                           "seconds": round(time.monotonic() - started, 1)}
    for mode, by_feature in flags.items():
        for_runs = FOR_RUNS["evidently" if mode == "evidently" else "calibrated"]
        count = sum(alerts(seq, for_runs) for seq in by_feature.values())
        months = sum(len(seq) for seq in by_feature.values()) / RUNS_PER_MONTH
        if months == 0:
            continue
        low, high = poisson_interval(count, months)
        out[mode] = {"alerts": count, "feature_months": round(months, 3), "per_feature_month": count / months,
                     "ci95": [low, high], "flagged_run_share": float(np.mean([x for s in by_feature.values()
                                                                              for x in s]))}
    return out


def delays(ref_rows: int, traffic: int, seeds: int, change: str, cap: int) -> dict[str, Any]:
    """Runs from the change to the alert on the changed feature, per mode (None: not within ``cap`` runs)."""
    from exporter.drift import Reference, compute_drift

    how, amount = CHANGES[change]
    feature = "category" if how == "category" else "normal"
    numerical, categorical = ([feature], []) if feature in NUMERICAL else ([], [feature])
    found: dict[str, list[int | None]] = {"evidently": [], "calibrated": []}
    for seed in range(seeds):
        rng = np.random.default_rng([ref_rows, traffic, seed, 7])
        reference = Reference(draw(ref_rows, rng), numerical, categorical)
        stream = Stream(rng, traffic)
        seqs: dict[str, list[bool]] = {"evidently": [], "calibrated": []}
        done: dict[str, int | None] = {}
        for _ in range(cap):
            window = stream.run(how, amount)
            for mode, alpha in (("evidently", None), ("calibrated", Modes().calibrated)):
                if mode in done:
                    continue
                seqs[mode].append(bool(compute_drift(reference, window, alpha=alpha, min_rows=1)
                                       .features[feature].detected))
                fired = first_alert(seqs[mode], FOR_RUNS[mode])
                if fired is not None:
                    done[mode] = fired
            if len(done) == 2:
                break
        for mode in found:
            found[mode].append(done.get(mode))
    return {"ref_rows": ref_rows, "traffic": traffic, "change": change, "seeds": seeds, "cap": cap,
            **{mode: summary(values) for mode, values in found.items()}}


def correlation_delays(ref_rows: int, traffic: int, seeds: int, cap: int) -> dict[str, Any]:
    """Runs from a correlation flip (every marginal kept) to the multivariate alert, and whether any per-feature
    alert fired."""
    from exporter.drift import Reference, compute_drift

    found: list[int | None] = []
    feature_alerts = 0
    for seed in range(seeds):
        rng = np.random.default_rng([ref_rows, traffic, seed, 11])
        reference = Reference(draw(ref_rows, rng), NUMERICAL, CATEGORICAL)
        stream = Stream(rng, traffic)
        seq: list[bool] = []
        per_feature: dict[str, list[bool]] = {f: [] for f in FEATURES}
        fired = None
        for _ in range(cap):
            result = compute_drift(reference, stream.run("correlation"), alpha=Modes().calibrated, min_rows=1)
            if getattr(result, "multivariate", None) is None:
                return {"ref_rows": ref_rows, "traffic": traffic, "skipped": "no multivariate drift in this build"}
            seq.append(bool(result.multivariate.detected))
            for name, f in result.features.items():
                per_feature[name].append(bool(f.detected))
            fired = first_alert(seq, FOR_RUNS["calibrated"])
            if fired is not None:
                break
        found.append(fired)
        feature_alerts += sum(first_alert(s, FOR_RUNS["calibrated"]) is not None for s in per_feature.values())
    return {"ref_rows": ref_rows, "traffic": traffic, "change": "correlation flip", "seeds": seeds, "cap": cap,
            "calibrated": summary(found), "per_feature_alerts_meanwhile": feature_alerts}


MULTIVARIATE_CHANGES = ("categories (joint)", "means (joint)", "correlation flip")


def joint_change(rows: int, rng: np.random.Generator, change: str | None) -> pd.DataFrame:
    """Fresh rows, or rows with a joint change: ten points of the 4-level category to its rarest level and five of
    the flag; the means of three numbers up by 0.1 of their sd; or the correlation flipped."""
    if change == "correlation flip":
        return draw(rows, rng, "correlation")
    frame = draw(rows, rng)
    if change == "categories (joint)":
        shares = CATEGORY_SHARES.copy()
        shares[0] -= 0.10
        shares[-1] += 0.10
        frame["category"] = CATEGORY_LEVELS[rng.choice(4, size=rows, p=shares)]
        frame["flag"] = np.where(rng.random(rows) < 0.80, "no", "yes")
    elif change == "means (joint)":
        frame[["normal", "partner"]] += 0.1
        frame["integers"] += 0.1 * math.sqrt(6)
    return frame


def multivariate_method(method: str, ref_rows: int, traffic: int, seeds: int, runs: int, cap: int) -> dict[str, Any]:
    """One multivariate method on its own (no per-feature tests): the share of stationary runs it flags at the check
    budget's alpha and its alerts at the default's, then the runs from each joint change to its alert."""
    from exporter.drift import normalise

    modes = Modes()
    started = time.monotonic()
    fit_multivariate = _previous_encoding_fit if method == PREVIOUS_ENCODING else _method_fit(method)
    checked: list[bool] = []
    alerts_default = 0
    delays_by_change: dict[str, list[int | None]] = {c: [] for c in MULTIVARIATE_CHANGES}
    for seed in range(seeds):
        rng = np.random.default_rng([ref_rows, traffic, seed, 13])
        model = fit_multivariate(normalise(draw(ref_rows, rng), NUMERICAL, CATEGORICAL), NUMERICAL, CATEGORICAL,
                                 method)
        assert model is not None
        blocks = [draw(WINDOW, rng)]
        flags: list[bool] = []
        for _ in range(runs):
            blocks = [pd.concat([*blocks, draw(traffic, rng)], ignore_index=True).iloc[-WINDOW:]]
            window = normalise(blocks[0], NUMERICAL, CATEGORICAL)
            result = model.score(window, modes.check)
            checked.append(result.detected)
            flags.append(result.score >= model.threshold(result.rows, modes.calibrated))
        alerts_default += alerts(flags, FOR_RUNS["calibrated"])
        for change in MULTIVARIATE_CHANGES:
            window_blocks = [draw(WINDOW, rng)]
            seq: list[bool] = []
            fired = None
            for _ in range(cap):
                window_blocks = [pd.concat([*window_blocks, joint_change(traffic, rng, change)],
                                           ignore_index=True).iloc[-WINDOW:]]
                seq.append(model.score(normalise(window_blocks[0], NUMERICAL, CATEGORICAL), modes.calibrated).detected)
                fired = first_alert(seq, FOR_RUNS["calibrated"])
                if fired is not None:
                    break
            delays_by_change[change].append(fired)
    low, high = poisson_interval(sum(checked), len(checked))
    return {"method": method, "ref_rows": ref_rows, "traffic": traffic, "seeds": seeds, "runs_per_seed": runs,
            "cap": cap, "check_alpha": modes.check, "check_flagged_share": float(np.mean(checked)),
            "check_flagged_ci95": [low, high], "default_alerts": alerts_default,
            "months": round(seeds * runs / RUNS_PER_MONTH, 4),
            "delays": {c: summary(v) for c, v in delays_by_change.items()},
            "seconds": round(time.monotonic() - started, 1)}


PREVIOUS_ENCODING = "pca_reconstruction (one-hot x 1/sqrt 2, before)"


def _method_fit(method: str) -> Callable[..., Any]:
    from exporter.multivariate import fit_multivariate

    return lambda frame, numerical, categorical, _: fit_multivariate(frame, numerical, categorical, method)


def _previous_encoding_fit(frame: pd.DataFrame, numerical: list[str], categorical: list[str], _: str) -> Any:
    """The PCA method as it was before block scaling: every one-hot column at 1/sqrt(2), whatever its feature's
    level shares; measured beside the current methods so that the change's effect is in the table."""
    import dataclasses
    from unittest import mock

    from exporter import multivariate

    fit = multivariate.Encoder.fit

    def previous(frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> multivariate.Encoder:
        return dataclasses.replace(fit(frame, numerical, categorical),
                                   block_scales=np.full(len(categorical), 1 / math.sqrt(2)))

    with mock.patch.object(multivariate.Encoder, "fit", previous):
        return multivariate.MultivariateReference(frame, numerical, categorical)


def summary(values: list[int | None]) -> dict[str, Any]:
    caught = sorted(v for v in values if v is not None)
    missed = len(values) - len(caught)

    def pct(q: float) -> int | None:  # nearest rank over all seeds; a miss counts as later than any catch
        rank = max(1, math.ceil(q / 100 * len(values)))
        return caught[rank - 1] if rank <= len(caught) else None

    return {"p50": pct(50), "p95": pct(95), "missed": missed, "runs": values}


def multivariate_cost() -> dict[str, Any]:
    """Seconds to fit the multivariate model on a reference and to score windows of several sizes (30 features: 24
    numerical, 6 categorical); larger windows are scored on a fixed-size sample, so the cost stays bounded."""
    from exporter.drift import normalise
    from exporter.multivariate import METHODS, fit_multivariate

    rng = np.random.default_rng(3)

    def wide(rows: int) -> pd.DataFrame:
        blocks = [draw(rows, rng).add_suffix(f"_{i}") for i in range(6)]
        return pd.concat(blocks, axis=1).drop(columns=[f"partner_{i}" for i in range(6)])

    frame = wide(50_000)
    numerical = [c for c in frame.columns if not c.startswith(("category", "flag"))]
    categorical = [c for c in frame.columns if c.startswith(("category", "flag"))]
    reference = normalise(frame, numerical, categorical)
    windows = {rows: normalise(wide(rows), numerical, categorical) for rows in (3000, 100_000)}
    out: dict[str, Any] = {"features": len(frame.columns), "reference_rows": len(frame)}
    for method in METHODS:
        started = time.perf_counter()
        model = fit_multivariate(reference, numerical, categorical, method)
        cell: dict[str, Any] = {"fit_seconds": round(time.perf_counter() - started, 3)}
        assert model is not None
        for rows, window in windows.items():
            model.score(window, Modes().calibrated)
            started = time.perf_counter()
            for _ in range(5):
                model.score(window, Modes().calibrated)
            cell[f"score_seconds_{rows}_rows"] = round((time.perf_counter() - started) / 5, 4)
        out[method] = cell
    return out


def _task(spec: tuple[str, tuple[Any, ...]]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    warnings.simplefilter("ignore")
    kind, args = spec
    from benchmarks import detection_segments as seg

    fn: Callable[..., dict[str, Any]] = {"stationary": stationary, "delay": delays,
                                         "correlation": correlation_delays, "cost": multivariate_cost,
                                         "methods": multivariate_method, "segments_stationary": seg.stationary,
                                         "segments_delay": seg.delays, "segments_cost": seg.cost}[kind]
    with threadpool_limits(1):
        return {"kind": kind, **fn(*args)}


def plan(quick: bool, days: float, seeds: int) -> list[tuple[str, tuple[Any, ...]]]:
    runs = int(days * 1440 / seeds)
    tasks: list[tuple[str, tuple[Any, ...]]] = []
    for ref_rows in REFERENCES:
        for traffic in TRAFFIC:
            tasks.append(("stationary", (ref_rows, traffic, seeds, runs)))
            cap = min(3 * WINDOW // traffic + 10, 400)
            for change in CHANGES:
                target_cell = ref_rows == 5000 and traffic == 100
                tasks.append(("delay", (ref_rows, traffic, 20 if target_cell and not quick else 6, change, cap)))
    for ref_rows in REFERENCES:
        tasks.append(("correlation", (ref_rows, 300, 6 if quick else 20, 60)))
    tasks.append(("cost", ()))
    tasks += multivariate_plan(quick)
    tasks += segments_plan(quick)
    # the slowest first, so that two processes finish together
    return sorted(tasks, key=lambda t: -_work(*t))


def _work(kind: str, args: tuple[Any, ...]) -> float:
    """A task's rough cost, to order the pool's work."""
    if not args:
        return 0.0
    if kind == "methods":  # (method, ref_rows, traffic, seeds, runs, cap): a few minutes each
        return float(args[1] * args[3] * args[4])
    if kind.startswith("segments"):  # stationary: minutes; delays and cost: about one
        return 5e7 if kind == "segments_stationary" else 1e7
    return float(args[0] * (args[3] if kind == "stationary" else 50))


def multivariate_plan(quick: bool) -> list[tuple[str, tuple[Any, ...]]]:
    from exporter.multivariate import METHODS

    seeds, runs = (2, 150) if quick else (6, 500)
    return [("methods", (method, ref_rows, 300, seeds, runs, 40)) for method in (*METHODS, PREVIOUS_ENCODING)
            for ref_rows in (1000, 5000)]


def segments_plan(quick: bool) -> list[tuple[str, tuple[Any, ...]]]:
    from benchmarks.detection_segments import plan as segment_tasks

    return segment_tasks(quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=2.0, help="simulated days of stationary runs per cell")
    parser.add_argument("--seeds", type=int, default=8, help="references per cell for the stationary runs")
    parser.add_argument("--quick", action="store_true", help="fewer seeds for the delays (a smoke run)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default=str(BENCH_DIR / "detection.json"))
    parser.add_argument("--multivariate-only", action="store_true",
                        help="only the multivariate methods side by side (a few minutes); prints their table")
    parser.add_argument("--segments-only", action="store_true",
                        help="only the segments section (about 10 minutes); replaces it in the --out file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.segments_only:
        from benchmarks.detection_segments import render as render_segments

        with ProcessPoolExecutor(args.workers) as pool:
            segments = list(pool.map(_task, sorted(segments_plan(args.quick), key=lambda t: -_work(*t))))
        print(render_segments(segments))
        try:
            with open(args.out) as fh:
                kept = json.load(fh)
        except FileNotFoundError:
            kept = {"machine": machine_info()}
        kept["segments"] = segments
        with open(args.out, "w") as fh:
            json.dump(kept, fh, indent=1, default=float)
        return 0
    if args.multivariate_only:
        with ProcessPoolExecutor(args.workers) as pool:
            methods = list(pool.map(_task, multivariate_plan(args.quick)))
        print(render_methods(methods))
        with open(args.out, "w") as fh:
            json.dump({"machine": machine_info(), "seconds": round(time.monotonic() - started, 1),
                       "multivariate_methods": methods}, fh, indent=1, default=float)
        return 0
    tasks = plan(args.quick, args.days, args.seeds)
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_task, tasks))
    doc = {
        "machine": machine_info(),
        "seconds": round(time.monotonic() - started, 1),
        "budget_per_feature_month": BUDGET,
        "check_budget_per_feature_month": CHECK_BUDGET,
        "for_runs": FOR_RUNS,
        "window": WINDOW,
        "stationary": [r for r in results if r["kind"] == "stationary"],
        "delays": [r for r in results if r["kind"] == "delay"],
        "correlation": [r for r in results if r["kind"] == "correlation"],
        "multivariate_cost": next(r for r in results if r["kind"] == "cost"),
        "multivariate_methods": [r for r in results if r["kind"] == "methods"],
        "segments": [r for r in results if r["kind"].startswith("segments")],
    }
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1, default=float)
    print(render(doc))
    from benchmarks.detection_segments import render as render_segments

    print("\n" + render_segments(doc["segments"]))
    return 0


def render(doc: dict[str, Any]) -> str:
    """The README's tables, as markdown."""
    lines = ["False alerts per feature-month on stationary traffic (95 % interval)", "",
             "| reference | rows/run | feature-months | evidently | calibrated | calibrated at 100/month |",
             "|---|---|---|---|---|---|"]

    def rate(cell: dict[str, Any]) -> str:
        low, high = cell["ci95"]
        return f"{cell['per_feature_month']:.3g} ({low:.2g}–{high:.2g})"

    for r in sorted(doc["stationary"], key=lambda r: (r["ref_rows"], r["traffic"])):
        lines.append(f"| {r['ref_rows']} | {r['traffic']} | {r['calibrated']['feature_months']:.2f} | "
                     f"{rate(r['evidently'])} | {rate(r['calibrated'])} | {rate(r['check'])} |")
    lines += ["", "Runs until the alert fires after a change (median / 95th percentile; ∞: not within the cap)", "",
              "| reference | rows/run | change | seeds | evidently | calibrated |", "|---|---|---|---|---|---|"]

    def runs(s: dict[str, Any]) -> str:
        return f"{s['p50'] if s['p50'] is not None else '∞'} / {s['p95'] if s['p95'] is not None else '∞'}"

    for r in sorted(doc["delays"], key=lambda r: (r["ref_rows"], r["traffic"], list(CHANGES).index(r["change"]))):
        lines.append(f"| {r['ref_rows']} | {r['traffic']} | {r['change']} | {r['seeds']} | {runs(r['evidently'])} | "
                     f"{runs(r['calibrated'])} |")
    corr = [r for r in doc["correlation"] if "calibrated" in r]
    if corr:
        lines += ["", "Correlation flip, 300 rows/run: runs until the multivariate alert (median / 95th percentile)",
                  "", "| reference | seeds | multivariate | per-feature alerts meanwhile |", "|---|---|---|---|"]
        for r in corr:
            lines.append(f"| {r['ref_rows']} | {r['seeds']} | {runs(r['calibrated'])} | "
                         f"{r['per_feature_alerts_meanwhile']} |")
    cost = doc.get("multivariate_cost")
    if cost:
        lines += ["", f"Multivariate drift cost ({cost['features']} features, {cost['reference_rows']} reference rows)",
                  "", "| method | fit | a 3000-row window | a 100k-row window (scored on a sample) |",
                  "|---|---|---|---|"]
        for method, c in cost.items():
            if isinstance(c, dict):
                lines.append(f"| {method} | {c['fit_seconds']} s | {c['score_seconds_3000_rows']} s | "
                             f"{c['score_seconds_100000_rows']} s |")
    return "\n".join(lines)


def render_methods(methods: list[dict[str, Any]]) -> str:
    """The multivariate methods side by side, as markdown."""
    def runs(s: dict[str, Any]) -> str:
        return f"{s['p50'] if s['p50'] is not None else '∞'} / {s['p95'] if s['p95'] is not None else '∞'}"

    lines = ["| method | reference | stationary runs | flagged at alpha 2.3e-3 (95 % interval) | alerts at the default "
             "budget | " + " | ".join(MULTIVARIATE_CHANGES) + " |", "|---|---|---|---|---|" + "---|" * 3]
    for r in sorted(methods, key=lambda r: (r["method"], r["ref_rows"])):
        low, high = r["check_flagged_ci95"]
        lines.append(f"| {r['method']} | {r['ref_rows']} | {r['seeds'] * r['runs_per_seed']} | "
                     f"{r['check_flagged_share']:.2e} ({low:.1e}–{high:.1e}) | {r['default_alerts']} | "
                     + " | ".join(runs(r["delays"][c]) for c in MULTIVARIATE_CHANGES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
