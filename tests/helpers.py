"""Shared test helpers: demo config folders, a real uvicorn server in a subprocess, free ports."""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent

# One valid /predict record of the demo model.
GOOD = {
    "bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181,
    "body_mass_g": 3750, "island": "Torgersen", "sex": "male",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def config_folder(demo_dir: Path, dest: Path, config_name: str = "config.yaml", **changes: Any) -> Path:
    """A copy of the demo folder with ``changes`` merged into its ``config_name`` (the served model's config.yaml,
    or monitor.yaml, monitor-only); returns the config path."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.joblib", "reference.csv", "reference_logged.csv"):
        shutil.copy(demo_dir / name, dest / name)
    config = yaml.safe_load((demo_dir / config_name).read_text())
    deep_update(config, changes)
    path = dest / config_name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str) -> float | None:
    return metrics.get((metric, frozenset(labels.items())))


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class LiveServer:
    """``exporter serve`` as a user runs it: a real uvicorn process on a free loopback port."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DO_NOT_TRACK": "1", **(env or {})}
        self.workers = workers
        self.log_path = config.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60, retries: int = 2) -> LiveServer:
        """Start (or, once stopped, start again on the same port: its log goes on in the same file)."""
        self._log = self.log_path.open("ab" if self.proc is not None else "wb")
        started_before = self.log().count(f"127.0.0.1:{self.port}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(self.config), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.config.parent,
        )
        try:
            wait_http(f"{self.url}/healthz", self.proc, timeout, "exporter serve", self.log)
            # Another test's server may have taken the same free port first and answered: only this process's
            # own "running on" line says the answer was its own.
            wait_until(lambda: self.log().count(f"127.0.0.1:{self.port}") > started_before
                       or self.proc.poll() is not None, timeout,
                       what="this server's own start", details=self.log)
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        except RuntimeError:
            self.stop()
            if "address already in use" in self.log().lower() and retries > 0:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
                return self.start(timeout, retries - 1)
            raise
        return self

    def stop(self, timeout: float = 45) -> int | None:
        if self.proc is None:
            return None
        terminate(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def wait_for(self, predicate: Any, timeout: float = 60, interval: float = 0.5) -> Any:
        """Poll /metrics until ``predicate(metrics)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.metrics()
            value = predicate(last)
            if value:
                return value
            time.sleep(interval)
        shown = {f"{n}{dict(labels) or ''}": v for (n, labels), v in (last or {}).items() if n.startswith("model_")}
        raise AssertionError(f"condition not met within {timeout}s; last model_* metrics: {shown}")


@contextlib.contextmanager
def live_server(config: Path, env: dict[str, str] | None = None, workers: int = 1) -> Iterator[LiveServer]:
    server = LiveServer(config, env, workers).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition",
               details: Callable[[], str] | None = None, interval: float = 0.25) -> Any:
    """Poll ``predicate()`` until it is truthy (returning its value), failing after ``timeout`` seconds with
    ``what`` and, if given, ``details()`` (the logs of the processes involved)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s" + (f"\n{details()}" if details else ""))
        time.sleep(interval)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, name: str,
              log: Callable[[], str] = lambda: "") -> None:
    """Poll ``url`` until it answers 200: the one readiness loop of every server a test or benchmark starts. Fails
    at once when ``proc`` exits, and after ``timeout`` seconds, with the end of ``log()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer {url} within {timeout}s:\n{log()[-4000:]}")

def flush(client: Any) -> None:
    """Wait until an in-process app's prediction log has written every queued row."""
    log = client.app.state.prediction_log
    wait_until(lambda: log.queued == 0, 10, interval=0.02, what="the prediction log to drain")


def table_rows(client: Any) -> int:
    return int(client.app.state.prediction_log.store.count())


def stored_rows(client: Any) -> dict[str, dict[str, Any]]:
    """request_id -> the stored row, read from the table itself once an in-process app (a TestClient or an
    InProcessServer) has written every queued row."""
    from sqlalchemy import create_engine, select

    from exporter.db import predictions_table

    flush(client)
    engine = create_engine(client.app.state.db.url)
    try:
        with engine.connect() as conn:
            return {r.request_id: r._asdict() for r in conn.execute(select(predictions_table))}
    finally:
        engine.dispose()


# Settings for a test about the request path, types or the log: no drift job to wait for, no HTML report, no
# refits of the model for the reference rule. Merge into config_folder's changes (deep_update).
NO_JOB: dict[str, Any] = {
    "drift": {"interval_seconds": 3600, "report": False, "isolation": "thread"},
    "reference": {"check_held_out": False},
}


def quiet(**changes: Any) -> dict[str, Any]:
    """``changes`` over NO_JOB, for config_folder(demo_dir, dest, **quiet(...))."""
    return deep_update(copy.deepcopy(NO_JOB), changes)


@contextlib.contextmanager
def app_client(config: Path, start_scheduler: bool = False, **overrides: Any) -> Iterator[Any]:
    """The app of ``config`` in process (a TestClient runs its lifespan: writer thread, real database). Without
    the scheduler, a test runs the drift job itself: ``client.app.state.job.tick()``."""
    from fastapi.testclient import TestClient

    from exporter.app import create_app
    from exporter.config import load_settings

    app = create_app(load_settings(config, **overrides), start_scheduler=start_scheduler)
    with TestClient(app) as client:
        yield client


class InProcessServer:
    """The app served by uvicorn over real HTTP on a loopback port, in a thread of the test's process: for clients
    that need a URL (httpx, schemathesis) but no process of the service's own."""

    def __init__(self, config: Path, start_scheduler: bool = False, **overrides: Any) -> None:
        import uvicorn

        from exporter.app import create_app
        from exporter.config import load_settings

        self.app = create_app(load_settings(config, **overrides), start_scheduler=start_scheduler)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, name="in-process-server", daemon=True)

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        wait_until(lambda: self.server.started or not self._thread.is_alive(), 60, what="the server to start")
        if not self.server.started:
            raise RuntimeError("the in-process server did not start (see the test's log output)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(60)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)


def drift_run(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One drift run of an in-process app over every row sent so far (the log written first); the metrics it
    published."""
    flush(client)
    job = client.app.state.job
    job.tick()
    assert job.published.stats.last_error is None, job.published.stats.last_error
    return parse_metrics(client.get("/metrics").text)


# -- a small population with coded categories (integer grades, a boolean flag), for the feature-type tests ----------
# No scheduler runs where it is used in process (app_client): a test that needs a run ticks the job itself.
DRIFT = "drift: {window_size: 1000, min_rows: 50, interval_seconds: 1, report: false, isolation: thread}"


def population(n: int, seed: int, gaps: bool = False) -> pd.DataFrame:
    """x ~ N(0, 1); grade in 1..3 and flag boolean drive the label; with ``gaps``, 5 % of grades are missing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    grade = rng.integers(1, 4, size=n)
    flag = rng.random(n) < 0.4
    logit = 1.5 * (grade == 3) - 1.0 * (grade == 1) + 1.2 * flag + 0.5 * x
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"x": x, "grade": grade.astype(float), "flag": flag, "label": label.astype(float)})
    if gaps:
        frame.loc[rng.random(n) < 0.05, "grade"] = np.nan
        frame.loc[rng.random(n) < 0.02, "label"] = np.nan  # a few reference rows without a label
    else:
        frame["grade"] = frame["grade"].astype(int)
        frame["label"] = frame["label"].astype(int)
    return frame


def write_config(folder: Path, extra: str = "", categorical: str = "[grade, flag]", target: str = "label",
                 nullable: str = "[]") -> Path:
    config = folder / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{path: model.joblib, name: coded, version: "1"}}
        reference: {{path: ref.csv, check_held_out: false}}
        features: {{numerical: [x], categorical: {categorical}, nullable: {nullable}}}
        target: {target}
        database_url: sqlite:///log.db
        {DRIFT}
    """) + extra)
    return config


# -- traffic and tables ------------------------------------------------------------------------------------------
def mixed_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Demo traffic of several scenarios (missing values, unseen categories, shifts), with extra random nulls in
    the nullable features, so that one request's column is all null while a batch-mate's is not."""
    from exporter.demo import Traffic

    out: list[dict[str, Any]] = []
    for scenario in ("none", "missing", "categories", "shift"):
        out += Traffic(scenario, seed=seed).records(n // 4)[0]
    rng = random.Random(seed)
    for r in out:
        for name in ("sex", "bill_depth_mm"):
            if rng.random() < 0.2:
                r[name] = None
    rng.shuffle(out)
    return out


def labels_in_table(database_url: str) -> dict[str, str | None]:
    """request_id -> the stored label (JSON text, or None), read from the table itself."""
    from sqlalchemy import create_engine, select

    from exporter.db import predictions_table

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            t = predictions_table.c
            return {r.request_id: r.label for r in conn.execute(select(t.request_id, t.label))}
    finally:
        engine.dispose()
