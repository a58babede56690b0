"""alibi-detect's side of benchmarks/peers/drift_peers.py, run with .venv-peers/alibi's Python (``-I``).

argv: DATA REPEATS CASE...; prints one JSON line: {case: {seconds, run_seconds, flagged}}
(fit + first window; a later window). TabularDrift with its defaults
(K-S for numbers, chi-square for the features named categorical), each feature flagged at p 0.05
(``drift_type="feature"``). It takes a numeric array: categories are coded as integers (values the reference never
showed get codes of their own) and missing numbers are filled with the reference's median, inside the timing."""

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from alibi_detect.cd import TabularDrift

warnings.simplefilter("ignore")


def encode(reference: pd.DataFrame, window: pd.DataFrame, numerical: list, categorical: list):
    medians = reference[numerical].median()
    columns_ref, columns_win = [], []
    for name in numerical:
        columns_ref.append(reference[name].fillna(medians[name]).to_numpy(dtype=float))
        columns_win.append(window[name].fillna(medians[name]).to_numpy(dtype=float))
    for name in categorical:
        levels = {v: i for i, v in enumerate(pd.unique(pd.concat([reference[name], window[name]])))}
        columns_ref.append(reference[name].map(levels).to_numpy(dtype=float))
        columns_win.append(window[name].map(levels).to_numpy(dtype=float))
    return np.column_stack(columns_ref), np.column_stack(columns_win)


def main() -> None:
    data, repeats, cases = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    names = json.loads((data / "features.json").read_text())
    numerical, categorical = names["numerical"], names["categorical"]
    features = numerical + categorical
    out = {}
    for case in cases:
        reference = pd.read_parquet(data / f"{case}_reference.parquet")
        window = pd.read_parquet(data / f"{case}_window.parquet")
        times, runs, flagged = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            x_ref, x = encode(reference, window, numerical, categorical)
            detector = TabularDrift(x_ref, p_val=0.05,
                                    categories_per_feature={len(numerical) + j: None for j in range(len(categorical))})
            result = detector.predict(x, drift_type="feature")
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            detector.predict(encode(reference, window, numerical, categorical)[1], drift_type="feature")
            runs.append(time.perf_counter() - started)
            flagged = sorted(f for f, d in zip(features, np.ravel(result["data"]["is_drift"]), strict=True) if d)
        out[case] = {"seconds": statistics.median(times), "run_seconds": statistics.median(runs), "flagged": flagged}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
