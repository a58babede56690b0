"""Drift per segment through the real service: `exporter serve` (monitor-only) takes rows through /log/batch, its
drift job judges the segments, and /metrics, /drift and `exporter drift --segments` show the one segment that
shifted; a segment feature of 100 values stays within max_segments + 1 label values: 20 too small to judge, the
pooled rest judged."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np

from tests.helpers import ROOT, live_server
from tests.unit.test_segments import draw

LEVELS = 100


def with_wide(frame, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """A second segment feature g of 100 even values, and the served model's prediction (its sign of x1)."""
    return frame.assign(g=[f"g{v:03d}" for v in rng.integers(0, LEVELS, size=len(frame))],
                        prediction=np.where(frame["x1"] > 0.5, "high", "low"))


def test_a_shift_confined_to_one_segment_flags_that_segment_and_feature_only(tmp_path: Path) -> None:
    with_wide(draw(5000, np.random.default_rng(1)), np.random.default_rng(2)).to_csv(tmp_path / "ref.csv",
                                                                                   index=False)
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent("""\
        model: {name: segmented, version: "1", task: classification}
        reference: {path: ref.csv, prediction_column: prediction}
        features: {numerical: [x1, x2], categorical: [c, k, g]}
        database_url: sqlite:///log.db
        drift:
          window_size: 3000
          min_rows: 100
          interval_seconds: 2
          report: false
          segments: [c, g]
          max_segments: 20
          segment_min_rows: 200
    """))
    window = with_wide(draw(3000, np.random.default_rng(7), shift=1.0, shifted="e"), np.random.default_rng(8))
    records = [{"features": {k: row[k] for k in ("x1", "x2", "c", "k", "g")}, "prediction": row["prediction"]}
               for row in window.to_dict("records")]
    with live_server(config) as server:
        for start in range(0, len(records), 1000):
            answer = httpx.post(f"{server.url}/log/batch", json={"records": records[start:start + 1000]}, timeout=30)
            assert answer.status_code == 202, answer.text

        def judged(metrics):  # type: ignore[no-untyped-def]
            rows = {dict(labels)["segment"]: v for (name, labels), v in metrics.items()
                    if name == "model_segment_window_rows" and dict(labels)["segment_by"] == "c"}
            return metrics if sum(rows.values()) == 3000 else None

        metrics = server.wait_for(judged, timeout=90)
        flagged = {(dict(labels)["segment_by"], dict(labels)["segment"], dict(labels)["feature"])
                   for (name, labels), v in metrics.items()
                   if name == "model_segment_feature_drift_detected" and v == 1}
        assert flagged == {("c", "e", "x1")}
        judged_c = {dict(labels)["segment"] for (name, labels) in metrics
                    if name == "model_segment_feature_drift_detected" and dict(labels)["segment_by"] == "c"}
        assert judged_c == {"a", "b", "c", "d", "e"}
        wide = {dict(labels)["segment"] for (name, labels) in metrics
                if name == "model_segment_window_rows" and dict(labels)["segment_by"] == "g"}
        assert len(wide) == 21 and "__other__" in wide  # 20 kept values + the pooled rest
        judged_g = {dict(labels)["segment"] for (name, labels) in metrics
                    if name.startswith("model_segment_feature_drift") and dict(labels)["segment_by"] == "g"}
        assert judged_g == {"__other__"}  # the 20 kept values: ~30 rows each, too small, so no verdict at all
        assert not any(name == "model_feature_drift_detected" and v == 1 for (name, _), v in metrics.items())

        drift = httpx.get(f"{server.url}/drift", timeout=10).json()
        assert drift["job"]["last_error"] is None
        segments = {(s["segment_by"], s["segment"]): s for s in drift["result"]["segments"]}
        assert all(s["too_small"] and not s["features"] for (by, seg), s in segments.items()
                   if by == "g" and seg != "__other__")
        assert segments[("c", "e")]["features"]["x1"]["detected"] is True
        assert "c" not in segments[("c", "e")]["features"]  # the segmenting feature is not tested in itself

    printed = subprocess.run([sys.executable, "-m", "exporter.cli", "drift", "--config", str(config), "--segments"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert "segments: 1 of 6 judged drifted, 20 too small" in printed.stdout, printed.stdout
    line = next(x for x in printed.stdout.splitlines() if "│ e " in x)
    assert "x1" in line and "x2" not in line, printed.stdout
