"""The direct endpoint served by the compiled loop itself (ZMTP 3 as a ROUTER,
no libzmq socket, rokv.worker.direct): libzmq DEALERs and client/zmtp.py's
Stream get what they got from libzmq's ROUTER, hostile peers cost only their
own connection, and memory stays bounded."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from test_hostile import rss_mb

from rokv import Client
from rokv import protocol as p
from rokv.zmtp import Stream, endpoint_address

from support.procs import DIRECT_BIND, EXAMPLE, Stack, free_port, scaled, seen_workers, wait_for

pytestmark = pytest.mark.timeout(120)

K = "11111111-2222-4333-8444-555555555555"
HIT = "d13c513a-42f8-4da1-97b1-165f0971b7c4"

GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + bytes(31)
READY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"


@pytest.fixture(scope="module")
def native_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("native"), workers=1, direct=True)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) < 256:
        return bytes((flags, len(body))) + body
    return bytes((flags | 2,)) + len(body).to_bytes(8, "big") + body


def dial(endpoint: str) -> socket.socket:
    address = endpoint_address(endpoint)
    assert address is not None
    sock = socket.create_connection(address, timeout=scaled(5))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            raise ConnectionError("closed")
        data += got
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    flags, size = read_exactly(sock, 2)
    if flags & 2:
        size = int.from_bytes(bytes((size,)) + read_exactly(sock, 7), "big")
    return flags, read_exactly(sock, size)


def handshake(sock: socket.socket) -> bytes:
    """Greet as a DEALER; the worker's READY body."""
    sock.sendall(GREETING + frame(READY, command=True))
    greeting = read_exactly(sock, 64)
    assert greeting[0] == 0xFF and greeting[9] == 0x7F and greeting[10] == 3
    assert greeting[12:32].rstrip(b"\0") == b"NULL"
    flags, ready = read_frame(sock)
    assert flags == 4
    return ready


def closed_by_worker(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the worker closes the connection (everything it sent first is read)."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def get_body(request_id: int, key: str = HIT) -> bytes:
    return msgpack.packb({"v": 1, "id": request_id, "op": "get", "key": key})


def still_answers(stack: Stack, example: dict[str, str]) -> None:
    with Client(stack.frontend, direct=True, timeout=scaled(3.0)) as client:
        keys = list(example)[:50]
        assert client.get_many(keys) == [example[k] for k in keys]
        assert client._workers is not None and client._workers.links[0].replies >= 1


def test_the_compiled_loop_serves_the_endpoint_itself(native_stack: Stack) -> None:
    (worker,) = native_stack.workers
    assert "served by the compiled loop, without libzmq" in worker.log()
    sock = dial(native_stack.raw_endpoint)
    try:
        ready = handshake(sock)
        # libzmq's ROUTER says the same: its type, and an empty Identity.
        assert ready == b"\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER\x08Identity\x00\x00\x00\x00"
        sock.sendall(frame(get_body(7)))
        flags, body = read_frame(sock)
        assert flags == 0 and msgpack.unpackb(body)["id"] == 7
    finally:
        sock.close()


def test_a_libzmq_dealer_with_heartbeats_stays_connected_while_idle(native_stack: Stack, example: dict) -> None:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS  # what rokv.AsyncClient sets
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
        sock.immediate = True
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(native_stack.raw_endpoint)
        wait_for(lambda: sock.poll(10, zmq.POLLOUT), 5, "the DEALER's connection")
        sock.send(get_body(1))
        assert sock.poll(scaled(2000))
        assert msgpack.unpackb(sock.recv()) == {"id": 1, "value": example[HIT]}
        time.sleep(3.0)  # twice the heartbeat timeout: PINGs must have been answered
        sock.send(get_body(2))
        assert sock.poll(scaled(2000))
        assert msgpack.unpackb(sock.recv()) == {"id": 2, "value": example[HIT]}
        events = []
        while monitor.poll(0):
            events.append(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
        assert events == [zmq.EVENT_CONNECTED], events  # never dropped, never reconnected
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
    finally:
        ctx.destroy(linger=0)


#: One-frame requests of every kind the brokered path answers.
BODIES = [
    get_body(1),
    get_body(2, K),  # not found
    get_body(3, HIT.upper()),  # not canonical: Python answers
    get_body(4, "nope"),  # invalid key
    msgpack.packb({"v": 1, "id": 5, "op": "mget", "keys": [HIT, K, "nope"]}),
    msgpack.packb({"v": 1, "id": 6, "op": "mget", "keys": [HIT, K]}),
    msgpack.packb({"v": 1, "id": 7, "op": "mget", "keys": [HIT] * 300}),  # a long frame back
    msgpack.packb({"v": 2, "id": 8, "op": "get", "key": HIT}),
    b"\xff\xfe not msgpack",
    b"",
    msgpack.packb({"v": 1, "id": 9, "op": "get", "key": HIT})[:-3],
    b"\x91" * 100_000 + b"\xc0",
]


def test_a_zmtp_stream_gets_the_brokered_paths_bytes(native_stack: Stack) -> None:
    address = endpoint_address(native_stack.raw_endpoint)
    assert address is not None
    stream = Stream(address)
    broker = zmq.Context.instance().socket(zmq.DEALER)
    broker.linger = 0
    broker.connect(native_stack.frontend)
    try:
        assert stream.usable(wait=scaled(5))
        for body in BODIES:
            broker.send(body)
            assert broker.poll(scaled(3000)), body[:40]
            brokered = broker.recv()
            assert stream.send([body], time.monotonic() + scaled(3))
            direct = stream.recv(time.monotonic() + scaled(3))
            assert direct == brokered, body[:40]
        # ping: the same worker's answer, its uptime aside
        body = msgpack.packb({"v": 1, "id": 10, "op": "ping"})
        broker.send(body)
        assert broker.poll(scaled(3000))
        brokered_ping = msgpack.unpackb(broker.recv())
        assert stream.send([body], time.monotonic() + scaled(3))
        direct_ping = msgpack.unpackb(stream.recv(time.monotonic() + scaled(3)))
        brokered_ping["worker"].pop("uptime"), direct_ping["worker"].pop("uptime")
        assert direct_ping == brokered_ping
        # several frames: refused alike
        broker.send_multipart([b"a", b"b", b"c"])
        assert broker.poll(scaled(3000))
        brokered = broker.recv()
        assert stream._sock is not None
        stream._sock.sendall(frame(b"a", more=True) + frame(b"b", more=True) + frame(b"c"))
        assert stream.recv(time.monotonic() + scaled(3)) == brokered
        assert msgpack.unpackb(brokered)["error"] == p.BAD_REQUEST
        # many requests in one write, answered in order
        assert stream.send([get_body(100 + i) for i in range(200)], time.monotonic() + scaled(3))
        ids = [msgpack.unpackb(stream.recv(time.monotonic() + scaled(3)))["id"] for _ in range(200)]
        assert ids == list(range(100, 300))
    finally:
        stream.close()
        broker.close(0)


def test_a_request_cut_in_pieces_is_answered(native_stack: Stack, example: dict) -> None:
    sock = dial(native_stack.raw_endpoint)
    try:
        data = GREETING + frame(READY, command=True) + frame(get_body(1)) + frame(b"x" * 300, more=True) + frame(b"y")
        for i in range(len(data)):  # a byte at a time: every partial header and body
            sock.send(data[i : i + 1])
        read_exactly(sock, 64)
        read_frame(sock)  # READY
        assert msgpack.unpackb(read_frame(sock)[1]) == {"id": 1, "value": example[HIT]}
        assert msgpack.unpackb(read_frame(sock)[1])["error"] == p.BAD_REQUEST
    finally:
        sock.close()


HOSTILE = {
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "plain_mechanism": GREETING[:12] + b"PLAIN".ljust(20, b"\0") + GREETING[32:],
    "zmtp_2": GREETING[:10] + b"\x01\x00" + GREETING[12:],
    "no_ready": GREETING + frame(get_body(1)),
    "pub_socket": GREETING + frame(b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"PUB", command=True),
    "broken_ready": GREETING + frame(b"\x05READY\x0bSocket-Type\xff\xff\xff\xffDEALER", command=True),
    "over_the_size_limit": GREETING
    + frame(READY, command=True)
    + bytes((2,))
    + (p.DEFAULT_MAX_MESSAGE_SIZE + 1).to_bytes(8, "big"),
    "size_of_2_to_64": GREETING + frame(READY, command=True) + bytes((2,)) + b"\xff" * 8,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_peer_loses_its_connection_only(native_stack: Stack, example: dict, kind: str) -> None:
    bystander = dial(native_stack.raw_endpoint)
    sock = dial(native_stack.raw_endpoint)
    try:
        handshake(bystander)
        sock.sendall(HOSTILE[kind])
        assert closed_by_worker(sock), kind
        bystander.sendall(frame(get_body(1)))
        assert msgpack.unpackb(read_frame(bystander)[1]) == {"id": 1, "value": example[HIT]}
        still_answers(native_stack, example)
    finally:
        sock.close()
        bystander.close()


@pytest.mark.parametrize("cut", ["truncated_greeting", "mid_frame", "mid_long_frame"])
def test_a_connection_closed_midway_costs_nothing(native_stack: Stack, example: dict, cut: str) -> None:
    (worker,) = native_stack.workers
    fds = len(os.listdir(f"/proc/{worker.pid}/fd"))
    for _ in range(20):
        sock = dial(native_stack.raw_endpoint)
        if cut == "truncated_greeting":
            sock.sendall(GREETING[:30])
        elif cut == "mid_frame":
            sock.sendall(GREETING + frame(READY, command=True) + frame(get_body(1))[:10])
        else:
            sock.sendall(GREETING + frame(READY, command=True) + frame(b"z" * 100_000)[:50_000])
        sock.close()
    still_answers(native_stack, example)
    wait_for(lambda: len(os.listdir(f"/proc/{worker.pid}/fd")) <= fds, 5, "the worker to close them all")


def test_a_client_that_never_reads_costs_bounded_memory_and_no_ones_answers(native_stack: Stack, example: dict) -> None:
    (worker,) = native_stack.workers
    still_answers(native_stack, example)
    before = rss_mb(worker.pid)
    sock = dial(native_stack.raw_endpoint)
    done = threading.Event()
    sent = [0]

    def flood() -> None:
        burst = frame(p.encode_request(1, p.OP_MGET, list(example)[:100])) * 100
        sock.setblocking(False)
        deadline = time.monotonic() + scaled(20)
        at = 0  # a send may take part of the burst: the rest goes first, or the stream breaks
        while not done.is_set() and time.monotonic() < deadline and sent[0] < 1 << 30:
            try:
                n = sock.send(burst[at:])
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sent[0] += n
            at = (at + n) % len(burst)

    try:
        handshake(sock)
        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            for _ in range(5):
                still_answers(native_stack, example)
                time.sleep(0.3)
            # The worker stops reading this client: the kernel's buffers fill, the sender is held up.
            stalled_at = sent[0]
            time.sleep(1.5)
            assert sent[0] == stalled_at, (stalled_at, sent[0])
            still_answers(native_stack, example)
        finally:
            done.set()
            flooder.join(scaled(25))
        growth = rss_mb(worker.pid) - before
        assert growth < 32, growth
        assert sent[0] < 64 << 20, sent[0]  # kernel buffers' worth, not everything it would send
    finally:
        sock.close()
    still_answers(native_stack, example)


def test_five_hundred_connections_at_once_are_all_answered(native_stack: Stack, example: dict) -> None:
    address = endpoint_address(native_stack.raw_endpoint)
    assert address is not None
    streams = [Stream(address) for _ in range(500)]
    try:
        deadline = time.monotonic() + scaled(20)
        pending = list(streams)
        while pending and time.monotonic() < deadline:
            pending = [s for s in pending if not s.usable(wait=0.01)]
        assert not pending, f"{len(pending)} not connected"
        keys = list(example)
        for i, stream in enumerate(streams):
            assert stream.send([get_body(i, keys[i])], time.monotonic() + scaled(5))
        for i, stream in enumerate(streams):
            reply = stream.recv(time.monotonic() + scaled(10))
            assert reply is not None and msgpack.unpackb(reply) == {"id": i, "value": example[keys[i]]}
    finally:
        for stream in streams:
            stream.close()


def test_the_libzmq_router_stays_where_asked_and_for_ipv6_the_compiled_one_binds(tmp_path: Path) -> None:
    from support.procs import free_frontend, start_broker, start_worker

    frontend = free_frontend()
    backend = f"tcp://127.0.0.1:{free_port()}"
    broker = start_broker(tmp_path, frontend, backend)
    asked = start_worker(tmp_path, backend, EXAMPLE, *DIRECT_BIND, name="asked", env={"ROKV_DIRECT_LIBZMQ": "1"})
    v6 = start_worker(tmp_path, backend, EXAMPLE, "--direct-bind", "tcp://[::1]:*", name="v6")
    try:
        seen_workers(frontend, 2)
        wait_for(lambda: "serving clients directly" in asked.log(), 10, "the libzmq endpoint")
        assert "without libzmq" not in asked.log()
        wait_for(lambda: "without libzmq" in v6.log(), 10, "the IPv6 compiled endpoint")
        line = next(x for x in v6.log().splitlines() if "serving clients directly on" in x)
        endpoint = line.split("serving clients directly on ")[1].split(",")[0]
        assert endpoint.startswith("tcp://[::1]:")
        address = endpoint_address(endpoint)
        assert address is not None
        stream = Stream(address)
        try:
            assert stream.usable(wait=scaled(5))
            assert stream.send([get_body(1)], time.monotonic() + scaled(3))
            reply = stream.recv(time.monotonic() + scaled(3))
            assert reply is not None and msgpack.unpackb(reply)["id"] == 1
        finally:
            stream.close()
    finally:
        for proc in (asked, v6, broker):
            proc.stop()


@contextmanager
def in_process_endpoint(
    max_message_size: int, max_connections: int, on_event: Callable[..., None], backlog: int
) -> Iterator[tuple[Any, socket.socket, dict[str, str]]]:
    """A compiled Endpoint on a free loopback port, served by a thread of
    this process (serve_many with no broker socket): (endpoint, listening
    socket, the dataset). Stopped and closed at the end."""
    import json

    from rokv.worker import native
    from rokv.worker.handler import Handler

    module = native.load()
    if module is None:
        pytest.skip(f"no compiled loop: {native.reason()}")
    data = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    handler = Handler(data, worker_id="t", dataset="t", extra_info={})
    lookup = module.dict_lookup(data)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    listener.setblocking(False)
    endpoint = module.Endpoint(listener.fileno(), max_message_size, max_connections, on_event)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            module.serve_many((), lookup, handler.handle, 64, 20, endpoint)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield endpoint, listener, data
    finally:
        stop.set()
        thread.join(scaled(5))
        endpoint.close(0)
        listener.close()


def test_connections_over_the_cap_are_closed_at_once_and_reported() -> None:
    """In-process: an Endpoint allowed 2 connections closes the third as it
    comes, and reports each connection (never a request) to its callback."""
    events: list[tuple[str, str, str]] = []
    socks: list[socket.socket] = []
    with in_process_endpoint(1 << 20, 2, lambda *event: events.append(event), 16) as (endpoint, listener, data):
        try:
            endpoint_name = "tcp://{}:{}".format(*listener.getsockname())
            for _ in range(2):
                socks.append(dial(endpoint_name))
                handshake(socks[-1])
            extra = dial(endpoint_name)
            socks.append(extra)
            assert closed_by_worker(extra)
            for i, sock in enumerate(socks[:2]):
                for n in range(3):
                    sock.sendall(frame(get_body(10 * i + n)))
                    assert msgpack.unpackb(read_frame(sock)[1]) == {"id": 10 * i + n, "value": data[HIT]}
            kinds = [kind for kind, _, _ in events]
            assert kinds == ["accepted", "accepted", "refused"], events
            assert endpoint.counts() == {"connections": 2, "accepted": 2, "closed": 0, "refused": 1}
            socks[0].close()
            wait_for(lambda: endpoint.counts()["closed"] == 1, 5, "the close to be seen")
            assert events[-1][0] == "closed" and events[-1][2] == "closed by the peer"
        finally:
            for sock in socks:
                sock.close()
    assert endpoint.counts()["connections"] == 0


def test_mutated_streams_close_their_connections_and_break_nothing() -> None:
    """In-process, seeded: valid streams with bytes flipped, cut, inserted;
    the endpoint survives every one and then answers a clean client."""
    import random

    valid = (
        GREETING
        + frame(READY, command=True)
        + frame(get_body(1))
        + frame(b"\x04PING\x00\x10ctx", command=True)
        + frame(b"a", more=True)
        + frame(b"b")
        + frame(get_body(2) * 20)
    )
    rng = random.Random(20261208)
    with in_process_endpoint(4096, 4096, lambda *event: None, 256) as (endpoint, listener, data):
        for _ in range(10):
            socks = []
            for _ in range(50):
                mutated = bytearray(valid)
                for _ in range(rng.randint(1, 6)):
                    at = rng.randrange(len(mutated)) if mutated else 0
                    roll = rng.random()
                    if roll < 0.5 and mutated:
                        mutated[at] = rng.randrange(256)
                    elif roll < 0.7:
                        del mutated[at : at + rng.randint(1, 20)]
                    elif roll < 0.9:
                        mutated[at:at] = rng.randbytes(rng.randint(1, 20))
                    else:
                        del mutated[at:]
                sock = socket.create_connection(listener.getsockname())
                sock.sendall(bytes(mutated))
                socks.append(sock)
            for sock in socks:
                sock.close()
        clean = dial("tcp://{}:{}".format(*listener.getsockname()))
        try:
            handshake(clean)
            clean.sendall(frame(get_body(9)))
            assert msgpack.unpackb(read_frame(clean)[1]) == {"id": 9, "value": data[HIT]}
        finally:
            clean.close()
        wait_for(lambda: endpoint.counts()["connections"] == 0, 5, "every connection closed")
        assert endpoint.counts()["accepted"] == 501


def test_on_stop_what_arrived_is_answered_then_connections_close(tmp_path: Path) -> None:
    import signal

    stack = Stack(tmp_path, workers=1, direct=True)
    try:
        stack.wait_ready()
        sock = dial(stack.raw_endpoint)
        try:
            handshake(sock)
            sock.sendall(b"".join(frame(get_body(i)) for i in range(300)))
            stack.workers[0].signal(signal.SIGTERM)
            ids = [msgpack.unpackb(read_frame(sock)[1])["id"] for _ in range(300)]
            assert ids == list(range(300))
            assert closed_by_worker(sock)
        finally:
            sock.close()
        assert stack.workers[0].wait(10) == 0
    finally:
        stack.stop()


@pytest.mark.parametrize(
    ("bind", "native_served", "bound"),
    [
        ("tcp://127.0.0.1:*", True, "tcp://127.0.0.1:"),
        ("tcp://*:*", True, "tcp://0.0.0.0:"),
        ("tcp://[::1]:*", True, "tcp://[::1]:"),
        ("tcp://lo:*", False, "tcp://127.0.0.1:"),  # an interface's name: libzmq binds it
        ("ipc://{tmp}/direct.ipc", False, "ipc://"),
    ],
)
def test_who_serves_which_endpoint(tmp_path: Path, bind: str, native_served: bool, bound: str) -> None:
    import logging

    from rokv.server.monitor import ConnectionWatcher
    from rokv.worker import native
    from rokv.worker.direct import DirectEndpoint

    module = native.load()
    if module is None:
        pytest.skip(f"no compiled loop: {native.reason()}")
    ctx = zmq.Context()
    watcher = ConnectionWatcher(logging.getLogger("test"))
    try:
        for size in (-1, 1 << 20, 1 << 50):  # ZMQ_MAXMSGSIZE's range: -1 is no limit
            endpoint = DirectEndpoint(
                ctx, watcher, bind.format(tmp=tmp_path), None, max_message_size=size, compiled=module
            )
            try:
                assert (endpoint.native is not None) == native_served
                assert (endpoint.sock is None) == native_served
                assert endpoint.bound.startswith(bound)
                assert endpoint.served is (endpoint.native if native_served else endpoint.sock)
            finally:
                endpoint.close()
    finally:
        watcher.stop()
        ctx.term()
