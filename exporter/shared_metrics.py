"""Counters summed over the workers of ``exporter serve --workers N`` (prometheus_client's multiprocess mode).

Each worker keeps its counters as plain numbers (the service, the prediction log and the job count what they do).
With several workers, a scrape reaches one of them; so each worker also adds its counts to prometheus_client
multiprocess counters, whose files in ``PROMETHEUS_MULTIPROC_DIR`` every worker reads at a scrape: the answering
worker syncs its own counts first, the others every SYNC_SECONDS, so a scrape is exact once traffic has paused that
long and never goes backwards. The HTTP metrics of prometheus-fastapi-instrumentator are prometheus_client objects
too and are summed the same way. The CLI creates the directory, empty, before the workers start; a worker that
stops marks itself dead (its live gauges leave the sums, its counts stay).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from exporter.service import Service

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 0.5


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _counters(service: Service) -> dict[str, tuple[str, Callable[[], float]]]:
    """Name: (help, current value in this process). The names ExporterCollector leaves out in multiprocess mode."""
    s, plog, job = service, service.prediction_log, service.job_stats
    return {
        "model_predictions": ("Rows predicted (a batch counts its rows).", lambda: s.predictions_total),
        "model_prediction_errors": (
            "Valid requests the model refused or answered with a non-finite value (answered 422).",
            lambda: s.prediction_errors,
        ),
        "model_prediction_log_written": ("Prediction rows persisted.", lambda: plog.written),
        "model_prediction_log_dropped": (
            "Prediction rows lost (queue full or not written at shutdown).", lambda: plog.dropped
        ),
        "model_prediction_log_pruned": (
            "Prediction rows deleted by retention (prediction_log.retention).", lambda: s.pruned_total
        ),
        "model_feedback": ("Labels received.", lambda: s.feedback_total),
        "model_feedback_dropped": (
            "Labels accepted but not stored (refused by the database, their prediction row lost, or not written "
            "before shutdown).",
            lambda: plog.labels_dropped,
        ),
        "model_feedback_replaced": ("Labels that replaced a different earlier label.", lambda: s.feedback_replaced),
        "model_drift_job_runs": ("Drift job runs.", lambda: job.runs),
        "model_drift_job_failures": ("Drift job runs that failed.", lambda: job.failures),
        "model_drift_job_timeouts": ("Drift job runs abandoned after drift.timeout_seconds.", lambda: job.timeouts),
        "model_drift_report_failures": ("Runs whose HTML report could not be built.", lambda: job.report_failures),
    }


SHARED_NAMES = frozenset({  # the families summed over workers
    "model_predictions", "model_prediction_errors", "model_prediction_log_written", "model_prediction_log_dropped",
    "model_prediction_log_pruned", "model_feedback", "model_feedback_dropped", "model_feedback_replaced",
    "model_drift_job_runs", "model_drift_job_failures", "model_drift_job_timeouts", "model_drift_report_failures",
    "model_prediction_log_queue_rows",
})


class WorkerCounters:
    """This worker's counts, added to the multiprocess files."""

    def __init__(self, service: Service) -> None:
        self.sources = _counters(service)
        self.counters = {name: Counter(name, text, registry=None) for name, (text, _) in self.sources.items()}
        self.synced = dict.fromkeys(self.sources, 0.0)
        self.queue = Gauge("model_prediction_log_queue_rows", "Prediction rows waiting to be written.",
                           registry=None, multiprocess_mode="livesum")
        self.service = service
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shared-metrics", daemon=True)

    def sync(self) -> None:
        with self._lock:
            for name, (_, value) in self.sources.items():
                now = float(value())
                if now > self.synced[name]:
                    self.counters[name].inc(now - self.synced[name])
                    self.synced[name] = now
            self.queue.set(self.service.prediction_log.queued)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sync()
        multiprocess.mark_process_dead(os.getpid())

    def _run(self) -> None:
        while not self._stop.wait(SYNC_SECONDS):
            self.sync()


class _Summed(Collector):
    """The multiprocess files, read at each scrape (after this worker's own counts are in)."""

    def __init__(self, counters: WorkerCounters) -> None:
        self.counters = counters
        self.registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(self.registry)

    def collect(self) -> Iterator[Metric]:
        self.counters.sync()
        yield from self.registry.collect()


def summed_collector(counters: WorkerCounters) -> Collector:
    return _Summed(counters)
