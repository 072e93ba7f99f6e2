"""The workers a direct client talks to: the pool's map from the brokers'
directories, a socket per listed worker, and which to send to next.

A direct client (``direct=True``) asks every broker's directory for the map
(:mod:`rokv.directory`) when it starts and every ``refresh`` seconds after,
without waiting: answers are taken as they come. Each listed worker gets a
DEALER of its own, with

- ``ZMQ_IMMEDIATE``: a send to a worker with no live connection (not yet
  connected, killed, restarted elsewhere) fails at once, and the next worker,
  or in the end a broker, is tried;
- ZMTP heartbeats: a worker cut off without closing its connection is noticed
  within HEARTBEAT_TIMEOUT_MS and its connection dropped.

The blocking client asks for :class:`rokv.zmtp.Stream` links instead
(``streams=True``): a plain TCP connection speaking ZMTP, read in the calling
thread, for every worker reached over ``tcp://`` without CURVE; the rest get a
DEALER as above.

A try that goes unanswered marks its worker *suspect*: it is avoided for
SUSPECT_SECONDS (or until it answers), so the retry goes to another worker,
or through a broker when none is left. Workers missing from a fresh map are
dropped; when no directory has answered lately (every broker down), the last
map stays in use.

Not thread-safe: one client's transport uses it from one thread at a time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from rokv import core, directory
from rokv import protocol as p
from rokv.brokerset import DOWN_SECONDS, SUSPECT_SECONDS
from rokv.discovery import Discovery, Linked, Tracker, is_dns
from rokv.security import CurvePeer, load_public, load_secret
from rokv.zmtp import Stream, endpoint_address

_NOBLOCK = int(zmq.NOBLOCK)
#: The longest a client stays with one worker (``stick``): so a client that
#: calls rarely still spreads its calls, and uses a new worker within about
#: this long of learning of it.
STICK_SECONDS = 0.05
#: A directory's answer counts for this many refresh periods: past that,
#: its broker is taken for down, and its answer no longer shapes the map.
FRESH_PERIODS = 3


class Link:
    """One worker's connection, a libzmq DEALER (``sock``) or a plain TCP
    :class:`~rokv.zmtp.Stream` (``stream``), and how it fares."""

    __slots__ = ("endpoint", "sock", "stream", "avoid_until", "replies", "rcvtimeo", "entry")

    def __init__(
        self, endpoint: str, sock: zmq.Socket | None, entry: dict[str, Any], stream: Stream | None = None
    ) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.stream = stream
        self.entry = entry
        #: Monotonic time before which this worker is avoided.
        self.avoid_until = 0.0
        #: Replies taken from it (for tests and load generators).
        self.replies = 0
        #: The RCVTIMEO last set on its socket (the blocking client's cache).
        self.rcvtimeo = -1

    @property
    def source(self) -> Stream | zmq.Socket:
        """What its replies are read from: the stream, else the socket (a
        link has one of the two)."""
        if self.stream is not None:
            return self.stream
        assert self.sock is not None
        return self.sock

    def __repr__(self) -> str:
        return f"<Link {self.endpoint}>"


class Workers:
    """A direct client's map of the pool and its worker sockets.

    Args:
        ctx: the context to open sockets in.
        brokers: the brokers' frontend endpoints; their directories are
            derived from them (:func:`rokv.directory.directory_endpoint`).
        curve: the client's CURVE keys; a worker is then reached as a CURVE
            server with the public key its entry carries.
        refresh: seconds between two questions to the directories.
        streams: reach workers over plain TCP where possible (the blocking
            client, which reads in its caller's thread).
        stick: how many calls in a row :meth:`order` starts with the same
            worker (within STICK_SECONDS: a slow caller still spreads). A
            blocking client's calls are one at a time, so spreading each
            one gains no parallelism, and a worker that has just
            answered answers the next call faster (its thread is scheduled
            and its caches warm): one at a time, alternating between two
            workers measured 15-20% slower than staying with one
            (BENCHMARKS.md, "One hop"). An asyncio client, with many calls in
            flight, spreads every one (1).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        brokers: Sequence[str],
        curve: CurvePeer | None,
        refresh: float = directory.REFRESH_SECONDS,
        *,
        streams: bool = False,
        stick: int = 1,
    ) -> None:
        self.ctx = ctx
        self.refresh = refresh
        self.streams = streams
        self.stick = stick
        self.links: list[Link] = []
        self._by_endpoint: dict[str, Link] = {}
        # Where the round-robin starts: a random worker, so that clients
        # started together do not all begin with the same one.
        self._next = random.randrange(1 << 16)
        self._calls = 0
        self._move_at = 0.0
        self._ids = core.request_ids()
        self._curve = curve
        self._keys: tuple[bytes, bytes] | None = load_secret(curve.secret_file) if curve is not None else None
        self._broker_key = load_public(curve.broker_key_file) if curve is not None else None
        #: One DEALER per broker directory, and its latest answer: (when, entries).
        self.directories: list[zmq.Socket] = []
        self._answers: list[tuple[float, list[dict[str, Any]]] | None] = []
        self._asked_at = -1e9
        self._awaiting = False
        #: The directories were asked at least once.
        self.started = False
        #: Bumped whenever the links change, so a transport can follow.
        self.version = 0
        #: Called with a worker's socket just before it is closed (the asyncio
        #: client stops watching it there).
        self.before_close: Callable[[zmq.Socket], None] | None = None
        # A tcp+dns:// broker's directory is a name too: one socket connected
        # to every address it resolves to, kept up to date as the brokers' are.
        wheres = [directory.directory_endpoint(endpoint) for endpoint in brokers]
        self._discovery: Discovery | None = None
        self._named: list[Linked] = []
        try:
            if any(is_dns(where) for where in wheres):
                self._discovery = Discovery([where for where in wheres if where is not None and is_dns(where)])
            for where in wheres:
                if where is None:
                    continue
                dns = is_dns(where)
                self.directories.append(self._dealer(where, self._broker_key, immediate=False, connect=not dns))
                self._answers.append(None)
                if dns and self._discovery is not None:
                    self._named.append(Linked(self.directories[-1], self._discovery, where))
        except BaseException:
            self.close()
            raise
        self._tracker = Tracker(self._discovery) if self._discovery is not None else None

    # ------------------------------------------------------------ the map

    def _dealer(
        self, endpoint: str, server_key: bytes | None, *, immediate: bool = True, connect: bool = True
    ) -> zmq.Socket:
        sock: zmq.Socket = zmq.Socket(self.ctx, zmq.DEALER)  # the plain class even from a zmq.asyncio.Context
        sock.linger = 0
        # A worker's socket refuses sends without a live connection, so that
        # the next worker is tried; a directory's queues its question until
        # connected (a new client asks before its connection is up).
        sock.immediate = immediate
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
        if "[" in endpoint or "+dns" in endpoint:  # a name may resolve to IPv6 addresses only
            sock.ipv6 = True
        if self._keys is not None and server_key is not None:
            sock.curve_publickey, sock.curve_secretkey = self._keys
            sock.curve_serverkey = server_key
        if connect:
            try:
                sock.connect(endpoint)
            except zmq.ZMQError:
                sock.close()
                raise
        return sock

    def due(self, now: float) -> bool:
        """Time to ask the directories again."""
        return now - self._asked_at >= self.refresh

    def ask(self, now: float | None = None) -> None:
        """Ask every directory for the map (answers are taken by :meth:`take`)."""
        self._asked_at = time.monotonic() if now is None else now
        self.started = True
        if self._tracker is not None and self._tracker.changed():
            for link in self._named:
                link.sync()
        body = directory.encode_pool_request(next(self._ids))
        for sock in self.directories:
            try:
                sock.send(body, _NOBLOCK)
            except zmq.Again:
                pass  # questions queued up to the high-water mark: that broker is away
        self._awaiting = bool(self.directories)

    @property
    def awaiting(self) -> bool:
        """A question is out that not every directory has answered."""
        return self._awaiting

    def take(self, now: float | None = None) -> bool:
        """Read whatever the directories answered and update the links; True
        when the links changed."""
        now = time.monotonic() if now is None else now
        got = False
        for index, sock in enumerate(self.directories):
            while True:
                try:
                    body = sock.recv(_NOBLOCK)
                except zmq.Again:
                    break
                reply = core.reply_of(body)
                if reply is None:
                    continue
                try:
                    entries = directory.decode_pool(reply[1])
                except ValueError:
                    continue
                self.refresh = directory.refresh_of(reply[1])
                self._answers[index] = (now, entries)
                got = True
        if got:
            self._awaiting = any(answer is None or answer[0] < self._asked_at for answer in self._answers)
            return self._update(now)
        return False

    def wait_first(self, timeout: float) -> None:
        """Ask, and wait up to ``timeout`` for a first answer (a new client
        knows no worker yet)."""
        self.ask()
        if not self.directories:
            return
        poller = zmq.Poller()
        for sock in self.directories:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                return
            self.take()
            if any(answer is not None for answer in self._answers):
                break
        # Then wait, within the same time, for the connections to the workers
        # (IMMEDIATE refuses sends until one is up): the first calls would
        # otherwise all go through a broker.
        for link in self.links:
            if link.stream is not None:
                link.stream.usable(deadline - time.monotonic())
        connecting = {link.sock for link in self.links if link.sock is not None}
        while connecting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            poller = zmq.Poller()
            for sock in connecting:
                poller.register(sock, zmq.POLLOUT)
            ready = poller.poll(max(1, int(left * 1000)))
            if not ready:
                return
            connecting -= {sock for sock, _ in ready}

    def _update(self, now: float) -> bool:
        fresh = [a for a in self._answers if a is not None and now - a[0] <= FRESH_PERIODS * self.refresh]
        if not fresh:
            return False  # every broker silent: go on with the last map
        wanted: dict[str, dict[str, Any]] = {}
        for _, entries in fresh:
            for entry in entries:
                if (entry["curve_key"] is not None) == (self._keys is not None):
                    wanted.setdefault(entry["endpoint"], entry)
        changed = False
        for endpoint in [e for e in self._by_endpoint if e not in wanted]:
            link = self._by_endpoint.pop(endpoint)
            self.links.remove(link)
            self._close(link)
            changed = True
        for endpoint, entry in wanted.items():
            if endpoint in self._by_endpoint:
                continue
            key = entry["curve_key"].encode("ascii") if entry["curve_key"] is not None else None
            address = endpoint_address(endpoint) if self.streams and key is None else None
            if address is not None:
                link = Link(endpoint, None, entry, Stream(address))  # connected when first used
            else:
                try:
                    sock = self._dealer(endpoint, key)
                except (zmq.ZMQError, ValueError):
                    continue  # an endpoint libzmq refuses: skip that worker
                link = Link(endpoint, sock, entry)
            self._by_endpoint[endpoint] = link
            self.links.append(link)
            changed = True
        if changed:
            self.version += 1
        return changed

    def _close(self, link: Link, *, tell: bool = True) -> None:
        if link.stream is not None:
            link.stream.close()
        if link.sock is not None:
            if tell and self.before_close is not None:
                self.before_close(link.sock)
            link.sock.close(linger=0)

    # ------------------------------------------------------------ choosing

    def order(self, after: Link | None = None) -> list[Link]:
        """The workers to try now, best first: round-robin among those not
        avoided (moving on every ``stick`` calls or STICK_SECONDS), never ``after`` (the worker
        of the previous try). Empty when none is left: then a broker carries
        the try."""
        links = self.links
        n = len(links)
        if not n:
            return []
        now = time.monotonic()
        self._calls += 1
        if self._calls >= self.stick or now >= self._move_at:
            self._calls = 0
            self._next += 1
            self._move_at = now + STICK_SECONDS
        start = self._next % n
        ring = links[start:] + links[:start]
        return [link for link in ring if link is not after and link.avoid_until <= now]

    @staticmethod
    def suspect(link: Link) -> None:
        """A try sent to ``link`` went unanswered."""
        link.avoid_until = time.monotonic() + SUSPECT_SECONDS

    @staticmethod
    def down(link: Link) -> None:
        """``link`` has no live connection (a send was refused)."""
        link.avoid_until = max(link.avoid_until, time.monotonic() + DOWN_SECONDS)

    @staticmethod
    def answered(link: Link, count: int = 1) -> None:
        link.avoid_until = 0.0
        link.replies += count

    def close(self) -> None:
        """Close every socket. Idempotent."""
        if self._discovery is not None:
            self._discovery.close()
        for link in self.links:
            self._close(link, tell=False)
        for sock in self.directories:
            sock.close(linger=0)
        self.links, self._by_endpoint, self.directories = [], {}, []
