"""The drift job's tick, as every process of a deployment runs it, and the one run each process publishes.

At each tick the process takes or keeps the deployment's job lock (exporter.locks). The holder prunes the
predictions table (exporter.retention), runs the job (exporter.run) in its runner (exporter.runners), stores the
run and publishes it; every other process closes its runner (it keeps no drift worker process) and publishes the
newest run some process stored. So /metrics, /drift and /monitoring agree whichever process answers.

What a process serves is one immutable ``Published`` object: a run's results and the job's counts as of then,
replaced whole. A reader takes one reference per request and never sees parts of two runs. A tick never raises:
failures are counted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

from exporter.config import DriftSection, RetentionSection
from exporter.db import first_line
from exporter.drift import DriftResult
from exporter.estimation import EstimateResult
from exporter.locks import JobLock
from exporter.quality import QualityResult
from exporter.report import CachedReport
from exporter.retention import prune
from exporter.run import JobOutput, JobSpec
from exporter.runners import InProcessRunner, JobError, JobTimeout, Runner, WorkerRunner
from exporter.store import PredictionStore, RunStore, StoredRun, UnreadableRun

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0  # how often a request looks for a newer stored run


@dataclass(frozen=True)
class JobStats:
    """This process's counts of the job (counters are summed over the workers of a replica)."""

    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    report_failures: int = 0
    unreadable_runs: int = 0  # stored runs this process could not read
    pruned: int = 0  # prediction rows deleted by retention
    last_success: float = 0.0  # the served run's time (0: none yet)
    last_duration: float = 0.0
    last_report_duration: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True)
class Published:
    """Everything one run produced, as this process serves it, and the job's stats as of then."""

    stats: JobStats = JobStats()
    run_id: int | None = None  # the stored run served (None: none yet, or this process's run could not be stored)
    drift: DriftResult | None = None
    quality: QualityResult | None = None
    estimate: EstimateResult | None = None
    report: CachedReport | None = None  # a run without a report keeps the last one


class DriftJob:
    """Given what it consumes (the spec, the stores, the lock, its settings); owns what it produces."""

    def __init__(self, spec: JobSpec, store: PredictionStore, runs: RunStore, lock: JobLock, drift: DriftSection,
                 retention: RetentionSection) -> None:
        self.spec = spec
        self.store = store
        self.runs = runs
        self.db = runs.db
        self.lock = lock
        self.cfg = drift
        self.retention = retention
        self._runner: Runner | None = None
        self.leader: bool | None = None  # None until the first tick, which logs either role
        self._published = Published()
        self._publishing = threading.Lock()  # the job's thread and request threads publish, one at a time
        self._checked = -CHECK_SECONDS
        self._unreadable: int | None = None  # the newest stored run found unreadable (warned once)

    @property
    def published(self) -> Published:
        """What this process serves: take it once per request."""
        return self._published

    # -- publishing ----------------------------------------------------------------------------------------------
    def _replace(self, run: StoredRun | None = None, newer_only: bool = False, add: dict[str, int] | None = None,
                 **stats: object) -> None:
        """Publish a new object: ``run``'s results (if given), the counts in ``add`` incremented and the stats
        ``stats`` set, all from the object current under the lock (request threads publish too). With
        ``newer_only``, a stored run older than the one served is not published."""
        with self._publishing:
            current = self._published
            counts = {k: getattr(current.stats, k) + v for k, v in (add or {}).items()}
            new_stats = dataclasses.replace(current.stats, **counts, **stats)  # type: ignore[arg-type]
            if run is None:
                self._published = dataclasses.replace(current, stats=new_stats)
                return
            if newer_only and current.run_id is not None and run.id <= current.run_id:
                return
            self._published = Published(
                stats=dataclasses.replace(new_stats, last_success=run.created_at),
                # a run that could not be stored (id 0) leaves the last stored id: only a newer stored run replaces it
                run_id=run.id or current.run_id, drift=run.drift, quality=run.quality, estimate=run.estimate,
                report=run.report if run.report is not None else current.report,
            )

    def serve_newest(self, force: bool = False) -> None:
        """Publish the deployment's newest stored run if it is newer than the one served. Requests ask at most
        once a second, and not while the database is known to be down (a scrape must not wait for a connection
        timeout)."""
        if not self.db.up:
            return
        now = time.monotonic()
        if not force and now - self._checked < CHECK_SECONDS:
            return
        self._checked = now
        try:
            newest = self.runs.newest_id()
            served = self._published.run_id
            if newest is None or (served is not None and newest <= served) or newest == self._unreadable:
                return
            run = self.runs.load(newest)
        except UnreadableRun as exc:
            self._unreadable = newest
            self._replace(add={"unreadable_runs": 1})
            log.warning("%s; serving the last run this process could read", exc)
            return
        except Exception as exc:
            self.db.mark(False, exc)
            return
        if run is not None:
            self._replace(run, newer_only=True)

    # -- the tick --------------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One tick: the job lock held, a run (window -> results -> stored -> published); else the newest run
        another process stored is published. Never raises; failures are counted."""
        self.db.check()  # also creates the tables once a database that was down at start-up answers
        if not self._lead():
            self._close_runner()  # a process that does not run the job keeps no worker process
            self.serve_newest(force=True)
            return
        self._prune()
        started = time.monotonic()
        self._replace(add={"runs": 1})
        try:
            output = self.runner.run(self.cfg.timeout_seconds)
        except JobError as exc:
            self._replace(add={"failures": 1, "timeouts": int(isinstance(exc, JobTimeout))},
                          last_error=str(exc), last_duration=time.monotonic() - started)
            log.error("drift job failed: %s", exc)
            return
        self._store_and_publish(output)

    def _store_and_publish(self, output: JobOutput) -> None:
        finished = time.time()
        report = output.report if output.report is not None else self._published.report
        run_id = 0
        try:
            run_id = self.runs.save(output.drift, output.quality, report, created_at=finished,
                                    estimate=output.estimate)
        except Exception as exc:  # the database is down: this process serves its run; the others keep theirs
            log.error("drift job: the run could not be stored, so other processes do not see it: %s", first_line(exc))
        if output.report_error is not None:
            log.error("drift report failed: %s", output.report_error)
        # Published once, as stored: its id is the stored run's, so no request reloads it from the table.
        self._replace(StoredRun(run_id, finished, output.drift, output.quality, output.report, output.estimate),
                      add={"report_failures": int(output.report_error is not None)}, last_error=None,
                      last_duration=output.compute_seconds, last_report_duration=output.report_seconds)

    def _lead(self) -> bool:
        """Take or keep the job lock; False when another process of the deployment holds it."""
        held = self.lock.acquire()
        if held != self.leader:
            log.info("drift job: %s", "this process runs it" if held else "another process of the deployment runs it")
        self.leader = held
        return held

    def _prune(self) -> None:
        try:
            pruned = prune(self.store.engine, self.retention.max_age_days, self.retention.max_rows)
        except Exception as exc:  # the database is down: the next tick tries again
            log.warning("retention: pruning the predictions table failed: %s", first_line(exc))
            return
        if pruned:
            self._replace(add={"pruned": pruned})

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = WorkerRunner(self.spec) if self.cfg.isolation == "process" else InProcessRunner(self.spec)
        return self._runner

    def _close_runner(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.close()

    def close(self) -> None:
        try:
            self._close_runner()
        finally:
            self.lock.release()
