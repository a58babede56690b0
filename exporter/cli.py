"""The ``exporter`` command: serve, demo, simulate, drift."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from exporter import __version__

CONFIG_ENV = "EXPORTER_CONFIG"
# Where a worker of ``serve --workers N`` leaves its start-up error for the parent to report and exit with.
STARTUP_ERROR_ENV = "EXPORTER_STARTUP_ERROR_FILE"
# uvicorn's multi-worker supervisor restarts a worker that exits with any other code, forever.
STARTUP_FAILURE = 3
# How long uvicorn waits for requests in flight after SIGTERM; the prediction log's flush comes after it.
GRACEFUL_SHUTDOWN_SECONDS = 30


def _resolve_config(config: str | None) -> Path:
    """The given config, or the demo's (trained into the data dir on first use)."""
    if config:
        return Path(config)
    from exporter.config import data_dir
    from exporter.demo import ensure_demo

    return ensure_demo(data_dir())


def app_factory() -> Any:
    """Entry point for uvicorn's workers (``factory=True``), reading the config path from ``EXPORTER_CONFIG``.

    A start-up error is left for the parent (``cmd_serve``) to print, and the worker exits with uvicorn's
    STARTUP_FAILURE, the one code on which the supervisor stops instead of restarting it."""
    from exporter.app import create_app
    from exporter.config import ConfigError, load_settings
    from exporter.startup import StartupError

    configure_logging()  # a spawned worker does not inherit the parent's: its INFO lines would be lost
    try:
        return create_app(load_settings(os.environ[CONFIG_ENV]))
    except (ConfigError, StartupError) as exc:
        marker = os.environ.get(STARTUP_ERROR_ENV)
        if marker:
            Path(marker).write_text(str(exc))
        else:
            print(f"exporter: error: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


def _fail(message: str) -> int:
    print(f"exporter: error: {message}", file=sys.stderr)
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from exporter.config import ConfigError, load_settings

    path = _resolve_config(args.config)
    try:
        settings = load_settings(path)  # before the app's imports (Evidently's take seconds): a typo fails at once
    except ConfigError as exc:
        return _fail(str(exc))
    import uvicorn

    from exporter.app import create_app
    from exporter.startup import StartupError

    if args.workers == 1:
        try:
            app = create_app(settings)
        except StartupError as exc:
            return _fail(str(exc))
        logging.getLogger("exporter").info("serving %s with config %s", settings.model.name, path)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
        return 0
    # One drift job for all workers (exporter.locks); counters summed over them through prometheus_client's
    # multiprocess files, in a directory that starts empty (exporter.shared_metrics).
    metrics_dir = _empty_metrics_dir()
    logging.getLogger("exporter").info("serving %s with config %s; --workers %d: counters summed over the "
                                       "workers in %s", settings.model.name, path, args.workers, metrics_dir)
    os.environ[CONFIG_ENV] = str(path.resolve())
    marker = Path(tempfile.mkdtemp(prefix="exporter-startup-")) / "error"
    os.environ[STARTUP_ERROR_ENV] = str(marker)
    try:
        uvicorn.run(
            "exporter.cli:app_factory", factory=True, host=args.host, port=args.port, workers=args.workers,
            log_level=args.log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        if marker.exists():  # a worker could not start: uvicorn stopped the others; its error is the answer
            return _fail(marker.read_text())
    finally:
        shutil.rmtree(marker.parent, ignore_errors=True)
        if metrics_dir.name.startswith(METRICS_DIR_PREFIX):
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


METRICS_DIR_PREFIX = "exporter-metrics-"


def _empty_metrics_dir() -> Path:
    """PROMETHEUS_MULTIPROC_DIR as set (emptied: counts of an earlier run must not be added) or a fresh one."""
    from exporter.shared_metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    else:
        folder = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX))
        os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import write_demo

    config = write_demo(Path(args.out))
    print(f"wrote {config.parent}/model.joblib, reference.csv and config.yaml")
    print(f"serve it with: exporter serve --config {config}")
    print(f"monitor-only (the model served elsewhere): exporter serve --config {config.parent / 'monitor.yaml'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from exporter.demo import Traffic

    try:
        traffic = Traffic(args.scenario, seed=args.seed)
    except ValueError as exc:
        return _fail(str(exc))
    url = args.url.rstrip("/")
    local = _local_model(args.model) if args.via == "log" else None
    sent = failed = labelled = 0
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    batch = max(1, args.batch_size)
    started = time.monotonic()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with httpx.Client(timeout=10.0, headers=_auth_headers(args.token)) as client, Progress(*columns) as progress:
        task = progress.add_task(f"{args.scenario} → {url}", total=args.rows)
        while sent + failed < args.rows:
            n = min(batch, args.rows - sent - failed)
            records, truth = traffic.records(n)
            try:
                if local is not None:
                    logged = _logged(local, records)
                    resp = client.post(f"{url}/log/batch", json={"records": logged})
                    answers = ([{"request_id": rid, "prediction": r["prediction"]} for rid, r in
                                zip(resp.json()["request_ids"], logged, strict=True)]
                               if resp.status_code == 202 else [])
                elif n == 1:
                    resp = client.post(f"{url}/predict", json=records[0])
                    answers = [resp.json()] if resp.status_code == 200 else []
                else:
                    resp = client.post(f"{url}/predict/batch", json={"records": records})
                    answers = resp.json()["predictions"] if resp.status_code == 200 else []
            except httpx.HTTPError as exc:
                progress.console.print(f"[red]request failed: {exc}")
                answers, resp = [], None
            if answers:
                sent += n
                if args.labels:
                    labelled += _send_labels(client, url, answers, truth, args.label_error_rate, traffic)
            else:
                failed += n
                if resp is not None:
                    progress.console.print(f"[red]HTTP {resp.status_code}: {resp.text[:200]}")
            progress.advance(task, n)
            # bounded rate: sleep until the schedule of rows sent so far
            ahead = started + (sent + failed) * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    print(f"sent {sent} rows, {failed} failed, {labelled} labelled")
    return 0 if failed == 0 else 1


def _local_model(path: str | None) -> Any:
    """The model a monitor-only service's traffic is predicted with, here: a joblib file, or the demo's own."""
    import joblib

    if path is not None:
        return joblib.load(path)
    from exporter.demo import build_pipeline, load_dataset, training_rows

    return build_pipeline().fit(*training_rows(load_dataset()))


def _logged(model: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """/log records: what the model served elsewhere answers for ``records``, probabilities included."""
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    out = [{"features": record, "prediction": prediction.item() if hasattr(prediction, "item") else prediction}
           for record, prediction in zip(records, model.predict(frame), strict=True)]
    if hasattr(model, "predict_proba"):  # a classifier: its probabilities give the estimated quality
        for row, proba in zip(out, model.predict_proba(frame), strict=True):
            row["probabilities"] = {str(c): float(p) for c, p in zip(model.classes_, proba, strict=True)}
    return out


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _send_labels(client: Any, url: str, answers: list[dict[str, Any]], truth: list[str], error_rate: float,
                 traffic: Any) -> int:
    classes = sorted(set(truth) | {a["prediction"] for a in answers})
    labels = []
    for answer, label in zip(answers, truth, strict=True):
        if traffic.rng.random() < error_rate:
            label = str(traffic.rng.choice([c for c in classes if c != label] or [label]))
        labels.append({"request_id": answer["request_id"], "label": label})
    resp = client.post(f"{url}/feedback/batch", json={"labels": labels})
    return len(labels) if resp.status_code == 202 else 0


def _print_segments(console: Any, result: Any, min_rows: int, full: bool) -> None:
    """drift.segments: one line in all, or (``--segments``) a table of every segment and what drifted in it."""
    from rich.table import Table

    judged = [s for s in result.segments if not s.too_small]
    drifted = [s for s in judged if s.drifted]
    console.print(f"segments: {len(drifted)} of {len(judged)} judged drifted, "
                  f"{len(result.segments) - len(judged)} too small (under {min_rows} rows)"
                  + ("" if full else "; --segments lists them"))
    if not full:
        return
    table = Table(title="Drift per segment (each against the reference rows of the same segment)")
    for col in ("segment by", "segment", "rows", "reference rows", "drifted features"):
        table.add_column(col, justify="right" if "rows" in col else "left")
    for seg in result.segments:
        if seg.too_small:
            verdict = "[yellow]too small"
        elif seg.drifted:
            verdict = "[red]" + ", ".join(
                f"{f.feature} ({f.stat_test_display} {f.score:.3g}, threshold {f.threshold:.3g})"
                for f in seg.features.values() if f.detected)
        else:
            verdict = "[green]none"
        table.add_row(seg.segment_by, seg.segment, str(seg.window_rows), str(seg.reference_rows), verdict)
    console.print(table)


def cmd_drift(args: argparse.Namespace) -> int:
    """Drift over the current window, computed now: nothing is stored, pruned or locked, so it is safe beside a
    running service (whose own latest run is at /drift)."""
    from rich.console import Console
    from rich.table import Table

    from exporter.config import ConfigError, load_settings
    from exporter.runners import InProcessRunner, JobError
    from exporter.startup import StartupError, build

    try:
        settings = load_settings(_resolve_config(args.config))
        parts = build(settings)
    except (ConfigError, StartupError) as exc:
        return _fail(str(exc))
    cfg = settings.drift
    try:
        logged = _has_predictions(settings.resolved_database_url)
    except Exception as exc:
        return _fail(f"database_url: cannot read the predictions table: {' '.join(str(exc).split())}")
    if not logged:
        print(f"window: 0 rows; drift skipped: no predictions logged yet in {settings.resolved_database_url}")
        return 0
    # One run in the foreground: no report, no reference check (it only warns, from the service's log).
    spec = dataclasses.replace(parts.job_spec(), report=False, reference_check=None)
    runner = InProcessRunner(spec)
    try:
        output = runner.run(math.inf)
    except JobError as exc:
        return _fail(f"drift failed: {exc}")
    finally:
        runner.close()
    result = output.drift
    console = Console(width=None if sys.stdout.isatty() else 160)
    if result.skipped_reason:
        console.print(f"window: {result.window_rows} rows; drift skipped: {result.skipped_reason}")
        return 0
    table = Table(title=f"Drift of the last {result.window_rows} predictions (window_size={cfg.window_size}), "
                        "computed now")
    importance = result.importance_method  # the features come most important first
    columns = ("feature", "type", "stat test", "score", "threshold", "drift", "missing", "unseen",
               *((f"importance ({importance})",) if importance else ()))
    for col in columns:
        table.add_column(col, justify="left" if col in ("feature", "type", "stat test", "drift") else "right",
                         no_wrap=col == "feature")
    for f in result.features.values():
        table.add_row(
            f.feature, f.feature_type, f.stat_test_display or "-",
            "-" if f.score is None else f"{f.score:.4g}", "-" if f.threshold is None else f"{f.threshold:.4g}",
            "[red]yes" if f.detected else ("[green]no" if f.detected is False else f"[yellow]{f.error}"),
            f"{f.missing_share:.1%}", f"{f.unseen_share:.1%}",
            *(("-" if f.importance is None else f"{f.importance:.3g}",) if importance else ()),
        )
    console.print(table)
    share = result.drift_share or 0.0
    console.print(
        f"dataset drift: {'[red]yes' if result.dataset_drift else '[green]no'}[/] "
        f"({result.drifted_features} of {len(result.evaluated)} features, {share:.0%}; threshold {cfg.drift_share:.0%})"
    )
    if result.prediction is not None:
        p = result.prediction
        console.print(f"prediction drift: {p.stat_test_display} {p.score:.4g} (threshold {p.threshold:.4g}) "
                      f"{'[red]drifted' if p.detected else '[green]stable'}")
    if result.multivariate is not None:
        mv = result.multivariate
        console.print(f"multivariate drift: {mv.method} {mv.score:.4g} (threshold {mv.threshold:.4g}, {mv.rows} rows) "
                      f"{'[red]drifted' if mv.detected else '[green]stable'}")
    if result.segments:
        _print_segments(console, result, settings.drift.segment_min_rows, args.segments)
    quality = output.quality
    if quality is not None and quality.metrics:
        shown = ", ".join(f"{k} {v:.4g} (reference {parts.quality_reference.get(k, float('nan')):.4g})"
                          for k, v in quality.metrics.items())
        console.print(f"model quality over {quality.rows} labelled predictions: {shown}")
    estimate = output.estimate
    if estimate is not None and estimate.metrics:
        shown = ", ".join(f"{k} {m.value:.4g} [{m.lower:.4g}, {m.upper:.4g}]" for k, m in estimate.metrics.items())
        console.print(f"estimated quality over {estimate.rows} predictions ({estimate.method}, 99% band): {shown}")
    return 0


def _has_predictions(url: str) -> bool:
    """Whether the predictions table exists, without creating an SQLite file that is not there."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from exporter.db import make_engine

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        return False
    engine = make_engine(url)
    try:
        return inspect(engine).has_table("predictions")
    finally:
        engine.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exporter", description="Serve a scikit-learn model and export its drift.")
    parser.add_argument("--version", action="version", version=f"exporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the prediction API with the drift job and /metrics")
    serve.add_argument("--config", help="config YAML (default: the bundled demo, set up in $EXPORTER_DATA_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="write the demo model, reference data and a commented config.yaml")
    demo.add_argument("--out", required=True, help="folder to write into")
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulate", help="send demo traffic to a running service")
    sim.add_argument("--url", default="http://127.0.0.1:8000")
    sim.add_argument("--rows", type=int, default=1000)
    sim.add_argument("--rate", type=float, default=50.0, help="rows per second at most (0: as fast as possible)")
    sim.add_argument("--scenario", default="none",
                     help="one of: none, shift, small-shift, categories, missing, correlation (fresh rows of the "
                          "training population, then changed; see docs/cli.md)")
    sim.add_argument("--batch-size", type=int, default=1, help="rows per request (above 1 uses /predict/batch)")
    sim.add_argument("--labels", action="store_true", help="also send the true labels to /feedback/batch")
    sim.add_argument("--label-error-rate", type=float, default=0.0, help="share of labels sent wrong on purpose")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--via", choices=["predict", "log"], default="predict",
                     help="predict: the service predicts (/predict); log: a local copy of the model predicts and the "
                          "predictions are logged to /log (a monitor-only service)")
    sim.add_argument("--model", help="with --via log: the joblib model that predicts (default: the demo model, "
                                     "trained here as `exporter demo` trains it)")
    sim.add_argument("--token", default=os.environ.get("EXPORTER_TOKEN"), help="bearer token, if the API needs one")
    sim.set_defaults(func=cmd_simulate)

    drift = sub.add_parser("drift", help="compute drift over the current window now and print it (stores nothing)")
    drift.add_argument("--config", help="config YAML (default: the bundled demo)")
    drift.add_argument("--segments", action="store_true", help="list every segment of drift.segments")
    drift.set_defaults(func=cmd_drift)
    return parser


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # no Evidently usage telemetry
    args = build_parser().parse_args(argv)
    configure_logging()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
