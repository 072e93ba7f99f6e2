"""The blocking client: one DEALER socket, request ids, a deadline per try."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Iterable, Sequence

import zmq

from client import protocol as p
from client.errors import RokvError, ServiceUnavailable
from client.replies import check_key_type, value_from_reply, values_from_reply, worker_from_reply

DEFAULT_ENDPOINT = p.DEFAULT_FRONTEND
DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRIES = 2
#: Keys per mget message; longer get_many lists travel as several, pipelined.
DEFAULT_BATCH_SIZE = 1000


def resolve_endpoint(endpoint: str | None) -> str:
    """``endpoint``, else ``$ROKV_ENDPOINT``, else the loopback default."""
    return endpoint or os.environ.get("ROKV_ENDPOINT") or DEFAULT_ENDPOINT


class Client:
    """Looks keys up in a rokv service.

    Args:
        endpoint: the broker's frontend, e.g. ``tcp://127.0.0.1:5555`` or
            ``ipc:///path``; default ``$ROKV_ENDPOINT``, else that address.
        timeout: seconds to wait for the reply to each try (> 0).
        retries: extra tries after the first when no reply came in time
            (lookups are idempotent, so a retry is always safe).
        batch_size: keys per message in :meth:`get_many` (1 to 10,000).
        context: a ``zmq.Context`` to use; default the process-wide instance.

    Every call either returns the exact answer or raises a ``RokvError``:
    ``KeyNotFound``, ``InvalidKey``, ``ServiceUnavailable`` after
    ``1 + retries`` tries without reply, ``ProtocolError`` when the server
    refuses the request. A call blocks for at most about
    ``timeout * (1 + retries)`` seconds.

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
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        context: zmq.Context | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
        if not (isinstance(batch_size, int) and 1 <= batch_size <= p.MAX_MGET_KEYS):
            raise ValueError(f"batch_size must be an integer from 1 to {p.MAX_MGET_KEYS}, not {batch_size!r}")
        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = float(timeout)
        self.retries = retries
        self.batch_size = batch_size
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = ctx.socket(zmq.DEALER)
        # Unsent requests must never hold up close() or interpreter exit.
        self._sock.linger = 0
        if "[" in self.endpoint:
            self._sock.ipv6 = True
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            self._sock = None
            raise ValueError(f"bad endpoint {self.endpoint!r}: {exc}") from None
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    # ------------------------------------------------------------ public API

    def get(self, key: str) -> str:
        """The value stored under ``key``.

        Raises:
            KeyNotFound: ``key`` is a valid UUIDv4 that the dataset lacks.
            InvalidKey: ``key`` is not a string or not a UUIDv4.
            ServiceUnavailable: no reply after every try.
        """
        check_key_type(key)
        rid = next(self._ids)
        reply = self._exchange({rid: p.encode_request(rid, p.OP_GET, key)})[rid]
        return value_from_reply(reply, key)

    def get_many(self, keys: Iterable[str]) -> list[str | None]:
        """The values of ``keys``, in order, ``None`` where a key is not found.

        Long lists travel as several messages of ``batch_size`` keys, sent
        together, so the wait is about one round trip either way.

        Raises:
            InvalidKey: some key is not a string or not a UUIDv4 (the first
                one found is named); nothing is returned then.
            ServiceUnavailable: no reply after every try.
        """
        keys = list(keys)
        for index, key in enumerate(keys):
            check_key_type(key, f"keys[{index}]")
        if not keys:
            return []
        chunks: dict[int, Sequence[str]] = {}
        bodies: dict[int, bytes] = {}
        for start in range(0, len(keys), self.batch_size):
            rid = next(self._ids)
            chunk = keys[start : start + self.batch_size]
            chunks[rid] = chunk
            bodies[rid] = p.encode_request(rid, p.OP_MGET, chunk)
        replies = self._exchange(bodies)
        values: list[str | None] = []
        for rid, chunk in chunks.items():
            values.extend(values_from_reply(replies[rid], chunk))
        return values

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
        still unanswered after each timeout. Replies whose id is not awaited
        (late answers to abandoned calls) are dropped."""
        with self._lock:
            sock = self._sock
            if sock is None:
                raise RokvError("this Client is closed")
            if os.getpid() != self._pid:
                raise RokvError("this Client was created in another process; create one after fork()")
            replies: dict[int, dict[str, Any]] = {}
            pending = dict(bodies)
            tries = 1 + self.retries
            for _ in range(tries):
                for body in pending.values():
                    try:
                        sock.send(body, zmq.NOBLOCK)
                    except zmq.Again:
                        break  # queue full: the broker is away; wait out this try
                deadline = time.monotonic() + self.timeout
                while pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._poller.poll(remaining * 1000):
                        break
                    self._drain(sock, pending, replies)
                if not pending:
                    return replies
            raise ServiceUnavailable(
                f"no reply from {self.endpoint} within {self.timeout:g} s on {tries} "
                f"{'try' if tries == 1 else 'tries'}"
            )

    @staticmethod
    def _drain(sock: zmq.Socket, pending: dict[int, bytes], replies: dict[int, dict[str, Any]]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 1:
                continue
            try:
                reply = p.decode_reply(frames[0])
            except p.ProtocolViolation:
                continue
            rid = reply.get(p.F_ID)
            if type(rid) is int and rid in pending:  # noqa: E721
                del pending[rid]
                replies[rid] = reply
