"""The wire format: what encodes, what decodes, and what is refused with which code."""

from __future__ import annotations

import msgpack
import pytest

from rokv import protocol as p


def test_requests_round_trip() -> None:
    get = p.decode_request(p.encode_request(7, p.OP_GET, "k"))
    assert (get.request_id, get.op, get.key) == (7, "get", "k")
    mget = p.decode_request(p.encode_request(8, p.OP_MGET, ["a", "b"]))
    assert (mget.request_id, mget.op, mget.keys) == (8, "mget", ["a", "b"])
    ping = p.decode_request(p.encode_request(p.MAX_REQUEST_ID, p.OP_PING))
    assert (ping.request_id, ping.op) == (p.MAX_REQUEST_ID, "ping")


def test_every_request_carries_the_protocol_version() -> None:
    raw = msgpack.unpackb(p.encode_request(1, p.OP_PING))
    assert raw["v"] == p.PROTOCOL_VERSION == 1


def test_replies_round_trip() -> None:
    assert p.decode_reply(p.encode_value(1, "v")) == {"id": 1, "value": "v"}
    assert p.decode_reply(p.encode_values(2, ["a", None])) == {"id": 2, "values": ["a", None]}
    assert p.decode_reply(p.encode_error(3, p.NOT_FOUND, "gone")) == {"id": 3, "error": "not_found", "message": "gone"}
    assert p.decode_reply(p.encode_error(4, p.INVALID_KEY, "bad", index=2))["index"] == 2


def raw(obj: object) -> bytes:
    return msgpack.packb(obj)


@pytest.mark.parametrize(
    ("body", "code", "request_id", "says"),
    [
        (b"", p.BAD_REQUEST, None, "not valid msgpack"),
        (b"\xc1", p.BAD_REQUEST, None, "not valid msgpack"),
        (raw({"v": 1, "id": 1, "op": "get", "key": "k"})[:-2], p.BAD_REQUEST, None, "not valid msgpack"),
        (raw([1, 2, "get"]), p.BAD_REQUEST, None, "must be a msgpack map, not list"),
        (raw("get"), p.BAD_REQUEST, None, "not str"),
        (raw({"v": 1, "op": "get", "key": "k"}), p.BAD_REQUEST, None, "request id"),
        (raw({"v": 1, "id": -1, "op": "ping"}), p.BAD_REQUEST, None, "request id"),
        (raw({"v": 1, "id": True, "op": "ping"}), p.BAD_REQUEST, None, "request id"),
        (raw({"v": 1, "id": "5", "op": "ping"}), p.BAD_REQUEST, None, "request id"),
        (raw({"v": 2, "id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, "version 2 is not supported"),
        (raw({"id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, "version None"),
        (raw({"v": "1", "id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, "not supported"),
        (raw({"v": 1, "id": 5, "op": "put"}), p.BAD_REQUEST, 5, "unknown operation 'put'"),
        (raw({"v": 1, "id": 5}), p.BAD_REQUEST, 5, "unknown operation None"),
        (raw({"v": 1, "id": 5, "op": "get"}), p.BAD_REQUEST, 5, "get needs a 'key'"),
        (raw({"v": 1, "id": 5, "op": "mget", "keys": "abc"}), p.BAD_REQUEST, 5, "as an array, not str"),
        (raw({"v": 1, "id": 5, "op": "mget"}), p.BAD_REQUEST, 5, "as an array, not nothing"),
        # Refused by msgpack's own limits, before any object (or the id) is built.
        (raw({"v": 1, "id": 5, "op": "mget", "keys": ["k"] * (p.MAX_MGET_KEYS + 1)}), p.BAD_REQUEST, None,
         "over the limit"),
        (raw({"v": 1, "id": 5, "op": "mget", "keys": ["k"] * p.MAX_MGET_KEYS, **{str(i): 0 for i in range(40)}}),
         p.BAD_REQUEST, None, "over the limit"),
        (raw({1: 2}), p.BAD_REQUEST, None, "not valid msgpack"),  # non-str map keys refused by msgpack
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,  # not kilobytes of bytes
)
def test_malformed_requests_are_refused_with_a_code(body: bytes, code: str, request_id: int | None, says: str) -> None:
    with pytest.raises(p.ProtocolViolation) as info:
        p.decode_request(body)
    assert info.value.code == code
    assert info.value.request_id == request_id
    assert says in info.value.message


def test_a_reply_that_is_not_a_map_is_a_violation() -> None:
    with pytest.raises(p.ProtocolViolation):
        p.decode_reply(raw([1]))
    with pytest.raises(p.ProtocolViolation):
        p.decode_reply(b"\xc1")
