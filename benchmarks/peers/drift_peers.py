"""Drift computation side by side with the drift tools a user would pick instead: NannyML's
``UnivariateDriftCalculator`` (0.13.1) and alibi-detect's ``TabularDrift`` (0.13.0), each in its own virtual
environment (``make bench-peers``), and Evidently's ``DataDriftPreset`` (our own dependency), on the same windows.

``python -m benchmarks.peers.drift_peers`` writes the cases (benchmarks.common.drift_frame: 30 features, a third
categorical; the window moves 7 numbers and 3 categories, and one more category gains 1 % of values the reference
never showed) as Parquet into ``benchmarks/peers/.data/drift/``, runs each peer's script there with its venv's
Python (``-I``: none of our code on its path), runs ours and the preset in this venv, and writes
``benchmarks/peers_drift.json``. Per case and tool: seconds to fit on the reference and judge the first window,
and to judge a later window with the fit reused (medians of ``--repeats``; the targets are on the latter, what a
monitor pays every run) and the features flagged, against the truth. Each tool runs with its defaults: NannyML's
Jensen-Shannon for both kinds with thresholds from its reference chunks, alibi-detect's K-S / chi-square, each
feature at p 0.05, the preset's method choice, and ours with calibrated thresholds at the default budget.
alibi-detect needs numbers: categories are coded as integers and missing numbers filled with the reference median
(inside its timing); NannyML and ours take the frames as they are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import drift_frame, feature_names

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / ".data" / "drift"
OUT = ROOT / "benchmarks" / "peers_drift.json"
PEERS = {"nannyml": ROOT / ".venv-peers" / "nannyml", "alibi_detect": ROOT / ".venv-peers" / "alibi"}  # name: venv
CASES = {  # name: (window rows, reference rows)
    "100000x30_ref50000": (100_000, 50_000),
    "100000x30_ref1000": (100_000, 1000),
    "3000x30_ref50000": (3000, 50_000),
    "3000x30_ref1000": (3000, 1000),
}
N_NUM, N_CAT = 20, 10
SPEED_TARGET = 10.0  # ours at least this many times faster than each peer at 100k x 30


def truth() -> tuple[list[str], list[str]]:
    """(features the window shifts, features that only gain 1 % unseen values), as drift_frame moves them."""
    num, cat = feature_names(N_NUM, N_CAT)
    shifted = [n for i, n in enumerate(num) if i % 3 == 0] + [c for j, c in enumerate(cat) if j % 3 == 1]
    unseen = [c for j, c in enumerate(cat) if j % 5 == 2 and j % 3 != 1]
    return shifted, unseen


def write_cases() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    num, cat = feature_names(N_NUM, N_CAT)
    (DATA / "features.json").write_text(json.dumps({"numerical": num, "categorical": cat}))
    for name, (rows, ref_rows) in CASES.items():
        drift_frame(ref_rows, N_NUM, N_CAT, seed=1).to_parquet(DATA / f"{name}_reference.parquet")
        drift_frame(rows, N_NUM, N_CAT, seed=2, drifted=True).to_parquet(DATA / f"{name}_window.parquet")


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def ours(repeats: int) -> dict[str, Any]:
    """Fit (the Reference: per-feature columns, the multivariate model) with the first window (its thresholds'
    no-drift models simulated), then later windows of the same size (the service's every run after the first)."""
    import pandas as pd

    from exporter.calibration import per_run_alpha
    from exporter.drift import Reference, compute_drift
    from exporter.multivariate import CLASSIFIER, METHOD

    num, cat = feature_names(N_NUM, N_CAT)
    alpha = per_run_alpha(0.01, 60.0)
    out: dict[str, Any] = {}
    for name in CASES:
        ref = pd.read_parquet(DATA / f"{name}_reference.parquet")
        window = pd.read_parquet(DATA / f"{name}_window.parquet")
        cell = {}
        for label, method in (("ours", METHOD), ("ours_classifier", CLASSIFIER)):
            def first(method: str = method, ref: Any = ref, window: Any = window) -> Any:
                reference = Reference(ref, num, cat, multivariate_method=method)
                return reference, compute_drift(reference, window, alpha=alpha)
            seconds, (reference, result) = timed(first, repeats)
            later, _ = timed(lambda reference=reference, window=window: compute_drift(reference, window, alpha=alpha),
                             repeats)
            cell[label] = {"seconds": seconds, "run_seconds": later,
                           "flagged": sorted(n for n, f in result.features.items() if f.detected)}
        out[name] = cell
    return out


def preset(repeats: int) -> dict[str, Any]:
    import warnings

    import pandas as pd

    from benchmarks.drift_bench import preset_detected, preset_scores

    warnings.simplefilter("ignore")
    num, cat = feature_names(N_NUM, N_CAT)
    out = {}
    for name in CASES:
        ref = pd.read_parquet(DATA / f"{name}_reference.parquet")
        window = pd.read_parquet(DATA / f"{name}_window.parquet")
        seconds, scores = timed(lambda ref=ref, window=window: preset_scores(ref, window, num, cat)[1], repeats)
        out[name] = {"seconds": seconds, "run_seconds": seconds,  # nothing to fit: every run is the whole work
                     "flagged": sorted(n for n, v in scores.items() if preset_detected(*v))}
    return out


def peer(name: str, repeats: int) -> dict[str, Any]:
    python = PEERS[name] / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} is missing: `make bench-peers` makes it")
    script = Path(__file__).resolve().parent / f"{name}_drift.py"
    done = subprocess.run([str(python), "-I", str(script), str(DATA), str(repeats), *CASES], capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(flagged: list[str]) -> dict[str, Any]:
    shifted, unseen = truth()
    return {"shifted_found": len(set(flagged) & set(shifted)), "shifted": len(shifted),
            "unseen_found": len(set(flagged) & set(unseen)),
            "false": sorted(set(flagged) - set(shifted) - set(unseen))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.drift_peers", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print the docs table from peers_drift.json")
    args = parser.parse_args(argv)
    if args.markdown:
        print(render(json.loads(OUT.read_text())))
        return 0
    write_cases()
    tools: dict[str, dict[str, Any]] = {}
    for name, cells in ours(args.repeats).items():
        for label, cell in cells.items():
            tools.setdefault(label, {})[name] = cell
    tools["evidently_preset"] = preset(args.repeats)
    for name in PEERS:
        tools[name] = peer(name, args.repeats)
    cases = {}
    for case in CASES:
        cases[case] = {tool: {**cells[case], **summary(cells[case]["flagged"])} for tool, cells in tools.items()}
    targets = {}
    for case in ("100000x30_ref50000", "100000x30_ref1000"):
        for tool in ("evidently_preset", *PEERS):  # per run: what a monitor pays every interval
            ratio = cases[case][tool]["run_seconds"] / cases[case]["ours"]["run_seconds"]
            targets[f"drift_peer_speedup_{case}_{tool}"] = ratio
    doc = {"cases": cases, "speedups": targets, "speed_target": SPEED_TARGET,
           "targets_met": sum(v >= SPEED_TARGET for v in targets.values()), "targets_checked": len(targets)}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(render(doc))
    return 0


def render(doc: dict[str, Any]) -> str:
    shifted, unseen = truth()
    lines = [f"Drift peers: seconds (fit + the first window; a later window, the fit reused; medians) and features "
             f"flagged: of the {len(shifted)} shifted, of the {len(unseen)} with 1 % unseen values, and others (false)",
             "", "| case | tool | fit + first window | later window | shifted found | unseen found | false flags |",
             "|---|---|---|---|---|---|---|"]
    for case, tools in doc["cases"].items():
        for tool, c in tools.items():
            lines.append(f"| {case} | {tool} | {c['seconds']:.2f} | {c['run_seconds']:.2f} | "
                         f"{c['shifted_found']} of {c['shifted']} | {c['unseen_found']} | {len(c['false'])} |")
    lines += ["", "| per-run speedup of ours (pca_reconstruction multivariate) over | measured | target |",
              "|---|---|---|"]
    for key, value in doc["speedups"].items():
        lines.append(f"| {key} | {value:.1f}x | >= {doc['speed_target']:g}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
