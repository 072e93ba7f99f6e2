"""A worker's direct endpoint and its reports to the brokers' directories.

The direct endpoint is what a worker binds with ``--direct-bind``: a client's
DEALER connected to it brings ``[routing_id, body]``, the very frames a broker
hands the worker, so the serving loop answers both alike.

It is served one of two ways, the same on the wire for rokv's clients:

- **By the compiled loop itself** (the default for ``tcp://``): Python binds a
  listening TCP socket and hands its descriptor to ``rokv.worker._native``
  (an :class:`Endpoint`), whose loop accepts the connections and speaks ZMTP 3
  (NULL security) on them as a libzmq ROUTER does, polled with the brokers'
  sockets. No libzmq socket and no libzmq I/O thread is on that path: a
  request costs no thread hand-off in the worker.
- **By a libzmq ROUTER** (as before) when CurveZMQ is on (``--curve-secret``:
  a CURVE server with the worker's own key pair, which its reports carry, so
  clients learn it from a broker they trust, and the clients' allow-list,
  checked and logged by the brokers' gatekeeper), when the Python loop serves
  (no compiled module, ``ROKV_PURE_PYTHON=1``), when the endpoint is not
  ``tcp://`` (``ipc://`` and the like) or names a network interface, or when
  ``ROKV_DIRECT_LIBZMQ=1`` asks for it.

Reports (:mod:`rokv.directory`) go out on every broker connection every
:data:`~rokv.directory.REPORT_SECONDS`, from the serving loop's tick.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from types import ModuleType
from typing import Any

import zmq

from rokv import directory
from rokv import protocol as p
from rokv.security import load_secret
from rokv.server.auth import CLIENTS_DOMAIN, GateKeeper
from rokv.server.monitor import ConnectionWatcher, Link
from rokv.worker.loop import CLOSE_LINGER_MS

log = logging.getLogger("rokv.worker")

_WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "[::0]", "::")
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)

#: Most client connections the compiled endpoint keeps at once; one more is
#: closed as soon as it is accepted (and logged, at most every LOG_EVERY_SECONDS).
MAX_CONNECTIONS = 4096
#: The largest message size the compiled endpoint takes (its frames' sizes are checked against it).
MAX_MESSAGE_LIMIT = 1 << 40
#: Descriptors left for everything else (dataset, brokers, libzmq, logs) under RLIMIT_NOFILE.
FDS_KEPT = 128
#: The listening socket's queue of connections not yet accepted.
LISTEN_BACKLOG = 1024
#: At most one info line this often about connections opened, closed, refused.
LOG_EVERY_SECONDS = 10.0


def advertised(bound: str, advertise: str | None) -> str:
    """What clients are told to dial: ``advertise`` (its port ``*`` taken
    from ``bound``), else ``bound`` itself with a wildcard host (0.0.0.0,
    ``*``, ``[::]``) replaced by this host's name."""
    transport, _, address = bound.partition("://")
    bound_host, _, bound_port = address.rpartition(":")
    if advertise:
        if advertise.startswith("tcp://") and advertise.endswith(":*") and transport == "tcp":
            return f"{advertise[:-1]}{bound_port}"
        return advertise
    if transport == "tcp" and bound_host in _WILDCARD_HOSTS:
        return f"tcp://{socket.gethostname()}:{bound_port}"
    return bound


def native_address(bind: str) -> tuple[socket.AddressFamily, tuple[Any, ...]] | None:
    """Where the compiled endpoint listens for ``bind`` (family, address for
    ``socket.bind``), as libzmq would bind it; None when it is for libzmq
    (not ``tcp://``, a network interface's name, a host that does not
    resolve: libzmq then says what is wrong, as before)."""
    if not bind.startswith("tcp://") or ";" in bind:
        return None
    host, sep, port_text = bind[len("tcp://") :].rpartition(":")
    if not sep or not host:
        return None
    try:
        port = 0 if port_text == "*" else int(port_text)
    except ValueError:
        return None
    if not 0 <= port <= 65535:
        return None
    v6 = host.startswith("[") and host.endswith("]")
    if v6:
        host = host[1:-1]
    if host in ("*", ""):
        return (socket.AF_INET6, ("::", port, 0, 0)) if v6 else (socket.AF_INET, ("0.0.0.0", port))
    if any(host == name for _, name in socket.if_nameindex()):
        return None  # libzmq binds an interface's name to its address
    try:
        found = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC if v6 else socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (OSError, UnicodeError):
        return None
    if not found:
        return None
    family, _, _, _, address = found[0]
    return family, address


def connection_cap() -> int:
    """:data:`MAX_CONNECTIONS`, or fewer when the process may not open that
    many files: over the cap a connection is closed at once, whereas out of
    descriptors the listening socket would stay readable and accept nothing."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FDS_KEPT))


def _listen(family: socket.AddressFamily, address: tuple[Any, ...]) -> socket.socket:
    """A non-blocking listening socket, set as libzmq sets its own."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _endpoint_of(sock: socket.socket) -> str:
    """``tcp://HOST:PORT`` of a bound socket, as libzmq's last_endpoint says it."""
    host, port = sock.getsockname()[:2]
    return f"tcp://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"tcp://{host}:{port}"


class ConnectionLog:
    """What the compiled endpoint says about its connections: each at debug,
    and at most every :data:`LOG_EVERY_SECONDS` an info line (a warning when
    some were refused) with the counts since the last one. Called once per
    connection, never per request."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.counts = {"accepted": 0, "closed": 0, "refused": 0, "failed": 0}
        self._since = dict(self.counts)
        self._next = 0.0

    def __call__(self, kind: str, peer: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._since[kind] = self._since.get(kind, 0) + 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s %s%s", self.label, kind, peer, f" ({detail})" if detail else "")
        now = time.monotonic()
        if now >= self._next:
            self._next = now + LOG_EVERY_SECONDS
            since, self._since = self._since, dict.fromkeys(self._since, 0)
            trouble = since.get("refused", 0) or since.get("failed", 0)
            log.log(
                logging.WARNING if trouble else logging.INFO,
                "%s: clients: %d connected, %d closed, %d refused (over %d connections), %d accept failures%s",
                self.label,
                since.get("accepted", 0),
                since.get("closed", 0),
                since.get("refused", 0),
                connection_cap(),
                since.get("failed", 0),
                f"; last: {kind} {peer} {detail}".rstrip() if trouble else "",
            )


class DirectEndpoint:
    """The worker's bound endpoint for clients: a listening socket the
    compiled loop serves (:attr:`native`), else a ROUTER (:attr:`sock`) and,
    with CURVE, its gatekeeper.

    Raises (from the constructor):
        KeyFileError: a CURVE key file is bad.
        zmq.ZMQError: the endpoint cannot be bound (libzmq's ROUTER).
        OSError: the endpoint cannot be bound (the compiled endpoint).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        watcher: ConnectionWatcher,
        bind: str,
        advertise: str | None,
        *,
        max_message_size: int,
        curve_secret: str | None = None,
        client_keys: str | None = None,
        compiled: ModuleType | None = None,
    ) -> None:
        self.auth: GateKeeper | None = None
        self.curve_key: str | None = None
        #: The compiled loop's endpoint (rokv.worker._native.Endpoint), or None: :attr:`sock` serves.
        self.native: Any = None
        self.sock: zmq.Socket | None = None
        self._link: Link | None = None
        self._listener: socket.socket | None = None
        where = None
        if compiled is not None and not curve_secret and os.environ.get("ROKV_DIRECT_LIBZMQ", "") in ("", "0"):
            where = native_address(bind)
        if where is not None:
            assert compiled is not None
            self._listener = _listen(*where)
            self.bound: str = _endpoint_of(self._listener)
            self.connections = ConnectionLog(f"direct endpoint {self.bound}")
            # ZMQ_MAXMSGSIZE's meaning: negative is no limit (here 1 TiB, the most the loop takes).
            limit = min(max_message_size, MAX_MESSAGE_LIMIT) if max_message_size >= 0 else MAX_MESSAGE_LIMIT
            try:
                self.native = compiled.Endpoint(self._listener.fileno(), limit, connection_cap(), self.connections)
            except BaseException:
                self.close()
                raise
            self.advertised = advertised(self.bound, advertise)
            return
        sock = ctx.socket(zmq.ROUTER)
        self.sock = sock
        sock.linger = CLOSE_LINGER_MS
        # The broker frontend's settings, for the same reasons: refuse a
        # message over the size limit, and make room for every reply a client
        # may have in flight (a ROUTER drops what does not fit).
        sock.maxmsgsize = max_message_size
        sock.sndhwm = p.BROKER_CLIENT_SNDHWM
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
        if "[" in bind:
            sock.ipv6 = True
        try:
            if curve_secret:
                public, secret = load_secret(curve_secret)
                assert client_keys is not None
                self.auth = GateKeeper(ctx, {CLIENTS_DOMAIN: client_keys})
                self.auth.start()
                self.auth.load()
                sock.curve_server = True
                sock.curve_publickey = public
                sock.curve_secretkey = secret
                sock.zap_domain = CLIENTS_DOMAIN.encode()
                self.curve_key = public.decode("ascii")
            self._link = watcher.watch(sock, f"direct endpoint {bind}", server=True)
            sock.bind(bind)
        except BaseException:
            self.close()
            raise
        self.bound = sock.last_endpoint.decode()
        self.advertised = advertised(self.bound, advertise)

    def open_connections(self) -> int:
        """Client connections open now (libzmq's ROUTER: as its monitor saw
        them, those in their handshake included). Called from the serving
        thread, between rounds of its loop."""
        if self.native is not None:
            return int(self.native.counts()["connections"])
        return self._link.connected if self._link is not None else 0

    @property
    def served(self) -> Any:
        """What the serving loop polls: the compiled endpoint, else the ROUTER."""
        return self.native if self.native is not None else self.sock

    def close(self, linger: int | None = None) -> None:
        if self.native is not None:
            self.native.close(CLOSE_LINGER_MS if linger is None else linger)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.sock is not None:
            ConnectionWatcher.unwatch(self.sock)
            self.sock.close(linger=linger)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class Reporter:
    """Tells every broker about this worker: a report on each broker socket
    every REPORT_SECONDS (dropped, never queued for long, when a broker cannot
    take it), and a goodbye at the end."""

    def __init__(self, socks: list[zmq.Socket], entry: dict[str, Any]) -> None:
        self.socks = socks
        self.entry = directory.check_entry(entry)
        self._report = directory.encode_report(self.entry)
        self._next = 0.0

    def maybe_report(self) -> None:
        """Report when REPORT_SECONDS have passed since the last report (a
        clock read otherwise): the serving loop's tick."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + directory.REPORT_SECONDS
            self._send(self._report)

    def leave(self) -> None:
        """Say goodbye, so brokers drop this worker from their maps at once."""
        self._send(directory.encode_report(self.entry, leaving=True))

    def _send(self, body: bytes) -> None:
        for sock in self.socks:
            try:
                sock.send(directory.DIRECTORY_ROUTE, _SNDMORE | _NOBLOCK)
                sock.send(body, _NOBLOCK)
            except zmq.Again:
                pass  # no broker connection now: the next report will do
