"""The asyncio client: a DEALER socket per broker shared by every coroutine,
any number of requests in flight, and concurrent ``get`` calls coalesced into
one mget.

Settings are :class:`rokv.base.ClientBase`'s and what is sent and what a reply
means is decided in :mod:`rokv.core`, both shared with the blocking
:class:`rokv.Client`; this module is only the transport.

Transport: each socket is watched with ``loop.add_reader`` on its ZMQ_FD, the
mechanism ``zmq.asyncio`` itself uses, but every readiness wake-up drains all
queued replies with non-blocking receives and completes plain futures, instead
of one ``zmq.asyncio`` future per message: per-message Python cost is what
limits single-key throughput. Needs an event loop with ``add_reader`` (every
loop on Linux and macOS; on Windows, a selector loop).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from rokv import core
from rokv import protocol as p
from rokv.base import ClientBase
from rokv.brokerset import Brokers
from rokv.core import DEFAULT_BATCH_SIZE, RetryPolicy
from rokv.errors import ProtocolError, RokvError
from rokv.keys import match_canonical
from rokv.replies import partial_values, value_from_reply, worker_from_reply
from rokv.security import CurvePeer
from rokv.workerset import Link, Workers

__all__ = ["AsyncClient", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_DELAY"]

# Plain ints: pyzmq's enum members cost a Python-level call in every operation.
_NOBLOCK = int(zmq.NOBLOCK)
_MAX_IN_FLIGHT = p.MAX_IN_FLIGHT

#: How soon a burst that no broker could take (none connected yet) is offered
#: again, within its try's timeout.
_UNSENT_RETRY_SECONDS = 0.005

#: Most ``get`` calls that travel together in one coalesced mget.
DEFAULT_MAX_BATCH = 256
#: Longest a ``get`` waits for company before its mget leaves (seconds). 0
#: sends what the current event-loop turn gathered, adding no delay.
DEFAULT_MAX_DELAY = 0.0


class _Coalesced:
    """The callers of one coalesced mget: each future gets its own value or
    ``KeyNotFound``; a failure of the whole goes to every caller."""

    __slots__ = ("keys", "canonicals", "futures")

    def __init__(self, keys: list[str], canonicals: list[str], futures: list[asyncio.Future]) -> None:
        self.keys = keys
        self.canonicals = canonicals
        self.futures = futures

    def abandoned(self) -> bool:
        return all(f.done() for f in self.futures)

    def deliver(self, reply: dict[str, Any]) -> None:
        values = reply.get(p.F_VALUES)
        damaged: set[int] = set()
        if p.F_ERROR in reply:  # an error whatever else the reply holds
            partial = partial_values(reply, len(self.futures))
            if partial is None:
                self.fail(core.batch_error(reply))
                return
            values, damaged = partial  # some values damaged: the other callers get theirs
        if type(values) is not list or len(values) != len(self.futures):
            self.fail(ProtocolError(f"malformed mget reply for {len(self.futures)} keys"))
            return
        for future, value, index in zip(self.futures, values, range(len(values))):
            if future.done():
                continue  # its caller was cancelled
            if type(value) is str:
                future.set_result(value)
            elif index in damaged:
                future.set_exception(core.damaged(self.canonicals[index], self.keys[index]))
            else:
                future.set_exception(core.not_found(self.canonicals[index], self.keys[index]))

    def fail(self, exc: BaseException) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(exc)


#: What waits for a reply: the future of one call, answered with the reply
#: map itself, or the callers of a coalesced mget.
_Waiter = asyncio.Future | _Coalesced


def _abandoned(waiter: _Waiter) -> bool:
    """True when nobody waits for the answer any more (all cancelled)."""
    return waiter.abandoned() if isinstance(waiter, _Coalesced) else waiter.done()


def _fail(waiter: _Waiter, exc: BaseException) -> None:
    if isinstance(waiter, _Coalesced):
        waiter.fail(exc)
    elif not waiter.done():
        waiter.set_exception(exc)


class _Burst:
    """Tries sent together: their ids and bodies, their try number, when they
    time out, and the route that took them: a broker's index, a worker's
    :class:`~rokv.workerset.Link` (direct), or None while none could."""

    __slots__ = ("deadline", "ids", "bodies", "attempt", "broker")

    def __init__(self, deadline: float, ids: list[int], bodies: list[bytes], attempt: int) -> None:
        self.deadline = deadline
        self.ids = ids
        self.bodies = bodies
        self.attempt = attempt
        self.broker: int | Link | None = None


class AsyncClient(ClientBase):
    """Looks keys up in a rokv service from asyncio code. Settings, errors
    and timeouts: :class:`rokv.base.ClientBase`; methods those of
    :class:`rokv.Client`. Besides:

    Args:
        coalesce: send concurrent :meth:`get` calls together as one mget
            (default on). Each caller still gets exactly its own value or
            error; keys are validated locally first, so an invalid key fails
            alone with the server's message instead of failing the mget.
        max_batch: most ``get`` calls in one coalesced mget (1 to 10,000).
        max_delay: seconds a ``get`` may wait for others to join its mget
            (default 0: whatever the current event-loop turn gathered).
        context: a ``zmq.Context`` (a ``zmq.asyncio.Context`` works too).

    A reply to any try answers the call; late replies to abandoned requests
    are dropped.

    Concurrency: any number of coroutines of one event loop may call one
    client at once; they share its sockets, so thousands of requests can be in
    flight (at most MAX_IN_FLIGHT travel at once; the others wait their turn,
    their clock not started). Cancelling an awaiting call
    (``asyncio.wait_for``, task cancel) abandons only that call. The client
    binds to the event loop of its first call; it is not thread-safe and must
    not cross ``fork()``. Close it with ``await client.close()`` or
    ``async with``.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        coalesce: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay: float = DEFAULT_MAX_DELAY,
        context: zmq.Context | None = None,
        curve: CurvePeer | None = None,
        direct: bool = False,
    ) -> None:
        if not (type(max_batch) is int and 1 <= max_batch <= p.MAX_MGET_KEYS):
            raise ValueError(f"max_batch must be an integer from 1 to {p.MAX_MGET_KEYS}, not {max_batch!r}")
        if not (isinstance(max_delay, (int, float)) and 0 <= max_delay <= 1):
            raise ValueError(f"max_delay must be from 0 to 1 second, not {max_delay!r}")
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
        self.coalesce = bool(coalesce)
        self.max_batch = max_batch
        self.max_delay = float(max_delay)
        assert self._brokers is not None
        for sock in self._brokers.socks:
            # Thousands in flight: the default high-water marks (1000) would
            # drop sends; what is queued is bounded by MAX_IN_FLIGHT anyway.
            sock.sndhwm = 0
            sock.rcvhwm = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Request id -> what waits for its reply; an id leaves when it is
        # answered, failed or abandoned, so "still here" means "still wanted".
        self._pending: dict[int, _Waiter] = {}
        # The first tries queued in this event-loop turn, sent together by
        # _pump; resends, rare, wait apart as (id, body, try number, broker
        # of the try before).
        self._out_ids: list[int] = []
        self._out_bodies: list[bytes] = []
        self._out_resends: list[tuple[int, bytes, int, int | Link | None]] = []
        # One FIFO of bursts per try number, one entry per burst sent, not per
        # request: every try of the same number waits equally long, so each
        # FIFO is in deadline order and one timer at the earliest head serves
        # them all.
        self._deadlines: list[deque[_Burst]] = [deque() for _ in range(self.retry.tries)]
        self._try_timeouts = tuple(self.retry.try_timeout(i) for i in range(self.retry.tries))
        self._timer_slack = min(0.005, self.retry.timeout / 20)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pump_scheduled = False
        # Bursts no broker could take yet (none connected), offered again soon.
        self._unsent: list[_Burst] = []
        self._unsent_handle: asyncio.TimerHandle | None = None
        # Coalescing: the gets gathered for the next mget.
        self._batch_keys: list[str] = []
        self._batch_canonicals: list[str] = []
        self._batch_futures: list[asyncio.Future] = []
        self._flush_handle: asyncio.Handle | None = None
        # Direct: the worker sockets watched so far, and the map's refresh timer.
        self._watched: set[zmq.Socket] = set()
        self._refresh_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ public API

    async def get(self, key: core.Key) -> str:
        """The value stored under ``key`` (a string, or a ``uuid.UUID``,
        sent as its canonical string).

        Raises:
            KeyNotFound: ``key`` is a valid UUIDv4 that the dataset lacks.
            InvalidKey: ``key`` is not a string or not a UUIDv4 (refused
                at once, without a request).
            ServiceUnavailable: no reply after every try.
        """
        # The per-call path is written out here rather than through helpers:
        # each Python call saved is a measurable share of a get's cost.
        loop = self._loop
        if loop is None or loop is not asyncio.get_running_loop() or self._brokers is None:
            loop = self._attach()
        if self.coalesce:
            if type(key) is str and match_canonical(key):
                canonical = key
            else:
                key, canonical = core.key_and_canonical(key)
            future = loop.create_future()
            self._batch_keys.append(key)
            self._batch_canonicals.append(canonical)
            self._batch_futures.append(future)
            if len(self._batch_futures) >= self.max_batch:
                self._flush()
            elif self.max_delay:
                if self._flush_handle is None:
                    self._flush_handle = loop.call_later(self.max_delay, self._flush)
                return await future
            if not self._pump_scheduled:  # the pump sends what this turn gathered
                self._pump_scheduled = True
                loop.call_soon(self._pump)
            return await future
        if type(key) is not str or not match_canonical(key):  # one test for the common case
            key = core.check_key(key)
        rid = next(self._ids)
        future = loop.create_future()
        self._pending[rid] = future
        self._out_ids.append(rid)
        self._out_bodies.append(p.encode_request(rid, p.OP_GET, key))
        if not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)
        return value_from_reply(await future, key)

    async def get_many(self, keys: Iterable[core.Key]) -> list[str | None]:
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
        loop = self._attach()
        keys = core.check_keys(keys)
        if not keys:
            return []
        chunks = core.split_keys(keys, self.batch_size)
        calls = []
        for _, chunk in chunks:
            rid = next(self._ids)
            calls.append(self._call(loop, rid, p.encode_request(rid, p.OP_MGET, chunk)))
        replies = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
        return core.join_batches([(offset, chunk, reply) for (offset, chunk), reply in zip(chunks, replies)])

    async def ping(self) -> dict[str, Any]:
        """Describe the worker that answered: at least ``id``, ``pid``,
        ``keys`` (how many it holds) and ``host``.

        Raises:
            ServiceUnavailable: no reply after every try.
        """
        loop = self._attach()
        rid = next(self._ids)
        return worker_from_reply(await self._call(loop, rid, p.encode_request(rid, p.OP_PING)))

    async def close(self) -> None:
        """Release the socket; calls still waiting raise ``RokvError``.
        Idempotent; later calls raise ``RokvError``."""
        self._close()

    aclose = close

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def __repr__(self) -> str:
        state = "closed" if self._brokers is None else f"open, {len(self._pending)} in flight"
        return (
            f"<rokv.AsyncClient {self.endpoint} timeout={self.timeout} retries={self.retries} "
            f"coalesce={self.coalesce} {state}>"
        )

    # ------------------------------------------------------------ transport

    def _attach(self) -> asyncio.AbstractEventLoop:
        """The running loop, watching the sockets from the first call on."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._brokers is not None:
            return loop
        brokers = self._usable("AsyncClient")
        if self._loop is not None:
            raise RokvError("this AsyncClient is bound to another event loop; create one per loop")
        self._loop = loop
        for sock in brokers.socks:
            loop.add_reader(sock.fileno(), self._drain)
        workers = self._workers
        if workers is not None:
            workers.before_close = self._unwatch
            for sock in workers.directories:
                loop.add_reader(sock.fileno(), self._take_map)
            self._refresh()
        return loop

    # ------------------------------------------------------------ direct

    def _refresh(self) -> None:
        """Ask the directories for the map, now and every refresh period."""
        workers = self._workers
        if workers is None or self._loop is None:
            return
        workers.ask()
        self._refresh_handle = self._loop.call_later(workers.refresh, self._refresh)
        self._take_map()  # a send may consume the edge of ZMQ_FD

    def _take_map(self) -> None:
        """Read the directories' answers; watch the workers that are new."""
        workers = self._workers
        if workers is None or self._loop is None:
            return
        workers.take()
        for link in workers.links:
            sock = link.sock
            assert sock is not None  # an AsyncClient's map opens no plain streams
            if sock not in self._watched:
                self._watched.add(sock)
                # Thousands in flight, as on the brokers' sockets.
                sock.sndhwm = 0
                sock.rcvhwm = 0
                self._loop.add_reader(sock.fileno(), self._drain)

    def _unwatch(self, sock: zmq.Socket) -> None:
        """Stop watching a worker's socket about to be closed."""
        if sock in self._watched:
            self._watched.discard(sock)
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())

    async def _call(self, loop: asyncio.AbstractEventLoop, rid: int, body: bytes) -> dict[str, Any]:
        future = loop.create_future()
        self._enqueue(rid, body, future)
        return await future

    def _enqueue(self, rid: int, body: bytes, waiter: _Waiter) -> None:
        """Queue a first try for the pump at the end of this event-loop turn."""
        self._pending[rid] = waiter
        self._out_ids.append(rid)
        self._out_bodies.append(body)
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    def _flush(self) -> None:
        """Queue the gathered gets as one mget."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        keys, canonicals, futures = self._batch_keys, self._batch_canonicals, self._batch_futures
        if not futures:
            return
        self._batch_keys, self._batch_canonicals, self._batch_futures = [], [], []
        if self._brokers is None:
            _fail(_Coalesced(keys, canonicals, futures), RokvError("this AsyncClient is closed"))
            return
        rid = next(self._ids)
        self._enqueue(rid, p.encode_request(rid, p.OP_MGET, canonicals), _Coalesced(keys, canonicals, futures))

    def _pump(self) -> None:
        """Send what this turn queued, then take in what arrived.

        Sending in one burst per turn rather than one message per caller: a
        send that finds libzmq's I/O thread asleep must wake it (a system
        call, ~7 us here), one right behind another does not (~0.6 us). And
        any zmq call may consume the edge of ZMQ_FD, so a reply that came in
        meanwhile would go unnoticed without the drain that follows.
        """
        self._pump_scheduled = False
        brokers = self._brokers
        if brokers is None:
            return
        if self._batch_futures and not self.max_delay:
            self._flush()
        if self._out_ids:
            # At most MAX_IN_FLIGHT requests unanswered (PROTOCOL.md,
            # "Limits"): beyond that the broker may drop replies. Queued
            # requests wait here, their clock not yet started, and go out as
            # replies make room (_drain schedules this pump again).
            room = _MAX_IN_FLIGHT - (len(self._pending) - len(self._out_ids))
            if room >= len(self._out_ids):
                ids, bodies = self._out_ids, self._out_bodies
                self._out_ids, self._out_bodies = [], []
                self._transmit(brokers, _Burst(0.0, ids, bodies, 0), None)
            elif room > 0:
                ids, bodies = self._out_ids[:room], self._out_bodies[:room]
                del self._out_ids[:room], self._out_bodies[:room]
                self._transmit(brokers, _Burst(0.0, ids, bodies, 0), None)
        if self._out_resends:
            resends, self._out_resends = self._out_resends, []
            for attempt, before in sorted({(a, b) for _, _, a, b in resends}, key=lambda ab: (ab[0], repr(ab[1]))):
                chosen = [(rid, body) for rid, body, a, b in resends if a == attempt and b == before]
                self._transmit(
                    brokers, _Burst(0.0, [rid for rid, _ in chosen], [body for _, body in chosen], attempt), before
                )
        self._drain()

    def _transmit(self, brokers: Brokers, burst: _Burst, before: int | Link | None) -> None:
        """Send ``burst`` through one broker (the next in turn, and not
        ``before``, the broker of these requests' last try, when another is
        up) and start its clock."""
        burst.deadline = time.monotonic() + self._try_timeouts[burst.attempt]
        self._deadlines[burst.attempt].append(burst)
        if self._timer is None or burst.deadline < self._timer_at:
            self._arm(burst.deadline)
        if not self._offer(brokers, burst, before):
            # No broker has a connection yet (a new client) or any more: offer
            # it again shortly, within its try; its clock runs meanwhile.
            self._unsent.append(burst)
            if self._unsent_handle is None:
                assert self._loop is not None
                self._unsent_handle = self._loop.call_later(_UNSENT_RETRY_SECONDS, self._offer_unsent)

    def _offer(self, brokers: Brokers, burst: _Burst, before: int | Link | None = None) -> bool:
        """Send ``burst`` to the first worker that takes it (direct), else
        through the first broker that does, not ``before`` (the route of the
        last try) when another is up; False when none does. With one broker,
        libzmq queues what it cannot send yet, as it always did."""
        bodies = burst.bodies
        workers = self._workers
        if workers is not None:
            for link in workers.order(before if isinstance(before, Link) else None):
                assert link.sock is not None
                send = link.sock.send
                try:
                    for body in bodies:
                        send(body, _NOBLOCK)
                except zmq.Again:
                    workers.down(link)  # no live connection: what went out is answered like any try
                    continue
                burst.broker = link
                return True
        for index in brokers.order(before if isinstance(before, int) else None):
            send = brokers.socks[index].send
            try:
                for body in bodies:
                    send(body, _NOBLOCK)
            except zmq.Again:
                if brokers.count == 1:
                    break  # cannot queue now; these tries time out and the next resend
                brokers.down(index)  # no live connection: what went out is answered like any try
                continue
            burst.broker = index
            return True
        return brokers.count == 1

    def _offer_unsent(self) -> None:
        self._unsent_handle = None
        brokers = self._brokers
        if brokers is None:
            return
        now = time.monotonic()
        waiting, self._unsent = self._unsent, []
        for burst in waiting:
            if burst.deadline <= now:
                continue  # its try is over: _expire resends or fails it
            if not any(rid in self._pending for rid in burst.ids):
                continue
            if not self._offer(brokers, burst):
                self._unsent.append(burst)
        if self._unsent:
            assert self._loop is not None
            self._unsent_handle = self._loop.call_later(_UNSENT_RETRY_SECONDS, self._offer_unsent)
        self._drain()

    def _drain(self) -> None:
        """Hand every queued reply to what waits for it; drop unawaited ones."""
        brokers = self._brokers
        if brokers is None:
            return
        pending = self._pending
        for index, sock in enumerate(brokers.socks):
            taken = self._take(sock)
            if taken:
                brokers.answered(index, taken)
        if self._workers is not None:
            self._drain_workers(self._workers)
        if self._out_ids and not self._pump_scheduled and len(pending) - len(self._out_ids) < _MAX_IN_FLIGHT:
            self._schedule_pump()  # replies made room for requests held back

    def _drain_workers(self, workers: Workers) -> None:
        """:meth:`_drain` of the workers' sockets (direct)."""
        for link in workers.links:
            assert link.sock is not None
            taken = self._take(link.sock)
            if taken:
                workers.answered(link, taken)

    def _take(self, sock: zmq.Socket) -> int:
        """Take every reply waiting on ``sock`` and hand each to its waiter;
        how many there were."""
        pending = self._pending
        reply_of = core.reply_of
        recv = sock.recv
        taken = 0
        while True:
            try:
                body = recv(_NOBLOCK)
            except zmq.Again:  # one exception per drain beats a ZMQ_EVENTS call per reply
                return taken
            taken += 1
            # A rokv reply is one frame, and each frame is read as a message
            # of its own: asking ZMQ_RCVMORE costs 0.7 us a reply (more than
            # the receive), and would only catch a worker breaking the
            # protocol, whose frames still have to be replies to be taken.
            got = reply_of(body)
            if got is None:
                continue
            waiter = pending.pop(got[0], None)
            if waiter is None:
                continue
            if isinstance(waiter, _Coalesced):
                waiter.deliver(got[1])
            elif not waiter.done():
                waiter.set_result(got[1])

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        # loop.time() is monotonic too, but need not share time.monotonic()'s
        # origin. Firing a little late lets one wake-up expire every request
        # whose deadline fell in that slack, instead of one wake-up per request.
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()) + self._timer_slack, self._expire)

    def _expire(self) -> None:
        """Resend what waited out its try (through another broker, when
        there are several); fail what waited out its last."""
        self._timer = None
        now = time.monotonic()
        last = len(self._deadlines) - 1
        pending = self._pending
        brokers = self._brokers
        for attempt, queue in enumerate(self._deadlines):
            while queue and queue[0].deadline <= now:
                burst = queue.popleft()
                unanswered = False
                for rid, body in zip(burst.ids, burst.bodies):
                    waiter = pending.get(rid)
                    if waiter is None:
                        continue  # answered
                    if _abandoned(waiter):
                        del pending[rid]
                    elif attempt < last:
                        unanswered = True
                        self._out_resends.append((rid, body, attempt + 1, burst.broker))
                    else:
                        del pending[rid]
                        _fail(waiter, self._unavailable())
                if unanswered and brokers is not None and burst.broker is not None:
                    if isinstance(burst.broker, Link):
                        Workers.suspect(burst.broker)
                    else:
                        brokers.suspect(burst.broker)
                if unanswered:
                    self._silence()
        if brokers is None:
            return
        if self._out_resends or self._out_ids:  # resends, or room made for held requests
            self._schedule_pump()
        heads = [queue[0].deadline for queue in self._deadlines if queue]
        if heads and self._timer is None:
            self._arm(min(heads))

    def _close(self) -> None:
        brokers = self._brokers
        if brokers is None:
            return
        workers = self._workers
        if self._loop is not None and not self._loop.is_closed():
            for sock in brokers.socks:
                self._loop.remove_reader(sock.fileno())
            if workers is not None:
                for sock in [*workers.directories, *self._watched]:
                    self._loop.remove_reader(sock.fileno())
        self._watched.clear()
        for handle in (self._timer, self._flush_handle, self._unsent_handle, self._refresh_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._flush_handle = self._unsent_handle = self._refresh_handle = None
        self._brokers = None
        self._close_probe()
        brokers.close()
        if workers is not None:
            self._workers = None
            workers.close()
        closed = RokvError("this AsyncClient is closed")
        waiting: list[_Waiter] = list(self._pending.values())
        if self._batch_futures:
            waiting.append(_Coalesced(self._batch_keys, self._batch_canonicals, self._batch_futures))
        self._pending.clear()
        self._out_ids, self._out_bodies, self._out_resends = [], [], []
        self._unsent = []
        self._batch_keys, self._batch_canonicals, self._batch_futures = [], [], []
        for queue in self._deadlines:
            queue.clear()
        for waiter in waiting:
            _fail(waiter, closed)
