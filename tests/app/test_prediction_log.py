"""The prediction log on a real SQLite file: batching, WAL, bounded queue, counters that tell the truth."""

from __future__ import annotations

import datetime
import enum
import json
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text

from exporter.db import Database
from exporter.prediction_log import PredictionLog
from exporter.store import (
    SQLITE_INSERT_ROWS,
    LabelUpdate,
    PredictionRow,
    PredictionStore,
    _json,
    new_request_id,
)
from tests.helpers import wait_until


def rows(n: int, start: int = 0) -> list[PredictionRow]:
    return [PredictionRow(f"id{i}", time.time(), "1", {"a": float(i), "b": "x"}, "A", {"A": 0.9, "B": 0.1})
            for i in range(start, start + n)]


def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(Database(f"sqlite:///{tmp_path / 'log.db'}"))
    s.db.ensure_schema()
    return s


def test_batches_and_flushes_on_stop(tmp_path: Path) -> None:
    s = store(tmp_path)
    inserts: list[int] = []
    original = s.insert
    s.insert = lambda batch: (inserts.append(len(batch)), original(batch))[1]  # type: ignore[method-assign]
    log = PredictionLog(s, queue_size=10_000, batch_size=100, flush_interval=5.0)
    log.start()
    log.enqueue(rows(1050))
    log.stop(timeout=30)
    assert s.count() == 1050 and log.written == 1050 and log.dropped == 0 and log.queued == 0
    # batched, not one INSERT per row: batches of at most 100 taken, each written by one insert
    assert max(inserts) == 100 and len(inserts) <= 11
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    s = store(tmp_path)
    inside, release, returned = threading.Event(), threading.Event(), threading.Event()
    original = s.insert

    def held(batch: list[dict[str, object]]) -> None:  # a database that does not answer until released
        inside.set()
        release.wait(30)
        original(batch)
        returned.set()

    s.insert = held  # type: ignore[method-assign]
    log = PredictionLog(s, queue_size=50, batch_size=10, flush_interval=0.05)
    # writer not started: nothing drains the queue
    dropped = log.enqueue(rows(80))
    assert dropped == 30 and log.dropped == 30 and log.queued == 50
    log.start()
    try:
        assert inside.wait(10), "the writer did not take a batch"  # it holds 10 rows, blocked in the insert
        outcome: list[int] = []
        producer = threading.Thread(target=lambda: outcome.append(log.enqueue(rows(20, start=100))))
        producer.start()
        producer.join(10)
        # enqueue returned while the writer was still blocked on the database: it never waits for it
        assert not producer.is_alive() and not returned.is_set() and s.count() == 0
        assert outcome == [10] and log.dropped == 40 and log.queued == 60  # 50 queued, 10 in the writer's hands
    finally:
        release.set()
    log.stop(timeout=30)
    assert s.count() == 60 and log.written == 60 and log.dropped == 40


def test_database_outage_buffers_then_writes_everything(tmp_path: Path) -> None:
    s = store(tmp_path)
    down = threading.Event()
    down.set()
    original = s.insert

    def flaky(batch: list[dict[str, object]]) -> None:
        if down.is_set():
            raise ConnectionError("database is down")
        original(batch)

    s.insert = flaky  # type: ignore[method-assign]
    log = PredictionLog(s, queue_size=1000, batch_size=20, flush_interval=0.05, max_backoff=0.2)
    log.start()
    log.enqueue(rows(200))
    wait_until(lambda: log.write_errors >= 3, 10, what="three failed writes (a few backoff periods)")
    assert not log.database_up and log.write_errors > 0 and s.count() == 0 and log.queued == 200
    down.clear()
    log.stop(timeout=30)
    assert log.database_up and s.count() == 200 and log.written == 200 and log.dropped == 0


def test_label_for_a_queued_prediction_lands_after_it(tmp_path: Path) -> None:
    s = store(tmp_path)
    log = PredictionLog(s, batch_size=1000, flush_interval=0.5)
    batch = rows(3)
    log.enqueue(batch)
    assert log.pending_label("id1") == (True, None)
    log.enqueue_labels([LabelUpdate("id1", "B", time.time())])
    assert log.pending_label("id1") == (True, "B")
    log.start()
    log.stop(timeout=30)
    assert s.labels_of(["id1", "id0", "nope"]) == {"id1": "B", "id0": None}
    labels, preds, probas = s.labelled_window(10)
    assert labels == ["B"] and preds == ["A"] and probas == [{"A": 0.9, "B": 0.1}]


def test_a_label_still_queued_for_a_written_prediction_is_its_current_label(tmp_path: Path) -> None:
    s = store(tmp_path)
    log = PredictionLog(s, batch_size=1000, flush_interval=0.5)
    log.enqueue(rows(1))
    log.start()
    log.stop(timeout=30)  # the prediction is written; a second log plays the writer that has not flushed yet
    later = PredictionLog(s, batch_size=1000, flush_interval=0.5)
    later.enqueue_labels([LabelUpdate("id0", "B", time.time())])
    # a label that replaces it before the writer runs is compared with "B", not with the table's empty label
    assert later.current_labels(["id0", "nope"]) == {"id0": "B"}
    later.start()
    later.stop(timeout=30)
    assert later.pending_label("id0") == (False, None)  # written: the table has it now
    assert later.current_labels(["id0"]) == {"id0": "B"}


def test_row_the_database_refuses_is_dropped_and_counted_not_retried_forever(tmp_path: Path) -> None:
    from sqlalchemy import exc as sa_exc

    s = store(tmp_path)
    original = s.insert

    def picky(batch: list[dict[str, object]]) -> None:
        if any(r["request_id"] == "id7" for r in batch):
            raise sa_exc.DataError("INSERT ...", {}, ValueError("value out of range"))
        original(batch)

    s.insert = picky  # type: ignore[method-assign]
    log = PredictionLog(s, batch_size=100, flush_interval=0.05)
    log.start()
    log.enqueue(rows(20))
    unserialisable = PredictionRow("nan-row", time.time(), "1", {"a": float("nan")}, "A", None)
    log.enqueue([unserialisable])
    log.enqueue(rows(5, start=100))
    log.stop(timeout=30)
    assert s.count() == 24
    assert log.written == 24 and log.dropped == 2 and log.queued == 0
    assert log.database_up


def test_table_created_once_the_database_comes_up(tmp_path: Path) -> None:
    s = PredictionStore(Database(f"sqlite:///{tmp_path / 'log.db'}"))  # no ensure_schema(): as if down at start-up
    attempts = 0
    original = s.db.ensure_schema

    def flaky_create() -> None:
        nonlocal attempts
        if not s.db.schema_ready:
            attempts += 1
            if attempts < 3:
                raise ConnectionError("database is down")
        original()

    s.db.ensure_schema = flaky_create  # type: ignore[method-assign]
    log = PredictionLog(s, batch_size=10, flush_interval=0.05, max_backoff=0.1)
    log.start()
    log.enqueue(rows(15))
    log.stop(timeout=30)
    assert attempts == 3 and s.count() == 15 and log.written == 15 and log.database_up
    with s.engine.begin() as conn:  # the table vanishes under a running service
        conn.execute(text("DROP TABLE predictions"))
    log2 = PredictionLog(s, batch_size=10, flush_interval=0.05)
    assert s.db.schema_ready  # as far as this process knows
    log2.start()
    log2.enqueue(rows(4, start=50))
    log2.stop(timeout=30)
    assert s.count() == 4 and log2.written == 4 and log2.dropped == 0


def _traced(engine: Any) -> list[str]:
    """Every SQL statement SQLite runs on ``engine``'s connections, BEGIN and COMMIT issued by the driver included."""
    statements: list[str] = []
    event.listen(engine, "connect", lambda dbapi_conn, _record: dbapi_conn.set_trace_callback(statements.append))
    engine.dispose()  # connections opened before the listener would not be traced
    return statements


def _stored(s: PredictionStore) -> list[Any]:
    with s.engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT request_id, features, prediction, probabilities FROM predictions ORDER BY id")).all())


def test_sqlite_insert_of_a_writer_batch_is_one_statement_without_begin_or_commit(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.sqlite_rows_per_statement == SQLITE_INSERT_ROWS  # SQLite >= 3.32 binds 32766 values
    statements = _traced(s.engine)
    autocommit = _traced(s._sqlite_autocommit)
    batch = [r.as_db() for r in rows(500)]  # the writer's default batch
    for r in batch[::3]:
        del r["probabilities"]  # a column a row leaves out is NULL
    s.insert(batch)
    # One statement holding the 500 rows, in SQLite's autocommit mode: the driver issued no BEGIN and no COMMIT,
    # so the writer thread went through a handful of SQLite calls (each releasing the GIL) for the whole batch.
    assert statements == []
    assert len(autocommit) == 1 and autocommit[0].startswith("INSERT INTO predictions")
    got = _stored(s)
    assert [g[0] for g in got] == [r["request_id"] for r in batch]
    assert [g[1] for g in got] == [r["features"] for r in batch]
    assert [g[3] for g in got] == [r.get("probabilities") for r in batch]
    assert sum(g[3] is None for g in got) == len(batch[::3]) and {g[2] for g in got} == {'"A"'}


def test_sqlite_insert_of_more_rows_than_a_statement_holds_is_one_transaction(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.sqlite_rows_per_statement = 40  # type: ignore[misc]  # as where SQLite binds only 240 values
    statements = _traced(s.engine)
    batch = [r.as_db() for r in rows(95)]
    s.insert(batch)
    inserts = [st for st in statements if st.startswith("INSERT")]
    assert (
        len(inserts) == 3 and [st.upper() for st in statements if not st.startswith("INSERT")] == ["BEGIN ", "COMMIT"]
    )
    assert [g[0] for g in _stored(s)] == [r["request_id"] for r in batch]
    # A row the database refuses (a duplicate request_id) in the last chunk rolls back the earlier chunks too.
    with pytest.raises(Exception, match="UNIQUE"):
        s.insert([r.as_db() for r in rows(90, start=1000)] + [batch[0]])
    assert s.count() == 95


def test_window_is_the_latest_rows_optionally_only_recent_ones(tmp_path: Path) -> None:
    s = store(tmp_path)
    now = 1_000_000.0
    old = [PredictionRow(f"old{i}", now - 3600, "1", {"a": float(i), "b": "x"}, "A", None) for i in range(50)]
    new = [PredictionRow(f"new{i}", now - 10, "1", {"a": float(100 + i), "b": None}, "B", None) for i in range(30)]
    s.insert([r.as_db() for r in old + new])
    window = s.window(40)
    assert len(window) == 40 and window["a"].tolist()[-1] == 129.0  # newest last
    assert window["a"].tolist()[:10] == [float(i) for i in range(40, 50)]
    recent = s.window(40, max_age_seconds=60, now=now)
    assert len(recent) == 30 and set(recent["prediction"]) == {"B"}
    assert recent["b"].isna().all()


def test_json_columns_read_back_as_json_dumps_wrote_them_and_refuse_what_json_refuses() -> None:
    class Size(enum.IntEnum):
        big = 3

    values = [
        {"a": 50.6, "b": "Biscoe", "c": None, "d": True, "e": 0, "f": -1.5e-300, "g": 1e21, "h": "null"},
        {"x": 2.0534544058332405e-08, "y": 0.9999984956128304, "ü": "naïve – “quoted”"},
        "Gentoo", 3, 0.1, None, [1, 2.5, "x", None], {"n": {"deep": [1.0, {"k": "v"}]}},
        np.float64(0.25), {"a": np.float64(1.5)}, Size.big, 2**70,
    ]
    for value in values:
        assert json.loads(_json(value)) == json.loads(json.dumps(value)), value
    for bad in (math.nan, {"a": math.inf}, [1.0, -math.inf], {"a": {"b": math.nan}}):
        with pytest.raises(ValueError):
            _json(bad)
    for unserialisable in (datetime.datetime(2026, 1, 1), {"a": object()}, {1.5: "non-str key"}):
        try:
            expected: Any = json.loads(json.dumps(unserialisable))
        except TypeError:
            with pytest.raises(TypeError):
                _json(unserialisable)
        else:
            assert json.loads(_json(unserialisable)) == expected


def test_request_ids_are_uuid7_hex_in_time_order() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # each lands at the end of the request_id index
    assert all(len(i) == 32 and uuid.UUID(hex=i).version == 7 for i in ids)
    assert abs(int(ids[-1][:12], 16) / 1000 - time.time()) < 5  # its first 48 bits are the Unix time in ms


def test_request_ids_of_a_forked_child_do_not_repeat_its_parents() -> None:
    new_request_id()  # the parent's generator is in use before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_request_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 50 * 32 + 1).decode()  # one write of 1600 bytes: atomic on a pipe
    os.close(read)
    os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(50)]
    child_ids = [child[i:i + 32] for i in range(0, len(child), 32)]
    assert len(child_ids) == 50
    # the bits after the 48-bit timestamp and version nibble are random: the two sequences share none of them
    assert not {i[13:] for i in child_ids} & {i[13:] for i in parent}


def test_an_integrity_error_that_no_retry_can_fix_is_refused_not_retried_forever(tmp_path: Path) -> None:
    """A constraint other than a replayed commit's request_ids (a primary key sequence behind after a restore, say)
    refuses every retry: the rows are refused and counted, and the writer goes on with the next batch."""
    from sqlalchemy import exc as sa_exc

    s = store(tmp_path)
    original = s.insert
    calls = 0

    def behind(batch: list[dict[str, object]]) -> None:
        nonlocal calls
        calls += 1
        if any(str(r["request_id"]).startswith("id") for r in batch):
            raise sa_exc.IntegrityError("INSERT ...", {}, Exception("duplicate key value violates unique constraint "
                                                                   '"predictions_pkey"'))
        original(batch)

    s.insert = behind  # type: ignore[method-assign]
    log = PredictionLog(s, batch_size=100, flush_interval=0.05)
    log.start()
    log.enqueue(rows(3))
    log.enqueue([PredictionRow("ok", time.time(), "1", {"a": 1.0}, "A", None)])
    log.stop(timeout=30)
    assert (log.written, log.dropped, s.count()) == (1, 3, 1)
    assert calls <= 1 + 4  # the batch once, then each row once: no loop


def test_the_quality_window_reads_the_labelled_rows_through_their_own_index(tmp_path: Path) -> None:
    """Without it, a table with few or no labels is scanned whole at every run (1.2 s at 5M rows)."""
    s = store(tmp_path)
    queries: list[tuple[str, Any]] = []
    event.listen(s.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, params, context, many: queries.append((statement, params)))
    s.labelled_window(3000, "1")
    statement, params = queries[-1]
    with s.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
    assert any("ix_predictions_labelled_version_id" in str(row) for row in plan), plan
    assert not any("TEMP B-TREE" in str(row) for row in plan), plan


def test_the_quality_window_is_the_latest_labelled_rows_of_its_version(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.insert([r.as_db() for r in rows(10)])
    s.insert([PredictionRow("v2", time.time(), "2", {"a": 1.0}, "B", {"A": 0.2, "B": 0.8}).as_db()])
    s.set_labels([LabelUpdate(f"id{i}", f"L{i}", time.time()) for i in (2, 5, 7)] + [LabelUpdate("v2", "X", 0.0)])
    labels, preds, probas = s.labelled_window(2, "1")
    assert labels == ["L7", "L5"] and preds == ["A", "A"] and probas == [{"A": 0.9, "B": 0.1}] * 2
    assert s.labelled_window(10, "2")[0] == ["X"]
    assert s.labelled_window(10, "3") == ([], [], None)
