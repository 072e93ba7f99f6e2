"""``rokv-broker``: a ROUTER frontend for clients and a DEALER backend for
workers, joined by ``zmq.proxy_steerable`` so that forwarding runs in libzmq."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

import zmq

from rokv import protocol as p
from rokv.broker.directory import INLET_ENDPOINT, Directory
from rokv.directory import DIRECTORY_ROUTE, directory_endpoint
from rokv.endpoints import endpoint_argument
from rokv.exitcodes import Exit, epilog
from rokv.security import KeyFileError, load_secret
from rokv.server import metrics
from rokv.server.auth import CLIENTS_DOMAIN, WORKERS_DOMAIN, GateKeeper
from rokv.server.monitor import ConnectionWatcher

if TYPE_CHECKING:
    from rokv.server.metrics import BrokerMetrics

log = logging.getLogger("rokv.broker")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
#: SIGHUP re-reads the CURVE allow-list folders.
WAITED_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}
CONTROL_ENDPOINT = "inproc://rokv-broker-control"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        print(f"rokv-broker: {name}={raw!r} is not an integer", file=sys.stderr)
        raise SystemExit(Exit.USAGE) from None


def _default_backend() -> str | None:
    """ROKV_BROKER_BACKEND, else ROKV_BACKEND when it names one endpoint (a
    list is the workers' view of several brokers: None), else the default."""
    own = os.environ.get("ROKV_BROKER_BACKEND")
    if own:
        return own
    shared = os.environ.get("ROKV_BACKEND") or p.DEFAULT_BACKEND
    return None if "," in shared else shared


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rokv-broker",
        description="Forward client requests to workers.",
        epilog=epilog("rokv-broker"),
    )
    parser.add_argument(
        "--frontend",
        default=os.environ.get("ROKV_FRONTEND") or p.DEFAULT_FRONTEND,
        type=endpoint_argument(),
        help="endpoint clients connect to (env ROKV_FRONTEND; default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        default=_default_backend(),
        type=endpoint_argument(),
        help="endpoint workers connect to (env ROKV_BROKER_BACKEND, else ROKV_BACKEND; default %(default)s). "
        "On a host that runs workers for several brokers, ROKV_BACKEND lists them all and "
        "ROKV_BROKER_BACKEND names the one this broker binds",
    )
    parser.add_argument(
        "--directory",
        default=os.environ.get("ROKV_DIRECTORY") or None,
        type=endpoint_argument(),
        help="endpoint where clients ask for the pool's map, to reach workers directly (env ROKV_DIRECTORY; "
        "default: the frontend's port + 2, e.g. tcp://127.0.0.1:5557, served when that port is free)",
    )
    parser.add_argument(
        "--io-threads",
        type=int,
        default=_int_env("ROKV_IO_THREADS", 1),
        help="libzmq I/O threads (env ROKV_IO_THREADS; default %(default)s)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=_int_env("ROKV_MAX_MESSAGE_SIZE", p.DEFAULT_MAX_MESSAGE_SIZE),
        help="largest request in bytes; a client sending more is disconnected "
        "(env ROKV_MAX_MESSAGE_SIZE; default %(default)s)",
    )
    parser.add_argument(
        "--curve-secret",
        default=os.environ.get("ROKV_BROKER_SECRET") or None,
        help="the broker's CurveZMQ .key_secret file: encrypt and authenticate both sides "
        "(env ROKV_BROKER_SECRET; default: no encryption)",
    )
    parser.add_argument(
        "--client-keys",
        default=os.environ.get("ROKV_CLIENT_KEYS") or None,
        help="with --curve-secret: folder of the public .key files of clients allowed in (env ROKV_CLIENT_KEYS)",
    )
    parser.add_argument(
        "--worker-keys",
        default=os.environ.get("ROKV_WORKER_KEYS") or None,
        help="with --curve-secret: folder of the public .key files of workers allowed to serve (env ROKV_WORKER_KEYS)",
    )
    args = parser.parse_args(argv)
    args.directory_given = args.directory is not None
    if args.directory is None:
        args.directory = directory_endpoint(args.frontend)
    if args.backend is None:
        parser.error(
            f"ROKV_BACKEND={os.environ.get('ROKV_BACKEND')!r} lists several brokers (for the workers): "
            "set ROKV_BROKER_BACKEND to the one endpoint this broker binds, or give --backend"
        )
    if args.curve_secret and not (args.client_keys and args.worker_keys):
        # CURVE without an authenticator encrypts but admits anyone.
        parser.error("--curve-secret needs --client-keys and --worker-keys (allow-list folders)")
    if not args.curve_secret and (args.client_keys or args.worker_keys):
        parser.error("--client-keys and --worker-keys need --curve-secret")
    for folder in (args.client_keys, args.worker_keys):
        if folder and not os.path.isdir(folder):
            parser.error(f"allow-list folder {folder!r} does not exist")
    if args.io_threads < 1:
        parser.error("--io-threads must be at least 1")
    if args.max_message_size < 1024:
        parser.error("--max-message-size must be at least 1024 bytes")
    return args


def _bind(sock: zmq.Socket, endpoint: str, role: str, patience: float = 0.0) -> None:
    """Bind, retrying for ``patience`` seconds while the address is in use
    (libzmq closes a replaced socket's listener in its I/O thread, a moment
    after close() returns)."""
    if "[" in endpoint:
        sock.ipv6 = True
    deadline = time.monotonic() + patience
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise SystemExit(f"rokv-broker: cannot bind {role} {endpoint!r}: {exc}") from None


class Broker:
    """One broker: a ROUTER for clients and a DEALER for workers joined by
    ``zmq.proxy_steerable`` in a thread of its own, plus, with CURVE, the ZAP
    authenticator.

    The main thread owns everything but the two forwarding sockets while the
    proxy runs; it stops the proxy (TERMINATE on the control socket) before it
    touches them, e.g. to reopen a side whose allow-list lost a key.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = zmq.Context(io_threads=args.io_threads)
        self.watcher = ConnectionWatcher(log)
        self.auth: GateKeeper | None = None
        self.failure: list[BaseException] = []
        #: Times libzmq woke the proxy with nothing to read (see _forward).
        self.spurious_wakeups = 0
        #: Times the proxy was (re)entered: each call has its own STATISTICS.
        self.proxy_runs = 0
        self.forwarded = ForwardedCounts()
        self._thread: threading.Thread | None = None
        self.control = self.ctx.socket(zmq.PAIR)
        self.proxy_control = self.ctx.socket(zmq.PAIR)
        self.frontend: zmq.Socket | None = None
        self.backend: zmq.Socket | None = None
        self.directory: Directory | None = None
        for sock in (self.control, self.proxy_control):
            sock.linger = 0
        try:
            if args.curve_secret:
                self._public, self._secret = load_secret(args.curve_secret)
                self.auth = GateKeeper(self.ctx, {CLIENTS_DOMAIN: args.client_keys, WORKERS_DOMAIN: args.worker_keys})
                self.auth.start()
                self.auth.load()
            self.directory = self._open_directory()
            self.frontend = self._open(CLIENTS_DOMAIN)
            self.backend = self._open(WORKERS_DOMAIN)
            self.control.bind(CONTROL_ENDPOINT)
            self.proxy_control.connect(CONTROL_ENDPOINT)
        except KeyFileError as exc:
            self.close()
            raise SystemExit(f"rokv-broker: {exc}") from None
        except SystemExit:
            self.close()
            raise

    def _open_directory(self) -> Directory | None:
        """The pool's directory on ``--directory``, or None: none could be
        derived, or the derived default is taken (logged; clients then stay
        on the brokered path). A given endpoint that cannot be bound is fatal."""
        endpoint = self.args.directory
        if endpoint is None:
            log.warning("no directory endpoint derives from %s: give --directory to serve one", self.args.frontend)
            return None
        curve = None
        if self.auth is not None:
            curve = {"public": self._public, "secret": self._secret, "domain": CLIENTS_DOMAIN}
        try:
            return Directory(self.ctx, endpoint, curve)
        except zmq.ZMQError as exc:
            if self.args.directory_given:
                raise SystemExit(f"rokv-broker: cannot bind directory {endpoint!r}: {exc}") from None
            log.warning("no directory: cannot bind %s (%s); give --directory to choose another endpoint", endpoint, exc)
            return None

    def _open(self, side: str, patience: float = 0.0) -> zmq.Socket:
        """A new, bound socket for ``side`` (clients: the ROUTER frontend;
        workers: the DEALER backend); ``patience`` as for :func:`_bind`."""
        clients = side == CLIENTS_DOMAIN
        sock = self.ctx.socket(zmq.ROUTER if clients else zmq.DEALER)
        sock.linger = 0
        # Drop peers that stop answering ZMTP PINGs: the DEALER would otherwise
        # keep handing a stopped worker its round-robin share.
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
        if clients:
            sock.maxmsgsize = self.args.max_message_size
            # A ROUTER drops a reply when its queue to that client is full: make
            # room for every request a client may have in flight (PROTOCOL.md).
            sock.sndhwm = p.BROKER_CLIENT_SNDHWM
        if self.auth is not None:
            sock.curve_server = True
            sock.curve_publickey = self._public
            sock.curve_secretkey = self._secret
            sock.zap_domain = side.encode()
        endpoint = self.args.frontend if clients else self.args.backend
        self.watcher.watch(sock, f"{side} side {endpoint}", server=True)
        try:
            _bind(sock, endpoint, "frontend" if clients else "backend", patience)
            if clients and self.directory is not None:
                # Workers' reports reach the directory through the proxy,
                # addressed to its routing id on this socket.
                _bind(sock, INLET_ENDPOINT, "directory inlet", max(patience, 1.0))
                self.directory.attach()
        except SystemExit:
            ConnectionWatcher.unwatch(sock)
            sock.close(linger=0)
            raise
        return sock

    def start(self) -> None:
        """Start forwarding in a new proxy thread (and the directory's thread,
        the first time)."""
        if self.directory is not None and self.proxy_runs == 0 and self._thread is None:
            self.directory.start()
        self._thread = threading.Thread(target=self._forward, name="rokv-proxy", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _forward(self) -> None:
        assert self.frontend is not None and self.backend is not None
        while True:
            try:
                self.proxy_runs += 1
                zmq.proxy_steerable(self.frontend, self.backend, None, self.proxy_control)
                return  # TERMINATE
            except zmq.Again:
                # libzmq 4.3.5's proxy fails with EAGAIN when a poll reports a
                # socket readable and the first receive finds nothing; with
                # CURVE that happens after a peer's handshake. Nothing was
                # taken from either socket, so forwarding simply resumes.
                self.spurious_wakeups += 1
                log.debug("proxy woke with nothing to read (%d times); resuming", self.spurious_wakeups)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                self.failure.append(exc)
                return

    def statistics(self, timeout_ms: int = 200) -> list[int] | None:
        """libzmq's counters for the running proxy call (see
        :class:`ForwardedCounts`), or None when it did not answer in time or
        was restarted meanwhile. Main thread only: it owns the control socket."""
        if not self.running():
            return None
        while self.control.poll(0):  # a late answer to an earlier ask
            self.control.recv_multipart()
        before = self.proxy_runs
        self.control.send(b"STATISTICS")
        if not self.control.poll(timeout_ms):
            return None
        frames = self.control.recv_multipart()
        if self.proxy_runs != before or len(frames) != 8 or any(len(f) != 8 for f in frames):
            return None  # answered by a call that has since ended, or not libzmq 4.3's form
        return [int.from_bytes(f, sys.byteorder) for f in frames]

    def publish(self, published: BrokerMetrics) -> None:
        """Publish this broker's state (main thread, every PUBLISH_SECONDS)."""
        stats = self.statistics()
        if stats is not None:
            self.forwarded.update(self.proxy_runs, stats)
        links = {link.label.partition(" ")[0]: link.connected for link in self.watcher.links()}
        published.publish(
            up=self.running() and not self.failure,
            workers=links.get(WORKERS_DOMAIN, 0),
            clients=links.get(CLIENTS_DOMAIN, 0),
            messages=self._lookups(self.forwarded.messages, 2, 0),
            volume=self._lookups(self.forwarded.volume, len(DIRECTORY_ROUTE), 1),
            restarts=self.spurious_wakeups,
        )

    def _lookups(self, forwarded: tuple[int, int], per_report: int, with_bodies: int) -> tuple[int, int]:
        """``forwarded`` (requests, replies) without the workers' reports to
        the directory, which the proxy forwards like replies: ``per_report``
        frames or bytes each, plus their bodies' bytes when ``with_bodies``.
        (Read from two threads: the publication keeps totals from going down.)"""
        if self.directory is None:
            return forwarded
        reports = self.directory.inlet_messages * per_report + self.directory.inlet_bytes * with_bodies
        return forwarded[0], max(0, forwarded[1] - reports)

    def stop_proxy(self) -> bool:
        """Stop forwarding; False when the proxy would not stop (then nothing
        may touch its sockets any more)."""
        if not self.running():
            return True
        assert self._thread is not None
        self.control.send(b"TERMINATE")
        self._thread.join(timeout=3)
        return not self._thread.is_alive()

    def reload(self) -> None:
        """Re-read the allow-lists (SIGHUP). A side whose list lost a key is
        reopened: every connection on it is closed and its peers reconnect
        and are checked again, so a revoked key loses its connection at once.
        Requests in flight on that side are lost; clients' retries recover
        them."""
        if self.auth is None:
            log.info("SIGHUP: no allow-lists to reload (CURVE is off)")
            return
        removed = self.auth.load()
        if not removed:
            return
        if not self.stop_proxy():
            log.error("proxy did not stop within 3 s to reopen a side; exiting without cleanup")
            os._exit(Exit.NO)
        for side, keys in removed.items():
            old = self.frontend if side == CLIENTS_DOMAIN else self.backend
            assert old is not None
            ConnectionWatcher.unwatch(old)
            old.close(linger=0)
            try:
                new = self._open(side, patience=5.0)
            except SystemExit as exc:  # the endpoint was taken meanwhile: cannot serve that side
                log.error("%s", exc)
                self.failure.append(exc)
                return
            if side == CLIENTS_DOMAIN:
                self.frontend = new
            else:
                self.backend = new
            log.warning(
                "%d key(s) removed from the %s allow-list: closed every %s connection so that "
                "each peer is checked again",
                len(keys),
                side,
                side[:-1],
            )
        self.start()

    def close(self) -> None:
        if self.directory is not None:
            self.directory.stop()
        if self.auth is not None:
            self.auth.stop()
        for sock in (self.frontend, self.backend, self.control, self.proxy_control):
            if sock is not None:
                sock.close(linger=0)
        self.watcher.stop()
        self.ctx.term()


class ForwardedCounts:
    """Frames and bytes forwarded since the broker started, from libzmq's
    proxy STATISTICS: 8 counters (frontend frames in, bytes in, frames out,
    bytes out; then the backend's: libzmq 4.3.5 documents "messages" but
    counts each frame), kept by the proxy whether or not
    anyone asks, so counting costs the forwarding loop nothing. Each call of
    the proxy starts them at 0, and the broker calls it again after a
    spurious wake-up (and after a reload): the last reading of a call is
    carried over, and what it forwarded after that reading is not counted."""

    def __init__(self) -> None:
        self._carried = [0] * 8
        self._last = [0] * 8
        self._run = 0

    def update(self, run: int, stats: list[int]) -> None:
        """Take a reading of proxy call number ``run``."""
        if run != self._run:
            self._carried = [c + n for c, n in zip(self._carried, self._last)]
            self._run = run
        self._last = stats

    def _total(self, index: int) -> int:
        return self._carried[index] + self._last[index]

    @property
    def messages(self) -> tuple[int, int]:
        """Frames of (requests: clients to workers, replies: workers to clients)."""
        return self._total(0), self._total(4)

    @property
    def volume(self) -> tuple[int, int]:
        """Bytes of the requests and of the replies."""
        return self._total(1), self._total(5)


def _published(args: argparse.Namespace) -> BrokerMetrics | None:
    """This broker's metrics when the host publishes them (see
    rokv.server.metrics); None when off or impossible (logged)."""
    folder = metrics.metrics_dir()
    if folder is None:
        return None
    try:
        metrics.prepare(folder)
        return metrics.BrokerMetrics(os.environ.get("SUPERVISOR_PROCESS_NAME") or args.frontend)
    except ImportError as exc:
        log.error("metrics are off: %s (it comes with the server extra: pip install 'rokv[server]')", exc)
    except (OSError, ValueError) as exc:
        log.error("metrics are off: cannot publish into %s: %s", folder, exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rokv-broker[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # Block the stop signals before any thread exists, so that libzmq's and the
    # proxy's threads inherit the mask and the main thread alone takes them,
    # with sigtimedwait: a Python handler would never run while the proxy
    # blocks inside libzmq.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED_SIGNALS)

    broker = Broker(args)
    broker.start()
    log.info(
        "forwarding %s (clients) <-> %s (workers); directory %s; io_threads=%d max_message_size=%d curve=%s",
        args.frontend,
        args.backend,
        args.directory if broker.directory is not None else "off",
        args.io_threads,
        args.max_message_size,
        "on" if broker.auth else "off",
    )

    published = _published(args)
    received = None
    while broker.running():
        if published is not None:
            broker.publish(published)
        received = signal.sigtimedwait(WAITED_SIGNALS, 0.5 if published is None else metrics.PUBLISH_SECONDS)
        if received is None:
            continue
        if received.si_signo in STOP_SIGNALS:
            break
        broker.reload()
        received = None
    if received is not None:
        log.info("received %s: stopping", signal.Signals(received.si_signo).name)
        if not broker.stop_proxy():
            # Never seen; but closing sockets under a running proxy is unsafe
            # and ctx.term() would then hang, so leave without cleaning up.
            log.error("proxy did not stop within 3 s; exiting without cleanup")
            os._exit(Exit.OK)
    if published is not None and broker.failure:
        published.publish(
            up=False,
            workers=0,
            clients=0,
            messages=broker.forwarded.messages,
            volume=broker.forwarded.volume,
            restarts=broker.spurious_wakeups,
        )
    broker.close()
    if published is not None:
        metrics.retire()
    if broker.failure:
        log.error("proxy failed: %s", broker.failure[0])
        return Exit.NO
    log.info("stopped")
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
