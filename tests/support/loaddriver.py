"""A checking load driver for fault tests: run as a separate process, looks up a
mix of known, missing and invalid keys with get and get_many, checks every answer
against the dataset, and prints one JSON line of counts and latencies.

    python tests/support/loaddriver.py --endpoint E --data data/example.json --seconds 12 --seed 1

Bounded by both --seconds and --max-lookups. A call is "retried" when it took
at least one per-try timeout (it cannot have been answered on its first try) and
"lost" when it raised ServiceUnavailable or anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rokv import (
    Client,
    InvalidKey,
    KeyNotFound,
    RetryPolicy,
    ServiceUnavailable,
    core,
)
from rokv.keys import random_key

INVALID = ["not-a-key", "8a35eb59-62b3-181c-8875-1f248df4c952", "", "{8a35eb59-62b3-481c-8875-1f248df4c952"]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-lookups", type=int, default=2_000_000)
    parser.add_argument(
        "--min-found",
        type=int,
        default=0,
        help="after --seconds, go on until this many known-key lookups (a slow machine)...",
    )
    parser.add_argument("--max-seconds", type=float, default=60.0, help="...but never past this")
    parser.add_argument("--timeout", type=float, default=core.DEFAULT_TIMEOUT)
    parser.add_argument("--retries", type=int, default=core.DEFAULT_RETRIES)
    parser.add_argument("--backoff", type=float, default=core.DEFAULT_BACKOFF)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--direct", action="store_true", help="a direct client (straight to the workers)")
    args = parser.parse_args()

    data: dict[str, str] = json.loads(Path(args.data).read_text(encoding="utf-8"))
    keys = list(data)
    rng = random.Random(args.seed)
    counts = {
        "requests": 0,
        "lookups": 0,
        "retried": 0,
        "lost": 0,
        "wrong": 0,
        "found": 0,
        "not_found": 0,
        "invalid": 0,
    }
    latencies: list[float] = []
    errors: list[str] = []

    def wrong(message: str) -> None:
        counts["wrong"] += 1
        if len(errors) < 10:
            errors.append(message)

    started_at = time.monotonic()

    def go_on() -> bool:
        elapsed = time.monotonic() - started_at
        if counts["lookups"] >= args.max_lookups or elapsed >= args.max_seconds:
            return False
        return elapsed < args.seconds or counts["found"] < args.min_found

    policy = RetryPolicy(timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    # With several brokers: replies taken from each, once a second, to show
    # where the traffic went and when (time.monotonic() is the system's
    # clock, the same in every process, so a test can line events up).
    timeline: list[tuple[float, list[int]]] = []
    next_sample = started_at
    direct_replies: dict[str, int] = {}
    with Client(args.endpoint, retry=policy, direct=args.direct) as client:
        while go_on():
            if time.monotonic() >= next_sample and client._brokers is not None:
                timeline.append((time.monotonic(), list(client._brokers.replies)))
                next_sample += 1.0
            roll = rng.random()
            started = time.monotonic()
            try:
                if roll < 0.25:  # get_many of known and missing keys
                    batch = [rng.choice(keys) if rng.random() < 0.9 else random_key(rng) for _ in range(args.batch)]
                    values = client.get_many(batch)
                    counts["lookups"] += len(batch)
                    expected = [data.get(k) for k in batch]
                    if values != expected:
                        wrong(f"get_many mismatch for {batch[:2]}...")
                    counts["found"] += sum(v is not None for v in expected)
                    counts["not_found"] += sum(v is None for v in expected)
                elif roll < 0.85:  # get of a known key
                    key = rng.choice(keys)
                    counts["lookups"] += 1
                    value = client.get(key)
                    if value != data[key]:
                        wrong(f"get {key}: {value!r} != {data[key]!r}")
                    counts["found"] += 1
                elif roll < 0.95:  # get of a missing key
                    key = random_key(rng)
                    counts["lookups"] += 1
                    try:
                        client.get(key)
                        wrong(f"get {key}: a value for a missing key")
                    except KeyNotFound:
                        counts["not_found"] += 1
                else:  # an invalid key
                    key = rng.choice(INVALID)
                    counts["lookups"] += 1
                    try:
                        client.get(key)
                        wrong(f"get {key!r}: a value for an invalid key")
                    except InvalidKey:
                        counts["invalid"] += 1
            except ServiceUnavailable as exc:
                counts["lost"] += 1
                if len(errors) < 10:
                    errors.append(f"lost: {exc}")
            except Exception as exc:  # noqa: BLE001 - anything else is a wrong answer too
                wrong(f"{type(exc).__name__}: {exc}")
            elapsed = time.monotonic() - started
            counts["requests"] += 1
            if elapsed >= args.timeout:
                counts["retried"] += 1
            latencies.append(elapsed)
        if client._workers is not None:
            direct_replies = {link.endpoint: link.replies for link in client._workers.links}
    latencies.sort()
    result = {
        **counts,
        "seconds": time.monotonic() - started_at,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else 0) * 1000,
        "errors": errors,
        "timeline": timeline,
        "direct_replies": direct_replies,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
