"""NannyML's side of benchmarks/peers/drift_peers.py, run with .venv-peers/nannyml's Python (``-I``).

argv: DATA REPEATS CASE...; prints one JSON line: {case: {seconds, run_seconds, flagged}}
(fit + first window; a later window). NannyML runs with its defaults
(Jensen-Shannon for numbers and categories), its thresholds set from the spread of its reference chunks: so the
chunks are a tenth of the reference (one chunk of the whole window would give a threshold of 0 from a single
reference chunk), the window is cut into chunks of that size, and a feature is flagged when any of them alerts,
as NannyML's alerts over a period read."""

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import nannyml as nml
import pandas as pd

warnings.simplefilter("ignore")


def main() -> None:
    data, repeats, cases = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    names = json.loads((data / "features.json").read_text())
    features = names["numerical"] + names["categorical"]
    out = {}
    for case in cases:
        reference = pd.read_parquet(data / f"{case}_reference.parquet")
        window = pd.read_parquet(data / f"{case}_window.parquet")
        times, runs, flagged = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            calc = nml.UnivariateDriftCalculator(column_names=features, treat_as_categorical=names["categorical"],
                                                 chunk_size=max(len(reference) // 10, 1))
            calc.fit(reference)
            result = calc.calculate(window).filter(period="analysis").to_df()
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            calc.calculate(window)
            runs.append(time.perf_counter() - started)
            flagged = sorted({column[0] for column in result.columns
                              if column[-1] == "alert" and bool(result[column].astype(bool).any())})
        out[case] = {"seconds": statistics.median(times), "run_seconds": statistics.median(runs), "flagged": flagged}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
