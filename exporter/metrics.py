"""Prometheus collectors, read at scrape time. A scrape takes the drift job's published run once and builds every
run-derived family from it, so it never mixes two runs, and a feature that disappears stops being exported."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import Settings
from exporter.drift import DriftResult
from exporter.drift_job import DriftJob, JobStats, Published
from exporter.prediction_log import PredictionLog
from exporter.service import PredictionService


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    if labels is not None:
        return GaugeMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, value=value)


@dataclass(frozen=True)
class Sources:
    """What this process counts: the request side, the prediction log, and the job's stats of one scrape."""

    service: PredictionService
    log: PredictionLog
    job: JobStats


@dataclass(frozen=True)
class ServiceCounter:
    """A counter each process keeps as a plain number; with several workers it is summed over them."""

    name: str
    help: str
    value: Callable[[Sources], float]
    label: tuple[str, str] | None = None  # (name, value): one series of a labelled family, the others beside it

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.label[1] if self.label else "")


LOG_RECORDS_HELP = "Records of a model served elsewhere (/log, /log/batch, /log/cloudevents), by outcome."
LOG_EVENTS_HELP = "Payload-logger CloudEvents (/log/cloudevents), by outcome."

COUNTERS = (
    ServiceCounter(
        "model_predictions", "Rows predicted (a batch counts its rows).", lambda s: s.service.predictions_total
    ),
    ServiceCounter(
        "model_prediction_errors",
        "Valid requests the model refused or answered with a non-finite value (answered 422).",
        lambda s: s.service.prediction_errors,
    ),
    ServiceCounter("model_prediction_log_written", "Prediction rows persisted.", lambda s: s.log.written),
    ServiceCounter(
        "model_prediction_log_dropped", "Prediction rows lost (queue full or not written at shutdown).",
        lambda s: s.log.dropped,
    ),
    ServiceCounter(
        "model_prediction_log_pruned", "Prediction rows deleted by retention (prediction_log.retention).",
        lambda s: s.job.pruned,
    ),
    ServiceCounter("model_feedback", "Labels received.", lambda s: s.service.feedback_total),
    ServiceCounter(
        "model_feedback_dropped",
        "Labels accepted but not stored (refused by the database, their prediction row lost, or not written "
        "before shutdown).",
        lambda s: s.log.labels_dropped,
    ),
    ServiceCounter(
        "model_feedback_replaced", "Labels that replaced a different earlier label.",
        lambda s: s.service.feedback_replaced,
    ),
    ServiceCounter("model_log_records", LOG_RECORDS_HELP, lambda s: s.service.log_accepted, ("outcome", "accepted")),
    ServiceCounter("model_log_records", LOG_RECORDS_HELP, lambda s: s.service.log_duplicates,
                   ("outcome", "duplicate")),
    ServiceCounter("model_log_records", LOG_RECORDS_HELP, lambda s: s.service.log_refused, ("outcome", "refused")),
    ServiceCounter("model_log_events", LOG_EVENTS_HELP, lambda s: s.service.events["paired"], ("outcome", "paired")),
    ServiceCounter("model_log_events", LOG_EVENTS_HELP, lambda s: s.service.events["unpaired_expired"],
                   ("outcome", "unpaired_expired")),
    ServiceCounter("model_log_events", LOG_EVENTS_HELP, lambda s: s.service.events["unparsable"],
                   ("outcome", "unparsable")),
    ServiceCounter("model_drift_job_runs", "Drift job runs.", lambda s: s.job.runs),
    ServiceCounter("model_drift_job_failures", "Drift job runs that failed.", lambda s: s.job.failures),
    ServiceCounter(
        "model_drift_job_timeouts", "Drift job runs abandoned after drift.timeout_seconds.", lambda s: s.job.timeouts,
    ),
    ServiceCounter(
        "model_drift_report_failures", "Runs whose HTML report could not be built.", lambda s: s.job.report_failures,
    ),
    ServiceCounter(
        "model_drift_runs_unreadable",
        "Stored drift runs this process could not read (it serves the last one it could; see its log).",
        lambda s: s.job.unreadable_runs,
    ),
)
QUEUE_GAUGE, QUEUE_HELP = "model_prediction_log_queue_rows", "Prediction rows waiting to be written."
SHARED_NAMES = frozenset({c.name for c in COUNTERS} | {QUEUE_GAUGE})  # the families summed over the workers


BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ModelCallMetrics:
    """Histograms of the model calls: rows per call (how well concurrent requests are gathered) and the call's
    duration (frame building and the estimator). prometheus_client objects, not plain numbers as COUNTERS: with
    several workers (multiprocess mode) they write to the multiprocess files and reach /metrics summed over the
    workers, as the instrumentator's HTTP histograms do (pass ``registry=None`` then, and build them once per
    process: two objects for one series would overwrite each other's file entry); with one process, the app's
    registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.rows = Histogram(
            "model_batch_rows", "Rows per model call (concurrent requests gathered into one call; batching).",
            buckets=BATCH_ROWS_BUCKETS, registry=registry,
        )
        self.seconds = Histogram(
            "model_inference_duration_seconds", "Duration of one model call (request frame and estimator).",
            buckets=INFERENCE_BUCKETS, registry=registry,
        )

    def observe(self, rows: int, seconds: float) -> None:
        self.rows.observe(rows)
        self.seconds.observe(seconds)


class ScrapeCollector(Collector):
    """One scrape of this process: its counters and the families of the one published run it was given."""

    def __init__(self, sources: MetricSources, run: Published, summed: frozenset[str] = frozenset()) -> None:
        self.sources = sources
        self.run = run
        self.summed = summed  # families another collector sums over the workers (shared_metrics)

    def collect(self) -> Iterator[Metric]:
        yield from (m for m in self._serving() if m.name not in self.summed)
        yield from self._job()
        yield from self._quality()

    def _serving(self) -> Iterator[Metric]:
        src = self.sources
        info = GaugeMetricFamily(
            "model_info", "The served model; always 1.", labels=["name", "version", "reference_hash"]
        )
        info.add_metric([src.settings.model.name, src.settings.model.version, src.reference_hash], 1)
        yield info
        counted = src.counted(self.run.stats)
        families: dict[str, CounterMetricFamily] = {}
        for counter in COUNTERS:
            if counter.label is None:
                yield CounterMetricFamily(counter.name, counter.help, value=counter.value(counted))
                continue
            family = families.get(counter.name)
            if family is None:
                family = families[counter.name] = CounterMetricFamily(counter.name, counter.help,
                                                                      labels=[counter.label[0]])
            family.add_metric([counter.label[1]], counter.value(counted))
        yield from families.values()
        yield _gauge(QUEUE_GAUGE, QUEUE_HELP, src.log.queued)

    def _job(self) -> Iterator[Metric]:
        job = self.run.stats
        cfg = self.sources.settings.drift
        yield _gauge(
            "model_drift_job_last_success_timestamp_seconds",
            "Unix time of the last successful drift job run (0: none yet).",
            job.last_success,
        )
        yield _gauge(
            "model_drift_job_duration_seconds", "Duration of the last drift job run (window, drift, quality).",
            job.last_duration,
        )
        yield _gauge(
            "model_drift_report_duration_seconds", "Time the last run spent building the HTML report.",
            job.last_report_duration,
        )
        yield _gauge(
            "model_drift_job_interval_seconds", "Configured interval between drift job runs.", cfg.interval_seconds
        )
        yield _gauge(
            "model_dataset_drift_share_threshold",
            "Configured share of drifted features at which the dataset counts as drifted.",
            cfg.drift_share,
        )

    def _quality(self) -> Iterator[Metric]:
        baseline = self.sources.quality_reference
        if baseline:
            ref = _gauge(
                "model_quality_reference", "Model quality on the reference data (baseline).", labels=["metric"]
            )
            for name, value in baseline.items():
                ref.add_metric([name], value)
            yield ref
        yield from self._estimate()
        q = self.run.quality
        if q is None:
            return
        yield _gauge("model_quality_window_rows", "Labelled rows the model quality was computed on.", q.rows)
        if q.metrics:
            g = _gauge("model_quality", "Model quality over the labelled window.", labels=["metric"])
            for name, value in q.metrics.items():
                g.add_metric([name], value)
            yield g

    def _estimate(self) -> Iterator[Metric]:
        e = self.run.estimate
        if e is None or not e.metrics:
            return
        families = {
            "value": _gauge("model_quality_estimated", "Model quality estimated without labels over the drift window "
                            "(CBPE for classification, DLE for regression).", labels=["metric"]),
            "lower": _gauge("model_quality_estimated_lower", "Lower end of the 99% sampling band of the estimate.",
                            labels=["metric"]),
            "upper": _gauge("model_quality_estimated_upper", "Upper end of the 99% sampling band of the estimate.",
                            labels=["metric"]),
        }
        for name, m in e.metrics.items():
            for part, family in families.items():
                family.add_metric([name], getattr(m, part))
        yield from families.values()
        if e.error:
            err = _gauge("model_quality_estimation_error", "Estimate minus realized quality on the labelled rows of "
                         "the drift window.", labels=["metric"])
            for name, value in e.error.items():
                err.add_metric([name], value)
            yield err
        if e.shift_auc is not None:  # None: no features to tell the mix by, or a window too small
            yield _gauge("model_quality_estimation_shift_auc", "AUC of the domain classifier telling the drift "
                         "window's rows from the reference's (0.5: the same mix of rows).", e.shift_auc)
            yield _gauge("model_quality_estimation_adapted", "1 when the estimate's calibration (DLE: loss models) "
                         "was weighted toward the window's mix of rows (covariate shift).", 1.0 if e.adapted else 0.0)



@dataclass(frozen=True)
class MetricSources:
    """What /metrics reads: the request side, the prediction log, the drift job, and what start-up fixed."""

    settings: Settings
    reference_hash: str
    quality_reference: dict[str, float]
    service: PredictionService
    log: PredictionLog
    job: DriftJob

    def counted(self, stats: JobStats | None = None) -> Sources:
        return Sources(self.service, self.log, self.job.published.stats if stats is None else stats)


class Exposition:
    """/metrics: one scrape's text, every run-derived family from the one run published when it began.

    With ``shared`` (several workers: shared_metrics.summed_collector) the counters and prometheus_client's own
    metrics come summed over the workers. The drift families are rendered once per drift result and reused by
    every scrape: with hundreds of features their text formatting is most of a scrape's cost, yet it only
    changes when a run is published."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, sources: MetricSources, registry: CollectorRegistry, shared: Collector | None = None) -> None:
        self.sources = sources
        self.registry = registry  # the process-wide collectors: HTTP and model-call histograms, process metrics
        self.summed = SHARED_NAMES if shared is not None else frozenset()
        if shared is not None:
            registry.register(shared)
        registry.register(ProcessCollector(registry=None))
        self._for: DriftResult | None = None
        self._text = b""
        self._lock = threading.Lock()

    def render(self) -> bytes:
        run = self.sources.job.published  # once per scrape
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(ScrapeCollector(self.sources, run, self.summed))
        return generate_latest(self.registry) + generate_latest(scrape) + self.drift_text(run.drift)

    def drift_text(self, result: DriftResult | None) -> bytes:
        if result is None:
            return b""
        with self._lock:
            if self._for is not result:
                self._text = generate_latest(Families(drift_families(result)))
                self._for = result
            return self._text


class Families:
    """Already-built families, as generate_latest reads a registry."""

    def __init__(self, families: Iterator[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def drift_families(result: DriftResult) -> Iterator[Metric]:
    yield _gauge("model_drift_window_rows", "Rows in the window of the last drift run.", result.window_rows)
    if result.skipped_reason is not None:
        return
    score = _gauge(
        "model_feature_drift_score",
        "Evidently drift score of the feature in the last run (p-value or distance, see stat_test).",
        labels=["feature", "feature_type", "stat_test"],
    )
    threshold = _gauge(
        "model_feature_drift_threshold", "Threshold the drift score is judged against.", labels=["feature", "stat_test"]
    )
    detected = _gauge("model_feature_drift_detected", "1 when the feature drifted in the last run.", labels=["feature"])
    missing = _gauge("model_feature_missing_share", "Share of missing values in the window.", labels=["feature"])
    unseen = _gauge(
        "model_feature_unseen_share",
        "Share of window rows with a category absent from the reference or a number outside its range.",
        labels=["feature"],
    )
    errors = _gauge(
        "model_feature_drift_error", "1 when the feature's drift could not be computed in the last run (see /drift).",
        labels=["feature"],
    )
    for f in result.features.values():
        missing.add_metric([f.feature], f.missing_share)
        unseen.add_metric([f.feature], f.unseen_share)
        errors.add_metric([f.feature], 1.0 if f.error else 0.0)
        if f.detected is None or f.score is None or f.stat_test is None or f.threshold is None:
            continue
        score.add_metric([f.feature, f.feature_type, f.stat_test], f.score)
        threshold.add_metric([f.feature, f.stat_test], f.threshold)
        detected.add_metric([f.feature], 1.0 if f.detected else 0.0)
    yield from (score, threshold, detected, missing, unseen, errors)
    yield from distribution_families(result.features.values(), [], [])
    if result.importance_method is not None:
        importance = _gauge("model_feature_importance", "How much the model relies on the feature (permutation: the "
                            "drop in accuracy, or rise in mean absolute error, when it is shuffled on the reference; "
                            "native: the model's own importances, summed per feature).", labels=["feature", "method"])
        for f in result.features.values():
            if f.importance is not None:
                importance.add_metric([f.feature, result.importance_method], f.importance)
        yield importance
    if result.drift_share is not None:
        yield _gauge("model_dataset_drift_share", "Share of features drifted in the last run.", result.drift_share)
        yield _gauge("model_dataset_drifted_features", "Features drifted in the last run.", result.drifted_features)
        yield _gauge(
            "model_dataset_drift_detected", "1 when the drifted share reaches drift_share.",
            1.0 if result.dataset_drift else 0.0,
        )
    p = result.prediction
    if p is not None:
        ps = _gauge(
            "model_prediction_drift_score",
            "Drift score of the model's predictions vs the reference.",
            labels=["stat_test"],
        )
        ps.add_metric([p.stat_test], p.score)
        pt = _gauge("model_prediction_drift_threshold", "Threshold of the prediction drift test.", labels=["stat_test"])
        pt.add_metric([p.stat_test], p.threshold)
        yield ps
        yield pt
        yield _gauge("model_prediction_drift_detected", "1 when the predictions drifted.", 1.0 if p.detected else 0.0)
    mv = result.multivariate
    if mv is not None:  # None: fewer than 2 features, or the computation failed (logged): no series at all
        ms = _gauge(
            "model_multivariate_drift_score",
            "Multivariate drift of the joint distribution (method pca_reconstruction: mean reconstruction error of "
            "the window's rows; classifier: AUC of a domain classifier, window rows against reference rows).",
            labels=["method"],
        )
        ms.add_metric([mv.method], mv.score)
        mt = _gauge(
            "model_multivariate_drift_threshold",
            "Calibrated threshold of the multivariate drift score (false flags at the configured rate).",
            labels=["method"],
        )
        mt.add_metric([mv.method], mv.threshold)
        yield ms
        yield mt
        yield _gauge(
            "model_multivariate_drift_detected", "1 when the multivariate drift score reached its threshold.",
            1.0 if mv.detected else 0.0,
        )

    yield from segment_families(result)


def segment_families(result: DriftResult) -> Iterator[Metric]:
    """drift.segments: each segment's window rows, and its features' drift where the segment was judged (a segment
    too small to judge has rows only: no verdict, rather than "no drift")."""
    if not result.segments:
        return
    rows = _gauge("model_segment_window_rows", "Window rows of the segment in the last drift run.",
                  labels=["segment_by", "segment"])
    score = _gauge("model_segment_feature_drift_score", "Drift score of the feature within the segment (its rows "
                   "against the reference rows of the same segment).",
                   labels=["segment_by", "segment", "feature", "feature_type", "stat_test"])
    threshold = _gauge("model_segment_feature_drift_threshold", "Threshold the segment's drift score is judged "
                       "against (the feature's false-alert budget shared by its segments).",
                       labels=["segment_by", "segment", "feature", "stat_test"])
    detected = _gauge("model_segment_feature_drift_detected", "1 when the feature drifted within the segment.",
                      labels=["segment_by", "segment", "feature"])
    for seg in result.segments:
        rows.add_metric([seg.segment_by, seg.segment], seg.window_rows)
        for f in seg.features.values():
            if f.detected is None or f.score is None or f.stat_test is None or f.threshold is None:
                continue
            score.add_metric([seg.segment_by, seg.segment, f.feature, f.feature_type, f.stat_test], f.score)
            threshold.add_metric([seg.segment_by, seg.segment, f.feature, f.stat_test], f.threshold)
            detected.add_metric([seg.segment_by, seg.segment, f.feature], 1.0 if f.detected else 0.0)
    yield from (rows, score, threshold, detected)
    yield from distribution_families([f for seg in result.segments for f in seg.features.values()],
                                     ["segment_by", "segment"],
                                     [[seg.segment_by, seg.segment] for seg in result.segments
                                      for _ in seg.features.values()])
    labels = ["segment_by", "segment", "metric"]
    quality = {
        "quality": _gauge("model_segment_quality", "Model quality on the segment's labelled rows (at least "
                          "drift.segment_min_rows of them).", labels=labels),
        "quality_reference": _gauge("model_segment_quality_reference", "Model quality on the segment's reference "
                                    "rows (its baseline).", labels=labels),
    }
    estimated = {part: _gauge(f"model_segment_quality_estimated{suffix}", doc, labels=labels) for part, suffix, doc in (
        ("value", "", "Model quality estimated without labels over the segment's window rows (judged segments)."),
        ("lower", "_lower", "Lower end of the 99% sampling band of the segment's estimate."),
        ("upper", "_upper", "Upper end of the 99% sampling band of the segment's estimate."))}
    for seg in result.segments:
        for part, family in quality.items():
            for metric, value in getattr(seg, part).items():
                family.add_metric([seg.segment_by, seg.segment, metric], value)
        for metric, band in seg.estimated.items():
            for part, family in estimated.items():
                family.add_metric([seg.segment_by, seg.segment, metric], band[part])
    yield from (f for f in (*quality.values(), *estimated.values()) if f.samples)


def distribution_families(features: Any, extra: list[str], extra_values: list[list[str]]) -> Iterator[Metric]:
    """Each feature's distribution in the window and the reference on the same terms: quantiles of numbers, shares
    of a category's reference top values and __other__. ``extra``: labels before the feature's (a segment's), with
    one list of values per feature."""
    prefix = "model_segment_" if extra else "model_"
    quantile = _gauge(f"{prefix}feature_quantile", "Quantile of the numerical feature in the drift window "
                      "(source=window) and in the reference (source=reference).",
                      labels=[*extra, "feature", "quantile", "source"])
    share = _gauge(f"{prefix}feature_category_share", "Share of a category among the feature's present values: the "
                   "reference's 10 most frequent and __other__, in the window and the reference.",
                   labels=[*extra, "feature", "category", "source"])
    features = list(features)
    for i, f in enumerate(features):
        before = extra_values[i] if extra else []
        family = quantile if f.feature_type == "numerical" else share
        for source, values in (("window", f.distribution), ("reference", f.reference_distribution)):
            for key, value in values.items():
                family.add_metric([*before, f.feature, key, source], value)
    yield from (family for family in (quantile, share) if family.samples)
