"""/predict under load from a separate process (benchmarks.loadgen) against real uvicorn servers (benchmarks.server).

Logging overhead: logging on and off in the same server process, switched by signals, in an ABBA order per round
(new processes every round), and the seed style (one INSERT per request) in a second process. Ratios are taken per
round (against the round's off runs, measured seconds apart) and their median is reported.

Latency under the drift job: one server, measured alternately with its drift thread idle and running
``compute_drift`` over a 100k x 30 window; the same pairing and medians.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, demo_config, demo_records, fill_drift_window, median
from tests.helpers import free_port, wait_http


class Server:
    def __init__(self, config: Path, variant: str, extra: list[str] | None = None) -> None:
        self.config = config
        self.variant = variant
        self.port = free_port()
        self.log_path = config.parent / f"server-{variant}.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server", "--config", str(self.config), "--port", str(self.port),
             "--variant", self.variant, *self.extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "DO_NOT_TRACK": "1"},
        )
        return self

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.proc is not None
        wait_http(f"http://127.0.0.1:{self.port}/healthz", self.proc, timeout, f"{self.variant} server",
                  lambda: self.log_path.read_text(errors="replace"))

    def metrics(self) -> dict[str, float]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()


@contextlib.contextmanager
def servers(*items: Server) -> Iterator[None]:
    try:
        for s in items:
            s.start()
        for s in items:
            s.wait_ready()
        yield
    finally:
        for s in items:
            s.stop()


def loadgen(server: Server, bodies: Path, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """One load run against ``server``; adds the server's CPU milliseconds per request served."""
    cpu_before = server.cpu_seconds()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", "--port", str(server.port), "--bodies", str(bodies),
         "--concurrency", str(concurrency), "--warmup", str(warmup), "--duration", str(duration),
         "--max-requests", str(int(2000 * (warmup + duration)))],
        capture_output=True, text=True, cwd=ROOT, timeout=warmup + duration + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"load generator saw {result['errors']} errors: {result['error_sample']}")
    result["server_cpu_ms_per_request"] = (server.cpu_seconds() - cpu_before) * 1000 / max(1, result["requests_total"])
    return result


def _summary(res: dict[str, Any]) -> str:
    """One load run, for the progress log."""
    return (f"{res['throughput']:.0f} req/s p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, server CPU "
            f"{res['server_cpu_ms_per_request']:.2f} ms/request")


def _bodies(tmp: Path) -> Path:
    path = tmp / "bodies.jsonl"
    path.write_text("\n".join(json.dumps(r, separators=(",", ":")) for r in demo_records()) + "\n")
    return path


def _config(tmp: Path, name: str) -> Path:
    return demo_config(tmp / name, database_url="sqlite:///predictions.db", drift={"report": False})


def bench_logging(quick: bool, log: Any, concurrency: int = 8) -> dict[str, Any]:
    """Logging on against off in the same server process (``--variant toggle``): two processes of the same code can
    differ by several per cent in speed, more than what is measured, so on and off are compared within a process,
    in an ABBA order (off, on, on, off, then on, off, off, on in the next round) that cancels a drift within the
    round. Every round starts a new process. The seed style (one INSERT per request) is a second process, measured
    in the middle of each round against the same off runs."""
    rounds, warmup, duration = (2, 0.5, 2.0) if quick else (8, 1.0, 6.0)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in ("on", "off", "on2", "off2", "seed")}
    enqueued = 0
    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = _bodies(tmp)
        configs = {v: _config(tmp, v) for v in ("toggle", "seed")}
        status = tmp / "toggle-status.json"
        for r in range(rounds):
            toggle = Server(configs["toggle"], "toggle", ["--status-file", str(status)])
            seed = Server(configs["seed"], "seed")
            with servers(toggle, seed):
                for s in (toggle, seed):  # first requests (imports, caches) outside the measurement
                    loadgen(s, bodies, concurrency, 0.0, 0.5)
                order = ["off", "on", "seed", "on2", "off2"] if r % 2 == 0 else ["on", "off", "seed", "off2", "on2"]
                for v in order:
                    if v != "seed":
                        toggle.signal(signal.SIGUSR2 if v.startswith("on") else signal.SIGUSR1)
                        time.sleep(0.2)
                    res = loadgen(seed if v == "seed" else toggle, bodies, concurrency, warmup, duration)
                    runs[v].append(res)
                    log(f"logging round {r + 1}/{rounds} {v:>4}: {_summary(res)}")
            enqueued += json.loads(status.read_text())["rows_enqueued"]
        # The toggle server drained its queue on SIGTERM: every row it was given while on is a row of its table.
        with contextlib.closing(sqlite3.connect(configs["toggle"].parent / "predictions.db")) as db:
            written = float(db.execute("SELECT count(*) FROM predictions").fetchone()[0])
    out: dict[str, Any] = {"logging_concurrency": concurrency, "logging_rounds": rounds,
                           "logging_seconds_per_run": duration}
    for v in runs:
        for stat in ("p50_ms", "p99_ms", "throughput", "server_cpu_ms_per_request"):
            out[f"logging_{v}_{stat}"] = median(r[stat] for r in runs[v])

    def both(v: str, i: int, stat: str) -> float:
        """The mean of the round's two runs of ``v`` (on, or off)."""
        return (runs[v][i][stat] + runs[f"{v}2"][i][stat]) / 2

    def paired(v: str, stat: str) -> float:
        """Median over rounds of ``v`` (on or seed) against the round's off runs."""
        return median((both(v, i, stat) if v == "on" else runs[v][i][stat]) / both("off", i, stat)
                      for i in range(rounds))

    out["logging_p99_ratio"] = paired("on", "p99_ms")
    out["logging_p50_ratio"] = paired("on", "p50_ms")
    out["logging_throughput_ratio"] = paired("on", "throughput")
    out["logging_cpu_per_request_ratio"] = paired("on", "server_cpu_ms_per_request")
    out["seed_style_cpu_per_request_ratio"] = paired("seed", "server_cpu_ms_per_request")
    out["seed_style_p99_ratio"] = paired("seed", "p99_ms")
    out["seed_style_p50_ratio"] = paired("seed", "p50_ms")
    out["seed_style_throughput_ratio"] = paired("seed", "throughput")
    # What two runs of the same server in the same state differ by: the round's first off run against its last
    # (or last against first), the noise to read the on / off ratios against.
    out["logging_noise_p99_ratio"] = median(runs["off2"][i]["p99_ms"] / runs["off"][i]["p99_ms"]
                                            for i in range(rounds))
    out["logging_noise_throughput_ratio"] = median(runs["off2"][i]["throughput"] / runs["off"][i]["throughput"]
                                                   for i in range(rounds))
    out["logging_rows_written"] = written
    out["logging_rows_dropped"] = enqueued - written
    out["logging_rows_enqueued"] = float(enqueued)
    return out


def _wait_status(path: Path, predicate: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(path.read_text())
            if predicate(status):
                return status
        time.sleep(0.05)
    raise RuntimeError(f"drift loop status not reached within {timeout}s: {path.read_text()}")


def _drift_latency_rounds(server: Server, bodies: Path, status_file: Path, rounds: int, warmup: float,
                          duration: float, concurrency: int, label: str, log: Any) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"idle": [], "drift": []}
    loadgen(server, bodies, concurrency, 0.0, 0.5)
    for r in range(rounds):
        order = ["idle", "drift"] if r % 2 == 0 else ["drift", "idle"]
        for mode in order:
            if mode == "drift":
                before = _wait_status(status_file, lambda s: True)["runs"]
                server.signal(signal.SIGUSR1)
                _wait_status(status_file, lambda s: s["running"])
            res = loadgen(server, bodies, concurrency, warmup, duration)
            if mode == "drift":
                server.signal(signal.SIGUSR2)
                status = _wait_status(status_file, lambda s: not s["running"], timeout=600)
                res["drift_runs"] = status["runs"] - before
            runs[mode].append(res)
            log(f"drift-latency ({label}) round {r + 1}/{rounds} {mode:>5}: {res['throughput']:.0f} req/s "
                f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms")
    durations = json.loads(status_file.read_text())["durations"]

    def paired(stat: str) -> float:
        return median(d[stat] / i[stat] for d, i in zip(runs["drift"], runs["idle"], strict=True))

    return {
        "p99_idle_ms": median(r["p99_ms"] for r in runs["idle"]),
        "p99_during_drift_ms": median(r["p99_ms"] for r in runs["drift"]),
        "p50_idle_ms": median(r["p50_ms"] for r in runs["idle"]),
        "p50_during_drift_ms": median(r["p50_ms"] for r in runs["drift"]),
        "throughput_idle": median(r["throughput"] for r in runs["idle"]),
        "throughput_during_drift": median(r["throughput"] for r in runs["drift"]),
        "p99_during_drift_ratio": paired("p99_ms"),
        "p50_during_drift_ratio": paired("p50_ms"),
        "throughput_during_drift_ratio": paired("throughput"),
        "drift_job_runs_under_load": len(durations),
        "drift_job_s_under_load": median(durations),
    }


def bench_drift_latency(quick: bool, log: Any, concurrency: int = 8) -> dict[str, Any]:
    """The default isolation (the job in a worker process) gives the headline keys; ``drift.isolation: thread``
    the same keys with a ``_thread`` suffix."""
    rounds, warmup, duration = (2, 0.5, 2.0) if quick else (4, 1.0, 6.0)
    rows, cols = (20_000, 30) if quick else (100_000, 30)
    out: dict[str, Any] = {"drift_latency_window": f"{rows}x{cols}"}
    with tempfile.TemporaryDirectory(prefix="bench-drift-latency-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = _bodies(tmp)
        db_url = f"sqlite:///{tmp / 'window.db'}"
        fill_drift_window(db_url, rows, cols)
        for isolation, suffix in (("process", ""), ("thread", "_thread")):
            status_file = tmp / f"drift-status-{isolation}.json"
            server = Server(_config(tmp, f"server-{isolation}"), "on", [
                "--drift-rows", str(rows), "--drift-cols", str(cols), "--drift-db", db_url,
                "--drift-isolation", isolation, "--status-file", str(status_file),
            ])
            with servers(server):
                result = _drift_latency_rounds(server, bodies, status_file, rounds, warmup, duration, concurrency,
                                               isolation, log)
            out.update({f"{k}{suffix}": v for k, v in result.items()})
    return out


BATCHING_CONCURRENCY = (16, 64)


def bench_batching(quick: bool, log: Any) -> dict[str, Any]:
    """Two servers, identical but for ``batching.max_batch_size`` (64: on, the default; 1: off, each request its own
    model call in the threadpool), measured in alternation at 16 and 64 connections and with one lone client."""
    rounds, warmup, duration = (2, 0.5, 2.0) if quick else (5, 1.0, 5.0)
    variants = {"on": {"max_batch_size": 64}, "off": {"max_batch_size": 1}}
    levels = (*BATCHING_CONCURRENCY, 1)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(v, c): [] for v in variants for c in levels}
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = _bodies(tmp)
        srv = {
            v: Server(demo_config(tmp / f"batching-{v}", database_url="sqlite:///predictions.db",
                                  drift={"report": False}, batching=cfg), "on")
            for v, cfg in variants.items()
        }
        with servers(*srv.values()):
            for s in srv.values():  # first requests (imports, caches) outside the measurement
                loadgen(s, bodies, 16, 0.0, 0.5)
            for r in range(rounds):
                for c in levels:
                    order = ["on", "off"] if (r + levels.index(c)) % 2 == 0 else ["off", "on"]
                    for v in order:
                        res = loadgen(srv[v], bodies, c, warmup, duration)
                        runs[(v, c)].append(res)
                        log(f"batching round {r + 1}/{rounds} {v:>3} x{c:<2}: {_summary(res)}")
            time.sleep(1.5)  # let the writer flush its last batch
            counts = srv["on"].metrics()
    out: dict[str, Any] = {"batching_rounds": rounds, "batching_seconds_per_run": duration,
                           "batching_max_batch_size": 64}
    for (v, c), results in runs.items():
        for stat in ("p50_ms", "p99_ms", "throughput", "server_cpu_ms_per_request"):
            out[f"batching_{v}_{c}_{stat}"] = median(r[stat] for r in results)

    def paired(c: int, stat: str) -> float:
        return median(a[stat] / b[stat] for a, b in zip(runs[("on", c)], runs[("off", c)], strict=True))

    for c in BATCHING_CONCURRENCY:
        out[f"batching_throughput_ratio_{c}"] = paired(c, "throughput")
        out[f"batching_p99_ratio_{c}"] = paired(c, "p99_ms")
        out[f"batching_cpu_per_request_ratio_{c}"] = paired(c, "server_cpu_ms_per_request")
    out["batching_lone_p50_added_ms"] = median(
        a["p50_ms"] - b["p50_ms"] for a, b in zip(runs[("on", 1)], runs[("off", 1)], strict=True)
    )
    calls = counts.get("model_batch_rows_count", float("nan"))
    out["batching_mean_rows_per_call"] = counts.get("model_batch_rows_sum", float("nan")) / calls if calls else None
    out["batching_rows_dropped"] = counts.get("model_prediction_log_dropped_total", float("nan"))
    return out
