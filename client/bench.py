"""``rokv bench``: a load generator against a running rokv service.

The parent loads the dataset (:func:`rokv.loadgen.load_expected`: refused as
a worker would refuse it) and forks ``--processes`` client processes; each
keeps ``--concurrency`` requests in flight through one
:class:`rokv.AsyncClient` (or sends one at a time through a
:class:`rokv.Client`) and checks every answer against the dataset, with the
load loop of :mod:`rokv.loadgen`. The parent shows a live progress line on a
terminal and prints the totals, or JSON with ``--json``.

Every run is bounded: by ``--duration`` seconds, and by ``--requests`` when
given, whichever comes first. Exit statuses: ``rokv bench`` in
:data:`rokv.exitcodes.PROGRAMS`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

from rokv.core import make_policy, resolve_endpoint
from rokv.endpoints import PROCESS_TRANSPORTS, check_endpoints
from rokv.errors import RokvError, ServiceUnavailable
from rokv.exitcodes import Exit, epilog
from rokv.loadgen import (
    DEFAULT_DATA,
    Config,
    Runner,
    Tally,
    async_options,
    load_expected,
    make_probes,
    run_async,
    run_sync,
    summary,
)

#: How long a child may take to load the dataset and reach the service.
_START_TIMEOUT = 120.0


# ---------------------------------------------------------------- one process


async def _run_async(run: Runner) -> None:
    from rokv.aio import AsyncClient

    async with AsyncClient(run.cfg.endpoint, **async_options(run.cfg)) as client:
        await run_async(run, client)


def _child(
    cfg: Config, index: int, expected: dict[str, str], progress: Any, ready: Any, start: Any, results: Any
) -> None:
    """One client process: reach the service, wait for the start, run, report."""
    from rokv.sync import Client

    try:
        with Client(cfg.endpoint, timeout=cfg.timeout, retries=cfg.retries) as client:
            client.ping()
    except RokvError as exc:
        ready.put((index, f"{type(exc).__name__}: {exc}"))
        return
    probes = make_probes(expected, cfg.keys_per_request, cfg.missing, cfg.invalid, cfg.seed * 1000 + index)
    ready.put((index, None))
    if not start.wait(_START_TIMEOUT):
        return
    quota = None
    if cfg.requests is not None:
        quota = cfg.requests // cfg.processes + (1 if index < cfg.requests % cfg.processes else 0)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    run = Runner(cfg, probes, t0 + cfg.duration, quota=quota, progress=progress, index=index)
    if cfg.client == "sync":
        with Client(cfg.endpoint, timeout=cfg.timeout, retries=cfg.retries) as client:
            run_sync(run, client)
    else:
        asyncio.run(_run_async(run))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    results.put(run.finish(elapsed, cpu))


# ---------------------------------------------------------------- the parent


def run_bench(cfg: Config, *, live: bool = False) -> Tally:
    """Run ``cfg`` with ``cfg.processes`` client processes; their tallies summed.

    Raises:
        ValueError: the dataset cannot be read.
        ServiceUnavailable: some process could not reach the service.
    """
    expected = load_expected(cfg.data)
    # fork: the children share the parent's copy of the dataset; this process
    # has not created a zmq context (children make their own).
    ctx = mp.get_context("fork")
    progress = ctx.Array("q", 3 * cfg.processes, lock=False)
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_child, args=(cfg, i, expected, progress, ready, start, results), daemon=True)
        for i in range(cfg.processes)
    ]
    for proc in procs:
        proc.start()
    total = Tally()
    try:
        failures = [msg for _, msg in _collect(ready, procs, time.monotonic() + _START_TIMEOUT) if msg]
        if failures:
            raise ServiceUnavailable(f"cannot reach the service: {failures[0]}")
        started = time.monotonic()
        start.set()
        tallies: list[Tally] = []
        hard_stop = started + cfg.duration + make_policy(None, cfg.timeout, cfg.retries).total + 30
        while len(tallies) < len(procs):
            tallies.extend(_collect(results, procs, hard_stop, at_most=0.5))
            if live and len(tallies) < len(procs):
                _live_progress(progress, time.monotonic() - started, cfg.processes)
        for tally in tallies:
            total.add(tally)
        if live:
            # The live line ends on the report's own figures: the parent's
            # clock, which also ran while the processes started and reported,
            # would leave a last line that disagrees with the report's rate.
            _progress_line(total.elapsed, total.requests, total.keys, total.wrong + sum(total.errors.values()))
            sys.stderr.write("\n")
            sys.stderr.flush()
        return total
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def _collect(queue: Any, procs: list[Any], deadline: float, at_most: float | None = None) -> list[Any]:
    """Items from ``queue``: one per process, or what came within ``at_most``
    seconds. Raises ``RokvError`` when a process died or ``deadline`` passed."""
    items: list[Any] = []
    until = deadline if at_most is None else min(deadline, time.monotonic() + at_most)
    while len(items) < len(procs):
        try:
            items.append(queue.get(timeout=0.1))
            continue
        except Exception:  # noqa: BLE001 - queue.Empty, from another module's queue
            pass
        dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RokvError(f"a bench process failed (exit status {dead[0]})")
        if time.monotonic() > until:
            if at_most is not None and time.monotonic() <= deadline:
                return items
            raise RokvError("bench processes did not finish in time")
    return items


def _live_progress(progress: Any, elapsed: float, processes: int) -> None:
    requests = sum(progress[3 * i] for i in range(processes))
    keys = sum(progress[3 * i + 1] for i in range(processes))
    bad = sum(progress[3 * i + 2] for i in range(processes))
    _progress_line(elapsed, requests, keys, bad)


def _progress_line(elapsed: float, requests: int, keys: int, bad: int) -> None:
    rate = requests / elapsed if elapsed > 0 else 0.0
    sys.stderr.write(
        f"\r\x1b[K{elapsed:7.2f} s  {requests:>12,} requests  {rate:>10,.0f} req/s  {keys:>12,} keys  {bad:,} errors"
    )
    sys.stderr.flush()


def format_table(report: dict[str, Any]) -> str:
    cfg = report["config"]
    kind = "get" if cfg["keys_per_request"] == 1 else f"get_many of {cfg['keys_per_request']} keys"
    mode = cfg["client"] if cfg["client"] == "sync" else f"async, coalescing {'on' if cfg['coalesce'] else 'off'}"
    lat = report["latency_ms"]
    lines = [
        f"rokv bench: {cfg['processes']} process(es) x {cfg['concurrency']} in flight, {kind}, {mode}",
        f"  {'elapsed':<10}{report['elapsed_s']:>14.2f} s",
        f"  {'requests':<10}{report['requests']:>14,}  {report['requests_per_s']:>14,.0f} /s",
        f"  {'keys':<10}{report['keys']:>14,}  {report['keys_per_s']:>14,.0f} /s  answered",
        f"  {'rejected':<10}{report['keys_rejected']:>14,}  keys of refused or unanswered requests",
        "  latency   " + "  ".join(f"{name} {lat[name]:.3f} ms" for name in ("p50", "p90", "p99", "p99.9", "max")),
        "  answers   " + (", ".join(f"{k} {v:,}" for k, v in sorted(report["answers"].items())) or "none"),
        "  errors    " + (", ".join(f"{k} {v:,}" for k, v in sorted(report["errors"].items())) or "none"),
        f"  wrong answers {report['wrong']:,}",
    ]
    lines += [f"    {example}" for example in report["wrong_examples"]]
    return "\n".join(lines)


def exit_code(report: dict[str, Any]) -> int:
    if report["wrong"]:
        return Exit.NO
    if report["errors"]:
        return Exit.UNAVAILABLE
    return Exit.OK


# ---------------------------------------------------------------- the command


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``rokv bench`` on the ``rokv`` command's subparsers."""
    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="load-test a running service and check every answer",
        description="Send lookups from several processes for a bounded time or count, check every answer "
        "against the dataset, and print throughput, latency percentiles and errors by kind.",
        epilog=epilog("rokv bench"),
    )
    bench.add_argument(
        "--data",
        default=os.environ.get("ROKV_DATA") or DEFAULT_DATA,
        help="the dataset the service serves, for keys and expected values: .json or "
        ".jsonl (for a .rokv file, the source it was built from; env ROKV_DATA; "
        "default %(default)s)",
    )
    bench.add_argument("-p", "--processes", type=_positive_int, default=1, help="client processes (default 1)")
    bench.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        default=64,
        help="requests in flight per process (default %(default)s)",
    )
    bench.add_argument(
        "-k",
        "--keys",
        type=_positive_int,
        default=1,
        dest="keys_per_request",
        help="keys per request: 1 sends get, more send get_many (default 1)",
    )
    bench.add_argument("-d", "--duration", type=float, default=10.0, help="seconds to run, at most (default 10)")
    bench.add_argument(
        "-n",
        "--requests",
        type=_positive_int,
        default=None,
        help="stop after this many requests in all (still bounded by --duration)",
    )
    bench.add_argument("--missing", type=_fraction, default=0.0, help="share of valid keys not in the dataset")
    bench.add_argument("--invalid", type=_fraction, default=0.0, help="share of invalid keys")
    bench.add_argument(
        "--client",
        choices=("async", "sync"),
        default="async",
        help="AsyncClient, or the blocking Client (one request in flight; default async)",
    )
    bench.add_argument("--no-coalesce", action="store_false", dest="coalesce", help="send each get as its own message")
    bench.add_argument("--max-batch", type=_positive_int, default=None, help="most gets per coalesced mget")
    bench.add_argument("--max-delay", type=float, default=None, help="seconds a get may wait to be coalesced")
    bench.add_argument("--seed", type=int, default=1, help="seed of the key draw (default 1)")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.client == "sync" and args.concurrency != 1:
        if args.concurrency != 64:  # 64 is the default, meant for the async client
            sys.stderr.write("rokv: the sync client has one request in flight; use --concurrency 1\n")
            return Exit.USAGE
        args.concurrency = 1
    if args.missing + args.invalid > 1:
        sys.stderr.write("rokv: --missing plus --invalid must not exceed 1\n")
        return Exit.USAGE
    if args.max_delay is not None and not 0 <= args.max_delay <= 1:
        sys.stderr.write("rokv: --max-delay must be from 0 to 1 second\n")
        return Exit.USAGE
    if not 0 < args.duration <= 24 * 3600:
        sys.stderr.write("rokv: --duration must be from 0 to 86400 seconds\n")
        return Exit.USAGE
    try:
        check_endpoints(resolve_endpoint(args.endpoint), transports=PROCESS_TRANSPORTS)  # $ROKV_ENDPOINT too
    except ValueError as exc:
        sys.stderr.write(f"rokv: error: {exc}\n")
        return Exit.USAGE
    cfg = Config(
        endpoint=args.endpoint,
        data=args.data,
        processes=args.processes,
        concurrency=args.concurrency,
        keys_per_request=args.keys_per_request,
        duration=args.duration,
        requests=args.requests,
        missing=args.missing,
        invalid=args.invalid,
        client=args.client,
        coalesce=args.coalesce,
        max_batch=args.max_batch,
        max_delay=args.max_delay,
        timeout=args.timeout,
        retries=args.retries,
        seed=args.seed,
    )
    try:
        tally = run_bench(cfg, live=not args.json and sys.stderr.isatty())
    except ValueError as exc:
        sys.stderr.write(f"rokv: {exc}\n")
        return Exit.USAGE
    except RokvError as exc:
        sys.stderr.write(f"rokv: {exc}\n")
        return Exit.UNAVAILABLE
    report = summary(cfg, tally)
    if args.json:
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_table(report) + "\n")
    return exit_code(report)
