"""Adaptive batching (exporter.batching): gathered model calls give each request the answers it gets alone."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from exporter.app import create_app
from exporter.batching import Batcher, predict_gathered
from exporter.config import load_settings
from exporter.db import Database
from exporter.prediction_log import PredictionLog
from exporter.service import CallObserver, PredictionError, PredictionService
from exporter.startup import build
from exporter.store import PredictionStore
from tests.helpers import NO_JOB, InProcessServer, config_folder, flush, mixed_records, parse_metrics, sample

POISON = 4242.0  # a body mass the wrapped model refuses (as a pipeline refuses what it cannot transform)


class Refusing:
    """Wraps the demo pipeline; raises ValueError when any row has the poison body mass, as scikit-learn refuses an
    input (an unseen category with handle_unknown='error', a wrong dtype)."""

    def __init__(self, estimator: Any, error: type[Exception] = ValueError) -> None:
        self.inner = estimator
        self.classes_ = estimator.classes_
        self.error = error

    def _check(self, X: Any) -> None:
        if (X["body_mass_g"] == POISON).any():
            raise self.error("poisoned row")

    def predict(self, X: Any) -> Any:
        self._check(X)
        return self.inner.predict(X)

    def predict_proba(self, X: Any) -> Any:
        self._check(X)
        return self.inner.predict_proba(X)


@pytest.fixture
def config(demo_dir: Path, tmp_path: Path) -> Path:
    return config_folder(demo_dir, tmp_path, **NO_JOB)


@contextlib.contextmanager
def request_side(config: Path, model_calls: CallObserver | None = None,
                 log: Any = None) -> Iterator[PredictionService]:
    """The request side alone, as the app builds it (the writer is not started: rows stay queued)."""
    settings = load_settings(config)
    db = Database(settings.resolved_database_url)
    try:
        yield PredictionService(build(settings).model, settings.model.version,
                                log or PredictionLog(PredictionStore(db)), model_calls)
    finally:
        db.dispose()


@pytest.fixture
def service(config: Path) -> Iterator[PredictionService]:
    with request_side(config) as svc:
        yield svc


def chunks(items: list[Any], rng: random.Random, largest: int = 64) -> Iterator[list[Any]]:
    i = 0
    while i < len(items):
        n = rng.randint(1, largest)
        yield items[i:i + n]
        i += n


def test_gathered_rows_reach_the_model_as_alone_and_get_the_same_predictions(service: PredictionService) -> None:
    """The frame of a gathered batch transforms to exactly the rows each record gives alone (dtypes of columns
    all-null in one request and mixed in another included), so predictions are identical. Probabilities agree to
    floating-point rounding: BLAS sums a several-row matrix product in another order than a one-row product (the
    last bit of a probability can differ, as between /predict and /predict/batch without batching)."""
    model = service.model
    transform = model.estimator[:-1].transform
    rows = mixed_records(600)
    alone = [model.predict([r]) for r in rows]
    alone_x = [transform(model.frame([r])) for r in rows]
    rng = random.Random(1)
    start = worst = 0
    for chunk in chunks(rows, rng):
        x = transform(model.frame(chunk))
        gathered = model.predict(chunk)
        for j in range(len(chunk)):
            assert np.array_equal(x[j:j + 1], alone_x[start + j], equal_nan=True), chunk[j]
            assert gathered.values[j] == alone[start + j].values[0]
            p, q = gathered.probabilities[j], alone[start + j].probabilities[0]  # type: ignore[index]
            assert p.keys() == q.keys()
            worst = max(worst, *(abs(p[k] - q[k]) for k in p))
        start += len(chunk)
    assert start == len(rows)
    assert worst < 1e-12


def test_predict_gathered_splits_answers_per_request(service: PredictionService) -> None:
    rows = mixed_records(200, seed=3)
    requests = list(chunks(rows, random.Random(2), largest=5))
    outcomes = predict_gathered(service, requests)
    answers = [a for outcome in outcomes for a in outcome]  # type: ignore[union-attr]
    assert [a["prediction"] for a in answers] == [service.model.predict([r]).values[0] for r in rows]
    assert len({a["request_id"] for a in answers}) == len(rows)
    assert service.predictions_total == len(rows)
    assert service.prediction_log.queued == len(rows)  # one logged row per answer (the writer is not started)


def test_a_model_refusal_fails_only_the_culprit(service: PredictionService) -> None:
    service.model.estimator = Refusing(service.model.estimator)
    rows = mixed_records(40, seed=4)
    rows[7]["body_mass_g"] = POISON
    requests = [[r] for r in rows[:20]] + [rows[20:30]] + [[r] for r in rows[30:]]
    outcomes = predict_gathered(service, requests)
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, PredictionError)]
    assert failed == [7]
    assert service.prediction_errors == 1  # the gathered call's refusal is not counted, the culprit's is
    assert service.predictions_total == len(rows) - 1
    assert [o[0]["prediction"] for i, o in enumerate(outcomes) if i != 7 and i != 20] == [  # type: ignore[index]
        service.model.predict([r]).values[0]
        for i, r in enumerate(rows) if i != 7 and not 20 <= i < 30
    ]


def test_an_unexpected_model_error_reaches_only_its_request(service: PredictionService) -> None:
    """Not a refusal (a bug in a custom estimator): the request that raises it alone gets it (a 500, as without
    batching); its batch-mates are answered."""
    service.model.estimator = Refusing(service.model.estimator, RuntimeError)
    rows = mixed_records(10, seed=12)
    rows[2]["body_mass_g"] = POISON
    outcomes = predict_gathered(service, [[r] for r in rows])
    assert [type(o).__name__ for o in outcomes if not isinstance(o, list)] == ["RuntimeError"]
    assert isinstance(outcomes[2], RuntimeError)
    assert service.predictions_total == len(rows) - 1


def test_a_non_finite_output_fails_only_its_request(service: PredictionService) -> None:
    real = service.model.predict

    def predict(recs: list[dict[str, Any]]) -> Any:
        out = real(recs)
        for i, r in enumerate(recs):
            if r["body_mass_g"] == POISON:
                out.probabilities[i] = {k: float("nan") for k in out.probabilities[i]}  # type: ignore[index]
        return out

    service.model.predict = predict  # type: ignore[method-assign]
    rows = mixed_records(12, seed=5)
    rows[3]["body_mass_g"] = POISON
    outcomes = predict_gathered(service, [[r] for r in rows])
    assert [i for i, o in enumerate(outcomes) if isinstance(o, PredictionError)] == [3]
    assert service.prediction_errors == 1 and service.predictions_total == len(rows) - 1


class Calls:
    """Records the rows of each model call, where the app's histograms would observe them."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def observe(self, rows: int, seconds: float) -> None:
        self.rows.append(rows)


class Enqueued:
    """A prediction log that records the context each request's rows are queued in."""

    def __init__(self, tag: contextvars.ContextVar[str]) -> None:
        self.tag = tag
        self.seen: list[tuple[str, int]] = []

    def enqueue(self, rows: list[Any]) -> int:
        self.seen.append((self.tag.get(), len(rows)))
        return 0


def test_batcher_gathers_queued_requests_under_the_row_cap(config: Path) -> None:
    observed = Calls()
    calls = observed.rows

    async def main(service: PredictionService) -> list[Any]:
        batcher = Batcher(service, max_batch_size=8, max_wait_ms=0)
        batcher.start()
        try:
            rows = mixed_records(40, seed=6)
            sizes = [1, 1, 3, 1, 5, 1, 1, 2, 10, 1]  # 10 rows: larger than the cap, goes alone
            requests, i = [], 0
            for n in sizes:
                requests.append(rows[i:i + n])
                i += n
            return await asyncio.gather(*(batcher.predict(r) for r in requests)), sizes  # type: ignore[return-value]
        finally:
            await batcher.stop()

    with request_side(config, model_calls=observed) as service:
        answers, sizes = asyncio.run(main(service))
    assert [len(a) for a in answers] == sizes
    # in queue order: 1+1+3+1 (5 more would pass 8), 5+1+1 (2 more would pass 8), 2 (10 would), 10 alone, 1
    assert calls == [6, 7, 2, 10, 1]
    assert sum(calls) == sum(sizes)


class Held:
    """Wraps the demo pipeline: a call says the model was entered, then holds until released."""

    def __init__(self, estimator: Any) -> None:
        self.inner = estimator
        self.classes_ = estimator.classes_
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hold(self) -> None:
        self.entered.set()
        self.release.wait(DEADLINE)

    def predict(self, X: Any) -> Any:
        self._hold()
        return self.inner.predict(X)

    def predict_proba(self, X: Any) -> Any:
        self._hold()
        return self.inner.predict_proba(X)


WAIT_MS = 3_600_000  # max_wait_ms of an hour: a batcher that waited for it would hold the test until its deadline
DEADLINE = 60.0  # seconds: the waits of these tests, far below WAIT_MS


def test_a_lone_request_does_not_wait(config: Path) -> None:
    """max_wait_ms is the longest wait for requests known to be arriving; a lone request never waits for it. Its
    row reaches the model while no other request exists (the model holds it there), and a request sent only then
    goes to a call of its own. A batcher that waited would keep the lone row out of the model for an hour (the
    test fails at its deadline, a minute) or gather the second request with it (one call of 2 rows)."""
    observed = Calls()

    async def main(service: PredictionService) -> tuple[bool, list[Any]]:
        held = Held(service.model.estimator)
        service.model.estimator = held
        batcher = Batcher(service, max_batch_size=64, max_wait_ms=WAIT_MS)
        batcher.start()
        try:
            first, second = mixed_records(8, seed=14)[:2]
            lone = asyncio.create_task(batcher.predict([first]))
            if not await asyncio.to_thread(held.entered.wait, DEADLINE):
                return False, []  # the batcher kept the lone row: stopping it ends the wait
            later = asyncio.create_task(batcher.predict([second]))
            await asyncio.sleep(0)  # the later request is queued while the lone call is in the model
            held.release.set()
            return True, list(await asyncio.wait_for(asyncio.gather(lone, later), DEADLINE))
        finally:
            held.release.set()
            await batcher.stop()

    with request_side(config, model_calls=observed) as service:
        entered, answers = asyncio.run(main(service))
    assert entered, "the lone request's row did not reach the model: the batcher waited for max_wait_ms"
    assert observed.rows == [1, 1]
    assert [len(a) for a in answers] == [1, 1] and answers[0][0]["request_id"] != answers[1][0]["request_id"]


def test_a_request_known_to_be_arriving_is_waited_for(config: Path) -> None:
    """The other side of the rule, so that the test above can fail: while another request is being read (counted
    in ``arriving``, as ArrivalCounter counts it), the batcher waits for it and gathers it into the same call."""
    observed = Calls()

    async def main(service: PredictionService) -> list[Any]:
        batcher = Batcher(service, max_batch_size=64, max_wait_ms=WAIT_MS)
        batcher.start()
        try:
            first, second = mixed_records(8, seed=15)[:2]
            batcher.arriving += 1  # the second request's body is being read
            lone = asyncio.create_task(batcher.predict([first]))
            for _ in range(20):  # the batcher takes the first request and waits for the second
                await asyncio.sleep(0)
            assert not lone.done() and observed.rows == []
            batcher.arriving -= 1  # validated: Batcher.predict takes it off ``arriving`` as it queues it
            later = asyncio.create_task(batcher.predict([second]))
            return list(await asyncio.wait_for(asyncio.gather(lone, later), DEADLINE))
        finally:
            await batcher.stop()

    with request_side(config, model_calls=observed) as service:
        answers = asyncio.run(main(service))
    assert observed.rows == [2]
    assert [len(a) for a in answers] == [1, 1]


@pytest.mark.parametrize("max_batch_size", [64, 1])
def test_routes_in_process(config: Path, max_batch_size: int) -> None:
    """Both paths: bad record 422 without reaching the model, batch answers, one row logged per answer."""
    app = create_app(load_settings(config, batching={"max_batch_size": max_batch_size}), start_scheduler=False)
    rows = mixed_records(40, seed=7)
    with TestClient(app) as client:
        service, log = app.state.service, app.state.prediction_log
        assert client.post("/predict", json={**rows[0], "body_mass_g": "heavy"}).status_code == 422
        answers = [client.post("/predict", json=r).json() for r in rows[:10]]
        batch = client.post("/predict/batch", json={"records": rows[10:]}).json()["predictions"]
        got = [a["prediction"] for a in answers + batch]
        assert got == service.model.predict(rows).values
        assert len({a["request_id"] for a in answers + batch}) == len(rows)
        flush(client)
        assert log.written == len(rows)
        assert log.store.count() == len(rows)
        metrics = parse_metrics(client.get("/metrics").text)
        assert sample(metrics, "model_batch_rows_sum") == len(rows)
        assert sample(metrics, "model_inference_duration_seconds_count") == 11


def test_concurrent_culprit_in_process(config: Path) -> None:
    """A refused record among concurrent good requests: only its request is 422 and counted."""
    app = create_app(load_settings(config), start_scheduler=False)
    rows = mixed_records(64, seed=8)
    with TestClient(app) as client:
        service = app.state.service
        service.model.estimator = Refusing(service.model.estimator)
        rows[5]["body_mass_g"] = POISON
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda r: client.post("/predict", json=r).status_code, rows))
        assert [i for i, c in enumerate(codes) if c != 200] == [5]
        assert codes[5] == 422
        assert service.prediction_errors == 1 and service.predictions_total == len(rows) - 1


def test_in_process_server_gathers_concurrent_requests_and_logs_each(config: Path) -> None:
    """A real uvicorn server (in a thread of this process) under 16 concurrent clients: model calls of several
    rows, every answer its own request_id and its own row in the table, bad records 422 without harming their
    batch-mates."""
    rows = mixed_records(800, seed=9)
    bad = {**rows[0], "island": 7}
    with InProcessServer(config) as server:
        base = f"http://127.0.0.1:{server.port}"
        answered: list[dict[str, Any]] = []
        codes: list[int] = []
        lock = threading.Lock()

        def client(part: list[dict[str, Any]]) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                for i, r in enumerate(part):
                    resp = http.post("/predict", json=bad if i % 50 == 49 else r)
                    with lock:
                        codes.append(resp.status_code)
                        if resp.status_code == 200:
                            answered.append(resp.json())

        threads = [threading.Thread(target=client, args=(rows[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert set(codes) == {200, 422} and codes.count(422) == 16
        assert len({a["request_id"] for a in answered}) == len(answered) == len(rows) - 16
        flush(server)
        metrics = server.metrics()
        assert sample(metrics, "model_prediction_log_written_total") == len(answered)
        calls = sample(metrics, "model_batch_rows_count")
        gathered = calls - (sample(metrics, "model_batch_rows_bucket", le="1.0") or 0)
        assert gathered > 0, "no model call gathered more than one request"
        assert sample(metrics, "model_batch_rows_sum") == len(answered)
        assert sample(metrics, "model_predictions_total") == len(answered)
        ids = json.dumps(sorted(a["request_id"] for a in answered))
    from sqlalchemy import create_engine, text

    engine = create_engine(load_settings(config).resolved_database_url)
    with engine.connect() as conn:
        stored = sorted(r[0] for r in conn.execute(text("SELECT request_id FROM predictions")))
    engine.dispose()
    assert json.dumps(stored) == ids


def test_each_request_is_logged_in_its_own_context(config: Path) -> None:
    """Tracing or log context that middleware puts in contextvars follows each request's rows, even though a
    gathered call computes them in the model thread."""
    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")
    log = Enqueued(tag)
    seen = log.seen

    async def one(batcher: Batcher, name: str, recs: list[dict[str, Any]]) -> None:
        tag.set(name)
        await batcher.predict(recs)

    async def main(service: PredictionService) -> None:
        batcher = Batcher(service, max_batch_size=64, max_wait_ms=0)
        batcher.start()
        try:
            rows = mixed_records(20, seed=11)
            await asyncio.gather(*(one(batcher, f"r{i}", rows[i:i + 1 + i % 3]) for i in range(8)))
        finally:
            await batcher.stop()

    with request_side(config, log=log) as service:
        asyncio.run(main(service))
    assert sorted(seen) == sorted((f"r{i}", len(mixed_records(20, seed=11)[i:i + 1 + i % 3])) for i in range(8))


def test_routes_answer_the_same_with_batching_on_and_off(config: Path) -> None:
    """The same records, sent by 16 concurrent clients to an app with batching on and one by one to an app with
    batching off: the same predictions, the probabilities to floating-point rounding."""
    rows = mixed_records(240, seed=13)
    answers: dict[int, list[dict[str, Any]]] = {}
    for size in (64, 1):
        app = create_app(load_settings(config, batching={"max_batch_size": size}), start_scheduler=False)
        with TestClient(app) as client:
            if size > 1:
                with ThreadPoolExecutor(16) as pool:
                    answers[size] = list(pool.map(lambda r: client.post("/predict", json=r).json(), rows))
                metrics = parse_metrics(client.get("/metrics").text)
                assert sample(metrics, "model_batch_rows_sum") == len(rows)
            else:
                answers[size] = [client.post("/predict", json=r).json() for r in rows]
    on, off = answers[64], answers[1]
    assert [a["prediction"] for a in on] == [a["prediction"] for a in off]
    for a, b in zip(on, off, strict=True):
        assert a["probabilities"].keys() == b["probabilities"].keys()
        assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-12 for k in a["probabilities"])
