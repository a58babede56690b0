"""Serving side by side with what a user would pick instead (``make bench-peers``; alone: ``python -m
benchmarks.peers.serving``): the demo pipeline's joblib file, unchanged, served by

- ``ours``: ``exporter serve`` as shipped (prediction log on SQLite, drift job, /metrics, batching 64 rows / 2 ms);
- ``mlserver``: MLServer 1.7.1's scikit-learn runtime, adaptive batching at 64 rows / 2 ms, ``parallel_workers: 0``
  (its fastest setting here), V2 inference protocol, asking for ``predict`` and ``predict_proba``;
- ``bentoml``: BentoML 1.4.40, a batchable API (64 rows) calling the same pipeline, one worker;
- ``fastapi``: a plain FastAPI app in the seed's style (one SQLite INSERT per request in a background task);

each peer from its own venv (.venv-peers/<peer>, from benchmarks/peers/<peer>_requirements.txt; the plain FastAPI
app runs with MLServer's, which has FastAPI). All four are up together and idle but for the one measured; the load
comes from ``hey`` (one process of its own, Debian's package) against each in turn, in rounds whose order alternates,
at 1, 16 and 64 clients. Reported per server and client count: throughput, p50 and p99 (medians over the rounds) and
the server's CPU per request (its process and its children). The model call itself is timed in the same run: the
pipeline's one-row ``predict`` in this process.

What differs in the requests: ours, BentoML's and FastAPI's are JSON of one row (ours and FastAPI's an object of
named features, BentoML's the values in column order, since it cannot batch a DataFrame); MLServer's is a V2
request of six named one-value tensors with the pandas codec. The answers: ours the prediction, the class
probabilities, a request id and the model version; MLServer's the prediction and probabilities; BentoML's the
prediction; FastAPI's the prediction and a request id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENVS = ROOT / ".venv-peers"
OUT = ROOT / "benchmarks" / "peers_serving.json"
RESULTS = ROOT / "benchmarks" / "results.json"
CLIENTS = (1, 16, 64)
RECORD = {"bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0, "body_mass_g": 3750.0,
          "island": "Torgersen", "sex": "male"}
NUMERICAL = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


class Peer:
    def __init__(self, name: str, command: list[str], url: str, health: str, body: dict[str, Any], cwd: Path,
                 logs: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.command, self.url, self.health, self.body = name, command, url, health, body
        self.cwd, self.env = cwd, {**os.environ, "DO_NOT_TRACK": "1", **(env or {})}
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.health, timeout=2).status_code == 200:
                    answer = httpx.post(self.url, json=self.body, timeout=30)
                    if answer.status_code == 200:
                        return
                    raise RuntimeError(f"{self.name} answered {answer.status_code}: {answer.text[:500]}")
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start within {timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's process and all its descendants (BentoML's and uvicorn's workers)."""
        assert self.proc is not None
        stats: dict[int, tuple[int, float]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) /
                                                os.sysconf("SC_CLK_TCK"))
        tree, grew = {self.proc.pid}, True
        while grew:
            more = {pid for pid, (parent, _) in stats.items() if parent in tree} - tree
            grew = bool(more)
            tree |= more
        return sum(stats[pid][1] for pid in tree if pid in stats)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()


def v2_body() -> dict[str, Any]:
    return {"parameters": {"content_type": "pd"},
            "inputs": [{"name": k, "shape": [1], "datatype": "FP64" if k in NUMERICAL else "BYTES", "data": [v]}
                       for k, v in RECORD.items()],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}


def peers(tmp: Path, model: Path, config: Path) -> list[Peer]:
    ours_port, mls_port, bento_port, fast_port = (free_port() for _ in range(4))
    mls = tmp / "mlserver"
    (mls / "penguins").mkdir(parents=True)
    shutil.copy(model, mls / "penguins" / "model.joblib")
    (mls / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "http_port": mls_port,
                                                   "grpc_port": free_port(), "metrics_port": free_port(),
                                                   "parallel_workers": 0}))
    (mls / "penguins" / "model-settings.json").write_text(json.dumps({
        "name": "penguins", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"}, "max_batch_size": 64, "max_batch_time": 0.002}))
    return [
        Peer("ours", [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
                      "--port", str(ours_port)], f"http://127.0.0.1:{ours_port}/predict",
             f"http://127.0.0.1:{ours_port}/healthz", RECORD, config.parent, tmp),
        Peer("mlserver", [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(mls)],
             f"http://127.0.0.1:{mls_port}/v2/models/penguins/infer", f"http://127.0.0.1:{mls_port}/v2/health/ready",
             v2_body(), tmp, tmp),
        Peer("bentoml", [str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "bentoml_service:Penguins", "--host",
                         "127.0.0.1", "--port", str(bento_port)], f"http://127.0.0.1:{bento_port}/predict",
             f"http://127.0.0.1:{bento_port}/readyz", {"records": [list(RECORD.values())]}, HERE / "serving", tmp,
             {"MODEL_PATH": str(model)}),
        Peer("fastapi", [str(VENVS / "mlserver" / "bin" / "python"), "-m", "uvicorn", "plain_fastapi:app", "--host",
                         "127.0.0.1", "--port", str(fast_port), "--no-access-log"],
             f"http://127.0.0.1:{fast_port}/predict", f"http://127.0.0.1:{fast_port}/healthz", RECORD,
             HERE / "serving", tmp, {"MODEL_PATH": str(model), "DB_PATH": str(tmp / "fastapi.db")}),
    ]


def hey(peer: Peer, clients: int, seconds: float, body: Path) -> dict[str, float]:
    """One hey run (``-o csv``: every request's latency, so the percentiles are exact for few requests too)."""
    cpu = peer.cpu_seconds()
    done = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", "application/json",
                           "-D", str(body), "-o", "csv", peer.url], capture_output=True, text=True,
                          timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"hey against {peer.name}: {done.stderr[-1000:]}")
    rows = [line.split(",") for line in done.stdout.splitlines()[1:] if line.strip()]
    statuses = {r[6] for r in rows}
    if not rows or statuses != {"200"}:
        raise RuntimeError(f"{peer.name} answered {statuses or 'nothing'}: {done.stdout[-500:]}")
    latencies = sorted(float(r[0]) * 1000 for r in rows)
    elapsed = max(float(r[7]) + float(r[0]) for r in rows)

    def pct(q: float) -> float:
        return latencies[max(0, min(len(latencies) - 1, int(-(-q * len(latencies) // 100)) - 1))]

    return {"throughput": len(rows) / elapsed, "p50_ms": pct(50), "p99_ms": pct(99), "requests": len(rows),
            "cpu_ms_per_request": (peer.cpu_seconds() - cpu) * 1000 / len(rows)}


def model_floor(model: Path) -> dict[str, float]:
    """Milliseconds (medians of 300) of the pipeline's one-row ``predict``, and of the model call ours makes for an
    answer with probabilities: the transforms once, then the final step's ``predict`` and ``predict_proba``."""
    import joblib
    import pandas as pd

    pipeline = joblib.load(model)
    frame = pd.DataFrame([RECORD])

    def ours() -> None:
        x = pipeline[:-1].transform(frame)
        pipeline[-1].predict(x)
        pipeline[-1].predict_proba(x)

    out = {}
    for name, call in (("predict", lambda: pipeline.predict(frame)), ("ours", ours)):
        times = []
        for _ in range(300):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times) * 1000
    return out


@contextlib.contextmanager
def running(items: list[Peer]) -> Iterator[None]:
    try:
        for p in items:
            p.start()
        for p in items:
            p.wait()
        yield
    finally:
        for p in items:
            p.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("hey is missing: apt-get install hey (make system-deps installs it)")
    from exporter.demo import write_demo

    with tempfile.TemporaryDirectory(prefix="bench-peers-serving-") as name:
        tmp = Path(name)
        write_demo(tmp / "demo")
        config = tmp / "demo" / "config.yaml"
        model = tmp / "demo" / "model.joblib"
        floor = model_floor(model)
        items = peers(tmp, model, config)
        bodies = {}
        for p in items:
            bodies[p.name] = tmp / f"{p.name}-body.json"
            bodies[p.name].write_text(json.dumps(p.body))
        runs: dict[tuple[str, int], list[dict[str, float]]] = {(p.name, c): [] for p in items for c in CLIENTS}
        with running(items):
            for p in items:  # first requests (imports, caches, batch-size models) outside the measurement
                hey(p, 16, 2.0, bodies[p.name])
            for r in range(args.rounds):
                for i, clients in enumerate(CLIENTS):
                    order = items if (r + i) % 2 == 0 else items[::-1]
                    for p in order:
                        res = hey(p, clients, args.seconds, bodies[p.name])
                        runs[(p.name, clients)].append(res)
                        print(f"round {r + 1}/{args.rounds} {p.name:>8} x{clients:<2}: {res['throughput']:.0f} req/s "
                              f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, CPU "
                              f"{res['cpu_ms_per_request']:.2f} ms/request", flush=True)
    table = {f"{n}_{c}": {k: statistics.median(r[k] for r in rs) for k in rs[0]} for (n, c), rs in runs.items()}
    ratios: dict[str, float] = {}
    for p in items[1:]:
        for clients in (16, 64):
            ours, theirs = table[f"ours_{clients}"], table[f"{p.name}_{clients}"]
            ratios[f"peer_throughput_ratio_{clients}_{p.name}"] = ours["throughput"] / theirs["throughput"]
            ratios[f"peer_p99_ratio_{clients}_{p.name}"] = ours["p99_ms"] / theirs["p99_ms"]
    doc = {"machine": os.uname().nodename, "cores": os.cpu_count(), "rounds": args.rounds, "seconds": args.seconds,
           "model_predict_ms": floor["predict"], "model_call_ours_ms": floor["ours"],
           "lone_p50_over_model_ms": table["ours_1"]["p50_ms"] - floor["predict"],
           "servers": table, "ratios": ratios}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    if RESULTS.exists():  # the keys of the benchmark suite's results, beside its own
        from benchmarks.common import write_json

        results = json.loads(RESULTS.read_text())
        results.update(ratios)
        results["peer_lone_p50_over_model_ms"] = doc["lone_p50_over_model_ms"]
        write_json(RESULTS, results)
    print(render(doc))
    return 0


def render(doc: dict[str, Any]) -> str:
    lines = [f"Serving, {doc['rounds']} rounds of {doc['seconds']:g} s, medians ({doc['cores']} cores); the model's "
             f"one-row predict: {doc['model_predict_ms']:.2f} ms (predict and predict_proba, as ours answers: "
             f"{doc['model_call_ours_ms']:.2f} ms)", "",
             "| server | 1 client: req/s, p50 | 16 clients: req/s, p99, CPU/request | 64 clients: req/s, p99, "
             "CPU/request |", "|---|---|---|---|"]
    for name in ("ours", "mlserver", "bentoml", "fastapi"):
        one, c16, c64 = (doc["servers"][f"{name}_{c}"] for c in CLIENTS)
        lines.append(f"| {name} | {one['throughput']:.0f}, {one['p50_ms']:.1f} ms | {c16['throughput']:.0f}, "
                     f"{c16['p99_ms']:.0f} ms, {c16['cpu_ms_per_request']:.2f} ms | {c64['throughput']:.0f}, "
                     f"{c64['p99_ms']:.0f} ms, {c64['cpu_ms_per_request']:.2f} ms |")
    lines += ["", "| ratio, ours to the peer | measured | target |", "|---|---|---|"]
    for key, value in doc["ratios"].items():
        lines.append(f"| {key} | {value:.2f} | {'>= 1' if 'throughput' in key else '<= 0.5'} |")
    lines.append(f"| lone client's p50 above the model call | {doc['lone_p50_over_model_ms']:.2f} ms | <= 1 ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
