"""Schemathesis against the app's own OpenAPI spec on a real server: no generated request gets a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import config_folder, live_server, sample


@pytest.mark.long
def test_schemathesis_finds_no_server_error(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, auth={"token": "fuzz-token"}, drift={"interval_seconds": 2})
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert st, "schemathesis is not installed: pip install -e '.[test]'"
    with live_server(config) as server:
        proc = subprocess.run(
            [st, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
             "-H", "Authorization: Bearer fuzz-token", "--max-examples", "300", "--seed", "20261126",
             "--no-color", "--report-dir", str(tmp_path / "st-report")],
            capture_output=True, text=True, timeout=400, cwd=tmp_path,
        )
        out = proc.stdout + proc.stderr
        generated = re.search(r"(\d+) generated", out)
        assert generated, out[-3000:]
        assert int(generated.group(1)) >= 1000, out[-3000:]
        assert proc.returncode == 0, out[-5000:]
        assert "Server error" not in out
        metrics = server.wait_for(
            lambda m: m if sample(m, "model_prediction_log_queue_rows") == 0 else None
        )
        # everything accepted was logged; nothing the fuzzer sent crashed the writer
        assert sample(metrics, "model_prediction_log_written_total") == sample(metrics, "model_predictions_total")
        assert sample(metrics, "model_prediction_log_dropped_total") == 0
        assert sample(metrics, "model_drift_job_failures_total") == 0
    assert "Traceback" not in server.log(), server.log()[-3000:]
