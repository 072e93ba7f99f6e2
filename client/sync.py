"""The blocking client: one DEALER socket, request ids, a deadline per try.

What is sent and what a reply means is decided in :mod:`rokv.core`, shared
with :class:`rokv.AsyncClient`; this module is only the blocking transport.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any, Iterable

import zmq

from rokv import core
from rokv import protocol as p
from rokv.security import CurvePeer
from rokv.core import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENDPOINT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    resolve_endpoint,
)
from rokv.errors import RokvError
from rokv.replies import value_from_reply, worker_from_reply

__all__ = [
    "Client", "RetryPolicy", "resolve_endpoint",
    "DEFAULT_ENDPOINT", "DEFAULT_TIMEOUT", "DEFAULT_RETRIES", "DEFAULT_BATCH_SIZE",
]

# A plain int: pyzmq's enum flags cost a Python-level operation per use.
_NOBLOCK = int(zmq.NOBLOCK)
_MAX_IN_FLIGHT = p.MAX_IN_FLIGHT
_MAX_KEY_LENGTH = p.MAX_KEY_LENGTH


class Client:
    """Looks keys up in a rokv service.

    Args:
        endpoint: the broker's frontend, e.g. ``tcp://127.0.0.1:5555`` or
            ``ipc:///path``; default ``$ROKV_ENDPOINT``, else that address.
        timeout: seconds to wait for the reply to each try (> 0).
        retries: extra tries after the first when no reply came in time
            (lookups are idempotent, so a retry is always safe).
        retry: a :class:`RetryPolicy` instead of ``timeout`` and ``retries``
            (it can also lengthen each further try); not both. Given none of
            the three, the client uses ``DEFAULT_POLICY``: tries of 0.25, 0.5,
            1 and 2 s, then ``ServiceUnavailable`` after 3.75 s.
        batch_size: keys per message in :meth:`get_many` (1 to 10,000).
        context: a ``zmq.Context`` to use; default the process-wide instance.
        curve: CurveZMQ keys (own secret, broker's public) when the broker
            requires them; default from ``$ROKV_CLIENT_SECRET`` and
            ``$ROKV_BROKER_KEY``, else none. A key the broker does not allow
            gets no connection: calls raise ``ServiceUnavailable``.

    Every call either returns the exact answer or raises a ``RokvError``:
    ``KeyNotFound``, ``InvalidKey``, ``ServiceUnavailable`` after
    ``1 + retries`` tries without reply, ``ProtocolError`` when the server
    refuses the request. A call blocks for at most about ``retry.total``
    seconds (``timeout * (1 + retries)`` for a constant ``timeout``).

    Threads: calls from several threads are safe; they are serialised on one
    socket, so give each busy thread its own ``Client`` (or use one
    ``AsyncClient``) for concurrency. Do not use a ``Client`` across
    ``fork()``: create it in the process that uses it.

    Construction does not contact the service; connecting is lazy and
    automatic, as is reconnecting after a broker restart.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        context: zmq.Context | None = None,
        curve: CurvePeer | None = None,
    ) -> None:
        self.retry = core.make_policy(retry, timeout, retries)
        self.batch_size = core.check_batch_size(batch_size)
        self.endpoint = resolve_endpoint(endpoint)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._ids = core.request_ids()
        curve = core.resolve_curve(curve)
        self._curve = curve is not None
        self._sock: zmq.Socket | None = core.open_dealer(context or zmq.Context.instance(), self.endpoint, curve)
        self._rcvtimeo = -1

    @property
    def timeout(self) -> float:
        """Seconds to wait for the reply to the first try."""
        return self.retry.timeout

    @property
    def retries(self) -> int:
        """Extra tries after the first."""
        return self.retry.retries

    # ------------------------------------------------------------ public API

    def get(self, key: core.Key) -> str:
        """The value stored under ``key`` (a string, or a ``uuid.UUID``,
        sent as its canonical string).

        Raises:
            KeyNotFound: ``key`` is a valid UUIDv4 that the dataset lacks.
            InvalidKey: ``key`` is not a string or not a UUIDv4 (one longer
                than ``protocol.MAX_KEY_LENGTH`` is refused without a request).
            ServiceUnavailable: no reply after every try.
        """
        if type(key) is not str or len(key) > _MAX_KEY_LENGTH:  # noqa: E721 - one test for the common case
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
        """Release the socket. Idempotent; later calls raise ``RokvError``."""
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<rokv.Client {self.endpoint} timeout={self.timeout} retries={self.retries} {state}>"

    # ------------------------------------------------------------ transport

    def _exchange(self, bodies: dict[int, bytes]) -> dict[int, dict[str, Any]]:
        """Send every request and wait for a reply to each, resending those
        still unanswered after each try's timeout. Replies whose id is not
        awaited (late answers to abandoned calls) are dropped. At most
        MAX_IN_FLIGHT requests travel at once (PROTOCOL.md, "Limits")."""
        with self._lock:
            sock = self._sock
            if sock is None:
                raise RokvError("this Client is closed")
            if os.getpid() != self._pid:
                raise RokvError("this Client was created in another process; create one after fork()")
            if len(bodies) <= _MAX_IN_FLIGHT:
                return self._exchange_window(sock, bodies)
            replies: dict[int, dict[str, Any]] = {}
            items = list(bodies.items())
            for start in range(0, len(items), _MAX_IN_FLIGHT):
                replies.update(self._exchange_window(sock, dict(items[start : start + _MAX_IN_FLIGHT])))
            return replies

    def _exchange_window(self, sock: zmq.Socket, bodies: dict[int, bytes]) -> dict[int, dict[str, Any]]:
        """:meth:`_exchange` for at most MAX_IN_FLIGHT requests."""
        replies: dict[int, dict[str, Any]] = {}
        pending = dict(bodies)
        for attempt in range(self.retry.tries):
            for body in pending.values():
                try:
                    sock.send(body, _NOBLOCK)
                except zmq.Again:
                    break  # queue full: the broker is away; wait out this try
            deadline = time.monotonic() + self.retry.try_timeout(attempt)
            while pending:
                wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
                if wait_ms <= 0:
                    break
                # A blocking receive with a timeout is one call where poll
                # then receive is two (plus a failed receive): it is most of
                # the client's cost of a sequential get. The option is set
                # only when the wait changes, so once per try at most.
                if wait_ms != self._rcvtimeo:
                    sock.setsockopt(zmq.RCVTIMEO, wait_ms)
                    self._rcvtimeo = wait_ms
                try:
                    # Each frame is read as a message: a reply is one
                    # frame, and asking ZMQ_RCVMORE (as recv_multipart
                    # does) costs more than the receive.
                    body = sock.recv()
                except zmq.Again:
                    break
                got = core.reply_of(body)
                if got is not None and got[0] in pending:
                    del pending[got[0]]
                    replies[got[0]] = got[1]
            if not pending:
                return replies
        raise self.retry.unavailable(self.endpoint, curve=self._curve)
