"""/log/cloudevents: payload-logger events of a model served elsewhere (KServe, Seldon Core) into logged rows.

A request event and its response event make the rows, whichever arrives first: each half is checked on arrival (a
bad one is refused at once, to its sender), then waits in the database (exporter.store.EventPairs) until its
partner comes, to whichever process of the deployment. A half whose partner has not come within
``log.pair_timeout_seconds`` is deleted and counted. The paired rows go through PredictionService.log, so a pair
delivered again is a duplicate, ignored and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc

from exporter.config import LogSection
from exporter.db import REQUEST_ID_LENGTH, first_line
from exporter.inference_events import (
    REQUEST,
    RESPONSE,
    Decoding,
    EventError,
    InferenceEvent,
    check_counts,
    decode_request,
    decode_response,
    parse_event,
    request_ids,
)
from exporter.service import Logged, PredictionService, QueueFull
from exporter.store import EventPairs

log = logging.getLogger(__name__)


class EventRefused(Exception):
    """An event answered with ``status`` (4xx: the sender's mistake; 503: retry later) and ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


class EventIntake:
    def __init__(self, service: PredictionService, pairs: EventPairs, record: type[BaseModel], cfg: LogSection) -> None:
        self.service = service
        self.pairs = pairs
        self.record = record
        self.timeout = cfg.pair_timeout_seconds
        self.decoding = Decoding(cfg.input_columns, cfg.prediction_output, cfg.probabilities_output,
                                 sorted(service.classes))
        self._failing = False
        self.clock = time.time  # when halves arrive and expire

    def take(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """One event: refused (EventRefused), kept until its partner comes, or paired and logged."""
        try:
            event = parse_event(headers, body)
        except EventError as exc:  # not a CloudEvent of a payload logger
            self.service.count_events("unparsable")
            raise EventRefused(400, str(exc)) from exc
        try:
            rows = self._rows_of(event)
        except EventError as exc:  # a payload this config cannot read, or values /predict would refuse
            self.service.count_events("unparsable")
            raise EventRefused(422, str(exc)) from exc
        key = f"{event.component}|{event.request_id}"
        if len(key) > REQUEST_ID_LENGTH - 8:  # room for ":<i>" in the rows' ids
            self.service.count_events("unparsable")
            raise EventRefused(422, f"the event's request id is longer than {REQUEST_ID_LENGTH - 8} characters")
        ids = request_ids(event.request_id, rows)
        if self._logged_already(ids):  # a redelivery of a pair already logged: senders deliver at least once
            self.service.count_duplicates(len(ids))
            return {"status": "duplicate", "request_ids": ids}
        created_at = event.time.timestamp() if event.time is not None and event.kind == REQUEST else None
        data = orjson.dumps(event.data).decode()
        try:
            halves = self.pairs.offer(key, event.kind, data, created_at, self.clock())
        except sa_exc.SQLAlchemyError as exc:
            self._database_failing(exc)
            raise EventRefused(503, "database unavailable: the event cannot be kept for its partner; retry later"
                               ) from exc
        self._failing = False
        if halves is None:
            return {"status": "waiting for its " + (RESPONSE if event.kind == REQUEST else REQUEST)}
        request, response = halves[REQUEST], halves[RESPONSE]
        try:
            records = self._records(orjson.loads(request.data))
            predictions, probabilities = decode_response(orjson.loads(response.data), self.decoding)
            check_counts(len(records), len(predictions))
        except EventError as exc:
            self.service.count_events("unparsable", 2)
            raise EventRefused(422, f"the request and its response do not match: {exc}") from exc
        logged = [
            Logged(features, prediction, None if probabilities is None else probabilities[i], rid, request.created_at)
            for i, (rid, features, prediction) in enumerate(
                zip(request_ids(event.request_id, len(records)), records, predictions, strict=True))
        ]
        try:
            self.service.log(logged)
        except QueueFull as exc:
            self.pairs.put_back(key, [request, response], self.clock())  # the sender's retry pairs them again
            raise EventRefused(503, str(exc)) from exc
        self.service.count_events("paired", 2)
        return {"status": "logged", "request_ids": [row.request_id for row in logged]}

    def expire(self) -> None:
        """Delete and count the halves whose partner has not come in time (a scheduler chore)."""
        try:
            expired = self.pairs.expire(self.clock() - self.timeout)
        except sa_exc.SQLAlchemyError as exc:
            self._database_failing(exc)
            return
        if expired:
            self.service.count_events("unpaired_expired", expired)
            log.warning("log/cloudevents: %d events dropped, their partner did not come within %.0f s",
                        expired, self.timeout)

    def _rows_of(self, event: InferenceEvent) -> int:
        """Check one half on arrival; how many rows it makes."""
        if event.kind == REQUEST:
            return len(self._records(event.data))
        predictions, probabilities = decode_response(event.data, self.decoding)
        for i, prediction in enumerate(predictions):
            why = self.service.check_logged(prediction, None if probabilities is None else probabilities[i])
            if why is not None:
                raise EventError(f"prediction {i}: {why}")
        return len(predictions)

    def _records(self, data: Any) -> list[dict[str, Any]]:
        """The request's records, validated as /predict validates its records."""
        records = []
        for i, raw in enumerate(decode_request(data, self.decoding)):
            try:
                records.append(self.record.model_validate(raw).model_dump())
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise EventError(f"instance {i}: {where}: {first['msg']}") from None
        return records

    def _logged_already(self, ids: list[str]) -> bool:
        try:
            return len(self.service.prediction_log.current_labels(ids[:1])) == 1
        except Exception:  # the database is down: the pair's rows are deduplicated when they are logged
            return False

    def _database_failing(self, exc: BaseException) -> None:
        if not self._failing:
            log.error("log/cloudevents: the database cannot keep events: %s", first_line(exc))
        self._failing = True

