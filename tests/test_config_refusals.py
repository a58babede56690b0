"""Configs that would start but could not work are refused at start with one line naming the key."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import config_folder, free_port, terminate


def serve_refused(config: Path, env: dict[str, str] | None = None, *, prefix: list[str] | None = None) -> str:
    """Run ``exporter serve`` on ``config``; assert it refuses to start (status 2, one line, no traceback) and
    return that line. A server that starts instead is stopped and the test fails at once."""
    port = free_port()
    proc = subprocess.Popen(
        [*(prefix or []), sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "DO_NOT_TRACK": "1", **(env or {})},
        cwd=config.parent,
    )
    deadline = time.monotonic() + 90
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    pytest.fail("the service started with this config")
            time.sleep(0.2)
    finally:
        terminate(proc, 30)
    out, err = (s.decode(errors="replace") for s in proc.communicate())
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exporter: error: "), err
    assert "Traceback" not in err + out
    return lines[0]


@pytest.mark.parametrize(
    ("changes", "env", "expected"),
    [
        pytest.param({"drift": {"window_size": 50, "min_rows": 100}}, {},
                     ["drift.min_rows", "drift.window_size", "100", "50"], id="min-rows-over-window"),
        pytest.param({"database_url": "sqlite:///:memory:"}, {},
                     ["database_url", "in-memory", "sqlite:///predictions.db"], id="sqlite-memory"),
        pytest.param({}, {"EXPORTER_DATABASE_URL": "sqlite://"},
                     ["database_url", "in-memory", "sqlite:///predictions.db"], id="sqlite-empty-path-env"),
    ],
)
def test_refused_at_start(demo_dir: Path, tmp_path: Path, changes: dict[str, Any], env: dict[str, str],
                          expected: list[str]) -> None:
    config = config_folder(demo_dir, tmp_path, **changes)
    line = serve_refused(config, env)
    for part in expected:  # "!name": must not be in the line
        assert (part[1:] not in line) if part.startswith("!") else (part in line), (part, line)
