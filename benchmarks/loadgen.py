"""Closed-loop HTTP load generator, run as its own process: ``python -m benchmarks.loadgen ...``.

``--concurrency`` keep-alive connections to 127.0.0.1 each send one POST at a time (the next as soon as the answer
is in) for ``--warmup`` + ``--duration`` seconds, or until ``--max-requests``; latencies of the requests that
started after the warm-up are kept. A minimal HTTP/1.1 client on asyncio (uvloop when installed) keeps the
generator's own CPU cost small, which matters on a 2-core machine where it shares the cores with the server.
Prints one JSON object: requests, errors, seconds, throughput (requests/s), p50/p90/p99/max (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


async def _worker(
    idx: int, port: int, path: str, bodies: list[bytes], start_measure: float, stop_at: float,
    budget: list[int], latencies: list[float], errors: list[str], done_count: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n".encode()
    requests = [head + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]
    i = idx
    clock = time.perf_counter
    try:
        while budget[0] > 0:
            now = clock()
            if now >= stop_at:
                break
            budget[0] -= 1
            writer.write(requests[i % len(requests)])
            i += 1
            header = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in header.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            done = clock()
            done_count[0] += 1
            if now >= start_measure and done <= stop_at:
                if header[9:12] != b"200":
                    errors.append(header.split(b"\r\n", 1)[0].decode(errors="replace"))
                latencies.append(done - now)
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def run(port: int, path: str, bodies: list[bytes], concurrency: int, warmup: float, duration: float,
              max_requests: int) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    start_measure = start + warmup
    stop_at = start_measure + duration
    budget = [max_requests]
    done_count = [0]
    await asyncio.wait_for(
        asyncio.gather(*(
            _worker(i, port, path, bodies, start_measure, stop_at, budget, latencies, errors, done_count)
            for i in range(concurrency)
        )),
        timeout=warmup + duration + 30,
    )
    measured = min(duration, max(1e-9, time.perf_counter() - start_measure))
    ordered = sorted(latencies)
    ms = [x * 1000 for x in ordered]
    return {
        "requests": len(latencies),
        "requests_total": done_count[0],  # warm-up included
        "errors": len(errors),
        "error_sample": errors[:3],
        "seconds": measured,
        "throughput": len(latencies) / measured,
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "concurrency": concurrency,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--bodies", required=True, help="file with one JSON request body per line")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    with open(args.bodies, "rb") as fh:
        bodies = [line.rstrip(b"\n") for line in fh if line.strip()]
    coro = run(args.port, args.path, bodies, args.concurrency, args.warmup, args.duration, args.max_requests)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
