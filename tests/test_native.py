"""The compiled hot path answers exactly as the Python handler does.

rokv.worker._native answers well-formed gets and mgets itself and hands everything
else to the handler; wherever it answers, its reply must be the handler's, byte
for byte, over a dict and over a .rokv store. Property tests throw arbitrary
bytes, msgpack values and request-shaped maps at it.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rokv import protocol as p
from rokv.keys import random_key
from rokv.worker import native
from rokv.worker.build import build
from rokv.worker.handler import Handler
from rokv.worker.reader import open_store

from support.procs import EXAMPLE, REPO, child_env, scaled
from support.strategies import msgpack_values

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


def compiled() -> Any:
    module = native.load()
    if module is None:
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip(f"no C compiler here, so no compiled path: {native.reason()}")
        pytest.fail(f"a C compiler is here but the compiled path is not usable: {native.reason()}")
    return module


def test_the_compiled_path_is_built_wherever_a_compiler_is() -> None:
    compiled()


def test_rokv_pure_python_forces_the_python_path_and_says_so() -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from rokv.worker import native\n"
        "assert native.load() is None and native.load() is None\n"
        "print(native.reason())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(ROKV_PURE_PYTHON="1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ROKV_PURE_PYTHON is set"
    assert result.stderr.count("pure-Python path in use") == 1  # said once


DATA: dict[str, str] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
KEYS = list(DATA)
MISSING = "11111111-2222-4333-8444-555555555555"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("native") / "example.rokv"
    build(EXAMPLE, out)
    return out


@pytest.fixture(scope="module", params=["dict", "store"])
def pair(request: pytest.FixtureRequest, store_path: Path) -> tuple[Any, Handler]:
    """(compiled lookup, Python handler) over the same dataset."""
    module = compiled()
    if request.param == "dict":
        return module.dict_lookup(DATA), Handler(DATA, worker_id="w", dataset="d")
    store = open_store(store_path)
    return store.native_lookup(module), Handler(store, worker_id="w", dataset="d")


def same(pair: tuple[Any, Handler], body: bytes) -> bytes | None:
    """The compiled answer, checked against the handler's; None where it
    leaves the request to the handler."""
    lookup, handler = pair
    answer = compiled().answer(lookup, body)
    if answer is not None:
        assert answer == handler.answer(body), (msgpack.unpackb(answer), msgpack.unpackb(handler.answer(body)))
    return answer


def test_hits_misses_and_batches_are_answered_in_compiled_code(pair: tuple[Any, Handler]) -> None:
    rng = random.Random(5)
    for rid in (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        assert same(pair, p.encode_request(rid, p.OP_GET, rng.choice(KEYS))) is not None
    assert same(pair, p.encode_request(9, p.OP_GET, MISSING)) is not None  # a canonical miss: not_found
    for size in (0, 1, 15, 16, 100, 1000, 10_000):
        keys = [rng.choice(KEYS) if rng.random() < 0.9 else random_key(rng) for _ in range(size)]
        assert same(pair, p.encode_request(size, p.OP_MGET, keys)) is not None


def test_what_needs_validation_goes_to_the_handler(pair: tuple[Any, Handler]) -> None:
    key = KEYS[0]
    for odd in (
        "nope",
        "{" + key + "}",
        "urn:uuid:" + key,
        key.replace("-", ""),
        "ABCDEFAB-CDEF-4ABC-9DEF-ABCDEFABCDEF",
        "",
        key[:14] + "1" + key[15:],
    ):  # a version 1 UUID
        body = p.encode_request(1, p.OP_GET, odd)
        assert compiled().answer(pair[0], body) is None, odd
        assert compiled().answer(pair[0], p.encode_request(1, p.OP_MGET, [key, odd])) is None, odd
    for body in (
        p.encode_request(1, p.OP_PING),
        b"",
        b"\x80",
        msgpack.packb({"v": 1, "id": 1, "op": "get"}),
        msgpack.packb({"v": 2, "id": 1, "op": "get", "key": key}),
        msgpack.packb({"v": 1, "id": -1, "op": "get", "key": key}),
        msgpack.packb({"v": 1, "id": 1, "op": "get", "key": key, "extra": 1}),
        msgpack.packb({"v": True, "id": 1, "op": "get", "key": key}),
        msgpack.packb({"v": 1, "id": 1.0, "op": "get", "key": key}),
        p.encode_request(1, p.OP_GET, key) + b"\x00",
    ):
        assert compiled().answer(pair[0], body) is None, body


def test_the_store_accepts_either_letter_case_as_its_python_get_does(pair: tuple[Any, Handler]) -> None:
    answer = same(pair, p.encode_request(3, p.OP_GET, KEYS[7].upper()))
    if isinstance(pair[1].data, dict):
        assert answer is None  # the dict holds canonical keys: Python normalises
    else:
        assert answer is not None and msgpack.unpackb(answer)["value"] == DATA[KEYS[7]]


def test_small_and_one_key_stores(tmp_path: Path) -> None:
    module = compiled()
    rng = random.Random(9)
    for count in (1, 2, 3, 17):
        pairs = {random_key(rng): f"v{i} é" for i in range(count)}
        src = tmp_path / f"d{count}.json"
        src.write_text(json.dumps(pairs), encoding="utf-8")
        out = tmp_path / f"d{count}.rokv"
        build(src, out)
        store = open_store(out)
        lookup, handler = store.native_lookup(module), Handler(store, worker_id="w", dataset="d")
        for key in [*pairs, random_key(rng)]:
            body = p.encode_request(1, p.OP_GET, key)
            assert module.answer(lookup, body) == handler.answer(body)
        body = p.encode_request(2, p.OP_MGET, [*pairs, random_key(rng)])
        assert module.answer(lookup, body) == handler.answer(body)


keyish = st.one_of(
    st.sampled_from(KEYS[:50]),
    st.just(MISSING),
    st.text(max_size=40),
    st.sampled_from(KEYS[:50]).map(str.upper),
    msgpack_values,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), msgpack_values),
        "id": st.one_of(st.integers(min_value=0, max_value=2**64 - 1), msgpack_values),
        "op": st.one_of(st.sampled_from(["get", "mget", "ping"]), msgpack_values),
        "key": keyish,
        "keys": st.one_of(st.lists(keyish, max_size=8), msgpack_values),
    },
)


@FUZZ
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_are_answered_as_the_handler_answers(pair: tuple[Any, Handler], body: bytes) -> None:
    same(pair, body)


@FUZZ
@given(request=request_like)
def test_request_shaped_maps_are_answered_as_the_handler_answers(
    pair: tuple[Any, Handler], request: dict[str, Any]
) -> None:
    same(pair, msgpack.packb(request))


@FUZZ
@given(request=request_like, cut=st.integers(min_value=0, max_value=400))
def test_truncated_requests_are_answered_as_the_handler_answers(
    pair: tuple[Any, Handler], request: dict[str, Any], cut: int
) -> None:
    body = msgpack.packb(request)
    same(pair, body[: cut % (len(body) + 1)])


def test_the_compiled_loop_holds_the_constants_python_gave_it() -> None:
    # The C code restates none of the protocol: what configure() was given
    # (rokv.worker.native.constants()) is what config() reads back.
    module = compiled()
    assert module.config() == native.constants()
    assert module.config()["not_found"]["code"] == p.NOT_FOUND
    assert module.config()["max_mget_keys"] == p.MAX_MGET_KEYS


def test_the_compiled_loop_answers_with_what_it_was_configured_with() -> None:
    # Configured with other words, it answers with them: the not-found
    # message and the operation names come from Python, not from the C code.
    compiled()
    code = (
        "import msgpack\n"
        "from rokv import protocol as p\n"
        "from rokv.worker import native\n"
        "module = native.load()\n"
        "given = native.constants()\n"
        "given['not_found'] = {'code': 'absent', 'before': 'nothing under ', 'after': ' here'}\n"
        "given['ops'] = {'get': 'fetch', 'mget': 'fetch_many'}\n"
        "module.configure(given)\n"
        "lookup = module.dict_lookup({})\n"
        "key = '8a35eb59-62b3-481c-8875-1f248df4c952'\n"
        "print(msgpack.unpackb(module.answer(lookup, msgpack.packb({'v': 1, 'id': 7, 'op': 'fetch', 'key': key}))))\n"
        "print(module.answer(lookup, p.encode_request(8, p.OP_GET, key)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=scaled(30)
    )
    assert result.returncode == 0, result.stderr
    reply, unknown_op = result.stdout.splitlines()
    key = "8a35eb59-62b3-481c-8875-1f248df4c952"
    assert reply == repr({"id": 7, "error": "absent", "message": f"nothing under {key} here"})
    assert unknown_op == "None"  # "get" is no longer an operation it answers: it leaves it to Python
