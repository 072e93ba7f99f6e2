"""Workers' direct endpoints (--direct-bind): the same answers as the broker
path, byte for byte, from the compiled loop and the Python one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from rokv import protocol as p

from support.procs import Stack, scaled, start_worker, wait_for

K = "11111111-2222-4333-8444-555555555555"
HIT = "d13c513a-42f8-4da1-97b1-165f0971b7c4"


@pytest.fixture(scope="module", params=["compiled", "python"])
def direct_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("direct"), pure_python=request.param == "python", direct=True)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def raw(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def exchange(sock: zmq.Socket, frames: list[bytes], wait_ms: float = 2000) -> dict | None:
    sock.send_multipart(frames)
    if not sock.poll(scaled(wait_ms)):
        return None
    return msgpack.unpackb(sock.recv())


#: Requests of every kind: answers, misses, each error of "Order of checks".
BODIES = [
    [msgpack.packb({"v": 1, "id": 1, "op": "get", "key": HIT})],
    [msgpack.packb({"v": 1, "id": 2, "op": "get", "key": HIT.upper()})],
    [msgpack.packb({"v": 1, "id": 3, "op": "get", "key": K})],
    [msgpack.packb({"v": 1, "id": 4, "op": "mget", "keys": [HIT, K, "nope"]})],
    [msgpack.packb({"v": 1, "id": 5, "op": "mget", "keys": [HIT, K]})],
    [msgpack.packb({"v": 2, "id": 6, "op": "get", "key": HIT})],
    [msgpack.packb({"v": 1, "id": 7, "op": "pang"})],
    [msgpack.packb({"v": 1, "id": 2**64 - 1, "op": "get", "key": 7})],
    [b""],
    [b"\xff\xfe garbage"],
    [b"a", b"b", b"c"],
    [msgpack.packb({"v": 1, "id": 1, "op": "ping", "pad": [0] * 10_001})],
    [b"\x91" * 100_000 + b"\xc0"],
]


@pytest.mark.parametrize("frames", BODIES, ids=range(len(BODIES)))
def test_a_direct_endpoint_answers_what_the_broker_path_answers(direct_stack: Stack, frames: list[bytes]) -> None:
    via_broker, via_worker = raw(direct_stack.frontend), raw(direct_stack.raw_endpoint)
    try:
        brokered = exchange(via_broker, frames)
        direct = exchange(via_worker, frames)
    finally:
        via_broker.close()
        via_worker.close()
    assert brokered is not None and direct == brokered


def test_ping_names_the_direct_endpoint_and_a_free_port_was_bound(direct_stack: Stack) -> None:
    assert len(direct_stack.directs) == 2
    for endpoint in direct_stack.directs.values():
        assert re.fullmatch(r"tcp://127\.0\.0\.1:[0-9]+", endpoint)
    sock = raw(direct_stack.raw_endpoint)
    try:
        reply = exchange(sock, [p.encode_request(9, p.OP_PING)])
    finally:
        sock.close()
    assert reply is not None and reply["worker"]["direct"] == direct_stack.raw_endpoint


def test_an_oversized_message_drops_the_direct_connection_and_the_worker_serves_on(direct_stack: Stack) -> None:
    sock = raw(direct_stack.raw_endpoint)
    try:
        assert exchange(sock, [b"x" * (p.DEFAULT_MAX_MESSAGE_SIZE + 1)], wait_ms=500) is None
    finally:
        sock.close()
    sock = raw(direct_stack.raw_endpoint)
    try:
        reply = exchange(sock, [p.encode_request(3, p.OP_GET, HIT)])
    finally:
        sock.close()
    assert reply is not None and reply["id"] == 3 and "value" in reply


def test_the_advertised_endpoint_replaces_a_wildcard_port(tmp_path: Path, direct_stack: Stack) -> None:
    worker = start_worker(
        tmp_path,
        direct_stack.backend,
        "data/example.json",
        "--direct-bind",
        "tcp://127.0.0.1:*",
        "--advertise",
        "tcp://example.test:*",
        name="advertised",
    )
    try:
        line = wait_for(
            lambda: re.search(r"directly on tcp://127.0.0.1:(\d+), advertised as (\S+)", worker.log()),
            15,
            "the direct endpoint",
        )
        assert line.group(2) == f"tcp://example.test:{line.group(1)}"
    finally:
        assert worker.stop() == 0


def test_a_bad_direct_bind_is_a_usage_error(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, "tcp://127.0.0.1:1", "data/example.json", "--direct-bind", "tcp://nohost")
    assert worker.wait(30) == 2
    assert "--direct-bind" in worker.log()
