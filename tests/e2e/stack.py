"""The native end-to-end stack: the app, real Alertmanager and real Prometheus on loopback, plus a webhook sink.

Prometheus and Alertmanager read copies of the files the product ships (prometheus/), rewritten only where a
test machine must differ from compose: the host:port literals (compose service names -> 127.0.0.1 and free
ports) and the time intervals, scaled down by ``TIME_SCALE``. Everything else stays byte-identical, and
``check_only_intervals_and_hosts_changed`` proves it, so what is tested is what compose ships.

Why 1/60: the demo drift job runs every 60 s in production and every second here, so ``for: 2m`` (three
consecutive drift runs) becomes ``for: 2s`` (still about three runs): the alert still has to outlast a single
run, just on a faster clock.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.demo import Traffic
from tests.helpers import ROOT, LiveServer, free_port, sample, terminate, wait_http, wait_until

PROMETHEUS_DIR = ROOT / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_YML = PROMETHEUS_DIR / "alertmanager.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))

PROMETHEUS_BIN = ("/usr/bin/prometheus", "prometheus")  # (path, Debian package)
ALERTMANAGER_BIN = ("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager")

TIME_SCALE = 1 / 60  # production drift interval 60 s -> 1 s here; every `for:` and Alertmanager timer alike
SCRAPE_INTERVAL = "1s"  # Prometheus scrape and rule evaluation interval in the test stack

# Literals of the shipped files that name compose services (tests/repo/test_prometheus_config.py pins them).
APP_TARGET = '"app:8000"'
ALERTMANAGER_TARGET = '"alertmanager:9093"'
PROMETHEUS_SELF_TARGET = '"localhost:9090"'  # the self-scrape; 9090 on a test machine may be anyone's
WEBHOOK_URL = '"http://app-webhook:5001/alerts"'

DRIFT_ALERTS = ("ModelFeatureDrift", "ModelDatasetDrift", "ModelPredictionDrift", "ModelMultivariateDrift")


def require_binary(path: str, package: str) -> str:
    """The binary's path; a failure naming the Debian package when it is not installed (never a skip)."""
    found = path if Path(path).is_file() else shutil.which(Path(path).name)
    if not found:
        pytest.fail(f"{path} not found: install the Debian package `{package}` (apt-get install -y {package})")
    return found


# ---------------------------------------------------------------------------------------------------------------
# Config rewriting: host:port literals and intervals only
# ---------------------------------------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _DURATION_UNITS[u] for n, u in parts)


def scaled(text: str, scale: float = TIME_SCALE) -> str:
    """A duration scaled by ``scale``, in whole seconds, at least 1s."""
    return f"{max(1, round(duration_seconds(text) * scale))}s"


def _rewrite_keys(text: str, keys: tuple[str, ...], new_value: Callable[[str], str]) -> str:
    """Replace the value of ``key: <duration>`` lines (comments and indentation kept)."""
    pattern = re.compile(rf"^(?P<head>\s*(?:{'|'.join(keys)}):\s*)(?P<value>[0-9a-z]+)(?P<tail>.*)$", re.M)
    return pattern.sub(lambda m: m["head"] + new_value(m["value"]) + m["tail"], text)


def _substitute(text: str, literal: str, replacement: str, where: Path) -> str:
    if literal not in text:
        raise AssertionError(f"{where}: the literal {literal} the e2e stack rewrites is gone")
    return text.replace(literal, replacement)


def rules_text(path: Path) -> str:
    """A shipped rule file with only its ``for:`` durations scaled."""
    return _rewrite_keys(path.read_text(), ("for",), scaled)


def prometheus_text(apps: list[str], alertmanager: str, prometheus: str) -> str:
    """The shipped prometheus.yml scraping ``apps`` (host:port each) as its exporter job."""
    text = PROMETHEUS_YML.read_text()
    text = _substitute(text, APP_TARGET, ", ".join(f'"{app}"' for app in apps), PROMETHEUS_YML)
    text = _substitute(text, ALERTMANAGER_TARGET, f'"{alertmanager}"', PROMETHEUS_YML)
    text = _substitute(text, PROMETHEUS_SELF_TARGET, f'"{prometheus}"', PROMETHEUS_YML)
    return _rewrite_keys(text, ("scrape_interval", "evaluation_interval"), lambda _: SCRAPE_INTERVAL)


def alertmanager_text(webhook_url: str) -> str:
    text = _substitute(ALERTMANAGER_YML.read_text(), WEBHOOK_URL, f'"{webhook_url}"', ALERTMANAGER_YML)
    return _rewrite_keys(text, ("group_wait", "group_interval", "repeat_interval"), scaled)


_INTERVAL_VALUE = re.compile(
    r"^(?P<key>\s*(?:for|scrape_interval|evaluation_interval|group_wait|group_interval|repeat_interval):\s*)[0-9a-z]+",
    re.M,
)
_ADDRESS_LITERAL = re.compile(r'"(?:http://)?[A-Za-z0-9.-]+:\d+(?:/[^"]*)?"')


_ADDRESS_LIST = re.compile(r'"<address>"(?:, "<address>")+')  # one target written as several (replicas)


def _normalise(line: str) -> str:
    line = _ADDRESS_LITERAL.sub('"<address>"', _INTERVAL_VALUE.sub(r"\g<key><duration>", line))
    return _ADDRESS_LIST.sub('"<address>"', line)


def check_only_intervals_and_hosts_changed(original: str, rewritten: str, where: str) -> list[tuple[str, str]]:
    """Assert the two texts differ only in interval values and quoted host:port literals; return the changes."""
    old, new = original.splitlines(keepends=True), rewritten.splitlines(keepends=True)
    assert len(old) == len(new), f"{where}: line count changed"
    changes = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    for a, b in changes:
        assert _normalise(a) == _normalise(b), f"{where}: unexpected change\n- {a}+ {b}"
    return changes


def write_prometheus_config(dest: Path, apps: list[str], alertmanager: str, prometheus: str) -> Path:
    """prometheus.yml and rules/*.yml in ``dest`` (the shipped rule_files glob is relative to the config)."""
    (dest / "rules").mkdir(parents=True, exist_ok=True)
    for path in RULE_FILES:
        text = rules_text(path)
        check_only_intervals_and_hosts_changed(path.read_text(), text, str(path))
        (dest / "rules" / path.name).write_text(text)
    text = prometheus_text(apps, alertmanager, prometheus)
    check_only_intervals_and_hosts_changed(PROMETHEUS_YML.read_text(), text, str(PROMETHEUS_YML))
    config = dest / "prometheus.yml"
    config.write_text(text)
    return config


def write_alertmanager_config(dest: Path, webhook_url: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    text = alertmanager_text(webhook_url)
    check_only_intervals_and_hosts_changed(ALERTMANAGER_YML.read_text(), text, str(ALERTMANAGER_YML))
    config = dest / "alertmanager.yml"
    config.write_text(text)
    return config


# ---------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------


class WebhookSink:
    """A tiny Alertmanager webhook receiver on a free loopback port: records every POSTed JSON body."""

    def __init__(self) -> None:
        payloads: list[dict[str, Any]] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    payloads.append({"path": self.path, **json.loads(body or b"{}")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._payloads = payloads
        self._lock = lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-sink", daemon=True)

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    @property
    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._payloads)

    def alerts(self, *names: str) -> list[dict[str, Any]]:
        """Every alert of every notification received (optionally only those named ``names``)."""
        return [
            alert
            for payload in self.payloads
            for alert in payload.get("alerts", [])
            if not names or alert["labels"].get("alertname") in names
        ]


class Daemon:
    """A server binary in a subprocess with its output in a log file; readiness polled over HTTP."""

    def __init__(self, name: str, argv: list[str], url: str, log_path: Path) -> None:
        self.name, self.argv, self.url, self.log_path = name, argv, url, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str = "/-/ready", timeout: float = 60) -> Daemon:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.log_path.parent)
        try:
            wait_http(self.url + ready_path, self.proc, timeout, self.name, self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Prometheus(Daemon):
    def api(self, path: str, **params: str) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{path} {params}: {resp.text[:2000]}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result as a list of series (a scalar result becomes one series)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def alerts(self, *names: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts, optionally only those named ``names``."""
        return [a for a in self.api("alerts")["alerts"] if not names or a["labels"]["alertname"] in names]


@dataclass
class Stack:
    app: LiveServer
    sink: WebhookSink
    alertmanager: Daemon
    prometheus: Prometheus
    sent: int = 0  # rows answered by the app so far
    traffic: dict[str, Traffic] = field(default_factory=dict)

    def logs(self, tail: int = 3000) -> str:
        """The end of each process's log (the app's without its access lines), for failure messages."""
        app = "".join(line for line in self.app.log().splitlines(keepends=True) if '" 200' not in line)
        parts = {"app": app, "alertmanager": self.alertmanager.log(), "prometheus": self.prometheus.log()}
        return "\n".join(f"--- {name} log ---\n{text[-tail:]}" for name, text in parts.items())


@contextlib.contextmanager
def running_stack(config: Path, workdir: Path) -> Iterator[Stack]:
    """App, webhook sink, Alertmanager and Prometheus, all on 127.0.0.1; everything stopped on exit."""
    with contextlib.ExitStack() as stack:
        app = LiveServer(config).start()
        stack.callback(app.stop)
        yield stack.enter_context(monitoring([app], workdir))


@contextlib.contextmanager
def monitoring(apps: list[LiveServer], workdir: Path) -> Iterator[Stack]:
    """Webhook sink, Alertmanager and a Prometheus scraping every one of ``apps`` (replicas of one deployment, as
    one scrape job); stopped on exit. The Stack's ``app`` is the first."""
    prometheus_bin = require_binary(*PROMETHEUS_BIN)
    alertmanager_bin = require_binary(*ALERTMANAGER_BIN)
    with contextlib.ExitStack() as stack:
        sink = WebhookSink().start()
        stack.callback(sink.stop)

        am_port = free_port()
        am_dir = workdir / "alertmanager"
        am_config = write_alertmanager_config(am_dir, sink.url)
        alertmanager = Daemon(
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={am_config}",
                f"--storage.path={am_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            f"http://127.0.0.1:{am_port}",
            am_dir / "alertmanager.log",
        )
        stack.callback(alertmanager.stop)
        alertmanager.start()

        prom_port = free_port()
        prom_dir = workdir / "prometheus"
        prom_config = write_prometheus_config(
            prom_dir, [f"127.0.0.1:{app.port}" for app in apps], f"127.0.0.1:{am_port}", f"127.0.0.1:{prom_port}"
        )
        prometheus = Prometheus(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--rules.alert.resend-delay=2s",
            ],
            f"http://127.0.0.1:{prom_port}",
            prom_dir / "prometheus.log",
        )
        stack.callback(prometheus.stop)
        prometheus.start()

        result = Stack(apps[0], sink, alertmanager, prometheus)
        # Prometheus has found Alertmanager and scrapes the apps: otherwise the first alerts would be dropped.
        wait_until(
            lambda: any(
                am["url"].startswith(alertmanager.url) for am in prometheus.api("alertmanagers")["activeAlertmanagers"]
            ),
            30, "Prometheus did not discover Alertmanager", result.logs,
        )
        wait_until(
            lambda: len(prometheus.query('up{job="exporter"} == 1')) == len(apps), 30,
            "Prometheus does not scrape every app", result.logs,
        )
        yield result


# ---------------------------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------------------------


def send(server: LiveServer, traffic: Traffic, rows: int, singles: int = 5, batch: int = 37) -> list[tuple[str, str]]:
    """Send ``rows`` records: the first ``singles`` one by one to /predict, the rest to /predict/batch.

    Returns (request_id, true label) per row, for /feedback."""
    out: list[tuple[str, str]] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while len(out) < rows:
            single = len(out) < singles
            records, labels = traffic.records(1 if single else min(batch, rows - len(out)))
            if single:
                resp = client.post("/predict", json=records[0])
                assert resp.status_code == 200, resp.text
                answers = [resp.json()]
            else:
                resp = client.post("/predict/batch", json={"records": records})
                assert resp.status_code == 200, resp.text
                answers = resp.json()["predictions"]
            assert len(answers) == len(records)
            out.extend((a["request_id"], label) for a, label in zip(answers, labels, strict=True))
    return out


def send_feedback(server: LiveServer, labelled: list[tuple[str, str]], batch: int = 100) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for start in range(0, len(labelled), batch):
            chunk = labelled[start:start + batch]
            resp = client.post(
                "/feedback/batch", json={"labels": [{"request_id": rid, "label": label} for rid, label in chunk]}
            )
            assert resp.status_code == 202, resp.text


def drift_run_after_rows_written(server: LiveServer, written: int, timeout: float = 60) -> dict[Any, float]:
    """App metrics of a drift run that started after ``written`` rows were in the table."""
    server.wait_for(lambda m: sample(m, "model_prediction_log_written_total") == written, timeout)
    runs = sample(server.metrics(), "model_drift_job_runs_total") or 0
    # Two more runs: the first may have started before the last rows were committed.
    return server.wait_for(
        lambda m: m if (sample(m, "model_drift_job_runs_total") or 0) >= runs + 2 else None, timeout
    )
