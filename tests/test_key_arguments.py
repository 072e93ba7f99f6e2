"""What both clients take as keys, checked before anything travels: uuid.UUID
objects, no bare string for get_many, and no key longer than any valid one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from rokv import AsyncClient, Client, InvalidKey, KeyNotFound
from rokv import protocol as p

from support.procs import Stack, child_env, free_port, scaled

MISSING = "11111111-2222-4333-8444-555555555555"
LONG = "urn:uuid:8a35eb59-62b3-481c-8875-1f248df4c952" + "x"  # one character past the longest form
HUGE = "8a35eb59-62b3-481c-8875-1f248df4c952" * 3000


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), scaled(60)))


def server_says(endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
    """The reply of the service to a request sent as is, with no client check."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = int(scaled(3000))
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb({"v": p.PROTOCOL_VERSION, "id": 1, **request}))
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close()


def outcome(call: Callable[[], Any]) -> tuple:
    try:
        return ("value", call())
    except (KeyNotFound, InvalidKey) as exc:
        return (type(exc).__name__, str(exc), exc.key)


async def outcome_async(call: Callable[[], Any]) -> tuple:
    try:
        return ("value", await call())
    except (KeyNotFound, InvalidKey) as exc:
        return (type(exc).__name__, str(exc), exc.key)


def test_uuid_objects_are_keys_for_both_clients(stack: Stack, example: dict[str, str]) -> None:
    k1, k2 = list(example)[:2]
    version1 = uuid.UUID("8a35eb59-62b3-181c-8875-1f248df4c952")
    keys = [uuid.UUID(k1), uuid.UUID(k2.upper()), uuid.UUID(MISSING), version1]
    expected = [
        ("value", example[k1]),
        ("value", example[k2]),
        ("KeyNotFound", f"key {MISSING} not found", MISSING),
        ("InvalidKey", f'"{version1}" is a version 1 UUID, not version 4', str(version1)),
    ]
    with stack.client() as client:
        assert [outcome(lambda k=k: client.get(k)) for k in keys] == expected
        assert client.get_many(keys[:3] + [k1]) == [example[k1], example[k2], None, example[k1]]
        with pytest.raises(InvalidKey, match=r'^keys\[3\]: "8a35eb59-62b3-181c-.*version 1'):
            client.get_many(keys)

    async def main() -> tuple[list, list, list]:
        async with AsyncClient(stack.frontend) as coalescing, AsyncClient(stack.frontend, coalesce=False) as plain:
            together = list(await asyncio.gather(*(outcome_async(lambda k=k: coalescing.get(k)) for k in keys)))
            alone = [await outcome_async(lambda k=k: plain.get(k)) for k in keys]
            many = await plain.get_many(keys[:3] + [k1])
            with pytest.raises(InvalidKey, match=r'^keys\[3\]: "8a35eb59-62b3-181c-.*version 1'):
                await coalescing.get_many(keys)
            return together, alone, many

    together, alone, many = run(main)
    assert together == alone == expected
    assert many == [example[k1], example[k2], None, example[k1]]


@pytest.mark.parametrize("keys", ["8a35eb59-62b3-481c-8875-1f248df4c952", b"8a35eb59", bytearray(b"k")])
def test_get_many_refuses_a_bare_string_with_a_clear_type_error(keys: object) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: nothing may be sent
    with Client(endpoint, timeout=0.1, retries=0) as client:
        with pytest.raises(TypeError, match=r"list of keys, not a single .*get\(key\) or get_many\(\[key\]\)"):
            client.get_many(keys)  # type: ignore[arg-type]  # a wrong type on purpose

    async def main() -> None:
        async with AsyncClient(endpoint, timeout=0.1, retries=0) as client:
            with pytest.raises(TypeError, match="list of keys, not a single"):
                await client.get_many(keys)  # type: ignore[arg-type]  # a wrong type on purpose

    run(main)


def test_a_key_longer_than_any_valid_one_is_refused_locally_with_the_servers_message(stack: Stack) -> None:
    said = server_says(stack.frontend, {"op": "get", "key": LONG})
    assert said["error"] == "invalid_key"
    said_many = server_says(stack.frontend, {"op": "mget", "keys": [MISSING, LONG]})
    assert said_many["message"] == said["message"] and said_many["index"] == 1  # the position as data
    # Nothing listens here: a request that travelled would end ServiceUnavailable.
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Client(endpoint, timeout=0.1, retries=0) as client:
        assert outcome(lambda: client.get(LONG)) == ("InvalidKey", said["message"], LONG)
        assert outcome(lambda: client.get_many([MISSING, LONG])) == ("InvalidKey", f"keys[1]: {said['message']}", LONG)
        assert outcome(lambda: client.get(HUGE))[0] == "InvalidKey"

    async def main() -> list[tuple]:
        async with (
            AsyncClient(endpoint, timeout=0.1, retries=0) as coalescing,
            AsyncClient(endpoint, timeout=0.1, retries=0, coalesce=False) as plain,
        ):
            return [
                await outcome_async(lambda: coalescing.get(LONG)),
                await outcome_async(lambda: plain.get(LONG)),
                await outcome_async(lambda: plain.get_many([MISSING, LONG])),
            ]

    assert run(main) == [("InvalidKey", said["message"], LONG)] * 2 + [
        ("InvalidKey", f"keys[1]: {said['message']}", LONG)
    ]


def test_get_many_with_a_long_key_names_the_first_invalid_key_as_the_server_would(
    stack: Stack, example: dict[str, str]
) -> None:
    # 10,000 keys of 46 characters and more would make requests over the
    # broker's 1 MiB limit, which costs the sender its connection.
    keys = list(example) * 2
    with_long = keys[:7000] + [HUGE] + keys[7000:8000] + ["bogus"]
    short_first = keys[:3000] + ["bogus"] + keys[3000:7000] + [HUGE]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Client(endpoint, timeout=0.1, retries=0) as client:
        with pytest.raises(InvalidKey) as info:
            client.get_many(with_long)
        assert str(info.value).startswith('keys[7000]: "8a35eb59') and info.value.key is HUGE
        with pytest.raises(InvalidKey) as info:
            client.get_many(short_first)
        assert (
            str(info.value) == 'keys[3000]: "bogus" is not a UUID '
            "(expected 8-4-4-4-12 or 32 hex digits, optionally in braces or after urn:uuid:)"
        )
    with stack.client() as client:  # what the server says of the same short key
        with pytest.raises(InvalidKey) as served:
            client.get_many(short_first[:3001])
    assert str(served.value) == str(info.value)


def test_a_key_of_non_ascii_characters_is_refused_locally_so_no_request_outgrows_the_limit() -> None:
    # 45 characters of 4 UTF-8 bytes each: 10,000 of them would be 1.8 MB,
    # over the broker's 1 MiB, which costs the sender its connection.
    wide = "\U0001f600" * 45
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: a request that travelled would time out
    with Client(endpoint, timeout=0.1, retries=0) as client:
        assert outcome(lambda: client.get(wide))[0] == "InvalidKey"
        result = outcome(lambda: client.get_many(["8a35eb59-62b3-481c-8875-1f248df4c952"] * 9_999 + [wide]))
        assert result[0] == "InvalidKey" and result[1].startswith("keys[9999]: ")


#: Invalid keys no longer than a valid one, and ASCII: only a full check tells.
SHORT_INVALID = [
    "nope",
    "8a35eb59-62b3-181c-8875-1f248df4c952",  # version 1
    "8a35eb59-62b3-481c-c875-1f248df4c952",  # not the RFC 4122 variant
    "8a35eb59_62b3_481c_8875_1f248df4c952",
    "{8a35eb59-62b3-481c-8875-1f248df4c952",
    "",
]


def test_every_invalid_key_is_refused_at_once_by_both_clients_with_the_servers_message(stack: Stack) -> None:
    said = [server_says(stack.frontend, {"op": "get", "key": key})["message"] for key in SHORT_INVALID]
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: a request that travelled would time out
    started = time.monotonic()
    with Client(endpoint, timeout=30, retries=0) as client:  # a request that travelled would wait 30 s
        assert [outcome(lambda k=key: client.get(k)) for key in SHORT_INVALID] == [
            ("InvalidKey", message, key) for key, message in zip(SHORT_INVALID, said)
        ]

    async def main() -> list[tuple]:
        async with (
            AsyncClient(endpoint, timeout=30, retries=0) as coalescing,
            AsyncClient(endpoint, timeout=30, retries=0, coalesce=False) as plain,
        ):
            results = []
            for key in SHORT_INVALID:
                results.append(await outcome_async(lambda k=key: coalescing.get(k)))
                results.append(await outcome_async(lambda k=key: plain.get(k)))
            return results

    assert run(main) == [("InvalidKey", message, key) for key, message in zip(SHORT_INVALID, said) for _ in (0, 1)]
    assert time.monotonic() - started < scaled(10)


def rokv_cli(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rokv", *args], capture_output=True, text=True, timeout=60, env=child_env()
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_rokv_get_of_an_invalid_key_exits_2_at_once_with_the_service_down() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens
    # One try of 30 s: a request that travelled would wait all of it.
    one_long_try = ("--endpoint", endpoint, "--timeout", "30", "--retries", "0")
    code, err, seconds = rokv_cli("get", "nope", *one_long_try)
    assert code == 2 and '"nope" is not a UUID' in err and seconds < scaled(15), (code, err, seconds)
    code, err, seconds = rokv_cli("get-many", MISSING, "nope", *one_long_try)
    assert code == 2 and 'keys[1]: "nope" is not a UUID' in err and seconds < scaled(15), (code, err, seconds)
