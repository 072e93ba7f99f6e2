"""Property tests: no bytes, frames or msgpack values make the decoder, the key
validator or the worker's handler raise; every addressable request is answered
with a well-formed reply."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from rokv import protocol as p
from rokv.errors import InvalidKey
from rokv.keys import normalize_key
from rokv.worker.handler import Handler

from support.strategies import FUZZ, K, msgpack_values, request_like

HANDLER = Handler({K: "value"}, worker_id="fuzz", dataset="fuzz.json")
ROUTE = b"\x00route"


def check_reply(frames: list[bytes] | None) -> dict:
    assert frames is not None and len(frames) == 2 and frames[0] == ROUTE
    reply = msgpack.unpackb(frames[1])
    assert isinstance(reply, dict)
    if "error" in reply:
        assert reply["error"] in p.ERROR_CODES and reply["error"] != p.INTERNAL
        assert isinstance(reply["message"], str) and reply["message"]
    else:
        assert {"value", "values", "worker"} & set(reply)
    return reply


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_out_of_the_handler(body: bytes) -> None:
    check_reply(HANDLER.handle([ROUTE, body]))


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_arbitrary_frame_lists_are_answered_or_dropped(frames: list[bytes]) -> None:
    reply = HANDLER.handle(frames)
    if len(frames) < 2:
        assert reply is None
        return
    assert reply is not None and reply[0] == frames[0]
    answer = msgpack.unpackb(reply[1])
    if len(frames) > 2:
        assert answer["error"] == p.BAD_REQUEST


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_values_get_a_well_formed_reply(value: object) -> None:
    check_reply(HANDLER.handle([ROUTE, msgpack.packb(value)]))


@FUZZ
@given(request_like)
def test_request_shaped_maps_get_a_well_formed_reply(request: dict) -> None:
    reply = check_reply(HANDLER.handle([ROUTE, msgpack.packb(request)]))
    if "value" in reply:
        assert reply["value"] == "value"


@FUZZ
@given(st.one_of(st.text(max_size=60), msgpack_values))
def test_the_validator_only_ever_returns_canonical_keys_or_raises_invalid_key(key: object) -> None:
    try:
        canonical = normalize_key(key)
    except InvalidKey as exc:
        assert str(exc)
    else:
        assert normalize_key(canonical) == canonical
        assert len(canonical) == 36 and canonical[14] == "4" and canonical[19] in "89ab"


@FUZZ
@given(st.uuids(version=4), st.sampled_from(["{}", "urn:uuid:{}", "{{{}}}"]), st.booleans(), st.booleans())
def test_every_accepted_spelling_of_a_v4_uuid_normalises_to_it(uuid, form: str, upper: bool, hyphens: bool) -> None:
    text = str(uuid) if hyphens else uuid.hex
    text = form.format(text.upper() if upper else text)
    assert normalize_key(text) == str(uuid)
