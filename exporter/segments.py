"""Drift per segment: a shift confined to one group of rows (a region, a channel, a tier) that the pooled window
dilutes. A segment with 10 % of the traffic that moves by 1 sd moves the pooled mean by 0.1 sd; judged on its own
rows against the reference rows of the same segment, it stands out.

``drift.segments`` names categorical features to segment by. Each one's segments are its ``max_segments`` most
frequent reference values; the rest (rarer values, values the reference never showed, missing values) are pooled as
OTHER, so the label values stay bounded. A segment is judged when it has at least ``min_rows`` rows both in the
window and in the reference; otherwise it is reported as too small, never as "no drift". Every other feature is
tested within each judged segment with its own stat test and a threshold calibrated for the segment's row counts
(exporter.calibration), exactly as the pooled test is.

**The budget.** ``drift.false_alerts_per_month`` is per feature; with segments, a feature is tested once in each
segment, and those tests share its budget: each gets the per-run false-flag probability ``alpha / S``, S being the
number of segments (over every segmenting feature but itself) whose reference rows are enough to judge. By the
union bound the expected false segment flags of a feature per run stay at most ``alpha``, whatever S is.

**Quality.** With a target, each segment's realized quality is computed on its labelled rows (at least
``min_rows`` of them) and set beside the same metrics on its reference rows, since segments differ in quality
from the start; the label-free estimate (CBPE / DLE, exporter.estimation) is computed on each judged segment's
window rows.

Pure: frames in, frozen results out (exporter.drift.SegmentDrift).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from exporter.drift import Columns, MethodOverride, Reference, SegmentDrift, feature_drift, normalise
from exporter.estimation import EstimationSetup, estimate_window
from exporter.quality import quality

log = logging.getLogger(__name__)

OTHER = "__other__"


@dataclass(frozen=True)
class SegmentSpec:
    by: tuple[str, ...]
    max_segments: int = 20
    min_rows: int = 200


class SegmentReference:
    """Each segmenting feature's segments and, per segment, the reference columns of its rows."""

    def __init__(self, reference: Reference, spec: SegmentSpec,
                 quality_of: Callable[[np.ndarray], dict[str, float]] | None = None) -> None:
        """``quality_of``: the model's quality on the reference rows a boolean mask picks (with a target), used
        here once per segment for its baseline and not kept."""
        unknown = [b for b in spec.by if b not in reference.categorical]
        if unknown:
            raise ValueError(f"drift.segments: {', '.join(unknown)} is not a categorical feature")
        self.spec = spec
        self.numerical = reference.numerical
        self.categorical = reference.categorical
        self.levels: dict[str, list[str]] = {}
        self.columns: dict[tuple[str, str], Columns] = {}
        self.baseline: dict[tuple[str, str], dict[str, float]] = {}
        judgeable: dict[str, int] = {name: 0 for name in reference.numerical + reference.categorical}
        for by in spec.by:
            kept = [str(v) for v in reference.frame[by].value_counts().index[:spec.max_segments]]
            self.levels[by] = kept
            codes = self.codes(by, reference.frame[by])
            others = [c for c in reference.categorical if c != by]
            for segment in (*kept, OTHER):
                mask = (codes == segment).to_numpy()
                rows = reference.frame[mask]
                self.columns[(by, segment)] = Columns(rows, reference.numerical, others)
                if quality_of is not None and len(rows) >= spec.min_rows:
                    self.baseline[(by, segment)] = quality_of(mask)
                if len(rows) >= spec.min_rows:
                    for name in reference.numerical + others:
                        judgeable[name] += 1
        self.judgeable = judgeable

    def codes(self, by: str, column: pd.Series) -> pd.Series:
        """Each row's segment of ``by``: its value when kept, else OTHER."""
        return column.where(column.isin(self.levels[by]), OTHER).astype(object)

    def alpha(self, name: str, alpha: float | None) -> float | None:
        """The per-run false-flag probability of ``name``'s test in one segment: its share of the feature's."""
        if alpha is None:
            return None
        return alpha / max(self.judgeable.get(name, 0), 1)

    def judge(self, window: pd.DataFrame, alpha: float | None,
              overrides: dict[str, MethodOverride] | None = None) -> list[SegmentDrift]:
        """Every segment's drift in ``window`` (raw or normalised rows). A segment with neither window nor reference
        rows is left out."""
        window = normalise(window, self.numerical, self.categorical)
        overrides = overrides or {}
        out = []
        for by, kept in self.levels.items():
            codes = self.codes(by, window[by])
            for segment in (*kept, OTHER):
                columns = self.columns[(by, segment)]
                rows = window[(codes == segment).to_numpy()]
                if rows.empty and columns.rows == 0:
                    continue
                if len(rows) < self.spec.min_rows or columns.rows < self.spec.min_rows:
                    out.append(SegmentDrift(by, segment, len(rows), columns.rows, too_small=True))
                    continue
                features = {
                    name: feature_drift(columns, rows, name, overrides.get(name), self.alpha(name, alpha))
                    for name in columns.numerical + columns.categorical
                }
                out.append(SegmentDrift(by, segment, len(rows), columns.rows, too_small=False, features=features))
        return out

    def with_quality(self, segments: list[SegmentDrift], task: str, classes: list[Any], labels: list[Any],
                     predictions: list[Any], probabilities: list[dict[str, float]] | None,
                     features: list[dict[str, Any]]) -> list[SegmentDrift]:
        """``segments`` with each one's realized quality on its labelled rows (given newest first or in any order,
        with their features) and its reference baseline."""
        frame = pd.DataFrame.from_records(features, columns=list(self.levels)) if features else None
        out = []
        for seg in segments:
            extra: dict[str, Any] = {"quality_reference": self.baseline.get((seg.segment_by, seg.segment), {})}
            if frame is not None:
                by = normalise(frame[[seg.segment_by]], [], [seg.segment_by])[seg.segment_by]
                picked = np.flatnonzero((self.codes(seg.segment_by, by) == seg.segment).to_numpy())
                extra["quality_rows"] = len(picked)
                if len(picked) >= self.spec.min_rows:
                    extra["quality"] = quality(
                        task, [labels[i] for i in picked], [predictions[i] for i in picked],
                        None if probabilities is None else [probabilities[i] for i in picked], classes).metrics
            out.append(dataclasses.replace(seg, **extra))
        return out

    def with_estimates(self, segments: list[SegmentDrift], setup: EstimationSetup,
                       window: pd.DataFrame) -> list[SegmentDrift]:
        """``segments`` with the label-free estimate on each judged segment's rows of ``window`` (features,
        prediction and the estimator's outcome columns); a segment whose estimate fails is logged and left
        without one."""
        codes = {by: self.codes(by, normalise(window[[by]], [], [by])[by]).to_numpy() for by in self.levels}
        out = []
        for seg in segments:
            if seg.too_small:
                out.append(seg)
                continue
            rows = window[codes[seg.segment_by] == seg.segment].reset_index(drop=True)
            try:
                result = estimate_window(setup, rows)
            except Exception as exc:
                log.warning("segment %s=%s: quality estimation failed: %s: %s", seg.segment_by, seg.segment,
                            type(exc).__name__, exc)
                result = None
            estimated = {} if result is None else {
                name: {"value": m.value, "lower": m.lower, "upper": m.upper} for name, m in result.metrics.items()}
            out.append(dataclasses.replace(seg, estimated=estimated))
        return out
