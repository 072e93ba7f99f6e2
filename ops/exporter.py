"""``rokv-metrics``: this host's scrape address (``ROKV_METRICS``).

One HTTP server per host serves the metrics of every rokv process on it, read
from prometheus_client's multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``,
run/metrics under supervisor), and says whether they serve:

- ``GET /metrics``: every process's metrics in Prometheus' text format (or
  OpenMetrics when the scraper asks for it). Before each reading, processes
  that are gone are retired (:mod:`rokv.ops.metricfiles`): no ghost
  outlives the next scrape.
- ``GET /healthz``: 200 when this host's rokv processes are up and serving,
  503 otherwise; the body is a short JSON object with the reason.

Run by supervisor (rokv-pool adds it when ROKV_METRICS is set); it then also
asks supervisord which rokv programs should be running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rokv.exitcodes import Exit, epilog
from rokv.hostport import METRICS_ENV, parse_address
from rokv.ops import metricfiles
from rokv.server.metrics import DIR_ENV

log = logging.getLogger("rokv.ops.exporter")

#: A process whose last publication is older than this is not serving (a
#: process publishes four times a second).
STALE_SECONDS = 5.0
#: The supervisor groups whose processes must serve for the host to be healthy.
SERVING_GROUPS = ("broker", "worker", "http")
#: States of a process its operator asked for: stopped on purpose is not a fault.
INTENDED = ("STOPPED",)


class Host:
    """The metrics folder of one host, and what supervisord says of its
    processes (when it runs this exporter). Thread-safe: one reading at a time."""

    def __init__(self, folder: str, supervisor: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.folder = folder
        self._supervisor = supervisor
        self._lock = threading.Lock()

    def families(self) -> list[Any]:
        """Every metric family of every live and past process of this host,
        after retiring the processes that are gone.

        Raises:
            OSError: the folder cannot be read.
        """
        from prometheus_client.multiprocess import MultiProcessCollector

        with self._lock:
            metricfiles.sweep(self.folder)
            families = list(MultiProcessCollector(None, self.folder).collect())
        return self._add_down_brokers(families)

    def processes(self) -> list[dict[str, Any]] | None:
        """supervisord's process info for the serving groups, or None without
        supervisord."""
        if self._supervisor is None:
            return None
        return [info for info in self._supervisor() if info["group"] in SERVING_GROUPS]

    def _add_down_brokers(self, families: list[Any]) -> list[Any]:
        """rokv_broker_up is published by the broker itself, so a broker that
        is down has no sample: supervisord knows it, and it gets a 0."""
        try:
            processes = self.processes()
        except Exception:  # noqa: BLE001 - supervisord away: no extra samples
            return families
        down = [
            info["name"] for info in processes or [] if info["group"] == "broker" and info["statename"] != "RUNNING"
        ]
        if not down:
            return families
        from prometheus_client.metrics_core import GaugeMetricFamily

        up = next((f for f in families if f.name == "rokv_broker_up"), None)
        if up is None:
            up = GaugeMetricFamily(
                "rokv_broker_up", "1 while the broker forwards, 0 when its proxy stopped", labels=["broker"]
            )
            families.append(up)
        named = {s.labels.get("broker") for s in up.samples}
        for name in down:
            if name not in named:
                up.add_sample("rokv_broker_up", {"broker": name}, 0.0)
        return families

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report): the report names each process's state and, when
        unhealthy, the reason."""
        try:
            families = self.families()
        except OSError as exc:
            return False, {"status": "unavailable", "reason": f"cannot read the metrics folder: {exc}"}
        beats = _latest(families, "rokv_worker_heartbeat_timestamp_seconds", "worker")
        beats.update(_latest(families, "rokv_broker_heartbeat_timestamp_seconds", "broker"))
        ups = _latest(families, "rokv_broker_up", "broker")
        now = time.time()

        def serving(name: str) -> str | None:
            """None when ``name`` serves, else why not."""
            beat = beats.get(name)
            if beat is None:
                return "publishes nothing (loading its dataset, or metrics are off)"
            if now - beat > STALE_SECONDS:
                return f"last published {now - beat:.0f} s ago (stuck?)"
            if name in ups and not ups[name]:
                return "its proxy stopped"
            return None

        states: dict[str, str] = {}
        problems: list[str] = []
        try:
            processes = self.processes()
        except Exception as exc:  # noqa: BLE001 - any failure to reach supervisord
            return False, {"status": "unavailable", "reason": f"cannot ask supervisord: {exc}"}
        if processes is not None:
            for info in processes:
                full = f"{info['group']}:{info['name']}" if info["group"] != info["name"] else info["name"]
                state = info["statename"]
                if state in INTENDED:
                    states[full] = state.lower()
                    continue
                why = (
                    f"is {state}"
                    if state != "RUNNING"
                    else (serving(info["name"]) if info["group"] in ("broker", "worker") else None)
                )
                states[full] = "serving" if why is None else why
                if why is not None:
                    problems.append(f"{full} {why}")
        else:
            for name in beats:
                why = serving(name)
                states[name] = "serving" if why is None else why
                if why is not None:
                    problems.append(f"{name} {why}")
        if not problems and "serving" not in states.values():
            problems.append("no rokv process is serving on this host")
        report: dict[str, Any] = {"status": "ok" if not problems else "unavailable"}
        if problems:
            report["reason"] = "; ".join(problems)
        report["processes"] = states
        return not problems, report


def _latest(families: Iterable[Any], metric: str, label: str) -> dict[str, float]:
    """label value -> sample value of a gauge."""
    found: dict[str, float] = {}
    for family in families:
        if family.name == metric:
            for sample in family.samples:
                if label in sample.labels:
                    found[sample.labels[label]] = sample.value
    return found


class _Collector:
    """Hands a prepared list of families to prometheus_client's encoder."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> list[Any]:
        return self._families


def exposition(host: Host, accept: str | None) -> tuple[bytes, str]:
    """(body, content type) of one scrape, in the format ``accept`` asks for.

    Raises:
        OSError: the folder cannot be read.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(host.families()))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def make_handler(host: Host) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "rokv-metrics"

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics":
                try:
                    body, content_type = exposition(host, self.headers.get("Accept"))
                except OSError as exc:
                    self._send(500, f"cannot read the metrics folder: {exc}\n".encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, body, content_type)
            elif path == "/healthz":
                healthy, report = host.health()
                self._send(
                    200 if healthy else 503, (json.dumps(report, sort_keys=True) + "\n").encode(), "application/json"
                )
            elif path == "/":
                self._send(
                    200,
                    b"rokv-metrics: /metrics (Prometheus), /healthz (200 or 503, JSON)\n",
                    "text/plain; charset=utf-8",
                )
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

        def do_HEAD(self) -> None:
            self._head_only = True
            self.do_GET()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not getattr(self, "_head_only", False):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape a second would flood the log

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(listen: str, folder: str, supervisor: Callable[[], list[dict[str, Any]]] | None = None) -> _Server:
    """A started server (in a daemon thread) for ``listen`` (HOST:PORT).

    Raises:
        ValueError: ``listen`` is not HOST:PORT.
        OSError: the address cannot be bound.
    """
    address, port = parse_address(listen)
    server_class: type[_Server] = _Server
    if ":" in address:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_class((address, port), make_handler(Host(folder, supervisor)))
    threading.Thread(target=server.serve_forever, name="rokv-metrics-http", daemon=True).start()
    return server


def _supervisor_from_env() -> Callable[[], list[dict[str, Any]]] | None:
    """supervisord's getAllProcessInfo when it runs this process, else None."""
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        return None
    from supervisor import childutils

    def processes() -> list[dict[str, Any]]:
        # A new proxy per call: the XML-RPC transport is not thread-safe.
        rpc: Any = childutils.getRPCInterface(os.environ)
        return rpc.supervisor.getAllProcessInfo()

    return processes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rokv-metrics",
        description="Serve the metrics of every rokv process of this host (GET /metrics) and their health "
        "(GET /healthz).",
        epilog=epilog("rokv-metrics"),
    )
    parser.add_argument(
        "--listen",
        default=os.environ.get(METRICS_ENV) or None,
        help=f"HOST:PORT to serve on (env {METRICS_ENV}, e.g. 127.0.0.1:9555)",
    )
    parser.add_argument(
        "--dir",
        default=os.environ.get(DIR_ENV) or None,
        help=f"the folder the rokv processes publish into (env {DIR_ENV})",
    )
    args = parser.parse_args(argv)
    if not args.listen:
        parser.error(f"give --listen HOST:PORT or set {METRICS_ENV}")
    if not args.dir:
        parser.error(f"give --dir or set {DIR_ENV}")
    try:
        parse_address(args.listen)
    except ValueError as exc:
        parser.error(f"--listen / {METRICS_ENV}: {exc}")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s rokv-metrics[{os.getpid()}] %(levelname)s %(message)s",
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        os.makedirs(args.dir, exist_ok=True)
        server = serve(args.listen, args.dir, _supervisor_from_env())
    except ImportError as exc:
        print(f"rokv-metrics: {exc}: it comes with the server extra: pip install 'rokv[server]'", file=sys.stderr)
        return Exit.USAGE
    except OSError as exc:
        print(f"rokv-metrics: cannot serve on {args.listen} from {args.dir}: {exc}", file=sys.stderr)
        return Exit.NO
    log.info("serving the metrics of %s on http://%s/metrics and /healthz", args.dir, args.listen)
    received = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    log.info("received %s: stopping", signal.Signals(received).name)
    server.shutdown()
    server.server_close()
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
