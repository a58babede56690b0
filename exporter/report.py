"""The Evidently HTML drift report served at /monitoring, built by the drift job and cached gzip-compressed."""

from __future__ import annotations

import gzip
import html
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from exporter.drift import CATEGORY_TESTS, DriftResult, Reference, normalise, seen
from exporter.serde import known_fields


@dataclass(frozen=True)
class CachedReport:
    gzipped: bytes
    built_at: float
    window_rows: int
    columns: dict[str, ColumnVerdict] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        """What a stored run keeps of the report beside its gzipped page."""
        return {"built_at": self.built_at, "window_rows": self.window_rows,
                "columns": {k: asdict(v) for k, v in self.columns.items()}}

    @classmethod
    def from_stored(cls, gzipped: bytes, header: dict[str, Any]) -> CachedReport:
        columns = {k: known_fields(ColumnVerdict, v) for k, v in header.get("columns", {}).items()}
        return cls(gzipped, header["built_at"], header["window_rows"], columns)


@dataclass(frozen=True)
class ColumnVerdict:
    """What the report shows for one column: its test, the threshold it was judged with, and its score."""

    method: str
    threshold: float
    score: float


def build_report(
    reference: Reference,
    window: pd.DataFrame,
    result: DriftResult,
    calibrated: bool = False,
) -> CachedReport:
    """The report of ``window``, judged with the stat test and threshold each feature had in ``result`` (calibrated
    or configured), so that the page and the gauges give the same verdicts."""
    from evidently import DataDefinition, Dataset, Report  # seconds to import: only the drift job needs it
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=reference.numerical, categorical_columns=reference.categorical)
    current = normalise(window, reference.numerical, reference.categorical)
    if calibrated:  # as the calibrated tests do: values the reference never showed are judged by their share
        for f in result.features.values():
            if f.stat_test in CATEGORY_TESTS and f.feature in reference.stats:
                column = current[f.feature]
                current[f.feature] = column.where(column.isna() | seen(reference.stats[f.feature], column))
    judged = [f for f in result.features.values() if f.stat_test is not None and f.threshold is not None]
    methods = {f.feature: f.stat_test for f in judged}
    thresholds = {f.feature: f.threshold for f in judged}
    preset = DataDriftPreset(
        drift_share=result.drift_share_threshold,
        per_column_method=methods or None,
        per_column_threshold=thresholds or None,
    )
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference.frame, data_definition=definition),
    )
    page = snapshot.get_html_str(as_iframe=False)
    return CachedReport(gzip.compress(page.encode(), compresslevel=6), time.time(), len(window),
                        column_verdicts(snapshot.dict()))


def column_verdicts(snapshot: dict[str, Any]) -> dict[str, ColumnVerdict]:
    """The per-column drift metrics of a report snapshot (``ValueDrift``: column, method, threshold, score)."""
    out: dict[str, ColumnVerdict] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift") and isinstance(metric.get("value"), int | float):
            out[config["column"]] = ColumnVerdict(config["method"], float(config["threshold"]), float(metric["value"]))
    return out


def placeholder_page(reason: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title></head>"
        "<body style='font-family:sans-serif;margin:3em'><h1>No drift report yet</h1>"
        f"<p>{html.escape(reason)}</p>"
        "<p>The report is built by the drift job after each run over enough predictions; this page refreshes "
        "itself every 30 seconds.</p><script>setTimeout(()=>location.reload(),30000)</script></body></html>"
    )
