"""Where a drift run happens: in the calling thread, or in a long-lived worker process.

The worker process keeps the reference and a database connection between runs. It has a core and a GIL of its
own, so a long computation does not slow the prediction API, and a run that overruns its timeout is abandoned by
killing the worker (a thread could not be stopped); the next run starts a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Protocol

from exporter.db import Database
from exporter.run import JobOutput, JobSpec, prepare, run_job
from exporter.stattests import evidently_stattests
from exporter.store import PredictionStore

log = logging.getLogger(__name__)


class JobError(Exception):
    """A run failed; the message says why."""


class JobTimeout(JobError):
    """A run took longer than its timeout and was abandoned."""


class Runner(Protocol):
    def run(self, timeout: float) -> JobOutput: ...

    def close(self) -> None: ...


class InProcessRunner:
    """Runs in the calling thread (the CLI's one-off `exporter drift`, or `drift.isolation: thread`).
    A thread cannot be stopped: a run that overruns its timeout finishes, then is counted as a timeout and its
    result discarded, as a killed worker's would be."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.db = Database(spec.database_url)
        self.store = PredictionStore(self.db)
        self._prepared = False

    def run(self, timeout: float) -> JobOutput:
        if threading.current_thread() is not threading.main_thread():
            lower_priority()  # the scheduler's thread, not a CLI's or a caller's main thread
        evidently_stattests()  # imported once, on the first run: not part of any run's time
        first = not self._prepared
        if first:
            prepare(self.spec)  # once, on the first run: not part of any run's time
            self._prepared = True
        started = time.monotonic()
        try:
            output = run_job(self.spec, self.store)
        except Exception as exc:
            raise JobError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if first and self.spec.reference_check is not None:
                # in the service's own process: in a thread of its own, rather than delaying the first run
                threading.Thread(target=self.spec.reference_check.run, name="exporter-reference-check",
                                 daemon=True).start()
        took = time.monotonic() - started
        if took > timeout:
            raise JobTimeout(f"run took {took:.2f}s, over the {timeout:g}s timeout; its result was discarded")
        return output

    def close(self) -> None:
        self.store.dispose()
        self.db.dispose()


def lower_priority() -> None:
    """The drift job is background work: let the prediction API win the CPU when both want it."""
    with contextlib.suppress(OSError, AttributeError):
        # On Linux this applies to the calling thread alone (its own scheduling entity).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _worker_main(conn: Connection, spec: JobSpec) -> None:
    lower_priority()
    if not logging.getLogger().handlers:  # a spawned process: log as the service does (exporter.cli)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = Database(spec.database_url)
    store = PredictionStore(db)
    evidently_stattests()  # Evidently's import takes seconds: before "ready", so no run's timeout pays it
    if spec.reference_check is not None:
        spec.reference_check.run()
    prepare(spec)  # the estimator is fitted once per worker, before "ready" too
    conn.send("ready")  # imports and the spec are loaded: the runner times runs from here
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the service is gone
            break
        if message != "run":
            break
        try:
            conn.send(("ok", run_job(spec, store)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    store.dispose()
    db.dispose()


class WorkerRunner:
    """Runs in a long-lived worker process, replaced when a run overruns its timeout or the process dies.

    Starting the worker (spawning it, importing pandas, scipy and Evidently, loading the reference) takes seconds;
    it is bounded by ``startup_timeout`` on its own, so a run's timeout covers the run alone."""

    startup_timeout = 120.0

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self._proc: Any = None
        self._conn: Connection | None = None
        self.restarts = 0

    def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            if self._proc is not None:
                self.restarts += 1
            parent, child = self._ctx.Pipe()
            self._proc = self._ctx.Process(
                target=_worker_main, args=(child, self.spec), name="exporter-drift-worker", daemon=True
            )
            self._proc.start()
            child.close()
            self._conn = parent
            self._wait_ready(parent)
        return self._conn

    def _wait_ready(self, conn: Connection) -> None:
        try:
            message = conn.recv() if conn.poll(self.startup_timeout) else None
        except (EOFError, OSError) as exc:
            self._kill()
            raise JobError(f"drift worker process died while starting (exit code {self._proc.exitcode})") from exc
        if message != "ready":
            self._kill()
            raise JobError(f"drift worker process was not ready within {self.startup_timeout:g}s and was killed")

    def run(self, timeout: float) -> JobOutput:
        conn = self._ensure()
        try:
            conn.send("run")
            if not conn.poll(timeout):
                self._kill()
                raise JobTimeout(f"run exceeded the {timeout:g}s timeout and was abandoned")
            status, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self._kill()
            raise JobError(f"drift worker process died: {exc or type(exc).__name__}") from exc
        if status != "ok":
            raise JobError(str(payload))
        return payload  # type: ignore[no-any-return]

    def _kill(self) -> None:
        # Shutdown (the main thread) and a run in progress (the scheduler's thread) may both get here: each takes
        # the connection once, and closing one that the other closed is no error.
        proc, conn, self._conn = self._proc, self._conn, None
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """Stop the worker; a run in progress is abandoned (its caller gets a JobError)."""
        conn, proc = self._conn, self._proc
        if conn is not None and proc is not None and proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                conn.send("stop")
                proc.join(1)
        self._kill()
