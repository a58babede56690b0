"""The HTTP routes, thin: each one maps a request onto the request side or the drift job's published run.

No ``from __future__ import annotations`` here: FastAPI reads the request models of the routes' signatures, which
are built at run time from the configured features.
"""

import gzip
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from exporter.config import Settings
from exporter.db import Database
from exporter.drift_job import DriftJob, Published
from exporter.event_intake import EventIntake, EventRefused
from exporter.metrics import Exposition
from exporter.report import placeholder_page
from exporter.schema import (
    BatchPredictionResponse,
    FeedbackAccepted,
    LogAccepted,
    LogBatchAccepted,
    PredictionResponse,
    batch_model,
    feedback_models,
    log_models,
)
from exporter.security import BearerToken, protected
from exporter.service import LabelNotAClass, Logged, PredictionService, QueueFull, UnknownRequestIds
from exporter.store import DatabaseUnavailable

RETRY_AFTER_SECONDS = 5  # told to /feedback clients when the database is down or the queue full (the writer's backoff)
FUTURE_SECONDS = 60.0  # a logged prediction's timestamp may be this far ahead (clock skew), no more

Predict = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class Served:
    """What the routes read: built once by the app factory."""

    settings: Settings
    service: PredictionService
    job: DriftJob
    db: Database
    exposition: Exposition
    record: type[BaseModel]  # one /predict record, from the configured features
    intake: EventIntake  # /log/cloudevents
    quality_reference: dict[str, float]
    reference_rows: int


def in_threadpool(service: PredictionService) -> Predict:
    """Each request its own model call, in the threadpool (batching.max_batch_size 1)."""

    async def predict(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await run_in_threadpool(service.predict, records)

    return predict


def drift_body(settings: Settings, run: Published, quality_reference: dict[str, float]) -> dict[str, Any]:
    """/drift's JSON, all of it from one published run."""
    stats, result, q = run.stats, run.drift, run.quality
    return {
        "model": {"name": settings.model.name, "version": settings.model.version},
        "job": {
            "runs": stats.runs,
            "failures": stats.failures,
            "last_success": stats.last_success or None,
            "last_error": stats.last_error,
        },
        "result": None if result is None else result.to_dict(),
        "quality": None if q is None else {"rows": q.rows, "metrics": q.metrics},
        "quality_reference": quality_reference or None,
        "estimated_quality": None if run.estimate is None else asdict(run.estimate),
    }


def build_router(served: Served, predict_records: Predict | None) -> APIRouter:
    settings, service, job = served.settings, served.service, served.job
    router = APIRouter()
    token = BearerToken(settings.auth.token)
    private = protected(token)
    Record = served.record
    Batch = batch_model(Record, settings.max_batch_records)
    Feedback, FeedbackBatch = feedback_models(settings.model.task, settings.max_batch_records)

    LoggedRecord, LoggedBatch = log_models(Record, settings.model.task, settings.max_batch_records)

    if predict_records is not None:  # monitor-only: no model here, no /predict
        @router.post("/predict", response_model=PredictionResponse, response_model_exclude_none=True,
                     tags=["model"], name="predict",
                     description="Predict one record; the prediction is logged for drift monitoring.")
        async def predict(record: Annotated[Record, Body()]) -> Any:  # type: ignore[valid-type]
            return (await predict_records([record.model_dump()]))[0]  # type: ignore[attr-defined]

        @router.post("/predict/batch", response_model=BatchPredictionResponse, response_model_exclude_none=True,
                     tags=["model"], name="predict_batch",
                     description="Predict up to ``max_batch_records`` records at once.")
        async def predict_batch(batch: Batch) -> Any:  # type: ignore[valid-type]
            return {"predictions": await predict_records([r.model_dump() for r in batch.records])}  # type: ignore[attr-defined]

    def _log(items: list[Any], loc: Callable[[int], list[str | int]]) -> list[str]:
        now = time.time()
        logged, problems = [], []
        for i, item in enumerate(items):
            at = None if item.timestamp is None else item.timestamp.timestamp()
            why = service.check_logged(item.prediction, item.probabilities)
            if why is None and at is not None and at > now + FUTURE_SECONDS:
                why = f"timestamp {item.timestamp.isoformat()} is more than {FUTURE_SECONDS:.0f} s in the future"
            if why is not None:
                problems.append({"loc": loc(i), "msg": why, "type": "value_error"})
            logged.append(Logged(item.features.model_dump(), item.prediction, item.probabilities, item.request_id, at))
        if problems:  # a batch is taken whole or refused whole
            service.count_refused(len(items))
            raise HTTPException(422, problems)
        try:
            return service.log(logged)[0]
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc

    @router.post("/log", status_code=202, response_model=LogAccepted, tags=["log"], dependencies=private)
    def log_one(item: LoggedRecord) -> Any:  # type: ignore[valid-type]
        """Log one prediction of a model served elsewhere (idempotent by request_id)."""
        return LogAccepted(request_id=_log([item], lambda i: ["body"])[0])

    @router.post("/log/batch", status_code=202, response_model=LogBatchAccepted, tags=["log"], dependencies=private)
    def log_batch(batch: LoggedBatch) -> Any:  # type: ignore[valid-type]
        """Log up to ``max_batch_records`` predictions made elsewhere, all or none."""
        return LogBatchAccepted(request_ids=_log(batch.records, lambda i: ["body", "records", i]))  # type: ignore[attr-defined]

    def _feedback(items: list[Any]) -> FeedbackAccepted:
        try:
            accepted = service.record_feedback([(f.request_id, f.label) for f in items])
        except LabelNotAClass as exc:
            raise HTTPException(422, str(exc)) from exc
        except UnknownRequestIds as exc:
            raise HTTPException(404, str(exc)) from exc
        except (DatabaseUnavailable, QueueFull) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
        return FeedbackAccepted(accepted=accepted)

    @router.post("/feedback", status_code=202, response_model=FeedbackAccepted, tags=["feedback"],
                 dependencies=private)
    def feedback(item: Feedback) -> Any:  # type: ignore[valid-type]
        """Attach the true label to a logged prediction (idempotent; a different label replaces it)."""
        return _feedback([item])

    @router.post("/feedback/batch", status_code=202, response_model=FeedbackAccepted, tags=["feedback"],
                 dependencies=private)
    def feedback_batch(batch: FeedbackBatch) -> Any:  # type: ignore[valid-type]
        """Attach labels to several predictions; all-or-nothing when a request_id is unknown."""
        return _feedback(batch.labels)  # type: ignore[attr-defined]

    @router.post(
        "/log/cloudevents", status_code=202, tags=["log"],
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/cloudevents+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}}}}},
    )
    async def log_cloudevents(request: Request) -> Any:
        """A KServe or Seldon Core payload-logger CloudEvent (binary or structured mode): a request and its
        response (the same ce-id; Seldon: ce-requestid) make the rows, whichever arrives first. Open like /metrics:
        the loggers send no credentials, so keep it reachable from the cluster only."""
        body = await request.body()
        try:
            return await run_in_threadpool(served.intake.take, request.headers, body)
        except EventRefused as exc:
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if exc.status == 503 else None
            raise HTTPException(exc.status, exc.detail, headers=headers) from exc

    @router.get("/metrics", tags=["monitoring"], dependencies=protected(token, settings.auth.protect_metrics))
    def prometheus_metrics() -> Response:
        job.serve_newest()  # the deployment's newest run, whichever process answers
        return Response(served.exposition.render(), media_type=served.exposition.content_type)

    @router.get("/drift", tags=["monitoring"], dependencies=private)
    def drift() -> JSONResponse:
        """The latest drift result (per feature: type, stat test, score, threshold, detected; share; window)."""
        job.serve_newest()
        return JSONResponse(drift_body(settings, job.published, served.quality_reference))

    @router.get("/monitoring", response_class=HTMLResponse, tags=["monitoring"], dependencies=private)
    def monitoring(request: Request) -> Response:
        """Evidently's HTML drift report of the latest window, built by the drift job."""
        job.serve_newest()
        run = job.published
        report = run.report
        if report is None:
            if run.drift is None:
                reason = "The drift job has not run yet."
            elif run.drift.skipped_reason:
                reason = f"The last run skipped drift: {run.drift.skipped_reason}."
            else:
                reason = "The report of the last run is not ready yet."
            return HTMLResponse(placeholder_page(reason))
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
            return Response(report.gzipped, media_type="text/html; charset=utf-8", headers=headers)
        return Response(gzip.decompress(report.gzipped), media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: model and reference loaded, database reachable now (asked at most once a second)."""
        database = await run_in_threadpool(served.db.check)
        checks = {"model": True, "reference": served.reference_rows > 0, "database": database}
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    return router
