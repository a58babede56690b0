"""The prediction log: one table, a bounded in-memory queue and a batching writer thread.

The request path only calls :meth:`PredictionLog.enqueue`, which never blocks: when the queue is full the row is
dropped and counted. The writer thread inserts in batches and retries with backoff while the database is down, so
a short outage costs nothing but memory. :meth:`PredictionLog.stop` drains the queue before returning.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import uuid_utils
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)


class _Permanent(Exception):
    """A write error that retrying will not fix."""

metadata = MetaData()
predictions_table = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(36), nullable=False, unique=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("model_version", String(64), nullable=False),
    Column("features", Text, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("probabilities", Text, nullable=True),
    Column("label", Text, nullable=True),
    # No index on labelled_at: no query reads by it, and each row paid for one (0.7 of 5 us per insert). A table
    # created before keeps its ix_predictions_labelled_at; `DROP INDEX ix_predictions_labelled_at` removes it.
    Column("labelled_at", Float, nullable=True),
    # The drift window reads the serving version's latest rows: without this, rows of an old version at the end
    # of the table would be scanned past one by one after an upgrade.
    Index("ix_predictions_version_id", "model_version", "id"),
)


# orjson writes what json.dumps writes (the same values, read back by json.loads) ten times faster, but it writes
# NaN and Infinity as null, which json refuses (allow_nan=False). An output without "null" held neither; one with
# it (a None, or a string holding the word) is encoded again by json, which raises for what JSON cannot hold, as
# it does for anything orjson refuses or is told to pass through.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _json(value: Any) -> str:
    try:
        out = orjson.dumps(value, option=_ORJSON_OPTIONS)
        if b"null" not in out:
            return out.decode()
    except orjson.JSONEncodeError:
        pass
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# A forked child (a worker of a pre-forking server) must not continue its parent's random sequence.
os.register_at_fork(after_in_child=uuid_utils.reseed_rng)


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) in hex: unique, and ordered by time, so each logged row lands at the end of the
    request_id index instead of on a random page of it (insert cost stays flat as the table grows)."""
    return uuid_utils.uuid7().hex


def make_engine(url: str, autocommit: bool = False) -> Engine:
    """SQLite in WAL mode (readers never block the writer), or any SQLAlchemy URL such as postgresql+psycopg://.
    ``autocommit`` (SQLite only): the driver issues no BEGIN or COMMIT; each statement is its own transaction."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            with contextlib.suppress(OSError):  # PredictionStore.check_writable reports what is wrong
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args={"connect_timeout": 5})


PREDICTION_COLUMNS = ("request_id", "created_at", "model_version", "features", "prediction", "probabilities")


# Most rows per INSERT statement on SQLite (``VALUES (...), (...)``), when SQLite's limit on bound values allows
# as many (32766 since SQLite 3.32, 999 before: 166 rows). The writer's batch (500 rows by default) is then one
# statement, run without BEGIN or COMMIT: the writer thread releases and takes back the GIL around a handful of
# SQLite calls per batch. Each time it takes the GIL back under load it takes it from a request thread, which
# then waits for it, and that wait is what logging added to the /predict tail (a BEGIN, an INSERT and a COMMIT per
# 64-row chunk, or the driver's executemany with a step per row, cost several times as many).
SQLITE_INSERT_ROWS = 1000


@functools.lru_cache(maxsize=64)
def _sqlite_values_insert(n: int) -> str:
    row = "(" + ", ".join("?" * len(PREDICTION_COLUMNS)) + ")"
    return f"INSERT INTO predictions ({', '.join(PREDICTION_COLUMNS)}) VALUES " + ", ".join([row] * n)


def _values(rows: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The bound values of a multi-row INSERT of ``PREDICTION_COLUMNS``, row after row."""
    return tuple(r.get(k) for r in rows for k in PREDICTION_COLUMNS)


@dataclass(frozen=True)
class PredictionRow:
    request_id: str
    created_at: float
    model_version: str
    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None

    def as_db(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "model_version": self.model_version,
            "features": _json(self.features),
            "prediction": _json(self.prediction),
            "probabilities": None if self.probabilities is None else _json(self.probabilities),
        }


@dataclass(frozen=True)
class LabelUpdate:
    request_id: str
    label: Any
    labelled_at: float


_NO_LABEL = object()


class DatabaseUnavailable(Exception):
    """The database could not answer a request's query; the client should retry later."""


class StoreNotWritable(Exception):
    """An SQLite database that cannot be created or written: waiting will not help."""


class PredictionStore:
    """Reads and writes of the predictions table."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def check_writable(self) -> None:
        """For SQLite, create the file and table and write to it now: a file that cannot be written will not get
        better by waiting, unlike a database server that is down (its rows are buffered until it is up)."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() != "sqlite":
            return
        try:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
            self.create_schema()
            with self.engine.begin() as conn:  # a write that changes nothing; fails on a read-only file
                conn.execute(predictions_table.delete().where(predictions_table.c.id == -1))
        except (OSError, sa_exc.SQLAlchemyError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StoreNotWritable(
                f"cannot write the SQLite database {parsed.database} ({reason}): set database_url "
                "(or EXPORTER_DATABASE_URL) to a writable location"
            ) from exc

    def create_schema(self) -> None:
        metadata.create_all(self.engine)
        for index in predictions_table.indexes:  # create_all skips indexes added to a table that already exists
            index.create(self.engine, checkfirst=True)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` in one transaction; a column a row leaves out is NULL.

        On SQLite, up to ``sqlite_rows_per_statement`` rows are one INSERT statement (``VALUES (...), (...)``) run in
        autocommit mode: one statement is one transaction, with no BEGIN or COMMIT statement around it, and the
        driver releases the GIL around a handful of SQLite calls instead of around every row's step (executemany)
        or every chunk's BEGIN, INSERT and COMMIT. More rows are written in such chunks inside one transaction.
        Elsewhere the INSERT, compiled once, is run by the driver's executemany (SQLAlchemy's own per-row parameter
        processing cost more than the driver's work)."""
        if self.engine.dialect.name == "sqlite":
            per_statement = self.sqlite_rows_per_statement
            # One statement needs no transaction around it; several are one transaction on the usual connections.
            engine = self._sqlite_autocommit if len(rows) <= per_statement else self.engine
            with engine.begin() as conn:
                for start in range(0, len(rows), per_statement):
                    chunk = rows[start:start + per_statement]
                    conn.exec_driver_sql(_sqlite_values_insert(len(chunk)), _values(chunk))
            return
        with self.engine.begin() as conn:
            statement, positions = self._insert_statement  # compiled for the other databases only
            if positions is None:
                conn.exec_driver_sql(statement, [{k: r.get(k) for k in PREDICTION_COLUMNS} for r in rows])
            else:
                conn.exec_driver_sql(statement, [tuple(r.get(k) for k in positions) for r in rows])

    @functools.cached_property
    def sqlite_rows_per_statement(self) -> int:
        """Rows per INSERT on SQLite: ``SQLITE_INSERT_ROWS``, or fewer where SQLite binds fewer values."""
        with self.engine.connect() as conn:
            bound_values = conn.connection.dbapi_connection.getlimit(  # type: ignore[union-attr]
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return max(1, min(SQLITE_INSERT_ROWS, bound_values // len(PREDICTION_COLUMNS)))

    @functools.cached_property
    def _sqlite_autocommit(self) -> Engine:
        """The same SQLite file through connections in autocommit mode, for the one-statement INSERT."""
        return make_engine(self.url, autocommit=True)

    @functools.cached_property
    def _insert_statement(self) -> tuple[str, tuple[str, ...] | None]:
        compiled = predictions_table.insert().compile(dialect=self.engine.dialect, column_keys=list(PREDICTION_COLUMNS))
        return compiled.string, tuple(compiled.positiontup or ()) if compiled.positional else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(predictions_table)).scalar_one())

    def without_existing(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        present = self.labels_of([r["request_id"] for r in rows])
        return [r for r in rows if r["request_id"] not in present]

    def set_labels(self, updates: list[LabelUpdate]) -> int:
        """Write the labels; returns how many found their prediction row."""
        t = predictions_table
        statement = (
            t.update()
            .where(t.c.request_id == bindparam("rid"))
            .values(label=bindparam("lbl"), labelled_at=bindparam("at"))
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                statement, [{"rid": u.request_id, "lbl": _json(u.label), "at": u.labelled_at} for u in updates]
            )
        return int(result.rowcount)

    def labels_of(self, request_ids: list[str]) -> dict[str, Any]:
        """The logged predictions among ``request_ids``, each with its label (None when unlabelled); one query."""
        t = predictions_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.request_id, t.label).where(t.request_id.in_(request_ids))).all()
        return {r.request_id: None if r.label is None else json.loads(r.label) for r in rows}

    def lookup_label(self, request_id: str) -> tuple[bool, Any]:
        """(whether the prediction exists, its label or None)."""
        labels = self.labels_of([request_id])
        return request_id in labels, labels.get(request_id)

    def labelled_window(
        self, size: int, model_version: str | None = None
    ) -> tuple[list[Any], list[Any], list[dict[str, float]] | None]:
        """Labels, predictions and probabilities of the latest ``size`` labelled predictions (of one model version)."""
        t = predictions_table.c
        query = (
            select(t.label, t.prediction, t.probabilities)
            .where(t.label.is_not(None))
            .order_by(t.id.desc())
            .limit(size)
        )
        if model_version is not None:
            query = query.where(t.model_version == model_version)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        labels = [json.loads(r.label) for r in rows]
        preds = [json.loads(r.prediction) for r in rows]
        probas = [json.loads(r.probabilities) for r in rows if r.probabilities is not None]
        return labels, preds, probas if rows and len(probas) == len(rows) else None

    def window(
        self, size: int, max_age_seconds: float | None = None, now: float | None = None,
        model_version: str | None = None, outcomes: tuple[str, str] | None = None,
    ) -> pd.DataFrame:
        """The latest ``size`` predictions (optionally only those newer than ``max_age_seconds``, only those of
        ``model_version``), oldest first.

        Columns: the features, ``prediction`` and ``created_at``; with ``outcomes`` (two column names) also the
        rows' probabilities and labels (None where absent), read in the same query so they match the rows.
        """
        t = predictions_table.c
        columns = [t.created_at, t.features, t.prediction] + ([t.probabilities, t.label] if outcomes else [])
        query = select(*columns).order_by(t.id.desc()).limit(size)
        if model_version is not None:
            query = query.where(t.model_version == model_version)
        if max_age_seconds is not None:
            query = query.where(t.created_at >= (now or time.time()) - max_age_seconds)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).all())
        rows.reverse()
        frame = pd.DataFrame.from_records([json.loads(r.features) for r in rows])
        frame["prediction"] = [json.loads(r.prediction) for r in rows]
        frame["created_at"] = [r.created_at for r in rows]
        if outcomes:
            frame[outcomes[0]] = [None if r.probabilities is None else json.loads(r.probabilities) for r in rows]
            frame[outcomes[1]] = [None if r.label is None else json.loads(r.label) for r in rows]
        return frame

    def dispose(self) -> None:
        self.engine.dispose()
        if "_sqlite_autocommit" in self.__dict__:
            self._sqlite_autocommit.dispose()


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
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self._queue: queue.Queue[PredictionRow | LabelUpdate] = queue.Queue(maxsize=queue_size)
        self._pending_ids: dict[str, Any] = {}  # request_id -> label queued for it (or _NO_LABEL), until written
        self._lock = threading.Lock()
        # Held by every producer around its puts: a label batch checks the free room and queues under it, so it is
        # queued whole or not at all (only the writer takes items off, which only frees room).
        self._put_lock = threading.Lock()
        self._pending = 0  # rows taken off the queue but not yet committed
        self._lookup_failing = False  # logs a failing request_id lookup once per outage, not once per request
        self._labels_queued = 0  # label updates queued or in the writer's hands, not yet written or dropped
        # request_id -> the newest label update queued for it, until written or dropped: a label that replaces it
        # meanwhile is compared with it, not with the older label in the table
        self._queued_labels: dict[str, LabelUpdate] = {}
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.labels_dropped = 0
        self.schema_ready = False
        self.database_up = True
        self._stopping = threading.Event()
        # Set by a producer once a full batch is queued, and by stop(): the writer otherwise sleeps a flush
        # interval and takes what is queued, so it is not woken (and does not take the GIL) once per request.
        self._full = threading.Event()
        self._thread: threading.Thread | None = None

    # -- request path -------------------------------------------------------------------------------------------
    def enqueue(self, rows: list[PredictionRow]) -> int:
        """Queue rows for writing without ever blocking; returns how many were dropped because the queue was full."""
        dropped = 0
        with self._put_lock:
            for row in rows:
                with self._lock:
                    self._pending_ids[row.request_id] = _NO_LABEL
                try:
                    self._queue.put_nowait(row)
                except queue.Full:
                    dropped += 1
                    with self._lock:
                        self._pending_ids.pop(row.request_id, None)
            self._wake_if_full()
        if dropped:
            with self._lock:
                self.dropped += dropped
            log.warning("prediction log queue full: dropped %d rows", dropped)
        return dropped

    def pending_label(self, request_id: str) -> tuple[bool, Any]:
        """(whether the prediction or a label for it is still queued, the newest label queued for it or None)."""
        with self._lock:
            update = self._queued_labels.get(request_id)
            if update is not None:
                return True, update.label
            if request_id not in self._pending_ids:
                return False, None
            label = self._pending_ids[request_id]
        return True, None if label is _NO_LABEL else label

    def labels_known(self, request_ids: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Ids that match no logged prediction (queued or written), and the current label of those that do.
        Raises DatabaseUnavailable when the table cannot be read; logged once per outage."""
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
                    log.error("feedback: request_id lookup failed, answering 503 until the database is back: %s",
                              str(exc).splitlines()[0])
                raise DatabaseUnavailable("database unavailable: request_ids cannot be looked up; retry later") from exc
            if self._lookup_failing:
                with self._lock:
                    recovered, self._lookup_failing = self._lookup_failing, False
                if recovered:
                    log.warning("feedback: request_id lookup works again")
        unknown = [rid for rid in request_ids if rid not in current]
        return unknown, current

    def enqueue_labels(self, updates: list[LabelUpdate]) -> bool:
        """Queue label updates (ordered after the predictions they label), all of them or, when they do not all fit
        in the queue, none (False: the caller answers 503 and nothing of the batch is queued)."""
        with self._put_lock:
            if self._queue.maxsize > 0 and self._queue.maxsize - self._queue.qsize() < len(updates):
                return False
            with self._lock:
                for update in updates:
                    if update.request_id in self._pending_ids:
                        self._pending_ids[update.request_id] = update.label
                    self._queued_labels[update.request_id] = update
                self._labels_queued += len(updates)
            for update in updates:
                self._queue.put_nowait(update)  # cannot be full: room was checked under the producers' lock
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
            labels_left = self._labels_queued
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
            self._labels_queued -= len(labels)
            for u in labels:
                if self._queued_labels.get(u.request_id) is u:  # no newer label queued for it meanwhile
                    del self._queued_labels[u.request_id]
            self._pending -= len(batch)
            for r in predictions:
                self._pending_ids.pop(r.request_id, None)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        while rows:
            try:
                self.store.insert(rows)
                return
            except Exception as exc:
                if not self._is_duplicate(exc):
                    raise
                # A batch whose commit succeeded although the client saw an error: keep only the missing rows.
                rows = self.store.without_existing(rows)

    def _persist(self, items: list[Any], write: Any, what: str) -> int:
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
                self._until_written(lambda item=item: write([item]), what)
            except _Permanent as exc:
                refused += 1
                log.error("prediction log: %s row refused by the database and dropped: %s", what, exc)
        return refused

    def _until_written(self, write: Any, what: str) -> None:
        backoff = 0.1
        while True:
            try:
                if not self.schema_ready:
                    # The database may have been down at start-up, or the table dropped since: (re)create it here.
                    self.store.create_schema()
                    self.schema_ready = True
                write()
                break
            except Exception as exc:
                if self._is_missing_table(exc):
                    self.schema_ready = False
                elif not self._is_transient(exc):
                    self._mark_up()  # the database answered: it is up, it just refuses this row
                    raise _Permanent(str(exc)) from exc
                self.write_errors += 1
                if self.database_up:
                    log.error("prediction log: %s write failed, retrying with backoff: %s", what, exc)
                self.database_up = False
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        self._mark_up()

    def _mark_up(self) -> None:
        if not self.database_up:
            log.warning("prediction log: database reachable again")
        self.database_up = True

    @staticmethod
    def _is_missing_table(exc: BaseException) -> bool:
        message = str(exc).lower()
        return "no such table" in message or ("relation" in message and "does not exist" in message)

    @staticmethod
    def _is_transient(exc: BaseException) -> bool:
        """Connection-level trouble worth waiting out, as opposed to a row the database will never accept."""
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                            sa_exc.TimeoutError, ConnectionError, TimeoutError)):
            return True
        return bool(getattr(exc, "connection_invalidated", False))

    @staticmethod
    def _is_duplicate(exc: Exception) -> bool:
        message = str(exc).lower()
        return "unique" in message or "duplicate" in message
