"""Queries of the deployment's tables: the predictions (rows, labels, windows) and the stored drift runs.

A stored run is JSON plus the gzipped HTML report, not a pickle: the database is shared, and reading it must not
run code. Each result type reads its own part (``from_dict``), tolerating fields it does not know and defaulting
those it lacks, so processes of two versions can share the table during a rolling upgrade.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import pandas as pd
import uuid_utils
from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from exporter.db import LABELLED_INDEX, Database, make_engine, pending_events_table, predictions_table, runs_table
from exporter.drift import DriftResult
from exporter.estimation import EstimateResult
from exporter.quality import QualityResult
from exporter.report import CachedReport

log = logging.getLogger(__name__)

KEEP_RUNS = 20  # the newest runs kept in drift_runs (a bounded history)


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


PREDICTION_COLUMNS = ("request_id", "created_at", "model_version", "features", "prediction", "probabilities")


# Most rows per INSERT statement on SQLite (``VALUES (...), (...)``), where SQLite's limit on bound values allows
# as many: the writer's whole batch is one statement, so its thread takes the GIL back from the request threads a
# handful of times per batch rather than once per row.
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


class DatabaseUnavailable(Exception):
    """The database could not answer a request's query; the client should retry later."""


class PredictionStore:
    """Reads and writes of the predictions table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def url(self) -> str:
        return self.db.url

    def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` in one transaction; a column a row leaves out is NULL.

        On SQLite, up to ``sqlite_rows_per_statement`` rows are one INSERT statement (``VALUES (...), (...)``) run in
        autocommit mode: one statement is its own transaction, with no BEGIN or COMMIT around it. More rows are
        written in such chunks inside one transaction. Elsewhere the INSERT, compiled once, is run by the driver's
        executemany, which skips SQLAlchemy's per-row parameter processing."""
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
        """``rows`` less those whose request_id is already in the table."""
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

    def labelled_window(
        self, size: int, model_version: str | None = None
    ) -> tuple[list[Any], list[Any], list[dict[str, float]] | None]:
        """Labels, predictions and probabilities of the latest ``size`` labelled predictions (of one model version)."""
        rows = self.labelled_rows(size, model_version)
        return rows.labels, rows.predictions, rows.probabilities

    def labelled_rows(self, size: int, model_version: str | None = None, features: bool = False) -> LabelledRows:
        """The latest ``size`` labelled predictions (of one model version), newest first; with ``features`` also each
        row's features (drift.segments: the realized quality per segment), read in the same query."""
        t = predictions_table.c
        columns = [t.label, t.prediction, t.probabilities] + ([t.features] if features else [])
        query: Any = select(*columns).where(t.label.is_not(None)).order_by(t.id.desc()).limit(size)
        if model_version is not None:
            query = query.where(t.model_version == model_version)
            if self.db.backend == "sqlite":
                # Without statistics SQLite picks between this index and ix_predictions_version_id (the same
                # columns) by the order they were created in; only this one skips the unlabelled rows.
                query = text(f"SELECT label, prediction, probabilities{', features' if features else ''} FROM "
                             f"predictions INDEXED BY {LABELLED_INDEX} WHERE label IS NOT NULL AND model_version = "
                             ":version ORDER BY id DESC LIMIT :size").bindparams(version=model_version, size=size)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        probas = [json.loads(r.probabilities) for r in rows if r.probabilities is not None]
        return LabelledRows(
            labels=[json.loads(r.label) for r in rows],
            predictions=[json.loads(r.prediction) for r in rows],
            probabilities=probas if rows and len(probas) == len(rows) else None,
            features=[json.loads(r.features) for r in rows] if features else None,
        )

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
        """The store's own connections (the Database's engine is its owner's to dispose)."""
        if "_sqlite_autocommit" in self.__dict__:
            self._sqlite_autocommit.dispose()




@dataclass(frozen=True)
class LabelledRows:
    labels: list[Any]
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None  # None unless every row has them
    features: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class StoredRun:
    """One drift run as the ``drift_runs`` table keeps it."""

    id: int
    created_at: float
    drift: DriftResult
    quality: QualityResult | None
    report: CachedReport | None
    estimate: EstimateResult | None = None


class UnreadableRun(Exception):
    """A stored run this version cannot read (a damaged document, or one a much newer version wrote)."""


class RunStore:
    """The ``drift_runs`` table of one model version: each run's result, the newest KEEP_RUNS kept."""

    def __init__(self, db: Database, model_version: str) -> None:
        self.db = db
        self.model_version = model_version

    def save(self, drift: DriftResult, quality: QualityResult | None, report: CachedReport | None,
             created_at: float | None = None, estimate: EstimateResult | None = None) -> int:
        doc = {
            "drift": asdict(drift),
            "quality": None if quality is None else asdict(quality),
            "estimate": None if estimate is None else asdict(estimate),
            "report": None if report is None else report.header(),
        }
        row = {"model_version": self.model_version, "created_at": time.time() if created_at is None else created_at,
               "result": json.dumps(doc), "report": None if report is None else report.gzipped}
        with self.db.engine.begin() as conn:
            key = conn.execute(runs_table.insert().values(**row)).inserted_primary_key
            assert key is not None  # an autoincrement primary key
            run_id = int(key[0])
            conn.execute(runs_table.delete().where(runs_table.c.model_version == self.model_version,
                                                   runs_table.c.id <= run_id - KEEP_RUNS))
        return run_id

    def newest_id(self) -> int | None:
        with self.db.engine.connect() as conn:
            return conn.execute(select(runs_table.c.id).where(runs_table.c.model_version == self.model_version)
                                .order_by(runs_table.c.id.desc()).limit(1)).scalar()

    def load(self, run_id: int) -> StoredRun | None:
        """The run (None when it is gone); UnreadableRun when its document cannot be read."""
        with self.db.engine.connect() as conn:
            row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings().first()
        if row is None:
            return None
        try:
            return self.parse(row)
        except Exception as exc:
            raise UnreadableRun(f"drift run {run_id}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def parse(row: Any) -> StoredRun:
        doc = json.loads(row["result"])
        quality, estimate, header = doc.get("quality"), doc.get("estimate"), doc.get("report")
        report = None
        if header is not None and row["report"] is not None:
            report = CachedReport.from_stored(bytes(row["report"]), header)
        return StoredRun(int(row["id"]), float(row["created_at"]), DriftResult.from_dict(doc["drift"]),
                         None if quality is None else QualityResult.from_dict(quality), report,
                         None if estimate is None else EstimateResult.from_dict(estimate))


@dataclass(frozen=True)
class PendingEvent:
    kind: str
    data: str  # JSON
    created_at: float | None


class EventPairs:
    """Halves of request/response event pairs in the pending_events table, where every process of a deployment
    finds them: ``offer`` keeps a half, and hands back both once its partner is there, to exactly one caller."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def offer(self, event_id: str, kind: str, data: str, created_at: float | None,
              now: float) -> dict[str, PendingEvent] | None:
        """Keep this half (a copy delivered again is kept once); both halves by kind when the pair is complete
        and this call took it, else None."""
        t = pending_events_table
        keep = self._keep(event_id, PendingEvent(kind, data, created_at), now)
        both = select(func.count()).select_from(t).where(t.c.event_id == event_id).scalar_subquery()
        # Two processes holding the two halves both try; the one whose DELETE removes the rows has the pair.
        take = delete(t).where(t.c.event_id == event_id, both == 2).returning(t.c.kind, t.c.data, t.c.created_at)
        with self.db.engine.begin() as conn:
            conn.execute(keep)
        with self.db.engine.begin() as conn:
            rows = conn.execute(take).all()
        if len(rows) != 2:
            return None
        return {r.kind: PendingEvent(r.kind, r.data, r.created_at) for r in rows}

    def put_back(self, event_id: str, halves: list[PendingEvent], now: float) -> None:
        """Keep both halves of a pair that could not be logged (a full queue), without taking them: the sender's
        retry of either half pairs them again."""
        with self.db.engine.begin() as conn:
            for half in halves:
                conn.execute(self._keep(event_id, half, now))

    def _keep(self, event_id: str, half: PendingEvent, now: float) -> Any:
        """The INSERT of one half; a copy already there (a redelivery) is left as it is."""
        dialect_insert = sqlite_insert if self.db.backend == "sqlite" else pg_insert
        return dialect_insert(pending_events_table).values(
            event_id=event_id, kind=half.kind, received_at=now, created_at=half.created_at, data=half.data,
        ).on_conflict_do_nothing()

    def expire(self, older_than: float) -> int:
        """Delete the halves received before ``older_than``; how many (each counted by one process only)."""
        t = pending_events_table
        with self.db.engine.begin() as conn:
            return len(conn.execute(delete(t).where(t.c.received_at < older_than).returning(t.c.event_id)).all())

    def waiting(self) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(pending_events_table)).scalar_one())
