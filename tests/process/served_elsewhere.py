"""A model served elsewhere, as a team runs one: a small FastAPI app of its own that predicts with the demo model
and logs each prediction to the exporter through exporter.client.PredictionLogger.

    EXPORTER_URL=http://127.0.0.1:8000 MODEL_PATH=model.joblib uvicorn tests.process.served_elsewhere:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import joblib
import pandas as pd
from fastapi import FastAPI

from exporter.client import PredictionLogger

model = joblib.load(os.environ["MODEL_PATH"])
logger = PredictionLogger(os.environ["EXPORTER_URL"], flush_interval=0.1, max_backoff=0.5)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    logger.close()


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
def predict(record: dict[str, Any]) -> dict[str, Any]:
    frame = pd.DataFrame([record])
    prediction = str(model.predict(frame)[0])
    probabilities = dict(zip(map(str, model.classes_), map(float, model.predict_proba(frame)[0]), strict=True))
    request_id = logger.log(record, prediction, probabilities)
    return {"request_id": request_id, "prediction": prediction}


@app.get("/logger")
def logger_state() -> dict[str, int]:
    return {"sent": logger.sent, "dropped": logger.dropped, "queued": logger.queued}
