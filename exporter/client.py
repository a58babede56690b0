"""Log the predictions of a model served elsewhere to the exporter, from the model's own Python service.

    from exporter.client import PredictionLogger

    logger = PredictionLogger("http://drift-exporter:8000")
    request_id = logger.log({"bill_length_mm": 39.1, "island": "Biscoe"}, "Adelie",
                            probabilities={"Adelie": 0.9, "Chinstrap": 0.05, "Gentoo": 0.05})
    ...
    logger.close()  # at shutdown: sends what is queued

``log()`` never blocks and never raises on the exporter's account: records go into a bounded queue, and a
background thread posts them to ``/log/batch``, retrying with backoff while the exporter answers 503 or cannot be
reached. The request ids are made here, so a batch sent again after a lost answer is ignored by the exporter rather
than logged twice. What cannot be sent (the queue full, a batch the exporter refuses, or left at ``close()``) is
counted in ``.dropped`` and logged. Its one dependency is httpx.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRIED = frozenset({429, 502, 503, 504})  # the exporter (or a proxy before it) says: later


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON takes them, without importing numpy."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class PredictionLogger:
    """A non-blocking sender of predictions to ``<url>/log/batch``; see the module's docstring."""

    def __init__(self, url: str, token: str | None = None, *, queue_size: int = 10_000, batch_size: int = 500,
                 flush_interval: float = 0.5, max_backoff: float = 5.0, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.sent = 0  # records the exporter accepted (a duplicate it ignored included)
        self.dropped = 0  # records that will never reach it
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._abandoned = threading.Event()  # close() ran out of time: the batch in hand is counted, not sent
        self._in_hand = 0
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self._thread.start()

    def log(self, features: Mapping[str, Any], prediction: Any, probabilities: Mapping[str, float] | None = None,
            request_id: str | None = None) -> str:
        """Queue one prediction; its request_id (the given one, or a new one) for /feedback."""
        rid = request_id or str(uuid.uuid4())
        record: dict[str, Any] = {"features": dict(features), "prediction": prediction, "request_id": rid,
                                  "timestamp": datetime.now(UTC).isoformat()}  # when predicted, not when sent
        if probabilities is not None:
            record["probabilities"] = dict(probabilities)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop(1, "the queue is full")
        return rid

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds; what is left is counted dropped), then stop."""
        self._closing.set()
        self._thread.join(timeout)
        left = self._queue.qsize()
        if self._thread.is_alive():
            self._abandoned.set()
            left += self._in_hand
        if left:
            self._drop(left, "not sent before close()")
        if not self._thread.is_alive():
            self._http.close()  # else the abandoned thread may still be in a post; it exits after it

    def __enter__(self) -> PredictionLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sender thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._abandoned.is_set():
            batch = self._take()
            if batch:
                self._in_hand = len(batch)
                self._send(batch)
                self._in_hand = 0
            elif self._closing.is_set():
                return

    def _take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_interval
        while len(batch) < self.batch_size:
            wait = deadline - time.monotonic()
            if wait <= 0 or (self._closing.is_set() and self._queue.empty()):
                break
            try:
                batch.append(self._queue.get(timeout=min(wait, 0.05)))
            except queue.Empty:
                continue
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        """Post ``batch`` until the exporter takes or refuses it; retries wait out 503s and outages. Gives up only
        when close() has run out of time (the thread is then abandoned with the batch counted dropped)."""
        backoff = 0.1
        body = json.dumps({"records": batch}, default=_plain).encode()
        while not self._abandoned.is_set():
            try:
                resp = self._http.post("/log/batch", content=body, headers={"Content-Type": "application/json"})
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 202:
                    with self._lock:
                        self.sent += len(batch)
                    return
                if resp.status_code == 413 and len(batch) > 1:  # over the exporter's max_body_bytes: halve it
                    half = len(batch) // 2
                    self._send(batch[:half])
                    self._send(batch[half:])
                    return
                if resp.status_code not in RETRIED:
                    self._drop(len(batch), f"refused by the exporter ({resp.status_code}: {resp.text[:300]})")
                    return
                reason = f"HTTP {resp.status_code}"
            log.warning("prediction logger: sending %d records failed (%s); retrying in %.1f s",
                        len(batch), reason, backoff)
            self._abandoned.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _drop(self, records: int, why: str) -> None:
        with self._lock:
            self.dropped += records
        log.error("prediction logger: %d records dropped: %s", records, why)
