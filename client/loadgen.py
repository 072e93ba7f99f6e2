"""Load generation against a rokv service, checked answer by answer: the
library under ``rokv bench`` and the benchmarks (``benchmarks/``).

- :func:`load_expected` reads the dataset the service serves, with the
  workers' own loader (:func:`rokv.dataset.load_dataset`), so a dataset the
  workers would refuse is refused here with the same message;
- :func:`make_probes` draws the requests (hits, and the asked shares of
  missing and invalid keys) with the answer each must get;
- a :class:`Runner` keeps one process's count, deadline and latencies;
  :func:`run_async` drives it through an open :class:`rokv.AsyncClient`
  (``cfg.concurrency`` callers), :func:`run_sync` through a :class:`rokv.Client`;
- :func:`check` judges one answer into a :class:`Tally` (tallies add up, and
  travel between processes as JSON: :func:`tally_to_json`, :func:`tally_from_json`);
  :func:`summary` makes the report ``rokv bench --json`` prints.

Everything named here without a leading underscore is the public API; the
benchmarks use nothing else.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rokv.dataset import DatasetError, load_dataset
from rokv.errors import (
    InvalidKey,
    KeyNotFound,
    ProtocolError,
    RokvError,
    ServiceUnavailable,
)
from rokv.keys import normalize_key, random_key

if TYPE_CHECKING:
    from rokv.aio import AsyncClient
    from rokv.sync import Client

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
    """The dataset at ``path`` (``.json`` or ``.jsonl``) as canonical key ->
    value, read by the workers' own loader: what a worker refuses is refused
    here, with the same message. A compiled ``.rokv`` file is refused: the
    answers are checked against the source, not against the reader under test.

    Raises:
        ValueError: the dataset cannot be read, is empty, or a worker would
            refuse it; the message is the loader's.
    """
    if path.lower().endswith(".rokv"):
        raise ValueError(f"{path!r} is a compiled .rokv file; give the .json or .jsonl it was built from")
    try:
        return load_dataset(path)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None


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


class Runner:
    """One process's load loop: which probe is next, when to stop, and what
    came back. The per-request path is kept lean (a latency appended to an
    array, one comparison for a right answer) so that the generator stays
    cheaper than what it measures; the histogram is built by :meth:`finish`.

    ``deadline`` is a :func:`time.perf_counter` time; ``quota`` caps the
    requests (None: only the deadline); ``progress``, when given, is a shared
    array whose three slots from ``3 * index`` get the requests, answered keys
    and failures so far, every 64 answers.
    """

    def __init__(
        self,
        cfg: Config,
        probes: list[Probe],
        deadline: float,
        *,
        quota: int | None = None,
        progress: Any = None,
        index: int = 0,
    ) -> None:
        self.cfg = cfg
        self.probes = probes
        self.next_probe = 0
        self.tally = Tally()
        self.progress = progress
        self.slot = index * 3
        self.remaining = quota if quota is not None else 1 << 62
        self.deadline = deadline
        self.latencies = array("d")
        self.count = 0
        self.right = 0  # answers that were the expected value or list

    def settle(self, probe: Probe, result: object, seconds: float) -> None:
        """Record the answer (or exception) ``result`` to ``probe``, which took ``seconds``."""
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
        """The tally of the run, which took ``elapsed`` seconds and ``cpu`` seconds of CPU."""
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


def async_options(cfg: Config) -> dict[str, Any]:
    """The :class:`rokv.AsyncClient` keywords ``cfg`` asks for."""
    options: dict[str, Any] = {"timeout": cfg.timeout, "retries": cfg.retries, "coalesce": cfg.coalesce}
    if cfg.max_batch is not None:
        options["max_batch"] = cfg.max_batch
    if cfg.max_delay is not None:
        options["max_delay"] = cfg.max_delay
    return options


async def run_async(run: Runner, client: AsyncClient) -> None:
    """Keep ``run.cfg.concurrency`` calls in flight through ``client`` until
    the run's quota or deadline; every answer settled into ``run``."""
    many = run.cfg.keys_per_request > 1
    clock = time.perf_counter
    probes = run.probes
    count = len(probes)
    settle = run.settle
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

    await asyncio.gather(*(one_caller() for _ in range(run.cfg.concurrency)))


def run_sync(run: Runner, client: Client) -> None:
    """Send one call at a time through ``client`` until the run's quota or
    deadline; every answer settled into ``run``."""
    many = run.cfg.keys_per_request > 1
    clock = time.perf_counter
    probes = run.probes
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


# ---------------------------------------------------------------- the report


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


def tally_to_json(tally: Tally) -> dict[str, Any]:
    """``tally`` as plain JSON values (histogram buckets as strings)."""
    return {
        "requests": tally.requests,
        "keys": tally.keys,
        "keys_rejected": tally.keys_rejected,
        "elapsed": tally.elapsed,
        "answers": dict(tally.answers),
        "errors": dict(tally.errors),
        "wrong": tally.wrong,
        "wrong_examples": tally.wrong_examples,
        "histogram": {str(k): v for k, v in tally.histogram.items()},
        "max_latency": tally.max_latency,
        "cpu": tally.cpu,
    }


def tally_from_json(raw: dict[str, Any]) -> Tally:
    """The inverse of :func:`tally_to_json`.

    Raises:
        KeyError, ValueError, TypeError: ``raw`` is not such a tally.
    """
    tally = Tally(
        requests=int(raw["requests"]),
        keys=int(raw["keys"]),
        keys_rejected=int(raw["keys_rejected"]),
        elapsed=float(raw["elapsed"]),
        wrong=int(raw["wrong"]),
        wrong_examples=list(raw["wrong_examples"]),
        max_latency=float(raw["max_latency"]),
        cpu=float(raw["cpu"]),
    )
    tally.answers.update(raw["answers"])
    tally.errors.update(raw["errors"])
    tally.histogram.update({int(k): v for k, v in raw["histogram"].items()})
    return tally
