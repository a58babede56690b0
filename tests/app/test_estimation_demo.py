"""(e) The demo served over real HTTP (in this process), with the traffic of `exporter simulate --labels`: the
quality estimated without labels (by the drift job, stored with the run, served from /metrics and /drift) agrees
with the realized quality within its band, and the self-check gauge is the difference of the two."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from exporter.cli import build_parser
from tests.helpers import InProcessServer, config_folder, flush, sample

ROWS = 3000


@pytest.mark.timeout(240)
def test_demo_estimate_agrees_with_realized_quality_within_its_band(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The drift job runs once, here, when every row and label is written; no report, no reference rule.
    config = config_folder(demo_dir, tmp_path, drift={"window_size": ROWS, "min_rows": 100, "interval_seconds": 2,
                                                      "report": False, "isolation": "thread"},
                           reference={"check_held_out": False, "shift_adaptation": "on"})
    with InProcessServer(config) as server:
        # `exporter simulate` itself (its code, in this process): the same rows and labels as the command sends
        args = build_parser().parse_args(
            ["simulate", "--url", server.url, "--rows", str(ROWS), "--rate", "5000", "--batch-size", "200",
             "--seed", "17", "--labels"]
        )
        code = args.func(args)
        out = capsys.readouterr().out
        assert code == 0, out
        assert f"sent {ROWS} rows, 0 failed, {ROWS} labelled" in out
        # a run that saw every row and every label (labels are written after their predictions)
        flush(server)
        job = server.app.state.job
        job.tick()
        assert job.published.stats.last_error is None, job.published.stats.last_error
        metrics = server.metrics()
        drift = httpx.get(f"{server.url}/drift", timeout=10).json()
    assert sample(metrics, "model_drift_window_rows") == ROWS
    assert sample(metrics, "model_quality_window_rows") == ROWS
    served = drift["estimated_quality"]  # /drift serves the same stored run
    assert served["method"] == "cbpe" and served["rows"] == ROWS and served["error_rows"] == ROWS
    # reference.shift_adaptation on: the domain classifier's verdict on the window's mix, the same in both places
    assert sample(metrics, "model_quality_estimation_shift_auc") == pytest.approx(served["shift_auc"])
    assert sample(metrics, "model_quality_estimation_adapted") == (1.0 if served["adapted"] else 0.0)
    print(f"shift AUC {served['shift_auc']:.3f}, adapted {served['adapted']}")
    for metric in ("accuracy", "f1_macro", "roc_auc"):
        estimated = sample(metrics, "model_quality_estimated", metric=metric)
        lower = sample(metrics, "model_quality_estimated_lower", metric=metric)
        upper = sample(metrics, "model_quality_estimated_upper", metric=metric)
        realized = sample(metrics, "model_quality", metric=metric)
        error = sample(metrics, "model_quality_estimation_error", metric=metric)
        assert None not in (estimated, lower, upper, realized, error), metric
        assert served["metrics"][metric]["value"] == pytest.approx(estimated)
        print(f"{metric}: estimated {estimated:.4f} [{lower:.4f}, {upper:.4f}], realized {realized:.4f}")
        assert lower <= realized <= upper, metric  # type: ignore[operator]
        assert lower <= estimated <= upper  # type: ignore[operator]
        # every row of the window is labelled: the self-check is the estimate minus the realized value
        assert error == pytest.approx(estimated - realized, abs=1e-9), metric  # type: ignore[operator]
