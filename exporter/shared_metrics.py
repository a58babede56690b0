"""Counters summed over the workers of ``exporter serve --workers N`` (prometheus_client's multiprocess mode).

Each worker keeps its counters as plain numbers (the service, the prediction log and the job count what they
do).
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
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.metrics import COUNTERS, QUEUE_GAUGE, QUEUE_HELP, MetricSources

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 0.5


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class WorkerCounters:
    """This worker's counts, added to the multiprocess files."""

    def __init__(self, sources: MetricSources) -> None:
        families: dict[str, Counter] = {}
        for c in COUNTERS:  # one prometheus_client object per family: two for one name would share a file entry
            if c.name not in families:
                families[c.name] = Counter(c.name, c.help, labelnames=[c.label[0]] if c.label else (), registry=None)
        self.counters = {c.key: families[c.name].labels(c.label[1]) if c.label else families[c.name]
                         for c in COUNTERS}
        self.synced = dict.fromkeys(self.counters, 0.0)
        self.queue = Gauge(QUEUE_GAUGE, QUEUE_HELP, registry=None, multiprocess_mode="livesum")
        self.sources = sources
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shared-metrics", daemon=True)

    def sync(self) -> None:
        with self._lock:
            counted = self.sources.counted()
            for c in COUNTERS:
                now = float(c.value(counted))
                if now > self.synced[c.key]:
                    self.counters[c.key].inc(now - self.synced[c.key])
                    self.synced[c.key] = now
            self.queue.set(self.sources.log.queued)

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
