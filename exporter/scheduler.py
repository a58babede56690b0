"""APScheduler wiring: the drift job every ``interval_seconds`` in a background thread, one run at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


class DriftScheduler:
    def __init__(self, tick: Callable[[], None], interval_seconds: float,
                 also: dict[str, tuple[Callable[[], None], float]] | None = None) -> None:
        self.tick = tick
        self.interval = interval_seconds
        self.also = also or {}  # name -> (chore, seconds): housekeeping on the same thread pool, e.g. event expiry
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(interval_seconds))},
        )

    def start(self) -> None:
        # The first run happens right away, so /metrics and /drift have a result soon after start-up.
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            id="drift",
            name="drift",
            next_run_time=datetime.now(UTC),
        )
        for name, (chore, seconds) in self.also.items():
            self._scheduler.add_job(chore, "interval", seconds=seconds, id=name, name=name)
        self._scheduler.start()

    def stop(self) -> None:
        # Do not wait for a run in progress: shutdown must stay within the container's grace period. The service
        # then stops the job's worker process; the interrupted run is counted as failed.
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
