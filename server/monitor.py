"""Watching a socket's connections: libzmq's socket-monitor events, read in a
background thread so that no forwarding or serving loop pays for them.

A :class:`ConnectionWatcher` keeps, per watched socket, how many peers are
connected and the last handshake failure, and logs what an operator needs to
see: a peer admitted, a peer lost, and why a CURVE handshake failed (rate
limited, so a peer retrying every 100 ms cannot flood the log).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

from rokv.security import CRYPTOGRAPHIC as _CRYPTOGRAPHIC
from rokv.security import MECHANISM_MISMATCH as _MECHANISM_MISMATCH
from rokv.security import without_curve

_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_MONITOR_STOPPED
)


def handshake_failure(event: int, value: int, *, server: bool, curve: bool = True) -> str:
    """Plain words for a failed handshake, seen from the side that binds
    (``server``) or the side that connects (a worker), with CURVE keys
    (``curve``) or without: then the mismatch is named, not a key."""
    if not server and not curve:
        words = without_curve(event, value, "this worker")
        if words is not None:
            return f"{words} (give it --curve-secret and --broker-key, or ROKV_WORKER_SECRET and ROKV_BROKER_KEY)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if server:
            return "a peer's CURVE key is not on the allow-list"
        return f"the broker refused this process's CURVE key (ZAP status {value}): it is not on the broker's allow-list"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        return (
            "a peer without CURVE tried to connect (or with CURVE to a plain side)"
            if server
            else "security mismatch: one side uses CURVE and the other does not"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _CRYPTOGRAPHIC:
        return (
            "a peer failed the CURVE handshake (it holds a wrong broker public key, or no CURVE keys)"
            if server
            else "the CURVE handshake failed: the broker's public key given here is wrong"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and not server:
        return "the CURVE handshake failed: the broker's public key given here is probably wrong"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        # The connection closed mid-handshake: what a peer without CURVE, or
        # with keys that do not match, does after its first try.
        return (
            f"a peer's handshake broke off ({os.strerror(value) if 0 < value < 4096 else value}): "
            "a peer without CURVE, or with other keys, gives up this way"
        )
    return f"handshake failed (libzmq event {event}, value {value:#x})"


@dataclass
class Link:
    """What is known of one watched socket's connections."""

    label: str
    server: bool
    #: The socket uses CURVE (else its handshake failures name the mismatch).
    curve: bool = True
    #: Open connections (TCP or IPC), those still in their handshake included:
    #: libzmq's handshake events carry no descriptor to tell peers apart, and
    #: a refused peer is disconnected within milliseconds anyway.
    connected: int = 0
    #: Peers admitted since the start (handshakes that succeeded).
    admitted: int = 0
    #: A connecting socket: admitted by its peer and not disconnected since.
    up: bool = False
    last_failure: str | None = None
    failures: int = 0
    since: float = field(default_factory=time.monotonic)


class ConnectionWatcher:
    """Reads the monitor events of any number of sockets in one daemon thread.

    Thread-safety: :meth:`watch` and :meth:`unwatch` are called from the thread
    that owns the socket (they touch only that socket and a queue); every other
    method may be called from any thread. ``on_event(link, event, value)``, if
    given, runs in the watcher's thread.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        quiet_seconds: float = 10.0,
        warn_after: float = 5.0,
        on_event: Callable[[Link, int, int], None] | None = None,
    ) -> None:
        self._log = log
        self._quiet = quiet_seconds
        self._warn_after = warn_after
        self._on_event = on_event
        self._new: queue.SimpleQueue[tuple[zmq.Socket, Link]] = queue.SimpleQueue()
        self._links: dict[str, Link] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._thread = threading.Thread(target=self._run, name="rokv-monitor", daemon=True)
        self._thread.start()

    def watch(self, sock: zmq.Socket, label: str, *, server: bool) -> Link:
        """Start watching ``sock`` (before it binds or connects, so that no
        event is missed); its events are reported under ``label``."""
        link = Link(label, server, curve=sock.get(zmq.MECHANISM) == zmq.CURVE)
        with self._lock:
            self._links[label] = link
        self._new.put((sock.get_monitor_socket(_EVENTS), link))
        return link

    @staticmethod
    def unwatch(sock: zmq.Socket) -> None:
        """Stop watching ``sock`` (call before closing it); the watcher closes
        the monitor socket when its last event arrives."""
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass

    def links(self) -> list[Link]:
        """A snapshot of every watched socket's state."""
        with self._lock:
            return [Link(**vars(link)) for link in self._links.values()]

    def stop(self) -> None:
        """Stop the thread (within about 0.2 s) and close its monitor sockets."""
        self._stop.set()
        self._thread.join(timeout=2)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        poller = zmq.Poller()
        monitors: dict[zmq.Socket, Link] = {}
        self._open: dict[str, set[int]] = {}
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        mon, link = self._new.get_nowait()
                    except queue.Empty:
                        break
                    monitors[mon] = link
                    poller.register(mon, zmq.POLLIN)
                self._warn_unconnected()
                for mon, _ in poller.poll(200):
                    link = monitors[mon]
                    try:
                        message = recv_monitor_message(mon, zmq.NOBLOCK)
                    except zmq.ZMQError:
                        continue
                    event, value = int(message["event"]), int(message["value"])
                    if event == zmq.EVENT_MONITOR_STOPPED:
                        poller.unregister(mon)
                        del monitors[mon]
                        mon.close(linger=0)
                        continue
                    self._record(link, event, value)
        finally:
            for mon in monitors:
                mon.close(linger=0)
            while True:  # handed over but never taken: closed all the same
                try:
                    self._new.get_nowait()[0].close(linger=0)
                except queue.Empty:
                    break

    def _record(self, link: Link, event: int, value: int) -> None:
        message: tuple[str, int, str] | None = None  # (kind, level, text) to log
        with self._lock:
            fds = self._open.setdefault(link.label, set())
            if event in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                fds.add(value)
                link.connected = len(fds)
            elif event == zmq.EVENT_DISCONNECTED:
                fds.discard(value)
                link.connected = len(fds)
                if not link.server and link.up and not fds:
                    link.up = False
                    link.since = time.monotonic()
                    message = ("lost", logging.WARNING, f"lost the connection to {link.label}; reconnecting")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                link.admitted += 1
                if not link.server and not link.up:
                    message = ("up", logging.INFO, f"connected to {link.label}")
                link.up = True
                link.last_failure = None
            else:
                link.failures += 1
                link.last_failure = handshake_failure(event, value, server=link.server, curve=link.curve)
                where = f"{link.label}: " if link.server else f"{link.label}: not admitted: "
                # A bound side's ZAP refusals are logged by the authenticator,
                # which knows the peer's address and key.
                if not (link.server and event == zmq.EVENT_HANDSHAKE_FAILED_AUTH):
                    message = (link.last_failure, logging.WARNING, where + link.last_failure)
        if self._on_event is not None:
            self._on_event(link, event, value)
        if message is not None:
            kind, level, text = message
            if kind == "up":  # always worth a line: it ends a failure or an outage
                self._log.log(level, text)
            else:
                self._limited(link, kind, level, text)

    def _warn_unconnected(self) -> None:
        """Say so when a connecting socket has had no peer for a while: the
        worker or client would otherwise wait in silence."""
        now = time.monotonic()
        with self._lock:
            waiting = [
                link
                for link in self._links.values()
                if not link.server and not link.up and now - link.since >= self._warn_after
            ]
        for link in waiting:
            why = f" (last failure: {link.last_failure})" if link.last_failure else " (is it up and reachable?)"
            self._limited(
                link, "waiting", logging.WARNING, f"no connection to {link.label} after {now - link.since:.0f} s{why}"
            )

    def _limited(self, link: Link, kind: str, level: int, message: str) -> None:
        """Log ``message`` unless the same kind was logged for this link
        within the quiet interval."""
        now = time.monotonic()
        key = (link.label, kind)
        if now - self._last_logged.get(key, -1e9) < self._quiet:
            return
        self._last_logged[key] = now
        self._log.log(level, message)
