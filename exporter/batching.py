"""Adaptive batching: concurrent /predict and /predict/batch calls gathered into one model call.

The demo pipeline costs nearly the same for 32 rows as for one (the ColumnTransformer's per-call overhead), and
16 threadpool threads each running a one-row call only fight over the GIL. So with batching on, the routes are
async: a validated request (pydantic has already answered 422 for a bad record, which never enters a batch) puts
its records and a future on this worker's queue and awaits the future. One batcher task per worker process takes
the first waiting request and whatever else is already queued (opportunistic fill: a lone client never waits),
up to ``max_batch_size`` rows (a request is never split; one larger than the cap goes alone). Only while other
requests are known to be arriving (their bodies being read or validated, counted by ``ArrivalCounter``) does it
wait for them, at most ``max_wait_ms``. It runs the call in one dedicated thread, so the event loop keeps parsing
the next requests meanwhile, and these gather for the next call (continuous batching).

Each request keeps its own answers, request_ids, logged rows and count (``PredictionService.answer`` per request, run in
the request's own contextvars, so tracing or log context set by middleware follows its rows). When the
model refuses a gathered batch (ValueError / TypeError), each request is retried alone, so only the culprit gets
its 422 and is counted as a prediction error (any other exception, too, reaches only the request that raises it
alone); a non-finite output fails only the request whose rows it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exporter.service import PredictionError, PredictionService

if TYPE_CHECKING:
    from exporter.model import Predictions

log = logging.getLogger(__name__)

Answers = list[dict[str, Any]]
Outcome = Answers | Exception  # a request's answers, or what it gets alone: PredictionError (422), another error (500)
BATCHED_PATHS = frozenset({"/predict", "/predict/batch"})


@dataclass
class _Waiting:
    records: list[dict[str, Any]]
    future: asyncio.Future[Answers] = field(repr=False)
    # the request's contextvars (tracing, log context): its answers are built and logged inside them
    context: contextvars.Context = field(default_factory=contextvars.copy_context, repr=False)


# The arrival a request holds (a one-item list: True until the request is queued or finished), shared between
# ArrivalCounter and Batcher.predict through the request's context.
_arrival: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("batching_arrival", default=None)


def predict_gathered(
    service: PredictionService, requests: list[list[dict[str, Any]]], contexts: list[contextvars.Context] | None = None
) -> list[Outcome]:
    """One model call for several requests' records; each request's answers, or its own error. With
    ``contexts`` (one per request), each request's answers are built and logged in its own context."""
    run = [c.run for c in contexts] if contexts is not None else [_call] * len(requests)
    if len(requests) == 1:
        return [run[0](_alone, service, requests[0])]
    flat = [r for records in requests for r in records]
    try:
        result = service.infer(flat, alone=False)
    except Exception as exc:  # ValueError / TypeError: a refusal; anything else: each request meets it alone
        log.info("the model refused a gathered batch of %d requests (%s); retrying them one by one",
                 len(requests), type(exc).__name__)
        return [run[i](_alone, service, records) for i, records in enumerate(requests)]
    outcomes: list[Outcome] = []
    start = 0
    for i, records in enumerate(requests):
        share = result.rows(start, start + len(records))
        start += len(records)
        outcomes.append(run[i](_answer, service, records, share))
    return outcomes


def _call(fn: Callable[..., Outcome], *args: Any) -> Outcome:
    return fn(*args)


def _alone(service: PredictionService, records: list[dict[str, Any]]) -> Outcome:
    try:
        return service.predict(records)
    except Exception as exc:  # as the request would have met it without batching
        return exc


def _answer(service: PredictionService, records: list[dict[str, Any]], share: Predictions) -> Outcome:
    if not share.finite:
        try:
            service.refuse_non_finite()
        except PredictionError as exc:
            return exc
    return service.answer(records, share)


class Batcher:
    """This worker's queue of validated requests and the task that gathers them into model calls."""

    def __init__(self, service: PredictionService, max_batch_size: int, max_wait_ms: float) -> None:
        self.service = service
        self.max_rows = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.arriving = 0  # requests to the batched routes that are being read or validated (event loop only)
        self._queue: deque[_Waiting] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle (the app's lifespan, in the server's event loop) --------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """After the server has answered its requests in flight (uvicorn drains them before the lifespan ends)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:  # nothing should be left; never leave a caller hanging
            waiting = self._queue.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("the service is stopping"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the request side --------------------------------------------------------------------------------------
    async def predict(self, records: list[dict[str, Any]]) -> Answers:
        """Answers for one request's (validated) records, computed in a gathered model call."""
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception() is not None:
                log.error("the batcher task had stopped: %r; restarting it", self._task.exception())
            self.start()
        arrival = _arrival.get()
        if arrival is not None and arrival[0]:
            arrival[0] = False
            self.arriving -= 1
        future: asyncio.Future[Answers] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(records, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    # -- the batcher task --------------------------------------------------------------------------------------
    def _take(self, batch: list[_Waiting], rows: int) -> int:
        """Move queued requests into ``batch`` while they fit under the row cap; the rows now in the batch."""
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # its client went away before the call: nothing to predict or log
                self._queue.popleft()
                continue
            if batch and rows + len(head.records) > self.max_rows:
                break
            batch.append(self._queue.popleft())
            rows += len(head.records)
        return rows

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None and self._executor is not None
        wakeup, executor = self._wakeup, self._executor
        while True:
            if not self._queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            batch: list[_Waiting] = []
            rows = self._take(batch, 0)
            if self.max_wait > 0:
                deadline = loop.time() + self.max_wait
                # wait only for requests known to be on their way, never when alone
                while rows < self.max_rows and self.arriving > 0 and not self._queue:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    wakeup.clear()
                    try:
                        await asyncio.wait_for(wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                    rows = self._take(batch, rows)
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(
                    executor, predict_gathered, self.service, [w.records for w in batch], [w.context for w in batch]
                )
            except Exception as exc:  # a bug rather than the model's refusal: fail these requests, keep serving
                log.exception("a gathered model call failed")
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            for w, outcome in zip(batch, outcomes, strict=True):
                if w.future.done():
                    continue
                if isinstance(outcome, Exception):
                    w.future.set_exception(outcome)
                else:
                    w.future.set_result(outcome)


class ArrivalCounter:
    """Pure ASGI middleware: counts the requests to the batched routes that have arrived and are not yet queued
    (their bodies being read or validated), so the batcher waits for them and only for them."""

    def __init__(self, app: Callable[..., Awaitable[None]], batcher: Batcher) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in BATCHED_PATHS:
            await self.app(scope, receive, send)
            return
        arrival = [True]
        token = _arrival.set(arrival)
        self.batcher.arriving += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _arrival.reset(token)
            if arrival[0]:  # refused before it was queued (422, 413, ...)
                self.batcher.arriving -= 1
