"""The request side: predictions answered, logged and counted; labels checked and queued.

Given the model, the prediction log and where model calls are observed; it keeps nothing but its counters.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.features import category_text
from exporter.model import Model, Predictions
from exporter.prediction_log import PredictionLog
from exporter.startup import one_line
from exporter.store import DatabaseUnavailable, LabelUpdate, PredictionRow, new_request_id

log = logging.getLogger(__name__)

SHOWN_IDS = 20  # request_ids named in a refusal; a batch may hold a thousand


class PredictionError(Exception):
    """The model could not predict on valid-looking input (it raised, or gave a non-finite output)."""


class UnknownRequestIds(Exception):
    """Labels for request_ids that match no logged prediction; nothing of the batch is queued."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"unknown request_id(s): {', '.join(ids[:SHOWN_IDS])}")
        self.ids = ids


class LabelNotAClass(Exception):
    """A classification label that is none of the model's classes."""


class QueueFull(Exception):
    """The prediction log's queue has no room for the batch; nothing of it is queued."""


class CallObserver(Protocol):
    """Where model calls are counted (exporter.metrics.ModelCallMetrics)."""

    def observe(self, rows: int, seconds: float) -> None: ...


class Unobserved:
    def observe(self, rows: int, seconds: float) -> None:
        pass


def shorten(value: Any, limit: int = 64) -> str:
    """A client's value as a refusal names it: never more than ``limit`` characters of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@dataclass(frozen=True)
class Logged:
    """One prediction made elsewhere (/log, /log/cloudevents), its features validated as /predict's are."""

    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None = None
    request_id: str | None = None
    created_at: float | None = None  # when it was predicted (epoch seconds); None: now


class PredictionService:
    def __init__(self, model: Model | None, model_version: str, prediction_log: PredictionLog,
                 model_calls: CallObserver | None = None, classes: list[Any] | None = None) -> None:
        self.model = model  # None: monitor-only, predictions come in through log()
        self.model_version = model_version
        self.prediction_log = prediction_log
        self.model_calls: CallObserver = model_calls or Unobserved()
        known = classes if classes is not None else (model.classes if model is not None else [])
        self.classes = {category_text(c) for c in known}
        self.predictions_total = 0
        self.log_accepted = 0
        self.log_duplicates = 0
        self.log_refused = 0
        self.events = dict.fromkeys(("paired", "unpaired_expired", "unparsable"), 0)  # /log/cloudevents
        self.prediction_errors = 0
        self.feedback_total = 0
        self.feedback_replaced = 0
        self._counter_lock = threading.Lock()
        self._log_lock = threading.Lock()

    # -- predictions -------------------------------------------------------------------------------------------
    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One request's records -> answers (logged and counted); PredictionError when the model refuses them."""
        return self.answer(records, self.infer(records))

    def infer(self, records: list[dict[str, Any]], *, alone: bool = True) -> Predictions:
        """One model call, timed and counted in the model-call histograms. ``alone``: the records are one request's,
        so a refusal is that request's error (counted, logged); a gathered batch's refusal is retried request by
        request by exporter.batching, which counts only the culprits."""
        assert self.model is not None, "monitor-only: /predict is not served"
        started = time.perf_counter()
        try:
            result: Predictions = self.model.predict(records)
        except (ValueError, TypeError) as exc:  # scikit-learn's way of refusing an input
            if not alone:
                raise
            self._count_error()
            log.warning("the model refused a valid request: %s: %s", type(exc).__name__, one_line(exc))
            # The model's own message names its internals; the client gets a plain sentence, the log the details.
            raise PredictionError("the model cannot predict on this input (the service log has the details)") from exc
        finally:
            self.model_calls.observe(len(records), time.perf_counter() - started)
        if alone and not result.finite:
            self.refuse_non_finite()
        return result

    def refuse_non_finite(self) -> None:
        self._count_error()
        raise PredictionError("the model gave a non-finite output for this input")

    def answer(self, records: list[dict[str, Any]], result: Predictions) -> list[dict[str, Any]]:
        """Answers for one request's records and their predictions: a request_id each, logged, counted."""
        now = time.time()
        version = self.model_version
        rows = [
            PredictionRow(
                new_request_id(),
                now,
                version,
                record,
                value,
                None if result.probabilities is None else result.probabilities[i],
            )
            for i, (record, value) in enumerate(zip(records, result.values, strict=True))
        ]
        self.prediction_log.enqueue(rows)
        with self._counter_lock:
            self.predictions_total += len(rows)
        return [
            {
                "request_id": r.request_id,
                "prediction": r.prediction,
                "probabilities": r.probabilities,
                "model_version": version,
            }
            for r in rows
        ]

    # -- predictions made elsewhere -------------------------------------------------------------------------------
    def log(self, items: list[Logged]) -> tuple[list[str], int]:
        """Queue predictions made elsewhere, all or none (QueueFull); their request ids, and how many of them
        were duplicates. A request_id already logged (queued, in the table, or earlier in the batch) is ignored
        and counted: senders deliver at least once. While the database is down the table cannot be asked; the
        rows are queued, and the writer skips any that are already in the table."""
        ids = [item.request_id or new_request_id() for item in items]
        given = [rid for rid, item in zip(ids, items, strict=True) if item.request_id is not None]
        try:
            known = set(self.prediction_log.current_labels(given)) if given else set()
        except DatabaseUnavailable:
            known = set()
        now = time.time()
        with self._log_lock:  # one check-then-queue at a time: two retries of one record race otherwise
            seen: set[str] = set()
            rows = []
            for rid, item in zip(ids, items, strict=True):
                if rid in known or rid in seen or (item.request_id is not None and self._queued(rid)):
                    continue
                seen.add(rid)
                rows.append(PredictionRow(rid, item.created_at or now, self.model_version, item.features,
                                          item.prediction, item.probabilities))
            if not self.prediction_log.enqueue_all(rows):  # 503: not counted refused, the sender retries it
                raise QueueFull("prediction log queue is full; retry later")
        duplicates = len(items) - len(rows)
        with self._counter_lock:
            self.predictions_total += len(rows)
            self.log_accepted += len(rows)
            self.log_duplicates += duplicates
        return ids, duplicates

    def check_logged(self, prediction: Any, probabilities: dict[str, float] | None) -> str | None:
        """Why a logged prediction cannot be taken (None: it can): a class the reference never predicted, or
        probabilities that are not a distribution over the classes."""
        if self.classes and category_text(prediction) not in self.classes:
            return f"prediction {shorten(prediction)} is not among the model's classes {sorted(self.classes)}"
        if probabilities is not None:
            if not self.classes:
                return "probabilities are for classification models"
            if set(probabilities) != self.classes:
                return f"probabilities must have the model's classes {sorted(self.classes)} as keys"
            if any(not 0 <= p <= 1 for p in probabilities.values()):
                return "probabilities must be in [0, 1]"
            if abs(sum(probabilities.values()) - 1) > 1e-6:
                return f"probabilities must sum to 1 (within 1e-6), not {sum(probabilities.values())!r}"
        return None

    def count_duplicates(self, rows: int) -> None:
        with self._counter_lock:
            self.log_duplicates += rows

    def count_events(self, outcome: str, events: int = 1) -> None:
        with self._counter_lock:
            self.events[outcome] += events

    def _queued(self, request_id: str) -> bool:
        return self.prediction_log.pending_label(request_id)[0]

    def count_refused(self, rows: int) -> None:
        """Logged rows refused as bad input (422): lost, unless the sender mends them."""
        with self._counter_lock:
            self.log_refused += rows

    def _count_error(self) -> None:
        with self._counter_lock:
            self.prediction_errors += 1

    # -- feedback ----------------------------------------------------------------------------------------------
    def record_feedback(self, items: list[tuple[str, Any]]) -> int:
        """Queue labels for logged predictions, all or none: LabelNotAClass, UnknownRequestIds,
        store.DatabaseUnavailable (the ids cannot be looked up) or QueueFull refuse the whole batch."""
        if self.classes:
            wrong = [label for _, label in items if category_text(label) not in self.classes]
            if wrong:
                shown = ", ".join(shorten(w) for w in wrong[:5])
                raise LabelNotAClass(f"label(s) {shown} not among the model's classes {sorted(self.classes)}")
        current = self.prediction_log.current_labels([rid for rid, _ in items])
        unknown = [rid for rid, _ in items if rid not in current]
        if unknown:
            raise UnknownRequestIds(unknown)
        now = time.time()
        if not self.prediction_log.enqueue_labels([LabelUpdate(rid, label, now) for rid, label in items]):
            raise QueueFull("prediction log queue is full; retry later")
        with self._counter_lock:
            self.feedback_total += len(items)
            self.feedback_replaced += sum(
                1 for rid, label in items if current.get(rid) is not None and current[rid] != label
            )
        return len(items)
