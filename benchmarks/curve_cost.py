"""What CurveZMQ costs: the same stack (broker + 2 workers, bundled dataset) with
and without CURVE, measured in the same run, interleaved, 3 rounds, medians.

    python benchmarks/curve_cost.py [--seconds 3] [--rounds 3]

Prints a markdown table: sequential get/s and p50, get_many(100) keys/s, and
the time for a new client's first answer (connection + handshake).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "data" / "example.json"

from rokv import Client  # noqa: E402 - after sys.path is set
from rokv.security import CurvePeer, make_key_pair  # noqa: E402 - after sys.path is set

from benchmarks.scaleout import Stack  # noqa: E402 - after sys.path is set


def run_round(root: Path, curve: bool, seconds: float, keys: list[str]) -> dict[str, float]:
    broker_args: list[str] = []
    worker_args: list[str] = []
    peer = None
    if curve:
        kd = root / "keys"
        broker_pub, broker_sec = kd / "broker.key", kd / "broker.key_secret"
        broker_args = [
            "--curve-secret",
            str(broker_sec),
            "--client-keys",
            str(kd / "clients"),
            "--worker-keys",
            str(kd / "workers"),
        ]
        worker_args = ["--curve-secret", str(kd / "worker.key_secret"), "--broker-key", str(broker_pub)]
        peer = CurvePeer(str(kd / "client.key_secret"), str(broker_pub))
    stack = Stack(1, 2, str(EXAMPLE), 1, root, broker_args=broker_args, worker_args=worker_args, curve=peer)
    frontend = stack.endpoint
    try:
        stack.wait_ready(60)  # every worker answered
        result: dict[str, float] = {}
        with Client(frontend, curve=peer) as client:
            lat = []
            deadline = time.monotonic() + seconds
            i = 0
            while time.monotonic() < deadline and i < 1_000_000:
                t = time.perf_counter()
                client.get(keys[i % len(keys)])
                lat.append(time.perf_counter() - t)
                i += 1
            result["get_per_s"] = i / seconds
            result["get_p50_us"] = statistics.median(lat) * 1e6
            batches = [keys[j : j + 100] for j in range(0, len(keys), 100)]
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline and n < 1_000_000:
                client.get_many(batches[n % len(batches)])
                n += 1
            result["mget_keys_per_s"] = n * 100 / seconds
        firsts = []
        for _ in range(30):
            t = time.perf_counter()
            with Client(frontend, curve=peer) as fresh:
                fresh.ping()
            firsts.append(time.perf_counter() - t)
        result["first_answer_ms"] = statistics.median(firsts) * 1000
        return result
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import json

    keys = list(json.loads(EXAMPLE.read_text(encoding="utf-8")))
    root = Path(tempfile.mkdtemp(prefix="rokv-curve-"))
    try:
        kd = root / "keys"
        for name in ("broker", "worker", "client"):
            make_key_pair(kd, name)
        (kd / "clients").mkdir()
        (kd / "workers").mkdir()
        shutil.copy(kd / "client.key", kd / "clients")
        shutil.copy(kd / "worker.key", kd / "workers")
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for curve in (False, True):
                runs[curve].append(run_round(root, curve, args.seconds, keys))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]} for c in runs}
    print("| measure (median of %d rounds) | plain | CURVE | CURVE / plain |" % args.rounds)
    print("|---|---:|---:|---:|")
    for key, label in (
        ("get_per_s", "sequential get/s"),
        ("get_p50_us", "sequential get p50 (µs)"),
        ("mget_keys_per_s", "get_many(100) keys/s, one in flight"),
        ("first_answer_ms", "new client's first answer (ms)"),
    ):
        fmt = ",.2f" if key.endswith("_ms") else ",.0f"
        print(
            f"| {label} | {med[False][key]:{fmt}} | {med[True][key]:{fmt}} | {med[True][key] / med[False][key]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
