"""The wire format: what encodes, what decodes, and what is refused with which code."""

from __future__ import annotations

import re

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


#: Every way decode_request refuses a body, in the order it checks: what
#: PROTOCOL.md "Order of checks" promises, and which refusals carry a null id.
MALFORMED = [
    # msgpack and its limits: refused while unpacking, so the id is never read.
    (b"", p.BAD_REQUEST, None, "request is not valid msgpack: it ends too early"),
    (b"\xc1", p.BAD_REQUEST, None, "request is not valid msgpack"),
    (raw({"v": 1, "id": 1, "op": "get", "key": "k"})[:-2], p.BAD_REQUEST, None, "it ends too early"),
    (raw({"v": 1, "id": 1, "op": "ping"}) + b"\x00", p.BAD_REQUEST, None, "more bytes follow it"),
    (b"\x84\xa1v\x01\xa2id\x01\xa2op\xa4ping\xa1x\xa2\xff\xfe", p.BAD_REQUEST, None, "not valid UTF-8"),
    (
        raw({"v": 1, "id": 5, "op": "mget", "keys": ["k"] * (p.MAX_MGET_KEYS + 1)}),
        p.BAD_REQUEST,
        None,
        "an array of over 10,000 items",
    ),
    # Even in a field the server would ignore.
    (
        raw({"v": 1, "id": 5, "op": "ping", "pad": [0] * (p.MAX_MGET_KEYS + 1)}),
        p.BAD_REQUEST,
        None,
        "an array of over 10,000 items",
    ),
    (
        raw({"v": 1, "id": 5, "op": "ping", **{str(i): 0 for i in range(30)}}),
        p.BAD_REQUEST,
        None,
        "a map of over 32 entries",
    ),
    (
        raw({"v": 1, "id": 5, "op": "ping", "pad": {str(i): 0 for i in range(33)}}),
        p.BAD_REQUEST,
        None,
        "a map of over 32 entries",
    ),
    (raw({1: 2}), p.BAD_REQUEST, None, "a map key that is neither a string nor binary"),
    (raw({"v": 1, "id": 5, "op": "ping", "pad": {None: 0}}), p.BAD_REQUEST, None, "neither a string nor binary"),
    (b"\x91" * (p.MAX_NESTING + 1) + b"\xc0", p.BAD_REQUEST, None, "over 1,024 levels deep"),
    # A map.
    (raw([1, 2, "get"]), p.BAD_REQUEST, None, "request must be a map, not an array of 3 items"),
    (raw("get"), p.BAD_REQUEST, None, 'request must be a map, not a string "get"'),
    (raw(None), p.BAD_REQUEST, None, "request must be a map, not nil"),
    # id.
    (raw({"v": 1, "op": "get", "key": "k"}), p.BAD_REQUEST, None, "request id is missing"),
    (raw({b"id": 5, "v": 1, "op": "ping"}), p.BAD_REQUEST, None, "request id is missing"),  # a binary key is no field
    (raw({"v": 1, "id": -1, "op": "ping"}), p.BAD_REQUEST, None, "not an integer -1"),
    (raw({"v": 1, "id": True, "op": "ping"}), p.BAD_REQUEST, None, "not a boolean true"),
    (raw({"v": 1, "id": "5", "op": "ping"}), p.BAD_REQUEST, None, 'not a string "5"'),
    (raw({"v": 1, "id": 5.0, "op": "ping"}), p.BAD_REQUEST, None, "not a float 5.0"),
    (
        raw({"v": 2, "id": None, "op": "ping"}),
        p.BAD_REQUEST,
        None,
        "request id must be an unsigned 64-bit integer, not nil",
    ),
    # v, with the id echoed from here on.
    (
        raw({"v": 2, "id": 5, "op": "pang"}),
        p.UNSUPPORTED_VERSION,
        5,
        "protocol version 2 is not supported; this server speaks version 1",
    ),
    (raw({"id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, "protocol version is missing"),
    (raw({"v": "1", "id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, 'must be an integer, not a string "1"'),
    (raw({"v": True, "id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, "not a boolean true"),
    (raw({"v": 1.0, "id": 5, "op": "ping"}), p.UNSUPPORTED_VERSION, 5, "not a float 1.0"),
    # op.
    (raw({"v": 1, "id": 5, "op": "put"}), p.BAD_REQUEST, 5, 'unknown operation "put"; expected one of get, mget, ping'),
    (raw({"v": 1, "id": 5, "op": "PING"}), p.BAD_REQUEST, 5, 'unknown operation "PING"'),
    (raw({"v": 1, "id": 5}), p.BAD_REQUEST, 5, "operation is missing"),
    (raw({"v": 1, "id": 5, "op": b"ping"}), p.BAD_REQUEST, 5, "operation must be a string, not binary data of 4 bytes"),
    (raw({"v": 1, "id": 5, "op": "x" * 100}), p.BAD_REQUEST, 5, 'unknown operation "' + "x" * 32 + '..."'),
    # The operation's fields.
    (raw({"v": 1, "id": 5, "op": "get"}), p.BAD_REQUEST, 5, 'get needs a "key" field'),
    (
        raw({"v": 1, "id": 5, "op": "mget", "keys": "abc"}),
        p.BAD_REQUEST,
        5,
        'mget needs "keys" as an array, not a string "abc"',
    ),
    (raw({"v": 1, "id": 5, "op": "mget", "keys": {"a": 1}}), p.BAD_REQUEST, 5, "not a map of 1 entry"),
    (raw({"v": 1, "id": 5, "op": "mget"}), p.BAD_REQUEST, 5, 'mget needs a "keys" field'),
]


@pytest.mark.parametrize(
    ("body", "code", "request_id", "says"),
    MALFORMED,
    ids=lambda v: v if isinstance(v, str) and len(v) < 60 else None,  # not kilobytes of bytes
)
def test_malformed_requests_are_refused_with_a_code(body: bytes, code: str, request_id: int | None, says: str) -> None:
    with pytest.raises(p.ProtocolViolation) as info:
        p.decode_request(body)
    assert info.value.code == code
    assert info.value.request_id == request_id
    assert says in info.value.message


# Python's spellings of values and types, which a client author in another
# language should never have to read.
PYTHON_WORDS = re.compile(r"\b(None|NoneType|True|False|str|list|dict|tuple|int|ExtType)\b|b'|'")


@pytest.mark.parametrize("body", [m[0] for m in MALFORMED], ids=[m[3][:40] for m in MALFORMED])
def test_refusals_speak_msgpack_not_python(body: bytes) -> None:
    with pytest.raises(p.ProtocolViolation) as info:
        p.decode_request(body)
    assert not PYTHON_WORDS.search(info.value.message), info.value.message


def test_values_are_described_with_msgpack_type_names() -> None:
    assert [p.kind(v) for v in (None, True, 3, 1.5, "s", b"b", [1], {}, msgpack.ExtType(1, b""))] == [
        "nil",
        "boolean",
        "integer",
        "float",
        "string",
        "binary",
        "array",
        "map",
        "extension",
    ]
    values = (None, False, -1, 2.5, "pang", b"ab", [1, 2], {"a": 1}, msgpack.ExtType(1, b""))
    assert [p.describe(v) for v in values] == [
        "nil",
        "a boolean false",
        "an integer -1",
        "a float 2.5",
        'a string "pang"',
        "binary data of 2 bytes",
        "an array of 2 items",
        "a map of 1 entry",
        "an extension value",
    ]
    assert p.describe([1]) == "an array of 1 item" and p.describe(b"a" * 2000) == "binary data of 2,000 bytes"


def test_strings_in_messages_are_json_cut_and_printable() -> None:
    assert p.show_text('say "hi"\n') == '"say \\"hi\\"\\n"'
    assert p.show_text("é" * 40) == '"' + "é" * 32 + '..."'
    # Line and paragraph separators and bidi overrides would let a value forge log lines.
    assert p.show_text("a\u2028b\x85c\u202e") == '"a\\u2028b\\u0085c\\u202e"'


def test_a_reply_that_is_not_a_map_is_a_violation() -> None:
    with pytest.raises(p.ProtocolViolation, match="reply must be a map, not an array of 1 item"):
        p.decode_reply(raw([1]))
    with pytest.raises(p.ProtocolViolation, match="reply is not valid msgpack"):
        p.decode_reply(b"\xc1")
