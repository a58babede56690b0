"""Retention of the predictions table, on SQLite and PostgreSQL: by age and by count, in batches, counted."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from exporter.app import create_app
from exporter.config import ConfigError, load_settings
from exporter.db import Database, predictions_table
from exporter.retention import prune
from exporter.store import PredictionStore
from tests.helpers import config_folder, parse_metrics, sample

DAY = 86400.0


def _fill(store: PredictionStore, created: list[float]) -> None:
    store.db.ensure_schema()
    store.insert([
        {"request_id": uuid.uuid4().hex, "created_at": at, "model_version": "1", "features": "{}", "prediction": "1"}
        for at in created
    ])


def _left(store: PredictionStore) -> list[float]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(predictions_table.c.created_at).order_by(predictions_table.c.id)).scalars())


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PredictionStore:
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = Database(url)
    s = PredictionStore(db)
    yield s
    s.dispose()
    db.dispose()


def test_prune_by_age_and_by_count_in_batches(store: PredictionStore) -> None:
    now = time.time()
    _fill(store, [now - 40 * DAY + i for i in range(30)] + [now - DAY + i for i in range(20)])
    assert prune(store.engine, 30, None, now=now, batch_rows=7) == 30  # five batches
    assert len(_left(store)) == 20 and min(_left(store)) > now - 30 * DAY
    assert prune(store.engine, 30, 12, now=now, batch_rows=7) == 8  # the newest 12 stay
    assert _left(store) == [now - DAY + i for i in range(8, 20)]
    assert prune(store.engine, 30, 12, now=now) == 0


def test_a_backlog_is_worked_off_over_several_ticks(store: PredictionStore) -> None:
    now = time.time()
    _fill(store, [now - 40 * DAY + i for i in range(25)])
    assert prune(store.engine, 30, None, now=now, batch_rows=10, budget_seconds=0) == 10  # one batch a tick
    assert prune(store.engine, 30, None, now=now, batch_rows=10, budget_seconds=0) == 10
    assert prune(store.engine, 30, None, now=now, batch_rows=10, budget_seconds=0) == 5
    assert _left(store) == []


def test_the_drift_job_prunes_and_counts(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"window_size": 100, "min_rows": 1, "report": False,
                                                      "isolation": "thread"},
                           prediction_log={"retention": {"max_age_days": None, "max_rows": 100}})
    app = create_app(load_settings(config), start_scheduler=False)
    store = app.state.prediction_log.store
    with TestClient(app) as client:
        _fill(store, [time.time() - 300 + i for i in range(250)])
        app.state.job.tick()
        assert store.count() == 100
        assert sample(parse_metrics(client.get("/metrics").text), "model_prediction_log_pruned_total") == 150


def test_retention_smaller_than_the_window_is_refused(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, prediction_log={"retention": {"max_rows": 10}})
    with pytest.raises(ConfigError, match="retention.max_rows"):
        load_settings(config)
