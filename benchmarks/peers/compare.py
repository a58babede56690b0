"""Our side of the side-by-side benchmark with NannyML 0.13.1, and the comparison (``make bench-peers``).

``python -m benchmarks.peers.compare --data DIR`` reads what benchmarks/peers/nannyml_side.py wrote into DIR (in
NannyML's own venv), runs the product's multivariate drift (``pca_reconstruction`` and ``classifier``) and its
label-free estimation (CBPE / DLE) on the same analysis chunks, prints the per-chunk tables and the pass/FAIL
targets, and writes benchmarks/peers.json. ``--markdown`` prints the tables of docs/peers.md instead of the plain
ones. A missed target is reported, not an error: the exit status is 0 unless something crashed.

Targets per data set. (a) Multivariate, for each of our methods against NannyML's best (the one that flags the most
drifted chunks, then the fewest undrifted ones): every chunk NannyML's flags we flag too, and our false flags (in
undrifted chunks) are no more than NannyML's. (b) Estimation, per metric: our mean absolute error against the
realized value is no more than NannyML's. Realized values come from scikit-learn on the chunk's labels, the same for
both sides (NannyML's own PerformanceCalculator values are checked against them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

OUT = Path(__file__).resolve().parent.parent / "peers.json"
TIE = 1e-9
DATA = Path(__file__).resolve().parent / ".data"
FALSE_ALERTS_PER_MONTH = 0.01  # the product's default false-alert budget ...
INTERVAL_SECONDS = 60.0  # ... at its default drift-job interval
# A chunk is drifted when some feature's distance to the reference is this many times the largest distance any
# reference chunk of the same size has (the reference's own chunk-to-chunk noise); see truth().
DRIFT_FACTOR = 3.0
CATEGORICAL_DTYPES = ("object", "string", "category", "bool")  # NannyML's rule (nannyml.base._column_is_categorical)


# --- the truth ----------------------------------------------------------------------------------------------------


def _distance(reference: pd.Series, chunk: pd.Series, categorical: bool) -> float:
    """Kolmogorov-Smirnov statistic (numbers) or total variation distance (categories), chunk against reference."""
    if categorical:
        ref = reference.astype(str).value_counts(normalize=True)
        got = chunk.astype(str).value_counts(normalize=True)
        return float(0.5 * ref.sub(got, fill_value=0).abs().sum())
    return float(stats.ks_2samp(reference.dropna(), chunk.dropna()).statistic)


def truth(reference: pd.DataFrame, chunks: list[pd.DataFrame], features: list[str], categorical: list[str],
          size: int) -> tuple[list[bool], list[dict[str, float]]]:
    """Which analysis chunks are drifted, read from the data: a chunk is drifted when some feature's distance to the
    reference exceeds DRIFT_FACTOR times the largest distance of any reference chunk of ``size`` rows. Returns the
    flags and, per chunk, each feature's distance over that noise level."""
    noise = {}
    ref_chunks = [reference.iloc[i:i + size] for i in range(0, len(reference) - size + 1, size)]
    for name in features:
        noise[name] = max(_distance(reference[name], c[name], name in categorical) for c in ref_chunks)
    ratios = [{name: _distance(reference[name], c[name], name in categorical) / max(noise[name], 1e-12)
               for name in features} for c in chunks]
    return [max(r.values()) > DRIFT_FACTOR for r in ratios], ratios


# --- realized metrics (the same for both sides) -------------------------------------------------------------------


def realized(task: str, chunk: pd.DataFrame, target: str, classes: list[str],
             proba: dict[str, str]) -> dict[str, float]:
    y = chunk[target]
    if task == "regression":
        err = skm.mean_squared_error(y, chunk["y_pred"])
        return {"mae": float(skm.mean_absolute_error(y, chunk["y_pred"])), "rmse": float(math.sqrt(err))}
    out = {"accuracy": float(skm.accuracy_score(y.astype(str), chunk["y_pred"].astype(str)))}
    if len(classes) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y.astype(str) == classes[1], chunk[proba[classes[1]]]))
    else:
        scores = chunk[[proba[c] for c in classes]].to_numpy()
        out["roc_auc"] = float(skm.roc_auc_score(y.astype(str), scores, multi_class="ovr", average="macro",
                                                 labels=classes))
    return out


# --- our side -----------------------------------------------------------------------------------------------------


def split_features(frame: pd.DataFrame, features: list[str]) -> tuple[list[str], list[str]]:
    """(numerical, categorical) by dtype, as NannyML splits them."""
    categorical = [f for f in features if str(frame[f].dtype) in CATEGORICAL_DTYPES]
    return [f for f in features if f not in categorical], categorical


def probability_dicts(frame: pd.DataFrame, classes: list[str], proba: dict[str, str]) -> list[dict[str, float]]:
    """Each row's probabilities keyed by class text, as /predict answers them (binary: P(1) given, P(0) = 1 - P(1))."""
    if len(classes) == 2 and classes[0] not in proba:
        p1 = frame[proba[classes[1]]].to_numpy(dtype=float)
        return [{classes[0]: 1.0 - p, classes[1]: p} for p in p1.tolist()]
    matrix = frame[[proba[c] for c in classes]].to_numpy(dtype=float)
    return [dict(zip(classes, row, strict=True)) for row in matrix.tolist()]


def ours(name: str, info: dict[str, Any], reference: pd.DataFrame, chunks: list[pd.DataFrame],
         numerical: list[str], categorical: list[str]) -> dict[str, Any]:
    """Our multivariate flags and estimates on each chunk, with the time each part took."""
    from exporter import multivariate
    from exporter.calibration import per_run_alpha
    from exporter.config import ReferenceSection
    from exporter.drift import normalise
    from exporter.estimation import LABEL, PROBABILITIES, estimate_window, setup_from_reference

    alpha = per_run_alpha(FALSE_ALERTS_PER_MONTH, INTERVAL_SECONDS)
    features = numerical + categorical
    seconds: dict[str, float] = {}
    out: dict[str, Any] = {"alpha": alpha, "chunks": [{} for _ in chunks]}
    ref_features = normalise(reference[features], numerical, categorical)
    for method in multivariate.METHODS:
        started = time.perf_counter()
        model = multivariate.fit_multivariate(ref_features, numerical, categorical, method)
        if model is None:
            raise RuntimeError(f"{name}: the {method} model could not be fitted")
        for item, chunk in zip(out["chunks"], chunks, strict=True):
            result = model.score(normalise(chunk[features], numerical, categorical), alpha)
            item[method] = {"value": result.score, "threshold": result.threshold, "alert": result.detected}
        seconds[method] = time.perf_counter() - started

    started = time.perf_counter()
    task, target = info["task"], info["target"]
    classes = sorted(info["probabilities"]) if task == "classification" else []
    if task == "classification" and len(classes) == 1:  # binary: P(1) only
        classes = sorted({str(v) for v in reference[target].unique()})
    adapts = ReferenceSection(path=Path("reference.csv")).adapts(task)  # the product's default (auto)

    def make_setup(shift_adaptation: bool) -> Any:
        setup = setup_from_reference(
            task, classes, reference.assign(**{target: reference[target].astype(str)}) if classes else reference,
            target, reference["y_pred"].astype(str) if classes else reference["y_pred"],
            probability_dicts(reference, classes, info["probabilities"]) if classes else None, numerical,
            categorical, shift_adaptation)
        if setup is None:
            raise RuntimeError(f"{name}: no estimation setup")
        return setup

    setup = make_setup(adapts)
    other = make_setup(not adapts)
    for item, chunk in zip(out["chunks"], chunks, strict=True):
        window = chunk[features].copy()
        window["prediction"] = chunk["y_pred"].astype(str).to_numpy() if classes else chunk["y_pred"].to_numpy()
        if classes:
            window[PROBABILITIES] = probability_dicts(chunk, classes, info["probabilities"])
        window[LABEL] = chunk[target].astype(str).to_numpy() if classes else chunk[target].to_numpy()
        result = estimate_window(setup, window.reset_index(drop=True))
        if result is None:
            raise RuntimeError(f"{name}: no estimate")
        item["estimate"] = {m: {"value": e.value, "lower": e.lower, "upper": e.upper}
                            for m, e in result.metrics.items() if m in info["metrics"]}
        diagnosis = time.perf_counter()
        alternative = estimate_window(other, window.reset_index(drop=True))
        assert alternative is not None
        item["other"] = {m: alternative.metrics[m].value for m in info["metrics"]}
        started += time.perf_counter() - diagnosis  # the diagnosis is not the product's cost
        item["adapted"] = result.adapted
        item["shift_auc"] = result.shift_auc
    seconds["estimation"] = time.perf_counter() - started
    seconds["total"] = sum(seconds.values())
    out["seconds"] = seconds
    out["classes"] = classes
    out["shift_adaptation"] = adapts
    return out


# --- comparison ---------------------------------------------------------------------------------------------------


def flags_summary(flags: list[bool], drifted: list[bool]) -> dict[str, Any]:
    return {
        "flagged": [i for i, f in enumerate(flags) if f],
        "detected": sum(f and d for f, d in zip(flags, drifted, strict=True)),
        "false": sum(f and not d for f, d in zip(flags, drifted, strict=True)),
    }


def compare_dataset(name: str, info: dict[str, Any], data: Path) -> dict[str, Any]:
    reference = pd.read_parquet(data / f"{name}_reference.parquet")
    analysis = pd.read_parquet(data / f"{name}_analysis.parquet")
    features = info["features"]
    numerical, categorical = split_features(reference, features)
    if sorted(categorical) != sorted(info["nannyml_categorical"]):
        raise RuntimeError(f"{name}: categorical {categorical} but NannyML's {info['nannyml_categorical']}")
    nml_chunks = info["chunks"]
    chunks = [analysis.iloc[c["start"]:c["end"] + 1] for c in nml_chunks]
    size = nml_chunks[0]["end"] - nml_chunks[0]["start"] + 1
    drifted, ratios = truth(reference, chunks, features, categorical, size)
    mine = ours(name, info, reference, chunks, numerical, categorical)
    classes = mine["classes"]
    proba = info["probabilities"]
    rows = []
    nml_realized_gap = 0.0
    for i, (chunk, nml, me) in enumerate(zip(chunks, nml_chunks, mine["chunks"], strict=True)):
        real = realized(info["task"], chunk, info["target"], classes, proba)
        for m, v in nml["realized"].items():
            if v is not None:
                nml_realized_gap = max(nml_realized_gap, abs(v - real[m]))
        shifted = sorted((r, f) for f, r in ratios[i].items() if r > DRIFT_FACTOR)
        row: dict[str, Any] = {
            "index": nml["index"], "start": nml["start"], "end": nml["end"], "drifted": drifted[i],
            "drifted_features": [f for _, f in reversed(shifted)],
            "drift_ratio": max(ratios[i].values()),  # the largest feature distance over the reference chunks' noise
            "nannyml": {"pca": nml["pca"], "domain_classifier": nml["domain_classifier"]},
            "ours": {m: me[m] for m in ("pca_reconstruction", "classifier")},
            "adapted": me["adapted"], "shift_auc": me["shift_auc"], "metrics": {},
        }
        for m in info["metrics"]:
            theirs, own = nml["estimate"][m], me["estimate"][m]
            row["metrics"][m] = {
                "realized": real[m],
                "nannyml": theirs["value"], "nannyml_lower": theirs["lower"], "nannyml_upper": theirs["upper"],
                "ours": own["value"], "ours_lower": own["lower"], "ours_upper": own["upper"],
                "nannyml_error": abs(theirs["value"] - real[m]), "ours_error": abs(own["value"] - real[m]),
                "ours_other": me["other"][m], "ours_other_error": abs(me["other"][m] - real[m]),
                "nannyml_covers": theirs["lower"] <= real[m] <= theirs["upper"],
                "ours_covers": own["lower"] <= real[m] <= own["upper"],
            }
        rows.append(row)

    nml_methods = {m: flags_summary([r["nannyml"][m]["alert"] for r in rows], drifted)
                   for m in ("pca", "domain_classifier")}
    our_methods = {m: flags_summary([r["ours"][m]["alert"] for r in rows], drifted)
                   for m in ("pca_reconstruction", "classifier")}
    def rank(m: str) -> tuple[int, int]:
        return nml_methods[m]["detected"], -nml_methods[m]["false"]

    best = max(nml_methods, key=rank)
    best_name = "/".join(m for m in nml_methods if rank(m) == rank(best))  # a tie names both
    targets = []
    for method, summary in our_methods.items():
        missed = sorted(set(nml_methods[best]["flagged"]) - set(summary["flagged"]))
        targets.append({
            "kind": "multivariate", "name": f"{method} vs nannyml {best_name}",
            "measured": f"flags {summary['detected']}/{sum(drifted)} drifted, {summary['false']} false",
            "target": f"every chunk nannyml flags ({nml_methods[best]['detected']} drifted, "
                      f"{nml_methods[best]['false']} false), false <= {nml_methods[best]['false']}",
            "missed_chunks": missed, "pass": not missed and summary["false"] <= nml_methods[best]["false"],
        })
    errors = {}
    for m in info["metrics"]:
        theirs = float(np.mean([r["metrics"][m]["nannyml_error"] for r in rows]))
        own = float(np.mean([r["metrics"][m]["ours_error"] for r in rows]))
        errors[m] = {"nannyml": theirs, "ours": own,
                     "ours_other": float(np.mean([r["metrics"][m]["ours_other_error"] for r in rows])),
                     "nannyml_coverage": sum(r["metrics"][m]["nannyml_covers"] for r in rows) / len(rows),
                     "ours_coverage": sum(r["metrics"][m]["ours_covers"] for r in rows) / len(rows)}
        targets.append({"kind": "estimation", "name": f"{m} mean abs error",
                        "measured": f"{own:.4g}", "target": f"<= nannyml's {theirs:.4g}",
                        # the same estimate reached by other floating-point paths is a tie, not a miss
                        "pass": own <= theirs + TIE})
    return {
        "task": info["task"], "estimator": info["estimator"], "features": features, "numerical": numerical,
        "categorical": categorical, "reference_rows": len(reference), "analysis_rows": len(analysis),
        "drifted_chunks": [i for i, d in enumerate(drifted) if d], "alpha": mine["alpha"],
        "shift_adaptation": mine["shift_adaptation"],
        "nannyml_methods": nml_methods, "nannyml_best": best_name, "our_methods": our_methods, "errors": errors,
        "realized_check": {"source": info["realized_source"], "max_abs_gap_to_sklearn": nml_realized_gap},
        "seconds": {"nannyml": info["seconds"], "ours": mine["seconds"]}, "targets": targets, "chunks": rows,
    }


# --- output -------------------------------------------------------------------------------------------------------


def _fmt(value: float, metric: str) -> str:
    return f"{value:.1f}" if metric in ("mae", "rmse", "mse") else f"{value:.4f}"


def _flag(d: dict[str, Any]) -> str:
    return ("**yes**" if d["alert"] else "no") + f" ({d['value']:.3f})"


def tables(name: str, result: dict[str, Any], markdown: bool) -> list[str]:
    """The target table and the per-chunk tables of one data set, as markdown or plain text."""
    other = "off" if result["shift_adaptation"] else "on"  # the diagnostic column: the other choice
    lines: list[str] = []

    def table(header: list[str], body: list[list[str]]) -> None:
        if markdown:
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines.extend("| " + " | ".join(row) + " |" for row in body)
        else:
            widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
            for row in [header, *body]:
                lines.append("  ".join(str(x).replace("**", "").ljust(w) for x, w in zip(row, widths, strict=True)))
        lines.append("")

    lines.append(f"### {name}" if markdown else f"== {name} ({result['task']}, {result['estimator']}) ==")
    lines.append("")
    table(["target", "measured", "goal", "result"],
          [[t["name"], t["measured"], t["target"], "pass" if t["pass"] else "**FAIL**"] for t in result["targets"]])
    table(["chunk", "rows", "drifted", "NannyML PCA", "NannyML domain classifier", "our PCA", "our classifier"],
          [[str(r["index"]), f"{r['start']}-{r['end']}",
            (f"**yes** ({r['drift_ratio']:.1f}x): " + ", ".join(r["drifted_features"][:3])) if r["drifted"]
            else f"no ({r['drift_ratio']:.1f}x)",
            _flag(r["nannyml"]["pca"]), _flag(r["nannyml"]["domain_classifier"]),
            _flag(r["ours"]["pca_reconstruction"]), _flag(r["ours"]["classifier"])] for r in result["chunks"]])
    for m in result["errors"]:
        table(["chunk", f"realized {m}", "NannyML (band)", "ours (band)", "NannyML error", "our error",
               f"ours, shift adaptation {other} (error)"],
              [[str(r["index"]), _fmt(c["realized"], m),
                f"{_fmt(c['nannyml'], m)} ({_fmt(c['nannyml_lower'], m)}-{_fmt(c['nannyml_upper'], m)})",
                f"{_fmt(c['ours'], m)} ({_fmt(c['ours_lower'], m)}-{_fmt(c['ours_upper'], m)})"
                + (" w" if r["adapted"] else ""),
                _fmt(c["nannyml_error"], m), _fmt(c["ours_error"], m),
                f"{_fmt(c['ours_other'], m)} ({_fmt(c['ours_other_error'], m)})"]
               for r in result["chunks"] for c in [r["metrics"][m]]])
        e = result["errors"][m]
        lines.append(f"Mean abs error of {m}: NannyML {_fmt(e['nannyml'], m)}, ours {_fmt(e['ours'], m)} (shift "
                     f"adaptation {other}: {_fmt(e['ours_other'], m)}); realized inside the band: NannyML "
                     f"{e['nannyml_coverage']:.0%}, ours {e['ours_coverage']:.0%} of chunks.")
        lines.append("")
    return lines


def summary_table(results: dict[str, dict[str, Any]], markdown: bool) -> list[str]:
    header = ["data set", "target", "measured", "goal", "result"]
    body = [[name, t["name"], t["measured"], t["target"], "pass" if t["pass"] else "**FAIL**"]
            for name, r in results.items() for t in r["targets"]]
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
                *("| " + " | ".join(row) + " |" for row in body), ""]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    return ["  ".join(x.replace("**", "").ljust(w) for x, w in zip(row, widths, strict=True))
            for row in [header, *body]] + [""]


def timing_table(results: dict[str, dict[str, Any]], markdown: bool) -> list[str]:
    """Seconds per method and data set, each side (fit on the reference and every analysis chunk)."""
    header = ["data set", "NannyML PCA", "NannyML domain classifier", "NannyML CBPE/DLE", "our PCA", "our classifier",
              "our estimation"]
    body = []
    for name, r in results.items():
        theirs, own = r["seconds"]["nannyml"], r["seconds"]["ours"]
        body.append([name] + [f"{theirs[k]:.1f}" for k in ("pca", "domain_classifier", "estimation")]
                    + [f"{own[k]:.1f}" for k in ("pca_reconstruction", "classifier", "estimation")])
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
                *("| " + " | ".join(row) + " |" for row in body), ""]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    return ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in [header, *body]] + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="what nannyml_side.py wrote (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the result (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown (docs/peers.md)")
    parser.add_argument("--from-json", action="store_true",
                        help="print the tables of an existing --out file, computing nothing")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.from_json:
        doc = json.loads(args.out.read_text())
    else:
        from benchmarks.common import machine_info

        nml = json.loads((args.data / "nannyml.json").read_text())
        started = time.perf_counter()
        results = {name: compare_dataset(name, info, args.data) for name, info in nml["datasets"].items()}
        doc = {
            "nannyml": nml["nannyml"], "nannyml_packages": nml["packages"], "chunk_size": nml["chunk_size"],
            "false_alerts_per_month": FALSE_ALERTS_PER_MONTH, "interval_seconds": INTERVAL_SECONDS,
            "drift_factor": DRIFT_FACTOR, "machine": machine_info(),
            "seconds": {"nannyml": nml["seconds"], "ours": time.perf_counter() - started},
            "targets_met": sum(t["pass"] for r in results.values() for t in r["targets"]),
            "targets_checked": sum(len(r["targets"]) for r in results.values()),
            "datasets": results,
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    # Markdown (docs/peers.md) has each data set's own target table; the console gets them all first, then the detail.
    lines = [] if args.markdown else summary_table(doc["datasets"], args.markdown)
    for name, result in doc["datasets"].items():
        lines += tables(name, result, args.markdown)
    lines += timing_table(doc["datasets"], args.markdown)
    lines.append(f"targets met: {doc['targets_met']}/{doc['targets_checked']}; seconds: NannyML "
                 f"{doc['seconds']['nannyml']:.0f}, ours {doc['seconds']['ours']:.0f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
