"""The brokers one client talks to: a socket each, and which to send to next.

One broker is one DEALER socket, exactly as rokv always used it. Several
brokers get one socket each (never one DEALER connected to all: it would
round-robin blindly, and a retry could go back to the broker that just lost
it), each with:

- ``ZMQ_IMMEDIATE``: a send to a broker with no live connection (never up,
  killed, or cut off and noticed) fails at once, and the next broker is tried;
- ZMTP heartbeats: a broker cut off without closing its connection (a host
  that vanished: no FIN, no RST) is noticed within HEARTBEAT_TIMEOUT_MS, and
  its connection dropped.

Before heartbeats notice, a try sent to a cut-off broker gets no reply; the
client then marks that broker *suspect*, retries through another one, and
prefers the others for new requests until the broker answers again or
SUSPECT_SECONDS pass. So a broker that is down costs a call at most one
per-try timeout, and a restored broker carries traffic again by itself.

A ``tcp+dns://NAME:PORT`` endpoint is one socket connected to every
address NAME resolves to (:mod:`rokv.discovery`): libzmq spreads sends over
its live connections and skips the others (``ZMQ_IMMEDIATE``), so a retry
goes to the next one in turn. :meth:`Brokers.refresh` applies what the
resolver found, in the calling thread, at each call.

Not thread-safe: one client's transport uses it from one thread at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import zmq

from rokv import protocol as p
from rokv.discovery import Discovery, Linked, Tracker, is_dns
from rokv.endpoints import check_endpoint
from rokv.security import CurvePeer, KeyFileError

#: How long a broker that left a try unanswered is avoided, when others are up.
SUSPECT_SECONDS = 2.0
#: How long a broker that refused a send (no live connection) is skipped.
DOWN_SECONDS = 0.02


def open_dealer(
    ctx: zmq.Context, endpoint: str, curve: CurvePeer | None = None, *, several: bool = False
) -> zmq.Socket:
    """A DEALER connected to ``endpoint`` with linger 0, a CURVE client of
    the broker when ``curve`` is given; ``several``: one of several brokers
    (immediate sends and heartbeats, see the module's docstring). A
    ``tcp+dns://`` endpoint is not connected here: :class:`Linked` connects
    it to each address its name resolves to.

    Raises:
        ValueError: the endpoint is malformed, or a key file is bad
            (``KeyFileError``).
    """
    dns = is_dns(endpoint)
    if not dns:
        check_endpoint(endpoint)
    sock: zmq.Socket = zmq.Socket(ctx, zmq.DEALER)  # the plain class even from a zmq.asyncio.Context
    # Unsent requests must never hold up close() or interpreter exit.
    sock.linger = 0
    if "[" in endpoint or dns:
        sock.ipv6 = True
    if several or dns:  # a name may stand for several brokers
        sock.immediate = True
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
    try:
        if curve is not None:
            curve.apply(sock)
        if not dns:
            sock.connect(endpoint)
    except KeyFileError:
        sock.close()
        raise
    except zmq.ZMQError as exc:
        sock.close()
        raise ValueError(f"bad endpoint {endpoint!r}: {exc}") from None
    return sock


class Brokers:
    """The sockets of a client, one per broker, and the choice among them."""

    def __init__(self, ctx: zmq.Context, endpoints: Sequence[str], curve: CurvePeer | None) -> None:
        self.endpoints = tuple(endpoints)
        several = len(self.endpoints) > 1
        self.socks: list[zmq.Socket] = []
        # tcp+dns:// endpoints: resolved in the background, applied by refresh().
        self._discovery: Discovery | None = None
        self._links: list[Linked] = []
        try:
            if any(is_dns(e) for e in self.endpoints):
                self._discovery = Discovery(self.endpoints)
            for endpoint in self.endpoints:
                self.socks.append(open_dealer(ctx, endpoint, curve, several=several))
                if self._discovery is not None and is_dns(endpoint):
                    self._links.append(Linked(self.socks[-1], self._discovery, endpoint))
        except BaseException:
            self.close()
            raise
        self._tracker = Tracker(self._discovery) if self._discovery is not None else None
        self.refresh()
        self.count = len(self.socks)
        #: Every socket, for reading replies from whichever broker sends them
        #: (built once: the blocking client polls it on every call).
        self.readable = zmq.Poller()
        for sock in self.socks:
            self.readable.register(sock, zmq.POLLIN)
        self._next = 0
        # Monotonic times before which a broker is avoided: suspect (a try
        # went unanswered) or down (it refused a send: no connection).
        self._avoid_until = [0.0] * self.count
        #: Replies taken from each broker (with several), for tests and load
        #: generators that show how traffic spreads.
        self.replies = [0] * self.count

    def order(self, after: int | None = None) -> list[int]:
        """The brokers to try, best first: round-robin among those not
        avoided (starting after ``after``, the broker of the previous try, so
        that a retry goes elsewhere), then the avoided ones, soonest
        available first, then ``after`` itself. Applies what DNS discovery
        found first (:meth:`refresh`)."""
        if self._tracker is not None:
            self.refresh()
        n = self.count
        if n == 1:
            return [0]
        if after is None:
            start = self._next
            self._next = (start + 1) % n
        else:
            start = (after + 1) % n
        now = time.monotonic()
        ring = [(start + k) % n for k in range(n)]
        if after is not None:
            ring.remove(after)
        good = [i for i in ring if self._avoid_until[i] <= now]
        bad = sorted((i for i in ring if self._avoid_until[i] > now), key=self._avoid_until.__getitem__)
        return good + bad + ([after] if after is not None else [])

    def refresh(self) -> None:
        """Connect ``tcp+dns://`` sockets to the addresses found since the
        last call and disconnect them from those gone (the sockets stay the
        same objects). One integer comparison when nothing changed."""
        if self._tracker is not None and self._tracker.changed():
            for link in self._links:
                link.sync()

    def suspect(self, index: int) -> None:
        """A try sent through ``index`` went unanswered."""
        if self.count > 1:
            self._avoid_until[index] = time.monotonic() + SUSPECT_SECONDS

    def down(self, index: int) -> None:
        """``index`` has no live connection (a send was refused)."""
        if self.count > 1:
            self._avoid_until[index] = max(self._avoid_until[index], time.monotonic() + DOWN_SECONDS)

    def answered(self, index: int, count: int = 1) -> None:
        """``count`` replies came through ``index``: it works."""
        self._avoid_until[index] = 0.0
        self.replies[index] += count

    def close(self) -> None:
        """Close every socket. Idempotent."""
        if self._discovery is not None:
            self._discovery.close()
        for sock in self.socks:
            sock.close(linger=0)
        self.socks = []
