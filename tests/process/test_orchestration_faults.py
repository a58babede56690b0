"""Orchestration faults, black box: real `exporter` processes, real HTTP, the tables read with SQLAlchemy.

1. A start during a database outage: /readyz must turn 200 once the database is back, with no traffic at all
   (a Kubernetes readiness probe guarantees there is none), and the service must create its tables by itself.
2. `exporter serve --workers 2` with a start-up error must refuse with the one line a single worker prints and
   exit non-zero, not restart failing workers forever.
6. `exporter drift` must compute over the current window and change nothing: no run stored in ``drift_runs``,
   no row pruned from ``predictions``, whether or not a server holds the drift job's lock.

Only public behaviour is used (the CLI, HTTP, metric names, the two tables), so the package's internals may move.
Every wait has a deadline; every server binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from exporter.demo import Traffic
from tests.helpers import LiveServer, config_folder, free_port, live_server, sample, wait_until

DAY = 86400.0
TITLE = re.compile(r"Drift of the last (\d+) predictions")


# -- helpers ----------------------------------------------------------------------------------------------------
def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM to the process group this test started (``start_new_session``), then SIGKILL: no child survives."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def column(url: str, table: str, name: str) -> list[object]:
    """Every value of ``table.name`` in id order; a table that does not exist yet holds none."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(table):
            return []
        with engine.connect() as conn:
            return list(conn.execute(text(f"SELECT {name} FROM {table} ORDER BY id")).scalars())
    finally:
        engine.dispose()


def send(base_url: str, rows: int, seed: int, batch: int = 100) -> None:
    """Fresh demo rows of the reference's population through /predict/batch."""
    traffic = Traffic("none", seed=seed)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for start in range(0, rows, batch):
            records, _ = traffic.records(min(batch, rows - start))
            resp = client.post("/predict/batch", json={"records": records})
            assert resp.status_code == 200, resp.text[:300]


def drift_cli(config: Path) -> subprocess.CompletedProcess[str]:
    """`exporter drift --config C` as tests/process/test_cli.py runs it (stdout not a TTY: a 160-column table)."""
    return subprocess.run([sys.executable, "-m", "exporter.cli", "drift", "--config", str(config)],
                          capture_output=True, text=True, timeout=180, cwd=config.parent)


def printed_window(proc: subprocess.CompletedProcess[str]) -> int:
    assert proc.returncode == 0, f"exporter drift exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    found = TITLE.search(proc.stdout)
    assert found, f"no 'Drift of the last N predictions' title in the output of exporter drift:\n{proc.stdout[-2000:]}"
    return int(found.group(1))


# -- 1. readiness recovers after a start during a database outage, with no traffic ------------------------------
@pytest.mark.postgres
@pytest.mark.e2e
def test_readiness_recovers_without_traffic_after_a_start_during_an_outage(
    postgres_url: str, demo_dir: Path, tmp_path: Path
) -> None:
    """A readiness flag set only by the last write stays 503 forever when no traffic comes, and a readiness probe
    is all the traffic a pod gets before it is ready. socat is the database that vanishes and returns."""
    target = make_url(postgres_url)
    proxy_port = free_port()
    via_proxy = target.set(host="127.0.0.1", port=proxy_port).render_as_string(hide_password=False)
    config = config_folder(demo_dir, tmp_path / "cfg", database_url=via_proxy,
                           drift={"interval_seconds": 2, "isolation": "thread", "report": False})
    server = LiveServer(config)
    socat: subprocess.Popen[bytes] | None = None
    try:
        server.start()  # the database is unreachable: the service must start anyway
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 503
        socat = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{proxy_port},bind=127.0.0.1,fork,reuseaddr",
             f"TCP:{target.host or '127.0.0.1'}:{target.port or 5432}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(lambda: accepts(proxy_port), timeout=10, what="socat listening")
        returned = time.monotonic()
        statuses: list[int] = []

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                statuses.append(httpx.get(f"{server.url}/readyz", timeout=10).status_code)
                return statuses[-1] == 200
            statuses.append(-1)
            return False

        try:
            wait_until(ready, timeout=30, interval=0.5, what="/readyz 200 after the database came back")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: /readyz answered {sorted(set(statuses))} in {len(statuses)} probes over "
                                 f"{time.monotonic() - returned:.0f}s with no other request") from None
        assert socat.poll() is None, "socat exited"
        wait_until(lambda: {"predictions", "drift_runs"} <= table_names(postgres_url), timeout=10,
                   what=f"tables predictions and drift_runs created (have {sorted(table_names(postgres_url))})")
    finally:
        server.stop()
        if socat is not None:
            stop_group(socat)


# -- 2. a start-up error under --workers 2 refuses like one worker, and exits ------------------------------------
SERVE_TIMEOUT = 60.0
DIED = re.compile(r"Child process \[\d+\] died")


@pytest.mark.parametrize("workers", [1, 2])
def test_startup_error_refuses_with_one_line_under_any_number_of_workers(
    workers: int, demo_dir: Path, tmp_path: Path
) -> None:
    """uvicorn's supervisor restarts a worker that exits with anything but 3: a start-up error in the app factory
    must end the whole process with the same one line as a single worker, within seconds."""
    config = config_folder(demo_dir, tmp_path / "cfg")
    reference = config.resolve().parent / "reference.csv"
    reference.unlink()
    expected = f"exporter: error: {reference}: reference file not found"
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(free_port()), "--workers", str(workers)],
            stdout=out, stderr=err, cwd=config.parent, start_new_session=True, env={**os.environ, "DO_NOT_TRACK": "1"},
        )
        try:
            # Poll: stop early once more workers died than were started (the restart loop is then plain).
            while proc.poll() is None and time.monotonic() - started < SERVE_TIMEOUT:
                if len(DIED.findall(err_path.read_text(errors="replace"))) > workers:
                    break
                time.sleep(0.2)
            exited = proc.poll() is not None
        finally:
            stop_group(proc)
    elapsed = time.monotonic() - started
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    output = stdout + stderr
    tail = "\n".join(output.splitlines()[-25:])
    deaths = DIED.findall(output)
    assert len(deaths) <= workers, (
        f"--workers {workers}: {len(deaths)} 'Child process [...] died' lines in {elapsed:.0f}s, the process "
        f"{'exited' if exited else 'still running'}: failing workers were restarted. Output tail:\n{tail}"
    )
    assert exited, f"--workers {workers}: still running after {SERVE_TIMEOUT:.0f}s. Output tail:\n{tail}"
    assert proc.returncode != 0, f"--workers {workers}: exit code 0 after a start-up error. Output tail:\n{tail}"
    mentions = [line for line in output.splitlines() if "reference file not found" in line]
    assert mentions == [expected], f"--workers {workers}: expected the one line {expected!r}, got {mentions}"
    assert expected in stderr.splitlines()
    assert "Traceback" not in output, f"--workers {workers}: a traceback instead of one line:\n{tail}"


# -- 6. `exporter drift` computes over the current window and changes nothing ------------------------------------
def drift_config(demo_dir: Path, folder: Path, interval: float) -> tuple[Path, str]:
    """A demo config on its own SQLite file (window_size 3000 holds every row sent); its path and database URL."""
    db = folder / "predictions.db"
    config = config_folder(
        demo_dir, folder, database_url=f"sqlite:///{db}",
        drift={"window_size": 3000, "min_rows": 50, "interval_seconds": interval, "isolation": "thread",
               "report": False},
        prediction_log={"retention": {"max_age_days": 30, "max_rows": 5_000_000}},
    )
    return config, f"sqlite:///{db}"


@pytest.mark.e2e
def test_drift_command_after_the_server_stopped_computes_the_current_window_and_stores_nothing(
    demo_dir: Path, tmp_path: Path
) -> None:
    """The server's stored runs cover a partial window; the command must show the table as it is now, and a
    look at the drift must not write a run that the deployment then serves as its own."""
    config, url = drift_config(demo_dir, tmp_path / "cfg", interval=1)
    with live_server(config) as server:
        send(server.url, 100, seed=61, batch=50)
        server.wait_for(lambda m: sample(m, "model_drift_window_rows") == 100, timeout=60)
        wait_until(lambda: len(column(url, "drift_runs", "id")) >= 1, timeout=30, what="a stored drift run")
        send(server.url, 500, seed=62, batch=250)
        wait_until(lambda: len(column(url, "predictions", "id")) == 600, timeout=30, what="600 rows written")
    rows, runs = column(url, "predictions", "request_id"), column(url, "drift_runs", "id")
    assert len(rows) == 600 and runs
    proc = drift_cli(config)
    assert printed_window(proc) == min(len(rows), 3000)
    assert column(url, "drift_runs", "id") == runs, "exporter drift stored a run in drift_runs"
    assert column(url, "predictions", "request_id") == rows, "exporter drift changed the predictions table"


@pytest.mark.e2e
def test_drift_command_beside_a_running_server_computes_the_current_window(demo_dir: Path, tmp_path: Path) -> None:
    """The reproduced fault: with a server holding the job lock, the command printed the server's stored run
    (from before the traffic) as if it were a fresh computation over the current window."""
    config, url = drift_config(demo_dir, tmp_path / "cfg", interval=3600)
    with live_server(config) as server:
        # The server's first run comes at start-up, over an empty or partial window; the next one in an hour.
        wait_until(lambda: len(column(url, "drift_runs", "id")) >= 1, timeout=60, what="the server's first run")
        send(server.url, 600, seed=63, batch=200)
        wait_until(lambda: len(column(url, "predictions", "id")) == 600, timeout=30, what="600 rows written")
        rows, runs = column(url, "predictions", "request_id"), column(url, "drift_runs", "id")
        proc = drift_cli(config)
        assert server.proc is not None and server.proc.poll() is None, "the server exited"
        assert printed_window(proc) == 600
        assert column(url, "drift_runs", "id") == runs, "exporter drift stored a run in drift_runs"
        assert column(url, "predictions", "request_id") == rows, "exporter drift changed the predictions table"


@pytest.mark.e2e
def test_drift_command_without_a_server_neither_prunes_nor_stores(demo_dir: Path, tmp_path: Path) -> None:
    """With no server holding the job lock the command used to run a whole tick: retention deleted predictions
    older than max_age_days, and a run was stored. Looking at the drift must not delete data."""
    config, url = drift_config(demo_dir, tmp_path / "cfg", interval=3600)
    with live_server(config) as server:
        send(server.url, 300, seed=64, batch=150)
        wait_until(lambda: len(column(url, "predictions", "id")) == 300, timeout=30, what="300 rows written")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # the oldest 100 rows, 40 days old: past retention.max_age_days (30)
            aged = conn.execute(text(
                "UPDATE predictions SET created_at = created_at - :age "
                "WHERE id IN (SELECT id FROM predictions ORDER BY id LIMIT 100)"), {"age": 40 * DAY}).rowcount
    finally:
        engine.dispose()
    assert aged == 100
    rows, runs = column(url, "predictions", "request_id"), column(url, "drift_runs", "id")
    proc = drift_cli(config)
    after = column(url, "predictions", "request_id")
    assert len(after) == len(rows), f"exporter drift deleted {len(rows) - len(after)} of {len(rows)} predictions"
    assert after == rows
    assert column(url, "drift_runs", "id") == runs, "exporter drift stored a run in drift_runs"
    assert printed_window(proc) == 300
