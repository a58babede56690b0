"""The job lock of a deployment: which one of its processes runs the drift job.

A deployment is every process logging to one database for one model version: the workers of ``exporter serve
--workers N``, and replicas sharing a PostgreSQL ``database_url``. The lock is a PostgreSQL session advisory lock
(held by one dedicated connection; the server frees it when the holder's connection dies, so a SIGKILLed leader
is replaced at the next tick of another process) or, for SQLite, an ``flock`` on a file beside the database
(freed by the kernel when the holder dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from exporter.db import first_line

log = logging.getLogger(__name__)


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
        self._failing = False  # logs a failing connection once per outage, not once per tick

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("drift job lock: cannot reach the database to take the lock: %s", first_line(exc))
        self._failing = True

    def acquire(self) -> bool:
        if self._conn is not None:
            try:  # still ours while the session lives; a broken connection has lost it
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception as exc:
                log.warning("drift job lock: lost the database session (%s); the job pauses until the lock is "
                            "retaken", first_line(exc))
                self._close()
        try:
            conn = self._engine.connect()
        except Exception as exc:
            self._failed(exc)
            return False
        try:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar())
        except Exception as exc:
            self._failed(exc)
            held = False
        else:
            self._failing = False
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
