"""``rokv-worker``: load the dataset, connect to the broker's backend, answer
until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import zmq

from rokv import directory
from rokv import protocol as p
from rokv.dataset import DatasetError
from rokv.discovery import Discovery, PerPeer, Tracker, interval_from_env, is_dns
from rokv.endpoints import check_endpoints
from rokv.exitcodes import Exit, epilog
from rokv.security import CurvePeer, KeyFileError, load_public, load_secret
from rokv.server import metrics
from rokv.server.monitor import ConnectionWatcher
from rokv.worker import native, refusal
from rokv.worker.direct import DirectEndpoint, Reporter
from rokv.worker.handler import Handler
from rokv.worker.load import open_dataset
from rokv.worker.loop import CLOSE_LINGER_MS, SEND_TIMEOUT_MS, StopFlag, serve
from rokv.worker.native import Compiled

log = logging.getLogger("rokv.worker")

#: Relative to the working folder: supervisord.conf runs workers in its own
#: folder, so in a checkout this is the bundled example dataset.
DEFAULT_DATA = "data/example.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from rokv.endpoints import endpoint_argument, endpoints_argument

    parser = argparse.ArgumentParser(
        prog="rokv-worker",
        description="Serve a rokv dataset to the brokers' backends; a dataset that cannot be loaded is "
        "refused, and nothing is served.",
        epilog=epilog("rokv-worker"),
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("ROKV_DATA") or DEFAULT_DATA,
        help="dataset file: .rokv (built by `rokv build`, memory-mapped), .json or .jsonl "
        "(env ROKV_DATA; default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("ROKV_BACKEND") or p.DEFAULT_BACKEND,
        type=endpoints_argument(),
        help="the broker backend to connect to, or several brokers' comma-separated: this worker serves "
        "each, answering every request through the broker that brought it (env ROKV_BACKEND; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("SUPERVISOR_PROCESS_NAME") or f"{socket.gethostname()}:{os.getpid()}",
        help="worker id reported by ping (default: supervisor's process name, else host:pid)",
    )
    parser.add_argument(
        "--curve-secret",
        default=os.environ.get("ROKV_WORKER_SECRET") or None,
        help="this worker's CurveZMQ .key_secret file, when the broker uses CURVE (env ROKV_WORKER_SECRET)",
    )
    parser.add_argument(
        "--broker-key",
        default=os.environ.get("ROKV_BROKER_KEY") or None,
        help="the broker's public .key file, with --curve-secret (env ROKV_BROKER_KEY)",
    )
    parser.add_argument(
        "--direct-bind",
        default=os.environ.get("ROKV_DIRECT_BIND") or None,
        type=endpoint_argument(any_port=True),
        help="also serve clients directly on this endpoint (a ROUTER), e.g. tcp://127.0.0.1:* (port * picks a "
        "free one): clients with direct=True find it in the brokers' directory (env ROKV_DIRECT_BIND; "
        "default: none)",
    )
    parser.add_argument(
        "--advertise",
        default=os.environ.get("ROKV_ADVERTISE") or None,
        type=endpoint_argument(any_port=True),
        help="the endpoint clients are told to dial for --direct-bind, when the bound address is not it "
        "(0.0.0.0, containers, NAT); port * means the bound port (env ROKV_ADVERTISE; default: the bound "
        "endpoint, a wildcard host replaced by this host's name)",
    )
    parser.add_argument(
        "--client-keys",
        default=os.environ.get("ROKV_CLIENT_KEYS") or None,
        help="with --curve-secret and --direct-bind: folder of the public .key files of clients allowed on the "
        "direct endpoint (env ROKV_CLIENT_KEYS, the brokers' client allow-list)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        default=os.environ.get("ROKV_ALLOW_EMPTY") == "1",
        help="serve a dataset of no keys, which is refused by default (env ROKV_ALLOW_EMPTY=1)",
    )
    args = parser.parse_args(argv)
    if os.environ.get("ROKV_ALLOW_EMPTY", "") not in ("", "0", "1"):
        parser.error(f"ROKV_ALLOW_EMPTY={os.environ['ROKV_ALLOW_EMPTY']!r}: expected 1 (allow) or 0")
    try:
        interval_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    if bool(args.curve_secret) != bool(args.broker_key):
        parser.error("--curve-secret and --broker-key go together")
    if args.direct_bind and args.curve_secret and not args.client_keys:
        # CURVE without an authenticator encrypts but admits anyone.
        parser.error("--direct-bind with --curve-secret needs --client-keys (the clients' allow-list folder)")
    if args.direct_bind and args.client_keys and not os.path.isdir(args.client_keys):
        parser.error(f"allow-list folder {args.client_keys!r} does not exist")
    if args.advertise and not args.direct_bind:
        parser.error("--advertise needs --direct-bind")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rokv-worker[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # A stop request only raises a flag: the receive loop looks at it between
    # messages, so no request is ever dropped halfway through its answer.
    stop = StopFlag()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop.raise_flag)

    started = time.monotonic()
    rules = _rules(allow_empty=args.allow_empty)
    remembered = refusal.recall(args.data, rules)
    if remembered is not None:
        print(f"rokv-worker: {remembered}", file=sys.stderr)
        return Exit.NO
    try:
        data = open_dataset(args.data, allow_empty=args.allow_empty)
    except DatasetError as exc:
        reason = str(exc)
        if args.data == DEFAULT_DATA and not os.path.exists(DEFAULT_DATA):
            reason += (
                f" (the default {DEFAULT_DATA} exists only in a checkout of rokv, where supervisord.conf "
                "runs workers; give a dataset with ROKV_DATA or --data)"
            )
        print(f"rokv-worker: {reason}", file=sys.stderr)
        refusal.remember(args.data, rules, reason)
        return Exit.NO
    refusal.forget(args.data, rules)
    load_seconds = time.monotonic() - started
    if stop.raised:
        return Exit.OK  # stopped while loading

    ctx = zmq.Context()
    watcher = ConnectionWatcher(log)
    backends = check_endpoints(args.backend)
    socks: list[zmq.Socket] = []
    named: _BackendsByName | None = None
    connected = False
    try:
        for backend in backends:
            if not is_dns(backend):
                socks.append(_connect(ctx, watcher, backend, args))
        if any(map(is_dns, backends)):
            if args.curve_secret:  # checked now: a name's sockets are opened later, as it resolves
                load_secret(args.curve_secret), load_public(args.broker_key)
            # tcp+dns:// backends: one socket per address the name resolves to, kept up to date.
            named = _BackendsByName(ctx, watcher, backends, args, socks)
        connected = True
    except KeyFileError as exc:
        print(f"rokv-worker: {exc}", file=sys.stderr)
        return Exit.NO
    except zmq.ZMQError as exc:
        print(f"rokv-worker: cannot connect to {backend!r}: {exc}", file=sys.stderr)
        return Exit.NO
    finally:
        if not connected:
            for sock in socks:
                ConnectionWatcher.unwatch(sock)
                sock.close(linger=0)
            watcher.stop()
            ctx.term()
    # Loaded before the direct endpoint is made: the compiled loop serves it itself.
    module = native.load()
    direct: DirectEndpoint | None = None
    if args.direct_bind:
        try:
            direct = DirectEndpoint(
                ctx,
                watcher,
                args.direct_bind,
                args.advertise,
                max_message_size=_limits()["max_message_size"],
                curve_secret=args.curve_secret,
                client_keys=args.client_keys,
                compiled=module,
            )
        except (KeyFileError, zmq.ZMQError, OSError) as exc:
            print(f"rokv-worker: cannot serve the direct endpoint {args.direct_bind!r}: {exc}", file=sys.stderr)
            for sock in socks:
                ConnectionWatcher.unwatch(sock)
                sock.close(linger=0)
            watcher.stop()
            ctx.term()
            return Exit.NO
    # A .rokv file names its content: ping and the log say which version is served.
    digest = getattr(data, "digest", None)
    extra: dict[str, object] = {"limits": _limits()}
    if digest:
        extra["digest"] = digest
    if direct is not None:
        extra["direct"] = direct.advertised
    handler = Handler(data, worker_id=args.name, dataset=args.data, extra_info=extra)
    reporter = Reporter(
        socks,
        {
            "id": args.name[: directory.MAX_FIELD_LENGTH],
            "endpoint": direct.advertised if direct is not None else None,
            "host": socket.gethostname()[: directory.MAX_FIELD_LENGTH],
            "pid": os.getpid(),
            "digest": digest,
            "keys": len(data),
            "curve_key": direct.curve_key if direct is not None else None,
        },
    )
    if direct is not None:
        log.info(
            "serving clients directly on %s, advertised as %s%s",
            direct.bound,
            direct.advertised,
            " (CURVE, the clients' allow-list)"
            if direct.auth is not None
            else " (served by the compiled loop, without libzmq)"
            if direct.native is not None
            else "",
        )
    log.info(
        "serving %s: %d keys %s in %.2f s%s; connecting to %s as %s",
        args.data,
        len(data),
        "mapped" if digest else "loaded",
        load_seconds,
        f" (digest {digest})" if digest else "",
        ", ".join(backends),
        args.name,
    )
    published = _publisher(handler, args, digest, len(data), load_seconds, watcher, direct)
    compiled = Compiled(module, handler) if module is not None else None
    tick = reporter.maybe_report
    if published is not None:
        tick = _both(published.maybe_publish, reporter.maybe_report)
    if named is not None:
        tick = named.ticking(tick)
    reporter.maybe_report()  # at once: clients may look this worker up before its first tick
    try:
        serve(
            socks,
            handler,
            stop,
            tick=tick,
            compiled=compiled,
            direct=direct.served if direct else None,
            changing=named is not None,
        )
    finally:
        reporter.leave()
        if direct is not None:
            direct.close()
        if named is not None:
            named.close()
        if published is not None:
            published.publish()  # what was counted since the last second
            metrics.retire()
        for sock in socks:
            ConnectionWatcher.unwatch(sock)
            sock.close()  # waits up to CLOSE_LINGER_MS for replies still queued
        watcher.stop()
        ctx.term()
    log.info("stopped")
    return Exit.OK


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    """A tick that runs ``first`` then ``second``."""

    def both() -> None:
        first()
        second()

    return both


def _publisher(
    handler: Handler,
    args: argparse.Namespace,
    digest: str | None,
    keys: int,
    load_seconds: float,
    watcher: ConnectionWatcher,
    direct: DirectEndpoint | None = None,
) -> metrics.WorkerMetrics | None:
    """This worker's metrics when the host publishes them (ROKV_METRICS set,
    so rokv-pool set PROMETHEUS_MULTIPROC_DIR); None otherwise, or when they
    cannot be published (logged: serving matters more than metrics)."""
    folder = metrics.metrics_dir()
    if folder is None:
        return None
    try:
        metrics.prepare(folder)
        return metrics.WorkerMetrics(
            args.name,
            handler.stats,
            dataset=os.path.abspath(args.data),
            digest=digest,
            keys=keys,
            load_seconds=load_seconds,
            brokers_connected=lambda: sum(link.up for link in watcher.links()),
            direct=direct.advertised if direct is not None else None,
            direct_connections=direct.open_connections if direct is not None else None,
        )
    except ImportError as exc:
        log.error("metrics are off: %s (it comes with the server extra: pip install 'rokv[server]')", exc)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("metrics are off: cannot publish into %s: %s", folder, exc)
    return None


def _connect(ctx: zmq.Context, watcher: ConnectionWatcher, backend: str, args: argparse.Namespace) -> zmq.Socket:
    """A DEALER connected to one broker's backend. One socket per broker: a
    DEALER connected to several would round-robin its replies over them, and
    a reply reaching a broker that never saw the request is dropped.

    Raises:
        KeyFileError: a CURVE key file is bad.
        zmq.ZMQError: libzmq refused the endpoint.
    """
    sock = ctx.socket(zmq.DEALER)
    sock.linger = CLOSE_LINGER_MS
    sock.sndtimeo = SEND_TIMEOUT_MS
    # Notice a broker that vanished without closing the connection, and
    # reconnect (by itself, when it comes back), rather than wait on a dead link.
    sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
    sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
    if "[" in backend:
        sock.ipv6 = True
    try:
        if args.curve_secret:
            CurvePeer(args.curve_secret, args.broker_key).apply(sock)
        # Logs when the broker admits this worker, refuses it (a CURVE key
        # not on its allow-list, a wrong broker key) or is lost.
        watcher.watch(sock, _label(backend), server=False)
        sock.connect(backend)
    except BaseException:
        ConnectionWatcher.unwatch(sock)
        sock.close(linger=0)
        raise
    return sock


def _label(backend: str) -> str:
    """How the connection watcher names the link to one broker."""
    return f"broker {backend}"


class _BackendsByName:
    """The worker's ``tcp+dns://`` backends: a socket per address each name
    resolves to, opened and closed as the names change (re-resolved every
    ROKV_DNS_INTERVAL seconds). The change is applied to ``socks`` (after the
    sockets of plain endpoints, in it already) in place, between two polls of
    the serving loop (its tick), in the loop's thread."""

    def __init__(
        self,
        ctx: zmq.Context,
        watcher: ConnectionWatcher,
        backends: list[str],
        args: argparse.Namespace,
        socks: list[zmq.Socket],
    ) -> None:
        self.socks = socks
        self.fixed = list(socks)
        self.discovery = Discovery(backends)
        self.tracker = Tracker(self.discovery)

        def close(peer: str, sock: zmq.Socket) -> None:
            ConnectionWatcher.unwatch(sock)
            sock.close(linger=0)  # its broker is gone: nothing queued for it can arrive
            watcher.forget(_label(peer))
            log.info("no longer serving broker %s: gone from its name's addresses", peer)

        self.peers = [
            PerPeer(self.discovery, b, lambda peer: _connect(ctx, watcher, peer, args), close)
            for b in backends
            if is_dns(b)
        ]
        self.refresh()

    def refresh(self) -> None:
        """Apply what the names resolve to now, when it changed."""
        if self.tracker.changed() and any([peers.sync() for peers in self.peers]):  # a list: sync every name
            self.socks[:] = self.fixed + [s for peers in self.peers for s in peers.socks.values()]

    def ticking(self, tick: Callable[[], None]) -> Callable[[], None]:
        def both() -> None:
            self.refresh()
            tick()

        return both

    def close(self) -> None:
        self.discovery.close()


def _rules(*, allow_empty: bool) -> str:
    """What decides whether a dataset is accepted: a refusal remembered under
    other rules (another rokv version, another --allow-empty) is not trusted."""
    try:
        from importlib.metadata import version

        return f"rokv {version('rokv')}; allow_empty={allow_empty}"
    except Exception:  # noqa: BLE001 - not installed (run from a checkout): judge afresh
        return f"rokv unknown {time.time()}"


def _limits() -> dict[str, int]:
    """The limits a client must respect (PROTOCOL.md, "Limits"), as ping
    reports them. The message size is the broker's setting: a worker reads the
    same variable, since pools are configured through one environment."""
    try:
        max_message_size = int(os.environ.get("ROKV_MAX_MESSAGE_SIZE") or p.DEFAULT_MAX_MESSAGE_SIZE)
    except ValueError:
        max_message_size = p.DEFAULT_MAX_MESSAGE_SIZE
    return {
        "max_message_size": max_message_size,
        "max_in_flight": p.MAX_IN_FLIGHT,
        "max_mget_keys": p.MAX_MGET_KEYS,
        "max_key_length": p.MAX_KEY_LENGTH,
    }


if __name__ == "__main__":
    sys.exit(main())
