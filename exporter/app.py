"""The app factory: builds every part from the settings, wires them, and keeps them on ``app.state``."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator, metrics

from exporter import __version__
from exporter.batching import ArrivalCounter, Batcher
from exporter.config import Settings
from exporter.drift_job import DriftJob
from exporter.event_intake import EventIntake
from exporter.locks import job_lock
from exporter.metrics import Exposition, MetricSources, ModelCallMetrics
from exporter.prediction_log import PredictionLog
from exporter.routes import Served, build_router, in_threadpool
from exporter.scheduler import DriftScheduler
from exporter.security import BodySizeLimit
from exporter.service import PredictionError, PredictionService, shorten
from exporter.shared_metrics import WorkerCounters, multiprocess_mode, summed_collector
from exporter.startup import Parts, build, open_database
from exporter.store import EventPairs, PredictionStore, RunStore

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


def _echo(value: Any) -> Any:
    """A client's input as a 422 shows it: what JSON cannot carry (NaN, Infinity) as text, and nothing long
    whole (a request body may be megabytes)."""
    if isinstance(value, str):
        return value if len(value) <= 64 else shorten(value)
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return shorten(value)
    return value if len(text) <= 256 else shorten(value, 256)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field."""
    if request.url.path in LOG_PATHS:  # a refused record of a model served elsewhere is counted, as it is lost
        request.app.state.service.count_refused(_records_in(exc))
    detail = []
    for err in exc.errors():
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        if "input" in err:
            item["input"] = _echo(jsonable_encoder(err["input"], custom_encoder={float: lambda f: f}))
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)


LOG_PATHS = frozenset({"/log", "/log/batch"})


def _records_in(exc: RequestValidationError) -> int:
    """How many records a refused /log body carried (a batch is refused whole); 1 when it cannot be told."""
    body = getattr(exc, "body", None)
    records = body.get("records") if isinstance(body, dict) else None
    return len(records) if isinstance(records, list) and records else 1


async def prediction_error(request: Request, exc: PredictionError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def create_app(settings: Settings, *, start_scheduler: bool = True, parts: Parts | None = None) -> FastAPI:
    """The service of ``settings`` (StartupError with one line when a part cannot be built); ``parts``: built
    already (tests build them once for several apps)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # no Evidently usage telemetry from a production service
    parts = parts or build(settings)
    version = settings.model.version
    db = open_database(settings)
    # Said once everything else has held, so that a refused start prints its one error line only.
    if parts.model is None:
        log.info("monitor-only: no model served here; predictions made elsewhere come in through /log, "
                 "/log/batch and /log/cloudevents")
    else:
        log.info("request path checked: %d reference rows get the model's own answers through /predict",
                 parts.request_path_rows)
    store = PredictionStore(db)
    plog_cfg = settings.prediction_log
    prediction_log = PredictionLog(store, queue_size=plog_cfg.queue_size, batch_size=plog_cfg.batch_size,
                                   flush_interval=plog_cfg.flush_interval_seconds)
    shared_mode = multiprocess_mode()
    registry = CollectorRegistry(auto_describe=False)
    # With several workers the histograms reach /metrics through the multiprocess files (shared_metrics).
    model_calls = ModelCallMetrics(None if shared_mode else registry)
    service = PredictionService(parts.model, version, prediction_log, model_calls, parts.classes)
    job = DriftJob(parts.job_spec(db.url), store, RunStore(db, version),
                   job_lock(db.url, settings.model.name, version), settings.drift, plog_cfg.retention)
    sources = MetricSources(settings, parts.reference.hash, parts.quality_reference, service, prediction_log, job)
    shared = WorkerCounters(sources) if shared_mode else None
    exposition = Exposition(sources, registry, summed_collector(shared) if shared else None)
    intake = EventIntake(service, EventPairs(db), parts.record_model, settings.log)
    # Halves past their timeout are counted within a quarter of it (10 s at most, 1 s at least).
    expiry = min(10.0, max(1.0, settings.log.pair_timeout_seconds / 4))
    scheduler = DriftScheduler(job.tick, settings.drift.interval_seconds, {"expire-events": (intake.expire, expiry)})
    cap = settings.batching.max_batch_size
    batcher = Batcher(service, cap, settings.batching.max_wait_ms) if cap > 1 and parts.model is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not db.try_ensure_schema():
            # Readiness says so; the tables are created once the database answers (Database.check).
            log.error("database not reachable at start-up; predictions are buffered until it is")
        prediction_log.start()
        if batcher is not None:
            batcher.start()
        if shared is not None:
            shared.start()
        if start_scheduler:
            scheduler.start()
        # What start-up built (model, reference, libraries) lives as long as the process. Frozen out of the
        # collector's reach, a full collection no longer traverses it, and no longer pauses every request in flight.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # an app built again in the same process (tests) lets the collector see these again
            if batcher is not None:
                await batcher.stop()  # uvicorn has answered the requests in flight: each answered row is queued
            scheduler.stop()
            try:
                job.close()
            except Exception:  # whatever stopping the drift job does, the prediction log is flushed
                log.exception("stopping the drift job failed")
            finally:
                prediction_log.stop(plog_cfg.shutdown_timeout_seconds)
                store.dispose()
                db.dispose()
            if shared is not None:
                shared.stop()

    app = FastAPI(
        title="Model drift exporter",
        version=__version__,
        description=f"{'Monitors' if parts.model is None else 'Serves'} model {settings.model.name!r} v{version}"
        f"{', served elsewhere,' if parts.model is None else ''} and exports its drift.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(PredictionError, prediction_error)  # type: ignore[arg-type]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if batcher is not None:
        app.add_middleware(ArrivalCounter, batcher=batcher)  # outermost: counts a request from its first byte
    _log_auth(settings)
    app.state.parts = parts
    app.state.service = service
    app.state.job = job
    app.state.db = db
    app.state.store = store
    app.state.prediction_log = prediction_log
    app.state.registry = registry
    app.state.exposition = exposition
    app.state.scheduler = scheduler
    app.state.intake = intake

    # With several workers the HTTP metrics reach /metrics through the multiprocess files (shared_metrics), not
    # through this worker's registry, which would show this worker's share alone.
    http_registry = CollectorRegistry(auto_describe=False) if shared_mode else registry
    Instrumentator(
        should_group_status_codes=True,
        excluded_handlers=["/metrics"],
        registry=http_registry,
    ).add(
        metrics.default(latency_lowr_buckets=LATENCY_BUCKETS, registry=http_registry)
    ).instrument(app)

    served = Served(settings, service, job, db, exposition, parts.record_model, intake, parts.quality_reference,
                    parts.reference.rows)
    predict = None if parts.model is None else batcher.predict if batcher is not None else in_threadpool(service)
    app.include_router(build_router(served, predict))
    return app


def _log_auth(settings: Settings) -> None:
    if settings.auth.token is None:
        log.info("authentication off: /monitoring, /drift, /feedback and /metrics are open "
                 "(set EXPORTER_AUTH__TOKEN to require a bearer token)")
    elif settings.auth.protect_metrics:
        log.info("authentication on: bearer token required on /monitoring, /drift, /feedback, /metrics")
    else:
        log.info("authentication on: bearer token required on /monitoring, /drift, /feedback; /metrics is open")
