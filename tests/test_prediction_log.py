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

from exporter.predictions import (
    INSERT_ROWS,
    LabelUpdate,
    PredictionLog,
    PredictionRow,
    PredictionStore,
    _json,
    new_request_id,
)


def rows(n: int, start: int = 0) -> list[PredictionRow]:
    return [PredictionRow(f"id{i}", time.time(), "1", {"a": float(i), "b": "x"}, "A", {"A": 0.9, "B": 0.1})
            for i in range(start, start + n)]


def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}")
    s.create_schema()
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
    # batched, not one INSERT per row: batches of 100 taken, written in chunks of at most INSERT_ROWS
    assert max(inserts) == INSERT_ROWS and len(inserts) <= 11 * -(-100 // INSERT_ROWS)
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    s = store(tmp_path)
    log = PredictionLog(s, queue_size=50, batch_size=10)
    # writer not started: nothing drains the queue
    started = time.monotonic()
    dropped = log.enqueue(rows(80))
    assert time.monotonic() - started < 0.5
    assert dropped == 30 and log.dropped == 30 and log.queued == 50
    log.start()
    log.stop(timeout=30)
    assert s.count() == 50 and log.written == 50 and log.dropped == 30


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
    time.sleep(0.8)
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
    assert s.lookup_label("id1") == (True, "B")
    assert s.lookup_label("id0") == (True, None)
    assert s.lookup_label("nope") == (False, None)
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
    assert later.labels_known(["id0"]) == ([], {"id0": "B"})
    later.start()
    later.stop(timeout=30)
    assert later.pending_label("id0") == (False, None)  # written: the table has it now
    assert later.labels_known(["id0"]) == ([], {"id0": "B"})


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
    s = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}")  # no create_schema(): as if down at start-up
    attempts = 0
    original = s.create_schema

    def flaky_create() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("database is down")
        original()

    s.create_schema = flaky_create  # type: ignore[method-assign]
    log = PredictionLog(s, batch_size=10, flush_interval=0.05, max_backoff=0.1)
    log.start()
    log.enqueue(rows(15))
    log.stop(timeout=30)
    assert attempts == 3 and s.count() == 15 and log.written == 15 and log.database_up
    with s.engine.begin() as conn:  # the table vanishes under a running service
        conn.execute(text("DROP TABLE predictions"))
    log2 = PredictionLog(s, batch_size=10, flush_interval=0.05)
    log2.schema_ready = True
    log2.start()
    log2.enqueue(rows(4, start=50))
    log2.stop(timeout=30)
    assert s.count() == 4 and log2.written == 4 and log2.dropped == 0


def test_sqlite_insert_writes_a_chunk_of_rows_per_statement_in_one_transaction(tmp_path: Path) -> None:
    s = store(tmp_path)
    statements: list[tuple[str, bool]] = []
    commits: list[int] = []
    event.listen(s.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, params, context, many: statements.append((statement, many)))
    event.listen(s.engine, "commit", lambda conn: commits.append(1))
    batch = [r.as_db() for r in rows(2 * INSERT_ROWS + 5)]
    for r in batch[::3]:
        del r["probabilities"]  # a column a row leaves out is NULL
    s.insert(batch)
    inserts = [(st, many) for st, many in statements if st.startswith("INSERT")]
    assert [st.count("(?, ?, ?, ?, ?, ?)") for st, _ in inserts] == [INSERT_ROWS, INSERT_ROWS, 5]
    assert not any(many for _, many in inserts) and len(commits) == 1
    with s.engine.connect() as conn:
        got = conn.execute(text("SELECT request_id, features, prediction, probabilities FROM predictions ORDER BY id")).all()
    assert [g[0] for g in got] == [r["request_id"] for r in batch]
    assert [g[1] for g in got] == [r["features"] for r in batch]
    assert [g[3] for g in got] == [r.get("probabilities") for r in batch]
    assert sum(g[3] is None for g in got) == len(batch[::3]) and {g[2] for g in got} == {'"A"'}


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
