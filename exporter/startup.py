"""Start-up: every part the service needs, built and checked from the settings once.

Each check refuses with one line naming the file and the problem (StartupError), before anything serves: a
stat test Evidently lacks, a reference that is missing or lacks a feature, a model that cannot be loaded or does
not answer the request path as it answers the reference, an SQLite file that cannot be written. Nothing here
holds state once built; the app factory and the CLI put the parts together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from exporter.config import Settings
from exporter.db import Database, StoreNotWritable
from exporter.drift import CATEGORICAL, NUMERICAL, MethodOverride, Reference
from exporter.estimation import EstimationSetup, setup_from_reference
from exporter.features import FeatureTypeError, FeatureTypes, category_text, read_reference
from exporter.guard import RequestPathError, check_request_path
from exporter.importance import ImportanceSetup
from exporter.importance import setup as importance_setup
from exporter.model import Model, plain
from exporter.quality import quality
from exporter.reference_check import ReferenceCheck
from exporter.run import JobSpec
from exporter.schema import record_model
from exporter.segments import SegmentReference, SegmentSpec
from exporter.stattests import check_method

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A problem that prevents the service from starting, with a message naming the file and the problem."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@dataclass(frozen=True)
class Parts:
    """What start-up built from the settings: the model and its request schema, the reference and what the
    drift job derives from it."""

    settings: Settings
    model: Model | None  # None: monitor-only, the model is served elsewhere
    record_model: type[BaseModel]
    reference: Reference
    classes: list[Any]  # a classifier's classes (the model's, or the reference predictions'); [] for regression
    quality_reference: dict[str, float] = field(default_factory=dict)
    estimation: EstimationSetup | None = None
    reference_check: ReferenceCheck | None = None
    request_path_rows: int = 0  # reference rows that /predict was checked to answer as the model does
    segments: SegmentReference | None = None
    importance: ImportanceSetup | None = None

    def job_spec(self, database_url: str | None = None) -> JobSpec:
        s = self.settings
        cfg = s.drift
        return JobSpec(
            reference=self.reference,
            database_url=database_url or s.resolved_database_url,
            window_size=cfg.window_size,
            window_seconds=cfg.window_seconds,
            min_rows=cfg.min_rows,
            drift_share=cfg.drift_share,
            report=cfg.report,
            task=s.model.task,
            classes=self.classes,
            with_quality=s.target is not None,
            model_version=s.model.version,
            overrides={name: MethodOverride(c.method, c.threshold) for name, c in cfg.per_feature.items()},
            prediction_override=MethodOverride(cfg.prediction.method, cfg.prediction.threshold),
            alpha=cfg.alpha,
            estimation=self.estimation,
            reference_check=self.reference_check,
            segments=self.segments,
            importance=self.importance,
        )


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


def read_table(path: Path, category_types: dict[str, str]) -> pd.DataFrame:
    if not path.is_file():
        raise StartupError(f"{path}: reference file not found")
    try:
        return read_reference(path, category_types)
    except Exception as exc:
        raise StartupError(f"{path}: cannot read reference data: {one_line(exc)}") from exc


def build(settings: Settings) -> Parts:
    """Every part but the database, checked; StartupError with one line on the first problem."""
    features = settings.features
    check_methods(settings)
    ref_path = settings.resolve(settings.reference.path)
    frame = read_table(ref_path, dict(features.category_types))
    missing = [c for c in features.all if c not in frame.columns]
    if missing:
        raise StartupError(f"{ref_path}: reference data lacks configured feature(s): {', '.join(missing)}")
    try:
        types = FeatureTypes.from_reference(frame, features.numerical, features.categorical, features.category_types)
    except FeatureTypeError as exc:
        raise StartupError(f"{ref_path}: {exc}") from exc
    record = record_model(features, types.value_types())
    model, checked, model_path = None, 0, None
    if settings.model.path is not None:
        model_path = settings.resolve(settings.model.path)
        try:
            model = Model.load(model_path, types, settings.model.task)
        except Exception as exc:
            raise StartupError(str(exc)) from exc
        try:
            checked = check_request_path(model, record, frame)
        except RequestPathError as exc:
            raise StartupError(f"{ref_path}: {exc}") from exc
    predictions, probabilities = _reference_predictions(settings, model, frame, ref_path)
    classes = model.classes if model is not None else _logged_classes(settings, predictions)
    prediction_type = NUMERICAL if settings.model.task == "regression" else CATEGORICAL
    try:
        reference = Reference(frame, features.numerical, features.categorical, predictions, prediction_type,
                              settings.drift.multivariate.method)
    except ValueError as exc:
        raise StartupError(f"{ref_path}: {exc}") from exc
    baseline: dict[str, float] = {}
    estimation = check = quality_of = None
    target = settings.target
    if target is not None:
        if target not in frame.columns:
            raise StartupError(f"{ref_path}: reference data lacks the target column {target!r}")
        labelled = frame[target].notna().to_numpy()

        def quality_of(mask: np.ndarray) -> dict[str, float]:
            """The model's quality on the labelled reference rows ``mask`` picks: the baseline, of all or of a
            segment."""
            pick = mask & labelled
            return quality(settings.model.task, frame.loc[pick, target].tolist(), predictions[pick].tolist(),
                           None if probabilities is None else [p for p, ok in zip(probabilities, pick, strict=True)
                                                               if ok],
                           classes).metrics

        baseline = quality_of(np.ones(len(frame), dtype=bool))
        if settings.model.task == "classification" and probabilities is None and model is None:
            log.warning("quality estimation off: it needs the model's probabilities on the reference "
                        "(reference.probability_columns)")
        estimation = setup_from_reference(settings.model.task, classes, frame, target, predictions,
                                          probabilities, features.numerical, features.categorical,
                                          settings.reference.adapts(settings.model.task))
        if estimation is not None and settings.reference.check_held_out and model is not None:
            check = ReferenceCheck.of(str(model_path), settings.model.task, frame, model.features, target, predictions)
    segments = None
    if settings.drift.segments:
        segments = SegmentReference(reference, SegmentSpec(tuple(settings.drift.segments), settings.drift.max_segments,
                                                           settings.drift.segment_min_rows), quality_of)
    importance = None
    if model is not None:
        importance = importance_setup(model.estimator, settings.model.task, model.features, frame, target)
    else:
        log.info("feature importance: none in monitor-only mode (no model here to permute or read)")
    return Parts(settings, model, record, reference, classes, baseline, estimation, check, checked, segments,
                 importance)


def _logged_classes(settings: Settings, predictions: pd.Series) -> list[Any]:
    """Monitor-only: the classes are those of the reference predictions and probability columns, one value per
    text, in the order of their text (the order of a V2 probabilities tensor)."""
    if settings.model.task != "classification":
        return []
    by_text: dict[str, Any] = {}
    for value in [*predictions.dropna().tolist(), *(settings.reference.probability_columns or {})]:
        by_text.setdefault(category_text(value), plain(value))
    return [by_text[text] for text in sorted(by_text)]


def _reference_probabilities(settings: Settings, frame: pd.DataFrame, ref_path: Path,
                             classes: list[Any]) -> list[dict[str, float]] | None:
    columns = settings.reference.probability_columns
    if columns is None:
        return None
    missing = [c for c in columns.values() if c not in frame.columns]
    if missing:
        raise StartupError(f"{ref_path}: reference data lacks probability column(s): {', '.join(missing)}")
    texts = [category_text(c) for c in classes]
    absent = [t for t in texts if t not in columns]
    if absent:
        raise StartupError(f"reference.probability_columns: no column for class(es) {', '.join(absent)} of the "
                           "reference predictions")
    values = frame[[columns[t] for t in texts]].astype(float)
    if values.isna().any().any() or not ((values >= 0) & (values <= 1)).all().all():
        raise StartupError(f"{ref_path}: probability columns must hold numbers in [0, 1], with no gaps")
    off = (values.sum(axis=1) - 1).abs() > 1e-6
    if off.any():
        raise StartupError(f"{ref_path}: the probability columns of {int(off.sum())} reference row(s) do not sum "
                           "to 1")
    return [dict(zip(texts, row, strict=True)) for row in values.itertuples(index=False, name=None)]


def _reference_predictions(
    settings: Settings, model: Model | None, frame: pd.DataFrame, ref_path: Path
) -> tuple[pd.Series, list[dict[str, float]] | None]:
    column = settings.reference.prediction_column
    if column is not None:
        if column not in frame.columns:
            raise StartupError(f"{ref_path}: reference data lacks the prediction column {column!r}")
        if model is None:
            probabilities = _reference_probabilities(settings, frame, ref_path,
                                                     _logged_classes(settings, frame[column]))
            return frame[column], probabilities
        return frame[column], None
    assert model is not None  # the settings require a prediction column without a model
    try:
        predicted = model.predict_frame(frame)
    except Exception as exc:
        raise StartupError(f"{ref_path}: the model cannot predict on the reference data: {exc}") from exc
    return pd.Series(predicted.values, index=frame.index), predicted.probabilities


def open_database(settings: Settings) -> Database:
    """The prediction log's database; an SQLite file that cannot be written is refused now (a database server
    that is down is not: rows are buffered and the tables created once it answers)."""
    db = Database(settings.resolved_database_url)
    try:
        db.check_writable()
    except StoreNotWritable as exc:
        db.dispose()
        raise StartupError(f"database_url: {exc}") from exc
    return db
