"""What a one-hop path would buy: least-work batched lookups sent straight to
a worker, against the same through the broker (two hops) and Redis MGET.

    python benchmarks/onehop.py [--reps 3] [--duration 2]

rokv's path is client -> broker -> worker -> broker -> client. This measures,
in one run and interleaved, the ceiling's blocking client sending mgets of 100
keys (one and 16 in flight) to: a least-work worker bound on a ROUTER that the
client connects to directly; the ceiling's broker with 2 least-work workers;
and redis-server (MGET through redis-py + hiredis), when installed. It answers
one question: would clients talking to workers directly reach the issue's
"2 x Redis MGET" target? Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rokv.loadgen import load_expected  # noqa: E402 - after sys.path is set

from benchmarks import redisbench  # noqa: E402 - after sys.path is set
from benchmarks.ceiling import client_loop, run_forked  # noqa: E402 - after sys.path is set

DATA = str(REPO / "data" / "example.json")
CEILING = str(REPO / "benchmarks" / "ceiling.py")


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    keys = list(load_expected(DATA))
    direct, front, back = free_endpoint(), free_endpoint(), free_endpoint()
    procs = [
        subprocess.Popen([sys.executable, CEILING, "worker", "--bind", "--backend", direct, "--data", DATA]),
        subprocess.Popen([sys.executable, CEILING, "broker", "--frontend", front, "--backend", back]),
        *(subprocess.Popen([sys.executable, CEILING, "worker", "--backend", back, "--data", DATA]) for _ in range(2)),
    ]
    redis = None
    if redisbench.available() is None:
        redis = redisbench.RedisServer(Path(tempfile.mkdtemp(prefix="rokv-onehop-")) / "redis.log")
        redis.load(load_expected(DATA))
    results: dict[tuple[int, str], list[float]] = {}
    try:
        time.sleep(2)  # workers load and connect
        for rep in range(args.reps):
            for in_flight in (1, 16):
                for name, endpoint in (("one hop (direct)", direct), ("two hops (broker)", front)):
                    tally = run_forked(
                        client_loop, [(endpoint, keys, in_flight, 100, args.duration, None, rep)], args.duration + 60
                    )
                    results.setdefault((in_flight, name), []).append(tally.keys / tally.elapsed)
                if redis is not None:
                    report = redisbench.run_clients(redis.port, DATA, 1, in_flight, 100, args.duration)
                    results.setdefault((in_flight, "Redis MGET"), []).append(report["keys_per_s"])
    finally:
        if redis is not None:
            redis.stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    print(f"get_many of 100 keys, 10,000-key dataset, medians of {args.reps} runs of {args.duration:g} s")
    for in_flight in (1, 16):
        redis_rate = statistics.median(results[(in_flight, "Redis MGET")]) if redis else None
        for (n, name), rates in sorted(results.items()):
            if n != in_flight:
                continue
            rate = statistics.median(rates)
            vs = f"  ({rate / redis_rate:.2f} x Redis MGET)" if redis_rate else ""
            print(f"{in_flight:2} in flight  {name:18} {rate:>12,.0f} keys/s{vs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
