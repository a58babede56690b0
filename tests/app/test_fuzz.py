"""Schemathesis against the app's own OpenAPI spec: no generated request gets a 5xx, nothing logs a traceback.

The app is served over real HTTP by uvicorn in a thread of the test's process (InProcessServer); schemathesis runs
as its own command line, with the same phases and example budget as a user's run. The log records of the app and
of uvicorn are captured in process (they stand for a server's log), and the drift job is run once over everything
the fuzzer got logged."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import InProcessServer, config_folder, flush, quiet, sample


class Records(logging.Handler):
    """Every log record at WARNING or above, as the server's log would show it (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def server_log() -> Iterator[Records]:
    """The records of the app (the root logger) and of uvicorn (its loggers do not propagate to the root) while
    the block runs."""
    handler = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.mark.long
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_schemathesis_finds_no_server_error(demo_dir: Path, tmp_path: Path) -> None:
    # The drift job runs once, at the end, over every fuzzed row that was logged (min_rows 1: it computes drift).
    config = config_folder(demo_dir, tmp_path, **quiet(auth={"token": "fuzz-token"}, drift={"min_rows": 1}))
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert st, "schemathesis is not installed: pip install -e '.[test]'"
    server = InProcessServer(config)  # configures uvicorn's loggers: the capture is attached after it
    with server_log() as log, server:
        proc = subprocess.run(
            [st, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
             "-H", "Authorization: Bearer fuzz-token", "--max-examples", "200", "--seed", "20261126",
             "--no-color", "--report-dir", str(tmp_path / "st-report")],
            capture_output=True, text=True, timeout=400, cwd=tmp_path,
        )
        out = proc.stdout + proc.stderr
        generated = re.search(r"(\d+) generated", out)
        assert generated, out[-3000:]
        assert int(generated.group(1)) >= 1000, out[-3000:]
        assert proc.returncode == 0, out[-5000:]
        assert "Server error" not in out
        paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        assert {"/predict", "/log", "/log/batch", "/log/cloudevents", "/feedback"} <= set(paths)
        operations = sum(len(methods) for methods in paths.values())
        assert f"Tested: {operations}" in out, out[-3000:]  # every route, the log routes included
        flush(server)
        server.app.state.job.tick()
        metrics = server.metrics()
        # everything accepted was logged; nothing the fuzzer sent crashed the writer or the drift job
        assert sample(metrics, "model_prediction_log_queue_rows") == 0
        assert sample(metrics, "model_prediction_log_written_total") == sample(metrics, "model_predictions_total")
        assert sample(metrics, "model_prediction_log_dropped_total") == 0
        assert sample(metrics, "model_drift_job_runs_total") == 1
        assert sample(metrics, "model_drift_job_failures_total") == 0
        assert sample(metrics, "model_drift_window_rows") == sample(metrics, "model_predictions_total") > 0
    assert "Traceback" not in log.text(), log.text()[-3000:]
    assert not [line for line in log.lines if line.startswith(("ERROR", "CRITICAL"))], log.text()[-3000:]
