"""The plain FastAPI peer of benchmarks/peers/serving.py, in the seed's style: the demo pipeline's joblib file, one
request one prediction, and one SQLite INSERT (and commit) per request in a ``BackgroundTasks`` task after the
answer. Run with uvicorn from .venv-peers/mlserver's Python, which has FastAPI (MLServer's own dependency), never
ours. MODEL_PATH and DB_PATH from the environment."""

import json
import os
import sqlite3
import threading
import time
import uuid

import joblib
import pandas as pd
from fastapi import BackgroundTasks, FastAPI

MODEL = joblib.load(os.environ["MODEL_PATH"])
DB_PATH = os.environ["DB_PATH"]
COLUMNS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island", "sex"]
_local = threading.local()

app = FastAPI()


def _db() -> sqlite3.Connection:
    if not hasattr(_local, "db"):
        _local.db = sqlite3.connect(DB_PATH)
        _local.db.execute("CREATE TABLE IF NOT EXISTS predictions (id TEXT, created REAL, features TEXT, "
                          "prediction TEXT)")
    return _local.db


def _log(request_id: str, features: dict, prediction: str) -> None:
    db = _db()
    db.execute("INSERT INTO predictions VALUES (?, ?, ?, ?)", (request_id, time.time(), json.dumps(features),
                                                                 json.dumps(prediction)))
    db.commit()


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post("/predict")
def predict(record: dict, background: BackgroundTasks) -> dict:
    frame = pd.DataFrame([record], columns=COLUMNS)
    prediction = str(MODEL.predict(frame)[0])
    request_id = str(uuid.uuid4())
    background.add_task(_log, request_id, record, prediction)
    return {"prediction": prediction, "request_id": request_id}
