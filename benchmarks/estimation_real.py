"""Estimated against realized quality on real labelled data with a drift between periods: Seattle's daily weather
2012-2015 (``vega_datasets``' bundled copy, read from the installed package, never downloaded).

Task: will it rain today (precipitation > 0), from the day's temperatures, their range, the wind, whether it rained
yesterday and the season. The model (logistic regression) is trained on 2012, the reference (calibration) is 2013,
held out; 2014-2015 are scored in quarterly chunks. The periods drift: 2012 was wetter (48 % wet days against
39-42 % after), and every quarter moves the features and the share of wet days with the season (dry summers, wet
winters), which moves the model's accuracy. ``python -m benchmarks.estimation_real`` prints the table of
docs/estimated-quality.md and writes ``benchmarks/estimation_real.json``; tests/unit/test_estimation_real.py checks
the same numbers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEATURES = ["temp_max", "temp_min", "temp_range", "wind", "wet_yesterday", "season_sin", "season_cos"]
METRICS = ("accuracy", "f1_macro", "roc_auc")
OUT = Path(__file__).resolve().parent / "estimation_real.json"


def load() -> pd.DataFrame:
    from vega_datasets import local_data  # the bundled CSV: no network

    d = local_data.seattle_weather()
    d["wet"] = (d["precipitation"] > 0).astype(int)
    d["temp_range"] = d["temp_max"] - d["temp_min"]
    d["wet_yesterday"] = d["wet"].shift(1).fillna(0)
    day = 2 * np.pi * d["date"].dt.dayofyear / 365.25
    d["season_sin"], d["season_cos"] = np.sin(day), np.cos(day)
    return d


def table(seed: int = 0) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from exporter.estimation import ClassificationEstimator, realized_metrics_many

    warnings.simplefilter("ignore")
    d = load()
    year = d["date"].dt.year
    train, reference, analysis = d[year == 2012], d[year == 2013], d[year >= 2014]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(train[FEATURES], train["wet"])
    estimator = ClassificationEstimator.fit([0, 1], model.predict_proba(reference[FEATURES]),
                                            reference["wet"].tolist())
    rng = np.random.default_rng(seed)
    rows = []
    chunks = [("2013 (reference)", reference)] + [
        (f"{y}-Q{q}", chunk) for (y, q), chunk in analysis.groupby([analysis["date"].dt.year,
                                                                     analysis["date"].dt.quarter])
    ]
    for name, chunk in chunks:
        probas = model.predict_proba(chunk[FEATURES])
        predicted = probas.argmax(axis=1)
        estimate = estimator.estimate(probas, predicted, rng)
        truth = realized_metrics_many(chunk["wet"].to_numpy()[None, :].astype(np.int8), probas, predicted)
        row: dict[str, Any] = {"chunk": name, "rows": len(chunk), "wet_share": float(chunk["wet"].mean()),
                               "temp_max_mean": float(chunk["temp_max"].mean())}
        for m in METRICS:
            row[m] = {"estimated": estimate[m].value, "lower": estimate[m].lower, "upper": estimate[m].upper,
                      "realized": float(truth[m][0])}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| chunk | rows | wet days | mean max temp | accuracy: estimated [99 % band] | realized | "
             "ROC AUC: estimated [99 % band] | realized |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, u = r["accuracy"], r["roc_auc"]
        lines.append(f"| {r['chunk']} | {r['rows']} | {r['wet_share']:.0%} | {r['temp_max_mean']:.1f} °C | "
                     f"{a['estimated']:.3f} [{a['lower']:.3f}, {a['upper']:.3f}] | {a['realized']:.3f} | "
                     f"{u['estimated']:.3f} [{u['lower']:.3f}, {u['upper']:.3f}] | {u['realized']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    rows = table()
    OUT.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    chunks = rows[1:]
    for m in METRICS:
        errors = [r[m]["estimated"] - r[m]["realized"] for r in chunks]
        inside = sum(r[m]["lower"] <= r[m]["realized"] <= r[m]["upper"] for r in chunks)
        print(f"{m}: mean |estimated - realized| {np.mean(np.abs(errors)):.3f}, mean error {np.mean(errors):+.3f}, "
              f"{inside} of {len(chunks)} chunks inside the band")


if __name__ == "__main__":
    main()
