"""Raw frames straight at the broker's frontend, or at a worker's direct
endpoint: errors or silence, never harm."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from rokv import protocol as p

from support.procs import Stack, scaled

#: Every test on `stack` runs against the compiled loop and the Python one (conftest.py),
#: and straight at a worker's direct endpoint.
BOTH_PATHS = True
DIRECT_PATH = True

K = "11111111-2222-4333-8444-555555555555"


def raw_socket(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def reply_or_none(sock: zmq.Socket, wait_ms: float = 1000) -> dict | None:
    if not sock.poll(scaled(wait_ms)):
        return None
    return msgpack.unpackb(sock.recv())


def assert_still_serving(stack: Stack, example: dict[str, str]) -> None:
    keys = list(example)[:50]
    with stack.client(timeout=2.0, retries=1) as client:
        assert client.get_many(keys) == [example[k] for k in keys]
        assert client.get(keys[0]) == example[keys[0]]


@pytest.mark.parametrize(
    ("frames", "code", "rid"),
    [
        # A null id where the id cannot be read, or where nothing was read (PROTOCOL.md lists these).
        ([b""], p.BAD_REQUEST, None),
        ([b"\xff\xfe garbage \x00"], p.BAD_REQUEST, None),
        ([msgpack.packb({"v": 1, "id": 1, "op": "get", "key": K})[:-3]], p.BAD_REQUEST, None),  # truncated
        ([b"a", b"b", b"c", b"d", b"e"], p.BAD_REQUEST, None),  # many frames
        ([msgpack.packb({"v": 1, "id": 1, "op": "get", "key": K}), b""], p.BAD_REQUEST, None),  # a valid body and more
        ([msgpack.packb([1, 1, "get", K])], p.BAD_REQUEST, None),  # an array, not a map
        ([msgpack.packb({"v": 1, "id": 1, "op": "get", "key": {"nested": [1, 2]}})], p.INVALID_KEY, 1),
        ([msgpack.packb({"v": 1, "id": 1, "op": "mget", "keys": {"a": 1}})], p.BAD_REQUEST, 1),
        ([msgpack.packb({"v": 1, "id": 1, "op": "delete", "key": K})], p.BAD_REQUEST, 1),
        ([msgpack.packb({"v": 1, "id": "x", "op": "get", "key": K})], p.BAD_REQUEST, None),
        ([msgpack.packb({"v": 1, "id": 1, "op": "ping", "pad": [0] * 10_001})], p.BAD_REQUEST, None),
        ([msgpack.packb({"v": 1, "id": 1, "op": "ping", 7: 0})], p.BAD_REQUEST, None),  # a non-string map key
        ([b"\x91" * 100_000 + b"\xc0"], p.BAD_REQUEST, None),  # deep nesting
        ([b"\xdf\xff\xff\xff\xff"], p.BAD_REQUEST, None),  # a map header claiming 4G entries
    ],
    ids=[
        "empty",
        "garbage",
        "truncated",
        "many-frames",
        "body-and-more",
        "array",
        "nested-key",
        "keys-map",
        "unknown-op",
        "string-id",
        "big-ignored-array",
        "int-map-key",
        "deep-nesting",
        "huge-map-header",
    ],
)
def test_malformed_requests_get_an_error_and_the_service_keeps_serving(
    stack: Stack, example: dict[str, str], frames: list[bytes], code: str, rid: int | None
) -> None:
    sock = raw_socket(stack.raw_endpoint)
    try:
        sock.send_multipart(frames)
        reply = reply_or_none(sock, 3000)
    finally:
        sock.close()
    assert reply is not None, "no reply to a malformed request"
    assert reply["error"] == code
    assert reply["id"] == rid
    assert isinstance(reply["message"], str) and reply["message"]
    assert_still_serving(stack, example)


def test_a_10_mb_frame_gets_nothing_and_harms_nothing(stack: Stack, example: dict[str, str]) -> None:
    sock = raw_socket(stack.raw_endpoint)
    try:
        sock.send(b"\x00" * (10 * 1024 * 1024))
        # Over the broker's maximum message size: libzmq drops the connection.
        assert reply_or_none(sock, 1000) is None
    finally:
        sock.close()
    assert_still_serving(stack, example)


def test_garbage_from_many_sockets_at_once_leaves_valid_requests_answered(
    stack: Stack, example: dict[str, str]
) -> None:
    socks = [raw_socket(stack.raw_endpoint) for _ in range(5)]
    try:
        for round_ in range(20):
            for i, sock in enumerate(socks):
                sock.send_multipart([bytes([round_, i]) * 50, b"x"] if i % 2 else [b"\xc1" * (i + 1)])
        assert_still_serving(stack, example)
    finally:
        for sock in socks:
            sock.close()
