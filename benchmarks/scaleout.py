"""Scale-out section: retention on a large predictions table, and ``exporter serve --workers 2`` against 1.

Retention (SQLite, and PostgreSQL when reachable): a predictions table of ``rows`` rows (1M; 100k with --quick) is
filled in bulk through the product's table definition (``exporter.db.predictions_table``, SQLAlchemy
executemany; no HTTP), the older half 40 days old. Then, in this order:

- the drift job's window query (``PredictionStore.window(size, model_version=...)``, as ``exporter.run`` calls it)
  for 3000 and 100000 rows, on the full table;
- the backlog is worked off by ``exporter.retention.prune`` with the default retention config (30 days, 5M rows),
  called tick after tick as the job leader calls it once per drift interval (5000-row batches, 5 s budget per
  tick): ticks, seconds spent in ticks, rows/s, the longest batch transaction (what an insert may wait for);
- the window query again, on the pruned table;
- ``/predict`` under load (benchmarks.loadgen) against a real server (benchmarks.server) on that database, in
  rounds alternating ``idle`` and ``prune``: during a ``prune`` run another process (``python -m
  benchmarks.scaleout prune ...``, as another worker or replica holding the job lock would) runs prune ticks back
  to back on the same database with a backlog of half the table (``max_rows`` = rows / 2; the table is topped up
  to ``rows`` before every run, outside the measurement). The server's prediction writer records how long each of
  its batched INSERTs took (``--insert-log``): the longest is what the prune made an insert wait.

Workers: two ``exporter serve`` processes (the real CLI, its console script; ``--workers 2`` uses its multiprocess
set-up), one with ``--workers 1`` and one with ``--workers 2``, each on its own SQLite file, the drift job's
interval set to an hour (only its start-up run happens, before the measurement); the same load in alternating
rounds.

``python -m benchmarks.scaleout prune --db URL --max-rows N --seconds S``: the pruning process (prints one line
``started`` when it begins its first tick, and one JSON object when it stops).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, demo_config, demo_records, median, open_store
from benchmarks.http_bench import Server, _bodies, loadgen, servers

MODEL_VERSION = "1"  # the demo config's model.version: the window query filters on it as the job does
OLD_DAYS = 40.0      # the older half of the filled table: past the default max_age_days (30)
LOADGEN_START_S = 0.3  # from launching benchmarks.loadgen to its first request, about
WINDOW_SIZES = {"3000": 3000, "100k": 100_000}  # key suffix: rows (--quick: 3000 and 20k)


# -- filling ---------------------------------------------------------------------------------------------------------
def _row_pool() -> list[tuple[str, str, str]]:
    """(features, prediction, probabilities) JSON texts of demo records, as the prediction log stores them."""
    records = demo_records(333)
    species = ["Adelie", "Chinstrap", "Gentoo"]
    pool = []
    for i, record in enumerate(records):
        probas = {s: round(0.8 if j == i % 3 else 0.1, 4) for j, s in enumerate(species)}
        pool.append((json.dumps(record, separators=(",", ":")), json.dumps(species[i % 3]),
                     json.dumps(probas, separators=(",", ":"))))
    return pool


def fill(url: str, rows: int, old_rows: int, now: float, chunk: int = 50_000) -> float:
    """Append ``rows`` predictions (the first ``old_rows`` of them OLD_DAYS old, the rest within the last day, ids
    in time order) to the table ``Database.ensure_schema`` makes: SQLAlchemy executemany of
    ``predictions_table.insert()`` on SQLite, COPY into its columns on PostgreSQL (executemany runs at ~15k
    rows/s there); returns the seconds it took."""
    from sqlalchemy import text

    from exporter.db import Database, predictions_table

    pool = _row_pool()
    db = Database(url)
    db.ensure_schema()
    copy = db.engine.dialect.name == "postgresql"
    columns = ["request_id", "created_at", "model_version", "features", "prediction", "probabilities"]
    started = time.perf_counter()
    old_start, new_start = now - OLD_DAYS * 86400, now - 86400
    old_step = 86400 / max(1, old_rows)
    new_step = 86400 / max(1, rows - old_rows)
    for first in range(0, rows, chunk):
        batch = []
        for i in range(first, min(rows, first + chunk)):
            features, prediction, probabilities = pool[i % len(pool)]
            created = old_start + i * old_step if i < old_rows else new_start + (i - old_rows) * new_step
            batch.append({"request_id": uuid.uuid4().hex, "created_at": created, "model_version": MODEL_VERSION,
                          "features": features, "prediction": prediction, "probabilities": probabilities})
        if copy:
            raw = db.engine.raw_connection()
            try:
                with raw.cursor() as cur, cur.copy(  # type: ignore[attr-defined]
                    f"COPY {predictions_table.name} ({', '.join(columns)}) FROM STDIN"
                ) as pipe:
                    for row in batch:
                        pipe.write_row([row[c] for c in columns])
                raw.commit()
            finally:
                raw.close()
        else:
            with db.engine.begin() as conn:
                conn.execute(predictions_table.insert(), batch)
    seconds = time.perf_counter() - started
    if copy:
        # Statistics, as autovacuum's analyze would have gathered them for a table that grew this big: without
        # them the planner takes the window query's model_version filter for a few rows and sorts the whole table
        # (measured: 350-700 ms for 3000 rows instead of 2 ms).
        with db.engine.begin() as conn:
            conn.execute(text(f"ANALYZE {predictions_table.name}"))
    db.dispose()
    return seconds


def top_up(url: str, rows: int) -> int:
    """Append recent rows until the table holds ``rows``; how many were added."""
    with open_store(url) as store:
        missing = rows - store.count()
    if missing > 0:
        fill(url, missing, 0, time.time())
    return max(0, missing)


# -- retention -------------------------------------------------------------------------------------------------------
class TimedEngine:
    """What ``prune`` uses of an Engine, timed: ``connect`` (its limit queries) and ``begin`` (one batch's DELETE
    and commit: the time the batch holds SQLite's write lock, what a concurrent insert may have to wait)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.limit_s: list[float] = []
        self.batch_s: list[float] = []

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        start = time.perf_counter()
        with self.engine.connect() as conn:
            yield conn
        self.limit_s.append(time.perf_counter() - start)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Any]:
        start = time.perf_counter()
        with self.engine.begin() as conn:
            yield conn
        self.batch_s.append(time.perf_counter() - start)


def prune_backlog(url: str, now: float, max_ticks: int = 1000) -> dict[str, Any]:
    """Ticks of the job's ``prune`` call (the default retention config) until one deletes nothing."""
    from exporter.config import RetentionSection
    from exporter.retention import prune

    retention = RetentionSection()
    with open_store(url) as store:
        before = store.count()
        timed = TimedEngine(store.engine)
        ticks: list[tuple[float, int]] = []
        for _ in range(max_ticks):
            start = time.perf_counter()
            deleted = prune(timed, retention.max_age_days, retention.max_rows, now=now)  # type: ignore[arg-type]
            if not deleted:
                break
            ticks.append((time.perf_counter() - start, deleted))
        after = store.count()
    seconds = sum(t for t, _ in ticks)
    deleted_total = sum(d for _, d in ticks)
    return {
        "rows_before": before, "rows_after": after, "deleted": deleted_total, "ticks": len(ticks),
        "seconds": seconds, "rows_per_s": deleted_total / seconds if seconds else float("nan"),
        "tick_s": [round(t, 3) for t, _ in ticks],
        "batches": len(timed.batch_s),
        "batch_ms_median": median(timed.batch_s) * 1000, "batch_ms_max": max(timed.batch_s, default=0.0) * 1000,
        "limit_queries_ms_median": median(timed.limit_s) * 1000,
        "limit_queries_ms_max": max(timed.limit_s, default=0.0) * 1000,
    }


def window_ms(url: str, sizes: dict[str, int], repeat: int) -> dict[str, float]:
    """Median ms of the drift job's window query for each of ``sizes``."""
    out = {}
    with open_store(url) as store:
        for key, size in sizes.items():
            store.window(size, None, model_version=MODEL_VERSION)  # warm the cache, as the periodic job finds it
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                frame = store.window(size, None, model_version=MODEL_VERSION)
                times.append(time.perf_counter() - start)
                assert len(frame) == size, (len(frame), size)
            out[key] = median(times) * 1000
    return out


# -- the pruning process ---------------------------------------------------------------------------------------------
def prune_process(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout prune")
    parser.add_argument("--db", required=True)
    parser.add_argument("--max-rows", type=int, required=True)
    parser.add_argument("--max-age-days", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, required=True, help="start no tick after this many seconds")
    args = parser.parse_args(argv)

    from exporter.db import make_engine
    from exporter.retention import prune

    engine = make_engine(args.db)
    timed = TimedEngine(engine)
    ticks: list[tuple[float, float, int]] = []  # wall start, wall end, rows
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())  # wall-clock time of the first tick: when the load's measurement starts
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + args.seconds
    exhausted = False
    while time.monotonic() < deadline:
        start = time.time()
        deleted = prune(timed, args.max_age_days, args.max_rows)  # type: ignore[arg-type]
        ticks.append((start, time.time(), deleted))
        if not deleted:
            exhausted = True
            break
    engine.dispose()
    json.dump({"ticks": ticks, "exhausted": exhausted, "batches": len(timed.batch_s),
               "batch_ms_max": max(timed.batch_s, default=0.0) * 1000,
               "batch_ms_median": median(timed.batch_s) * 1000}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _insert_times(path: Path, start: float, end: float) -> list[float]:
    """Durations (s) of the server writer's INSERTs that began within [start, end] (benchmarks.server --insert-log)."""
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and start <= float(parts[0]) <= end:
                out.append(float(parts[1]))
    return out


def prune_under_load(url: str, rows: int, tmp: Path, label: str, rounds: int, warmup: float, duration: float,
                     concurrency: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``/predict`` against a server on ``url``, alternately idle and with a prune process working on the same
    table; keys prefixed ``prune_<label>_``."""
    bodies = _bodies(tmp)
    insert_log = tmp / f"inserts-{label}.log"
    config = demo_config(tmp / f"server-{label}", database_url=url, drift={"report": False})
    server = Server(config, "on", ["--insert-log", str(insert_log)])
    runs: dict[str, list[dict[str, Any]]] = {"idle": [], "prune": []}
    with servers(server):
        loadgen(server, bodies, concurrency, 0.0, 0.5)
        for r in range(rounds):
            for mode in (["idle", "prune"] if r % 2 == 0 else ["prune", "idle"]):
                added = top_up(url, rows)
                pruner = None
                if mode == "prune":
                    pruner = subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.scaleout", "prune", "--db", url, "--max-rows",
                         str(rows // 2), "--seconds", str(duration)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                    )
                    assert pruner.stdin is not None and pruner.stdout is not None
                    if pruner.stdout.readline().strip() != "ready":
                        raise RuntimeError("prune process did not start")
                    # its first tick as the load generator (about 0.3 s to start) ends its warm-up
                    pruner.stdin.write(f"{time.time() + LOADGEN_START_S + warmup}\n")
                    pruner.stdin.close()
                t0 = time.time()
                res = loadgen(server, bodies, concurrency, warmup, duration)
                t1 = time.time()
                measured_from = t1 - res["seconds"]
                inserts = _insert_times(insert_log, measured_from, t1)
                res["insert_ms_max"] = max(inserts, default=0.0) * 1000
                res["inserts"] = len(inserts)
                if pruner is not None:
                    pruner.wait(timeout=60)  # its last tick may run on up to its 5 s budget
                    assert pruner.stdout is not None
                    stdout = pruner.stdout.read()
                    pruner.stdout.close()
                    if pruner.returncode != 0:
                        raise RuntimeError(f"prune process failed ({pruner.returncode})")
                    report = json.loads(stdout)
                    busy = sum(max(0.0, min(e, t1) - max(s, measured_from)) for s, e, _ in report["ticks"])
                    res["prune_busy_share"] = busy / max(1e-9, t1 - measured_from)
                    res["pruned_rows"] = sum(d for _, _, d in report["ticks"])
                    res["prune_batch_ms_max"] = report["batch_ms_max"]
                    res["prune_batch_ms_median"] = report["batch_ms_median"]
                runs[mode].append(res)
                extra = (f", prune busy {res['prune_busy_share']:.0%} of the run, {res['pruned_rows']} rows, "
                         f"longest batch {res['prune_batch_ms_max']:.0f} ms" if mode == "prune" else "")
                log(f"scaleout prune-under-load ({label}) round {r + 1}/{rounds} {mode:>5}: "
                    f"{res['throughput']:.0f} req/s p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms "
                    f"max {res['max_ms']:.0f} ms, longest writer INSERT {res['insert_ms_max']:.0f} ms "
                    f"({res['inserts']}){extra} [topped up {added} rows; {t1 - t0:.1f}s]")
        time.sleep(1.0)  # the writer's last batch
        written = server.metrics()

    def paired(stat: str) -> float:
        return median(p[stat] / i[stat] for p, i in zip(runs["prune"], runs["idle"], strict=True))

    p = f"prune_{label}_"
    out: dict[str, Any] = {
        f"{p}p99_ratio": paired("p99_ms"),
        f"{p}p50_ratio": paired("p50_ms"),
        f"{p}throughput_ratio": paired("throughput"),
        f"{p}busy_share": median(r["prune_busy_share"] for r in runs["prune"]),
        f"{p}rows_deleted_per_run": median(r["pruned_rows"] for r in runs["prune"]),
        f"{p}batch_ms_max": max(r["prune_batch_ms_max"] for r in runs["prune"]),
        f"{p}rows_dropped": written.get("model_prediction_log_dropped_total", float("nan")),
    }
    for mode in ("idle", "prune"):
        for stat in ("p50_ms", "p99_ms", "throughput"):
            out[f"{p}{mode}_{stat}"] = median(r[stat] for r in runs[mode])
        out[f"{p}{mode}_max_ms"] = max(r["max_ms"] for r in runs[mode])
        out[f"{p}{mode}_insert_ms_max"] = max(r["insert_ms_max"] for r in runs[mode])
    return out


# -- backends ----------------------------------------------------------------------------------------------------------
POSTGRES_ENV = "EXPORTER_TEST_POSTGRES_URL"
POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def postgres_database(log: Callable[[str], None]) -> Iterator[str | None]:
    """A fresh database (created here, dropped afterwards) on the server of EXPORTER_TEST_POSTGRES_URL (or the
    machine's default); None when no server answers."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(os.environ.get(POSTGRES_ENV) or POSTGRES_DEFAULT)
    name = f"bench_scaleout_{os.getpid()}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        log(f"scaleout: PostgreSQL not reachable ({str(exc).splitlines()[0]}); SQLite only")
        admin.dispose()
        yield None
        return
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _copy_sqlite(src: Path, dest: Path) -> None:
    """A consistent copy of an SQLite database (WAL included), through SQLite's backup API."""
    with contextlib.closing(sqlite3.connect(src)) as s, contextlib.closing(sqlite3.connect(dest)) as d:
        s.backup(d)


def retention_section(label: str, url: str, rows: int, quick: bool, tmp: Path, rounds: int, warmup: float,
                      duration: float, concurrency: int, log: Callable[[str], None],
                      server_url: str | None) -> dict[str, Any]:
    """Fill, window before, prune the backlog, window after, then ``/predict`` idle vs during a prune on
    ``server_url`` (a copy of the filled table) or, when None, on ``url`` again topped up."""
    now = time.time()
    out: dict[str, Any] = {}
    fill_s = fill(url, rows, rows // 2, now)
    log(f"scaleout ({label}): filled {rows} rows in {fill_s:.1f}s ({rows / fill_s:.0f} rows/s)")
    out[f"fill_rows_per_s_{label}"] = rows / fill_s
    if server_url is not None:
        _copy_sqlite(Path(url.split("///", 1)[1]), Path(server_url.split("///", 1)[1]))
    repeat = 3
    sizes = {"3000": 3000, "100k": 20_000} if quick else WINDOW_SIZES
    before = window_ms(url, sizes, repeat)
    log(f"scaleout ({label}): window query on {rows} rows: "
        + ", ".join(f"{s}: {ms:.0f} ms" for s, ms in before.items()))
    pruned = prune_backlog(url, now)
    log(f"scaleout ({label}): prune deleted {pruned['deleted']} rows in {pruned['ticks']} ticks, "
        f"{pruned['seconds']:.1f}s in ticks ({pruned['rows_per_s']:.0f} rows/s), batches median "
        f"{pruned['batch_ms_median']:.0f} ms max {pruned['batch_ms_max']:.0f} ms, limit queries median "
        f"{pruned['limit_queries_ms_median']:.0f} ms")
    after = window_ms(url, sizes, repeat)
    log(f"scaleout ({label}): window query on {pruned['rows_after']} rows: "
        + ", ".join(f"{s}: {ms:.0f} ms" for s, ms in after.items()))
    out.update({
        f"prune_seconds_{label}": pruned["seconds"],
        f"prune_rows_per_s_{label}": pruned["rows_per_s"],
        f"prune_ticks_{label}": pruned["ticks"],
        f"prune_rows_deleted_{label}": pruned["deleted"],
        f"prune_batch_ms_max_{label}": pruned["batch_ms_max"],
        f"prune_batch_ms_median_{label}": pruned["batch_ms_median"],
        f"prune_limit_queries_ms_{label}": pruned["limit_queries_ms_median"],
        f"prune_details_{label}": pruned,
    })
    for key in sizes:
        out[f"window_{key}_ms_before_prune_{label}"] = before[key]
        out[f"window_{key}_ms_after_prune_{label}"] = after[key]
    target_url = server_url or url
    out.update(prune_under_load(target_url, rows, tmp, label, rounds, warmup, duration, concurrency, log))
    return out


# -- workers -----------------------------------------------------------------------------------------------------------
class CliServer(Server):
    """``exporter serve --workers N`` (the real CLI); CPU counted over the process tree."""

    def __init__(self, config: Path, workers: int) -> None:
        super().__init__(config, f"workers{workers}")
        self.workers = workers

    def start(self) -> CliServer:
        self._log = self.log_path.open("wb")
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the CLI makes (and removes) a fresh one
        script = Path(sys.executable).with_name("exporter")  # the console script pip installed
        command = [str(script)] if script.exists() else [
            sys.executable, "-c", "import sys; from exporter.cli import main; sys.exit(main())"]
        self.proc = subprocess.Popen(
            [*command, "serve", "--config", str(self.config), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
        return self

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        total = 0.0
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
        return total


def workers_section(tmp: Path, rounds: int, warmup: float, duration: float, concurrency: int,
                    log: Callable[[str], None]) -> dict[str, Any]:
    bodies = _bodies(tmp)
    srv = {}
    for n in (1, 2):
        folder = tmp / f"workers{n}"
        config = demo_config(folder, database_url=f"sqlite:///{folder / 'predictions.db'}",
                             drift={"report": False, "interval_seconds": 3600})
        srv[n] = CliServer(config, n)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with servers(*srv.values()):
        for n in (1, 2):  # first requests, and the drift job's start-up run, outside the measurement
            loadgen(srv[n], bodies, concurrency, 0.0, 2.0)
        time.sleep(2.0)
        for r in range(rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                res = loadgen(srv[n], bodies, concurrency, warmup, duration)
                runs[n].append(res)
                log(f"scaleout workers round {r + 1}/{rounds} --workers {n}: {res['throughput']:.0f} req/s "
                    f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, server CPU "
                    f"{res['server_cpu_ms_per_request']:.2f} ms/request")

    def paired(stat: str) -> float:
        return median(b[stat] / a[stat] for b, a in zip(runs[2], runs[1], strict=True))

    out: dict[str, Any] = {
        "workers2_throughput_ratio": paired("throughput"),
        "workers2_p99_ratio": paired("p99_ms"),
        "workers2_p50_ratio": paired("p50_ms"),
        "workers2_cpu_per_request_ratio": paired("server_cpu_ms_per_request"),
    }
    for n in (1, 2):
        for stat in ("p50_ms", "p99_ms", "throughput", "server_cpu_ms_per_request"):
            out[f"workers{n}_{stat}"] = median(r[stat] for r in runs[n])
    return out


# -- the section -------------------------------------------------------------------------------------------------------
def run(quick: bool, log: Callable[[str], None], concurrency: int = 8) -> dict[str, Any]:
    rows = 100_000 if quick else 1_000_000
    rounds, warmup, duration = (2, 0.5, 2.0) if quick else (4, 1.0, 6.0)
    out: dict[str, Any] = {"scaleout_rows": rows, "scaleout_rounds": rounds, "scaleout_seconds_per_run": duration,
                           "scaleout_concurrency": concurrency, "cpu_count": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    try:
        sqlite_url = f"sqlite:///{tmp / 'retention.db'}"
        out.update(retention_section("sqlite", sqlite_url, rows, quick, tmp, rounds, warmup, duration, concurrency,
                                     log, server_url=f"sqlite:///{tmp / 'server.db'}"))
        for name in tmp.glob("retention.db*"):  # a GB on disk at 1M rows: not needed any more
            name.unlink()
        with postgres_database(log) as pg_url:
            out["scaleout_postgres"] = pg_url is not None
            if pg_url is not None:
                out.update(retention_section("postgres", pg_url, rows, quick, tmp, rounds, warmup, duration,
                                             concurrency, log, server_url=None))
        out.update(workers_section(tmp, rounds, warmup, duration, concurrency, log))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prune"]:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        return prune_process(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
