"""cProfile of AsyncClient.get on a real stack (broker + 2 workers, bundled
dataset): 40,000 gets from 64 concurrent callers, coalescing off, then on.

    python benchmarks/profile_aio.py [--calls 40000] [--top 12]

Prints the functions with the most own time. Times are inflated by the
profiler (about 3x); read the proportions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "data" / "example.json"

from rokv import AsyncClient  # noqa: E402 - after sys.path is set

from benchmarks.scaleout import Stack  # noqa: E402 - after sys.path is set


async def drive(endpoint: str, keys: list[str], coalesce: bool, calls: int) -> None:
    async with AsyncClient(endpoint, coalesce=coalesce) as client:
        todo = iter(range(calls))

        async def caller() -> None:
            for i in todo:
                await client.get(keys[i % len(keys)])

        await asyncio.gather(*(caller() for _ in range(64)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40_000)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    keys = list(json.loads(EXAMPLE.read_text(encoding="utf-8")))
    stack = Stack(1, 2, str(EXAMPLE), 1, Path(tempfile.mkdtemp(prefix="rokv-profile-")))
    try:
        stack.wait_ready(60)
        for coalesce in (False, True):
            asyncio.run(drive(stack.endpoint, keys, coalesce, min(args.calls, 4000)))  # warm up
            profile = cProfile.Profile()
            profile.enable()
            asyncio.run(drive(stack.endpoint, keys, coalesce, args.calls))
            profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
            print(f"=== AsyncClient.get x {args.calls:,}, 64 callers, coalesce={coalesce}")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
