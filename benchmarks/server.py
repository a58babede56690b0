"""The service under test, one process per variant: ``python -m benchmarks.server --config C --port P --variant V``.

The app is built exactly as ``exporter serve`` builds it (``exporter.app.create_app(settings)``, uvicorn with its
default loop and HTTP implementation), with the drift scheduler off (its first runs would land in the middle of a
measurement) and the access log off (printing every request costs more than what is measured). Variants differ
only in what happens to the logged rows:

``on``    the project's prediction log: ``PredictionLog.enqueue`` (bounded queue, batching writer thread).
``toggle`` ``on`` that SIGUSR1 switches off (``app.state.prediction_log.enqueue`` replaced by a no-op: nothing is
          logged, nothing else changes) and SIGUSR2 back on, so the two are measured in the same process (two
          processes of the same code can differ by several per cent in speed); the rows it was given to log while
          on are counted and written to ``--status-file`` once the app's lifespan has shut down (it stops the log,
          which drains its queue; ``AfterShutdown``).
``seed``  the seed's way: a FastAPI ``BackgroundTasks``-style task after each response, one SQLite INSERT and one
          commit per request (``PredictionStore.insert`` of that request's row, on the prediction log's store),
          run in the threadpool after the response is sent, exactly as Starlette runs a sync background task.

``toggle`` and ``seed`` (and ``--insert-log``) replace a method on an object of the built app
(``prediction_log.enqueue``, ``store.insert``), which the project otherwise forbids (inject instead): these are
measurement devices, and ``create_app`` has no injection point for the prediction log or its store, while
building the app by hand would no longer measure the app as ``exporter serve`` builds it.

Every variant gets the same pass-through ASGI middleware (it only does work in ``seed``), so the request path is
otherwise identical.

``--drift-rows/--drift-cols/--drift-db/--drift-isolation``: also set up the drift job over a window of that size
(read from the given database) with the runner the app uses for that isolation (``exporter.runners``); SIGUSR1
starts a background thread (as APScheduler's would) that runs the job back to back, SIGUSR2 stops it after the
current run. Its runs and durations go to ``--status-file`` as JSON.

``--insert-log FILE``: the prediction writer's batched INSERTs are timed; one line per INSERT is appended to FILE
(wall-clock start, seconds, rows), so a benchmark can see how long an insert waited for another writer's lock.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

_rows: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("bench_rows", default=None)


class PerRequestInsert:
    """Pure ASGI middleware: after the response is sent, insert the rows the request queued, one INSERT + commit
    each, in the threadpool (what ``BackgroundTasks.add_task(sync_insert, row)`` does)."""

    def __init__(self, app: Any, insert: Any | None) -> None:
        self.app = app
        self.insert = insert

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rows: list[Any] = []
        token = _rows.set(rows)
        try:
            await self.app(scope, receive, send)
        finally:
            _rows.reset(token)
        if self.insert is not None:
            from starlette.concurrency import run_in_threadpool

            for row in rows:
                await run_in_threadpool(self.insert, [row.as_db()])


class AfterShutdown:
    """Pure ASGI wrapper: calls ``callback`` once the app's lifespan has shut down (its prediction log stopped and
    drained), before uvicorn hears of it. Code after ``uvicorn.run`` would not run: uvicorn re-raises the SIGTERM
    it shut down on."""

    def __init__(self, app: Any, callback: Any) -> None:
        self.app = app
        self.callback = callback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_after(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.callback()
            await send(message)

        await self.app(scope, receive, send_after)


class DriftLoop:
    """The drift job, back to back, while switched on: from a background thread (as APScheduler's), each run is
    ``runner.run(timeout)`` with the runner the service would use for ``drift.isolation`` (``WorkerRunner``: a
    worker process; ``InProcessRunner``: this thread). A run reads the window from the database (``--drift-db``,
    filled by the suite), computes drift over it against a Reference of the same shape; no HTML report."""

    def __init__(self, rows: int, cols: int, db_url: str, isolation: str, status_file: Path | None) -> None:
        from benchmarks.common import drift_reference
        from exporter.run import JobSpec
        from exporter.runners import InProcessRunner, WorkerRunner

        spec = JobSpec(
            reference=drift_reference(rows, cols), database_url=db_url, window_size=rows, window_seconds=None,
            min_rows=100, drift_share=0.5, report=False, task="classification", classes=[], with_quality=False,
        )
        self.runner = WorkerRunner(spec) if isolation == "process" else InProcessRunner(spec)
        first = self.runner.run(600)  # starts the worker process, as the service's first run does
        if first.drift.window_rows != rows or first.drift.skipped_reason:
            raise RuntimeError(f"drift job over {first.drift.window_rows} rows: {first.drift.skipped_reason}")
        self.status_file = status_file
        self.enabled = threading.Event()
        self.durations: list[float] = []
        self.running = False
        self._thread = threading.Thread(target=self._run, name="bench-drift", daemon=True)
        self._thread.start()
        self._write_status()

    def _write_status(self) -> None:
        if self.status_file is not None:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"runs": len(self.durations), "durations": self.durations,
                                       "running": self.running, "enabled": self.enabled.is_set()}))
            tmp.replace(self.status_file)

    def _run(self) -> None:
        while True:
            self.enabled.wait()
            self.running = True
            self._write_status()
            while self.enabled.is_set():
                output = self.runner.run(600)
                self.durations.append(output.compute_seconds)  # window read + drift, as the job reports it
                self._write_status()
            self.running = False
            self._write_status()

    def start(self, *_: Any) -> None:
        self.enabled.set()

    def stop(self, *_: Any) -> None:
        self.enabled.clear()
        self._write_status()


class LoggingToggle:
    """Logging on (``PredictionLog.enqueue``) or off (nothing is logged), switched from a signal handler; counts the
    rows handed to the prediction log while on; ``write_status`` writes the count to ``status_file`` (called by
    ``AfterShutdown`` once the app's lifespan has stopped the log, which drains its queue)."""

    def __init__(self, prediction_log: Any, status_file: Path | None) -> None:
        self.prediction_log = prediction_log
        self.real_enqueue = prediction_log.enqueue
        self.status_file = status_file
        self.rows = 0
        self.on()

    def write_status(self) -> None:
        if self.status_file is not None:
            self.status_file.write_text(json.dumps({"rows_enqueued": self.rows}))

    def _enqueue(self, rows: list[Any]) -> int:
        self.rows += len(rows)
        return int(self.real_enqueue(rows))

    # A measurement device, not a pattern: the app's prediction log has its enqueue swapped (see the module's
    # docstring); PredictionService calls ``prediction_log.enqueue`` on each answer, so the swap is all it takes.
    def on(self, *_: Any) -> None:
        self.prediction_log.enqueue = self._enqueue

    def off(self, *_: Any) -> None:
        self.prediction_log.enqueue = lambda rows: 0


def _time_inserts(store: Any, path: Path) -> None:
    """Wrap ``store.insert`` (what the prediction writer calls per batch) to log its start and duration."""
    import time

    real_insert = store.insert
    log_file = path.open("a", buffering=1)

    def insert(rows: list[Any]) -> None:
        started, t0 = time.time(), time.perf_counter()
        try:
            real_insert(rows)
        finally:
            log_file.write(f"{started:.6f} {time.perf_counter() - t0:.6f} {len(rows)}\n")

    store.insert = insert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", choices=["on", "toggle", "seed"], default="on")
    parser.add_argument("--drift-rows", type=int, default=0)
    parser.add_argument("--drift-cols", type=int, default=30)
    parser.add_argument("--drift-db", help="SQLAlchemy URL of a predictions table holding the drift window")
    parser.add_argument("--drift-isolation", choices=["process", "thread"], default="process")
    parser.add_argument("--status-file", type=Path)
    parser.add_argument("--insert-log", type=Path,
                        help="append one line per prediction-log INSERT: start, seconds, rows")
    args = parser.parse_args(argv)
    if args.variant == "toggle" and args.drift_rows:
        parser.error("--variant toggle and --drift-rows both use SIGUSR1 and SIGUSR2")

    import uvicorn

    from exporter.app import create_app
    from exporter.config import load_settings

    logging.basicConfig(level=logging.WARNING)
    import warnings

    import pandas as pd

    warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
    app = create_app(load_settings(args.config), start_scheduler=False)
    prediction_log = app.state.prediction_log
    insert = None
    toggle = None
    if args.variant == "seed":
        def enqueue(rows: list[Any]) -> int:
            pending = _rows.get()
            if pending is not None:
                pending.extend(rows)
            return 0

        # A measurement device (see the module's docstring): the rows go to the per-request INSERT instead.
        prediction_log.enqueue = enqueue
        insert = prediction_log.store.insert
    elif args.variant == "toggle":
        toggle = LoggingToggle(prediction_log, args.status_file)
        signal.signal(signal.SIGUSR1, toggle.off)
        signal.signal(signal.SIGUSR2, toggle.on)
    app.add_middleware(PerRequestInsert, insert=insert)
    if args.insert_log is not None:
        _time_inserts(prediction_log.store, args.insert_log)

    if args.drift_rows:
        loop = DriftLoop(args.drift_rows, args.drift_cols, args.drift_db, args.drift_isolation, args.status_file)
        signal.signal(signal.SIGUSR1, loop.start)
        signal.signal(signal.SIGUSR2, loop.stop)

    served = app if toggle is None else AfterShutdown(app, toggle.write_status)
    uvicorn.run(served, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
