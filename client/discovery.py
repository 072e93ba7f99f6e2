"""DNS discovery: ``tcp+dns://NAME:PORT`` stands for every address NAME
resolves to, kept up to date.

libzmq resolves a host name again at every reconnect, but connects to the
first address only (libzmq issue 2297): a name that stands for several peers
(a Kubernetes headless Service, Docker Swarm's ``tasks.SERVICE`` or a
``dnsrr`` service name) gives one connection, not one per peer. An endpoint
``tcp+dns://NAME:PORT`` instead is resolved here, at once and then every
``ROKV_DNS_INTERVAL`` seconds (default 5) in a background thread, and its
user connects to each address (``tcp://ADDRESS:PORT``), connects to new ones
and drops those gone. ``tcp://NAME:PORT`` keeps libzmq's meaning.

A name that does not resolve (yet, or any more) is tried again at every
interval and logged once per change, never at every try; the addresses last
found are kept meanwhile (a DNS outage does not cut live connections; a peer
really gone is noticed by its connection). So a call never fails because a
name does not resolve while other peers answer.

The resolution runs in its own thread; the thread that owns the sockets
applies what changed (:class:`Discovery.version`), since ZeroMQ sockets are
not thread-safe: the client at each call (:meth:`rokv.brokerset.Brokers.refresh`),
the worker between two polls of its loop. Used by both, so the client
package holds it; it needs only the standard library (and rokv.hostport).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from rokv.hostport import parse_port

#: The endpoint form resolved here.
PREFIX = "tcp+dns://"
#: Seconds between two resolutions of every name.
INTERVAL_ENV = "ROKV_DNS_INTERVAL"
DEFAULT_INTERVAL = 5.0

#: A resolver: NAME -> its IP addresses; raises ``OSError`` when NAME does
#: not resolve. Injectable, for tests and for callers with their own DNS.
Resolver = Callable[[str], Iterable[str]]

log = logging.getLogger("rokv.discovery")

# A DNS name as Docker and Kubernetes make them (letters, digits, '-', '_',
# dots between labels); an IPv4 address passes too and resolves to itself.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")


def is_dns(endpoint: object) -> bool:
    """True for a ``tcp+dns://`` endpoint (well-formed or not)."""
    return isinstance(endpoint, str) and endpoint.startswith(PREFIX)


def split_dns(endpoint: str) -> tuple[str, int]:
    """``(NAME, PORT)`` of ``tcp+dns://NAME:PORT``.

    Raises:
        ValueError: not of that form (the message quotes it and says why).
    """
    if not is_dns(endpoint):
        raise ValueError(f"endpoint {endpoint!r} is not tcp+dns://NAME:PORT")
    name, colon, port = endpoint[len(PREFIX) :].rpartition(":")
    if not colon or not name:
        raise ValueError(f"endpoint {endpoint!r} needs a name and a port: expected tcp+dns://NAME:PORT")
    try:
        number = parse_port(port)
    except ValueError as exc:
        raise ValueError(f"endpoint {endpoint!r}: {exc}") from None
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"endpoint {endpoint!r}: {name!r} is not a DNS name (letters, digits, '-', '_' and dots; "
            "give an address with tcp://)"
        )
    return name, number


def interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """``ROKV_DNS_INTERVAL`` in seconds, else :data:`DEFAULT_INTERVAL`.

    Raises:
        ValueError: not a number of seconds from 0.1 to 3600.
    """
    text = (os.environ if env is None else env).get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 3600:
        raise ValueError(f"{INTERVAL_ENV}={text!r}: expected seconds from 0.1 to 3600 (default {DEFAULT_INTERVAL:g})")
    return value


def system_resolver(name: str) -> list[str]:
    """NAME's addresses from the system's resolver (``getaddrinfo``): its IPv4
    addresses when it has any, else its IPv6 ones, so that a dual-stack peer
    is not reached twice.

    Raises:
        OSError: NAME does not resolve (``socket.gaierror``).
    """
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    v4 = sorted({str(info[4][0]) for info in infos if info[0] == socket.AF_INET})
    return v4 or sorted({str(info[4][0]) for info in infos if info[0] == socket.AF_INET6})


def tcp_endpoint(address: str, port: int) -> str:
    """The ZeroMQ endpoint of one resolved address."""
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


class DnsName:
    """One ``tcp+dns://`` endpoint and the ``tcp://`` endpoints it stands for
    now (:attr:`peers`, replaced whole at each change: safe to read from
    another thread)."""

    def __init__(self, endpoint: str, resolver: Resolver) -> None:
        self.endpoint = endpoint
        self.name, self.port = split_dns(endpoint)
        self.peers: frozenset[str] = frozenset()
        self._resolver = resolver
        self._logged: object = None  # what was logged last: the peers, or the error's text

    def resolve(self) -> bool:
        """Resolve once; True when :attr:`peers` changed. Never raises: a
        failure keeps the peers and is logged when it differs from the last."""
        try:
            addresses = {str(a) for a in self._resolver(self.name)}
            if not addresses:
                raise OSError("no address")
        except Exception as exc:  # noqa: BLE001 - any resolver's failure is "not resolved"; serving goes on
            reason = f"{type(exc).__name__}: {exc}"
            if self._logged != reason:
                self._logged = reason
                kept = f"keeping {len(self.peers)} known" if self.peers else "none known yet"
                log.warning("%s: %s does not resolve (%s); %s, trying again", self.endpoint, self.name, reason, kept)
            return False
        peers = frozenset(tcp_endpoint(a, self.port) for a in addresses)
        changed = peers != self.peers
        if changed or self._logged != peers:
            added, gone = sorted(peers - self.peers), sorted(self.peers - peers)
            log.info(
                "%s: %s resolves to %d address(es)%s%s",
                self.endpoint,
                self.name,
                len(peers),
                f"; new {', '.join(added)}" if added else "",
                f"; gone {', '.join(gone)}" if gone else "",
            )
            self._logged = peers
        self.peers = peers
        return changed


class Discovery:
    """The ``tcp+dns://`` endpoints of one user (a client's brokers, a
    worker's backends), resolved now and re-resolved every ``interval``
    seconds in a daemon thread until :meth:`close`. :attr:`version` grows at
    every change: the sockets' thread compares it to apply changes cheaply.

    Args:
        endpoints: the ``tcp+dns://`` endpoints (others are ignored).
        resolver: NAME -> addresses (default :func:`system_resolver`).
        interval: seconds between resolutions (default ``ROKV_DNS_INTERVAL``).
        start: run the background thread (False: only :meth:`resolve_all`
            updates, as tests drive it).

    Raises:
        ValueError: an endpoint or ``ROKV_DNS_INTERVAL`` is malformed.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        resolver: Resolver | None = None,
        interval: float | None = None,
        start: bool = True,
    ) -> None:
        self.interval = interval_from_env() if interval is None else float(interval)
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
        chosen = resolver or system_resolver
        self.names = {e: DnsName(e, chosen) for e in endpoints if is_dns(e)}
        self.version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The first resolution in the caller's thread: connections start at once.
        self.resolve_all()
        if start and self.names:
            self._thread = threading.Thread(target=self._run, name="rokv-dns", daemon=True)
            self._thread.start()

    def resolve_all(self) -> bool:
        """Resolve every name once; True (and :attr:`version` grown) when any changed."""
        changed = False
        for name in self.names.values():
            changed = name.resolve() or changed
        if changed:
            self.version += 1  # one writer at a time: the thread, or the constructor before it
        return changed

    def peers(self, endpoint: str) -> frozenset[str]:
        """The ``tcp://`` endpoints ``endpoint`` stands for now."""
        return self.names[endpoint].peers

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.resolve_all()

    def close(self) -> None:
        """Stop re-resolving. Idempotent; does not wait for a resolution in
        progress (the thread is a daemon and exits after it)."""
        self._stop.set()


class Connectable(Protocol):
    def connect(self, addr: str) -> object: ...
    def disconnect(self, addr: str) -> object: ...


class Linked:
    """One socket connected to every peer of one name (a client's DEALER:
    libzmq spreads its sends over the live connections). :meth:`sync`, in the
    socket's thread, connects to new peers and disconnects gone ones."""

    def __init__(self, sock: Connectable, discovery: Discovery, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self._discovery = discovery
        self.connected: set[str] = set()

    def sync(self) -> None:
        wanted = self._discovery.peers(self.endpoint)
        for peer in sorted(wanted - self.connected):
            try:
                self.sock.connect(peer)
            except Exception as exc:  # noqa: BLE001 - zmq.ZMQError; one bad address must not stop the others
                log.warning("%s: cannot connect to %s: %s", self.endpoint, peer, exc)
                continue
            self.connected.add(peer)
        for peer in sorted(self.connected - wanted):
            self.connected.discard(peer)
            try:
                self.sock.disconnect(peer)
            except Exception:  # noqa: BLE001 - already gone from the socket: nothing to undo
                pass


S = TypeVar("S")


class PerPeer(Generic[S]):
    """One socket per peer of one name (a worker's DEALER per broker: replies
    must go back through the broker that sent the request). :meth:`sync`, in
    the sockets' thread, opens sockets for new peers and closes those of gone
    ones (``close_peer(peer, sock)``); :attr:`socks` maps each peer's
    endpoint to its socket."""

    def __init__(
        self,
        discovery: Discovery,
        endpoint: str,
        open_peer: Callable[[str], S],
        close_peer: Callable[[str, S], None],
    ) -> None:
        self.endpoint = endpoint
        self._discovery = discovery
        self._open = open_peer
        self._close = close_peer
        self.socks: dict[str, S] = {}

    def sync(self) -> bool:
        """True when sockets were opened or closed."""
        wanted = self._discovery.peers(self.endpoint)
        changed = False
        for peer in sorted(set(self.socks) - wanted):
            self._close(peer, self.socks.pop(peer))
            changed = True
        for peer in sorted(wanted - set(self.socks)):
            try:
                self.socks[peer] = self._open(peer)
            except Exception as exc:  # noqa: BLE001 - zmq.ZMQError; retried at the next change
                log.warning("%s: cannot connect to %s: %s", self.endpoint, peer, exc)
                continue
            changed = True
        return changed

    def close(self) -> None:
        for peer, sock in self.socks.items():
            self._close(peer, sock)
        self.socks = {}


class Tracker:
    """Whether a :class:`Discovery` changed since this tracker last looked:
    one integer comparison, cheap enough for every call."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self._seen = -1

    def changed(self) -> bool:
        version = self.discovery.version
        if version == self._seen:
            return False
        self._seen = version
        return True
