"""The database of a deployment: one MetaData with every table, its engines, one schema step, and its health.

Every process of a deployment (the workers of ``exporter serve --workers N``, replicas sharing a PostgreSQL
``database_url``) shares these tables. ``Database.ensure_schema`` creates whatever is missing and is safe to call
from any process at any time, so a process that started while the database was down creates the tables once it
answers, whoever notices first (the readiness check, the writer, the drift job).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)

metadata = MetaData()
LABELLED_INDEX = "ix_predictions_labelled_version_id"
# A caller's own id (/log: up to 100 characters) with ":<i>" for the i-th row of a multi-row event. Tables made
# by earlier versions had 36 (a UUID): ensure_schema widens them on PostgreSQL (SQLite does not enforce it).
REQUEST_ID_LENGTH = 112
predictions_table = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(REQUEST_ID_LENGTH), nullable=False, unique=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("model_version", String(64), nullable=False),
    Column("features", Text, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("probabilities", Text, nullable=True),
    Column("label", Text, nullable=True),
    # Not indexed: no query reads by it. Tables made by earlier versions keep their ix_predictions_labelled_at.
    Column("labelled_at", Float, nullable=True),
    # The drift window reads the serving version's latest rows: without this, rows of an old version at the end
    # of the table would be scanned past one by one after an upgrade.
    Index("ix_predictions_version_id", "model_version", "id"),
    # The quality window reads the latest labelled rows. Partial, so that an insert (label NULL) never touches it;
    # without it, a table with few or no labels is scanned whole at every run.
    Index(LABELLED_INDEX, "model_version", "id",
          sqlite_where=text("label IS NOT NULL"), postgresql_where=text("label IS NOT NULL")),
)
runs_table = Table(
    "drift_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_version", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("result", Text, nullable=False),  # JSON: drift, quality, estimated quality, the report's column verdicts
    Column("report", LargeBinary, nullable=True),  # the gzipped HTML report
)
# Halves of payload-logger event pairs (/log/cloudevents) waiting for their partner. In the database, not in a
# process: a request and its response may reach different workers or replicas.
pending_events_table = Table(
    "pending_events",
    metadata,
    Column("event_id", String(REQUEST_ID_LENGTH), primary_key=True),
    Column("kind", String(8), primary_key=True),  # request or response
    Column("received_at", Float, nullable=False, index=True),
    Column("created_at", Float, nullable=True),  # the event's time (ce-time), when it has one
    Column("data", Text, nullable=False),  # the event's JSON body
)

# /readyz may be asked by several probes and load balancers at once: one ping per interval answers them all.
CHECK_INTERVAL_SECONDS = 1.0
SCHEMA_ATTEMPTS = 10


def make_engine(url: str, autocommit: bool = False) -> Engine:
    """SQLite in WAL mode (readers never block the writer), or any SQLAlchemy URL such as postgresql+psycopg://.
    ``autocommit`` (SQLite only): the driver issues no BEGIN or COMMIT; each statement is its own transaction."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            with contextlib.suppress(OSError):  # Database.check_writable reports what is wrong
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


class StoreNotWritable(Exception):
    """An SQLite database that cannot be created or written: waiting will not help."""


class Database:
    """One database URL: its engine, the schema step, and whether the database answered last time it was asked.

    ``up`` is the last thing anyone learnt (a write, a query, a ping); the request path reads it so as not to
    wait for a connection timeout while the database is known to be down. ``check`` asks the database itself,
    so readiness reflects the present rather than the last write."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.backend = make_url(url).get_backend_name()
        self.schema_ready = False
        self.up = True
        self._lock = threading.Lock()
        self._checked_at = -CHECK_INTERVAL_SECONDS
        self._checked = False

    def ensure_schema(self) -> None:
        """Create every missing table and index (idempotent; raises while the database cannot be reached)."""
        if self.schema_ready:
            return
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                self._create_missing()
                break
            except sa_exc.DBAPIError as exc:
                # Processes starting together (--workers, replicas) all find a table missing and create it: the
                # losers' CREATE fails, and the next look finds it there.
                if attempt == SCHEMA_ATTEMPTS - 1 or not is_schema_race(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        if self.backend == "postgresql":
            self._widen_request_id()
        self.schema_ready = True

    def _create_missing(self) -> None:
        metadata.create_all(self.engine)
        for table in metadata.tables.values():  # create_all skips indexes added to a table that already exists
            for index in table.indexes:
                index.create(self.engine, checkfirst=True)

    def _widen_request_id(self) -> None:
        column = next(c for c in inspect(self.engine).get_columns("predictions") if c["name"] == "request_id")
        length = getattr(column["type"], "length", None)
        if length is not None and length < REQUEST_ID_LENGTH:
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE predictions ALTER COLUMN request_id TYPE VARCHAR({REQUEST_ID_LENGTH})"))
            log.warning("predictions.request_id widened from %d to %d characters", length, REQUEST_ID_LENGTH)

    def try_ensure_schema(self) -> bool:
        try:
            self.ensure_schema()
        except Exception as exc:
            self.mark(False, exc)
            return False
        self.mark(True)
        return True

    def check(self) -> bool:
        """Ping the database now (at most once per CHECK_INTERVAL_SECONDS) and create the tables if they are
        missing; whether it answered."""
        with self._lock:
            if time.monotonic() - self._checked_at < CHECK_INTERVAL_SECONDS:
                return self._checked
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception as exc:
                self.mark(False, exc)
                ok = False
            else:
                ok = self.try_ensure_schema()  # returns at once once the tables exist; marks the database up
            self._checked, self._checked_at = ok, time.monotonic()
            return ok

    def mark(self, up: bool, exc: BaseException | None = None) -> None:
        """Record what a query just learnt about the database; a change is logged once."""
        if up == self.up:
            return
        self.up = up
        if up:
            log.warning("database reachable again")
        else:
            log.error("database unreachable: %s", first_line(exc) if exc is not None else "?")

    def check_writable(self) -> None:
        """For SQLite, create the file and tables and write to it now: a file that cannot be written will not get
        better by waiting, unlike a database server that is down (its rows are buffered until it is up)."""
        parsed = make_url(self.url)
        if self.backend != "sqlite":
            return
        try:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
            self.ensure_schema()
            with self.engine.begin() as conn:  # a write that changes nothing; fails on a read-only file
                conn.execute(predictions_table.delete().where(predictions_table.c.id == -1))
        except (OSError, sa_exc.SQLAlchemyError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StoreNotWritable(
                f"cannot write the SQLite database {parsed.database} ({reason}): set database_url "
                "(or EXPORTER_DATABASE_URL) to a writable location"
            ) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def first_line(exc: BaseException) -> str:
    """A database error's first line: the lines after it repeat the statement and its parameters."""
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def is_missing_table(exc: BaseException) -> bool:
    message = str(exc).lower()
    return "no such table" in message or ("relation" in message and "does not exist" in message)


def is_schema_race(exc: BaseException) -> bool:
    """A CREATE that lost to another process creating the same table or index: SQLite's "already exists" or a
    lock taken by the winner, PostgreSQL's duplicate relation or duplicate row type."""
    message = str(exc).lower()
    return ("already exists" in message or "database is locked" in message
            or "pg_type_typname_nsp_index" in message)


def is_transient(exc: BaseException) -> bool:
    """Connection-level trouble worth waiting out, as opposed to a statement the database will never accept."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                        sa_exc.TimeoutError, ConnectionError, TimeoutError)):
        return True
    return bool(getattr(exc, "connection_invalidated", False))
