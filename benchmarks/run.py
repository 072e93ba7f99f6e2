"""The standard benchmark matrix: rokv, the raw-pyzmq ceiling and Redis, in
the same run, interleaved, medians of repeats, written into BENCHMARKS.md.

    pip install -e . redis hiredis && apt-get install redis-server   # Redis is optional
    python benchmarks/run.py                          # 10k and 1M keys, 3 runs of 3 s each
    python benchmarks/run.py --datasets 10k --reps 5 --duration 5
    python benchmarks/run.py --smoke --out /tmp/B.md  # a few seconds, correctness only (CI)

For each dataset and worker count it starts a rokv stack (rokv-broker and
rokv-workers) and a ceiling stack (benchmarks/ceiling.py) on free loopback
ports, and one redis-server, then runs every scenario of the matrix against
each system in turn, ``--reps`` times. Load comes from ``rokv bench`` (which
checks every answer: a wrong answer stops the run) and from the ceiling's and
Redis' own minimal clients. Every process it starts is stopped by PID.

Only the part of BENCHMARKS.md between ``<!-- perf:begin -->`` and
``<!-- perf:end -->`` is rewritten; the file and markers are created when
missing. ``--json`` also keeps every raw report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rokv import Client, ServiceUnavailable  # noqa: E402 - after sys.path is set

from benchmarks import redisbench  # noqa: E402 - after sys.path is set
from benchmarks.sections import write_block  # noqa: E402 - after sys.path is set

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
#: The old FastAPI app under wrk with 50 connections, as measured while
#: planning (issue 3); it is not part of this repository, so not re-measured.
FASTAPI_REQ_S = 6000.0
SAMPLE_KEYS = 100_000


@dataclass(frozen=True)
class Run:
    """One measurement of one system in one scenario."""

    scenario: str  # e.g. "2a"
    system: str  # rokv | ceiling | redis
    args: tuple[str, ...] = ()  # rokv bench / ceiling client arguments
    processes: int = 1
    pipeline: int = 1  # redis
    keys: int = 1  # redis


@dataclass
class Group:
    """Scenarios that share one pair of stacks (worker count, I/O threads)."""

    workers: int
    io_threads: int
    runs: list[Run] = field(default_factory=list)


SCENARIOS = {
    "1": "sequential get, one client",
    "2a": "get, 64 in flight, 1 process, coalescing on",
    "2b": "get, 64 in flight, 1 process, coalescing off",
    "2c": "get, 64 in flight, 2 processes, coalescing on",
    "2d": "get, 64 in flight, 2 processes, coalescing off",
    "2e": "get, 256 in flight, 1 process, coalescing on",
    "3a": "get_many of 100, one in flight",
    "3b": "get_many of 100, 16 in flight",
    "4a": "1 worker: get, 64 in flight, coalescing on",
    "4b": "1 worker: get, 64 in flight, coalescing off",
    "4c": "4 workers: get, 64 in flight, coalescing on",
    "4d": "4 workers: get, 64 in flight, coalescing off",
    "5c": "broker io-threads 2: get, 64 in flight, 2 processes, coalescing on",
    "5d": "broker io-threads 2: get, 64 in flight, 2 processes, coalescing off",
}
#: Which ceiling run a rokv scenario is compared with (coalescing has no
#: ceiling of its own: the ceiling sends one message per get).
CEILING_OF = {"2b": "2a", "2d": "2c", "4b": "4a", "4d": "4c", "5c": "2c", "5d": "2c"}


def ceilings(sid: str, *args: str) -> list[Run]:
    """The ceiling's three clients (blocking, asyncio over AsyncClient's
    transport, plain zmq.asyncio) under the same load."""
    return [
        Run(sid, "ceiling", args),
        Run(sid, "ceiling-drain", (*args, "--asyncio", "drain")),
        Run(sid, "ceiling-zmq", (*args, "--asyncio", "zmq")),
    ]


def matrix(smoke: bool, io_threads_group: bool, only_two_workers: bool = False) -> list[Group]:
    ceiling64 = ("--concurrency", "64")
    two = Group(
        2,
        1,
        [
            Run("1", "rokv", ("--client", "sync", "-c", "1")),
            Run("1", "ceiling", ("--concurrency", "1")),
            Run("1", "redis"),
            Run("2a", "rokv", ("-c", "64")),
            Run("2b", "rokv", ("-c", "64", "--no-coalesce")),
            *ceilings("2a", *ceiling64),
            Run("2a", "redis", pipeline=64),
            Run("2c", "rokv", ("-c", "64", "-p", "2")),
            Run("2d", "rokv", ("-c", "64", "-p", "2", "--no-coalesce")),
            *ceilings("2c", *ceiling64, "--processes", "2"),
            Run("2c", "redis", processes=2, pipeline=64),
            Run("2e", "rokv", ("-c", "256")),
            *ceilings("2e", "--concurrency", "256")[:2],
            Run("2e", "redis", pipeline=256),
            Run("3a", "rokv", ("--client", "sync", "-c", "1", "-k", "100")),
            Run("3a", "ceiling", ("--concurrency", "1", "--keys", "100")),
            Run("3a", "redis", keys=100),
            Run("3b", "rokv", ("-c", "16", "-k", "100")),
            *ceilings("3b", "--concurrency", "16", "--keys", "100"),
            Run("3b", "redis", pipeline=16, keys=100),
        ],
    )
    if smoke:
        keep = {"1", "2a", "2b", "3b"}
        two.runs = [r for r in two.runs if r.scenario in keep]
        return [two]
    groups = [two]
    if only_two_workers:
        return groups
    for workers, on, off in ((1, "4a", "4b"), (4, "4c", "4d")):
        groups.append(
            Group(
                workers,
                1,
                [
                    Run(on, "rokv", ("-c", "64")),
                    Run(off, "rokv", ("-c", "64", "--no-coalesce")),
                    *ceilings(on, *ceiling64)[:2],
                ],
            )
        )
    if io_threads_group:
        groups.append(
            Group(
                2,
                2,
                [
                    Run("5c", "rokv", ("-c", "64", "-p", "2")),
                    Run("5d", "rokv", ("-c", "64", "-p", "2", "--no-coalesce")),
                ],
            )
        )
    return groups


# ---------------------------------------------------------------- processes


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Stack:
    """A broker and workers, rokv's or the ceiling's, stopped by PID."""

    def __init__(self, kind: str, workers: int, data: str, io_threads: int, log_dir: Path) -> None:
        self.kind = kind
        self.frontend, self.backend = free_endpoint(), free_endpoint()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROKV_")}
        env["PYTHONUNBUFFERED"] = "1"
        if kind == "rokv":
            broker = [
                sys.executable,
                "-m",
                "rokv.broker",
                "--frontend",
                self.frontend,
                "--backend",
                self.backend,
                "--io-threads",
                str(io_threads),
            ]
            worker = [sys.executable, "-m", "rokv.worker", "--backend", self.backend, "--data", data]
        else:
            ceiling = str(REPO / "benchmarks" / "ceiling.py")
            broker = [
                sys.executable,
                ceiling,
                "broker",
                "--frontend",
                self.frontend,
                "--backend",
                self.backend,
                "--io-threads",
                str(io_threads),
            ]
            worker = [sys.executable, ceiling, "worker", "--backend", self.backend, "--data", data]
        self.logs = [open(log_dir / f"{kind}-{workers}w-{i}.log", "wb") for i in range(workers + 1)]
        self.procs = [subprocess.Popen(broker, cwd=REPO, env=env, stdout=self.logs[0], stderr=subprocess.STDOUT)]
        for i in range(workers):
            extra = ["--name", f"{kind}-worker{i}"] if kind == "rokv" else []
            self.procs.append(
                subprocess.Popen(worker + extra, cwd=REPO, env=env, stdout=self.logs[i + 1], stderr=subprocess.STDOUT)
            )
        self.workers = workers

    def wait_ready(self, timeout: float) -> None:
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        with Client(self.frontend, timeout=0.5, retries=0) as client:
            while len(seen) < self.workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    self.stop()
                    raise RuntimeError(f"{self.kind} stack did not come up; see its logs")
                try:
                    seen.add(client.ping()["pid"])
                except ServiceUnavailable:
                    pass

    def worker_rss(self) -> list[int]:
        return [rss(p.pid) for p in self.procs[1:]]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in self.logs:
            log.close()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


# ---------------------------------------------------------------- measuring


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def measure(run: Run, stacks: dict[str, Stack], redis: Any, sample: str, duration: float) -> dict:
    """One run's report, with ``server_cpu_us_per_request``: the CPU time
    the broker and workers (or redis-server) spent per request."""
    if run.system == "redis":
        pids = [redis.proc.pid]
    else:
        pids = [p.pid for p in stacks[run.system.split("-")[0]].procs]
    before = cpu_seconds(pids)
    report = _measure(run, stacks, redis.port if redis else None, sample, duration)
    spent = cpu_seconds(pids) - before
    report["server_cpu_us_per_request"] = spent / report["requests"] * 1e6 if report["requests"] else None
    return report


def _measure(run: Run, stacks: dict[str, Stack], redis_port: int | None, sample: str, duration: float) -> dict:
    if run.system == "rokv":
        cmd = [
            sys.executable,
            "-m",
            "rokv",
            "bench",
            "--endpoint",
            stacks["rokv"].frontend,
            "--data",
            sample,
            "-d",
            str(duration),
            "--json",
            *run.args,
        ]
    elif run.system.startswith("ceiling"):
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "ceiling.py"),
            "client",
            "--endpoint",
            stacks["ceiling"].frontend,
            "--data",
            sample,
            "--duration",
            str(duration),
            *run.args,
        ]
    else:
        assert redis_port is not None
        return redisbench.run_clients(redis_port, sample, run.processes, run.pipeline, run.keys, duration)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=duration + 180)
    if not result.stdout.strip():
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    if report.get("wrong"):
        raise RuntimeError(f"rokv bench found {report['wrong']} wrong answers: {report['wrong_examples']}")
    return report


def write_sample(data: str, out: Path, count: int) -> str:
    """A seeded sample of the dataset's pairs for the clients: loading 1M keys
    in every client process would cost more than some runs."""
    from rokv.loadgen import load_expected

    table = load_expected(data)
    if len(table) <= count:
        return data
    rng = random.Random(20261127)
    keys = rng.sample(list(table), count)
    with open(out, "w", encoding="utf-8") as f:
        for key in keys:
            f.write(json.dumps({"key": key, "value": table[key]}) + "\n")
    return str(out)


def dataset_path(name: str, cache: Path) -> tuple[str, str]:
    """(what rokv workers serve, the same pairs as JSON for everyone else).
    A name ending in ``.rokv`` (``1m.rokv``) has rokv serve the compiled,
    memory-mapped form built by ``rokv build``."""
    base, compiled = (name[:-5], True) if name.lower().endswith(".rokv") else (name, False)
    if base == "10k":
        source = str(REPO / "data" / "example.json")
    else:
        count = {"1m": 1_000_000, "100k": 100_000}.get(base.lower())
        if count is None:
            raise SystemExit(f"unknown dataset {name!r}; use 10k, 100k or 1m, optionally with .rokv")
        path = cache / f"{base.lower()}.jsonl"
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr)
            subprocess.run(
                [sys.executable, str(REPO / "data" / "generate.py"), "--count", str(count), "-o", str(path)],
                check=True,
                cwd=REPO,
            )
        source = str(path)
    if not compiled:
        return source, source
    built = cache / f"{base.lower()}.rokv"
    if not built.exists():
        print(f"building {built} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "rokv", "build", "-q", "-o", str(built), source], check=True, cwd=REPO)
    return str(built), source


def run_dataset(name: str, args: argparse.Namespace, cache: Path, log_dir: Path) -> dict[str, Any]:
    served, data = dataset_path(name, cache)
    sample = write_sample(data, cache / f"{name}-sample.jsonl", SAMPLE_KEYS)
    results: dict[tuple[str, str], list[dict]] = {}
    memory: dict[str, Any] = {}
    redis = None
    why_no_redis = redisbench.available() if not args.no_redis else "not asked for (--no-redis)"
    if why_no_redis is None:
        from rokv.loadgen import load_expected

        redis = redisbench.RedisServer(log_dir / f"redis-{name}.log")
        redis.load(load_expected(data))
        memory["redis_rss"] = redis.rss()
    try:
        for group in matrix(
            args.smoke,
            io_threads_group=(name == "10k" and not args.no_io_threads),
            only_two_workers=args.two_workers_only or name.lower().endswith(".rokv"),
        ):
            runs = [r for r in group.runs if r.system != "redis" or redis is not None]
            needs = {r.system.split("-")[0] for r in runs} - {"redis"}
            stacks = {
                kind: Stack(kind, group.workers, served if kind == "rokv" else data, group.io_threads, log_dir)
                for kind in sorted(needs)
            }
            try:
                for stack in stacks.values():
                    stack.wait_ready(args.start_timeout)
                for rep in range(args.reps):
                    for run in runs:
                        label = f"{name} {SCENARIOS[run.scenario][:48]:48} {run.system:8} run {rep + 1}"
                        print(label, end=" ", file=sys.stderr, flush=True)
                        report = measure(run, stacks, redis, sample, args.duration)
                        results.setdefault((run.scenario, run.system), []).append(report)
                        print(
                            f"{report['requests_per_s']:>10,.0f} req/s {report['keys_per_s']:>11,.0f} keys/s "
                            f"p50 {report['latency_ms']['p50']:.3f} ms  CPU µs/req client "
                            f"{report['client_cpu_us_per_request'] or 0:.0f} server "
                            f"{report['server_cpu_us_per_request'] or 0:.0f}",
                            file=sys.stderr,
                            flush=True,
                        )
                # After the load: a memory-mapped dataset is only resident once touched.
                if group.workers == 2 and group.io_threads == 1:
                    memory.update({f"{k}_worker_rss": s.worker_rss() for k, s in stacks.items()})
            finally:
                for stack in stacks.values():
                    stack.stop()
    finally:
        if redis is not None:
            redis.stop()
    return {
        "dataset": name,
        "path": served,
        "keys": count_keys(data),
        "results": results,
        "memory": memory,
        "redis": why_no_redis,
    }


def count_keys(data: str) -> int:
    from rokv.loadgen import load_expected

    return len(load_expected(data))


# ---------------------------------------------------------------- reporting


def median(reports: list[dict], key: str, sub: str | None = None) -> float:
    values = [r[key][sub] if sub else r[key] for r in reports]
    return statistics.median(v for v in values if v is not None)


def fmt_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def cell(reports: list[dict] | None, batched: bool) -> str:
    if not reports:
        return "n/a"
    rate = median(reports, "keys_per_s" if batched else "requests_per_s")
    unit = "keys/s" if batched else "req/s"
    return f"{fmt_rate(rate)} {unit}, p50 {median(reports, 'latency_ms', 'p50'):.2f} ms"


def ratio(a: list[dict] | None, b: list[dict] | None, key: str, sub: str | None = None) -> float | None:
    if not a or not b:
        return None
    return median(a, key, sub) / median(b, key, sub)


def fmt_ratio(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def dataset_section(ds: dict[str, Any], reps: int) -> list[str]:
    res = ds["results"]
    form = "compiled .rokv file, memory-mapped" if ds["path"].endswith(".rokv") else "JSON loaded into a dict"
    lines = [
        f"### {ds['keys']:,} keys (rokv workers serve the {form})",
        "",
        "| # | scenario | rokv | ceiling (raw pyzmq) | rokv ÷ ceiling (rate; p50) | ceiling, asyncio clients: "
        "AsyncClient's transport; plain zmq.asyncio "
        "| Redis (redis-py + hiredis) | rokv ÷ Redis | CPU µs per request: rokv client / server; "
        "ceiling client / server |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sid, title in SCENARIOS.items():
        rokv = res.get((sid, "rokv"))
        if not rokv:
            continue
        batched = sid.startswith("3")
        key = "keys_per_s" if batched else "requests_per_s"
        ceiling_sid = CEILING_OF.get(sid, sid)
        ceiling = res.get((ceiling_sid, "ceiling"))
        redis = res.get((sid, "redis"))
        rate = ratio(rokv, ceiling, key)
        lat = ratio(rokv, ceiling, "latency_ms", "p50")
        vs_ceiling = "n/a" if rate is None else f"{rate:.2f}; p50 ×{lat:.2f}"
        if ceiling_sid != sid and ceiling:
            vs_ceiling += f" (vs {ceiling_sid})"
        cpu = f"{median(rokv, 'client_cpu_us_per_request'):.0f} / {median(rokv, 'server_cpu_us_per_request'):.0f}"
        if ceiling:
            cpu += (
                f"; {median(ceiling, 'client_cpu_us_per_request'):.0f} / "
                f"{median(ceiling, 'server_cpu_us_per_request'):.0f}"
            )
        aio_cell = "n/a"
        drain, plain = res.get((ceiling_sid, "ceiling-drain")), res.get((ceiling_sid, "ceiling-zmq"))
        if drain:
            aio_cell = f"{cell(drain, batched)} (rokv ×{ratio(rokv, drain, key):.2f})"
            if plain:
                aio_cell += f"; {fmt_rate(median(plain, key))} (rokv ×{ratio(rokv, plain, key):.2f})"
        lines.append(
            f"| {sid} | {title} | {cell(rokv, batched)} | {cell(ceiling, batched) if ceiling else 'n/a'} | "
            f"{vs_ceiling} | {aio_cell} | {cell(redis, batched)} | {fmt_ratio(ratio(rokv, redis, key))} "
            f"| {cpu} |"
        )
    lines += ["", *targets(res), ""]
    memory = ds["memory"]
    if memory.get("rokv_worker_rss"):
        rokv_rss = statistics.median(memory["rokv_worker_rss"])
        ceil_rss = statistics.median(memory.get("ceiling_worker_rss") or [0])
        line = (
            f"Memory, after the load: rokv worker RSS {rokv_rss / 2**20:.0f} MiB "
            f"({rokv_rss / ds['keys']:.0f} bytes a key, interpreter included); "
            f"ceiling worker (plain dict of str) {ceil_rss / 2**20:.0f} MiB "
            f"({ceil_rss / ds['keys']:.0f} bytes a key)"
        )
        if memory.get("redis_rss"):
            redis_rss = memory["redis_rss"]
            line += f"; redis-server {redis_rss / 2**20:.0f} MiB ({redis_rss / ds['keys']:.0f} bytes a key)"
        lines += [line + ".", ""]
    if ds["redis"]:
        lines += [f"Redis comparison skipped: {ds['redis']}.", ""]
    return lines


def targets(res: dict) -> list[str]:
    def get(sid: str, system: str) -> list[dict] | None:
        return res.get((sid, system))

    rows = []
    failed_ceiling = []
    for sid in SCENARIOS:
        rokv, ceiling = get(sid, "rokv"), get(CEILING_OF.get(sid, sid), "ceiling")
        if not rokv or not ceiling:
            continue
        key = "keys_per_s" if sid.startswith("3") else "requests_per_s"
        r, lat = ratio(rokv, ceiling, key), ratio(rokv, ceiling, "latency_ms", "p50")
        if r is not None and lat is not None and (r < 0.9 or lat > 1.15):
            failed_ceiling.append(f"{sid} ({r:.2f}, p50 ×{lat:.2f})")
    rows.append(
        (
            "every scenario ≥ 0.90 × ceiling's rate and p50 ≤ 1.15 × ceiling's",
            "missed in " + ", ".join(failed_ceiling) if failed_ceiling else "met",
        )
    )
    # Not an issue target: how far AsyncClient is from the least an asyncio
    # client can do, which tells its own overhead apart from asyncio's.
    against_floor = []
    for sid in SCENARIOS:
        rokv, drain = get(sid, "rokv"), get(CEILING_OF.get(sid, sid), "ceiling-drain")
        if rokv and drain:
            key = "keys_per_s" if sid.startswith("3") else "requests_per_s"
            against_floor.append(f"{sid} {ratio(rokv, drain, key):.2f}")
    if against_floor:
        rows.append(
            (
                "(for reading, not a target) AsyncClient scenarios ÷ the least-work asyncio client, same transport",
                ", ".join(against_floor),
            )
        )
    for sid in ("3a", "3b"):
        r = ratio(get(sid, "rokv"), get(sid, "redis"), "keys_per_s")
        if r is not None:
            rows.append((f"{sid}: ≥ 2 × Redis MGET keys/s", f"{r:.2f} × — {'met' if r >= 2 else 'missed'}"))
    # The target names "64 or more concurrent callers" and a Redis pipeline of
    # 64; 2e (256 callers) is also set against a pipeline of 256, which is the
    # like-for-like comparison.
    for sid, ceil, redis_sids in (("2a", "2a", ("2a",)), ("2c", "2c", ("2c",)), ("2e", "2e", ("2a", "2e"))):
        rokv, ceiling = get(sid, "rokv"), get(ceil, "ceiling")
        r1 = ratio(rokv, ceiling, "requests_per_s")
        if r1 is None:
            continue
        text = f"{r1:.2f} × ceiling at the same in-flight count — {'met' if r1 >= 3 else 'missed'}"
        for redis_sid in redis_sids:
            redis = get(redis_sid, "redis")
            r2 = ratio(rokv, redis, "requests_per_s")
            if r2 is not None:
                depth, procs = redis[0]["config"]["concurrency"], redis[0]["config"]["processes"]
                text += (
                    f"; {r2:.2f} × Redis pipeline of {depth}{' from 2 processes' if procs == 2 else ''} — "
                    f"{'met' if r2 > 1 else 'missed'}"
                )
        rows.append((f"{sid}: coalesced get ≥ 3 × uncoalesced ceiling and > Redis pipeline", text))
    for sid in ("2a", "2c"):
        rokv = get(sid, "rokv")
        if rokv:
            r = median(rokv, "requests_per_s") / FASTAPI_REQ_S
            rows.append(
                (
                    f"{sid}: ≥ 10 × the FastAPI app's {FASTAPI_REQ_S:,.0f} req/s (planning figure)",
                    f"{r:.1f} × — {'met' if r >= 10 else 'missed'}",
                )
            )
    return ["| target | measured |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]


def machine() -> str:
    import msgpack
    import zmq

    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (
        f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), "
        f"msgpack {'.'.join(map(str, msgpack.version))}"
    )
    if redisbench.available() is None:
        text += f", {redisbench.versions()}"
    return text


def render(datasets: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        BEGIN,
        "## Throughput and latency: rokv, the raw-pyzmq ceiling and Redis",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {machine()}.",
        "",
        f"Each figure is the median of {args.reps} runs of {args.duration:g} s; every scenario ran against "
        "each system in turn, repeat after repeat, so that the ratios compare like with like. The machine is "
        "shared and noisy: differences under about 25% between separate runs mean nothing; ratios within "
        "this run are the figures to read. 2 workers unless stated; broker I/O threads 1 unless stated. "
        "rokv's load comes from `rokv bench`, which checked every answer (none was wrong); the ceiling "
        "(`benchmarks/ceiling.py`) is the same topology doing only msgpack decode, one dict lookup and "
        "msgpack encode, with a client that only packs, sends, receives and unpacks; it has no coalescing, "
        "so coalesced scenarios are compared with its uncoalesced run. Two asyncio clients do the same least "
        "work: one over the transport AsyncClient uses (ZMQ_FD in `loop.add_reader`, replies drained in bulk, "
        "sends gathered per loop turn), the floor for an asyncio client, and one over plain `zmq.asyncio` "
        "(a future per message). Redis runs use a pipeline of 64 GETs for 64 in flight, of 256 for 256, and "
        "a pipeline of 16 MGETs for 16 in flight.",
        "",
    ]
    if args.smoke:
        lines += ["**Smoke run: durations too short to mean anything; correctness check only.**", ""]
    for ds in datasets:
        lines += dataset_section(ds, args.reps)
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this script's block of ``path`` (``section`` holds its markers)."""
    write_block(path, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        default="10k,1m",
        help="comma-separated: 10k, 100k, 1m, each optionally "
        "with .rokv to serve the compiled form (default %(default)s)",
    )
    parser.add_argument("--reps", type=int, default=3, help="runs of each scenario (default %(default)s)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (default %(default)s)")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update")
    parser.add_argument("--json", default=None, help="also write every raw report to this file")
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "rokv-bench"),
        help="where generated datasets are kept (default %(default)s)",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis comparison")
    parser.add_argument("--no-io-threads", action="store_true", help="skip the broker io-threads 2 runs")
    parser.add_argument(
        "--two-workers-only",
        action="store_true",
        help="skip the 1- and 4-worker runs (always skipped for .rokv datasets)",
    )
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds for stacks to come up")
    parser.add_argument(
        "--smoke", action="store_true", help="10k keys, 1 run of 0.3 s, a few scenarios: checks that everything runs"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.reps, args.duration = "10k", 1, min(args.duration, 0.3)
        args.no_io_threads = True
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="rokv-bench-logs-") as logs:
        datasets = [run_dataset(name.strip(), args, cache, Path(logs)) for name in args.datasets.split(",")]
    write_section(Path(args.out), render(datasets, args, command.strip()))
    if args.json:
        raw = [{**ds, "results": {f"{s}/{k}": v for (s, k), v in ds["results"].items()}} for ds in datasets]
        Path(args.json).write_text(json.dumps(raw, indent=1, sort_keys=True), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
