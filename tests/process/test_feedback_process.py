"""Feedback where a process is needed: 503 (not 500) while the database is down, a feedback batch queued whole or
not at all while the writer cannot write, labels left over when the shutdown flush times out, and `exporter serve`
refusing a model version longer than the predictions table's column.

Each test runs a real ``exporter serve`` process: the outages stop the module's private PostgreSQL server
(tests/pg_private.py), never the shared one, and last as long as the requests under test; "nothing listens on this
port" stands in for a database that never comes up. No drift job, report or reference rule is under test here
(quiet()). The request-path and label-loss behaviour is tested in process: tests/app/test_feedback_losses.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exporter.demo import Traffic
from tests.helpers import config_folder, free_port, labels_in_table, live_server, quiet, sample, wait_until
from tests.pg_private import PrivatePostgres


def nothing_listens() -> str:
    """A PostgreSQL URL on a loopback port where no server listens: connections are refused at once."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/absent"


# -- the shutdown flush ------------------------------------------------------------------------------------------
def test_labels_still_queued_when_the_shutdown_flush_times_out_are_logged_as_labels(
    demo_dir: Path, tmp_path: Path
) -> None:
    config = config_folder(demo_dir, tmp_path, **quiet(database_url=nothing_listens(),
                                                       prediction_log={"shutdown_timeout_seconds": 1}))
    records, truth = Traffic("none", seed=4).records(3)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        answers = http.post("/predict/batch", json={"records": records}).json()["predictions"]
        labels = [{"request_id": a["request_id"], "label": y} for a, y in zip(answers[:2], truth[:2], strict=True)]
        assert http.post("/feedback/batch", json={"labels": labels}).status_code == 202  # the predictions are queued
        metrics = server.metrics()
        assert sample(metrics, "model_prediction_log_queue_rows") == 5
        assert sample(metrics, "model_feedback_total") == 2
        assert sample(metrics, "model_feedback_dropped_total") == 0
    assert server.proc is not None and server.proc.returncode in (0, -15), server.log()[-3000:]
    assert "3 prediction rows and 2 labels could not be written before shutdown" in server.log(), server.log()[-3000:]


# -- a feedback batch is queued entirely or not at all ----------------------------------------------------------
def test_feedback_batch_that_does_not_fit_is_refused_whole(pg: PrivatePostgres, demo_dir: Path, tmp_path: Path) -> None:
    database_url = pg.create_database()
    # Room for 10 items: the queue, plus the one item the writer holds while it retries (batch_size 1).
    config = config_folder(demo_dir, tmp_path, **quiet(database_url=database_url, max_batch_records=10,
                                                       prediction_log={"queue_size": 10, "batch_size": 1}))
    records, _ = Traffic("none", seed=6).records(8)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=15) as http:
        pg.stop("fast")
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": records}).json()["predictions"]]
        assert len(ids) == 8
        # 8 predictions buffered leave 2 or 3 free places (3 once the writer holds one): 4 labels cannot fit.
        refused = http.post("/feedback/batch", json={"labels": [{"request_id": i, "label": "Adelie"} for i in ids[:4]]})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
        metrics = server.metrics()
        assert sample(metrics, "model_prediction_log_queue_rows") == 8, "a refused batch must queue nothing"
        assert sample(metrics, "model_feedback_total") == 0
        assert sample(metrics, "model_feedback_dropped_total") == 0, "the client was told to retry: nothing was lost"
        accepted = http.post(
            "/feedback/batch", json={"labels": [{"request_id": i, "label": "Gentoo"} for i in ids[4:6]]}
        )
        assert accepted.status_code == 202, accepted.text
        pg.start()
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0
                                  and sample(m, "model_prediction_log_written_total") == 8 else None,
                                  timeout=30, interval=0.1)
        assert sample(metrics, "model_feedback_total") == 2
        assert sample(metrics, "model_feedback_dropped_total") == 0
    stored = labels_in_table(database_url)
    assert stored == {**{i: None for i in ids}, ids[4]: '"Gentoo"', ids[5]: '"Gentoo"'}


# -- /feedback while the database is down -----------------------------------------------------------------------
def test_feedback_while_the_database_is_down_answers_503(pg: PrivatePostgres, demo_dir: Path, tmp_path: Path) -> None:
    database_url = pg.create_database()
    config = config_folder(demo_dir, tmp_path, **quiet(database_url=database_url))
    traffic = Traffic("none", seed=2)
    with live_server(config) as server, httpx.Client(base_url=server.url, timeout=15) as http:
        records, truth = traffic.records(3)
        ids = [p["request_id"] for p in http.post("/predict/batch", json={"records": records}).json()["predictions"]]
        server.wait_for(lambda m: sample(m, "model_prediction_log_written_total") == 3, timeout=20, interval=0.1)
        one = {"request_id": ids[0], "label": truth[0]}
        batch = {"labels": [{"request_id": i, "label": y} for i, y in zip(ids[1:], truth[1:], strict=True)]}

        pg.stop("fast")
        predicted_during = 0
        for _ in range(3):
            for path, body in (("/feedback", one), ("/feedback/batch", batch)):
                resp = http.post(path, json=body)
                assert resp.status_code == 503, (path, resp.status_code, resp.text)
                assert int(resp.headers["retry-after"]) > 0
                assert "database" in resp.json()["detail"]
            resp = http.post("/predict", json=traffic.records(1)[0][0])
            assert resp.status_code == 200, resp.text
            predicted_during += 1
        metrics = server.metrics()
        assert sample(metrics, "model_feedback_total") == 0
        assert sample(metrics, "model_prediction_log_queue_rows") == predicted_during, "no label may be queued"

        pg.start()
        first = wait_until(lambda: (r := http.post("/feedback", json=one)).status_code == 202 and r, 20,
                           what="/feedback accepted again", details=lambda: server.log()[-3000:], interval=0.1)
        assert first.json() == {"accepted": 1}
        again = http.post("/feedback/batch", json=batch)
        assert again.status_code == 202, again.text
        assert http.post("/predict", json=traffic.records(1)[0][0]).status_code == 200
        metrics = server.wait_for(lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0
                                  and sample(m, "model_prediction_log_written_total") == 3 + predicted_during + 1
                                  else None, timeout=30, interval=0.1)
        assert sample(metrics, "model_feedback_total") == 3
        assert sample(metrics, "model_feedback_dropped_total") == 0
        assert sample(metrics, "model_prediction_log_dropped_total") == 0
    stored = labels_in_table(database_url)
    assert {i: stored[i] for i in ids} == {i: f'"{y}"' for i, y in zip(ids, truth, strict=True)}
    log = server.log()
    assert log.count("request_id lookup failed") == 1, log[-3000:]
    serving = log.split("Shutting down")[0]
    assert "Traceback" not in serving, serving[-3000:]


# -- model.version and PostgreSQL's column lengths: the CLI refuses at start --------------------------------------
@pytest.mark.parametrize("via", ["file", "environment"])
def test_model_version_over_64_characters_is_refused_at_start(via: str, demo_dir: Path, tmp_path: Path) -> None:
    version = "v" * 65
    if via == "file":
        config, env = config_folder(demo_dir, tmp_path, model={"version": version}), {}
    else:
        config, env = config_folder(demo_dir, tmp_path), {"EXPORTER_MODEL__VERSION": version}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"`exporter serve` started with a {len(version)}-character model.version:\n{err[-2000:]}")
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exporter: error:"), err
    assert "model.version" in lines[0] and "64" in lines[0], lines[0]
    assert "Traceback" not in err + out
