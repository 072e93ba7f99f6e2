"""Publishing a worker's and a broker's metrics for the host's scrape address.

Every rokv process of a host writes its metrics into prometheus_client's
multiprocess files in one folder (``PROMETHEUS_MULTIPROC_DIR``, run/metrics
under supervisor); ``rokv-metrics`` (:mod:`rokv.ops.exporter`) reads them
all and serves them on ``ROKV_METRICS``. A process publishes only when that
variable is set: without it nothing here is imported.

Cost: the serving loop counts in plain integers (:mod:`rokv.server.stats`);
:meth:`WorkerMetrics.maybe_publish`, called every few hundred messages and at
every idle timeout, adds the increase since its last publication to the
shared files four times a second. Each publication is a few dozen writes into
a memory-mapped file, whatever the request rate.

Restarts: counters are kept per process file and summed by the exporter, so a
worker that restarts under the same name (supervisor's ``worker_00``) adds to
its totals instead of resetting them; what it counted after its last
publication (at most :data:`PUBLISH_SECONDS`) is lost if it is killed, never
counted twice. Gauges are "live" gauges: they vanish when their process does
(the exporter calls ``mark_process_dead`` for every process that is gone), so
a stopped or replaced worker leaves no ghost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from rokv.server.stats import BUCKETS, KEY_OUTCOMES, OPS, OUTCOMES, RequestStats, Snapshot

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

#: The folder of the shared metric files; set by rokv-pool when ROKV_METRICS is.
DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often counts are published, at most: often enough that a rate over
#: one second (rokv top) is not lumpy, and still a few hundred file writes
#: a second at most.
PUBLISH_SECONDS = 0.25
#: Gauges vanish with their process, and of several processes that once
#: held the same labels (a restarted worker), the latest value wins.
LIVE: Final = "livemostrecent"
#: The (op, outcome) pairs that can happen: their series exist from the start
#: at 0, so that a rate over them is defined before the first one occurs.
POSSIBLE = (
    [("get", o) for o in ("found", "not_found", "invalid", "damaged")]
    + [("mget", o) for o in ("found", "not_found", "invalid", "damaged")]
    + [("ping", "ok"), ("other", "refused"), ("other", "error")]
)


def metrics_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The folder metrics are published into, or None when metrics are off."""
    return env.get(DIR_ENV) or None


def prepare(path: str) -> None:
    """Make ``path`` ready for this process: created if missing, and cleared of
    the live gauges of an earlier process that had this process's PID (its
    labels would otherwise outlive it under this process's name).

    Raises:
        OSError: the folder cannot be made.
    """
    os.makedirs(path, exist_ok=True)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid(), path)


def retire() -> None:
    """This process stops publishing: its live gauges go now rather than at
    the exporter's next look (its counters stay, summed into the totals)."""
    path = os.environ.get(DIR_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), path)


def _gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
    from prometheus_client import Gauge

    # registry=None: the exporter reads the files; nothing in this process
    # serves a registry.
    return Gauge(name, doc, labels, registry=None, multiprocess_mode=LIVE)


def _counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
    from prometheus_client import Counter

    return Counter(name, doc, labels, registry=None)


class WorkerMetrics:
    """A worker's published metrics, labelled ``worker=NAME`` (supervisor's
    stable process name, so a restarted worker continues its own series)."""

    def __init__(
        self,
        name: str,
        stats: RequestStats,
        *,
        dataset: str,
        digest: str | None,
        keys: int,
        load_seconds: float,
        brokers_connected: Callable[[], int],
        direct: str | None = None,
        direct_connections: Callable[[], int] | None = None,
    ) -> None:
        from prometheus_client import Histogram

        self.name = name
        self.stats = stats
        self._brokers_connected = brokers_connected
        self._last = Snapshot.zero()
        self._next = time.monotonic()
        worker = ("worker",)
        requests = _counter(
            "rokv_worker_requests_total", "Requests answered, by operation and outcome", ("worker", "op", "outcome")
        )
        self._requests = [
            requests.labels(name, op, outcome) if (op, outcome) in POSSIBLE else None
            for op in OPS
            for outcome in OUTCOMES
        ]
        keys_total = _counter(
            "rokv_worker_keys_total", "Keys looked up (get and mget), by outcome", ("worker", "outcome")
        )
        self._keys = [keys_total.labels(name, outcome) for outcome in KEY_OUTCOMES]
        histogram = Histogram(
            "rokv_worker_request_duration_seconds",
            "Time to handle one request: decode, look up, encode",
            worker,
            buckets=BUCKETS,
            registry=None,
        )
        self._histogram = histogram.labels(name)
        # prometheus_client has no way to add n observations to a bucket at
        # once; its children keep one value per bucket (the +Inf one last)
        # and one for the sum. tests/test_metrics.py pins this.
        self._bucket_values: list[Any] = self._histogram._buckets
        self._sum_value: Any = self._histogram._sum
        if len(self._bucket_values) != len(BUCKETS) + 1:
            raise RuntimeError("prometheus_client's Histogram changed: cannot publish rokv's bucket counts")
        by_path = _counter(
            "rokv_worker_path_requests_total",
            "Requests by the path they came by: through a broker, or straight to the worker's direct endpoint",
            ("worker", "path"),
        )
        self._paths = {path: by_path.labels(name, path) for path in ("broker", "direct")}
        if direct:
            _gauge(
                "rokv_worker_direct_info", "The direct endpoint clients are told to dial", ("worker", "endpoint")
            ).labels(name, direct).set(1)
        self._heartbeat = _gauge(
            "rokv_worker_heartbeat_timestamp_seconds",
            "When the worker's serving loop last published (Unix time); old when the loop is stuck",
            worker,
        ).labels(name)
        self._brokers = _gauge("rokv_worker_brokers_connected", "Brokers this worker is connected to", worker).labels(
            name
        )
        self._direct_connections = direct_connections
        self._clients = (
            _gauge(
                "rokv_worker_direct_connections", "Client connections open on the worker's direct endpoint", worker
            ).labels(name)
            if direct_connections is not None
            else None
        )
        _gauge("rokv_worker_dataset_keys", "Keys in the dataset served", worker).labels(name).set(keys)
        _gauge(
            "rokv_worker_dataset_info",
            "The dataset served: its content digest (empty for JSON) and path",
            ("worker", "digest", "path"),
        ).labels(name, digest or "", dataset).set(1)
        _gauge("rokv_worker_dataset_load_seconds", "Time the worker took to load or map its dataset", worker).labels(
            name
        ).set(load_seconds)
        _gauge("rokv_worker_start_time_seconds", "When the worker process started (Unix time)", worker).labels(
            name
        ).set(process_start_time())
        self.publish()

    def maybe_publish(self) -> None:
        """Publish when :data:`PUBLISH_SECONDS` have passed since the last time."""
        if time.monotonic() >= self._next:
            self.publish()

    def publish(self) -> None:
        """Add what was counted since the last publication to the shared files."""
        self._next = time.monotonic() + PUBLISH_SECONDS
        now = self.stats.snapshot()
        last, self._last = self._last, now
        for child, new, old in zip(self._requests, now.requests, last.requests):
            if new != old and child is not None:
                child.inc(new - old)
        for child, new, old in zip(self._keys, now.keys, last.keys):
            if new != old:
                child.inc(new - old)
        for path, new in now.paths.items():
            old = last.paths[path]
            if new != old:
                self._paths[path].inc(new - old)
        if now.seconds != last.seconds:
            for value, new, old in zip(self._bucket_values, now.buckets, last.buckets):
                if new != old:
                    value.inc(new - old)
            self._sum_value.inc(now.seconds - last.seconds)
        self._brokers.set(self._brokers_connected())
        if self._clients is not None and self._direct_connections is not None:
            self._clients.set(self._direct_connections())
        self._heartbeat.set(time.time())


class BrokerMetrics:
    """A broker's published metrics, labelled ``broker=NAME``."""

    #: libzmq's proxy STATISTICS, in its order: frontend (clients) messages
    #: and bytes in and out, then backend (workers) the same.
    DIRECTIONS = ("request", "reply")

    def __init__(self, name: str) -> None:
        self.name = name
        broker = ("broker",)
        self._up = _gauge("rokv_broker_up", "1 while the broker forwards, 0 when its proxy stopped", broker).labels(
            name
        )
        self._workers = _gauge("rokv_broker_workers_connected", "Workers connected to this broker", broker).labels(name)
        self._clients = _gauge(
            "rokv_broker_clients_connected", "Client connections open to this broker", broker
        ).labels(name)
        self._heartbeat = _gauge(
            "rokv_broker_heartbeat_timestamp_seconds", "When the broker last published (Unix time)", broker
        ).labels(name)
        _gauge("rokv_broker_start_time_seconds", "When the broker process started (Unix time)", broker).labels(
            name
        ).set(process_start_time())
        # libzmq 4.3.5's proxy counts frames, not messages (measured: a
        # request or a reply is 2, the routing id and the body).
        messages = _counter(
            "rokv_broker_forwarded_frames_total",
            "ZeroMQ frames forwarded: of requests (clients to workers) and of replies (workers to "
            "clients); a well-formed request or reply is 2 frames",
            ("broker", "direction"),
        )
        volume = _counter(
            "rokv_broker_forwarded_bytes_total",
            "Bytes of the messages forwarded, by direction",
            ("broker", "direction"),
        )
        self._messages = [messages.labels(name, d) for d in self.DIRECTIONS]
        self._bytes = [volume.labels(name, d) for d in self.DIRECTIONS]
        self._restarts = _counter(
            "rokv_broker_proxy_restarts_total",
            "Times the proxy resumed after libzmq woke it with nothing to read "
            "(forwarded counts since the last publication are lost then)",
            broker,
        ).labels(name)
        self._last = (0, 0, 0, 0, 0)

    def publish(
        self, *, up: bool, workers: int, clients: int, messages: tuple[int, int], volume: tuple[int, int], restarts: int
    ) -> None:
        """Publish the broker's state; ``messages`` (frames), ``volume`` (bytes), each (requests,
        replies), and ``restarts`` are totals since the start, never lower
        than at the last call."""
        self._up.set(1 if up else 0)
        self._workers.set(workers)
        self._clients.set(clients)
        now = (*messages, *volume, restarts)
        for child, new, old in zip([*self._messages, *self._bytes, self._restarts], now, self._last):
            if new > old:
                child.inc(new - old)
        self._last = tuple(max(n, o) for n, o in zip(now, self._last))  # type: ignore[assignment]  # same length as before
        self._heartbeat.set(time.time())


def process_start_time() -> float:
    """When this process started, as Unix time (from /proc: the start in
    clock ticks since boot, which CLOCK_BOOTTIME also counts); now when
    /proc cannot tell."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - max(age, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()
