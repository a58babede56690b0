"""Closed-loop HTTP load generator, run as its own process: ``python -m benchmarks.loadgen ...``.

``--concurrency`` keep-alive connections to 127.0.0.1 each send one POST at a time (the next as soon as the answer
is in) for ``--warmup`` + ``--duration`` seconds, or until ``--max-requests``; latencies of the requests that
started after the warm-up are kept. A minimal HTTP/1.1 client on asyncio (uvloop when installed) keeps the
generator's own CPU cost small, which matters on a 2-core machine where it shares the cores with the server.
Prints one JSON object: requests, errors, seconds, throughput (requests/s), p50/p90/p99/max (ms), and the count of
every status answered (``statuses``, warm-up included).

``--bodies FILE --path P``: one JSON body per line, each posted to P. ``--items FILE`` instead: one JSON list per
line, the requests of one item (``{"path", "headers", "body"}`` each), sent one after the other on one connection;
an item counts as one request, its latency from its first request's start to its last answer (a CloudEvent request
and its response, say). ``--unique TOKEN``: every occurrence of TOKEN in an item (headers and body) is replaced, at
each send, by a value of the same length no other send of the run has, so that a server that deduplicates by
request id or event id sees new ones each time (``--run-tag`` sets it apart from other runs against the server).
``--expect``: the status of a success (default 200); ``--tolerate``: statuses counted but not errors. ``--rate R``:
each connection sends an item every 1/R seconds (or as soon as its previous answer is in, when that comes later)
instead of a closed loop.
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


class Unique:
    """Values of ``len(token)`` characters, one per send: ``<run tag>.<connection>.<counter>``, padded with '_'."""

    def __init__(self, token: bytes, run_tag: str) -> None:
        if not token or "_" in run_tag or "." in run_tag:
            raise ValueError("--unique needs a token, and --run-tag may not contain '_' or '.'")
        self.token = token
        self.run_tag = run_tag

    def value(self, idx: int, n: int) -> bytes:
        text = f"{self.run_tag}.{idx:x}.{n:x}"
        if len(text) > len(self.token):
            raise ValueError(f"--unique token of {len(self.token)} characters is too short for {text!r}")
        return text.rjust(len(self.token), "_").encode()


async def _worker(
    idx: int, port: int, items: list[list[bytes]], start_measure: float, stop_at: float, budget: list[int],
    latencies: list[float], errors: list[str], done_count: list[int], ok: frozenset[bytes], tolerated: frozenset[bytes],
    statuses: dict[str, int], unique: Unique | None, interval: float = 0.0,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = idx
    clock = time.perf_counter
    next_at = clock()
    try:
        while budget[0] > 0:
            if interval:
                if next_at >= stop_at:
                    break
                await asyncio.sleep(max(0.0, next_at - clock()))
                next_at += interval
            now = clock()
            if now >= stop_at:
                break
            budget[0] -= 1
            parts = items[i % len(items)]
            if unique is not None:
                value = unique.value(idx, i)
                parts = [p.replace(unique.token, value) for p in parts]
            i += 1
            failed = None
            for raw in parts:
                writer.write(raw)
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                status = header[9:12]
                statuses[status.decode()] = statuses.get(status.decode(), 0) + 1
                if status not in ok and status not in tolerated and failed is None:
                    failed = header.split(b"\r\n", 1)[0].decode(errors="replace") + " " + body[:200].decode(
                        errors="replace")
            done = clock()
            done_count[0] += 1
            if now >= start_measure and done <= stop_at:
                if failed is not None:
                    errors.append(failed)
                latencies.append(done - now)
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


def _request(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if not any(k.lower() == "content-type" for k in headers):
        head += "Content-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def run(port: int, path: str, bodies: list[bytes], concurrency: int, warmup: float, duration: float,
              max_requests: int, items: list[list[dict[str, object]]] | None = None, expect: tuple[int, ...] = (200,),
              tolerate: tuple[int, ...] = (), unique: Unique | None = None, rate: float = 0.0) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    if items is None:
        prepared = [[_request(port, path, {}, b)] for b in bodies]
    else:
        prepared = [[_request(port, str(r["path"]), dict(r.get("headers") or {}), str(r["body"]).encode())  # type: ignore[call-overload]
                     for r in item] for item in items]
    ok = frozenset(str(s).encode() for s in expect)
    tolerated = frozenset(str(s).encode() for s in tolerate)
    statuses: dict[str, int] = {}
    start = time.perf_counter()
    start_measure = start + warmup
    stop_at = start_measure + duration
    budget = [max_requests]
    done_count = [0]
    await asyncio.wait_for(
        asyncio.gather(*(
            _worker(i, port, prepared, start_measure, stop_at, budget, latencies, errors, done_count, ok, tolerated,
                    statuses, unique, 1.0 / rate if rate else 0.0)
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
        "statuses": statuses,  # every answer, warm-up included
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--bodies", help="file with one JSON request body per line, posted to --path")
    what.add_argument("--items", help="file with one JSON list of requests ({path, headers, body}) per line")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--expect", type=int, nargs="+", default=[200], help="the status(es) of a success")
    parser.add_argument("--tolerate", type=int, nargs="*", default=[], help="statuses counted, not errors")
    parser.add_argument("--unique", help="a token replaced at each send by a value unique to that send")
    parser.add_argument("--run-tag", default="r", help="sets this run's unique values apart from other runs'")
    parser.add_argument("--rate", type=float, default=0.0, help="items per second per connection; 0: closed loop")
    args = parser.parse_args(argv)
    bodies: list[bytes] = []
    items = None
    if args.bodies:
        with open(args.bodies, "rb") as fh:
            bodies = [line.rstrip(b"\n") for line in fh if line.strip()]
    else:
        with open(args.items, "rb") as fh:
            items = [json.loads(line) for line in fh if line.strip()]
    unique = Unique(args.unique.encode(), args.run_tag) if args.unique else None
    coro = run(args.port, args.path, bodies, args.concurrency, args.warmup, args.duration, args.max_requests, items,
               tuple(args.expect), tuple(args.tolerate), unique, args.rate)
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
