"""One deployment, one drift job, one result served by every process.

A deployment is every process logging to one database for one model version: the workers of ``exporter serve
--workers N``, and replicas sharing a PostgreSQL ``database_url``. At each tick every process asks for the job
lock; the one that holds it runs the job and stores the run in the ``drift_runs`` table, the others run nothing
(and keep no drift worker process). Every process serves the newest stored run, read again whenever a newer one
is in the table, so ``/metrics``, ``/drift`` and ``/monitoring`` agree whichever process answers.

The lock is a PostgreSQL session advisory lock (held by one dedicated connection; the server frees it when the
holder's connection dies, so a SIGKILLed leader is replaced at the next tick of another process) or, for SQLite,
an ``flock`` on a file beside the database (freed by the kernel when the holder dies). The stored run is JSON
plus the gzipped HTML report, not a pickle: the database is shared, and reading it must not run code.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, Text, create_engine, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from exporter.drift import DriftResult, FeatureDrift, PredictionDrift
from exporter.estimation import EstimateResult
from exporter.multivariate import MultivariateDrift
from exporter.quality import QualityResult
from exporter.report import CachedReport, ColumnVerdict

log = logging.getLogger(__name__)

KEEP_RUNS = 20  # the newest runs kept in drift_runs (a bounded history)
CHECK_SECONDS = 1.0  # how often a process looks for a newer stored run
metadata = MetaData()
runs_table = Table(
    "drift_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_version", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("result", Text, nullable=False),  # JSON: drift, quality, estimated quality, the report's column verdicts
    Column("report", LargeBinary, nullable=True),  # the gzipped HTML report
)


class JobLock(Protocol):
    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class FileJobLock:
    """``flock`` on a file beside an SQLite database: one holder among the processes of this host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ProcessJobLock:
    """Always held: a deployment of one process (databases with neither advisory locks nor a local file)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


class AdvisoryJobLock:
    """A PostgreSQL session advisory lock held on one dedicated connection (autocommit, outside the pool)."""

    def __init__(self, url: str, key: int) -> None:
        self.key = key
        self._engine: Engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5},
                                             isolation_level="AUTOCOMMIT")
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        if self._conn is not None:
            try:  # still ours while the session lives; a broken connection has lost it
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("drift job lock: lost the database session; the job pauses until the lock is retaken")
                self._close()
        try:
            conn = self._engine.connect()
        except Exception:
            return False
        try:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar())
        except Exception:
            held = False
        if held:
            self._conn = conn
        else:
            conn.close()
        return held

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self._close()
        self._engine.dispose()

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()  # type: ignore[union-attr]
        self._conn = None


def job_lock(database_url: str, model_name: str, model_version: str) -> JobLock:
    """The lock of this deployment: one per database and model version."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        digest = hashlib.sha256(f"exporter drift job\0{model_name}\0{model_version}".encode()).digest()
        return AdvisoryJobLock(database_url, int.from_bytes(digest[:8], "big", signed=True))
    if url.get_backend_name() == "sqlite" and url.database:
        return FileJobLock(Path(f"{url.database}.drift-lock"))
    log.warning("drift job: no cross-process lock for %s databases; run one process per deployment",
                url.get_backend_name())
    return ProcessJobLock()


@dataclass(frozen=True)
class StoredRun:
    id: int
    created_at: float
    drift: DriftResult
    quality: QualityResult | None
    report: CachedReport | None
    estimate: EstimateResult | None = None


class RunStore:
    """The ``drift_runs`` table: each run's result, the newest KEEP_RUNS kept."""

    def __init__(self, engine: Engine, model_version: str) -> None:
        self.engine = engine
        self.model_version = model_version

    def create(self) -> None:
        metadata.create_all(self.engine)

    def save(self, drift: DriftResult, quality: QualityResult | None, report: CachedReport | None,
             created_at: float | None = None, estimate: EstimateResult | None = None) -> int:
        doc = {
            "drift": asdict(drift),
            "quality": None if quality is None else asdict(quality),
            "estimate": None if estimate is None else asdict(estimate),
            "report": None if report is None else {"built_at": report.built_at, "window_rows": report.window_rows,
                                                   "columns": {k: asdict(v) for k, v in report.columns.items()}},
        }
        row = {"model_version": self.model_version, "created_at": time.time() if created_at is None else created_at,
               "result": json.dumps(doc),
               "report": None if report is None else report.gzipped}
        with self.engine.begin() as conn:
            key = conn.execute(runs_table.insert().values(**row)).inserted_primary_key
            assert key is not None  # an autoincrement primary key
            run_id = int(key[0])
            conn.execute(runs_table.delete().where(runs_table.c.model_version == self.model_version,
                                                   runs_table.c.id <= run_id - KEEP_RUNS))
        return run_id

    def newest_id(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(runs_table.c.id).where(runs_table.c.model_version == self.model_version)
                                .order_by(runs_table.c.id.desc()).limit(1)).scalar()

    def load(self, run_id: int) -> StoredRun | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings().first()
        if row is None:
            return None
        doc = json.loads(row["result"])
        d = doc["drift"]
        drift = DriftResult(
            computed_at=d["computed_at"], window_rows=d["window_rows"], min_rows=d["min_rows"],
            drift_share_threshold=d["drift_share_threshold"],
            features={k: FeatureDrift(**v) for k, v in d["features"].items()},
            prediction=None if d["prediction"] is None else PredictionDrift(**d["prediction"]),
            skipped_reason=d["skipped_reason"],
            multivariate=None if d.get("multivariate") is None else MultivariateDrift(**d["multivariate"]),
        )
        quality = None if doc["quality"] is None else QualityResult(**doc["quality"])
        estimate = None if doc.get("estimate") is None else EstimateResult.from_dict(doc["estimate"])
        report = None
        if doc["report"] is not None and row["report"] is not None:
            r = doc["report"]
            report = CachedReport(bytes(row["report"]), r["built_at"], r["window_rows"],
                                  {k: ColumnVerdict(**v) for k, v in r["columns"].items()})
        return StoredRun(int(row["id"]), float(row["created_at"]), drift, quality, report, estimate)


class Deployment:
    """This process's part in its deployment: whether it runs the job, and the newest run it serves."""

    def __init__(self, lock: JobLock, runs: RunStore) -> None:
        self.lock = lock
        self.runs = runs
        self.served_id: int | None = None
        self.leader = False
        self._serving = threading.Lock()
        self._checked = -CHECK_SECONDS

    def lead(self) -> bool:
        """Take or keep the job lock; False when another process of the deployment holds it."""
        held = self.lock.acquire()
        if held != self.leader:
            log.info("drift job: %s", "this process runs it" if held else "another process of the deployment runs it")
        self.leader = held
        return held

    def serve_newest(self, publish: Callable[[StoredRun], None], force: bool = False) -> None:
        """Hand the newest stored run to ``publish`` if it is newer than the one served (nothing when the database
        is down). One at a time: a request thread and the job's thread never publish out of order."""
        with self._serving:
            if not force and time.monotonic() - self._checked < CHECK_SECONDS:  # requests ask often: once a second
                return
            self._checked = time.monotonic()
            try:
                newest = self.runs.newest_id()
                if newest is None or (self.served_id is not None and newest <= self.served_id):
                    return
                run = self.runs.load(newest)
            except Exception as exc:
                log.debug("drift runs unreadable: %s", exc)
                return
            if run is not None:
                publish(run)
                self.served_id = run.id

    def close(self) -> None:
        self.lock.release()
