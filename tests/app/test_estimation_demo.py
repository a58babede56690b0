"""(e) The demo served for real, with `exporter simulate --labels`: the quality estimated without labels (in the
drift job's worker process, stored with the run, served from /metrics) agrees with the realized quality within its
band, and the self-check gauge is the difference of the two."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import config_folder, live_server, sample

ROWS = 3000


@pytest.mark.timeout(240)
def test_demo_estimate_agrees_with_realized_quality_within_its_band(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, drift={"window_size": ROWS, "min_rows": 100, "interval_seconds": 2,
                                                      "report": False})
    with live_server(config) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "simulate", "--url", server.url, "--rows", str(ROWS), "--rate",
             "5000", "--batch-size", "200", "--seed", "17", "--labels"],
            capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"sent {ROWS} rows, 0 failed, {ROWS} labelled" in proc.stdout
        # a run that saw every row and every label (labels are written after their predictions)
        metrics = server.wait_for(
            lambda m: m if sample(m, "model_drift_window_rows") == ROWS
            and sample(m, "model_quality_window_rows") == ROWS
            and sample(m, "model_quality_estimation_error", metric="accuracy") is not None else None, timeout=120,
        )
        drift = httpx.get(f"{server.url}/drift", timeout=10).json()
    served = drift["estimated_quality"]  # /drift serves the same stored run
    assert served["method"] == "cbpe" and served["rows"] == ROWS and served["error_rows"] == ROWS
    for metric in ("accuracy", "f1_macro", "roc_auc"):
        estimated = sample(metrics, "model_quality_estimated", metric=metric)
        lower = sample(metrics, "model_quality_estimated_lower", metric=metric)
        upper = sample(metrics, "model_quality_estimated_upper", metric=metric)
        realized = sample(metrics, "model_quality", metric=metric)
        error = sample(metrics, "model_quality_estimation_error", metric=metric)
        assert served["metrics"][metric]["value"] == pytest.approx(estimated)
        assert None not in (estimated, lower, upper, realized, error), metric
        print(f"{metric}: estimated {estimated:.4f} [{lower:.4f}, {upper:.4f}], realized {realized:.4f}")
        assert lower <= realized <= upper, metric  # type: ignore[operator]
        assert lower <= estimated <= upper  # type: ignore[operator]
        # every row of the window is labelled: the self-check is the estimate minus the realized value
        assert error == pytest.approx(estimated - realized, abs=1e-9), metric  # type: ignore[operator]
