"""The drift job's tick, as every process of a deployment runs it.

At each tick the process takes or keeps the deployment's job lock (exporter.deployment). The holder prunes the
predictions table (exporter.retention), runs the job (window -> drift, quality, report) in its runner
(exporter.job), stores the run and serves the stored copy; every other process closes its runner (it keeps no
drift worker process) and serves the newest run some process stored. A tick never raises: failures are counted in
the service's JobStats.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from exporter.deployment import Deployment, RunStore, StoredRun, job_lock
from exporter.job import InProcessRunner, JobError, JobSpec, JobTimeout, WorkerRunner
from exporter.retention import prune

if TYPE_CHECKING:
    from exporter.service import Service

log = logging.getLogger(__name__)


class DriftJob:
    def __init__(self, service: Service) -> None:
        self.service = service
        settings = service.settings
        version = settings.model.version
        self.deployment = Deployment(job_lock(settings.resolved_database_url, settings.model.name, version),
                                     RunStore(service.store.engine, version))
        self._runner: InProcessRunner | WorkerRunner | None = None

    def spec(self) -> JobSpec:
        s = self.service
        cfg = s.settings.drift
        return JobSpec(
            reference=s.reference,
            database_url=s.store.url,
            window_size=cfg.window_size,
            window_seconds=cfg.window_seconds,
            min_rows=cfg.min_rows,
            drift_share=cfg.drift_share,
            report=cfg.report,
            task=s.settings.model.task,
            classes=s.model.classes,
            with_quality=s.settings.target is not None,
            model_version=s.settings.model.version,
            overrides=s.overrides,
            prediction_override=s.prediction_override,
            alpha=cfg.alpha,
            estimation=s.estimation,
        )

    @property
    def runner(self) -> InProcessRunner | WorkerRunner:
        if self._runner is None:
            spec = self.spec()
            self._runner = WorkerRunner(spec) if self.service.settings.drift.isolation == "process" else InProcessRunner(spec)
        return self._runner

    def close(self) -> None:
        try:
            self._close_runner()
        finally:
            self.deployment.close()

    def _close_runner(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.close()

    def _prune(self) -> None:
        s = self.service
        retention = s.settings.prediction_log.retention
        try:
            s.pruned_total += prune(s.store.engine, retention.max_age_days, retention.max_rows)
        except Exception as exc:  # the database is down: the next tick tries again
            log.warning("retention: pruning the predictions table failed: %s", exc)

    def serve_newest(self, force: bool = False) -> None:
        """Serve the deployment's newest stored run if this process does not serve it yet (not while the database
        is known to be down: a scrape must not wait for a connection timeout)."""
        if self.service.prediction_log.database_up:
            self.deployment.serve_newest(self._publish, force)

    def _publish(self, run: StoredRun) -> None:
        """Serve ``run``: its results, report (a run without one keeps the last) and time."""
        s = self.service
        # whole objects replaced: readers see one run or the next, never a mix
        s.drift_result, s.quality_result, s.estimate_result = run.drift, run.quality, run.estimate
        if run.report is not None:
            s.report = run.report
        s.job_stats.last_success = run.created_at

    def tick(self) -> None:
        """One tick: the deployment's job lock held, a run (window -> drift, quality, report -> stored -> served);
        else the newest run another process stored is served. Never raises; failures are counted."""
        s, stats = self.service, self.service.job_stats
        if not self.deployment.lead():
            self._close_runner()  # a process that does not run the job keeps no worker process
            self.serve_newest()
            return
        self._prune()
        started = time.monotonic()
        stats.runs += 1
        try:
            output = self.runner.run(s.settings.drift.timeout_seconds)
        except JobError as exc:
            stats.failures += 1
            if isinstance(exc, JobTimeout):
                stats.timeouts += 1
            stats.last_error = str(exc)
            stats.last_duration = time.monotonic() - started
            log.error("drift job failed: %s", exc)
            return
        # The run's time is the stored one whoever publishes it: a request thread may serve the stored copy before
        # this thread does.
        finished = time.time()
        try:
            self.deployment.runs.save(output.drift, output.quality, output.report or s.report, created_at=finished,
                                      estimate=output.estimate)
        except Exception as exc:  # the database is down: this process serves its run; the others keep theirs
            log.error("drift job: the run could not be stored, so other processes do not see it: %s", exc)
        # Served at once, also when it could not be stored (its id is never read: served_id is the stored run's).
        self._publish(StoredRun(0, finished, output.drift, output.quality, output.report, output.estimate))
        if output.report_error is not None:
            stats.report_failures += 1
            log.error("drift report failed: %s", output.report_error)
        self.serve_newest(force=True)  # the stored copy, as every other process serves it (and its stored time)
        stats.last_error = None
        stats.last_duration = output.compute_seconds
        stats.last_report_duration = output.report_seconds
