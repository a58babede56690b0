"""Shared test helpers: demo config folders, a real uvicorn server in a subprocess, free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


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


def config_folder(demo_dir: Path, dest: Path, **changes: Any) -> Path:
    """A copy of the demo folder with ``changes`` merged into its config.yaml; returns the config path."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.joblib", "reference.csv"):
        shutil.copy(demo_dir / name, dest / name)
    config = yaml.safe_load((demo_dir / "config.yaml").read_text())
    deep_update(config, changes)
    path = dest / "config.yaml"
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

    def start(self, timeout: float = 60) -> LiveServer:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(self.config), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.config.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

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


def wait_until(predicate: Any, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it is truthy (returning its value), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)
