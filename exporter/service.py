"""The running service's state: model, reference, prediction log, latest drift and quality results.

Built by the app factory and kept on ``app.state.service``; nothing here is a module-level global, so tests build a
fresh one each time. The drift job writes ``drift_result`` / ``quality_result`` / ``report`` by replacing whole
immutable objects, so readers (the metrics collector, /drift) always see one run, never half of two.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from exporter.config import Settings
from exporter.drift import CATEGORICAL, NUMERICAL, DriftResult, MethodOverride, Reference
from exporter.drift_job import DriftJob
from exporter.estimation import EstimateResult, EstimationSetup, setup_from_reference
from exporter.features import FeatureTypeError, FeatureTypes, read_reference
from exporter.guard import RequestPathError, check_request_path
from exporter.model import Model, Predictions
from exporter.predictions import (
    LabelUpdate,
    PredictionLog,
    PredictionRow,
    PredictionStore,
    StoreNotWritable,
    new_request_id,
)
from exporter.quality import QualityResult, quality
from exporter.report import CachedReport
from exporter.schema import record_model
from exporter.stattests import check_method

log = logging.getLogger(__name__)


class PredictionError(Exception):
    """The model could not predict on valid-looking input (it raised, or gave a non-finite output)."""


class CallObserver(Protocol):
    """Where model calls are counted (exporter.metrics.ModelCallMetrics, attached by the app)."""

    def observe(self, rows: int, seconds: float) -> None: ...


class _Unobserved:
    def observe(self, rows: int, seconds: float) -> None:
        pass


class StartupError(Exception):
    """A problem that prevents the service from starting, with a message naming the file and the problem."""


@dataclass
class JobStats:
    runs: int = 0
    failures: int = 0
    last_success: float = 0.0
    last_duration: float = 0.0
    last_error: str | None = None
    report_failures: int = 0
    timeouts: int = 0
    last_report_duration: float = 0.0


def read_table(path: Path, category_types: dict[str, str]) -> pd.DataFrame:
    if not path.is_file():
        raise StartupError(f"{path}: reference file not found")
    try:
        return read_reference(path, category_types)
    except Exception as exc:
        raise StartupError(f"{path}: cannot read reference data: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def check_methods(settings: Settings) -> None:
    """Refuse a configured stat test Evidently lacks for the column's type: it would fail every drift run."""
    for name, cfg in settings.drift.per_feature.items():
        if cfg.method is not None:
            kind = NUMERICAL if name in settings.features.numerical else CATEGORICAL
            try:
                check_method(cfg.method, kind)
            except ValueError as exc:
                raise StartupError(f"drift.per_feature.{name}.method: {exc}") from None
    method = settings.drift.prediction.method
    if method is not None:
        task = settings.model.task
        try:
            check_method(method, NUMERICAL if task == "regression" else CATEGORICAL)
        except ValueError as exc:
            raise StartupError(f"drift.prediction.method: {exc} (the predictions of a {task} model)") from None


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        features = settings.features
        check_methods(settings)
        ref_path = settings.resolve(settings.reference.path)
        frame = read_table(ref_path, dict(features.category_types))
        missing = [c for c in features.all if c not in frame.columns]
        if missing:
            raise StartupError(f"{ref_path}: reference data lacks configured feature(s): {', '.join(missing)}")
        try:
            self.types = FeatureTypes.from_reference(frame, features.numerical, features.categorical,
                                                     features.category_types)
        except FeatureTypeError as exc:
            raise StartupError(f"{ref_path}: {exc}") from exc
        try:
            self.model = Model.load(settings.resolve(settings.model.path), self.types, settings.model.task)
        except Exception as exc:
            raise StartupError(str(exc)) from exc
        self.record_model = record_model(features, self.types.value_types())
        try:
            checked = check_request_path(self.model, self.record_model, frame)
        except RequestPathError as exc:
            raise StartupError(f"{ref_path}: {exc}") from exc
        prediction_type = NUMERICAL if settings.model.task == "regression" else CATEGORICAL
        ref_predictions, ref_probas = self._reference_predictions(frame, ref_path)
        try:
            self.reference = Reference(
                frame, features.numerical, features.categorical, ref_predictions, prediction_type
            )
        except ValueError as exc:
            raise StartupError(f"{ref_path}: {exc}") from exc
        self.quality_reference: dict[str, float] = {}
        self.estimation: EstimationSetup | None = None
        if settings.target is not None:
            if settings.target not in frame.columns:
                raise StartupError(f"{ref_path}: reference data lacks the target column {settings.target!r}")
            labelled = frame[settings.target].notna()
            self.quality_reference = quality(
                settings.model.task,
                frame.loc[labelled, settings.target].tolist(),
                ref_predictions[labelled].tolist(),
                None if ref_probas is None else [p for p, ok in zip(ref_probas, labelled, strict=True) if ok],
                self.model.classes,
            ).metrics
            check = (str(settings.resolve(settings.model.path)), self.model.features)
            self.estimation = setup_from_reference(
                settings.model.task, self.model.classes, frame, settings.target, ref_predictions, ref_probas,
                features.numerical, features.categorical, check if settings.reference.check_held_out else None)

        self.store = PredictionStore(settings.resolved_database_url)
        try:
            self.store.check_writable()
        except StoreNotWritable as exc:
            self.store.dispose()
            raise StartupError(f"database_url: {exc}") from exc
        plog = settings.prediction_log
        self.prediction_log = PredictionLog(
            self.store, queue_size=plog.queue_size, batch_size=plog.batch_size, flush_interval=plog.flush_interval_seconds
        )
        self.predictions_total = 0
        self.prediction_errors = 0
        self.feedback_total = 0
        self.feedback_replaced = 0
        self.pruned_total = 0
        self._counter_lock = threading.Lock()
        self.model_calls: CallObserver = _Unobserved()  # the app attaches its histograms
        self.job_stats = JobStats()
        self.drift_result: DriftResult | None = None
        self.quality_result: QualityResult | None = None
        self.estimate_result: EstimateResult | None = None
        self.report: CachedReport | None = None
        self.overrides = {
            name: MethodOverride(cfg.method, cfg.threshold) for name, cfg in settings.drift.per_feature.items()
        }
        self.prediction_override = MethodOverride(settings.drift.prediction.method, settings.drift.prediction.threshold)
        self.drift_job = DriftJob(self)
        # Said once everything else has held, so that a refused start prints its one error line only.
        log.info("request path checked: %d reference rows get the model's own answers through /predict", checked)

    def _reference_predictions(
        self, frame: pd.DataFrame, ref_path: Path
    ) -> tuple[pd.Series, list[dict[str, float]] | None]:
        column = self.settings.reference.prediction_column
        if column is not None:
            if column not in frame.columns:
                raise StartupError(f"{ref_path}: reference data lacks the prediction column {column!r}")
            return frame[column], None
        try:
            predicted = self.model.predict_frame(frame)
        except Exception as exc:
            raise StartupError(f"{ref_path}: the model cannot predict on the reference data: {exc}") from exc
        return pd.Series(predicted.values, index=frame.index), predicted.probabilities

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.store.create_schema()
            self.drift_job.deployment.runs.create()
            self.prediction_log.schema_ready = True
        except Exception as exc:
            # The writer creates the table once the database is reachable; readiness reports it down meanwhile.
            log.error("database not reachable at start-up (%s); predictions are buffered until it is", exc)
            self.prediction_log.database_up = False
        self.prediction_log.start()

    def stop(self) -> None:
        try:
            self.drift_job.close()
        except Exception:  # whatever stopping the drift job does, the prediction log is flushed
            log.exception("stopping the drift job failed")
        finally:
            self.prediction_log.stop(self.settings.prediction_log.shutdown_timeout_seconds)
            self.store.dispose()

    # -- predictions -------------------------------------------------------------------------------------------
    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One request's records -> answers (logged and counted); PredictionError when the model refuses them."""
        return self.answer(records, self.infer(records))

    def infer(self, records: list[dict[str, Any]], *, alone: bool = True) -> Predictions:
        """One model call, timed and counted in the model-call histograms. ``alone``: the records are one request's,
        so a refusal is that request's error (counted, logged); a gathered batch's refusal is retried request by
        request by exporter.batching, which counts only the culprits."""
        started = time.perf_counter()
        try:
            result: Predictions = self.model.predict(records)
        except (ValueError, TypeError) as exc:  # scikit-learn's way of refusing an input
            if not alone:
                raise
            self._count_error()
            log.warning("the model refused a valid request: %s: %s", type(exc).__name__, _one_line(exc))
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
        version = self.settings.model.version
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

    def _count_error(self) -> None:
        with self._counter_lock:
            self.prediction_errors += 1

    # -- feedback ----------------------------------------------------------------------------------------------
    def unknown_request_ids(self, request_ids: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Ids that match no logged prediction, and the current label of those that do."""
        return self.prediction_log.labels_known(request_ids)

    def add_feedback(self, items: list[tuple[str, Any]], current: dict[str, Any]) -> bool:
        now = time.time()
        updates = [LabelUpdate(rid, label, now) for rid, label in items]
        if not self.prediction_log.enqueue_labels(updates):
            return False
        with self._counter_lock:
            self.feedback_total += len(items)
            self.feedback_replaced += sum(
                1 for rid, label in items if current.get(rid) is not None and current[rid] != label
            )
        return True

    # -- drift job (exporter.drift_job) ------------------------------------------------------------------------
    def run_drift_job(self) -> None:
        self.drift_job.tick()

    def serve_newest(self) -> None:
        self.drift_job.serve_newest()

    def readiness(self) -> dict[str, bool]:
        return {
            "model": self.model is not None,
            "reference": self.reference.rows > 0,
            "database": self.prediction_log.database_up and self.store.ping(),
        }
