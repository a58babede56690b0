"""RSS while the prediction log grows: run as its own process, ``python -m benchmarks.memory --rows N --out F``.

The request side as the app factory wires it (``exporter.startup.build`` of the demo config: model, reference and
what the drift job derives from it; ``open_database``; a ``PredictionLog`` on a ``PredictionStore``; a
``PredictionService``), with its SQLite prediction log in a temporary folder; batches of 1000 records go through
``PredictionService.predict`` (model, request ids, ``PredictionLog.enqueue``) at a pace that keeps the queue well
below its bound, so every row is written by the batching writer thread. At each checkpoint (after the queue has
drained and a GC) the process's RSS is read from /proc. At the end the drift job's window query,
``PredictionStore.window(3000)``, is timed on the full table.

The request path's CPU cost of logging is measured by a ``PredictionLog`` subclass whose ``enqueue`` times the
real one (``TimedLog``), injected into the service as the app factory injects its log.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="100000,1000000")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--max-queued", type=int, default=20_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from benchmarks.common import demo_config, median, rss_mb
    from exporter.config import load_settings
    from exporter.demo import Traffic
    from exporter.prediction_log import PredictionLog
    from exporter.service import PredictionService
    from exporter.startup import build, open_database
    from exporter.store import PredictionRow, PredictionStore

    class TimedLog(PredictionLog):
        """The prediction log, its ``enqueue`` (the request path's cost of logging) counted in CPU time."""

        enqueue_cpu = 0.0

        def enqueue(self, rows: list[PredictionRow]) -> int:
            start = time.thread_time()
            try:
                return super().enqueue(rows)
            finally:
                self.enqueue_cpu += time.thread_time() - start

    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if int(c) <= args.rows} | {args.rows})
    result: dict[str, object] = {"rows": args.rows}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        config = demo_config(Path(tmp), database_url="sqlite:///predictions.db", drift={"report": False})
        settings = load_settings(config)
        parts = build(settings)  # model, reference, estimation: what the service process holds in memory
        db = open_database(settings)
        db.ensure_schema()
        store = PredictionStore(db)
        plog_cfg = settings.prediction_log
        plog = TimedLog(store, queue_size=plog_cfg.queue_size, batch_size=plog_cfg.batch_size,
                        flush_interval=plog_cfg.flush_interval_seconds)
        service = PredictionService(parts.model, settings.model.version, plog)
        plog.start()
        traffic = Traffic("none", seed=0)
        pool = [traffic.records(args.batch)[0] for _ in range(8)]
        result["rss_mb_at_start"] = rss_mb()
        assert plog._thread is not None and plog._thread.ident is not None
        writer_clock = time.pthread_getcpuclockid(plog._thread.ident)
        writer_cpu_start = time.clock_gettime(writer_clock)
        sent = 0
        started = time.perf_counter()
        rss: dict[int, float] = {}
        for checkpoint in checkpoints:
            while sent < checkpoint:
                n = min(args.batch, checkpoint - sent)
                service.predict(pool[(sent // args.batch) % len(pool)][:n])
                sent += n
                while plog.queued > args.max_queued:
                    time.sleep(0.005)
            while plog.queued:
                time.sleep(0.01)
            gc.collect()
            rss[checkpoint] = rss_mb()
            print(f"memory: {checkpoint} rows written={plog.written} rss={rss[checkpoint]:.1f} MiB "
                  f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - started
        writer_cpu = time.clock_gettime(writer_clock) - writer_cpu_start
        result.update(
            enqueue_us_per_row=plog.enqueue_cpu / args.rows * 1e6,
            writer_cpu_us_per_row=writer_cpu / max(1, plog.written) * 1e6,
            rss_mb_by_rows={str(k): v for k, v in rss.items()},
            written=plog.written,
            dropped=plog.dropped,
            table_rows=store.count(),
            seconds=elapsed,
            rows_per_second=args.rows / elapsed,
            db_mb=sum(p.stat().st_size for p in Path(tmp).glob("predictions.db*")) / 2**20,
        )
        times = []
        for _ in range(5):
            start = time.perf_counter()
            window = store.window(3000)
            times.append(time.perf_counter() - start)
        result["window_3000_ms"] = median(times) * 1000
        result["window_3000_rows"] = len(window)
        result["rss_mb_after_window"] = rss_mb()
        plog.stop(plog_cfg.shutdown_timeout_seconds)
        store.dispose()
        db.dispose()
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
