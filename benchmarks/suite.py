"""``python -m benchmarks [--quick] [--only SECTION ...] [--out FILE]``: run the suite, print the table, write JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, ROOT, busy_processes, loadavg, machine_info, write_json

SECTIONS = ("logging", "batching", "drift_latency", "drift", "estimation", "metrics", "memory", "log_intake",
            "scaleout")


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    op: str            # "<=", ">=", "==" or "" (reported, no target)
    bound: float | None
    fmt: str = "{:.3f}"

    def check(self, value: Any) -> bool | None:
        if not self.op or value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if self.op == "<=":
            return bool(value <= self.bound)
        if self.op == ">=":
            return bool(value >= self.bound)
        return bool(value == self.bound)


TARGETS = [
    Target("logging_p99_ratio", "/predict p99, logging on / off", "<=", 1.05),
    Target("logging_throughput_ratio", "/predict throughput, logging on / off", ">=", 0.95),
    Target("logging_cpu_per_request_ratio", "server CPU per request, logging on / off", "", None),
    Target("logging_noise_p99_ratio", "/predict p99, two identical servers without logging (noise)", "", None),
    Target("seed_style_p99_ratio", "/predict p99, seed style (INSERT per request) / off", "", None),
    Target("seed_style_throughput_ratio", "/predict throughput, seed style / off", "", None),
    Target("seed_style_cpu_per_request_ratio", "server CPU per request, seed style / off", "", None),
    Target("batching_throughput_ratio_16", "/predict throughput, batching on / off, 16 clients", ">=", 3.0),
    Target("batching_p99_ratio_16", "/predict p99, batching on / off, 16 clients", "<=", 0.5),
    Target("batching_throughput_ratio_64", "/predict throughput, batching on / off, 64 clients", "", None),
    Target("batching_p99_ratio_64", "/predict p99, batching on / off, 64 clients", "", None),
    Target("batching_lone_p50_added_ms", "/predict p50 of a lone client, batching on - off (ms)", "<=", 1.0,
           "{:.2f}"),
    Target("drift_speedup_3000x30", "drift speedup vs DataDriftPreset, 3000x30", ">=", 25, "{:.1f}"),
    Target("drift_speedup_100000x30", "drift speedup vs DataDriftPreset, 100000x30", ">=", 25, "{:.1f}"),
    Target("drift_speedup_10000x1000", "drift speedup vs DataDriftPreset, 10000x1000", ">=", 25, "{:.1f}"),
    Target("drift_speedup_3000x30_ref1000", "drift speedup, 3000x30, 1000-row reference (K-S/chi2)", "", None,
           "{:.1f}"),
    Target("drift_ours_classifier_s_3000x30", "compute_drift s, 3000x30, default multivariate (classifier)", "",
           None, "{:.2f}"),
    Target("drift_ours_classifier_s_100000x30", "compute_drift s, 100000x30, default multivariate (classifier)", "",
           None, "{:.2f}"),
    Target("importance_permutation_s_50000x30", "feature importance s, once per reference, permutation, 50000x30",
           "", None, "{:.2f}"),
    Target("importance_native_s_50000x30", "feature importance s, once per reference, native, 50000x30", "", None,
           "{:.3f}"),
    Target("drift_max_abs_delta", "max |score - preset score| over all columns", "<=", 1e-9, "{:.2e}"),
    Target("drift_flags_mismatched", "columns whose drift flag differs from the preset", "==", 0, "{:.0f}"),
    Target("p99_during_drift_ratio", "/predict p99, drift job (100k x30, worker process) running / idle", "<=",
           1.2),
    Target("throughput_during_drift_ratio", "/predict throughput, drift job (worker process) running / idle", "",
           None),
    Target("p99_during_drift_ratio_thread", "/predict p99, drift job with isolation: thread, running / idle", "",
           None),
    Target("throughput_during_drift_ratio_thread", "/predict throughput, isolation: thread, running / idle", "",
           None),
    Target("estimation_s_classification_3000", "estimated quality (CBPE + 99% band), 3000-row window (s)", "", None),
    Target("estimation_s_classification_100000", "estimated quality (CBPE + 99% band), 100k-row window (s)", "", None),
    Target("estimation_s_regression_3000", "estimated quality (DLE, 30 features), 3000-row window (s)", "", None),
    Target("estimation_s_regression_100000", "estimated quality (DLE, 30 features), 100k-row window (s)", "", None),
    Target("estimation_vs_drift_ratio_classification_100000", "CBPE time / compute_drift time, 100k x30 window", "",
           None),
    Target("metrics_ms_300_features", "/metrics render, 300 features (ms)", "<=", 10, "{:.2f}"),
    Target("metrics_ms_ratio_100k_vs_3k", "/metrics render, 100k-row vs 3k-row window", "<=", 1.5),
    Target("log_enqueue_us_per_row", "request-path CPU of logging one row (PredictionLog.enqueue, us)", "", None,
           "{:.1f}"),
    Target("log_writer_cpu_us_per_row", "writer thread CPU per row written to SQLite (us)", "", None, "{:.1f}"),
    Target("rss_mb_after_100k_rows", "RSS after 100k logged predictions (MiB)", "", None, "{:.1f}"),
    Target("rss_mb_after_1m_rows", "RSS after 1M logged predictions (MiB)", "", None, "{:.1f}"),
    Target("rss_ratio_1m_vs_100k", "RSS after 1M / after 100k rows (does not grow)", "<=", 1.10),
    Target("store_window_3000_ms_1m_rows", "drift job window query (3000 rows) on a 1M-row table (ms)", "", None,
           "{:.1f}"),
    # log_intake: monitor-only intake (predictions made elsewhere), SQLite
    Target("log_batch_rows_per_s_100", "/log/batch rows/s, batches of 100 (monitor-only, SQLite)", "", None,
           "{:.0f}"),
    Target("log_batch_rows_per_s_1000", "/log/batch rows/s, batches of 1000 (monitor-only, SQLite)", "", None,
           "{:.0f}"),
    Target("log_batch_rows_written_share", "/log/batch rows in the table / rows accepted", "", None, "{:.4f}"),
    Target("log_cloudevents_events_per_s", "/log/cloudevents events/s, KServe V1 pairs of 5 instances", "", None,
           "{:.0f}"),
    Target("log_cloudevents_rows_written_share", "/log/cloudevents rows in the table / rows paired", "", None,
           "{:.4f}"),
    Target("log_predict_p99_ratio_under_logging", "/predict p99, a sender on /log/batch at full rate / none", "",
           None),
    Target("log_predict_throughput_ratio_under_logging", "/predict throughput, sender on /log/batch / none", "",
           None),
    Target("log_predict_p99_ratio_under_paced_logging", "/predict p99, a sender at 1000 rows/s on /log/batch / none",
           "", None),
    # scaleout: retention on a 1M-row table (SQLite; PostgreSQL when reachable), --workers 2 vs 1
    Target("prune_seconds_sqlite", "retention: seconds in prune ticks to delete 500k of 1M rows, SQLite", "", None,
           "{:.1f}"),
    Target("prune_rows_per_s_sqlite", "retention: rows deleted per second, SQLite", "", None, "{:.0f}"),
    Target("prune_ticks_sqlite", "retention: job ticks (5 s budget each) to work off the backlog, SQLite", "", None,
           "{:.0f}"),
    Target("prune_batch_ms_max_sqlite", "retention: longest 5000-row batch (write lock held, ms), SQLite", "", None,
           "{:.0f}"),
    Target("window_3000_ms_before_prune_sqlite", "window query, 3000 rows, 1M-row table (ms), SQLite", "", None,
           "{:.1f}"),
    Target("window_3000_ms_after_prune_sqlite", "window query, 3000 rows, after prune (ms), SQLite", "", None,
           "{:.1f}"),
    Target("window_100k_ms_before_prune_sqlite", "window query, 100k rows, 1M-row table (ms), SQLite", "", None,
           "{:.0f}"),
    Target("window_100k_ms_after_prune_sqlite", "window query, 100k rows, after prune (ms), SQLite", "", None,
           "{:.0f}"),
    Target("prune_sqlite_p99_ratio", "/predict p99, prune running in another process / idle, SQLite", "<=", 1.5),
    Target("prune_sqlite_throughput_ratio", "/predict throughput, prune running / idle, SQLite", "", None),
    Target("prune_sqlite_prune_max_ms", "/predict max latency while pruning (ms), SQLite", "", None, "{:.0f}"),
    Target("prune_sqlite_prune_insert_ms_max", "longest prediction-log INSERT while pruning (ms), SQLite", "", None,
           "{:.0f}"),
    Target("prune_seconds_postgres", "retention: seconds in prune ticks, 500k of 1M rows, PostgreSQL", "", None,
           "{:.1f}"),
    Target("prune_rows_per_s_postgres", "retention: rows deleted per second, PostgreSQL", "", None, "{:.0f}"),
    Target("window_3000_ms_before_prune_postgres", "window query, 3000 rows, 1M-row table (ms), PostgreSQL", "",
           None, "{:.1f}"),
    Target("window_100k_ms_before_prune_postgres", "window query, 100k rows, 1M-row table (ms), PostgreSQL", "",
           None, "{:.0f}"),
    Target("prune_postgres_p99_ratio", "/predict p99, prune running / idle, PostgreSQL", "", None),
    Target("prune_postgres_throughput_ratio", "/predict throughput, prune running / idle, PostgreSQL", "", None),
    Target("prune_postgres_prune_insert_ms_max", "longest prediction-log INSERT while pruning (ms), PostgreSQL", "",
           None, "{:.0f}"),
    Target("workers2_throughput_ratio", "/predict throughput, exporter serve --workers 2 / --workers 1", "", None),
    Target("workers2_p99_ratio", "/predict p99, --workers 2 / --workers 1", "", None),
]


def bench_memory(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    rows, checkpoints = (100_000, "10000,100000") if quick else (1_000_000, "100000,1000000")
    with tempfile.TemporaryDirectory(prefix="bench-memory-out-") as tmp:
        out = Path(tmp) / "memory.json"
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--rows", str(rows), "--checkpoints", checkpoints,
             "--out", str(out)],
            cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=900,
        )
        for line in proc.stderr.splitlines():
            if line.startswith("memory:"):
                log(line)
        if proc.returncode != 0:
            raise RuntimeError(f"memory benchmark failed: {proc.stderr[-3000:]}")
        data = json.loads(out.read_text())
    small, large = (int(c) for c in checkpoints.split(","))
    rss = data["rss_mb_by_rows"]
    return {
        "memory_details": data,
        "rss_mb_after_100k_rows": rss[str(small)],
        "rss_mb_after_1m_rows": rss[str(large)],
        "rss_ratio_1m_vs_100k": rss[str(large)] / rss[str(small)],
        "store_window_3000_ms_1m_rows": data["window_3000_ms"],
        "log_rows_per_second": data["rows_per_second"],
        "log_rows_dropped": data["dropped"],
        "log_enqueue_us_per_row": data["enqueue_us_per_row"],
        "log_writer_cpu_us_per_row": data["writer_cpu_us_per_row"],
    }


def run_section(name: str, quick: bool, log: Callable[[str], None], concurrency: int) -> dict[str, Any]:
    if name == "logging":
        from benchmarks.http_bench import bench_logging

        return bench_logging(quick, log, concurrency)
    if name == "batching":
        from benchmarks.http_bench import bench_batching

        return bench_batching(quick, log)
    if name == "drift_latency":
        from benchmarks.http_bench import bench_drift_latency

        return bench_drift_latency(quick, log, concurrency)
    if name == "drift":
        from benchmarks.drift_bench import run

        return run(quick, log)
    if name == "estimation":
        from benchmarks.estimation_bench import run as run_estimation

        return run_estimation(quick, log)
    if name == "metrics":
        from benchmarks.metrics_bench import run as run_metrics

        return run_metrics(quick, log)
    if name == "memory":
        return bench_memory(quick, log)
    if name == "log_intake":
        from benchmarks.log_bench import run as run_log_intake

        return run_log_intake(quick, log, concurrency)
    if name == "scaleout":
        from benchmarks.scaleout import run as run_scaleout

        return run_scaleout(quick, log, concurrency)
    raise ValueError(name)


def print_table(results: dict[str, Any], quick: bool, hide_missing: bool = False) -> tuple[int, int]:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Benchmarks" + (" (--quick: smaller sizes, not comparable to the targets)" if quick else ""))
    for col in ("metric", "key", "measured", "target", "result"):
        table.add_column(col, justify="right" if col == "measured" else "left")
    met = total = 0
    for t in TARGETS:
        value = results.get(t.key)
        if value is None and hide_missing:
            continue
        ok = t.check(value)
        measured = "-" if value is None else t.fmt.format(value)
        target = f"{t.op} {t.bound:g}" if t.op else "(report)"
        if ok is not None:
            total += 1
            met += ok
        missing = "[yellow]missing" if value is None else ""
        verdict = "[green]pass" if ok else ("[red]FAIL" if ok is False else missing)
        table.add_row(t.label, t.key, measured, target, verdict)
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    console.print(table)
    return met, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run at smaller sizes (about a minute)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--concurrency", type=int, default=8, help="connections of the load generator")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results.json, "
                                                 "benchmarks/results.quick.json with --quick)")
    args = parser.parse_args(argv)
    out_path = args.out or (BENCH_DIR / ("results.quick.json" if args.quick else "results.json"))

    import warnings

    import pandas as pd

    # normalise() inserts columns one by one: pandas warns at hundreds of columns (a finding, see README)
    warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    busy = busy_processes()
    if busy:
        log(f"warning: other processes are using the CPU ({', '.join(busy[:5])}); numbers will be noisier")
    results: dict[str, Any] = {"machine": machine_info(), "quick": args.quick, "errors": {}, "section_seconds": {}}
    for name in args.only or SECTIONS:
        log(f"section {name} ...")
        t0 = time.perf_counter()
        try:
            results.update(run_section(name, args.quick, log, args.concurrency))
        except Exception as exc:
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        results["section_seconds"][name] = round(time.perf_counter() - t0, 1)
        log(f"section {name} done in {results['section_seconds'][name]:.0f}s")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["loadavg_at_end"] = loadavg()
    met, total = print_table(results, args.quick, hide_missing=bool(args.only))
    results["targets_met"] = met
    results["targets_checked"] = total
    if out_path.exists() and not args.only:  # make bench-peers' keys (benchmarks/peers/serving.py) are kept
        with contextlib.suppress(ValueError):
            kept = json.loads(out_path.read_text())
            results.update({k: v for k, v in kept.items() if k.startswith("peer_")})
    write_json(out_path, results)
    shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
    log(f"{met} of {total} targets met; wrote {shown}")
    if results["errors"]:
        log(f"sections failed: {', '.join(results['errors'])}")
        return 1
    return 0
