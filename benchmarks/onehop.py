"""One hop: rokv's real clients straight to the workers (direct=True) and
through the broker, against Redis through redis-py, interleaved in one run.

    python benchmarks/onehop.py [--reps 3] [--duration 3] [--http-duration 5] [--out BENCHMARKS.md]

Starts a broker and 2 workers serving direct endpoints (compiled loop, the
bundled dataset), a redis-server of its own on a free loopback port (when
redis-server, redis-py and hiredis are installed) loaded with the same keys,
and measures the issue's five load shapes with ``rokv bench``'s machinery (the
real ``Client``/``AsyncClient``, every answer checked against the dataset) and
the same shapes through redis-py (every value checked too):

- ``Client.get`` one at a time; 8 processes each doing that; ``get_many`` of
  100 one at a time (Redis: MGET of 100);
- ``AsyncClient.get`` with 64 callers, coalesced (Redis: a pipeline of 64
  GETs); ``AsyncClient.get_many`` of 100 with 16 in flight (Redis: a pipeline
  of 16 MGETs of 100);

then, when wrk is installed, the HTTP gateway with and without ROKV_DIRECT=1
(``POST /get_value`` of random keys, checked by benchmarks/wrk_check.lua).
Each rep runs every system once per shape, in a rotating order; the table
gives medians and the ratios of medians, and is written into the ``onehop``
section of BENCHMARKS.md with the command. Every process it starts is stopped
by PID. Exit 1 when an answer was wrong or lost (nothing is written then).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rokv.bench import run_bench  # noqa: E402 - after sys.path is set
from rokv.loadgen import Config, load_expected, summary  # noqa: E402 - after sys.path is set

from benchmarks import httpbench, redisbench  # noqa: E402 - after sys.path is set
from benchmarks.ceiling import run_forked  # noqa: E402 - after sys.path is set
from benchmarks.sections import write_block  # noqa: E402 - after sys.path is set

DATA = str(REPO / "data" / "example.json")
BEGIN, END = "<!-- onehop:begin -->", "<!-- onehop:end -->"


@dataclass(frozen=True)
class Shape:
    name: str
    label: str
    client: str  # "sync" or "async"
    processes: int
    concurrency: int
    keys: int
    redis: str  # what Redis does for it
    unit: str  # "req/s" or "keys/s"
    #: The issue's targets: direct at least this times Redis (and times brokered).
    target_redis: float
    target_broker: float | None = None


SHAPES = (
    Shape("get", "`Client.get`, one at a time", "sync", 1, 1, 1, "GET", "req/s", 1.0, 1.5),
    Shape("get8", "8 processes, each one `Client.get` at a time", "sync", 8, 1, 1, "GET", "req/s", 0.9),
    Shape("many", "`get_many` of 100, one at a time", "sync", 1, 1, 100, "MGET of 100", "keys/s", 1.0),
    Shape("aget", "`AsyncClient.get`, 64 callers (coalesced)", "async", 1, 64, 1, "pipeline of 64 GETs", "req/s", 1.0),
    Shape(
        "amany",
        "`AsyncClient.get_many` of 100, 16 in flight",
        "async",
        1,
        16,
        100,
        "pipeline of 16 MGETs of 100",
        "keys/s",
        1.5,
    ),
)
PATHS = ("direct", "broker", "redis")


# ------------------------------------------------------------------ Redis


def run_redis(port: int, expected: dict[str, str], shape: Shape, duration: float) -> dict[str, Any]:
    pipeline = shape.concurrency if shape.client == "async" else 1
    keys = list(expected)
    args = [(port, keys, pipeline, shape.keys, duration, 7000 + i, expected) for i in range(shape.processes)]
    total = run_forked(redisbench.client_loop, args, duration + 60)  # every value checked
    cfg = Config(data=DATA, processes=shape.processes, concurrency=pipeline, keys_per_request=shape.keys)
    return summary(cfg, total)


# ------------------------------------------------------------------ rokv


def run_rokv(frontend: str, shape: Shape, duration: float, direct: bool) -> dict[str, Any]:
    cfg = Config(
        endpoint=frontend,
        data=DATA,
        processes=shape.processes,
        concurrency=shape.concurrency,
        keys_per_request=shape.keys,
        duration=duration,
        client=shape.client,
        direct=direct,
    )
    return summary(cfg, run_bench(cfg))


def start_pool(procs: httpbench.Procs, workers: int) -> str:
    """A broker and ``workers`` workers with direct endpoints; the frontend."""
    from rokv import Client, ServiceUnavailable
    from rokv.directory import directory_endpoint

    while True:
        frontend = f"tcp://127.0.0.1:{httpbench.free_port()}"
        directory = directory_endpoint(frontend)
        if directory is not None and _port_free(int(directory.rpartition(":")[2])):
            break
    backend = f"tcp://127.0.0.1:{httpbench.free_port()}"
    py = sys.executable
    procs.start("broker", [py, "-m", "rokv.broker", "--frontend", frontend, "--backend", backend], httpbench.env())
    for i in range(workers):
        procs.start(
            f"worker{i}",
            [py, "-m", "rokv.worker", "--backend", backend, "--data", DATA, "--name", f"worker{i}"]
            + ["--direct-bind", "tcp://127.0.0.1:*"],
            httpbench.env(),
        )
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    with Client(frontend, timeout=0.5, retries=0) as client:
        while len(seen) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the rokv pool did not come up")
            try:
                info = client.ping()
            except ServiceUnavailable:
                continue
            if info.get("direct"):
                seen.add(info["direct"])
    return frontend


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------ HTTP


def run_http(procs: httpbench.Procs, frontend: str, keys_file: Path, direct: bool, args: argparse.Namespace) -> dict:
    port = httpbench.free_port()
    environ = httpbench.env(ROKV_ENDPOINT=frontend, ROKV_DIRECT="1" if direct else "0")
    proc = procs.start(
        f"gateway-{'direct' if direct else 'broker'}",
        [sys.executable, "-m", "rokv.gateway", "--bind", f"127.0.0.1:{port}"],
        environ,
    )
    try:
        httpbench.http_ready(port, "gateway", time.monotonic() + 30)
        time.sleep(0.5)
        return httpbench.run_wrk(port, "/get_value", keys_file, args.http_duration, 50, 2)
    finally:
        procs.stop(proc)


# ------------------------------------------------------------------ report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def figure(result: dict[str, Any], shape: Shape) -> float:
    return result["keys_per_s"] if shape.unit == "keys/s" else result["requests_per_s"]


def fmt(value: float) -> str:
    if value != value:  # nan
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value / 1e3:.1f}k"


def ratio(a: float, b: float) -> str:
    return "—" if not (a == a and b == b and b) else f"{a / b:.2f}×"


def render(results: dict, http: dict, args: argparse.Namespace, command: str, load: tuple[float, ...]) -> str:
    import zmq

    versions = f"{os.cpu_count()} cores, Python {platform.python_version()}, pyzmq {zmq.__version__}"
    if "redis" in args.paths:
        versions += ", " + redisbench.versions()
    lines = [
        BEGIN,
        "## One hop: clients straight to the workers",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {versions}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} when it started. The machine "
        "was shared with other work while this ran: the figures are noisy (differences under about 25% mean "
        "nothing); ratios come from medians of interleaved runs in this one run.",
        "",
        f"A broker and 2 workers (compiled loop, data/example.json, direct endpoints on loopback) and a "
        f"redis-server of the same keys, all on the same 2 cores as the clients. Medians of {args.reps} runs of "
        f"{args.duration:g} s, paths interleaved run after run; every answer was checked against the dataset "
        "(rokv: `rokv bench`'s checks; Redis: each value compared) and none was wrong or lost.",
        "",
        "| load | rokv direct | rokv through the broker | Redis (redis-py) | direct / Redis | target | "
        "direct / broker | p50 µs direct / broker / Redis |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        runs = results[shape.name]
        rate = {path: med([figure(r, shape) for r in runs[path]]) for path in PATHS}
        p50 = {path: med([r["latency_ms"]["p50"] * 1000 for r in runs[path]]) for path in PATHS}
        target = f"≥ {shape.target_redis:g}×" + (
            f" (and ≥ {shape.target_broker:g}× broker)" if shape.target_broker else ""
        )
        lines.append(
            f"| {shape.label} | {fmt(rate['direct'])} {shape.unit} | {fmt(rate['broker'])} | "
            f"{fmt(rate['redis'])} ({shape.redis}) | {ratio(rate['direct'], rate['redis'])} | {target} | "
            f"{ratio(rate['direct'], rate['broker'])} | "
            + " / ".join("—" if p50[p] != p50[p] else f"{p50[p]:.0f}" for p in PATHS)
            + " |"
        )
    lines += [
        "",
        "CPU per request, in µs, of the clients (`rokv bench`'s or the Redis loop's processes, every thread) and "
        "of the servers (rokv: the broker and both workers; Redis: redis-server), medians of the same runs:",
        "",
        "| load | clients: direct / broker / Redis | servers: direct / broker / Redis |",
        "|---|---|---|",
    ]
    for shape in SHAPES:
        runs = results[shape.name]
        cells = []
        for field in ("client_cpu_us_per_request", "server_cpu_us_per_request"):
            values = [med([r.get(field) or math.nan for r in runs[path]]) for path in PATHS]
            cells.append(" / ".join("—" if v != v else f"{v:.0f}" for v in values))
        lines.append(f"| {shape.label} | {cells[0]} | {cells[1]} |")
    if http:
        lines += [
            "",
            f"HTTP gateway (rokv-http, 1 process) under wrk, 50 connections, 2 threads, POST /get_value of random "
            f"keys, medians of {args.reps} runs of {args.http_duration:g} s, each response checked by "
            "benchmarks/wrk_check.lua:",
            "",
            "| gateway | req/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for direct in (True, False):
            runs = http[direct]
            name = "ROKV_DIRECT=1 (straight to the workers)" if direct else "through the broker (default)"
            lines.append(
                f"| {name} | {med([r['req_s'] for r in runs]):,.0f} | {med([r['p50_ms'] for r in runs]):.2f} | "
                f"{med([r['p99_ms'] for r in runs]):.2f} |"
            )
        direct_rate, broker_rate = (med([r["req_s"] for r in http[d]]) for d in (True, False))
        lines.append(f"\nDirect / broker: {ratio(direct_rate, broker_rate)} req/s.")
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of each path and shape (default %(default)s)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (default %(default)s)")
    parser.add_argument("--http-duration", type=float, default=5.0, help="seconds per wrk run (default %(default)s)")
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES), help="which load shapes (default all)")
    parser.add_argument("--no-http", action="store_true", help="leave the HTTP gateway out")
    parser.add_argument("--out", default=None, help="markdown file whose onehop section to write (default: none)")
    args = parser.parse_args(argv)
    command = "python benchmarks/onehop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shapes = [s for s in SHAPES if s.name in args.shapes.split(",")]
    why = redisbench.available()
    args.paths = PATHS if why is None else PATHS[:2]
    if why is not None:
        print(f"Redis comparison skipped: {why}", file=sys.stderr)
    http_possible = not args.no_http and shutil.which("wrk") is not None
    load = os.getloadavg()
    expected = load_expected(DATA)
    results: dict[str, dict[str, list[dict]]] = {s.name: {p: [] for p in PATHS} for s in SHAPES}
    http: dict[bool, list[dict]] = {True: [], False: []} if http_possible else {}
    bad = 0
    with tempfile.TemporaryDirectory(prefix="rokv-onehop-") as tmp:
        procs = httpbench.Procs(Path(tmp))
        redis_server = None
        try:
            frontend = start_pool(procs, workers=2)
            if why is None:
                redis_server = redisbench.RedisServer(Path(tmp) / "redis.log")
                redis_server.load(expected)
            keys_file = Path(tmp) / "keys.txt"
            keys_file.write_text("\n".join(expected) + "\n", encoding="utf-8")
            for rep in range(args.reps):
                for shape in shapes:
                    order = list(args.paths[rep % len(args.paths) :] + args.paths[: rep % len(args.paths)])
                    for path in order:
                        if path == "redis":
                            assert redis_server is not None
                            servers = [redis_server.proc.pid]
                        else:
                            servers = [proc.pid for proc in procs.procs]  # the broker and the workers
                        before = httpbench.cpu_seconds(servers)
                        if path == "redis":
                            assert redis_server is not None
                            result = run_redis(redis_server.port, expected, shape, args.duration)
                        else:
                            result = run_rokv(frontend, shape, args.duration, direct=path == "direct")
                        spent = httpbench.cpu_seconds(servers) - before
                        done = result["requests"]
                        result["server_cpu_us_per_request"] = spent / done * 1e6 if done else None
                        wrong = result["wrong"] + sum(result["errors"].values())
                        bad += wrong
                        results[shape.name][path].append(result)
                        print(
                            f"run {rep + 1}/{args.reps} {shape.name:6} {path:7} {figure(result, shape):>12,.0f} "
                            f"{shape.unit}  p50 {result['latency_ms']['p50'] * 1000:7.0f} us  wrong/lost {wrong}  "
                            f"cpu/req client {result['client_cpu_us_per_request'] or math.nan:.0f} us, "
                            f"servers {result['server_cpu_us_per_request'] or math.nan:.0f} us",
                            flush=True,
                        )
                if http_possible:
                    for direct in (True, False) if rep % 2 == 0 else (False, True):
                        result = run_http(procs, frontend, keys_file, direct, args)
                        bad += result["bad_status"] + result["bad_body"]
                        http[direct].append(result)
                        print(
                            f"run {rep + 1}/{args.reps} http   {'direct' if direct else 'broker':7} "
                            f"{result['req_s']:>12,.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
                            f"bad {result['bad_status'] + result['bad_body']}",
                            flush=True,
                        )
        finally:
            if redis_server is not None:
                redis_server.stop()
            procs.stop_all()
    for shape in shapes:
        rate = {p: med([figure(r, shape) for r in results[shape.name][p]]) for p in args.paths}
        line = f"{shape.label}: direct {rate['direct']:,.0f} {shape.unit}, broker {rate['broker']:,.0f}"
        if "redis" in rate:
            line += f", Redis {rate['redis']:,.0f}; direct/Redis {ratio(rate['direct'], rate['redis'])}"
        print(line + f"; direct/broker {ratio(rate['direct'], rate['broker'])}")
    if bad:
        print(f"{bad} answers were wrong or lost: figures not written", file=sys.stderr)
        return 1
    if args.out and len(shapes) == len(SHAPES):
        write_block(Path(args.out), BEGIN, END, render(results, http, args, command.strip(), load))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
