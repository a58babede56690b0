"""A model served by another app logs through the Python client; every answered prediction reaches the exporter,
also across a restart of the exporter (the client retries). Real processes: the exporter and the model's app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from exporter.db import predictions_table
from exporter.demo import Traffic
from tests.helpers import ROOT, LiveServer, config_folder, free_port, sample, terminate, wait_http, wait_until


def test_every_answered_prediction_arrives_across_an_exporter_restart(demo_dir: Path, tmp_path: Path) -> None:
    config = config_folder(demo_dir, tmp_path, "monitor.yaml",
                           drift={"interval_seconds": 3600, "report": False, "isolation": "thread"},
                           reference={"check_held_out": False})
    exporter = LiveServer(config).start()
    port = free_port()
    app_log = (tmp_path / "app.log").open("wb")
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.process.served_elsewhere:app", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, stdout=app_log, stderr=subprocess.STDOUT,
        env={**os.environ, "EXPORTER_URL": exporter.url, "MODEL_PATH": str(tmp_path / "model.joblib")},
    )
    url = f"http://127.0.0.1:{port}"
    answered: dict[str, str] = {}
    records = Traffic("none", seed=11).records(150)[0]

    def send(part: list[dict[str, object]]) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            for record in part:
                resp = http.post("/predict", json=record)
                assert resp.status_code == 200, resp.text
                answered[resp.json()["request_id"]] = resp.json()["prediction"]

    def logger() -> dict[str, int]:
        return httpx.get(f"{url}/logger", timeout=5).json()

    try:
        wait_http(f"{url}/logger", app, 60, "the model's app", lambda: (tmp_path / "app.log").read_text())
        send(records[:50])
        wait_until(lambda: logger()["sent"] == 50, 20, what="the first 50 sent")
        exporter.stop()
        send(records[50:100])  # answered while the exporter is down: the client holds and retries them
        wait_until(lambda: "retrying" in (tmp_path / "app.log").read_text(), 10, what="the client retrying")
        assert logger()["sent"] == 50
        exporter.start()
        send(records[100:])
        state = wait_until(lambda: (s := logger())["sent"] == 150 and s, 30, what="every record sent",
                           details=lambda: (tmp_path / "app.log").read_text())
        assert state == {"sent": 150, "dropped": 0, "queued": 0}
        metrics = exporter.wait_for(lambda m: m if sample(m, "model_prediction_log_written_total") == 100 else None,
                                    timeout=20)  # this run's share: 50 came before the restart
        assert sample(metrics, "model_log_records_total", outcome="accepted") == 100
    finally:
        terminate(app, 30)
        app_log.close()
        exporter.stop()

    engine = create_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        with engine.connect() as conn:
            rows = {r.request_id: json.loads(r.prediction) for r in conn.execute(
                select(predictions_table.c.request_id, predictions_table.c.prediction))}
    finally:
        engine.dispose()
    assert rows == answered  # exactly the answered predictions, each once, as answered
    assert "prediction logger: " in (tmp_path / "app.log").read_text()
