"""The segments section of the detection benchmark (``make bench-detection``; alone: ``python -m benchmarks.detection
--segments-only``): drift per segment (exporter.segments) through the real drift code, on simulated job runs.

The population: a segment feature ``segment`` of 5 values (40/20/20/10/10 % of the rows) whose segments differ (the
number ``normal`` has mean 0.3 x the segment's index), a log-normal number and a 4-level category. Each run, 300
fresh rows join the 3000-row window; an alert is a (segment, feature) flagged in 3 consecutive runs, as the shipped
``for: 2m``. Measured:

- stationary traffic: false segment alerts per feature-month, the segments of a feature counted together, at the
  default budget and at the check budget 10 000 times larger (where they are countable), as the per-feature ones;
- a 1 sd shift of ``normal`` confined to the 10 % segment ``e``: runs until that segment's alert, and until the pooled
  per-feature alert (within the cap, or never);
- a shift of every segment at once (+0.2 sd): runs until the pooled alert and until the first segment alert;
- the run time of the segments with 1, 5 and 20 segments on a 100k-row reference and window of 30 features.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

SEGMENTS = np.array(["a", "b", "c", "d", "e"])
SHARES = np.array([0.4, 0.2, 0.2, 0.1, 0.1])
NUMERICAL = ["normal", "skewed"]
CATEGORICAL = ["segment", "category"]
TESTED = ["normal", "skewed", "category"]  # the features tested within segments (not the segmenting one)
WINDOW, TRAFFIC, FOR_RUNS = 3000, 300, 3
RUNS_PER_MONTH = 43_200
BUDGET, CHECK_BUDGET = 0.01, 100.0
REFERENCE_ROWS = 5000
CHANGES = {"1 sd in segment e (10 %)": ("e", 1.0), "every segment +0.2 sd": (None, 0.2)}


def draw(rows: int, rng: np.random.Generator, shifted: str | None = None, shift: float = 0.0) -> pd.DataFrame:
    index = rng.choice(len(SEGMENTS), size=rows, p=SHARES)
    normal = 0.3 * index + rng.standard_normal(rows)
    if shift:
        normal = normal + shift * (1.0 if shifted is None else (SEGMENTS[index] == shifted))
    return pd.DataFrame({
        "normal": normal, "skewed": rng.lognormal(0.0, 0.75, rows), "segment": SEGMENTS[index],
        "category": np.array(["p", "q", "r", "s"])[rng.choice(4, size=rows, p=[0.5, 0.3, 0.15, 0.05])],
    })


class Stream:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.window = draw(WINDOW, rng)

    def run(self, shifted: str | None = None, shift: float = 0.0) -> pd.DataFrame:
        fresh = draw(TRAFFIC, self.rng, shifted, shift)
        self.window = pd.concat([self.window, fresh], ignore_index=True).iloc[-WINDOW:]
        return self.window


def _setup(rng: np.random.Generator) -> tuple[Any, Any]:
    from exporter.drift import Reference
    from exporter.segments import SegmentReference, SegmentSpec

    reference = Reference(draw(REFERENCE_ROWS, rng), NUMERICAL, CATEGORICAL, multivariate_method="pca_reconstruction")
    return reference, SegmentReference(reference, SegmentSpec(("segment",)))


def stationary(seeds: int, runs: int) -> dict[str, Any]:
    """False segment alerts per feature-month (a feature's segments together), default and check budgets."""
    from benchmarks.detection import alerts, poisson_interval

    alphas = {"calibrated": BUDGET / RUNS_PER_MONTH, "check": CHECK_BUDGET / RUNS_PER_MONTH}
    started = time.monotonic()
    counts = {mode: 0 for mode in alphas}
    flagged_runs = {mode: 0 for mode in alphas}
    tests = 0
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 31])
        _, segments = _setup(rng)
        stream = Stream(rng)
        flags: dict[str, dict[tuple[str, str], list[bool]]] = {mode: {} for mode in alphas}
        for _ in range(runs):
            window = stream.run()
            for mode, alpha in alphas.items():
                for seg in segments.judge(window, alpha):
                    for name, f in seg.features.items():
                        flags[mode].setdefault((seg.segment, name), []).append(bool(f.detected))
                        flagged_runs[mode] += bool(f.detected)
                        tests += mode == "check"
        for mode in alphas:
            counts[mode] += sum(alerts(seq, FOR_RUNS) for seq in flags[mode].values())
    feature_months = seeds * runs * len(TESTED) / RUNS_PER_MONTH
    out: dict[str, Any] = {"seeds": seeds, "runs_per_seed": runs, "reference_rows": REFERENCE_ROWS,
                           "feature_months": round(feature_months, 4), "segment_tests": tests,
                           "seconds": round(time.monotonic() - started, 1)}
    for mode in alphas:
        low, high = poisson_interval(counts[mode], feature_months)
        out[mode] = {"alerts": counts[mode], "per_feature_month": counts[mode] / feature_months, "ci95": [low, high],
                     "flagged_test_share": flagged_runs[mode] / max(tests, 1)}
    return out


def delays(change: str, seeds: int, cap: int) -> dict[str, Any]:
    """Runs from the change to the first segment alert on ``normal`` (and which segment) and to the pooled alert."""
    from benchmarks.detection import first_alert, summary
    from exporter.drift import compute_drift

    shifted, shift = CHANGES[change]
    alpha = BUDGET / RUNS_PER_MONTH
    segment_runs: list[int | None] = []
    pooled_runs: list[int | None] = []
    wrong = 0  # segment alerts on another segment or feature than the one shifted
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 37])
        reference, segments = _setup(rng)
        stream = Stream(rng)
        pooled: list[bool] = []
        per_segment: dict[tuple[str, str], list[bool]] = {}
        seg_fired = pool_fired = None
        for _ in range(cap):
            window = stream.run(shifted, shift)
            pooled.append(bool(compute_drift(reference, window, alpha=alpha, min_rows=1).features["normal"].detected))
            pool_fired = pool_fired or first_alert(pooled, FOR_RUNS)
            for seg in segments.judge(window, alpha):
                for name, f in seg.features.items():
                    per_segment.setdefault((seg.segment, name), []).append(bool(f.detected))
            fired = {key: first_alert(seq, FOR_RUNS) for key, seq in per_segment.items()}
            if seg_fired is None:
                hits = [k for k, v in fired.items() if v is not None]
                if hits:
                    seg_fired = len(pooled)
                    wrong += sum(1 for segment, name in hits
                                 if name != "normal" or (shifted is not None and segment != shifted))
            if seg_fired is not None and pool_fired is not None:
                break
        segment_runs.append(seg_fired)
        pooled_runs.append(pool_fired)
    both = [(s, p) for s, p in zip(segment_runs, pooled_runs, strict=True)]
    return {"change": change, "seeds": seeds, "cap": cap, "segment": summary(segment_runs),
            "pooled": summary(pooled_runs), "segment_alerts_elsewhere": wrong,
            "pooled_first_or_together": sum(1 for s, p in both if p is not None and (s is None or p <= s))}


def cost(segment_counts: tuple[int, ...] = (1, 5, 20), rows: int = 100_000) -> dict[str, Any]:
    """Seconds of the segment work of one run (first run: the no-drift models simulated; then: cached) beside the
    pooled drift of the same run, on ``rows`` reference and window rows of 30 features."""
    from benchmarks.common import drift_frame, feature_names
    from exporter.drift import Reference, compute_drift
    from exporter.segments import SegmentReference, SegmentSpec

    num, cat = feature_names(20, 10)
    rng = np.random.default_rng(5)
    ref, cur = drift_frame(rows, 20, 10, seed=1), drift_frame(rows, 20, 10, seed=2, drifted=True)
    out: dict[str, Any] = {"rows": rows, "features": 30}
    for k in segment_counts:
        shares = np.arange(k, 0, -1) / np.arange(k, 0, -1).sum()  # uneven: the smallest of 20 is 0.5 %
        names = np.array([f"s{i:02d}" for i in range(k)])
        frame_ref = ref.assign(segment=names[rng.choice(k, size=rows, p=shares)])
        frame_cur = cur.assign(segment=names[rng.choice(k, size=rows, p=shares)])
        started = time.perf_counter()
        reference = Reference(frame_ref, num, [*cat, "segment"], multivariate_method="pca_reconstruction")
        segments = SegmentReference(reference, SegmentSpec(("segment",), max_segments=20))
        build = time.perf_counter() - started
        alpha = BUDGET / RUNS_PER_MONTH
        started = time.perf_counter()
        compute_drift(reference, frame_cur, alpha=alpha, min_rows=1)
        pooled = time.perf_counter() - started
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            judged = segments.judge(frame_cur, alpha)
            timings.append(time.perf_counter() - started)
        out[str(k)] = {"segments_judged": sum(not s.too_small for s in judged), "build_seconds": round(build, 2),
                       "pooled_seconds": round(pooled, 2), "first_run_seconds": round(timings[0], 2),
                       "next_run_seconds": round(timings[1], 2)}
    return out


def plan(quick: bool) -> list[tuple[str, tuple[Any, ...]]]:
    seeds, runs = (2, 120) if quick else (8, 540)  # 8 x 540 runs: 3 simulated days
    tasks: list[tuple[str, tuple[Any, ...]]] = [("segments_stationary", (seeds, runs))]
    tasks += [("segments_delay", (change, 4 if quick else 20, 40)) for change in CHANGES]
    tasks.append(("segments_cost", ((1, 5, 20), 20_000 if quick else 100_000)))
    return tasks


def render(results: list[dict[str, Any]]) -> str:
    def runs(s: dict[str, Any]) -> str:
        return f"{s['p50'] if s['p50'] is not None else '∞'} / {s['p95'] if s['p95'] is not None else '∞'}"

    lines = []
    for r in results:
        if r["kind"] == "segments_stationary":
            lines += [f"Segments, stationary ({r['seeds']} references of {r['reference_rows']} rows, "
                      f"{r['feature_months']} feature-months): false segment alerts per feature-month (95 % interval)",
                      "", "| budget | alerts | per feature-month | share of segment tests flagged |",
                      "|---|---|---|---|"]
            for mode, budget in (("calibrated", BUDGET), ("check", CHECK_BUDGET)):
                c = r[mode]
                lines.append(f"| {budget:g} | {c['alerts']} | {c['per_feature_month']:.3g} "
                             f"({c['ci95'][0]:.2g}–{c['ci95'][1]:.2g}) | {c['flagged_test_share']:.2e} |")
            lines.append("")
    delay_rows = [r for r in results if r["kind"] == "segments_delay"]
    if delay_rows:
        lines += ["Segments, runs until the alert (median / 95th percentile; ∞: not within the cap)", "",
                  "| change | seeds | segment alert | pooled alert | pooled first or together "
                  "| segment alerts elsewhere |",
                  "|---|---|---|---|---|---|"]
        for r in delay_rows:
            lines.append(f"| {r['change']} | {r['seeds']} | {runs(r['segment'])} | {runs(r['pooled'])} | "
                         f"{r['pooled_first_or_together']} of {r['seeds']} | {r['segment_alerts_elsewhere']} |")
        lines.append("")
    for r in results:
        if r["kind"] == "segments_cost":
            lines += [f"Segments, run time ({r['rows']} reference and window rows, {r['features']} features)", "",
                      "| segments | judged | reference build | pooled drift | segments, first run "
                      "| segments, next runs |",
                      "|---|---|---|---|---|---|"]
            for k, c in r.items():
                if isinstance(c, dict):
                    lines.append(f"| {k} | {c['segments_judged']} | {c['build_seconds']} s | {c['pooled_seconds']} s | "
                                 f"{c['first_run_seconds']} s | {c['next_run_seconds']} s |")
    return "\n".join(lines)
