"""exporter.client.PredictionLogger against the exporter over real HTTP (an in-process uvicorn server)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.client import PredictionLogger
from exporter.demo import Traffic
from tests.helpers import NO_JOB, InProcessServer, config_folder, free_port, sample, stored_rows, wait_until

PROBABILITIES = {"Adelie": 0.8, "Chinstrap": 0.15, "Gentoo": 0.05}


@pytest.fixture
def server(demo_dir: Path, tmp_path: Path) -> Any:
    with InProcessServer(config_folder(demo_dir, tmp_path, "monitor.yaml", **NO_JOB)) as s:
        yield s


def test_logged_predictions_arrive_with_their_ids_and_close_flushes(server: InProcessServer) -> None:
    records = Traffic("none", seed=21).records(30)[0]
    before = time.time()
    logger = PredictionLogger(server.url, batch_size=8, flush_interval=5.0)  # close() sends what waits
    ids = [logger.log(r, "Adelie", PROBABILITIES) for r in records[:29]]
    ids.append(logger.log({**records[29], "bill_length_mm": np.float64(41.5)}, np.str_("Gentoo"),
                          request_id="order-9"))  # numpy values as a model's server has them
    logger.close()
    assert ids[-1] == "order-9" and len(set(ids)) == 30
    assert (logger.sent, logger.dropped, logger.queued) == (30, 0, 0)
    rows = stored_rows(server)
    assert set(rows) == set(ids)
    assert json.loads(rows["order-9"]["features"])["bill_length_mm"] == 41.5
    assert json.loads(rows["order-9"]["prediction"]) == "Gentoo" and rows["order-9"]["probabilities"] is None
    assert json.loads(rows[ids[0]]["probabilities"]) == PROBABILITIES
    assert before <= rows[ids[0]]["created_at"] <= time.time()  # when log() was called


def test_a_refused_batch_is_counted_dropped_and_the_rest_arrives(server: InProcessServer) -> None:
    records = Traffic("none", seed=22).records(4)[0]
    with PredictionLogger(server.url, batch_size=2, flush_interval=0.05) as logger:
        good = [logger.log(r, "Adelie") for r in records[:2]]
        wait_until(lambda: logger.sent == 2, 10, what="the first batch sent")
        logger.log(records[2], "Emperor")  # not a class: the exporter refuses its batch whole
        logger.log(records[3], "Adelie")
        wait_until(lambda: logger.dropped == 2, 10, what="the refused batch counted")
    assert set(stored_rows(server)) == set(good)
    assert sample(server.metrics(), "model_log_records_total", outcome="refused") == 2


def test_a_batch_over_the_body_limit_is_halved_until_it_fits(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, "monitor.yaml", max_body_bytes=1024, **NO_JOB)
    with InProcessServer(config) as server:
        records = Traffic("none", seed=23).records(40)[0]
        with PredictionLogger(server.url, batch_size=40, flush_interval=5.0) as logger:
            ids = [logger.log(r, "Gentoo", PROBABILITIES) for r in records]
        assert (logger.sent, logger.dropped) == (40, 0)
        assert set(stored_rows(server)) == set(ids)


def test_log_never_blocks_and_what_cannot_be_sent_is_counted() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: the sender retries
    logger = PredictionLogger(nowhere, queue_size=2, batch_size=3, flush_interval=0.01, max_backoff=0.05)
    for record in Traffic("none", seed=24).records(10)[0]:
        logger.log(record, "Adelie")
    # Beyond the queue and the batch in hand, dropped at once: a call that waited for room would drop none.
    assert logger.dropped >= 10 - 2 - 3
    logger.close(timeout=0.5)
    assert (logger.sent, logger.dropped) == (0, 10)  # every record counted, none twice
