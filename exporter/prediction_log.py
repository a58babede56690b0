"""The prediction log: a bounded in-memory queue and the writer thread that empties it into the table.

The request path only calls :meth:`PredictionLog.enqueue`, which never blocks: when the queue is full the row is
dropped and counted. The writer thread inserts in batches and retries with backoff while the database is down, so
a short outage costs nothing but memory. :meth:`PredictionLog.stop` drains the queue before returning.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc

from exporter.db import first_line, is_missing_table, is_transient
from exporter.store import DatabaseUnavailable, LabelUpdate, PredictionRow, PredictionStore

log = logging.getLogger(__name__)


class _Permanent(Exception):
    """A write error that retrying will not fix."""


class LabelBook:
    """What is queued but not yet written, as /feedback needs to know it: the predictions not yet in the table (a
    label for one is accepted), and the newest label queued for each request_id (the one a replacing label is
    compared with, rather than the older label in the table). The log's lock guards it."""

    def __init__(self) -> None:
        self.unwritten: set[str] = set()
        self.newest: dict[str, LabelUpdate] = {}
        self.in_flight = 0  # label updates queued or in the writer's hands

    def current(self, request_id: str) -> tuple[bool, Any]:
        """(whether the prediction or a label for it is still queued, the newest label queued for it or None)."""
        update = self.newest.get(request_id)
        if update is not None:
            return True, update.label
        return request_id in self.unwritten, None

    def queued(self, updates: list[LabelUpdate]) -> None:
        for update in updates:
            self.newest[update.request_id] = update
        self.in_flight += len(updates)

    def done(self, predictions: list[PredictionRow], labels: list[LabelUpdate]) -> None:
        """A batch the writer has finished with (written or given up on)."""
        self.in_flight -= len(labels)
        for u in labels:
            if self.newest.get(u.request_id) is u:  # no newer label queued for it meanwhile
                del self.newest[u.request_id]
        for r in predictions:
            self.unwritten.discard(r.request_id)


class PredictionLog:
    """Bounded queue + writer thread. Counters are plain ints read by the metrics collector."""

    def __init__(
        self,
        store: PredictionStore,
        queue_size: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_backoff: float = 5.0,
    ) -> None:
        self.store = store
        self.db = store.db
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self._queue: queue.Queue[PredictionRow | LabelUpdate] = queue.Queue(maxsize=queue_size)
        self._book = LabelBook()
        self._lock = threading.Lock()
        # Held by every producer around its puts: a label batch checks the free room and queues under it, so it is
        # queued whole or not at all (only the writer takes items off, which only frees room).
        self._put_lock = threading.Lock()
        self._pending = 0  # rows taken off the queue but not yet committed
        self._lookup_failing = False  # logs a failing request_id lookup once per outage, not once per request
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.labels_dropped = 0
        self._stopping = threading.Event()
        # Set by a producer once a full batch is queued, and by stop(): the writer otherwise sleeps a flush
        # interval and takes what is queued, so it is not woken (and does not take the GIL) once per request.
        self._full = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def database_up(self) -> bool:
        return self.db.up

    # -- request path -------------------------------------------------------------------------------------------
    def enqueue(self, rows: list[PredictionRow]) -> int:
        """Queue rows for writing without ever blocking; returns how many were dropped because the queue was full."""
        dropped = 0
        with self._put_lock:
            for row in rows:
                with self._lock:
                    self._book.unwritten.add(row.request_id)
                try:
                    self._queue.put_nowait(row)
                except queue.Full:
                    dropped += 1
                    with self._lock:
                        self._book.unwritten.discard(row.request_id)
            self._wake_if_full()
        if dropped:
            with self._lock:
                self.dropped += dropped
            log.warning("prediction log queue full: dropped %d rows", dropped)
        return dropped

    def pending_label(self, request_id: str) -> tuple[bool, Any]:
        """(whether the prediction or a label for it is still queued, the newest label queued for it or None)."""
        with self._lock:
            return self._book.current(request_id)

    def current_labels(self, request_ids: list[str]) -> dict[str, Any]:
        """The current label (None: unlabelled) of each id that matches a logged prediction, queued or written;
        an id missing from the answer matches none. Raises DatabaseUnavailable when the table cannot be read."""
        current: dict[str, Any] = {}
        not_queued: list[str] = []
        for rid in request_ids:
            queued, label = self.pending_label(rid)
            if queued:
                current[rid] = label
            else:
                not_queued.append(rid)
        if not_queued:
            try:
                current.update(self.store.labels_of(not_queued))  # one query for the whole batch
            except sa_exc.SQLAlchemyError as exc:
                with self._lock:
                    first, self._lookup_failing = not self._lookup_failing, True
                if first:
                    log.error("request_id lookup failed (/feedback answers 503 until the database is back): %s",
                              first_line(exc))
                raise DatabaseUnavailable("database unavailable: request_ids cannot be looked up; retry later") from exc
            if self._lookup_failing:
                with self._lock:
                    recovered, self._lookup_failing = self._lookup_failing, False
                if recovered:
                    log.warning("request_id lookup works again")
        return current

    def enqueue_labels(self, updates: list[LabelUpdate]) -> bool:
        """Queue label updates (ordered after the predictions they label), all of them or, when they do not all fit
        in the queue, none (False: the caller answers 503 and nothing of the batch is queued)."""
        return self._put_all(updates, lambda: self._book.queued(updates))

    def enqueue_all(self, rows: list[PredictionRow]) -> bool:
        """Queue prediction rows made elsewhere (/log), all of them or none: a sender told 503 retries the batch,
        so a part of it must not be queued."""
        return self._put_all(rows, lambda: self._book.unwritten.update(r.request_id for r in rows))

    def _put_all(self, items: Sequence[PredictionRow | LabelUpdate], book: Callable[[], None]) -> bool:
        with self._put_lock:
            if self._queue.maxsize > 0 and self._queue.maxsize - self._queue.qsize() < len(items):
                return False
            with self._lock:
                book()
            for item in items:
                self._queue.put_nowait(item)  # cannot be full: room was checked under the producers' lock
            self._wake_if_full()
        return True

    def _wake_if_full(self) -> None:
        if self._queue.qsize() >= self.batch_size and not self._full.is_set():
            self._full.set()

    @property
    def queued(self) -> int:
        return self._queue.qsize() + self._pending

    # -- writer thread ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything queued, then stop the writer (bounded by ``timeout``; what is left is counted dropped)."""
        self._stopping.set()
        self._full.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("prediction log writer did not finish within %.0fs", timeout)
        with self._lock:
            labels_left = self._book.in_flight
            rows_left = self._queue.qsize() + self._pending - labels_left
            self.dropped += rows_left
            self.labels_dropped += labels_left
        if rows_left or labels_left:
            log.error(
                "prediction log: %d prediction rows and %d labels could not be written before shutdown",
                rows_left, labels_left,
            )

    def _take_batch(self) -> list[PredictionRow | LabelUpdate]:
        """Up to ``batch_size`` queued items, once a full batch is queued or a flush interval has passed."""
        if self._queue.qsize() < self.batch_size and not self._stopping.is_set():
            self._full.wait(self.flush_interval)
        if not self._stopping.is_set():
            self._full.clear()
        batch: list[PredictionRow | LabelUpdate] = []
        while len(batch) < self.batch_size:
            with self._lock:  # taken and counted pending together: ``queued`` never misses an item in between
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                self._pending += 1
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch:
                self._write(batch)
            elif self._stopping.is_set() and self._queue.empty():
                return

    def _write(self, batch: list[PredictionRow | LabelUpdate]) -> None:
        # Predictions first, then labels: a label queued after its prediction finds the row in place.
        predictions = [r for r in batch if isinstance(r, PredictionRow)]
        labels = [r for r in batch if isinstance(r, LabelUpdate)]
        rows: list[dict[str, Any]] = []
        lost = 0
        for r in predictions:
            try:
                rows.append(r.as_db())
            except (TypeError, ValueError) as exc:  # e.g. a value JSON cannot hold
                lost += 1
                log.error("prediction log: row %s cannot be stored: %s", r.request_id, exc)
        lost += self._persist(rows, self._insert, "prediction")
        unmatched = 0

        def set_labels(updates: list[LabelUpdate]) -> None:
            # A label whose prediction row never reached the table (refused or dropped) updates nothing: it is lost.
            nonlocal unmatched
            unmatched += len(updates) - self.store.set_labels(updates)

        labels_lost = self._persist(labels, set_labels, "label") if labels else 0
        if unmatched:
            log.error("prediction log: %d labels dropped: their prediction row is not in the table", unmatched)
        labels_lost += unmatched
        with self._lock:
            self.written += len(predictions) - lost
            self.dropped += lost
            self.labels_dropped += labels_lost
            self._book.done(predictions, labels)
            self._pending -= len(batch)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; after a commit whose success the client never heard of (a connection lost at COMMIT),
        the retry finds some already in the table, and only the missing ones are inserted again."""
        while rows:
            try:
                self.store.insert(rows)
                return
            except sa_exc.IntegrityError as exc:
                missing = self.store.without_existing(rows)
                if len(missing) == len(rows):  # none was there: not a replayed commit, so a row the table refuses
                    raise _Permanent(first_line(exc)) from exc
                rows = missing

    def _persist(self, items: list[Any], write: Callable[[list[Any]], None], what: str) -> int:
        """Write ``items``, retrying with backoff while the database is unreachable. An error that retrying cannot
        fix (a row the database refuses) is isolated by writing row by row; returns how many rows were refused."""
        if not items:
            return 0
        try:
            self._until_written(lambda: write(items), what)
            return 0
        except _Permanent as exc:
            log.error("prediction log: %s batch refused (%s); writing row by row", what, exc)
        refused = 0
        for item in items:
            try:
                self._until_written(functools.partial(write, [item]), what)
            except _Permanent as exc:
                refused += 1
                log.error("prediction log: %s row refused by the database and dropped: %s", what, exc)
        return refused

    def _until_written(self, write: Callable[[], None], what: str) -> None:
        backoff = 0.1
        while True:
            try:
                # The database may have been down at start-up, or the table dropped since: (re)create it here.
                self.db.ensure_schema()
                write()
                break
            except _Permanent:
                self.db.mark(True)  # the database answered: it is up, it just refuses this row
                raise
            except Exception as exc:
                if is_missing_table(exc):
                    self.db.schema_ready = False
                elif not is_transient(exc):
                    self.db.mark(True)
                    raise _Permanent(first_line(exc)) from exc
                self.write_errors += 1
                if self.db.up:
                    log.error("prediction log: %s write failed, retrying with backoff: %s", what, first_line(exc))
                self.db.mark(False, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        self.db.mark(True)
