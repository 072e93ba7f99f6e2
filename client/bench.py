"""``rokv bench``: a load generator against a running rokv service.

Each client process loads the dataset, keeps ``--concurrency`` requests in
flight through one :class:`rokv.AsyncClient` (or sends one at a time through
a :class:`rokv.Client`), checks every answer against the dataset, and
reports counts and a latency histogram; the parent shows a live progress line
on a terminal and prints the totals, or JSON with ``--json``.

Every run is bounded: by ``--duration`` seconds, and by ``--requests`` when
given, whichever comes first.

Exit codes: 0 every answer was right; 1 some answer was wrong; 3 some request
got no answer or was refused (and none was wrong); 2 bad usage or a dataset
that cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from rokv.core import make_policy, resolve_endpoint
from rokv.endpoints import PROCESS_TRANSPORTS, check_endpoints
from rokv.errors import (
    InvalidKey,
    KeyNotFound,
    ProtocolError,
    RokvError,
    ServiceUnavailable,
)
from rokv.exitcodes import Exit, epilog
from rokv.keys import normalize_key, random_key

DEFAULT_DATA = "data/example.json"
#: Histogram buckets per factor e of latency: about 1.6% resolution.
_BUCKETS_PER_E = 64
#: Wrong answers kept as examples in the report.
_EXAMPLES = 5
#: Invalid keys the generator sends, one of each kind the protocol refuses.
INVALID_KEYS = (
    "not-a-key",
    "8a35eb59-62b3-181c-8875-1f248df4c952",
    "8a35eb59-62b3-481c-c875-1f248df4c952",
    "{8a35eb59-62b3-481c-8875-1f248df4c952",
    " 8a35eb59-62b3-481c-8875-1f248df4c952",
    "",
)
#: How long a child may take to load the dataset and reach the service.
_START_TIMEOUT = 120.0


@dataclass
class Config:
    """One bench run; the defaults are those of the command line."""

    endpoint: str | None = None
    data: str = DEFAULT_DATA
    processes: int = 1
    concurrency: int = 64
    keys_per_request: int = 1
    duration: float = 10.0
    requests: int | None = None
    missing: float = 0.0
    invalid: float = 0.0
    client: str = "async"
    coalesce: bool = True
    max_batch: int | None = None
    max_delay: float | None = None
    timeout: float | None = None  # None: the clients' default retry policy
    retries: int | None = None
    seed: int = 1
    direct: bool = False


@dataclass
class Tally:
    """What one process saw; tallies add up."""

    requests: int = 0
    keys: int = 0  # answered: of requests that got values (or not_found)
    keys_rejected: int = 0  # of requests refused (invalid_key, protocol) or unanswered
    elapsed: float = 0.0
    answers: Counter = field(default_factory=Counter)  # value, not_found, invalid_key
    errors: Counter = field(default_factory=Counter)  # unavailable, protocol, other
    wrong: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    histogram: Counter = field(default_factory=Counter)  # bucket -> count
    max_latency: float = 0.0
    cpu: float = 0.0

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.keys += other.keys
        self.keys_rejected += other.keys_rejected
        self.elapsed = max(self.elapsed, other.elapsed)
        self.answers.update(other.answers)
        self.errors.update(other.errors)
        self.wrong += other.wrong
        self.wrong_examples.extend(other.wrong_examples[: _EXAMPLES - len(self.wrong_examples)])
        self.histogram.update(other.histogram)
        self.max_latency = max(self.max_latency, other.max_latency)
        self.cpu += other.cpu

    def record(self, seconds: float) -> None:
        self.histogram[int(math.log(max(seconds, 1e-7)) * _BUCKETS_PER_E)] += 1
        if seconds > self.max_latency:
            self.max_latency = seconds

    def percentile(self, q: float) -> float:
        """Latency in seconds at quantile ``q`` (0..1) from the histogram."""
        total = sum(self.histogram.values())
        if not total:
            return math.nan
        rank = q * total
        seen = 0
        for bucket in sorted(self.histogram):
            seen += self.histogram[bucket]
            if seen >= rank:
                return min(math.exp((bucket + 0.5) / _BUCKETS_PER_E), self.max_latency)
        return self.max_latency

    def wrong_answer(self, what: str) -> None:
        self.wrong += 1
        if len(self.wrong_examples) < _EXAMPLES:
            self.wrong_examples.append(what)


# ---------------------------------------------------------------- the dataset


def load_expected(path: str) -> dict[str, str]:
    """The dataset as canonical key -> value, read independently of the worker.

    Raises:
        ValueError: the file cannot be read or is not a rokv dataset.
    """
    if path.lower().endswith(".rokv"):
        # Read independently of the worker on purpose: the answers are checked
        # against the source, not against the reader under test.
        raise ValueError(f"{path!r} is a compiled .rokv file; give the .json or .jsonl it was built from")
    try:
        with open(path, encoding="utf-8-sig") as f:
            if path.lower().endswith(".jsonl"):
                pairs: Iterator[tuple[Any, Any]] = (
                    (obj["key"], obj["value"]) for obj in map(json.loads, filter(str.strip, f))
                )
                data = {normalize_key(k): v for k, v in pairs}
            else:
                data = {normalize_key(k): v for k, v in json.load(f).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"cannot read dataset {path!r}: {exc}") from None
    if not data:
        raise ValueError(f"dataset {path!r} is empty")
    return data


class KeyMaker:
    """Draws request keys: hits from the dataset, and the asked shares of
    valid missing keys and invalid keys, reproducibly from a seed."""

    def __init__(self, expected: dict[str, str], missing: float, invalid: float, seed: int) -> None:
        self.expected = expected
        self.keys = list(expected)
        self.missing = missing
        self.invalid = invalid
        self.rng = random.Random(seed)

    def draw(self) -> str:
        r = self.rng.random()
        if r < self.invalid:
            return self.rng.choice(INVALID_KEYS)
        if r < self.invalid + self.missing:
            while True:
                key = random_key(self.rng)
                if key not in self.expected:
                    return key
        return self.keys[int(self.rng.random() * len(self.keys))]


#: What a probe expects besides a value: these outcomes, by name.
NOT_FOUND = "not_found"
INVALID = "invalid_key"


class Probe:
    """One request to send and the answer it must get, worked out before the
    run so that checking an answer costs one comparison, not a validation per
    key: the load generator must stay cheaper than what it measures.

    ``expect`` is the value (get), the list of values (get_many), ``NOT_FOUND``,
    or ``INVALID`` with ``invalid_key`` the key the error must name.
    """

    __slots__ = ("keys", "expect", "invalid_key", "plain")

    def __init__(self, expected: dict[str, str], keys: list[str]) -> None:
        self.keys = keys
        self.invalid_key: str | None = None
        states = [_key_state(expected, k) for k in keys]
        first_invalid = next((i for i, (s, _) in enumerate(states) if s == "invalid"), None)
        #: The answer is a value (or list), so equality alone says it is right.
        self.plain = True
        if first_invalid is not None:
            self.expect: object = INVALID
            self.invalid_key = keys[first_invalid]
            self.plain = False
        elif len(keys) == 1:
            self.expect = states[0][1] if states[0][0] == "hit" else NOT_FOUND
            self.plain = states[0][0] == "hit"
        else:
            self.expect = [v for _, v in states]


def make_probes(
    expected: dict[str, str], keys_per_request: int, missing: float, invalid: float, seed: int, count: int | None = None
) -> list[Probe]:
    """A pool of requests to cycle through, each with its expected answer.
    By default it spans up to about 200,000 keys (at least 1,024 requests)."""
    maker = KeyMaker(expected, missing, invalid, seed)
    if count is None:
        count = max(1024, min(65536, 200_000 // keys_per_request))
    return [Probe(expected, [maker.draw() for _ in range(keys_per_request)]) for _ in range(count)]


def _key_state(expected: dict[str, str], key: str) -> tuple[str, str | None]:
    """("invalid", None), ("missing", None) or ("hit", value)."""
    try:
        canonical = normalize_key(key)
    except InvalidKey:
        return "invalid", None
    value = expected.get(canonical)
    return ("hit", value) if value is not None else ("missing", None)


def check(tally: Tally, probe: Probe, result: object) -> None:
    """Count the outcome of ``probe``; ``result`` is what the call returned
    or the exception it raised. Anything but the expected answer is wrong,
    except failures to get an answer at all, which are errors. The keys of a
    request refused or unanswered count as rejected, not as answered."""
    expect = probe.expect
    if isinstance(result, (str, list)):
        tally.answers["value"] += 1
        if result != expect:
            what = "get" if len(probe.keys) == 1 else f"get_many of {len(probe.keys)}"
            if isinstance(result, list) and isinstance(expect, list):
                index = next((i for i, (a, b) in enumerate(zip(result, expect)) if a != b), None)
                got = f"a wrong value at index {index}"
            else:
                got = f"{str(result)[:40]!r}"
            tally.wrong_answer(f"{what} {probe.keys[0]!r}...: got {got}, expected {str(expect)[:40]!r}")
    elif isinstance(result, KeyNotFound):
        tally.answers[NOT_FOUND] += 1
        if expect != NOT_FOUND:
            tally.wrong_answer(f"get {probe.keys[0]!r}: got not_found, expected {str(expect)[:40]!r}")
    elif isinstance(result, InvalidKey):
        tally.answers[INVALID] += 1
        tally.keys_rejected += len(probe.keys)
        if expect != INVALID or result.key != probe.invalid_key:
            tally.wrong_answer(
                f"invalid_key naming {result.key!r}; expected {str(expect)[:40]!r} naming {probe.invalid_key!r}"
            )
    else:
        tally.keys_rejected += len(probe.keys)
        _count_error(tally, result)


def _count_error(tally: Tally, exc: object) -> None:
    if isinstance(exc, ServiceUnavailable):
        tally.errors["unavailable"] += 1
    elif isinstance(exc, ProtocolError):
        tally.errors[f"protocol:{exc.code}"] += 1
    elif isinstance(exc, RokvError):
        tally.errors["client"] += 1
    else:
        tally.errors[f"other:{type(exc).__name__}"] += 1


# ---------------------------------------------------------------- one process


class _Run:
    """One process's load loop: which probe is next, when to stop, and what
    came back. The per-request path is kept lean (a latency appended to an
    array, one comparison for a right answer) so that the generator stays
    cheaper than what it measures; the histogram is built after the run."""

    def __init__(
        self, cfg: Config, index: int, probes: list[Probe], progress: Any, quota: int | None, deadline: float
    ) -> None:
        self.cfg = cfg
        self.probes = probes
        self.next_probe = 0
        self.tally = Tally()
        self.progress = progress
        self.slot = index * 3
        self.remaining = quota if quota is not None else 1 << 62
        self.deadline = deadline  # time.perf_counter() based
        self.latencies = array("d")
        self.count = 0
        self.right = 0  # answers that were the expected value or list

    def settle(self, probe: Probe, result: object, seconds: float) -> None:
        self.latencies.append(seconds)
        if probe.plain and result == probe.expect:
            self.right += 1
        else:
            check(self.tally, probe, result)
        self.count += 1
        if self.count & 63 == 0:
            self.report()

    def report(self) -> None:
        if self.progress is not None:
            tally = self.tally
            self.progress[self.slot] = self.count
            self.progress[self.slot + 1] = self.count * self.cfg.keys_per_request - tally.keys_rejected
            self.progress[self.slot + 2] = tally.wrong + sum(tally.errors.values())

    def finish(self, elapsed: float, cpu: float) -> Tally:
        tally = self.tally
        tally.requests = self.count
        tally.keys = self.count * self.cfg.keys_per_request - tally.keys_rejected
        tally.answers["value"] += self.right
        if not tally.answers["value"]:
            del tally.answers["value"]
        for seconds in self.latencies:
            tally.record(seconds)
        tally.elapsed = elapsed
        tally.cpu = cpu
        self.report()
        return tally


async def _run_async(run: _Run) -> None:
    from rokv.aio import AsyncClient

    cfg = run.cfg
    options: dict[str, Any] = {
        "timeout": cfg.timeout,
        "retries": cfg.retries,
        "coalesce": cfg.coalesce,
        "direct": cfg.direct,
    }
    if cfg.max_batch is not None:
        options["max_batch"] = cfg.max_batch
    if cfg.max_delay is not None:
        options["max_delay"] = cfg.max_delay
    many = cfg.keys_per_request > 1
    clock = time.perf_counter
    probes = run.probes
    count = len(probes)
    settle = run.settle
    async with AsyncClient(cfg.endpoint, **options) as client:
        get, get_many = client.get, client.get_many

        async def one_caller() -> None:
            while run.remaining > 0 and clock() < run.deadline:
                run.remaining -= 1
                index = run.next_probe
                run.next_probe = index + 1 if index + 1 < count else 0
                probe = probes[index]
                started = clock()
                try:
                    result: object = await (get_many(probe.keys) if many else get(probe.keys[0]))
                except RokvError as exc:
                    result = exc
                settle(probe, result, clock() - started)

        await asyncio.gather(*(one_caller() for _ in range(cfg.concurrency)))


def _run_sync(run: _Run) -> None:
    from rokv.sync import Client

    cfg = run.cfg
    many = cfg.keys_per_request > 1
    clock = time.perf_counter
    probes = run.probes
    with Client(cfg.endpoint, timeout=cfg.timeout, retries=cfg.retries, direct=cfg.direct) as client:
        while run.remaining > 0 and clock() < run.deadline:
            run.remaining -= 1
            probe = probes[run.next_probe]
            run.next_probe = (run.next_probe + 1) % len(probes)
            started = clock()
            try:
                result: object = client.get_many(probe.keys) if many else client.get(probe.keys[0])
            except RokvError as exc:
                result = exc
            run.settle(probe, result, clock() - started)


def _child(
    cfg: Config, index: int, expected: dict[str, str], progress: Any, ready: Any, start: Any, results: Any
) -> None:
    """One client process: reach the service, wait for the start, run, report."""
    try:
        from rokv.sync import Client

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
    run = _Run(cfg, index, probes, progress, quota, t0 + cfg.duration)
    if cfg.client == "sync":
        _run_sync(run)
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


def summary(cfg: Config, tally: Tally) -> dict[str, Any]:
    """The machine-readable report of a run."""
    elapsed = tally.elapsed or math.nan
    latency = {
        name: tally.percentile(q) * 1000 for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
    }
    latency["max"] = tally.max_latency * 1000
    return {
        "config": asdict(cfg),
        "elapsed_s": tally.elapsed,
        "requests": tally.requests,
        "keys": tally.keys,
        "keys_rejected": tally.keys_rejected,
        "requests_per_s": tally.requests / elapsed,
        "keys_per_s": tally.keys / elapsed,
        "client_cpu_us_per_request": tally.cpu / tally.requests * 1e6 if tally.requests else None,
        "latency_ms": latency,
        "answers": dict(tally.answers),
        "errors": dict(tally.errors),
        "wrong": tally.wrong,
        "wrong_examples": tally.wrong_examples,
    }


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
        direct=args.direct,
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
