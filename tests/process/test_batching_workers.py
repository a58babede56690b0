"""Adaptive batching under ``exporter serve --workers 2``: the model-call histograms of every worker process are
summed on each scrape (prometheus_client's multiprocess mode), whichever worker answers it. The in-process
batching tests are in tests/app/test_batching.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import NO_JOB, config_folder, live_server, mixed_records, sample


def test_histograms_summed_over_workers(demo_dir: Path, tmp_path: Path) -> None:
    """--workers 2 (multiprocess mode): every scrape, whichever worker answers, counts every row once."""
    config = config_folder(demo_dir, tmp_path, **NO_JOB)
    rows = mixed_records(200, seed=10)
    with live_server(config, workers=2) as server:
        failures: list[str] = []

        def client(part: list[dict[str, Any]]) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for r in part:
                    resp = http.post("/predict", json=r)
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")

        threads = [threading.Thread(target=client, args=(rows[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
        assert failures == [], failures[:5]
        server.wait_for(lambda m: sample(m, "model_batch_rows_sum") == len(rows), timeout=30, interval=0.1)
        for _ in range(6):  # scrapes land on either worker
            m = server.metrics()
            assert sample(m, "model_batch_rows_sum") == len(rows)
            assert sample(m, "model_inference_duration_seconds_count") == sample(m, "model_batch_rows_count")
