"""One drift job run (window -> drift, quality, report), in this process or in a worker process.

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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from exporter.drift import DriftResult, MethodOverride, Reference, compute_drift
from exporter.estimation import LABEL, PROBABILITIES, EstimateResult, EstimationSetup, estimate_window
from exporter.predictions import PredictionStore
from exporter.quality import QualityResult, quality
from exporter.report import CachedReport, build_report
from exporter.stattests import evidently_stattests

log = logging.getLogger(__name__)


class JobError(Exception):
    """A run failed; the message says why."""


class JobTimeout(JobError):
    """A run took longer than its timeout and was abandoned."""


@dataclass
class JobSpec:
    """Everything a run needs; picklable, so a worker process gets it once at start."""

    reference: Reference
    database_url: str
    window_size: int
    window_seconds: float | None
    min_rows: int
    drift_share: float
    report: bool
    task: str
    classes: list[Any]
    with_quality: bool
    model_version: str | None = None  # the window holds this version's predictions only (None: every version)
    overrides: dict[str, MethodOverride] = field(default_factory=dict)
    prediction_override: MethodOverride = field(default_factory=MethodOverride)
    alpha: float | None = None  # calibrated thresholds' per-run false-flag probability; None: Evidently's thresholds
    estimation: EstimationSetup | None = None  # label-free quality estimation; fitted once where the runs happen


@dataclass
class JobOutput:
    drift: DriftResult
    quality: QualityResult | None
    report: CachedReport | None
    report_error: str | None
    compute_seconds: float  # window, drift, quality and estimate; the report is built after and not counted
    report_seconds: float = 0.0
    estimate: EstimateResult | None = None
    estimate_seconds: float = 0.0  # part of compute_seconds


def _check_reference(setup: EstimationSetup) -> None:
    try:
        setup.check_reference()
    except Exception as exc:  # e.g. a model that cannot be cloned and refitted: no check
        log.info("reference check skipped: %s: %s", type(exc).__name__, exc)


def check_in_background(spec: JobSpec) -> None:
    """The reference rule's check (refitting the model five times) only logs: in the service's own process it runs
    in a thread of its own, after the first run, rather than delaying it."""
    if spec.estimation is not None:
        threading.Thread(target=_check_reference, args=(spec.estimation,), name="exporter-reference-check",
                         daemon=True).start()


def prepare(spec: JobSpec, check: bool = True) -> None:
    """Fit what the runs reuse (the estimator), once per process that runs the job; a failure is logged, and the
    runs go on without an estimate. With ``check``, the reference rule's check first."""
    if spec.estimation is not None:
        if check:
            _check_reference(spec.estimation)
        try:
            spec.estimation.fit()
        except Exception as exc:
            log.error("quality estimation disabled: fitting it on the reference failed: %s: %s",
                      type(exc).__name__, exc)
            spec.estimation = None


def run_job(spec: JobSpec, store: PredictionStore) -> JobOutput:
    started = time.monotonic()
    window = store.window(spec.window_size, spec.window_seconds, model_version=spec.model_version,
                          outcomes=(PROBABILITIES, LABEL) if spec.estimation is not None else None)
    outcomes = window[[c for c in (PROBABILITIES, LABEL) if c in window]]
    window = window.drop(columns=list(outcomes.columns))
    result = compute_drift(
        spec.reference,
        window,
        min_rows=spec.min_rows,
        drift_share=spec.drift_share,
        per_feature=spec.overrides,
        prediction_override=spec.prediction_override,
        alpha=spec.alpha,
    )
    quality_result = None
    if spec.with_quality:
        labels, preds, probas = store.labelled_window(spec.window_size, spec.model_version)
        quality_result = quality(spec.task, labels, preds, probas, spec.classes)
    estimate, estimate_seconds = None, 0.0
    if spec.estimation is not None and result.skipped_reason is None:
        estimate_started = time.monotonic()
        try:
            estimate = estimate_window(spec.estimation, window.join(outcomes))
        except Exception as exc:  # the drift and realized quality of the run stand without it
            log.error("quality estimation failed: %s: %s", type(exc).__name__, exc)
        estimate_seconds = time.monotonic() - estimate_started
    compute_seconds = time.monotonic() - started
    report = report_error = None
    report_started = time.monotonic()
    if spec.report and result.skipped_reason is None:
        try:
            report = build_report(spec.reference, window, result, calibrated=spec.alpha is not None)
        except Exception as exc:
            report_error = f"{type(exc).__name__}: {exc}"
    return JobOutput(result, quality_result, report, report_error, compute_seconds,
                     time.monotonic() - report_started, estimate, estimate_seconds)


class InProcessRunner:
    """Runs in the calling thread (the CLI's one-off `exporter drift`, or `drift.isolation: thread`).
    A thread cannot be stopped: a run that overruns its timeout finishes, then is counted as a timeout and its
    result discarded, as a killed worker's would be."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.store = PredictionStore(spec.database_url)
        self._prepared = False

    def run(self, timeout: float) -> JobOutput:
        if threading.current_thread() is not threading.main_thread():
            lower_priority()  # the scheduler's thread, not a CLI's or a caller's main thread
        evidently_stattests()  # imported once, on the first run: not part of any run's time
        first = not self._prepared
        if first:
            prepare(self.spec, check=False)  # once, on the first run: not part of any run's time
            self._prepared = True
        started = time.monotonic()
        try:
            output = run_job(self.spec, self.store)
        except Exception as exc:
            raise JobError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if first:
                check_in_background(self.spec)
        took = time.monotonic() - started
        if took > timeout:
            raise JobTimeout(f"run took {took:.2f}s, over the {timeout:g}s timeout; its result was discarded")
        return output

    def close(self) -> None:
        self.store.dispose()


def lower_priority() -> None:
    """The drift job is background work: let the prediction API win the CPU when both want it."""
    with contextlib.suppress(OSError, AttributeError):
        # On Linux this applies to the calling thread alone (its own scheduling entity).
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _worker_main(conn: Connection, spec: JobSpec) -> None:
    lower_priority()
    if not logging.getLogger().handlers:  # a spawned process: log as the service does (exporter.cli)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = PredictionStore(spec.database_url)
    evidently_stattests()  # Evidently's import takes seconds: before "ready", so no run's timeout pays it
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
