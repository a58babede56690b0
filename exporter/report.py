"""The Evidently HTML drift report served at /monitoring, built by the drift job and cached gzip-compressed."""

from __future__ import annotations

import gzip
import html
import time
from dataclasses import dataclass

import pandas as pd

from exporter.drift import MethodOverride, Reference, normalise


@dataclass(frozen=True)
class CachedReport:
    gzipped: bytes
    built_at: float
    window_rows: int


def build_report(
    reference: Reference,
    window: pd.DataFrame,
    drift_share: float,
    per_feature: dict[str, MethodOverride],
) -> CachedReport:
    from evidently import DataDefinition, Dataset, Report  # seconds to import: only the drift job needs it
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=reference.numerical, categorical_columns=reference.categorical)
    current = normalise(window, reference.numerical, reference.categorical)
    methods = {k: v.method for k, v in per_feature.items() if v.method}
    thresholds = {k: v.threshold for k, v in per_feature.items() if v.threshold is not None}
    preset = DataDriftPreset(
        drift_share=drift_share,
        per_column_method=methods or None,
        per_column_threshold=thresholds or None,
    )
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference.frame, data_definition=definition),
    )
    page = snapshot.get_html_str(as_iframe=False)
    return CachedReport(gzip.compress(page.encode(), compresslevel=6), time.time(), len(window))


def placeholder_page(reason: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title></head>"
        "<body style='font-family:sans-serif;margin:3em'><h1>No drift report yet</h1>"
        f"<p>{html.escape(reason)}</p>"
        "<p>The report is built by the drift job after each run over enough predictions; this page refreshes "
        "itself every 30 seconds.</p><script>setTimeout(()=>location.reload(),30000)</script></body></html>"
    )
