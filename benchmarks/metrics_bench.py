"""/metrics render time for a real app configured with 300 features, holding a DriftResult of those features.

The app is built with ``exporter.app.create_app`` from a generated config folder (reference of 300 features, a
scikit-learn DummyClassifier saved with joblib, SQLite log); what is timed is the ``GET /metrics`` route's handler
called directly (today ``job.serve_newest()`` and the app's ``Exposition.render()``), so the number follows
whatever the route does. The collectors alone, every family rendered on every scrape (no cached drift text;
what ``generate_latest(build_registry(service))`` measured before the orchestration redesign), are timed too, as
a second number: ``generate_latest`` of a registry holding ``FullScrape`` (``ScrapeCollector`` and
``drift_families`` of the job's published run) and a ``ProcessCollector``.

The DriftResult comes from ``compute_drift`` over a 3000-row window; for the "100k" case a second app's
predictions table holds 100k rows and it publishes the same per-feature result with ``window_rows=100000``. Each
app publishes its result through the drift job's own path: the run is stored in the app's database
(``RunStore.save``) and ``job.serve_newest(force=True)`` publishes the newest stored run. The scrape is meant to
read only the latest result, so the two render times should match: a collector that starts reading the table or
recomputing per scrape shows up as a ratio above 1. The two are timed in alternation.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from collections.abc import Iterator
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


def _fill(store: Any, rows: int, features: list[str]) -> None:
    """Grow the predictions table to ``rows`` rows (a few feature values each: the collector must not read them)."""
    from exporter.store import PredictionRow

    have = store.count()
    now = time.time()
    while have < rows:
        n = min(10_000, rows - have)
        store.insert([
            PredictionRow(uuid.uuid4().hex, now, "1", {f: 1.0 for f in features[:5]}, "a", None).as_db()
            for _ in range(n)
        ])
        have += n


class FullScrape:
    """Every family of one scrape, rendered from scratch: the counters and job families (``ScrapeCollector``) and
    the drift families of the job's published run, taken once per collect."""

    def __init__(self, sources: Any) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        from exporter.metrics import ScrapeCollector, drift_families

        run = self.sources.job.published
        yield from ScrapeCollector(self.sources, run).collect()
        if run.drift is not None:
            yield from drift_families(run.drift)


def _route(app: Any, path: str) -> Any:
    """The endpoint of ``path`` (no prefix), looking into included routers: FastAPI 0.165 keeps an included
    router as one ``_IncludedRouter`` entry of ``app.routes``, its routes on ``original_router``."""
    todo = list(app.routes)
    while todo:
        route = todo.pop(0)
        if getattr(route, "path", None) == path:
            return route.endpoint
        included = getattr(route, "original_router", None)
        if included is not None:
            todo.extend(included.routes)
    raise LookupError(path)


def _times(fn: Any, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(quick: bool, log: Any) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

    from exporter.app import create_app
    from exporter.config import load_settings
    from exporter.drift import compute_drift
    from exporter.metrics import MetricSources
    from exporter.startup import build
    from exporter.store import PredictionStore, RunStore

    n_num, n_cat = 240, 60
    rounds, per_round = (5, 10) if quick else (10, 30)
    big = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        apps, parts = {}, {}
        for name, rows in (("3k", 3000), ("big", big)):
            (tmp / name).mkdir()
            settings = load_settings(_config_folder(tmp / name, n_num, n_cat))
            parts[name] = build(settings)  # given to the app, so that the benchmark can read what start-up built
            app = create_app(settings, start_scheduler=False, parts=parts[name])
            app.state.db.ensure_schema()
            store = PredictionStore(app.state.db)
            _fill(store, rows, parts[name].reference.numerical + parts[name].reference.categorical)
            store.dispose()
            apps[name] = app
        reference = parts["3k"].reference
        result = compute_drift(reference, drift_frame(3000, n_num, n_cat, seed=2, drifted=True), min_rows=100)
        for name, published in (("3k", result), ("big", dataclasses.replace(result, window_rows=big))):
            job = apps[name].state.job
            RunStore(apps[name].state.db, parts[name].settings.model.version).save(published, None, None)
            job.serve_newest(force=True)  # the job's own publish path: the newest stored run
            assert job.published.drift is not None and job.published.drift.window_rows == published.window_rows
        handlers = {name: _route(app, "/metrics") for name, app in apps.items()}
        registries = {}
        for name, app in apps.items():
            sources = MetricSources(parts[name].settings, parts[name].reference.hash, parts[name].quality_reference,
                                    app.state.service, app.state.prediction_log, app.state.job)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(FullScrape(sources))  # type: ignore[arg-type]
            registry.register(ProcessCollector(registry=None))
            registries[name] = registry
        body = handlers["3k"]().body
        samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        route: dict[str, list[float]] = {"3k": [], "big": []}
        plain: dict[str, list[float]] = {"3k": [], "big": []}
        for r in range(rounds):  # interleaved, so a change in the machine's load hits both alike
            for name in (("3k", "big") if r % 2 == 0 else ("big", "3k")):
                handler, registry = handlers[name], registries[name]
                route[name].extend(_times(handler, per_round))
                plain[name].extend(_times(lambda registry=registry: generate_latest(registry), per_round))
        for app in apps.values():  # the lifespan never ran: what it would close at shutdown
            app.state.job.close()
            app.state.prediction_log.store.dispose()
            app.state.db.dispose()
    ms_3k = median(route["3k"]) * 1000
    ms_big = median(route["big"]) * 1000
    log(f"metrics: 300 features: {ms_3k:.2f} ms per /metrics render with a 3k window, {ms_big:.2f} ms with a "
        f"{big // 1000}k window ({len(body)} bytes, {samples} samples)")
    return {
        "metrics_ms_300_features": ms_3k,
        "metrics_ms_300_features_min": min(route["3k"]) * 1000,
        "metrics_ms_300_features_100k": ms_big,
        "metrics_ms_ratio_100k_vs_3k": ms_big / ms_3k,
        # Keys kept from before the redesign (build_registry is gone): the same measurement, FullScrape's registry.
        "metrics_ms_300_features_build_registry": median(plain["3k"]) * 1000,
        "metrics_ms_ratio_100k_vs_3k_build_registry": median(plain["big"]) / median(plain["3k"]),
        "metrics_bytes_300_features": len(body),
        "metrics_samples_300_features": samples,
        "metrics_features": n_num + n_cat,
    }
