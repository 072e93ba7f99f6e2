"""Redis on the same keys and values, through redis-py with hiredis, for
comparison: sequential GET, pipelines of GETs, MGET one at a time or pipelined.

    python benchmarks/redisbench.py --data data/example.json --pipeline 64 --processes 2

starts a redis-server of its own on a free loopback port (stopped by PID at
the end), loads the dataset, runs, and prints one JSON line shaped like
``rokv bench --json``. ``benchmarks/run.py`` drives it the same way through
:class:`RedisServer` and :func:`run_clients`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rokv.loadgen import Config, Tally, load_expected, summary

from benchmarks.ceiling import run_forked


def available() -> str | None:
    """Why Redis cannot be compared here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    try:
        import redis  # noqa: F401 - imported only to see that it is there
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return "redis-py is not installed (pip install redis hiredis)"
    if not HIREDIS_AVAILABLE:
        return "hiredis is not installed (pip install hiredis)"
    return None


def versions() -> str:
    import hiredis
    import redis

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    server = next((w.split("=")[1] for w in out if w.startswith("v=")), "?")
    return f"redis-server {server}, redis-py {redis.__version__}, hiredis {hiredis.__version__}"


class RedisServer:
    """A redis-server on a free loopback port, without persistence."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def load(self, data: dict[str, str]) -> None:
        import redis

        r = redis.Redis(port=self.port)
        r.flushall()
        items = list(data.items())
        for start in range(0, len(items), 10_000):
            r.mset(dict(items[start : start + 10_000]))
        assert r.dbsize() == len(data)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def client_loop(
    port: int,
    keys: list[str],
    pipeline: int,
    per_request: int,
    duration: float,
    seed: int,
    expected: dict[str, str] | None = None,
) -> Tally:
    """GET (``per_request`` 1) or MGET of ``per_request`` keys, ``pipeline``
    commands per round trip (1: one at a time), for ``duration`` seconds.
    With ``expected`` (key -> value), every value is checked and a wrong one
    counted (:meth:`Tally.wrong_answer`)."""
    import random

    import redis

    rng = random.Random(seed)
    pool = [[keys[int(rng.random() * len(keys))] for _ in range(per_request)] for _ in range(4096)]
    want = [[expected[k].encode() for k in chosen] for chosen in pool] if expected is not None else None
    r = redis.Redis(port=port)
    r.ping()
    clock = time.perf_counter
    tally = Tally()
    i = 0
    cpu0, t0 = time.process_time(), clock()
    deadline = t0 + duration
    while clock() < deadline:
        started = clock()
        asked = []
        if pipeline == 1:
            asked.append(i & 4095)
            i += 1
            chosen = pool[asked[0]]
            got = [r.mget(chosen) if per_request > 1 else [r.get(chosen[0])]]
        else:
            pipe = r.pipeline(transaction=False)
            for _ in range(pipeline):
                asked.append(i & 4095)
                i += 1
                chosen = pool[asked[-1]]
                pipe.mget(chosen) if per_request > 1 else pipe.get(chosen[0])
            got = [x if per_request > 1 else [x] for x in pipe.execute()]
        took = clock() - started
        for answer, n in zip(got, asked):
            tally.record(took)
            if want is not None and answer != want[n]:
                tally.wrong_answer(f"redis: {answer!r:.60} != {want[n]!r:.60}")
        tally.requests += pipeline
    tally.elapsed = clock() - t0
    tally.cpu = time.process_time() - cpu0
    tally.keys = tally.requests * per_request
    tally.answers["value"] = tally.requests
    return tally


def run_clients(
    port: int, data: str, processes: int, pipeline: int, per_request: int, duration: float, seed: int = 1
) -> dict[str, Any]:
    keys = list(load_expected(data))
    arglists = [(port, keys, pipeline, per_request, duration, seed * 1000 + i) for i in range(processes)]
    total = run_forked(client_loop, arglists, duration + 60)
    cfg = Config(
        data=data,
        processes=processes,
        concurrency=pipeline,
        keys_per_request=per_request,
        duration=duration,
        client="redis-py",
    )
    return summary(cfg, total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    why = available()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 1
    server = RedisServer(Path("/tmp") / f"rokv-redis-{time.time_ns()}.log")
    try:
        server.load(load_expected(args.data))
        print(
            json.dumps(
                run_clients(server.port, args.data, args.processes, args.pipeline, args.keys, args.duration),
                sort_keys=True,
            )
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
