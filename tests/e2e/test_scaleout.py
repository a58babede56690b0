"""Two replicas x two workers on the CI PostgreSQL, scraped by a real Prometheus: one deployment.

Under load on both replicas, each replica's counters are the exact sum over its workers on every scrape; the
deployment stores one drift run per interval, never two at once; every process serves the same run; and a drifted
feature fires one alert, not one per replica.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from exporter.db import predictions_table, runs_table
from exporter.demo import Traffic
from tests.e2e.stack import DRIFT_ALERTS, Stack, monitoring, send
from tests.helpers import LiveServer, config_folder, parse_metrics, sample, wait_until

# seconds between drift runs (a run here also builds the report and the estimates);
# the alerts' `for:` is scaled to 2 s in the test stack
INTERVAL = 6.0
SHIFTED = "bill_length_mm"  # the feature Traffic("shift") moves
THREADS, SINGLES, BATCHES, BATCH = 4, 40, 5, 20  # load per replica: each thread's single calls and batches
ROWS_PER_REPLICA = THREADS * (SINGLES + BATCHES * BATCH)
DRIFT_LINES = ("model_feature_drift", "model_dataset_drift", "model_multivariate_drift", "model_prediction_drift",
               "model_drift_window_rows", "model_drift_job_last_success_timestamp_seconds")


@pytest.fixture
def deployment(demo_dir: Path, tmp_path: Path, postgres_url: str) -> Iterator[tuple[Stack, list[LiveServer], Engine]]:
    config = config_folder(demo_dir, tmp_path / "app", database_url=postgres_url,
                           drift={"interval_seconds": INTERVAL, "window_size": 600, "min_rows": 100})
    engine = create_engine(postgres_url)
    with contextlib.ExitStack() as stack:
        replicas = []
        for _ in range(2):
            replica = LiveServer(config, workers=2)
            stack.callback(replica.stop)
            replicas.append(replica.start(timeout=120))
        yield stack.enter_context(monitoring(replicas, tmp_path / "monitoring")), replicas, engine
    engine.dispose()


def _load(replica: LiveServer, seed: int, failures: list[str]) -> None:
    """One thread's share: single calls on new connections (spread over the workers by the kernel), then batches."""
    records, _ = Traffic("none", seed=seed).records(SINGLES + BATCHES * BATCH)
    with httpx.Client(base_url=replica.url, timeout=30) as client:
        for record in records[:SINGLES]:
            resp = client.post("/predict", json=record, headers={"connection": "close"})
            if resp.status_code != 200:
                failures.append(f"/predict {resp.status_code} {resp.text[:200]}")
        for i in range(BATCHES):
            chunk = records[SINGLES + i * BATCH:SINGLES + (i + 1) * BATCH]
            resp = client.post("/predict/batch", json={"records": chunk}, headers={"connection": "close"})
            if resp.status_code != 200:
                failures.append(f"/predict/batch {resp.status_code} {resp.text[:200]}")


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def _runs(engine: Engine) -> list[tuple[int, float]]:
    with engine.connect() as conn:
        return [(int(i), float(t)) for i, t in conn.execute(
            select(runs_table.c.id, runs_table.c.created_at).order_by(runs_table.c.id))]


def _newest(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(runs_table.c.id))).scalar() or 0)


def _scrape(replica: LiveServer) -> str:
    resp = httpx.get(f"{replica.url}/metrics", headers={"connection": "close"}, timeout=10)
    assert resp.status_code == 200
    return resp.text


def _serves(replica: LiveServer, created: float) -> bool:
    """Whether the worker answering this scrape serves the run stored at ``created``, or a newer one."""
    served = sample(parse_metrics(_scrape(replica)), "model_drift_job_last_success_timestamp_seconds")
    return served is not None and served >= created - 1e-3


def _served(replica: LiveServer, page: bool) -> tuple[tuple[str, ...], str, str]:
    """The drift families of one scrape, /drift's result and (``page``) /monitoring's digest, from whichever worker
    answers."""
    lines = tuple(sorted(line for line in _scrape(replica).splitlines() if line.startswith(DRIFT_LINES)))
    drift = httpx.get(f"{replica.url}/drift", headers={"connection": "close"}, timeout=10).json()["result"]
    digest = ""
    if page:
        resp = httpx.get(f"{replica.url}/monitoring", headers={"connection": "close"}, timeout=30)
        assert resp.status_code == 200
        digest = hashlib.sha256(resp.content).hexdigest()
    return lines, repr(sorted(drift["features"].items())), digest


def test_two_replicas_of_two_workers_are_one_deployment(deployment: tuple[Stack, list[LiveServer], Engine]) -> None:
    stack, replicas, engine = deployment
    prom = stack.prometheus

    # -- load on both replicas at once ---------------------------------------------------------------------------
    failures: list[str] = []
    threads = [threading.Thread(target=_load, args=(replica, 100 * r + t, failures))
               for r, replica in enumerate(replicas) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads) and not failures, failures[:5]
    total = 2 * ROWS_PER_REPLICA
    wait_until(lambda: _count(engine, predictions_table) == total, 60, "every answered row written", stack.logs)

    # -- each replica's counters: the sum over its workers, the same on every scrape ----------------------------
    for replica in replicas:  # the other worker's counts reach the shared files within 0.5 s
        wait_until(lambda r=replica: sample(parse_metrics(_scrape(r)), "model_prediction_log_written_total")
                   == ROWS_PER_REPLICA, 10, "both workers' counts in the sum", stack.logs, interval=0.1)
    for replica in replicas:
        for _ in range(10):
            metrics = parse_metrics(_scrape(replica))
            assert sample(metrics, "model_predictions_total") == ROWS_PER_REPLICA
            assert sample(metrics, "model_prediction_log_written_total") == ROWS_PER_REPLICA
            http = {dict(labels).get("handler"): v for (name, labels), v in metrics.items()
                    if name == "http_requests_total" and dict(labels).get("status") == "2xx"}
            assert http.get("/predict") == THREADS * SINGLES and http.get("/predict/batch") == THREADS * BATCHES
    # Prometheus sees two instances whose sum is the deployment's.
    wait_until(lambda: prom.query(f'sum(model_predictions_total{{job="exporter"}}) == {total}'), 30,
               f"Prometheus sums {total} predictions over the replicas", stack.logs)
    assert len(prom.query('model_predictions_total{job="exporter"}')) == 2

    # -- one run per interval, never two at once -----------------------------------------------------------------
    start_id = _newest(engine)
    # Five more runs (one schedule makes about one run per interval; a loaded machine may delay some) ...
    wait_until(lambda: _newest(engine) >= start_id + 5, 8 * INTERVAL, "five more stored runs", stack.logs)
    end_id = _newest(engine)
    stored = [t for i, t in _runs(engine) if i > start_id]
    gaps = [b - a for a, b in itertools.pairwise(stored)]
    # ... and about one interval apart on average: two interleaved schedules would average half an interval. A run
    # is stamped when it ends, so one slowed by the load ends late and the gap after it is short: no bound on one gap.
    assert len(gaps) >= 4 and sum(gaps) / len(gaps) > 0.7 * INTERVAL, gaps
    per_replica = [sample(parse_metrics(_scrape(r)), "model_drift_job_runs_total") or 0 for r in replicas]
    failed = [sample(parse_metrics(_scrape(r)), "model_drift_job_failures_total") for r in replicas]
    assert failed == [0, 0]
    assert max(per_replica) >= end_id and 0 in per_replica, per_replica  # one replica runs every run

    # -- every process serves the same run -----------------------------------------------------------------------
    for _attempt in range(3):
        run = _newest(engine)
        wait_until(lambda run=run: _newest(engine) > run, 3 * INTERVAL, "a new stored run", stack.logs)
        run, created = _runs(engine)[-1]
        # A process looks for a newer stored run at most once a second: until then some workers serve the last.
        wait_until(lambda created=created: all(_serves(replicas[i % 2], created) for i in range(8)), INTERVAL / 2,
                   "every worker serves the newest run", stack.logs, interval=0.1)
        answers = [_served(replicas[i % 2], page=i < 6) for i in range(20)]  # the report page: 3 per replica
        if _newest(engine) == run:  # no run landed during the 20 answers
            break
    else:
        pytest.fail("a new run landed during every attempt at 20 answers")
    served = {a[:2] for a in answers}
    common = set.intersection(*(set(lines) | {drift} for lines, drift in served))
    assert len(served) == 1, [  # what each distinct answer has that the others lack, and which answers gave it
        ([i for i, a in enumerate(answers) if a[:2] == x], sorted(set(x[0]) | {x[1]} - common)) for x in served
    ]
    assert len({a[2] for a in answers[:6]}) == 1, [a[2] for a in answers[:6]]
    lines = answers[0][0]
    assert any(line.startswith("model_feature_drift_score{") for line in lines)
    drift = prom.query("model_feature_drift_score")
    assert len(drift) == 12 and {s["metric"]["instance"] for s in drift} == {f"127.0.0.1:{r.port}" for r in replicas}

    # -- a drifted feature fires one alert, not one per replica --------------------------------------------------
    shift = Traffic("shift", seed=7)
    for replica in replicas:
        send(replica, shift, 300, singles=0, batch=100)

    def firing() -> list[dict[str, Any]]:
        return [a for a in prom.alerts("ModelFeatureDrift") if a["state"] == "firing"]

    wait_until(lambda: any(a["labels"].get("feature") == SHIFTED for a in firing()), 60,
               f"ModelFeatureDrift for {SHIFTED} firing", stack.logs)
    alerts = firing()
    assert all("instance" not in a["labels"] for a in alerts), alerts
    assert len(alerts) == len({a["labels"]["feature"] for a in alerts}), alerts  # one per feature
    wait_until(lambda: [a for a in stack.sink.alerts("ModelFeatureDrift") if a["labels"].get("feature") == SHIFTED],
               60, "the alert delivered", stack.logs)
    delivered = {a["fingerprint"] for a in stack.sink.alerts(*DRIFT_ALERTS) if a["labels"].get("feature") == SHIFTED}
    assert len(delivered) == 1, delivered
