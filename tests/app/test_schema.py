"""Processes of one deployment starting together create the tables once, whoever comes first.

Every worker of ``--workers N`` and every replica on a shared PostgreSQL runs the schema step at start-up; all of
them find the tables missing at once. The losers' CREATE used to fail ("table predictions already exists" on
SQLite, a duplicate row type on PostgreSQL), which killed a worker and with it the whole server.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from exporter.db import Database, is_schema_race, metadata

PROCESSES = 6


def _start_together(url: str) -> list[str]:
    """Every "process" (a Database of its own: its own engine and connections) runs the schema step at once."""
    dbs = [Database(url) for _ in range(PROCESSES)]
    barrier = threading.Barrier(PROCESSES)
    errors: list[str] = []

    def start(db: Database) -> None:
        barrier.wait()
        try:
            db.ensure_schema()
        except Exception as exc:
            errors.append(str(exc).splitlines()[0])

    threads = [threading.Thread(target=start, args=(db,)) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(db.schema_ready for db in dbs) or errors
    for db in dbs:
        db.dispose()
    return errors


def _tables(url: str) -> set[str]:
    db = Database(url)
    try:
        return set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()


def test_sqlite_workers_starting_together_create_the_tables_once(tmp_path: Path) -> None:
    for round_ in range(5):  # the race was lost in every round before the fix
        url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
        assert _start_together(url) == []
        assert _tables(url) == set(metadata.tables)


def test_postgres_replicas_starting_together_create_the_tables_once(postgres_url: str) -> None:
    for _ in range(3):
        assert _start_together(postgres_url) == []
        assert _tables(postgres_url) >= set(metadata.tables)
        db = Database(postgres_url)
        metadata.drop_all(db.engine)
        db.dispose()


@pytest.mark.parametrize("message", ["(sqlite3.OperationalError) no such column: x",
                                     "(psycopg.errors.UndefinedColumn) column \"x\" does not exist"])
def test_other_schema_errors_are_not_taken_for_the_race(message: str) -> None:
    assert not is_schema_race(Exception(message))
