"""FastAPI app factory: routes only; state lives on ``app.state`` (service, registry, scheduler)."""

import gc
import gzip
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from pydantic import BaseModel, ConfigDict, Field, create_model

from exporter import __version__
from exporter.batching import ArrivalCounter, Batcher
from exporter.config import Settings
from exporter.features import category_text
from exporter.metrics import DriftExposition, ModelCallMetrics, build_registry
from exporter.predictions import DatabaseUnavailable
from exporter.report import placeholder_page
from exporter.scheduler import DriftScheduler
from exporter.schema import BatchPredictionResponse, Label, Number, PredictionResponse, batch_model
from exporter.security import BearerToken, BodySizeLimit, protected
from exporter.service import PredictionError, Service
from exporter.shared_metrics import WorkerCounters, multiprocess_mode, summed_collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
RETRY_AFTER_SECONDS = 5  # told to /feedback clients when the database is down or the queue full (the writer's backoff)


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; inputs that JSON cannot carry (NaN, Infinity) are echoed as text."""
    detail = []
    for err in exc.errors():
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        if "input" in err:
            item["input"] = _json_safe(jsonable_encoder(err["input"], custom_encoder={float: lambda f: f}))
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)


async def prediction_error(request: Request, exc: PredictionError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


class FeedbackAccepted(BaseModel):
    accepted: int


def create_app(settings: Settings, *, start_scheduler: bool = True) -> FastAPI:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # no Evidently usage telemetry from a production service
    service = Service(settings)
    shared = WorkerCounters(service) if multiprocess_mode() else None
    registry = build_registry(service, drift=False, shared=summed_collector(shared) if shared else None)
    drift_text = DriftExposition(service)
    scheduler = DriftScheduler(service, settings.drift.interval_seconds)
    # With several workers the histograms reach /metrics through the multiprocess files (shared_metrics).
    service.model_calls = ModelCallMetrics(None if shared is not None else registry)
    cap = settings.batching.max_batch_size
    batcher = Batcher(service, cap, settings.batching.max_wait_ms) if cap > 1 else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        if batcher is not None:
            batcher.start()
        if shared is not None:
            shared.start()
        if start_scheduler:
            scheduler.start()
        # What start-up built (model, reference, libraries) lives as long as the process. Frozen out of the
        # collector's reach, a full collection no longer traverses it: measured, that removes 140-160 ms pauses that
        # stalled every request in flight under load (the p99 of /predict at 64 clients).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # an app built again in the same process (tests) lets the collector see these again
            if batcher is not None:
                await batcher.stop()  # uvicorn has answered the requests in flight: each answered row is queued
            scheduler.stop()
            service.stop()
            if shared is not None:
                shared.stop()

    app = FastAPI(
        title="Model drift exporter",
        version=__version__,
        description=f"Serves model {settings.model.name!r} v{settings.model.version} and exports its drift.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(PredictionError, prediction_error)  # type: ignore[arg-type]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if batcher is not None:
        app.add_middleware(ArrivalCounter, batcher=batcher)  # outermost: counts a request from its first byte
    token = BearerToken(settings.auth.token)
    private = protected(token)
    if settings.auth.token is None:
        log.info("authentication off: /monitoring, /drift, /feedback and /metrics are open "
                 "(set EXPORTER_AUTH__TOKEN to require a bearer token)")
    elif settings.auth.protect_metrics:
        log.info("authentication on: bearer token required on /monitoring, /drift, /feedback, /metrics")
    else:
        log.info("authentication on: bearer token required on /monitoring, /drift, /feedback; /metrics is open")
    app.state.service = service
    app.state.registry = registry
    app.state.scheduler = scheduler

    # With several workers the HTTP metrics reach /metrics through the multiprocess files (shared_metrics), not
    # through this worker's registry, which would show this worker's share alone.
    http_registry = CollectorRegistry(auto_describe=False) if shared is not None else registry
    Instrumentator(
        should_group_status_codes=True,
        excluded_handlers=["/metrics"],
        registry=http_registry,
    ).add(
        metrics.default(latency_lowr_buckets=LATENCY_BUCKETS, registry=http_registry)
    ).instrument(app)

    Record = service.record_model
    Batch = batch_model(Record, settings.max_batch_records)
    label_type: Any = Number if settings.model.task == "regression" else Label  # strict and finite, as features
    Feedback = create_model(
        "Feedback",
        __config__=ConfigDict(extra="forbid"),
        request_id=(str, Field(min_length=1, max_length=64)),
        label=(label_type, ...),
    )
    FeedbackBatch = create_model(
        "FeedbackBatch",
        __config__=ConfigDict(extra="forbid"),
        labels=(list[Feedback], Field(min_length=1, max_length=settings.max_batch_records)),  # type: ignore[valid-type]
    )
    classes = {category_text(c) for c in service.model.classes}

    def _predict(records: list[BaseModel]) -> list[dict[str, Any]]:
        return service.predict([r.model_dump() for r in records])

    predict_doc = "Predict one record; the prediction is logged for drift monitoring."
    batch_doc = "Predict up to ``max_batch_records`` records at once."
    if batcher is None:  # batching.max_batch_size 1: each request its own model call, in the threadpool

        @app.post("/predict", response_model=PredictionResponse, response_model_exclude_none=True, tags=["model"],
                  description=predict_doc)
        def predict(record: Annotated[Record, Body()]) -> Any:  # type: ignore[valid-type]
            return _predict([record])[0]

        @app.post("/predict/batch", response_model=BatchPredictionResponse, response_model_exclude_none=True,
                  tags=["model"], description=batch_doc)
        def predict_batch(batch: Batch) -> Any:  # type: ignore[valid-type]
            return {"predictions": _predict(batch.records)}  # type: ignore[attr-defined]

    else:  # concurrent calls gathered into one model call (exporter.batching)
        gathered = batcher.predict

        @app.post("/predict", response_model=PredictionResponse, response_model_exclude_none=True, tags=["model"],
                  description=predict_doc, name="predict")  # the same operationId as without batching
        async def predict_gathered(record: Annotated[Record, Body()]) -> Any:  # type: ignore[valid-type]
            return (await gathered([record.model_dump()]))[0]  # type: ignore[attr-defined]

        @app.post("/predict/batch", response_model=BatchPredictionResponse, response_model_exclude_none=True,
                  tags=["model"], description=batch_doc, name="predict_batch")
        async def predict_batch_gathered(batch: Batch) -> Any:  # type: ignore[valid-type]
            return {"predictions": await gathered([r.model_dump() for r in batch.records])}  # type: ignore[attr-defined]

    def _feedback(items: list[Any]) -> FeedbackAccepted:
        if classes:
            wrong = [f.label for f in items if category_text(f.label) not in classes]
            if wrong:
                raise HTTPException(422, f"label(s) {wrong[:5]} not among the model's classes {sorted(classes)}")
        try:
            unknown, current = service.unknown_request_ids([f.request_id for f in items])
        except DatabaseUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
        if unknown:
            raise HTTPException(404, f"unknown request_id(s): {', '.join(unknown[:20])}")
        if not service.add_feedback([(f.request_id, f.label) for f in items], current):
            raise HTTPException(503, "prediction log queue is full; retry later",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return FeedbackAccepted(accepted=len(items))

    @app.post("/feedback", status_code=202, response_model=FeedbackAccepted, tags=["feedback"], dependencies=private)
    def feedback(item: Feedback) -> Any:  # type: ignore[valid-type]
        """Attach the true label to a logged prediction (idempotent; a different label replaces it)."""
        return _feedback([item])

    @app.post(
        "/feedback/batch", status_code=202, response_model=FeedbackAccepted, tags=["feedback"], dependencies=private
    )
    def feedback_batch(batch: FeedbackBatch) -> Any:  # type: ignore[valid-type]
        """Attach labels to several predictions; all-or-nothing when a request_id is unknown."""
        return _feedback(batch.labels)  # type: ignore[attr-defined]

    @app.get("/metrics", tags=["monitoring"], dependencies=protected(token, settings.auth.protect_metrics))
    def prometheus_metrics() -> Response:
        service.serve_newest()  # the deployment's newest run, whichever process answers
        return Response(generate_latest(registry) + drift_text.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/drift", tags=["monitoring"], dependencies=private)
    def drift() -> JSONResponse:
        """The latest drift result (per feature: type, stat test, score, threshold, detected; share; window)."""
        service.serve_newest()
        result = service.drift_result
        body: dict[str, Any] = {
            "model": {"name": settings.model.name, "version": settings.model.version},
            "job": {
                "runs": service.job_stats.runs,
                "failures": service.job_stats.failures,
                "last_success": service.job_stats.last_success or None,
                "last_error": service.job_stats.last_error,
            },
            "result": None if result is None else result.to_dict(),
            "quality": None
            if service.quality_result is None
            else {"rows": service.quality_result.rows, "metrics": service.quality_result.metrics},
            "quality_reference": service.quality_reference or None,
            "estimated_quality": None if service.estimate_result is None else asdict(service.estimate_result),
        }
        return JSONResponse(body)

    @app.get("/monitoring", response_class=HTMLResponse, tags=["monitoring"], dependencies=private)
    def monitoring(request: Request) -> Response:
        """Evidently's HTML drift report of the latest window, built by the drift job."""
        service.serve_newest()
        report = service.report
        if report is None:
            result = service.drift_result
            if result is None:
                reason = "The drift job has not run yet."
            elif result.skipped_reason:
                reason = f"The last run skipped drift: {result.skipped_reason}."
            else:
                reason = "The report of the last run is not ready yet."
            return HTMLResponse(placeholder_page(reason))
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
            return Response(report.gzipped, media_type="text/html; charset=utf-8", headers=headers)
        return Response(gzip.decompress(report.gzipped), media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: model and reference loaded, database reachable."""
        checks = await run_in_threadpool(service.readiness)
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    return app
