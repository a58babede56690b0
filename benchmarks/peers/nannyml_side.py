"""NannyML 0.13.1's side of the side-by-side benchmark; runs in .venv-peers/nannyml and imports nothing of ours.

``python benchmarks/peers/nannyml_side.py OUT_DIR`` loads the three labelled synthetic data sets that NannyML ships
in its wheel (binary, multiclass, car price), writes each one's reference and analysis rows (targets joined) as
Parquet, and runs NannyML on them in chunks of 5000 rows, as its docs do: the PCA data reconstruction drift and the
domain classifier (multivariate drift, defaults), CBPE (classification) or DLE (regression), and the
PerformanceCalculator for the realized metrics. Per chunk it writes each method's value, thresholds and alert, each
estimate with its confidence band, and the realized value to OUT_DIR/nannyml.json.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

# Set before NannyML (and LightGBM's OpenMP runtime) load. No usage statistics are sent. Passive waiting: LightGBM's
# threads spin while they wait, and on a busy 2-core machine that made one default domain-classifier fit take 17-28 s
# instead of 0.25 s (same model, same results; measured).
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CHUNK_SIZE = 5000
ID = "id"
NON_FEATURES = {"id", "timestamp", "period", "y_pred", "y_true", "work_home_actual"}

DATASETS: dict[str, dict[str, Any]] = {
    "binary": {"loader": "load_synthetic_binary_classification_dataset", "task": "classification",
               "problem_type": "classification_binary", "target": "work_home_actual",
               "metrics": ["accuracy", "roc_auc"]},
    "multiclass": {"loader": "load_synthetic_multiclass_classification_dataset", "task": "classification",
                   "problem_type": "classification_multiclass", "target": "y_true", "metrics": ["accuracy", "roc_auc"]},
    "car_price": {"loader": "load_synthetic_car_price_dataset", "task": "regression", "problem_type": "regression",
                  "target": "y_true", "metrics": ["mae", "rmse"]},
}


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None (JSON null)


def _rows(result: Any, key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The analysis chunks of a NannyML result: its chunk columns and ``fields`` of metric ``key``."""
    frame = result.filter(period="analysis").to_df()
    out = []
    for _, row in frame.iterrows():
        item: dict[str, Any] = {
            "index": int(row[("chunk", "chunk_index")]),
            "start": int(row[("chunk", "start_index")]),
            "end": int(row[("chunk", "end_index")]),
        }
        for name in fields:
            value = row.get((key, name))
            item[name] = bool(value) if name == "alert" else _float(value)
        out.append(item)
    return out


def probability_columns(reference: Any, task: str, problem_type: str) -> dict[str, str]:
    """Class (as text) -> its probability column. Binary sets carry P(class 1) only."""
    if problem_type == "classification_binary":
        return {"1": "y_pred_proba"}
    if task != "classification":
        return {}
    prefix = "y_pred_proba_"
    return {c[len(prefix):]: c for c in reference.columns if c.startswith(prefix)}


def run_dataset(name: str, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    import nannyml as nml

    started = time.perf_counter()
    reference, analysis, targets = getattr(nml, spec["loader"])()
    analysis = analysis.merge(targets, on=ID, how="left", validate="one_to_one")
    target = spec["target"]
    features = [c for c in reference.columns if c not in NON_FEATURES and not c.startswith("y_pred_proba")]
    proba = probability_columns(reference, spec["task"], spec["problem_type"])
    reference.to_parquet(out_dir / f"{name}_reference.parquet", index=False)
    analysis.to_parquet(out_dir / f"{name}_analysis.parquet", index=False)
    unlabelled = analysis.drop(columns=[target])  # the estimators never see the analysis targets
    seconds: dict[str, float] = {"load": time.perf_counter() - started}

    def timed(key: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        seconds[key] = time.perf_counter() - t0
        return out

    reconstruction = timed("pca", lambda: nml.DataReconstructionDriftCalculator(
        column_names=features, chunk_size=CHUNK_SIZE).fit(reference).calculate(unlabelled))
    domain = timed("domain_classifier", lambda: nml.DomainClassifierCalculator(
        feature_column_names=features, chunk_size=CHUNK_SIZE).fit(reference).calculate(unlabelled))
    drift_fields = ("value", "upper_threshold", "lower_threshold", "alert")
    chunks = _rows(reconstruction, "reconstruction_error", drift_fields)
    for chunk, dc in zip(chunks, _rows(domain, "domain_classifier_auroc", drift_fields), strict=True):
        chunk["pca"] = {k: chunk.pop(k) for k in drift_fields}
        chunk["domain_classifier"] = {k: dc[k] for k in drift_fields}

    metrics = spec["metrics"]
    if spec["task"] == "classification":
        y_pred_proba: Any = proba["1"] if spec["problem_type"] == "classification_binary" else proba
        estimator = nml.CBPE(y_pred_proba=y_pred_proba, y_pred="y_pred", y_true=target,
                             problem_type=spec["problem_type"], metrics=metrics, chunk_size=CHUNK_SIZE)
        realized_calc = nml.PerformanceCalculator(y_pred_proba=y_pred_proba, y_pred="y_pred", y_true=target,
                                                  problem_type=spec["problem_type"], metrics=metrics,
                                                  chunk_size=CHUNK_SIZE)
        method = "cbpe"
    else:
        estimator = nml.DLE(feature_column_names=features, y_pred="y_pred", y_true=target, metrics=metrics,
                            chunk_size=CHUNK_SIZE)
        realized_calc = nml.PerformanceCalculator(y_pred="y_pred", y_true=target, problem_type="regression",
                                                  metrics=metrics, chunk_size=CHUNK_SIZE)
        method = "dle"
    estimated = timed("estimation", lambda: estimator.fit(reference).estimate(unlabelled))
    realized = realized_calc.fit(reference).calculate(analysis)
    for metric in metrics:
        bands = _rows(estimated, metric, ("value", "lower_confidence_boundary", "upper_confidence_boundary",
                                          "sampling_error", "alert"))
        for chunk, band, real in zip(chunks, bands, _rows(realized, metric, ("value",)), strict=True):
            assert (chunk["start"], chunk["end"]) == (band["start"], band["end"]) == (real["start"], real["end"])
            chunk.setdefault("estimate", {})[metric] = {
                "value": band["value"], "lower": band["lower_confidence_boundary"],
                "upper": band["upper_confidence_boundary"], "sampling_error": band["sampling_error"],
                "alert": band["alert"]}
            chunk.setdefault("realized", {})[metric] = real["value"]
    seconds["total"] = time.perf_counter() - started
    numerical = domain_numerical(features, reference)
    return {
        "task": spec["task"], "problem_type": spec["problem_type"], "target": target, "prediction": "y_pred",
        "probabilities": proba, "features": features,
        "nannyml_numerical": numerical, "nannyml_categorical": [f for f in features if f not in numerical],
        "estimator": method, "metrics": metrics, "reference_rows": len(reference), "analysis_rows": len(analysis),
        "realized_source": "nannyml.PerformanceCalculator", "seconds": seconds, "chunks": chunks,
    }


def domain_numerical(features: list[str], reference: Any) -> list[str]:
    """The features NannyML treats as continuous (its own dtype rule: object, string, category, bool are not)."""
    from nannyml.base import _split_features_by_type

    continuous, _ = _split_features_by_type(reference, features)
    return [f for f in features if f in continuous]


def main(argv: list[str]) -> int:
    import lightgbm
    import nannyml

    if len(argv) != 1:
        print("usage: nannyml_side.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")  # NannyML and LightGBM deprecation chatter; the results are what counts
    quiet = logging.getLogger("lightgbm")  # its per-fit [Info] lines (hundreds per data set) to a silent logger
    quiet.setLevel(logging.WARNING)
    lightgbm.register_logger(quiet)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "nannyml": nannyml.__version__, "python": platform.python_version(), "chunk_size": CHUNK_SIZE,
        "packages": {p: metadata.version(p) for p in ("pandas", "numpy", "scikit-learn", "lightgbm", "scipy")},
        "datasets": {},
    }
    for name, spec in DATASETS.items():
        doc["datasets"][name] = run_dataset(name, spec, out_dir)
        print(f"nannyml {name}: {doc['datasets'][name]['seconds']['total']:.1f} s", flush=True)
    doc["seconds"] = time.perf_counter() - started
    (out_dir / "nannyml.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
