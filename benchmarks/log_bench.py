"""Monitor-only intake (section ``log_intake``): predictions of a model served elsewhere, sent to the exporter.

- ``/log/batch``: a monitor-only server (the demo's ``monitor.yaml``, SQLite) takes batches of 100 and of 1000
  records as the Python client (``exporter.client.PredictionLogger``) sends them: features, prediction,
  probabilities, a request id made by the sender and the time predicted. Rows per second accepted, and whether
  every accepted row reached the table.
- ``/log/cloudevents``: the same server takes KServe payload-logger CloudEvents in binary mode, V1 bodies, a
  request event and then its response event (same ce-id) on one connection, 5 instances per request. Each half
  waits in the ``pending_events`` table until its partner comes, so a pair costs database round trips that a batch
  does not.
- ``/predict`` under logging: a server with the demo model (``config.yaml``, SQLite), ``/predict`` measured alone,
  while one sender posts 500-record batches (the client's default ``batch_size``) to its ``/log/batch`` back to
  back, and while that sender is paced to ``PACED_ROWS_PER_S``; the order rotates per round, each ratio is taken
  against the round's run alone and its median over rounds reported.

Load comes from ``benchmarks.loadgen`` processes; every sent item gets fresh request ids (``--unique``), since the
server ignores a request id it has already logged. Before each run the server's prediction log has written every
row of the previous one, so no run inherits another's backlog.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ROOT, demo_config, median
from benchmarks.http_bench import Server, _bodies, servers
from tests.helpers import deep_update, parse_metrics, sample

TOKEN = "@" * 24  # replaced at each send by a value unique to it (benchmarks.loadgen --unique)
BATCH_SIZES = (100, 1000)
EVENT_INSTANCES = 5
LOGGER_BATCH = 500  # PredictionLogger's default batch_size
PACED_ROWS_PER_S = 1000  # the paced sender: about what this server's own /predict logs at 8 connections
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island", "sex"]


# -- prepared items ------------------------------------------------------------------------------------------------
def _answers(model: Any, records: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, float]]]:
    """What the model, served elsewhere, answers for ``records``."""
    import pandas as pd

    frame = pd.DataFrame.from_records(records, columns=FEATURES)
    classes = [str(c) for c in model.classes_]
    probabilities = [dict(zip(classes, map(float, row), strict=True)) for row in model.predict_proba(frame)]
    return [str(p) for p in model.predict(frame)], probabilities


def _batch_items(model: Any, size: int, count: int, seed: int) -> list[list[dict[str, Any]]]:
    """``count`` different /log/batch bodies of ``size`` records, as PredictionLogger builds them."""
    from exporter.demo import Traffic

    traffic = Traffic("none", seed=seed)
    stamp = datetime.now(UTC).isoformat()
    items = []
    for _ in range(count):
        records, _ = traffic.records(size)
        predictions, probabilities = _answers(model, records)
        batch = [{"features": r, "prediction": p, "request_id": f"{TOKEN}:{j}", "timestamp": stamp,
                  "probabilities": q}
                 for j, (r, p, q) in enumerate(zip(records, predictions, probabilities, strict=True))]
        items.append([{"path": "/log/batch", "headers": {},
                       "body": json.dumps({"records": batch}, separators=(",", ":"))}])
    return items


def _event_items(model: Any, count: int, seed: int) -> list[list[dict[str, Any]]]:
    """``count`` KServe V1 pairs (binary mode): the request event, then its response with the same ce-id."""
    from exporter.demo import Traffic

    traffic = Traffic("none", seed=seed)
    items = []
    for _ in range(count):
        # V1 instances are lists of numbers and strings: rows with a missing value would not be a KServe request
        records = [r for r in traffic.records(4 * EVENT_INSTANCES)[0] if all(r.get(f) is not None for f in FEATURES)]
        records = records[:EVENT_INSTANCES]
        predictions, _ = _answers(model, records)
        pair = []
        for kind, body in (("request", {"instances": [[r[f] for f in FEATURES] for r in records]}),
                           ("response", {"predictions": predictions})):
            headers = {"ce-specversion": "1.0", "ce-id": TOKEN, "ce-source": "http://localhost:9081/",
                       "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-component": "predictor",
                       "ce-endpoint": "default", "ce-inferenceservicename": "penguins", "ce-namespace": "models",
                       "ce-time": datetime.now(UTC).isoformat(), "content-type": "application/json"}
            pair.append({"path": "/log/cloudevents", "headers": headers,
                         "body": json.dumps(body, separators=(",", ":"))})
        items.append(pair)
    return items


def _write_items(path: Path, items: list[list[dict[str, Any]]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


# -- servers and load ----------------------------------------------------------------------------------------------
def _monitor_config(dest: Path) -> Path:
    """The demo's monitor-only config (no model; SQLite ``monitor.db``), no HTML report."""
    import yaml

    demo_config(dest)  # writes monitor.yaml and reference_logged.csv beside config.yaml
    path = dest / "monitor.yaml"
    data = yaml.safe_load(path.read_text())
    deep_update(data, {"drift": {"report": False}})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _loadgen_cmd(server: Server, items: Path, concurrency: int, warmup: float, duration: float, tag: str,
                 max_requests: int, tolerate: tuple[int, ...] = (), rate: float = 0.0) -> list[str]:
    return [sys.executable, "-m", "benchmarks.loadgen", "--port", str(server.port), "--items", str(items),
            "--concurrency", str(concurrency), "--warmup", str(warmup), "--duration", str(duration),
            "--max-requests", str(max_requests), "--expect", "202", "--tolerate", *map(str, tolerate),
            "--unique", TOKEN, "--run-tag", tag, "--rate", str(rate)]


def _result(out: str, stderr: str, returncode: int) -> dict[str, Any]:
    if returncode != 0:
        raise RuntimeError(f"load generator failed: {stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    if result["errors"]:
        raise RuntimeError(f"load generator saw {result['errors']} errors: {result['error_sample']}")
    return result


def _load(server: Server, items: Path, concurrency: int, warmup: float, duration: float, tag: str,
          max_requests: int) -> dict[str, Any]:
    out = subprocess.run(_loadgen_cmd(server, items, concurrency, warmup, duration, tag, max_requests),
                         capture_output=True, text=True, cwd=ROOT, timeout=warmup + duration + 60)
    return _result(out.stdout, out.stderr, out.returncode)


def _metrics(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text)


def _drained(server: Server, timeout: float = 120) -> tuple[float, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """Wait until the server's prediction log has written everything queued; the seconds waited, the metrics."""
    t0 = time.perf_counter()
    while True:
        m = _metrics(server)
        if sample(m, "model_prediction_log_queue_rows") == 0:
            return time.perf_counter() - t0, m
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"prediction log not drained within {timeout}s")
        time.sleep(0.05)


def _table_rows(db: Path, tags: str) -> int:
    """Rows of the predictions table whose request id holds a run tag starting with ``tags`` (loadgen's
    ``<tag>.<connection>.<counter>``, padded with ``_``: GLOB, since ``_`` is a LIKE wildcard)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM predictions WHERE request_id GLOB ?",
                                (f"*{tags}*",)).fetchone()[0])


# -- the section ---------------------------------------------------------------------------------------------------
def _intake(tmp: Path, config: Path, model: Any, quick: bool, log: Any) -> dict[str, Any]:
    """/log/batch (100, 1000 records) and /log/cloudevents on one monitor-only server, in rotating order."""
    rounds, warmup, duration = (1, 0.5, 2.0) if quick else (3, 1.0, 4.0)
    concurrency = 4  # a few replicas of the model's server posting at once
    files = {f"batch_{b}": _write_items(tmp / f"batch-{b}.jsonl", _batch_items(model, b, 8, seed=b))
             for b in BATCH_SIZES}
    files["events"] = _write_items(tmp / "events.jsonl", _event_items(model, 200, seed=7))
    rows_per_item = {**{f"batch_{b}": b for b in BATCH_SIZES}, "events": EVENT_INSTANCES}
    requests_per_item = {**{f"batch_{b}": 1 for b in BATCH_SIZES}, "events": 2}  # an event pair: two requests
    tag_of = {"batch_100": "Lh", "batch_1000": "Lk", "events": "Ce"}  # tags: no one a prefix of another
    server = Server(config, "on")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in files}
    sent: dict[str, int] = dict.fromkeys(files, 0)  # rows accepted (202), warm-up included
    with servers(server):
        for v, path in files.items():  # first requests (imports, caches, the tables) outside the measurement
            res = _load(server, path, concurrency, 0.0, 0.5, f"{tag_of[v]}w", 10_000)
            sent[v] += res["statuses"].get("202", 0) // requests_per_item[v] * rows_per_item[v]
        _drained(server)
        variants = list(files)
        for r in range(rounds):
            order = variants[r % 3:] + variants[:r % 3]
            for v in order:
                cpu0 = server.cpu_seconds()
                res = _load(server, files[v], concurrency, warmup, duration, f"{tag_of[v]}{r}", 200_000)
                backlog = sample(_metrics(server), "model_prediction_log_queue_rows") or 0.0
                drain_s, _ = _drained(server)
                rows = res["statuses"].get("202", 0) // requests_per_item[v] * rows_per_item[v]
                sent[v] += rows
                res.update(rows=rows, backlog_rows=backlog, drain_s=drain_s,
                           server_cpu_us_per_row=(server.cpu_seconds() - cpu0) * 1e6 / max(1, rows),
                           rows_per_s=res["throughput"] * rows_per_item[v])
                runs[v].append(res)
                log(f"log_intake round {r + 1}/{rounds} {v:>10}: {res['throughput']:.1f} items/s = "
                    f"{res['rows_per_s']:.0f} rows/s, p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
                    f"backlog at end {backlog:.0f} rows (drained in {drain_s:.2f} s), server CPU "
                    f"{res['server_cpu_us_per_row']:.0f} us/row")
        _, final = _drained(server)
        unparsable = sample(final, "model_log_events_total", outcome="unparsable")
    db = config.parent / "monitor.db"
    out: dict[str, Any] = {"log_intake_rounds": rounds, "log_intake_seconds_per_run": duration,
                           "log_intake_concurrency": concurrency,
                           "log_cloudevents_instances_per_event": EVENT_INSTANCES}
    for b in BATCH_SIZES:
        v = f"batch_{b}"
        out[f"log_batch_rows_per_s_{b}"] = median(r["rows_per_s"] for r in runs[v])
        out[f"log_batch_p99_ms_{b}"] = median(r["p99_ms"] for r in runs[v])
        out[f"log_batch_server_cpu_us_per_row_{b}"] = median(r["server_cpu_us_per_row"] for r in runs[v])
        out[f"log_batch_backlog_rows_at_end_{b}"] = max(r["backlog_rows"] for r in runs[v])
        out[f"log_batch_rows_accepted_{b}"] = sent[v]
        out[f"log_batch_rows_written_{b}"] = _table_rows(db, tag_of[v])
    out["log_batch_rows_written_share"] = (
        sum(out[f"log_batch_rows_written_{b}"] for b in BATCH_SIZES)
        / sum(out[f"log_batch_rows_accepted_{b}"] for b in BATCH_SIZES))
    ev = runs["events"]
    out["log_cloudevents_events_per_s"] = median(2 * r["throughput"] for r in ev)
    out["log_cloudevents_rows_per_s"] = median(r["rows_per_s"] for r in ev)
    out["log_cloudevents_pair_p99_ms"] = median(r["p99_ms"] for r in ev)
    out["log_cloudevents_server_cpu_us_per_row"] = median(r["server_cpu_us_per_row"] for r in ev)
    out["log_cloudevents_server_cpu_us_per_event"] = out["log_cloudevents_server_cpu_us_per_row"] * EVENT_INSTANCES / 2
    out["log_cloudevents_rows_accepted"] = sent["events"]
    out["log_cloudevents_rows_written"] = _table_rows(db, tag_of["events"])
    out["log_cloudevents_rows_written_share"] = out["log_cloudevents_rows_written"] / max(1, sent["events"])
    out["log_cloudevents_unparsable"] = unparsable
    with contextlib.closing(sqlite3.connect(db)) as conn:
        out["log_cloudevents_pending_left"] = int(conn.execute("SELECT count(*) FROM pending_events").fetchone()[0])
    out["log_written_total_metric"] = sample(final, "model_prediction_log_written_total")
    out["log_dropped_total_metric"] = sample(final, "model_prediction_log_dropped_total")
    return out


def _under_logging(tmp: Path, model: Any, quick: bool, log: Any, concurrency: int) -> dict[str, Any]:
    """/predict alone (``idle``), while a sender posts /log/batch back to back (``full``) and while it sends
    ``PACED_ROWS_PER_S`` (``paced``), to the same server; the order rotates per round."""
    rounds, warmup, duration = (2, 0.5, 2.0) if quick else (4, 1.0, 5.0)
    lead = 1.0  # the sender starts this long before the /predict run (its process start), and ends after it
    from benchmarks.http_bench import loadgen

    config = demo_config(tmp / "predict", database_url="sqlite:///predictions.db", drift={"report": False})
    bodies = _bodies(tmp)
    batches = _write_items(tmp / f"logger-{LOGGER_BATCH}.jsonl", _batch_items(model, LOGGER_BATCH, 8, seed=11))
    server = Server(config, "on")
    modes = ("idle", "full", "paced")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with servers(server):
        loadgen(server, bodies, concurrency, 0.0, 0.5)
        _load(server, batches, 1, 0.0, 0.5, "Pw", 10_000)
        _drained(server)
        for r in range(rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:
                sender = None
                sender_s = lead + warmup + duration + 1.0
                if mode != "idle":
                    # one connection, as PredictionLogger's one sender thread; 503 (queue full) is its backpressure
                    rate = PACED_ROWS_PER_S / LOGGER_BATCH if mode == "paced" else 0.0
                    sender = subprocess.Popen(
                        _loadgen_cmd(server, batches, 1, 0.0, sender_s, f"P{mode[0]}{r}",
                                     200_000, tolerate=(503,), rate=rate),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                    time.sleep(lead)
                res = loadgen(server, bodies, concurrency, warmup, duration)
                extra = ""
                if sender is not None:
                    stdout, stderr = sender.communicate(timeout=lead + warmup + duration + 60)
                    sent = _result(stdout, stderr, sender.returncode)
                    # over the sender's whole run: a paced sender's last send comes up to 1/rate before its end
                    res["logged_rows_per_s"] = sent["statuses"].get("202", 0) * LOGGER_BATCH / sender_s
                    res["logger_503"] = sent["statuses"].get("503", 0)
                    res["logger_p99_ms"] = sent["p99_ms"]
                    extra = f", sender {res['logged_rows_per_s']:.0f} rows/s ({sent['statuses']})"
                res["backlog_rows"] = sample(_metrics(server), "model_prediction_log_queue_rows") or 0.0
                res["drain_s"], _ = _drained(server)
                runs[mode].append(res)
                log(f"log_intake /predict round {r + 1}/{rounds} {mode:>5}: {res['throughput']:.0f} req/s "
                    f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, backlog {res['backlog_rows']:.0f} rows"
                    f"{extra}")
        _, final = _drained(server)

    def paired(mode: str, stat: str) -> float:
        return median(a[stat] / b[stat] for a, b in zip(runs[mode], runs["idle"], strict=True))

    out: dict[str, Any] = {"log_predict_rounds": rounds, "log_predict_seconds_per_run": duration,
                           "log_predict_logger_batch": LOGGER_BATCH, "log_predict_paced_target_rows_per_s":
                           PACED_ROWS_PER_S}
    for mode, suffix in (("full", "under_logging"), ("paced", "under_paced_logging")):
        out[f"log_predict_p99_ratio_{suffix}"] = paired(mode, "p99_ms")
        out[f"log_predict_p50_ratio_{suffix}"] = paired(mode, "p50_ms")
        out[f"log_predict_throughput_ratio_{suffix}"] = paired(mode, "throughput")
        out[f"log_predict_{mode}_logged_rows_per_s"] = median(r["logged_rows_per_s"] for r in runs[mode])
        out[f"log_predict_{mode}_logger_503"] = sum(r["logger_503"] for r in runs[mode])
        out[f"log_predict_{mode}_logger_p99_ms"] = median(r["logger_p99_ms"] for r in runs[mode])
    for mode, results in runs.items():
        for stat in ("p50_ms", "p99_ms", "throughput", "backlog_rows"):
            out[f"log_predict_{mode}_{stat}"] = median(r[stat] for r in results)
    out["log_predict_rows_dropped"] = sample(final, "model_prediction_log_dropped_total")
    return out


def run(quick: bool, log: Any, concurrency: int = 8) -> dict[str, Any]:
    import joblib

    with tempfile.TemporaryDirectory(prefix="bench-log-intake-") as tmp_name:
        tmp = Path(tmp_name)
        monitor = _monitor_config(tmp / "monitor")
        model = joblib.load(monitor.parent / "model.joblib")  # the served-elsewhere model's answers in the bodies
        out = _intake(tmp, monitor, model, quick, log)
        out.update(_under_logging(tmp, model, quick, log, concurrency))
    return out
