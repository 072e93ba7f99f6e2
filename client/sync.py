"""The blocking client: a DEALER socket per broker, request ids, a deadline
per try.

Settings are :class:`rokv.base.ClientBase`'s and what is sent and what a reply
means is decided in :mod:`rokv.core`, both shared with
:class:`rokv.AsyncClient`; this module is only the blocking transport.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import zmq

from rokv import core
from rokv import protocol as p
from rokv.base import ClientBase
from rokv.brokerset import Brokers
from rokv.core import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENDPOINT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    resolve_endpoint,
)
from rokv.keys import match_canonical
from rokv.replies import value_from_reply, worker_from_reply
from rokv.security import CurvePeer
from rokv.workerset import Link, Workers
from rokv.zmtp import Lost, Stream

__all__ = [
    "Client",
    "RetryPolicy",
    "resolve_endpoint",
    "DEFAULT_ENDPOINT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_BATCH_SIZE",
]

# A plain int: pyzmq's enum flags cost a Python-level operation per use.
_NOBLOCK = int(zmq.NOBLOCK)
_MAX_IN_FLIGHT = p.MAX_IN_FLIGHT
#: How long a call waits for a worker's new plain connection (TCP and the
#: ZMTP handshake: a round trip or two) before it tries the next worker.
CONNECT_SECONDS = 0.05
#: Calls in a row a direct client sends to one worker before the next in
#: turn: one at a time, a worker that has just answered is faster to answer
#: again (see rokv.workerset.Workers).
STICKY_CALLS = 64
#: What a direct call reads replies from: a libzmq socket or a plain stream.
_Source = zmq.Socket | Stream


class Client(ClientBase):
    """Looks keys up in a rokv service, blocking. Settings, errors and
    timeouts: :class:`rokv.base.ClientBase`.

    Threads: calls from several threads are safe; they are serialised on its
    sockets, so give each busy thread its own ``Client`` (or use one
    ``AsyncClient``) for concurrency. Do not use a ``Client`` across
    ``fork()``: create it in the process that uses it.
    """

    _plain_streams = True
    _stick = STICKY_CALLS

    def __init__(
        self,
        endpoint: str | Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        context: zmq.Context | None = None,
        curve: CurvePeer | None = None,
        direct: bool = False,
    ) -> None:
        super().__init__(
            endpoint,
            timeout=timeout,
            retries=retries,
            retry=retry,
            batch_size=batch_size,
            context=context,
            curve=curve,
            direct=direct,
        )
        self._lock = threading.Lock()
        #: The RCVTIMEO last set on the one broker's socket.
        self._timeout = _Timeout()

    # ------------------------------------------------------------ public API

    def get(self, key: core.Key) -> str:
        """The value stored under ``key`` (a string, or a ``uuid.UUID``,
        sent as its canonical string).

        Raises:
            KeyNotFound: ``key`` is a valid UUIDv4 that the dataset lacks.
            InvalidKey: ``key`` is not a string or not a UUIDv4 (refused
                at once, without a request).
            ServiceUnavailable: no reply after every try.
        """
        if type(key) is not str or not match_canonical(key):  # one test for the common case
            key = core.check_key(key)
        rid = next(self._ids)
        reply = self._exchange({rid: p.encode_request(rid, p.OP_GET, key)})[rid]
        return value_from_reply(reply, key)

    def get_many(self, keys: Iterable[core.Key]) -> list[str | None]:
        """The values of ``keys`` (strings, or ``uuid.UUID`` objects), in
        order, ``None`` where a key is not found.

        Long lists travel as several messages of ``batch_size`` keys, sent
        together, so the wait is about one round trip either way.

        Raises:
            TypeError: ``keys`` is a single ``str`` or ``bytes``, not a list.
            InvalidKey: some key is not a string or not a UUIDv4 (the first
                one found is named, with its index in ``keys``); nothing is
                returned then.
            ServiceUnavailable: no reply after every try.
        """
        keys = core.check_keys(keys)
        if not keys:
            return []
        chunks = core.split_keys(keys, self.batch_size)
        bodies: dict[int, bytes] = {}
        rids: list[int] = []
        for _, chunk in chunks:
            rid = next(self._ids)
            rids.append(rid)
            bodies[rid] = p.encode_request(rid, p.OP_MGET, chunk)
        replies = self._exchange(bodies)
        return core.join_batches([(offset, chunk, replies[rid]) for (offset, chunk), rid in zip(chunks, rids)])

    def ping(self) -> dict[str, Any]:
        """Describe the worker that answered: at least ``id``, ``pid``,
        ``keys`` (how many it holds) and ``host``.

        Raises:
            ServiceUnavailable: no reply after every try.
        """
        rid = next(self._ids)
        return worker_from_reply(self._exchange({rid: p.encode_request(rid, p.OP_PING)})[rid])

    def close(self) -> None:
        """Release the sockets. Idempotent; later calls raise ``RokvError``."""
        with self._lock:
            if self._brokers is not None:
                self._close_probe()
                self._brokers.close()
                self._brokers = None
            if self._workers is not None:
                self._workers.close()
                self._workers = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._brokers is None else "open"
        direct = " direct" if self.direct else ""
        return f"<rokv.Client {self.endpoint}{direct} timeout={self.timeout} retries={self.retries} {state}>"

    # ------------------------------------------------------------ transport

    def _exchange(self, bodies: dict[int, bytes]) -> dict[int, dict[str, Any]]:
        """Send every request and wait for a reply to each, resending those
        still unanswered after each try's timeout (through another broker,
        when there are several). Replies whose id is not awaited (late
        answers to abandoned calls) are dropped. At most MAX_IN_FLIGHT
        requests travel at once (PROTOCOL.md, "Limits")."""
        with self._lock:
            brokers = self._usable("Client")
            brokers.refresh()  # tcp+dns:// endpoints: what the resolver found since the last call
            window = self._exchange_window if self._workers is None else self._exchange_direct
            if len(bodies) <= _MAX_IN_FLIGHT:
                return window(brokers, bodies)
            replies: dict[int, dict[str, Any]] = {}
            items = list(bodies.items())
            for start in range(0, len(items), _MAX_IN_FLIGHT):
                replies.update(window(brokers, dict(items[start : start + _MAX_IN_FLIGHT])))
            return replies

    def _exchange_direct(self, brokers: Brokers, bodies: dict[int, bytes]) -> dict[int, dict[str, Any]]:
        """:meth:`_exchange_window` straight to the workers (``direct=True``):
        each try goes to the next worker that is not suspect, or through a
        broker when none is left; a reply to any try answers (see
        :mod:`rokv.workerset`). A worker whose connection breaks during a try
        (killed, restarted) ends that try at once."""
        workers = self._workers
        assert workers is not None
        now = time.monotonic()
        if workers.awaiting:
            workers.take(now)
        if workers.due(now):
            if workers.version == 0 and not workers.started:
                workers.wait_first(self.retry.timeout)  # a new client: learn the map before the first call
            else:
                workers.ask(now)
        replies: dict[int, dict[str, Any]] = {}
        pending = dict(bodies)
        used: list[_Source] = []
        link: Link | None = None
        broker: int | None = None
        for attempt in range(self.retry.tries):
            deadline = time.monotonic() + self.retry.try_timeout(attempt)
            chosen = _send_direct(workers, link, pending, deadline)
            if chosen is not None:
                link = chosen
                source = chosen.source
                if source not in used:
                    used.append(source)
                if len(used) == 1:
                    if isinstance(source, Stream):
                        lost = [] if _receive_stream(source, pending, replies, deadline) else [source]
                    else:
                        _receive_blocking(source, chosen, pending, replies, deadline)
                        lost = []
                else:
                    lost = self._receive_socks(used, pending, replies, deadline)
                for gone in lost:
                    used.remove(gone)
                if source in lost:
                    workers.down(chosen)  # its connection broke: the next try goes elsewhere, now
                elif pending:
                    workers.suspect(chosen)
                else:
                    workers.answered(chosen, len(bodies))
            else:
                broker = self._send_to_one(brokers, pending, broker, deadline)
                used.extend(sock for sock in brokers.socks if sock not in used)
                for gone in self._receive_socks(used, pending, replies, deadline):
                    used.remove(gone)
                if pending and broker is not None:
                    brokers.suspect(broker)
            if not pending:
                return replies
            self._silence()
        raise self._unavailable()

    @staticmethod
    def _receive_socks(
        socks: list[_Source], pending: dict[int, bytes], replies: dict[int, dict[str, Any]], deadline: float
    ) -> list[Stream]:
        """Take replies from every socket or stream in ``socks`` until none
        is pending or ``deadline`` passes (a retry: a late reply to an
        earlier try answers too). The streams whose connection broke."""
        poller = zmq.Poller()
        streams: dict[int, Stream] = {}  # by descriptor, as the poller names them
        lost: list[Stream] = [sock for sock in socks if isinstance(sock, Stream) and sock.fileno() < 0]
        for sock in socks:
            if isinstance(sock, Stream):
                if sock.fileno() >= 0:
                    streams[sock.fileno()] = sock
                    poller.register(sock.fileno(), zmq.POLLIN)
            else:
                poller.register(sock, zmq.POLLIN)
        watched = len(socks) - len(lost)
        ready: list[tuple[Any, int]] = [(fd, zmq.POLLIN) for fd in streams]  # a stream may hold whole replies already
        while True:
            for item, _ in ready:
                stream = streams.get(item) if isinstance(item, int) else None
                if stream is None:
                    _drain(item, pending, replies)
                    continue
                try:
                    _answer(stream.take(), pending, replies)
                except Lost:
                    lost.append(stream)
                    poller.unregister(item)
                    del streams[item]
                    watched -= 1
            wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if not pending or wait_ms <= 0 or not watched:
                return lost
            ready = poller.poll(wait_ms)

    def _exchange_window(self, brokers: Brokers, bodies: dict[int, bytes]) -> dict[int, dict[str, Any]]:
        """:meth:`_exchange` for at most MAX_IN_FLIGHT requests."""
        replies: dict[int, dict[str, Any]] = {}
        pending = dict(bodies)
        broker: int | None = None
        for attempt in range(self.retry.tries):
            deadline = time.monotonic() + self.retry.try_timeout(attempt)
            if brokers.count == 1:
                for body in pending.values():
                    try:
                        brokers.socks[0].send(body, _NOBLOCK)
                    except zmq.Again:
                        break  # queue full: the broker is away; wait out this try
                _receive_blocking(brokers.socks[0], self._timeout, pending, replies, deadline)
            else:
                broker = self._send_to_one(brokers, pending, broker, deadline)
                self._receive_any(brokers, pending, replies, deadline)
                if pending and broker is not None:
                    brokers.suspect(broker)
            if not pending:
                return replies
            self._silence()
        raise self._unavailable()

    @staticmethod
    def _send_to_one(brokers: Brokers, pending: dict[int, bytes], previous: int | None, deadline: float) -> int | None:
        """Send this try of every pending request through one broker: the
        next in turn, not ``previous`` (the broker of the last try) when
        another is up. A broker with no live connection refuses the send at
        once and the next is tried; when none has one yet (just started, or
        all down), wait until one has, or ``deadline``. The broker used."""
        order = brokers.order(previous)
        while True:
            for index in order:
                try:
                    for body in pending.values():
                        brokers.socks[index].send(body, _NOBLOCK)
                    return index
                except zmq.Again:
                    brokers.down(index)  # whatever went out before is answered like any try
            wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                return None
            poller = zmq.Poller()
            for sock in brokers.socks:
                poller.register(sock, zmq.POLLOUT)
            ready = dict(poller.poll(wait_ms))
            order = [i for i, sock in enumerate(brokers.socks) if sock in ready] or order

    @staticmethod
    def _receive_any(
        brokers: Brokers, pending: dict[int, bytes], replies: dict[int, dict[str, Any]], deadline: float
    ) -> None:
        """Take replies from every broker's socket until none is pending or
        ``deadline`` passes: a late reply to an earlier try, through another
        broker, answers the request as well."""
        socks = brokers.socks
        while pending:
            wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                return
            for sock, _ in brokers.readable.poll(wait_ms):
                count = _drain(sock, pending, replies)
                if count:
                    brokers.answered(socks.index(sock), count)


class _Timeout:
    """The RCVTIMEO last set on a socket, so that it is set only when the
    wait changes (:class:`rokv.workerset.Link` keeps its own the same way)."""

    __slots__ = ("rcvtimeo",)

    def __init__(self) -> None:
        self.rcvtimeo = -1


class _HasTimeout(Protocol):
    rcvtimeo: int


def _receive_blocking(
    sock: zmq.Socket,
    timeout: _HasTimeout,
    pending: dict[int, bytes],
    replies: dict[int, dict[str, Any]],
    deadline: float,
) -> None:
    """Take replies from one socket until none is pending or ``deadline``
    passes. A blocking receive with a timeout is one call where poll then
    receive is two (plus a failed receive): it is most of the client's cost
    of a sequential get. The option is set only when the wait changes, so
    once per try at most."""
    while pending:
        wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
        if wait_ms <= 0:
            return
        if wait_ms != timeout.rcvtimeo:
            sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            timeout.rcvtimeo = wait_ms
        try:
            # Each frame is read as a message: a reply is one frame, and
            # asking ZMQ_RCVMORE (as recv_multipart does) costs more than
            # the receive.
            body = sock.recv()
        except zmq.Again:
            return
        _settle(body, pending, replies)


def _send_direct(workers: Workers, after: Link | None, pending: dict[int, bytes], deadline: float) -> Link | None:
    """Send every pending request to the first worker that takes them, not
    ``after`` (the worker of the previous try); None when none does."""
    for candidate in workers.order(after):
        stream = candidate.stream
        if stream is not None:
            if stream.usable(min(CONNECT_SECONDS, deadline - time.monotonic())) and stream.send(
                pending.values(), deadline
            ):
                return candidate
            workers.down(candidate)
            continue
        assert candidate.sock is not None
        try:
            for body in pending.values():
                candidate.sock.send(body, _NOBLOCK)
        except zmq.Again:
            workers.down(candidate)  # no live connection: whatever went out is answered like any try
            continue
        return candidate
    return None


def _receive_stream(
    stream: Stream, pending: dict[int, bytes], replies: dict[int, dict[str, Any]], deadline: float
) -> bool:
    """Take replies from one stream until none is pending or ``deadline``
    passes; False when its connection broke."""
    try:
        while pending:
            body = stream.recv(deadline)
            if body is None:
                return True
            _settle(body, pending, replies)
    except Lost:
        return False
    return True


def _settle(body: bytes, pending: dict[int, bytes], replies: dict[int, dict[str, Any]]) -> None:
    """``body`` answers the pending request its id names, if any (a late
    answer to an abandoned call, or a stranger's bytes, answers nothing)."""
    got = core.reply_of(body)
    if got is not None and got[0] in pending:
        del pending[got[0]]
        replies[got[0]] = got[1]


def _answer(bodies: list[bytes], pending: dict[int, bytes], replies: dict[int, dict[str, Any]]) -> None:
    for body in bodies:
        _settle(body, pending, replies)


def _drain(sock: zmq.Socket, pending: dict[int, bytes], replies: dict[int, dict[str, Any]]) -> int:
    """Take every reply waiting on ``sock`` (answering what is pending); how
    many there were."""
    count = 0
    while True:
        try:
            body = sock.recv(_NOBLOCK)
        except zmq.Again:
            return count
        count += 1
        _settle(body, pending, replies)
