"""The BentoML peer of benchmarks/peers/serving.py: the demo pipeline's joblib file behind a batchable API
(adaptive batching, at most 64 rows, as ours and MLServer's), run with .venv-peers/bentoml's ``bentoml serve``.

The rows come as an array of values in the pipeline's column order: BentoML 1.4.40 cannot batch a DataFrame
input (its batch-size code adds a shape tuple to an int), so the frame is built here.
"""

import os

import bentoml
import joblib
import numpy as np
import pandas as pd

MODEL = os.environ["MODEL_PATH"]
NUMERICAL = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
COLUMNS = [*NUMERICAL, "island", "sex"]


@bentoml.service(workers=int(os.environ.get("BENTO_WORKERS", "1")))
class Penguins:
    def __init__(self) -> None:
        self.model = joblib.load(MODEL)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=1000)
    def predict(self, records: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(records, columns=COLUMNS).astype({name: float for name in NUMERICAL})
        return self.model.predict(frame)
