"""Retention of the predictions table: rows older than ``max_age_days`` or beyond the newest ``max_rows`` are
deleted by the process that runs the drift job, in small batches (each its own short transaction, so the
prediction writer's inserts wait at most one batch) and within a time budget per tick (a backlog is worked off
over several ticks instead of stalling the job)."""

from __future__ import annotations

import time

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from exporter.db import predictions_table

BATCH_ROWS = 5000
TICK_BUDGET_SECONDS = 5.0


def prune(
    engine: Engine,
    max_age_days: float | None,
    max_rows: int | None,
    now: float | None = None,
    batch_rows: int = BATCH_ROWS,
    budget_seconds: float = TICK_BUDGET_SECONDS,
) -> int:
    """Delete what retention no longer keeps; the number of rows deleted."""
    t = predictions_table.c
    with engine.connect() as conn:
        # The highest id that goes: by age, the id of the newest row older than the cutoff (one step down the
        # created_at index; ids follow created_at up to the milliseconds between concurrent writers), and by count,
        # the max_rows-th newest id.
        limits = []
        if max_age_days is not None:
            cutoff = (time.time() if now is None else now) - max_age_days * 86400
            limits.append(conn.execute(select(t.id).where(t.created_at < cutoff).order_by(t.created_at.desc())
                                       .limit(1)).scalar())
        if max_rows is not None:
            limits.append(conn.execute(select(t.id).order_by(t.id.desc()).offset(max_rows).limit(1)).scalar())
    last = max((x for x in limits if x is not None), default=None)
    if last is None:
        return 0
    deleted = 0
    deadline = time.monotonic() + budget_seconds
    while True:
        with engine.begin() as conn:
            ids = select(t.id).where(t.id <= last).order_by(t.id).limit(batch_rows).scalar_subquery()
            count = conn.execute(delete(predictions_table).where(t.id.in_(ids))).rowcount or 0
        deleted += count
        if count < batch_rows or time.monotonic() >= deadline:  # done, or the rest waits for the next tick
            return deleted
