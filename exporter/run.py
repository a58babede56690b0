"""What one drift run computes: the window -> drift, realized and estimated quality, the HTML report.

Pure of where it runs (exporter.runners): a JobSpec in, a JobOutput out, the store read and never written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from exporter.drift import DriftResult, MethodOverride, Reference, compute_drift
from exporter.estimation import LABEL, PROBABILITIES, EstimateResult, EstimationSetup, estimate_window
from exporter.importance import Importance, ImportanceSetup
from exporter.quality import QualityResult, quality
from exporter.reference_check import ReferenceCheck
from exporter.report import CachedReport, build_report
from exporter.segments import SegmentReference
from exporter.store import PredictionStore

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything a run needs; picklable, so a worker process gets it once at start."""

    reference: Reference
    database_url: str
    window_size: int
    window_seconds: float | None
    min_rows: int
    drift_share: float
    report: bool
    task: str
    classes: list[Any]
    with_quality: bool
    model_version: str | None = None  # the window holds this version's predictions only (None: every version)
    overrides: dict[str, MethodOverride] = field(default_factory=dict)
    prediction_override: MethodOverride = field(default_factory=MethodOverride)
    alpha: float | None = None  # calibrated thresholds' per-run false-flag probability; None: Evidently's thresholds
    estimation: EstimationSetup | None = None  # label-free quality estimation; fitted once where the runs happen
    reference_check: ReferenceCheck | None = None  # run once where the runs happen, after the first
    segments: SegmentReference | None = None  # drift.segments: drift per segment
    importance: ImportanceSetup | None = None  # computed once where the runs happen (prepare), then dropped
    importance_result: Importance | None = None


@dataclass
class JobOutput:
    drift: DriftResult
    quality: QualityResult | None
    report: CachedReport | None
    report_error: str | None
    compute_seconds: float  # window, drift, quality and estimate; the report is built after and not counted
    report_seconds: float = 0.0
    estimate: EstimateResult | None = None
    estimate_seconds: float = 0.0  # part of compute_seconds


def prepare(spec: JobSpec) -> None:
    """Fit what the runs reuse (the estimator), once per runner; a failure is logged, and the runs go on without
    an estimate."""
    if spec.estimation is not None:
        try:
            spec.estimation.fit()
        except Exception as exc:
            log.error("quality estimation disabled: fitting it on the reference failed: %s: %s",
                      type(exc).__name__, exc)
            spec.estimation = None
    if spec.importance is not None:
        try:
            spec.importance_result = spec.importance.compute()
        except Exception as exc:
            log.error("feature importance disabled: computing it on the reference failed: %s: %s",
                      type(exc).__name__, exc)
        if spec.importance_result is None:
            log.warning("feature importance: none (the model has neither feature_importances_ nor coef_ and there "
                        "is no target for permutation importance)")
        else:
            log.info("feature importance (%s) computed on %d reference rows in %.2f s",
                     spec.importance_result.method, spec.importance_result.rows, spec.importance_result.seconds)
        spec.importance = None  # the model and rows are not needed again


def run_job(spec: JobSpec, store: PredictionStore) -> JobOutput:
    started = time.monotonic()
    window = store.window(spec.window_size, spec.window_seconds, model_version=spec.model_version,
                          outcomes=(PROBABILITIES, LABEL) if spec.estimation is not None else None)
    outcomes = window[[c for c in (PROBABILITIES, LABEL) if c in window]]
    window = window.drop(columns=list(outcomes.columns))
    result = compute_drift(
        spec.reference,
        window,
        min_rows=spec.min_rows,
        drift_share=spec.drift_share,
        per_feature=spec.overrides,
        prediction_override=spec.prediction_override,
        alpha=spec.alpha,
    )
    if spec.segments is not None and result.skipped_reason is None:
        try:
            result = dataclasses.replace(result, segments=spec.segments.judge(window, spec.alpha, spec.overrides))
        except Exception as exc:  # the pooled drift of the run stands without it
            log.error("segment drift failed: %s: %s", type(exc).__name__, exc)
    if spec.importance_result is not None and result.skipped_reason is None:
        result = with_importance(result, spec.importance_result)
    quality_result = None
    if spec.with_quality:
        labelled = store.labelled_rows(spec.window_size, spec.model_version, features=bool(result.segments))
        quality_result = quality(spec.task, labelled.labels, labelled.predictions, labelled.probabilities,
                                 spec.classes)
        if spec.segments is not None and labelled.features is not None:
            try:
                result = dataclasses.replace(result, segments=spec.segments.with_quality(
                    result.segments, spec.task, spec.classes, labelled.labels, labelled.predictions,
                    labelled.probabilities, labelled.features))
            except Exception as exc:  # the run stands without it
                log.error("segment quality failed: %s: %s", type(exc).__name__, exc)
    estimate, estimate_seconds = None, 0.0
    if spec.estimation is not None and result.skipped_reason is None:
        estimate_started = time.monotonic()
        try:
            estimate = estimate_window(spec.estimation, window.join(outcomes))
        except Exception as exc:  # the drift and realized quality of the run stand without it
            log.error("quality estimation failed: %s: %s", type(exc).__name__, exc)
        if spec.segments is not None and result.segments:
            try:
                result = dataclasses.replace(result, segments=spec.segments.with_estimates(
                    result.segments, spec.estimation, window.join(outcomes)))
            except Exception as exc:  # the run stands without the segments' estimates
                log.error("segment quality estimation failed: %s: %s", type(exc).__name__, exc)
        estimate_seconds = time.monotonic() - estimate_started
    compute_seconds = time.monotonic() - started
    report = report_error = None
    report_started = time.monotonic()
    if spec.report and result.skipped_reason is None:
        try:
            report = build_report(spec.reference, window, result, calibrated=spec.alpha is not None)
        except Exception as exc:
            report_error = f"{type(exc).__name__}: {exc}"
    return JobOutput(result, quality_result, report, report_error, compute_seconds,
                     time.monotonic() - report_started, estimate, estimate_seconds)


def with_importance(result: DriftResult, importance: Importance) -> DriftResult:
    """``result`` with each feature's importance, the features ordered by it (most important first)."""
    values = importance.values
    features = {name: dataclasses.replace(f, importance=values.get(name)) for name, f in result.features.items()}
    ordered = dict(sorted(features.items(), key=lambda kv: -(kv[1].importance if kv[1].importance is not None
                                                             else -float("inf"))))
    return dataclasses.replace(result, features=ordered, importance_method=importance.method)
