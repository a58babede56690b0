"""/metrics render time for a real app configured with 300 features, holding a DriftResult of those features.

The app is built with ``exporter.app.create_app`` from a generated config folder (reference of 300 features, a
scikit-learn DummyClassifier saved with joblib, SQLite log); what is timed is the ``GET /metrics`` route's handler
called directly (today ``generate_latest`` of the app's registry), so the number follows whatever the route does.
``generate_latest(exporter.metrics.build_registry(service))`` is timed too, as a second number.

The DriftResult comes from ``compute_drift`` over a 3000-row window; for the "100k" case a second app's
predictions table holds 100k rows and it publishes the same per-feature result with ``window_rows=100000``. The
scrape is meant to read only the latest result, so the two render times should match: a collector that starts
reading the table or recomputing per scrape shows up as a ratio above 1. The two are timed in alternation.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import drift_frame, feature_names, median


def _config_folder(dest: Path, n_num: int, n_cat: int) -> Path:
    import joblib
    import numpy as np
    from sklearn.dummy import DummyClassifier

    num, cat = feature_names(n_num, n_cat)
    frame = drift_frame(2000, n_num, n_cat, seed=1)
    frame["label"] = np.random.default_rng(0).choice(["a", "b", "c"], len(frame))
    frame.to_csv(dest / "reference.csv", index=False)
    joblib.dump(DummyClassifier(strategy="prior").fit(frame[num + cat], frame["label"]), dest / "model.joblib")
    config = {
        "model": {"path": "model.joblib", "name": "bench300", "version": "1", "task": "classification"},
        "reference": {"path": "reference.csv"},
        "features": {"numerical": num, "categorical": cat},
        "target": "label",
        "database_url": "sqlite:///predictions.db",
        "drift": {"report": False},
    }
    path = dest / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fill(service: Any, rows: int, features: list[str]) -> None:
    """Grow the predictions table to ``rows`` rows (a few feature values each: the collector must not read them)."""
    from exporter.predictions import PredictionRow

    have = service.store.count()
    now = time.time()
    while have < rows:
        n = min(10_000, rows - have)
        service.store.insert([
            PredictionRow(uuid.uuid4().hex, now, "1", {f: 1.0 for f in features[:5]}, "a", None).as_db()
            for _ in range(n)
        ])
        have += n


def _route(app: Any, path: str) -> Any:
    for route in app.routes:
        if getattr(route, "path", None) == path:
            return route.endpoint
    raise LookupError(path)


def _times(fn: Any, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(quick: bool, log: Any) -> dict[str, Any]:
    from prometheus_client import generate_latest

    from exporter.app import create_app
    from exporter.config import load_settings
    from exporter.drift import compute_drift
    from exporter.metrics import build_registry

    n_num, n_cat = 240, 60
    rounds, per_round = (5, 10) if quick else (10, 30)
    big = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        apps = {}
        for name, rows in (("3k", 3000), ("big", big)):
            (tmp / name).mkdir()
            app = create_app(load_settings(_config_folder(tmp / name, n_num, n_cat)), start_scheduler=False)
            service = app.state.service
            service.store.create_schema()
            _fill(service, rows, service.reference.numerical + service.reference.categorical)
            apps[name] = app
        reference = apps["3k"].state.service.reference
        result = compute_drift(reference, drift_frame(3000, n_num, n_cat, seed=2, drifted=True), min_rows=100)
        apps["3k"].state.service.drift_result = result
        apps["big"].state.service.drift_result = dataclasses.replace(result, window_rows=big)
        handlers = {name: _route(app, "/metrics") for name, app in apps.items()}
        registries = {name: build_registry(app.state.service) for name, app in apps.items()}
        body = handlers["3k"]().body
        samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        route: dict[str, list[float]] = {"3k": [], "big": []}
        plain: dict[str, list[float]] = {"3k": [], "big": []}
        for r in range(rounds):  # interleaved, so a change in the machine's load hits both alike
            for name in (("3k", "big") if r % 2 == 0 else ("big", "3k")):
                handler, registry = handlers[name], registries[name]
                route[name].extend(_times(handler, per_round))
                plain[name].extend(_times(lambda registry=registry: generate_latest(registry), per_round))
        for app in apps.values():
            app.state.service.store.dispose()
    ms_3k = median(route["3k"]) * 1000
    ms_big = median(route["big"]) * 1000
    log(f"metrics: 300 features: {ms_3k:.2f} ms per /metrics render with a 3k window, {ms_big:.2f} ms with a "
        f"{big // 1000}k window ({len(body)} bytes, {samples} samples)")
    return {
        "metrics_ms_300_features": ms_3k,
        "metrics_ms_300_features_min": min(route["3k"]) * 1000,
        "metrics_ms_300_features_100k": ms_big,
        "metrics_ms_ratio_100k_vs_3k": ms_big / ms_3k,
        "metrics_ms_300_features_build_registry": median(plain["3k"]) * 1000,
        "metrics_ms_ratio_100k_vs_3k_build_registry": median(plain["big"]) / median(plain["3k"]),
        "metrics_bytes_300_features": len(body),
        "metrics_samples_300_features": samples,
        "metrics_features": n_num + n_cat,
    }
