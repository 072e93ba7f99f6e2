"""The worker's answers, without sockets: exact values, errors with codes, and
no input that can make it raise."""

from __future__ import annotations

import msgpack
import pytest

from rokv.worker.handler import Handler

K1 = "8a35eb59-62b3-481c-8875-1f248df4c952"
K2 = "0f0e0d0c-0b0a-4908-8706-050403020100"
MISSING = "11111111-2222-4333-8444-555555555555"
DATA = {K1: "lunmtp ftxemjfob pmo hwoya", K2: "line\nbreak\u2028and\x00nul"}
ROUTE = b"\x00client-route"


@pytest.fixture()
def handler() -> Handler:
    return Handler(dict(DATA), worker_id="w1", dataset="test.json")


def ask(handler: Handler, request: dict) -> dict:
    frames = handler.handle([ROUTE, msgpack.packb(request)])
    assert frames is not None and frames[0] == ROUTE and len(frames) == 2
    return msgpack.unpackb(frames[1])


def req(op: str, **fields: object) -> dict:
    return {"v": 1, "id": 9, "op": op, **fields}


def test_get_returns_the_exact_value(handler: Handler) -> None:
    assert ask(handler, req("get", key=K1)) == {"id": 9, "value": DATA[K1]}
    assert ask(handler, req("get", key=K2))["value"] == DATA[K2]


@pytest.mark.parametrize("form", [K1.upper(), K1.replace("-", ""), "{" + K1 + "}", "urn:uuid:" + K1])
def test_get_accepts_every_spelling_of_a_key(handler: Handler, form: str) -> None:
    assert ask(handler, req("get", key=form))["value"] == DATA[K1]


def test_get_of_a_missing_key_says_not_found(handler: Handler) -> None:
    reply = ask(handler, req("get", key=MISSING.upper()))
    assert reply["error"] == "not_found"
    assert MISSING in reply["message"]


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("nope", "is not a UUID"),
        (5, "not integer"),
        (None, "not nil"),
        ([K1], "not array"),
        ({"k": 1}, "not map"),
        (K1.replace("-481c-", "-181c-"), "version 1"),
        (K1.encode(), "not binary"),
    ],
)
def test_get_of_an_invalid_key_says_why(handler: Handler, key: object, says: str) -> None:
    reply = ask(handler, req("get", key=key))
    assert reply["error"] == "invalid_key"
    assert says in reply["message"]
    assert reply["id"] == 9


def test_mget_is_aligned_with_the_keys_and_none_marks_misses(handler: Handler) -> None:
    reply = ask(handler, req("mget", keys=[K2, MISSING, K1.upper(), K1]))
    assert reply == {"id": 9, "values": [DATA[K2], None, DATA[K1], DATA[K1]]}
    assert ask(handler, req("mget", keys=[])) == {"id": 9, "values": []}


@pytest.mark.parametrize("bad", ["nope", 7, [1], {"a": 1}, None])
def test_mget_with_an_invalid_key_names_its_position(handler: Handler, bad: object) -> None:
    reply = ask(handler, req("mget", keys=[K1, MISSING, bad]))
    assert reply["error"] == "invalid_key"
    assert reply["index"] == 2
    assert not reply["message"].startswith("keys[")  # the position travels as data, not as text


def test_ping_describes_the_worker(handler: Handler) -> None:
    info = ask(handler, req("ping"))["worker"]
    assert info["id"] == "w1"
    assert info["keys"] == 2
    assert info["dataset"] == "test.json"
    assert isinstance(info["pid"], int)


def test_wrong_version_is_unsupported_and_keeps_the_id(handler: Handler) -> None:
    reply = ask(handler, {"v": 99, "id": 3, "op": "get", "key": K1})
    assert (reply["id"], reply["error"]) == (3, "unsupported_version")


@pytest.mark.parametrize(
    "frames",
    [
        [ROUTE, b""],
        [ROUTE, b"garbage\xff\x00"],
        [ROUTE, msgpack.packb([1, 9, "get", K1])],
        [ROUTE, msgpack.packb(req("get", key=K1)), b"extra"],
        [ROUTE, b"", b"", b""],
        [ROUTE, msgpack.packb(req("mget", keys="notalist"))],
        [ROUTE, b"\x91" * 10_000 + b"\xc0"],  # deep nesting
        [ROUTE, b"\xdd\xff\xff\xff\xff"],  # an array header claiming 4G elements
    ],
)
def test_malformed_requests_get_a_bad_request_reply(handler: Handler, frames: list[bytes]) -> None:
    reply = handler.handle(frames)
    assert reply is not None and reply[0] == ROUTE
    assert msgpack.unpackb(reply[1])["error"] == "bad_request"


def test_a_message_without_a_body_is_dropped(handler: Handler) -> None:
    assert handler.handle([ROUTE]) is None
    assert handler.handle([]) is None


def test_an_internal_error_costs_one_reply_not_the_worker(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr(handler, "_get", boom)
    reply = handler.handle([ROUTE, msgpack.packb(req("get", key=K1))])
    assert reply is not None
    assert msgpack.unpackb(reply[1])["error"] == "internal"
    monkeypatch.undo()
    assert ask(handler, req("get", key=K1))["value"] == DATA[K1]
