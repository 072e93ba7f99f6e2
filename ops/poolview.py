"""What ``rokv top`` shows, worked out from two scrapes of each host's metrics
address: per host and per worker, requests and keys a second, hit ratio,
handling-time percentiles, and the dataset each worker serves.

Client code: the standard library, plus prometheus_client's text parser,
imported when a scrape is parsed (so ``import rokv`` never needs it).
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rokv.hostport import show_address

#: Seconds to wait for one host's answer.
SCRAPE_TIMEOUT = 2.0


class MissingParser(ImportError):
    """prometheus_client is not installed."""

    MESSAGE = (
        "rokv top reads metrics with prometheus_client: pip install prometheus_client "
        "(it comes with the server extra, 'rokv[server]')"
    )


@dataclass
class WorkerTotals:
    """One worker's counts since its start (summed over its restarts), and its dataset."""

    name: str
    requests: float = 0.0
    keys: dict[str, float] = field(default_factory=dict)  # outcome -> keys
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative requests
    digest: str = ""
    path: str = ""
    dataset_keys: int | None = None
    #: The direct endpoint it serves (empty: none), and requests by path.
    direct: str = ""
    paths: dict[str, float] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        """What identifies the dataset: its digest, or for a JSON dataset
        (which has none) its file name and key count."""
        if self.digest:
            return self.digest
        return f"{os.path.basename(self.path) or '?'} ({self.dataset_keys} keys)"


@dataclass
class BrokerTotals:
    name: str
    up: float | None = None
    workers: float = 0.0
    clients: float = 0.0
    requests: float = 0.0  # requests forwarded to workers


@dataclass
class HostScrape:
    """One reading of one host's metrics address."""

    address: str
    taken: float  # time.monotonic()
    workers: dict[str, WorkerTotals] = field(default_factory=dict)
    brokers: dict[str, BrokerTotals] = field(default_factory=dict)
    health: dict[str, Any] | None = None
    error: str | None = None


def scrape(host: str, port: int, timeout: float = SCRAPE_TIMEOUT) -> HostScrape:
    """Read ``http://host:port/metrics`` and ``/healthz``. Never raises for
    an unreachable or broken host: its ``error`` says what went wrong.

    Raises:
        MissingParser: prometheus_client is not installed.
    """
    address = show_address(host, port)
    taken = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (OSError, ValueError) as exc:  # URLError, timeouts and resets are OSErrors
        return HostScrape(address, taken, error=_reason(exc))
    try:
        result = parse(address, taken, text)
    except ValueError as exc:
        return HostScrape(address, taken, error=f"not Prometheus metrics: {exc}")
    result.health = _health(address, timeout)
    return result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _health(address: str, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 carries the report too
        body = exc.read()
    except (OSError, ValueError) as exc:
        return {"status": "unknown", "reason": _reason(exc)}
    try:
        report = json.loads(body)
    except ValueError:
        return {"status": "unknown", "reason": "/healthz did not answer JSON"}
    return report if isinstance(report, dict) else {"status": "unknown", "reason": "/healthz: not an object"}


def parse(address: str, taken: float, text: str) -> HostScrape:
    """A host's scrape from its exposition text.

    Raises:
        MissingParser: prometheus_client is not installed.
        ValueError: ``text`` is not Prometheus' text format.
    """
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise MissingParser(MissingParser.MESSAGE) from None
    result = HostScrape(address, taken)
    live: set[str] = set()
    workers: dict[str, WorkerTotals] = {}

    def worker(name: str) -> WorkerTotals:
        return workers.setdefault(name, WorkerTotals(name))

    def broker(name: str) -> BrokerTotals:
        return result.brokers.setdefault(name, BrokerTotals(name))

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels, value = s.labels, s.value
            name = s.name
            if name == "rokv_worker_requests_total":
                worker(labels["worker"]).requests += value
            elif name == "rokv_worker_keys_total":
                w = worker(labels["worker"])
                w.keys[labels["outcome"]] = w.keys.get(labels["outcome"], 0.0) + value
            elif name == "rokv_worker_request_duration_seconds_bucket":
                worker(labels["worker"]).buckets[float(labels["le"])] = value
            elif name == "rokv_worker_dataset_info":
                w = worker(labels["worker"])
                w.digest, w.path = labels.get("digest", ""), labels.get("path", "")
                live.add(w.name)
            elif name == "rokv_worker_path_requests_total":
                w = worker(labels["worker"])
                w.paths[labels["path"]] = w.paths.get(labels["path"], 0.0) + value
            elif name == "rokv_worker_direct_info":
                worker(labels["worker"]).direct = labels.get("endpoint", "")
            elif name == "rokv_worker_dataset_keys":
                worker(labels["worker"]).dataset_keys = int(value)
            elif name == "rokv_broker_up":
                broker(labels["broker"]).up = value
            elif name == "rokv_broker_workers_connected":
                broker(labels["broker"]).workers = value
            elif name == "rokv_broker_clients_connected":
                broker(labels["broker"]).clients = value
            elif name == "rokv_broker_forwarded_frames_total" and labels.get("direction") == "request":
                broker(labels["broker"]).requests += value / 2  # routing id and body
    # Counters outlive their process (totals must not go down); a worker is
    # listed while its live gauges say it runs.
    result.workers = {name: w for name, w in sorted(workers.items()) if name in live}
    return result


# ------------------------------------------------------------------ rates


def _delta(new: float, old: float | None) -> float:
    """Increase of a counter; a counter that went down was reset (its host's
    supervisord restarted): all of its value is new."""
    if old is None or new < old:
        return new
    return new - old


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (0..1) of cumulative bucket counts (le -> count),
    interpolated within a bucket as Prometheus' histogram_quantile does;
    None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the last bound: the last bound is all we know
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


@dataclass
class Rates:
    requests: float
    keys: float
    hit_ratio: float | None
    p50: float | None
    p99: float | None

    @classmethod
    def between(cls, pairs: Iterable[tuple[WorkerTotals, WorkerTotals | None]], seconds: float) -> Rates:
        """Rates over ``seconds`` of (now, before) pairs of totals, summed."""
        requests = found = missed = keys = 0.0
        buckets: dict[float, float] = {}
        for new, old in pairs:
            requests += _delta(new.requests, old.requests if old else None)
            for outcome, value in new.keys.items():
                d = _delta(value, old.keys.get(outcome) if old else None)
                keys += d
                if outcome == "found":
                    found += d
                elif outcome == "not_found":
                    missed += d
            for le, value in new.buckets.items():
                buckets[le] = buckets.get(le, 0.0) + _delta(value, old.buckets.get(le) if old else None)
        seconds = max(seconds, 1e-9)
        return cls(
            requests / seconds,
            keys / seconds,
            found / (found + missed) if found + missed else None,
            quantile(0.5, buckets),
            quantile(0.99, buckets),
        )


def majority(datasets: Iterable[str]) -> str | None:
    """The dataset most workers serve (ties: the first in sorted order)."""
    counts = Counter(datasets)
    if not counts:
        return None
    best = max(counts.values())
    return min(d for d, n in counts.items() if n == best)


def view(before: list[HostScrape], now: list[HostScrape]) -> dict[str, Any]:
    """The pool between two readings of the same hosts, as ``rokv top --json`` prints it."""
    previous = {h.address: h for h in before}
    everyone = [w for h in now for w in h.workers.values()]
    common = majority(w.dataset for w in everyone)
    hosts: list[dict[str, Any]] = []
    flagged: list[dict[str, Any]] = []
    for host in now:
        old = previous.get(host.address)
        entry: dict[str, Any] = {"address": host.address, "error": host.error, "health": host.health}
        if host.error is None:
            seconds = host.taken - old.taken if old is not None and old.error is None else 0.0
            old_workers = old.workers if old is not None and old.error is None else {}
            pairs = [(w, old_workers.get(w.name)) for w in host.workers.values()]
            # Without an earlier reading there is no rate to show.
            known = seconds > 0
            entry.update(_rates(Rates.between(pairs, seconds) if known else None))
            entry["workers"] = []
            for w, o in pairs:
                odd = common is not None and w.dataset != common
                row = {
                    "name": w.name,
                    "digest": w.digest or None,
                    "path": w.path,
                    "keys": w.dataset_keys,
                    "dataset": w.dataset,
                    "flagged": odd,
                    "direct": w.direct or None,
                    "direct_share": _direct_share(w, o),
                    **_rates(Rates.between([(w, o)], seconds) if known and o is not None else None),
                }
                entry["workers"].append(row)
                if odd:
                    flagged.append({"host": host.address, "worker": w.name, "dataset": w.dataset})
            old_brokers = old.brokers if old is not None and old.error is None else {}
            entry["brokers"] = [
                {
                    "name": b.name,
                    "up": None if b.up is None else bool(b.up),
                    "workers_connected": int(b.workers),
                    "clients_connected": int(b.clients),
                    "requests_per_second": (
                        _delta(b.requests, old_brokers[b.name].requests) / seconds
                        if known and b.name in old_brokers
                        else None
                    ),
                }
                for b in host.brokers.values()
            ]
        hosts.append(entry)
    return {"majority_dataset": common, "workers": len(everyone), "hosts": hosts, "flagged": flagged}


def _direct_share(new: WorkerTotals, old: WorkerTotals | None) -> float | None:
    """The share of this worker's requests that came direct: since the last
    reading, else since its start; None when it answered none."""
    direct = _delta(new.paths.get("direct", 0.0), old.paths.get("direct") if old else None)
    total = direct + _delta(new.paths.get("broker", 0.0), old.paths.get("broker") if old else None)
    return direct / total if total else None


def _rates(rates: Rates | None) -> dict[str, float | None]:
    if rates is None:
        return {
            "requests_per_second": None,
            "keys_per_second": None,
            "hit_ratio": None,
            "p50_seconds": None,
            "p99_seconds": None,
        }
    return {
        "requests_per_second": rates.requests,
        "keys_per_second": rates.keys,
        "hit_ratio": rates.hit_ratio,
        "p50_seconds": rates.p50,
        "p99_seconds": rates.p99,
    }
