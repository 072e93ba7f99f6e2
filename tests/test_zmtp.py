"""The blocking direct client's plain TCP transport (rokv.zmtp): the same
replies as a libzmq DEALER from a real worker, the ZMTP details a peer may
throw at it (heartbeats, split and long frames, refusals, garbage), and what
a client does when a worker's connection breaks."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from test_direct import BODIES, HIT, exchange, raw

from rokv import Client, zmtp
from rokv import protocol as p
from rokv.workerset import Workers
from rokv.zmtp import Lost, Stream, endpoint_address

from support.procs import Stack, scaled
from support.strategies import FUZZ

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["compiled", "python"])
def pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Workers of either loop (their direct endpoints differ: the Python
    loop's is libzmq's ROUTER, with its heartbeat)."""
    s = Stack(tmp_path_factory.mktemp("zmtp"), direct=True, pure_python=request.param == "python")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def libzmq_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Workers whose direct endpoint is libzmq's ROUTER (the Python loop's),
    which PINGs its peers and drops one that stays silent."""
    s = Stack(tmp_path_factory.mktemp("zmtp"), direct=True, pure_python=True)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def connected(endpoint: str) -> Stream:
    address = endpoint_address(endpoint)
    assert address is not None
    stream = Stream(address)
    assert stream.usable(scaled(5))
    return stream


def ask(stream: Stream, body: bytes, wait: float = 2.0) -> dict | None:
    assert stream.send([body], time.monotonic() + scaled(wait))
    reply = stream.recv(time.monotonic() + scaled(wait))
    return None if reply is None else msgpack.unpackb(reply)


# ------------------------------------------------------------------ a real worker

ONE_FRAME = [frames[0] for frames in BODIES if len(frames) == 1]


@pytest.mark.parametrize("body", ONE_FRAME, ids=range(len(ONE_FRAME)))
def test_a_stream_gets_what_a_libzmq_dealer_gets(pool: Stack, body: bytes) -> None:
    dealer, stream = raw(pool.raw_endpoint), connected(pool.raw_endpoint)
    try:
        assert ask(stream, body) == exchange(dealer, [body]) is not None
    finally:
        dealer.close()
        stream.close()


def test_many_requests_in_one_write_come_back_whole_and_long_frames_too(pool: Stack, example: dict[str, str]) -> None:
    keys = list(example)
    stream = connected(pool.raw_endpoint)
    try:
        # 20 mgets of 500 keys: replies of ~25 kB, long frames, many per read.
        bodies = [p.encode_request(i, p.OP_MGET, keys[i * 500 : (i + 1) * 500]) for i in range(20)]
        assert stream.send(bodies, time.monotonic() + scaled(5))
        replies = {}
        while len(replies) < len(bodies):
            body = stream.recv(time.monotonic() + scaled(5))
            assert body is not None
            reply = msgpack.unpackb(body)
            replies[reply["id"]] = reply["values"]
        for i in range(20):
            assert replies[i] == [example[k] for k in keys[i * 500 : (i + 1) * 500]]
    finally:
        stream.close()


def test_libzmq_drops_a_silent_stream_so_an_idle_one_is_replaced_before_use(
    libzmq_pool: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = libzmq_pool
    # Why IDLE_SECONDS exists: the worker's heartbeat closes a connection
    # that sends nothing for HEARTBEAT_TIMEOUT_MS after a PING.
    silent = (p.HEARTBEAT_IVL_MS + p.HEARTBEAT_TIMEOUT_MS) / 1000 + 0.5
    monkeypatch.setattr(zmtp, "IDLE_SECONDS", 60.0)
    stream = connected(pool.raw_endpoint)
    try:
        time.sleep(silent)
        assert stream.usable()  # it cannot tell: nothing was read
        with pytest.raises(Lost):
            stream.send([p.encode_request(1, p.OP_PING)], time.monotonic() + 1)
            stream.recv(time.monotonic() + scaled(2))
    finally:
        stream.close()
    monkeypatch.undo()
    stream = connected(pool.raw_endpoint)
    try:
        first = stream._sock
        time.sleep(silent)
        assert stream.usable(scaled(2))
        assert stream._sock is not first  # a new connection, made before the request
        reply = ask(stream, p.encode_request(2, p.OP_GET, HIT))
        assert reply is not None and reply["id"] == 2 and "value" in reply
    finally:
        stream.close()


def test_a_stream_idle_past_any_heartbeat_answers_the_next_call(pool: Stack) -> None:
    stream = connected(pool.raw_endpoint)
    try:
        assert ask(stream, p.encode_request(1, p.OP_PING)) is not None
        time.sleep((p.HEARTBEAT_IVL_MS + p.HEARTBEAT_TIMEOUT_MS) / 1000 + 0.5)
        assert stream.usable(scaled(2))
        reply = ask(stream, p.encode_request(2, p.OP_GET, HIT))
        assert reply is not None and reply["id"] == 2 and "value" in reply
    finally:
        stream.close()


def test_a_stream_answers_the_workers_pings_so_a_long_wait_keeps_it(libzmq_pool: Stack) -> None:
    pool = libzmq_pool
    # Reading for longer than the heartbeat timeout (nothing sent meanwhile):
    # the PONGs keep the connection, and the next request is answered on it.
    stream = connected(pool.raw_endpoint)
    try:
        first = stream.fileno()
        assert stream.recv(time.monotonic() + (p.HEARTBEAT_IVL_MS + p.HEARTBEAT_TIMEOUT_MS) / 1000 + 0.5) is None
        assert stream.send([p.encode_request(3, p.OP_PING)], time.monotonic() + 1)
        reply = stream.recv(time.monotonic() + scaled(2))
        assert reply is not None and msgpack.unpackb(reply)["id"] == 3
        assert stream.fileno() == first
    finally:
        stream.close()


def test_a_refused_or_unreachable_endpoint_is_not_usable_at_once() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]  # bound, not listening: connections are refused
        stream = Stream(("127.0.0.1", port))
        started = time.monotonic()
        assert not stream.usable(scaled(1))
        assert time.monotonic() - started < scaled(1)
        assert not stream.send([b"x"], time.monotonic() + 1)
        stream.close()


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("tcp://127.0.0.1:5555", ("127.0.0.1", 5555)),
        ("tcp://[::1]:5555", ("::1", 5555)),
        ("tcp://worker-3:80", ("worker-3", 80)),
        ("ipc:///tmp/w", None),
        ("tcp://127.0.0.1:*", None),
        ("tcp://eth0;127.0.0.1:5555", None),
    ],
)
def test_only_plain_tcp_endpoints_are_dialled_without_libzmq(endpoint: str, address: tuple | None) -> None:
    assert endpoint_address(endpoint) == address


# ------------------------------------------------------------------ a scripted peer

ROUTER_READY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER"
GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\0") + bytes(32)


def command(body: bytes) -> bytes:
    return bytes((0x04, len(body))) + body


def frame(body: bytes, more: bool = False) -> bytes:
    if len(body) > 255:
        return bytes((0x02 | more,)) + len(body).to_bytes(8, "big") + body
    return bytes((int(more), len(body))) + body


class Peer:
    """A one-connection TCP server playing a worker: it reads the client's
    greeting and READY, then runs ``script(conn)``."""

    def __init__(self, script: Callable[[socket.socket], None], hello: bytes = GREETING + command(ROUTER_READY)):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.heard = b""
        self.error: BaseException | None = None

        def run() -> None:
            try:
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(scaled(10))
                    while len(self.heard) < 64 + 2 + len(b"\x05READY\x0bSocket-Type") + 4 + 6:
                        self.heard += conn.recv(4096)
                    conn.sendall(hello)
                    script(conn)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.thread.join(scaled(10))
        self.listener.close()
        assert self.error is None, self.error


def read_until(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "the client closed"
        data += chunk
    return data


def talk(peer: Peer, *expected: bytes) -> None:
    """Connect a stream to ``peer`` and check that the next messages it
    reads are ``expected``."""
    stream = Stream(peer.address)
    try:
        assert stream.usable(scaled(5))
        for body in expected:
            assert stream.recv(time.monotonic() + scaled(5)) == body
        peer.close()
    finally:
        stream.close()


def test_it_greets_as_a_null_dealer_and_answers_a_ping_with_its_context() -> None:
    pongs: list[bytes] = []

    def script(conn: socket.socket) -> None:
        conn.sendall(command(b"\x04PING\x00\x0aCTX") + frame(b"reply"))
        pongs.append(read_until(conn, 2 + 5 + 3))

    peer = Peer(script)
    talk(peer, b"reply")
    assert peer.heard[:10] == b"\xff" + bytes(8) + b"\x7f" and peer.heard[12:16] == b"NULL"
    assert b"Socket-Type\x00\x00\x00\x06DEALER" in peer.heard
    assert pongs == [command(b"\x04PONGCTX")]


def test_frames_split_byte_by_byte_long_frames_and_multi_frame_messages() -> None:
    big = b"v" * 70_000

    def script(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A three-frame message (not a rokv reply: skipped), then a long
        # frame, then a short one, dribbled a byte at a time at first.
        data = frame(b"a", more=True) + frame(b"b", more=True) + frame(b"c") + frame(big) + frame(b"short")
        for i in range(40):
            conn.sendall(data[i : i + 1])
            time.sleep(0.001)
        conn.sendall(data[40:])
        time.sleep(scaled(0.5))

    talk(Peer(script), big, b"short")


def test_a_reply_whose_first_byte_comes_alone_is_waited_for() -> None:
    def script(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(scaled(0.2))  # the client is waiting in recv by now
        conn.sendall(b"\x00")
        time.sleep(scaled(0.2))
        conn.sendall(b"\x05hello")
        time.sleep(scaled(0.5))

    talk(Peer(script), b"hello")


@pytest.mark.parametrize(
    ("hello", "says"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" + bytes(64), "not a ZMTP 3 endpoint"),
        (GREETING.replace(b"NULL", b"PLAI", 1), "not a ZMTP 3 endpoint"),
        (GREETING[:10] + b"\x02" + GREETING[11:] + command(ROUTER_READY), "not a ZMTP 3 endpoint"),
        (GREETING + command(b"\x05ERROR\x0bnot allowed"), "refused by the worker: not allowed"),
        (GREETING + command(ROUTER_READY.replace(b"ROUTER", b"PUBSUB")), "not a ROUTER"),
        (GREETING + frame(b"no ready"), "sent no READY"),
    ],
    ids=["http", "plain", "zmtp2", "error", "pub", "no-ready"],
)
def test_a_peer_that_is_no_null_router_is_refused_with_the_reason(hello: bytes, says: str) -> None:
    peer = Peer(lambda conn: time.sleep(scaled(0.5)), hello=hello)
    stream = Stream(peer.address)
    try:
        assert not stream.usable(scaled(5))
        assert stream.fileno() == -1  # closed, to be opened afresh later
        assert stream.last_error is not None and says in stream.last_error
        peer.close()
    finally:
        stream.close()


def test_a_peer_that_closes_mid_reply_is_lost_not_waited_for() -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(b"\x00\x10half")

    peer = Peer(script)
    stream = Stream(peer.address)
    try:
        assert stream.usable(scaled(5))
        started = time.monotonic()
        with pytest.raises(Lost, match="closed"):
            stream.recv(time.monotonic() + scaled(10))
        assert time.monotonic() - started < scaled(5)
        assert stream.fileno() == -1
        peer.close()
    finally:
        stream.close()


# ------------------------------------------------------------------ the client


def test_a_killed_workers_call_moves_on_at_once_not_after_the_timeout(tmp_path: Path, example: dict[str, str]) -> None:
    stack = Stack(tmp_path, direct=True).wait_ready()
    try:
        keys = list(example)[:400]
        with Client(stack.frontend, direct=True, timeout=scaled(3), retries=1) as client:
            for key in keys[:100]:
                assert client.get(key) == example[key]
            assert client._workers is not None
            assert all(link.stream is not None for link in client._workers.links)
            stack.workers[0].signal(signal.SIGKILL)
            stack.workers[0].wait(scaled(10))
            slowest = 0.0
            for key in keys[100:]:
                started = time.monotonic()
                assert client.get(key) == example[key]
                slowest = max(slowest, time.monotonic() - started)
        # A broken connection (reset) ends its try: well under one try's wait.
        assert slowest < scaled(3) / 2, slowest
    finally:
        stack.stop()


def test_the_blocking_client_dials_streams_and_the_asyncio_one_libzmq_sockets(pool: Stack) -> None:
    with pool.client() as client:
        client.get(HIT)
        assert client._workers is not None and len(client._workers.links) == 2
        assert all(link.stream is not None and link.sock is None for link in client._workers.links)
    workers = Workers(zmq.Context.instance(), [pool.frontend], None)  # AsyncClient's (streams=False)
    try:
        workers.wait_first(scaled(5))
        assert len(workers.links) == 2
        assert all(link.sock is not None and link.stream is None for link in workers.links)
    finally:
        workers.close()


# ------------------------------------------------------------------ any bytes

HANDSHAKE = GREETING + command(ROUTER_READY)


def cut(stream: Stream, data: bytes, sizes: list[int]) -> list[bytes]:
    """Feed ``data`` to a stream (no socket: the parser alone) in pieces of
    ``sizes``; the messages it cut out."""
    got: list[bytes] = []
    at = 0
    for size in [*sizes, len(data)]:
        piece, at = data[at : at + size], at + size
        if piece:
            stream._append(piece)
        while (body := stream._next()) is not None:
            got.append(body)
    return got


@FUZZ
@given(
    bodies=st.lists(st.binary(max_size=600), max_size=8),
    pings=st.lists(st.binary(max_size=16), max_size=3),
    sizes=st.lists(st.integers(1, 700), max_size=20),
)
def test_frames_come_out_whole_however_the_bytes_are_cut(
    bodies: list[bytes], pings: list[bytes], sizes: list[int]
) -> None:
    data = HANDSHAKE + b"".join(command(b"\x04PING\x00\x01" + ctx) for ctx in pings)
    data += b"".join(frame(body) for body in bodies)
    assert cut(Stream(("127.0.0.1", 1)), data, sizes) == bodies


@FUZZ
@given(noise=st.binary(max_size=2000), sizes=st.lists(st.integers(1, 300), max_size=10), ready=st.booleans())
def test_any_bytes_give_messages_or_lost_never_another_error(noise: bytes, sizes: list[int], ready: bool) -> None:
    stream = Stream(("127.0.0.1", 1))
    try:
        cut(stream, (HANDSHAKE if ready else b"") + noise, sizes)
    except Lost:
        pass
