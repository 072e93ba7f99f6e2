"""One load-generating client process of ``benchmarks/scaleout.py``.

    python benchmarks/scaleout_client.py --endpoint tcp://127.0.0.1:5555,tcp://127.0.0.1:6555 \\
        --data data/example.json --keys 1 --concurrency 64 --duration 3

It talks to its parent on stdin and stdout, one line each way, so that the
parent can read this process's CPU time (``/proc/PID/stat``) exactly around
the load and nothing else:

1. loads the dataset, opens an :class:`rokv.AsyncClient` on every broker and
   warms it up (pings and one round of the load's own calls), then prints
   ``ready``;
2. waits for ``go`` on stdin (anything else, or end of input, ends it);
3. keeps ``--concurrency`` callers busy for ``--duration`` seconds, checking
   every answer against the dataset exactly as ``rokv bench`` does, and prints
   one JSON line: the tally (requests, keys, errors by kind, wrong answers,
   the latency histogram) and how many replies each broker gave;
4. waits for ``exit`` (or end of input) before closing anything.

Exit status 0 when the run happened, whatever it counted (the parent judges
the tally); 2 on bad usage or a dataset that cannot be read; 3 when the
warm-up got no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The load loop, its bookkeeping and answer checks are rokv bench's own
# (rokv.loadgen), so that both tools count and check alike; only the
# start/stop handshake is new.
from rokv import AsyncClient
from rokv.errors import RokvError
from rokv.loadgen import Config, Probe, Runner, load_expected, make_probes, run_async, tally_to_json


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _broker_replies(client: AsyncClient) -> list[int]:
    """Replies taken from each broker so far (the transport's own counter;
    an empty list if a later rokv no longer keeps it)."""
    return list(getattr(getattr(client, "_brokers", None), "replies", None) or [])


async def _call(client: AsyncClient, probe: Probe, many: bool) -> object:
    try:
        return await (client.get_many(probe.keys) if many else client.get(probe.keys[0]))
    except RokvError as exc:
        return exc


async def session(cfg: Config, probes: list[Probe]) -> None:
    """Warm up, wait for ``go``, run, report, wait for ``exit``."""
    many = cfg.keys_per_request > 1
    async with AsyncClient(cfg.endpoint, coalesce=cfg.coalesce) as client:
        for _ in range(2 * len(client.endpoints)):
            await client.ping()
        await asyncio.gather(*(_call(client, probes[i % len(probes)], many) for i in range(cfg.concurrency)))
        _say("ready")
        # Blocking the loop here is harmless: nothing is in flight, and
        # libzmq's own I/O thread keeps the connections (and heartbeats) alive.
        if sys.stdin.readline().strip() != "go":
            return
        replies_before = _broker_replies(client)
        clock = time.perf_counter
        cpu0, t0 = time.process_time(), clock()
        run = Runner(cfg, probes, t0 + cfg.duration)
        await run_async(run, client)
        tally = run.finish(clock() - t0, time.process_time() - cpu0)
        replies = [after - before for after, before in zip(_broker_replies(client), replies_before)]
        _say(json.dumps({"tally": tally_to_json(tally), "broker_replies": replies}))
        sys.stdin.readline()  # "exit": the parent has read this process's CPU time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="broker frontends, comma-separated")
    parser.add_argument("--data", required=True, help="the dataset the workers serve (.json or .jsonl)")
    parser.add_argument("--keys", type=int, default=1, help="keys per request: 1 get, more get_many")
    parser.add_argument("--concurrency", type=int, default=64, help="callers, each with one call in flight")
    parser.add_argument("--no-coalesce", action="store_false", dest="coalesce")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.keys < 1 or args.concurrency < 1 or not args.duration > 0:
        parser.error("--keys and --concurrency must be >= 1 and --duration > 0")
    try:
        expected = load_expected(args.data)
    except ValueError as exc:
        sys.stderr.write(f"scaleout_client: {exc}\n")
        return 2
    cfg = Config(
        endpoint=args.endpoint,
        data=args.data,
        concurrency=args.concurrency,
        keys_per_request=args.keys,
        duration=args.duration,
        coalesce=args.coalesce,
        seed=args.seed,
    )
    probes = make_probes(expected, args.keys, 0.0, 0.0, args.seed)
    try:
        asyncio.run(session(cfg, probes))
    except RokvError as exc:  # the warm-up found no service
        sys.stderr.write(f"scaleout_client: {type(exc).__name__}: {exc}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
