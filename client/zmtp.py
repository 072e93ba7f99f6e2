"""ZMTP 3.0 over a plain TCP socket: the blocking direct client's link to
one worker, without libzmq.

Why: a libzmq socket hands every message to its I/O thread and back, so a
sequential round trip wakes two more threads in the client than a plain
socket does. On a busy machine that hand-off is most of a sequential
client's cost (BENCHMARKS.md, "One hop"). A worker's direct endpoint is a
ROUTER; :class:`Stream` speaks to it as a DEALER does (ZMTP 3.0, RFC 23,
NULL security), which is all rokv's one-frame requests and replies need:

- the greeting and READY (``Socket-Type`` DEALER) go out with the first
  request (the peer reads them in order); the peer's are checked as they come;
- the worker's heartbeat PINGs are answered with PONGs;
- a connection that sent nothing for :data:`IDLE_SECONDS` is replaced before
  it is used: the worker drops a peer that is silent for its heartbeat
  timeout after a PING (``HEARTBEAT_TIMEOUT_MS``), and a blocking client
  reads no PING between calls;
- no CURVE: a pool with CurveZMQ is reached through libzmq sockets
  (:mod:`rokv.workerset` chooses).

Not thread-safe: one client's lock guards its streams.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterable

from rokv import protocol as p
from rokv.hostport import split_host_port

__all__ = ["Lost", "Stream", "IDLE_SECONDS", "endpoint_address"]

#: A connection idle this long is replaced before use. The worker drops a
#: peer that sends nothing in HEARTBEAT_TIMEOUT_MS after one of its PINGs,
#: sent every HEARTBEAT_IVL_MS: so a connection idle for less than the timeout
#: is alive; this leaves a margin for the round trip.
IDLE_SECONDS = min(1.0, p.HEARTBEAT_TIMEOUT_MS / 1000 * 2 / 3)

# Frame flags (RFC 23): more frames follow; 8-byte size; a command.
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_GREETING_SIZE = 64
_GREETING = (
    b"\xff" + bytes(8) + b"\x7f"  # signature
    + b"\x03\x00"  # version 3.0
    + b"NULL".ljust(20, b"\0")  # mechanism
    + b"\x00"  # as-server: no
    + bytes(31)  # filler
)  # fmt: skip
_READY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
_HELLO = _GREETING + bytes((_COMMAND, len(_READY))) + _READY
_RECV_SIZE = 1 << 16
_TIMEVAL = struct.Struct("@ll")


class Lost(Exception):
    """The connection is gone (closed by the worker, reset, or a peer that
    does not speak ZMTP 3 as a ROUTER); the stream is closed, and the next
    :meth:`Stream.usable` opens a new one."""


def endpoint_address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of a ``tcp://HOST:PORT`` endpoint, or None for anything
    a plain socket does not dial (another transport, a source address, an
    interface name with ``;``, a wildcard port)."""
    if not endpoint.startswith("tcp://") or ";" in endpoint:
        return None
    try:
        return split_host_port(endpoint[len("tcp://") :])
    except ValueError:
        return None


class Stream:
    """One DEALER connection to a worker's direct endpoint.

    Args:
        address: the worker's (host, port); a name is resolved when the
            connection is opened.

    Calls raise :class:`Lost` when the connection breaks; nothing else of
    the network escapes (``OSError`` becomes ``Lost``, or ``False`` from
    :meth:`usable` and :meth:`send`).
    """

    __slots__ = (
        "address",
        "_sock",
        "_connected",
        "_buf",
        "_at",
        "_peer_ready",
        "_parts",
        "_sent_at",
        "_rcvtimeo",
        "_sndtimeo",
        "last_error",
    )

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        #: The TCP connection is up (not merely started).
        self._connected = False
        #: What was read and not yet cut into messages: ``_buf[_at:]``.
        self._buf = b""
        self._at = 0
        #: The peer's greeting and READY were read and accepted.
        self._peer_ready = False
        #: Frames of a multi-frame message being read (rokv replies are one frame).
        self._parts = 0
        self._sent_at = 0.0
        self._rcvtimeo = -1
        self._sndtimeo = -1
        #: Why the last connection failed or was refused (for messages).
        self.last_error: str | None = None

    # ------------------------------------------------------------ connecting

    def usable(self, wait: float = 0.0) -> bool:
        """True when a request can be sent now. Opens a connection when there
        is none, or when it has been idle :data:`IDLE_SECONDS`, and waits up
        to ``wait`` seconds for it and its handshake (a round trip: libzmq
        refuses a message that comes before its own READY went out). False
        when it is refused, fails or is still being made after that; it goes
        on being made, and a later call finds it: so a libzmq socket with
        ZMQ_IMMEDIATE refuses a send."""
        if self._peer_ready:
            if time.monotonic() - self._sent_at < IDLE_SECONDS:
                return True
            self.close()
        deadline = time.monotonic() + max(0.0, wait)
        if self._sock is None and not self._start():
            return False
        if not self._connected and not self._finish(deadline):
            return False
        try:
            while not self._peer_ready:
                self._next(handshake_only=True)
                if not self._peer_ready and not self._read(deadline):
                    return False
        except Lost as exc:
            self.last_error = str(exc)
            return False
        return True

    def _start(self) -> bool:
        host, port = self.address
        try:
            family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self.last_error = str(exc)
            return False
        sock.setblocking(False)
        code = sock.connect_ex(where)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.last_error = os.strerror(code)
            return False
        self._sock = sock
        return True

    def _finish(self, deadline: float) -> bool:
        """Wait until ``deadline`` for the TCP connection, then greet."""
        sock = self._sock
        assert sock is not None
        try:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            if not poller.poll(max(0, int((deadline - time.monotonic()) * 1000 + 0.999))):
                return False
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.close()
                self.last_error = os.strerror(code)
                return False
            sock.setblocking(True)  # timeouts are the kernel's (SO_RCVTIMEO): one system call a read
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_HELLO)
        except (OSError, ValueError):
            self.close()
            return False
        self._connected = True
        self._sent_at = time.monotonic()
        return True

    def fileno(self) -> int:
        """The socket's descriptor, for a poller (-1 when closed)."""
        return self._sock.fileno() if self._sock is not None else -1

    def close(self) -> None:
        """Drop the connection (idempotent); the next :meth:`usable` opens another."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._connected = self._peer_ready = False
        self._buf, self._at = b"", 0
        self._parts = 0
        self._rcvtimeo = self._sndtimeo = -1

    # ------------------------------------------------------------ messages

    def send(self, bodies: Iterable[bytes], deadline: float) -> bool:
        """Send each of ``bodies`` as a one-frame message, waiting until
        ``deadline`` (monotonic) at most for room in the socket's buffer.
        False, with the connection closed, when that fails: a message cut in
        half would break the stream, and an unread worker is no better than
        a dead one."""
        sock = self._sock
        if not self._peer_ready or sock is None:
            return False
        data = b"".join([_frame(body) for body in bodies])
        try:
            try:
                sent = sock.send(data, socket.MSG_DONTWAIT)  # all of it, nearly always
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self._set_timeout(socket.SO_SNDTIMEO, deadline)
                sock.sendall(memoryview(data)[sent:])
        except (OSError, _Expired):
            self.close()
            return False
        self._sent_at = time.monotonic()
        return True

    def recv(self, deadline: float) -> bytes | None:
        """The next message's body, waiting until ``deadline`` (monotonic);
        None when none came in time.

        Raises:
            Lost: the connection broke (the stream is closed).
        """
        if self._at == len(self._buf) and self._peer_ready:
            # Nothing buffered, the common case: a read that brings exactly
            # one short frame is the reply, with no buffering.
            if not self._read(deadline):
                return None
            data = self._buf
            if len(data) >= 2 and len(data) == data[1] + 2 and data[0] == 0:
                self._at = len(data)
                return data[2:]
        while True:
            body = self._next()
            if body is not None:
                return body
            if not self._read(deadline):
                return None

    def _read(self, deadline: float) -> bool:
        """Add what comes until ``deadline`` to the buffer; False when
        nothing came in time.

        Raises:
            Lost: the connection broke (the stream is closed).
        """
        sock = self._sock
        if sock is None:
            raise Lost("not connected")
        try:
            self._set_timeout(socket.SO_RCVTIMEO, deadline)
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, _Expired):
            return False
        except OSError as exc:
            self.close()
            raise Lost(str(exc)) from None
        if not data:
            self.close()
            raise Lost("closed by the worker")
        self._append(data)
        return True

    def take(self) -> list[bytes]:
        """Every whole message that has come, without waiting (after a
        poller said the socket is readable, or to find what is buffered).

        Raises:
            Lost: the connection broke (the stream is closed).
        """
        sock = self._sock
        if sock is None:
            return []
        try:
            data = sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
        except OSError as exc:
            self.close()
            raise Lost(str(exc)) from None
        if data == b"":
            got = self._drain()  # what came before the end still answers
            self.close()
            if got:
                return got
            raise Lost("closed by the worker")
        if data:
            self._append(data)
        return self._drain()

    def _append(self, data: bytes) -> None:
        # Only the unread rest is copied: cutting each message off the front
        # would copy the whole buffer per message.
        rest = len(self._buf) - self._at
        self._buf = self._buf[self._at :] + data if rest else data
        self._at = 0

    def _drain(self) -> list[bytes]:
        got = []
        while (body := self._next()) is not None:
            got.append(body)
        return got

    def _set_timeout(self, option: int, deadline: float) -> None:
        """Set SO_RCVTIMEO/SO_SNDTIMEO to what is left until ``deadline``, in
        whole milliseconds, when that changed (a system call saved per read
        in the common case: each try waits the same).

        Raises:
            _Expired: nothing is left.
        """
        wait_ms = int((deadline - time.monotonic()) * 1000 + 0.999)
        if wait_ms <= 0:
            raise _Expired
        current = self._rcvtimeo if option == socket.SO_RCVTIMEO else self._sndtimeo
        if wait_ms == current:
            return
        assert self._sock is not None
        self._sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(wait_ms // 1000, wait_ms % 1000 * 1000))
        if option == socket.SO_RCVTIMEO:
            self._rcvtimeo = wait_ms
        else:
            self._sndtimeo = wait_ms

    # ------------------------------------------------------------ framing

    def _next(self, handshake_only: bool = False) -> bytes | None:
        """Cut the next message off the buffer (answering PINGs and checking
        the handshake on the way); None when the buffer holds none whole, or
        with ``handshake_only`` once the handshake is done (what follows
        stays buffered).

        Raises:
            Lost: the peer broke the protocol, or refused us (ERROR).
        """
        buf = self._buf
        while True:
            at = self._at
            if not self._peer_ready:
                if len(buf) < at + _GREETING_SIZE:
                    return None
                greeting = buf[at : at + _GREETING_SIZE]
                signed = greeting[0] == 0xFF and greeting[9] == 0x7F and greeting[10] >= 3
                if not signed or greeting[12:32].rstrip(b"\0") != b"NULL":
                    self.close()
                    raise Lost("the peer is not a ZMTP 3 endpoint without security")
            start = at + _GREETING_SIZE if not self._peer_ready else at
            if len(buf) < start + 2:
                return None
            flags = buf[start]
            if flags & _LONG:
                if len(buf) < start + 9:
                    return None
                size, head = int.from_bytes(buf[start + 1 : start + 9], "big"), start + 9
            else:
                size, head = buf[start + 1], start + 2
            end = head + size
            if len(buf) < end:
                return None
            body = buf[head:end]
            self._at = end
            if not self._peer_ready:
                self._handshake(flags, body)
                if handshake_only:
                    return None
                continue
            if flags & _COMMAND:
                self._command(body)
                continue
            if flags & _MORE or self._parts:
                # Not a rokv reply (one frame): skip the whole message, as a
                # reply that does not decode is skipped.
                self._parts = self._parts + 1 if flags & _MORE else 0
                continue
            return body

    def _handshake(self, flags: int, body: bytes) -> None:
        if flags & _COMMAND and body.startswith(b"\x05ERROR"):
            self.close()
            raise Lost(f"refused by the worker: {body[7:].decode('utf-8', 'replace')}")
        if not (flags & _COMMAND and body.startswith(b"\x05READY")):
            self.close()
            raise Lost("the peer sent no READY")
        kind = _property(body[6:], b"Socket-Type")
        if kind not in (b"ROUTER", b"DEALER"):
            self.close()
            raise Lost(f"the peer is a {kind!r} socket, not a ROUTER")
        self._peer_ready = True

    def _command(self, body: bytes) -> None:
        # PING: name, a 2-byte TTL, then up to 16 bytes of context, which the
        # PONG carries back (RFC 37). Other commands are ignored.
        if body.startswith(b"\x04PING") and self._sock is not None:
            pong = b"\x04PONG" + body[7:]
            try:
                self._sock.send(bytes((_COMMAND, len(pong))) + pong, socket.MSG_DONTWAIT)
            except OSError:
                pass  # a full buffer: our next request counts as traffic too


class _Expired(Exception):
    """The deadline passed before a read or write could start."""


def _frame(body: bytes) -> bytes:
    size = len(body)
    if size < 256:
        return bytes((0, size)) + body
    return bytes((_LONG,)) + size.to_bytes(8, "big") + body


def _property(metadata: bytes, name: bytes) -> bytes | None:
    """A READY command's property (RFC 23: name-size, name, 4-byte
    value-size, value, repeated)."""
    at = 0
    while at < len(metadata):
        size = metadata[at]
        key = metadata[at + 1 : at + 1 + size]
        at += 1 + size
        length = int.from_bytes(metadata[at : at + 4], "big")
        value = metadata[at + 4 : at + 4 + length]
        at += 4 + length
        if key.lower() == name.lower():
            return value
    return None
