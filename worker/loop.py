"""The worker's serving loop in Python: receive a request, answer it through
the :class:`~rokv.worker.handler.Handler`, reply on the socket it came from,
until the stop flag is raised; then answer what already arrived.

The compiled loop (:class:`rokv.worker.native.Compiled`) keeps the same
contract (:data:`Answer`) and is chosen by :func:`serve` when it is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from rokv.worker.handler import Handler

if TYPE_CHECKING:
    from rokv.worker.native import Compiled

log = logging.getLogger("rokv.worker")

#: Longest a worker waits on an idle socket before it looks at the stop flag
#: again: the most a stop request waits when no request comes.
STOP_CHECK_MS = 100
#: How long a stopping worker keeps trying to hand its last replies over.
CLOSE_LINGER_MS = 1000
SEND_TIMEOUT_MS = 1000
#: On stop: answer until no request came for DRAIN_QUIET_MS, for at most
#: DRAIN_MAX_SECONDS.
DRAIN_QUIET_MS = 50
DRAIN_MAX_SECONDS = 1.0


def nothing() -> None:
    """A tick that does nothing."""


class StopFlag:
    """Set by SIGTERM/SIGINT."""

    def __init__(self) -> None:
        self.raised = False

    def raise_flag(self, *_: object) -> None:
        self.raised = True


def serve(
    socks: list[zmq.Socket],
    handler: Handler,
    stop: StopFlag,
    tick: Callable[[], None] = nothing,
    compiled: Compiled | None = None,
    direct: zmq.Socket | Any = None,
    changing: bool = False,
) -> None:
    """Answer requests on ``socks`` (one per broker) and on ``direct`` (the
    worker's own ROUTER, which clients reach without a broker: it brings the
    same ``[routing_id, body]`` frames a broker does; or, with ``compiled``,
    the ``_native.Endpoint`` its loop serves without libzmq) until ``stop`` is
    raised, then answer what has already arrived and return. ``tick`` is
    called at least every :data:`TICK_EVERY` messages and at every idle
    timeout (:data:`STOP_CHECK_MS`): publishing metrics rides on it. With
    ``compiled``, its loop answers (and hands the handler what it does not).
    Requests that came in on ``direct`` are counted in ``handler.stats.direct``.
    ``changing``: ``tick`` may change the list ``socks`` in place (DNS
    discovery adds and removes brokers); the loop polls whatever it holds."""
    answer = _answer
    ready: AnswerReady | None = None
    if compiled is not None:
        answer, tick, ready = compiled.answer, compiled.ticking(tick), compiled.answer_ready
    if direct is not None and not isinstance(direct, zmq.Socket):
        # The direct endpoint the compiled loop serves itself (rokv.worker.direct):
        # polled with the brokers' sockets, its count last.
        if compiled is None:
            raise ValueError("a compiled direct endpoint needs the compiled loop")
        ready, direct = _with_endpoint(compiled, direct), None
        native_direct = True
    else:
        native_direct = False
    try:
        _serve(socks, handler, stop, tick, answer, ready, direct, changing, native_direct)
    finally:
        if compiled is not None:
            compiled.collect()


def _serve(
    socks: list[zmq.Socket],
    handler: Handler,
    stop: StopFlag,
    tick: Callable[[], None],
    answer: Answer,
    ready: AnswerReady | None = None,
    direct: zmq.Socket | None = None,
    changing: bool = False,
    native_direct: bool = False,
) -> None:
    if changing or len(socks) > 1 or direct is not None or native_direct:
        _serve_several(socks, handler, stop, tick, ready or _answer_ready(handler, answer), direct, native_direct)
        return
    sock = socks[0]
    # A blocking receive with a timeout, not poll then receive: per message
    # that saves the poll and, at the end of every burst, the zmq.Again
    # exception of a receive that finds nothing. A signal still reaches the
    # flag at once (pyzmq runs handlers when libzmq returns EINTR) or, when
    # another thread took it, by the next timeout.
    sock.rcvtimeo = STOP_CHECK_MS
    answer(sock, handler, lambda: stop.raised, False, 1 << 62, tick)
    # Answer what has reached this host, not just this socket: libzmq's I/O
    # thread may still be moving requests in from the kernel, so stop after a
    # short quiet spell (bounded, so a busy broker cannot hold the exit up).
    sock.rcvtimeo = DRAIN_QUIET_MS
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    answered = answer(sock, handler, lambda: time.monotonic() > deadline, True, 1 << 62, nothing)
    log.info("stopping: answered %d requests that arrived before or just after the stop signal", answered)


#: With several brokers, the most requests answered from one broker's socket
#: before the others get their turn.
BURST = 64


#: How a loop answers what waits on several sockets: (sockets, timeout_ms,
#: burst) -> how many each answered, after one poll of at most timeout_ms and
#: up to ``burst`` answers from each socket; :func:`_answer_ready` in Python,
#: or :meth:`Compiled.answer_ready`.
AnswerReady = Callable[[list[zmq.Socket], int, int], list[int]]


def _with_endpoint(compiled: Compiled, endpoint: Any) -> AnswerReady:
    """:meth:`Compiled.answer_ready` that polls ``endpoint`` (a
    ``_native.Endpoint``) too: one count more, the endpoint's, last."""

    def answer_ready(socks: list[zmq.Socket], timeout_ms: int, burst: int) -> list[int]:
        return compiled.answer_ready(socks, timeout_ms, burst, endpoint)

    return answer_ready


def _answer_ready(handler: Handler, answer: Answer) -> AnswerReady:
    """:data:`AnswerReady` over ``answer`` (one socket at a time), with a
    poller built anew whenever the list of sockets changes."""
    polled: dict[zmq.Socket, int] = {}
    poller = zmq.Poller()

    def answer_ready(socks: list[zmq.Socket], timeout_ms: int, burst: int) -> list[int]:
        nonlocal poller
        if list(polled) != socks:
            poller = zmq.Poller()
            polled.clear()
            for index, sock in enumerate(socks):
                poller.register(sock, zmq.POLLIN)
                polled[sock] = index
        counts = [0] * len(socks)
        for sock, _ in poller.poll(timeout_ms):
            counts[polled[sock]] += answer(sock, handler, _never, True, burst, nothing)
        return counts

    return answer_ready


def _serve_several(
    socks: list[zmq.Socket],
    handler: Handler,
    stop: StopFlag,
    tick: Callable[[], None],
    ready: AnswerReady,
    direct: zmq.Socket | None = None,
    native_direct: bool = False,
) -> None:
    """:func:`serve` for several sockets (the brokers', and ``direct`` last):
    a poll, then a burst from each socket that has requests, each answered on
    the socket it came from. When ``tick`` changed ``socks`` (DNS discovery),
    the next poll watches the new list. ``native_direct``: ``ready`` serves
    the compiled direct endpoint too, and counts it last."""
    stats = handler.stats
    brokers: list[zmq.Socket] | None = None  # what ``socks`` held at the last poll
    everything: list[zmq.Socket] = []

    def answer_ready(timeout_ms: int) -> int:
        nonlocal brokers, everything
        if brokers is None or brokers != socks:
            brokers = list(socks)
            everything = brokers + ([direct] if direct is not None else [])
            for sock in everything:
                sock.rcvtimeo = 0  # the poll waits; receives only take what is there
        if not everything and not native_direct:  # no broker yet (a name that does not resolve): zmq's poll
            time.sleep(timeout_ms / 1000)  # would not wait
            return 0
        counts = ready(everything, timeout_ms, BURST)
        if direct is not None or native_direct:
            stats.direct += counts[-1]
        return sum(counts)

    # tick() after TICK_EVERY messages, or TICK_SECONDS, or an idle poll: not
    # after every poll, which under one-at-a-time load is every request (and
    # the compiled loop's tick gathers its counters: several microseconds).
    clock = time.monotonic
    answered_since, next_tick = 0, clock() + TICK_SECONDS
    while not stop.raised:
        got = answer_ready(STOP_CHECK_MS)
        answered_since += got
        if not got or answered_since >= TICK_EVERY or clock() >= next_tick:
            tick()
            answered_since, next_tick = 0, clock() + TICK_SECONDS
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    answered = 0
    while time.monotonic() < deadline:
        got = answer_ready(DRAIN_QUIET_MS)
        if not got:
            break
        answered += got
    log.info("stopping: answered %d requests that arrived before or just after the stop signal", answered)


def _never() -> bool:
    return False


#: Messages between two calls of the loop's ``tick`` under load (a function
#: call and a clock read: about 3 ns a message); at 1,000 requests a second,
#: every 32 ms, so a publication is late by that much at most.
TICK_EVERY = 32
_TICK_MASK = TICK_EVERY - 1
#: And at least this often (seconds) under load, with several sockets.
TICK_SECONDS = 0.05

# Plain ints: pyzmq turns enum flags into enum arithmetic, and its
# recv_multipart/send_multipart ask ZMQ_RCVMORE through an enum conversion
# (0.7 us) after every frame; this loop asks once per message.
_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


#: How a loop answers messages from one socket: (socket, handler, done,
#: stop_when_idle, limit, tick) -> how many it answered; :func:`_answer` in
#: Python, or :meth:`Compiled.answer`.
Answer = Callable[[zmq.Socket, Handler, Callable[[], bool], bool, int, Callable[[], None]], int]


def _answer(
    sock: zmq.Socket,
    handler: Handler,
    done: Callable[[], bool],
    stop_when_idle: bool,
    limit: int = 1 << 62,
    tick: Callable[[], None] = nothing,
) -> int:
    """Answer one message after another until ``done()``, or ``limit`` were
    answered, or until a wait for the next one times out when
    ``stop_when_idle``; the count answered. ``tick()`` runs at every receive
    timeout and every :data:`TICK_EVERY` messages."""
    recv, send, more = sock.recv, sock.send, sock.get
    count = 0
    while count < limit and not done():
        try:
            route = recv()
        except zmq.Again:  # the receive timeout: nothing came
            tick()
            if stop_when_idle:
                break
            continue
        count += 1
        if not count & _TICK_MASK:
            tick()
        # The broker's ROUTER puts the client's routing id before the client's
        # frames, and a message has at least one frame: a body follows.
        frames = [route, recv()]
        while more(_RCVMORE):  # a client sent several frames: refused below
            frames.append(recv())
        reply = handler.handle(frames)
        if reply is not None:
            try:
                send(reply[0], _SNDMORE)
                send(reply[1])
            except zmq.Again:
                log.warning("dropped a reply: the broker did not take it within %d ms", SEND_TIMEOUT_MS)
    return count
