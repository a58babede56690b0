"""Shared pieces of the benchmark suite: synthetic data, demo config folders, machine info, small statistics.

Nothing here imports the service at module level, so the load generator (which imports only this module's
helpers it needs) stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# The helpers the tests and the benchmarks share live in tests/helpers.py.
from tests.helpers import deep_update

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent


# -- small helpers -------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))  # ceil(q/100 * n)
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]  # drop NaN
    return statistics.median(data) if data else float("nan")


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[list[float], Any]:
    """Wall times (s) of ``repeat`` calls and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using noticeable CPU right now (a hint that numbers may be noisy)."""
    try:
        import subprocess

        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True, timeout=5
        ).stdout
    except Exception:
        return []
    me = {os.getpid(), os.getppid()}
    busy = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[0]) not in me and float(parts[1]) >= min_cpu:
            busy.append(f"{parts[2]}({parts[1]}%)")
    return busy


def machine_info() -> dict[str, Any]:
    import evidently
    import numpy
    import pandas
    import scipy

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "evidently": evidently.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "loadavg_at_start": loadavg(),
        "git": git_state(),
    }


def git_state() -> dict[str, Any]:
    """Commit and uncommitted changes of the tree being measured (numbers belong to a version of the code)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
            return out.rstrip("\n")
        except Exception:
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "modified": [line[3:]
                     for line in git("status", "--porcelain", "--", "exporter", "pyproject.toml").splitlines()],
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


# -- synthetic drift data ------------------------------------------------------------------------------------------
def feature_names(n_num: int, n_cat: int) -> tuple[list[str], list[str]]:
    return [f"num_{i:04d}" for i in range(n_num)], [f"cat_{j:04d}" for j in range(n_cat)]


def drift_frame(rows: int, n_num: int, n_cat: int, seed: int, drifted: bool = False) -> Any:
    """A mixed frame: numerical columns of several shapes (a few with few distinct values, which Evidently tests
    like categories, a few with missing values) and categorical columns of 3-12 categories.

    ``drifted``: about a third of the columns move (mean shift, scale change, category mix change, a category
    never seen in the reference), the rest keep the reference distribution, so the drift flags are mixed.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    num, cat = feature_names(n_num, n_cat)
    data: dict[str, Any] = {}
    for i, name in enumerate(num):
        moves = drifted and i % 3 == 0
        kind = i % 5
        if kind == 0:
            col = rng.normal(0.5 if moves else 0.0, 1.0, rows)
        elif kind == 1:
            col = rng.lognormal(0.0, 0.8 if moves else 0.5, rows)
        elif kind == 2:
            col = rng.uniform(0.0, 1.3 if moves else 1.0, rows)
        elif kind == 3:
            col = rng.integers(0, 3 if moves else 4, rows).astype(float)  # <= 5 distinct values
        else:
            col = np.round(rng.gamma(2.0, 3.0 if not moves else 4.0, rows), 1)
        if i % 7 == 5:
            col[rng.random(rows) < 0.03] = np.nan
        data[name] = col
    for j, name in enumerate(cat):
        moves = drifted and j % 3 == 1
        k = 3 + j % 10
        weights = 1.0 / np.arange(1, k + 1)
        if moves:
            weights = weights[::-1].copy()
        values = np.array([f"c{x}" for x in range(k)], dtype=object)
        col = rng.choice(values, rows, p=weights / weights.sum())
        if drifted and j % 5 == 2:
            col[rng.random(rows) < 0.01] = "unseen"
        data[name] = col
    return pd.DataFrame(data)


def drift_reference(rows: int, cols: int) -> Any:
    """The Reference of the latency-under-drift benchmark (a third of the columns categorical)."""
    from exporter.drift import Reference

    n_cat = cols // 3
    num, cat = feature_names(cols - n_cat, n_cat)
    return Reference(drift_frame(rows, cols - n_cat, n_cat, seed=1), num, cat)


@contextlib.contextmanager
def open_store(url: str, schema: bool = False) -> Iterator[Any]:
    """A ``PredictionStore`` on its own ``Database`` of ``url`` (the tables created first with ``schema``); both
    disposed afterwards (the store's own SQLite autocommit engine, then the Database's engine)."""
    from exporter.db import Database
    from exporter.store import PredictionStore

    db = Database(url)
    store = PredictionStore(db)
    try:
        if schema:
            db.ensure_schema()
        yield store
    finally:
        store.dispose()
        db.dispose()


def fill_drift_window(url: str, rows: int, cols: int) -> None:
    """A predictions table holding ``rows`` logged predictions of the drifted window matching drift_reference()."""
    import math
    import uuid

    from exporter.store import PredictionRow

    n_cat = cols // 3
    frame = drift_frame(rows, cols - n_cat, n_cat, seed=2, drifted=True)
    now = time.time()
    records = frame.to_dict("records")
    with open_store(url, schema=True) as store:
        for start in range(0, rows, 10_000):
            store.insert([
                PredictionRow(
                    uuid.uuid4().hex, now, "1",
                    {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}, "a",
                    None,
                ).as_db()
                for record in records[start:start + 10_000]
            ])


# -- demo config folder --------------------------------------------------------------------------------------------
def demo_config(dest: Path, **changes: Any) -> Path:
    """The bundled demo (model, reference, config.yaml) written into ``dest``, with ``changes`` merged into the
    config; returns the config path."""
    import yaml

    from exporter.demo import write_demo

    config = write_demo(dest)
    data = yaml.safe_load(config.read_text())
    deep_update(data, changes)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def demo_records(n: int = 333, seed: int = 0) -> list[dict[str, Any]]:
    from exporter.demo import Traffic

    records, _ = Traffic("none", seed=seed).records(n)
    return records
