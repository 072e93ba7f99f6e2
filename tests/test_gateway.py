"""rokv-http, the seed's HTTP API, checked the way the seed's own tests did:
with ``requests`` (and the seed README's ``curl``) against a real gateway
process in front of a real broker and workers."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from rokv.errors import InvalidKey, KeyNotFound, ProtocolError, RokvError, ServiceUnavailable
from rokv.gateway.app import Gateway as GatewayApp
from rokv.gateway.refusals import ERROR_STATUS
from rokv.gateway.settings import Bind, SettingError, Settings, endpoint_from_env, parse_bind
from rokv.keys import FORMS, random_key, show_key

from support.procs import EXAMPLE, Proc, Stack, child_env, free_port, scaled, wait_for

MISSING = "8a35eb59-62b3-481c-8875-1f248df4c952"  # the seed README's key: valid, not in data/example.json


class Gateway:
    """rokv-http on a free loopback port, stopped by PID."""

    def __init__(self, log_dir: Path, endpoint: str, *extra: str, name: str = "gateway") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(
            name,
            [sys.executable, "-m", "rokv.gateway", "--bind", f"127.0.0.1:{self.port}", "--endpoint", endpoint, *extra],
            log_dir,
        )

    def wait_listening(self) -> Gateway:
        def up() -> bool:
            assert self.proc.popen.poll() is None, self.proc.log()
            try:
                requests.get(f"{self.url}/healthz", timeout=5)
                return True
            except requests.ConnectionError:
                return False

        wait_for(up, 30, f"rokv-http to listen on {self.url}", interval=0.1)
        return self

    def wait_healthy(self) -> Gateway:
        self.wait_listening()
        wait_for(
            lambda: requests.get(f"{self.url}/healthz", timeout=5).status_code == 200,
            30,
            "rokv-http /healthz to answer 200",
        )
        return self


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("gateway"), stack.frontend)
    try:
        yield g.wait_healthy()
    finally:
        g.proc.stop()
        log = g.proc.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log


@pytest.fixture()
def make_gateway(tmp_path: Path) -> Iterator:
    made: list[Gateway] = []

    def make(endpoint: str, *extra: str) -> Gateway:
        g = Gateway(tmp_path, endpoint, *extra, name=f"gateway{len(made)}")
        made.append(g)
        return g

    yield make
    for g in made:
        g.proc.stop()


def post(gateway: Gateway, path: str, **kwargs) -> requests.Response:
    return requests.post(f"{gateway.url}{path}", timeout=10, **kwargs)


def message_of(response: requests.Response) -> str:
    """The refusal's message; a 422 also holds FastAPI's detail list, as the seed's did."""
    body = response.json()
    assert set(body) == ({"message", "detail"} if response.status_code == 422 else {"message"}), body
    assert isinstance(body["message"], str) and body["message"]
    if response.status_code == 422:
        assert [set(d) - {"ctx"} for d in body["detail"]] == [{"type", "loc", "msg", "input"}], body
    return body["message"]


# ------------------------------------------------------------ /get_value


def test_a_key_in_the_dataset_gets_its_value_as_the_seed_answered(gateway: Gateway, example: dict[str, str]) -> None:
    key, value = next(iter(example.items()))
    # The seed README's client, word for word but for the key.
    res = requests.post(f"{gateway.url}/get_value", json={"key": key}, verify=False)
    assert res.status_code == 200
    assert res.headers["content-type"] == "application/json"
    assert res.json() == {"value": value}


def test_the_seed_readme_curl_command_works_unchanged(gateway: Gateway, example: dict[str, str]) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    key = list(example)[1]
    result = subprocess.run(
        [
            "curl",
            f"http://localhost:{gateway.port}/get_value",
            "-d",
            json.dumps({"key": key}, separators=(",", ":")),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"value": example[key]}


@pytest.mark.parametrize(
    "form",
    [str.upper, lambda k: "{" + k + "}", lambda k: "urn:uuid:" + k, lambda k: k.replace("-", "")],
    ids=["upper", "braces", "urn", "hex32"],
)
def test_every_key_form_rokv_accepts_is_accepted(gateway: Gateway, example: dict[str, str], form) -> None:
    key, value = list(example.items())[2]
    res = post(gateway, "/get_value", json={"key": form(key)})
    assert (res.status_code, res.json()) == (200, {"value": value})


def test_a_valid_key_not_in_the_dataset_is_404_with_a_message(gateway: Gateway) -> None:
    res = post(gateway, "/get_value", json={"key": MISSING})
    assert res.status_code == 404
    assert MISSING in message_of(res) and "not found" in message_of(res)


@pytest.mark.parametrize(
    "key, why",
    [
        ("nope", "not a UUID"),
        ("", "not a UUID"),
        ("8a35eb59-62b3-181c-8875-1f248df4c952", "version 1"),
        ("8a35eb59-62b3-481c-c875-1f248df4c952", "variant"),
        ("8a35eb59_62b3_481c_8875_1f248df4c952", "not a UUID"),
        ("x" * 5000, "not a UUID"),
        (5, "not a number"),
        (None, "not null"),
        ([MISSING], "not an array"),
        ({"key": MISSING}, "not an object"),
        (True, "not a boolean"),
    ],
)
def test_an_invalid_key_is_422_saying_why(gateway: Gateway, key: object, why: str) -> None:
    res = post(gateway, "/get_value", json={"key": key})
    assert res.status_code == 422
    message = message_of(res)
    assert why in message, message
    assert len(message) < 300  # a long key is cut in the message


@pytest.mark.parametrize(
    "body, why",
    [
        (b"", "no body"),
        (b"   ", "no body"),
        (b"key=8a35eb59-62b3-481c-8875-1f248df4c952", "not valid JSON"),
        (b'{"key": "8a35eb59-62b3-481c-8875-1f248df4c952"', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'["8a35eb59-62b3-481c-8875-1f248df4c952"]', "an array, not a JSON object"),
        (b'"8a35eb59-62b3-481c-8875-1f248df4c952"', "a string, not a JSON object"),
        (b'{"kee": "8a35eb59-62b3-481c-8875-1f248df4c952"}', 'no "key" field'),
        (b"{}", 'no "key" field'),
    ],
)
def test_a_missing_or_broken_body_is_422_saying_why(gateway: Gateway, body: bytes, why: str) -> None:
    res = post(gateway, "/get_value", data=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 422
    assert why in message_of(res), message_of(res)


@pytest.mark.parametrize("path", ["/get_value", "/get_values"])
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"],
)
def test_a_body_not_sent_as_json_is_422_as_the_seed_answered(
    gateway: Gateway, example: dict[str, str], path: str, content_type: str | None
) -> None:
    # curl -d without -H sends application/x-www-form-urlencoded; the seed's
    # FastAPI refused it, and a body with no Content-Type, with 422.
    key = list(example)[3]
    body = json.dumps({"key": key} if path == "/get_value" else {"keys": [key]})
    headers = {} if content_type is None else {"Content-Type": content_type}
    res = post(gateway, path, data=body, headers=headers)
    assert res.status_code == 422
    message = message_of(res)
    assert "Content-Type: application/json" in message
    assert ("no Content-Type" if content_type is None else repr(content_type)) in message
    assert res.json()["detail"] == [
        {
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": body,
        }
    ]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"]
)
def test_every_json_media_type_is_read(gateway: Gateway, example: dict[str, str], content_type: str) -> None:
    key = list(example)[4]
    res = post(gateway, "/get_value", data=json.dumps({"key": key}), headers={"Content-Type": content_type})
    assert (res.status_code, res.json()) == (200, {"value": example[key]})


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("GET", "/get_value", "POST"),
        ("PUT", "/get_value", "POST"),
        ("DELETE", "/get_values", "POST"),
        ("GET", "/get_values", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_a_wrong_method_is_405_naming_the_right_one(gateway: Gateway, method: str, path: str, allow: str) -> None:
    res = requests.request(method, f"{gateway.url}{path}", timeout=10)
    assert res.status_code == 405
    assert res.headers["allow"] == allow
    assert method in message_of(res)


def test_an_unknown_path_is_404_listing_the_endpoints(gateway: Gateway) -> None:
    res = post(gateway, "/get", json={"key": MISSING})
    assert res.status_code == 404
    assert "/get_value" in message_of(res)


def test_pipelined_requests_on_one_connection_are_answered_in_order(gateway: Gateway, example: dict[str, str]) -> None:
    # Responses leave in one write per event-loop turn (gateway/protocol.py):
    # several on one connection must still come whole and in order.
    keys = list(example)[10:16]
    requests_bytes = b"".join(
        b"POST /get_value HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
        for body in (json.dumps({"key": k}).encode() for k in keys)
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(requests_bytes)
        received = b""
        while received.count(b"HTTP/1.1 200") < len(keys) or not received.endswith(b"}"):
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert [json.loads(b) for b in bodies] == [{"value": example[k]} for k in keys]


# ------------------------------------------------------------ the seed's contract


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The seed service rebuilt (benchmarks/seed_app.py: FastAPI, pydantic's
    UUID4) under uvicorn, on the same dataset; its URL."""
    if importlib.util.find_spec("fastapi") is None:
        pytest.skip("the seed's FastAPI app needs the bench extra: pip install -e '.[bench]'")
    port = free_port()
    proc = Proc(
        "seed",
        [sys.executable, "-m", "uvicorn", "benchmarks.seed_app:app", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path_factory.mktemp("seed"),
        env=child_env(SEED_DATA=str(EXAMPLE)),
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.popen.poll() is None, proc.log()
        try:
            return requests.post(f"{url}/get_value", json={"key": MISSING}, timeout=5).status_code == 404
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, 60, "the seed's app to answer", interval=0.1)
        yield url
    finally:
        proc.stop()


JSON = "application/json"
EXAMPLE_KEY = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # in data/example.json


@pytest.mark.parametrize(
    "body, content_type",
    [
        # Read as JSON, or not, by the content type alone.
        (b'{"key": "%s"}' % EXAMPLE_KEY.encode(), JSON),
        (b'{"key": "%s"}' % EXAMPLE_KEY.encode(), "application/json; charset=utf-8"),
        (b'{"key": "%s"}' % EXAMPLE_KEY.encode(), "application/vnd.api+json"),
        (b'{"key": "%s"}' % EXAMPLE_KEY.encode(), None),
        (b'{"key": "%s"}' % EXAMPLE_KEY.encode(), "text/plain"),
        (b'{"key": "%s"}' % EXAMPLE_KEY.encode(), "application/x-www-form-urlencoded"),
        # Not a JSON object.
        (b"", JSON),
        (b"", None),
        (b"   ", JSON),
        (b"not json", JSON),
        (b'{"key": ', JSON),
        (b"\xff\xfe{}", JSON),
        (b"[1, 2]", JSON),
        (b'"%s"' % MISSING.encode(), JSON),
        (b"null", JSON),
        (b"3", JSON),
        # No key, or a key of the wrong type.
        (b"{}", JSON),
        (b'{"kee": "%s"}' % MISSING.encode(), JSON),
        (b'{"key": 5}', JSON),
        (b'{"key": null}', JSON),
        (b'{"key": true}', JSON),
        (b'{"key": ["%s"]}' % MISSING.encode(), JSON),
        (b'{"key": {"a": 1}}', JSON),
        # Not a UUIDv4.
        (b'{"key": "nope"}', JSON),
        (b'{"key": ""}', JSON),
        (b'{"key": "%s"}' % (b"x" * 80), JSON),
        (b'{"key": "8a35eb59_62b3_481c_8875_1f248df4c952"}', JSON),
        ('{"key": "\uff18a35eb59-62b3-481c-8875-1f248df4c952"}'.encode(), JSON),
        (b'{"key": "8a35eb59-62b3-181c-8875-1f248df4c952"}', JSON),
        (b'{"key": "8a35eb59-62b3-481c-c875-1f248df4c952"}', JSON),
        # Valid: found in any form, or not found.
        (b'{"key": "urn:uuid:%s"}' % EXAMPLE_KEY.upper().encode(), JSON),
        (b'{"key": "{%s}", "extra": 1}' % EXAMPLE_KEY.encode(), JSON),
        (b'{"key": "%s"}' % EXAMPLE_KEY.replace("-", "").encode(), JSON),
        (b'{"key": "%s"}' % MISSING.encode(), JSON),
    ],
)
def test_get_value_answers_what_the_seed_answered_and_says_why(
    gateway: Gateway, seed: str, body: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    theirs = requests.post(f"{seed}/get_value", data=body, headers=headers, timeout=10)
    ours = post(gateway, "/get_value", data=body, headers=headers)
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    if theirs.status_code != 422:
        assert ours.json() == theirs.json()
        return
    message_of(ours)  # rokv's own words, beside FastAPI's list
    [mine], [seeds] = ours.json()["detail"], theirs.json()["detail"]
    if seeds["type"] == "uuid_parsing":
        # The reason after FastAPI's words is rokv's (pydantic's comes from Rust's uuid crate).
        assert mine["msg"].startswith("Input should be a valid UUID, ")
        assert mine["ctx"]["error"] == mine["msg"].removeprefix("Input should be a valid UUID, ")
        mine = {k: v for k, v in mine.items() if k not in ("msg", "ctx")}
        seeds = {k: v for k, v in seeds.items() if k not in ("msg", "ctx")}
    assert mine == seeds


@pytest.mark.parametrize(
    "body, detail",
    [
        # The seed answered 400 {"detail": "There was an error parsing the body"} to these.
        (b'{"key": "\xff"}', {"type": "json_invalid", "loc": ["body", 9]}),
        (b"[" * 100_000, {"type": "json_invalid", "loc": ["body", 0]}),
    ],
)
def test_a_body_the_seed_could_not_decode_is_422_with_a_json_invalid_detail(
    gateway: Gateway, body: bytes, detail: dict
) -> None:
    res = post(gateway, "/get_value", data=body, headers={"Content-Type": JSON})
    assert res.status_code == 422
    assert "not valid JSON" in message_of(res)
    [got] = res.json()["detail"]
    assert {k: got[k] for k in detail} == detail and got["msg"] == "JSON decode error"


@pytest.mark.parametrize(
    "keys, detail",
    [
        (
            "nope",
            {"type": "list_type", "loc": ["body", "keys"], "msg": "Input should be a valid list", "input": "nope"},
        ),
        ([MISSING, 7], {"type": "uuid_type", "loc": ["body", "keys", 1], "input": 7}),
        ([MISSING, MISSING, "nope"], {"type": "uuid_parsing", "loc": ["body", "keys", 2], "input": "nope"}),
        ([EXAMPLE_KEY.replace("-4da1-", "-1da1-")], {"type": "uuid_version", "loc": ["body", "keys", 0]}),
    ],
)
def test_a_refused_batch_has_the_detail_fastapi_would_give(gateway: Gateway, keys: object, detail: dict) -> None:
    res = post(gateway, "/get_values", json={"keys": keys})
    assert res.status_code == 422
    message_of(res)
    [got] = res.json()["detail"]
    assert {k: got[k] for k in detail} == detail


class _FailingClient:
    """Stands in for the gateway's AsyncClient: every lookup raises ``error``."""

    endpoint = "tcp://stand-in:5555"

    def __init__(self, error: RokvError) -> None:
        self.error = error

    async def get(self, key: str) -> str:
        raise self.error

    async def get_many(self, keys: list[str]) -> list[str | None]:
        raise self.error


def _asgi_post(app: GatewayApp, path: str, doc: object) -> tuple[int, dict]:
    """One POST through the ASGI app itself, with no server around it."""
    body = json.dumps(doc).encode()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", JSON.encode())]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.parametrize(
    "error",
    [
        KeyNotFound(f"key {MISSING} not found", MISSING),
        InvalidKey("refused by the server", MISSING),
        ServiceUnavailable("no reply within 3.75 s"),
        ProtocolError("unsupported_version", code="unsupported_version"),
        RokvError("something new"),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("path", ["/get_value", "/get_values"])
def test_both_endpoints_answer_a_lookup_error_from_the_one_status_table(error: RokvError, path: str) -> None:
    [(status, prefix)] = [(s, p) for cls, s, p in ERROR_STATUS if isinstance(error, cls)][:1]
    app = GatewayApp(Settings(bind=Bind("127.0.0.1", 1), endpoint="tcp://stand-in:5555"))
    app.client = _FailingClient(error)  # type: ignore[assignment]
    app._max_body = 1 << 20
    got = _asgi_post(app, path, {"key": MISSING} if path == "/get_value" else {"keys": [MISSING]})
    assert got[0] == status
    assert got[1]["message"] == prefix + error.message
    assert {cls for cls, _, _ in ERROR_STATUS} >= {KeyNotFound, InvalidKey, ServiceUnavailable, RokvError}


# ------------------------------------------------------------ /get_values


def test_a_batch_is_aligned_with_null_for_missing_keys(gateway: Gateway, example: dict[str, str]) -> None:
    keys = list(example)[:50]
    asked = [keys[0], MISSING, keys[1].upper(), "{" + keys[2] + "}", keys[0], *keys[3:]]
    res = post(gateway, "/get_values", json={"keys": asked})
    assert res.status_code == 200
    assert res.json() == {
        "values": [
            example[keys[0]],
            None,
            example[keys[1]],
            example[keys[2]],
            example[keys[0]],
            *(example[k] for k in keys[3:]),
        ]
    }


def test_an_empty_batch_is_an_empty_list(gateway: Gateway) -> None:
    res = post(gateway, "/get_values", json={"keys": []})
    assert (res.status_code, res.json()) == (200, {"values": []})


@pytest.mark.parametrize(
    "bad, why",
    [
        ("nope", f"keys[2]: {show_key('nope')} is not a UUID"),
        (7, "keys[2] must be a string"),
        (None, "keys[2] must be a string"),
    ],
)
def test_one_invalid_key_in_a_batch_is_422_naming_it(
    gateway: Gateway, example: dict[str, str], bad: object, why: str
) -> None:
    keys = list(example)[:5]
    res = post(gateway, "/get_values", json={"keys": [keys[0], MISSING, bad, keys[1]]})
    assert res.status_code == 422
    assert why in message_of(res), message_of(res)


@pytest.mark.parametrize(
    "body, why",
    [
        ({"keys": MISSING}, '"keys" must be an array'),
        ({"key": [MISSING]}, 'no "keys" field'),
        ([MISSING], "not a JSON object"),
    ],
)
def test_a_batch_body_of_the_wrong_shape_is_422(gateway: Gateway, body: object, why: str) -> None:
    res = post(gateway, "/get_values", json=body)
    assert res.status_code == 422
    assert why in message_of(res)


def test_more_keys_than_the_protocol_allows_is_413(gateway: Gateway, example: dict[str, str]) -> None:
    keys = list(example)
    res = post(gateway, "/get_values", json={"keys": keys})  # 10,000: the limit itself is fine
    assert res.status_code == 200
    assert res.json()["values"] == list(example.values())
    res = post(gateway, "/get_values", json={"keys": [*keys, keys[0]]})
    assert res.status_code == 413
    assert "10,001 keys" in message_of(res) and "10,000" in message_of(res)


def test_a_body_over_the_size_limit_is_413_and_the_gateway_lives_on(gateway: Gateway, example: dict[str, str]) -> None:
    big = json.dumps({"key": "x" * (1 << 20)}).encode()
    res = post(gateway, "/get_value", data=big, headers={"Content-Type": "application/json"})
    assert res.status_code == 413
    assert "1,048,576 bytes" in message_of(res)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, the size is learnt while reading
        yield b'{"keys": ['
        for _ in range(30_000):
            yield json.dumps(MISSING).encode() + b", "
        yield b'"x"]}'

    res = post(gateway, "/get_values", data=chunks(), headers={"Content-Type": "application/json"})
    assert res.status_code == 413
    key = next(iter(example))
    assert post(gateway, "/get_value", json={"key": key}).json() == {"value": example[key]}


def test_a_smaller_body_limit_can_be_set(make_gateway, stack: Stack) -> None:
    g = make_gateway(stack.frontend, "--max-body", "2048").wait_healthy()
    ok = post(g, "/get_values", json={"keys": [MISSING] * 40})  # about 1.8 kB
    assert ok.status_code == 200
    res = post(g, "/get_values", json={"keys": [MISSING] * 60})
    assert res.status_code == 413 and "2,048 bytes" in message_of(res)


# ------------------------------------------------------------ health, failures, stop


def test_healthz_is_200_when_the_pool_answers(gateway: Gateway) -> None:
    res = requests.get(f"{gateway.url}/healthz", timeout=10)
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "ok" and body["keys"] == 10_000


def test_with_the_pool_down_healthz_and_lookups_are_503(make_gateway) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    g = make_gateway(dead).wait_listening()
    started = time.monotonic()
    res = requests.get(f"{g.url}/healthz", timeout=10)
    assert res.status_code == 503
    assert time.monotonic() - started < scaled(3)
    body = res.json()
    assert body["status"] == "unavailable" and dead in body["message"]
    res = post(g, "/get_value", json={"key": MISSING})
    assert res.status_code == 503
    assert "did not answer in time" in message_of(res)
    res = post(g, "/get_values", json={"keys": [MISSING]})
    assert res.status_code == 503
    # Refusals that need no pool still come at once.
    assert post(g, "/get_value", json={"key": "nope"}).status_code == 422


def test_sigterm_answers_the_requests_in_flight_then_exits_0(make_stack, make_gateway, example: dict[str, str]) -> None:
    stack = make_stack().wait_ready()
    g = make_gateway(stack.frontend).wait_healthy()
    keys = list(example)[:24]
    # Stopped workers hold every request: they are in flight when SIGTERM comes.
    for worker in stack.workers:
        worker.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(len(keys)) as pool:
            futures = [pool.submit(post, g, "/get_value", json={"key": key}) for key in keys]
            time.sleep(scaled(0.5))
            assert not any(f.done() for f in futures)
            g.proc.signal(signal.SIGTERM)
            time.sleep(scaled(0.5))
            assert g.proc.popen.poll() is None  # still draining
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{g.url}/healthz", timeout=5)  # but no new connections
            for worker in stack.workers:
                worker.signal(signal.SIGCONT)
            answers = [f.result(timeout=scaled(20)) for f in futures]
    finally:
        for worker in stack.workers:
            worker.signal(signal.SIGCONT)
    assert [(a.status_code, a.json()) for a in answers] == [(200, {"value": example[k]}) for k in keys]
    assert g.proc.wait(10) == 0
    assert "Traceback" not in g.proc.log_path.read_text(errors="replace")


def test_a_concurrent_mix_gets_every_answer_right(gateway: Gateway, example: dict[str, str]) -> None:
    keys = list(example)
    errors: list[str] = []
    counted = {"found": 0, "missing": 0, "invalid": 0, "batch": 0}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            for _ in range(150):
                kind = rng.choice(list(counted))
                if kind == "found":
                    key = rng.choice(keys)
                    res = session.post(f"{gateway.url}/get_value", json={"key": key}, timeout=10)
                    want = (200, {"value": example[key]})
                elif kind == "missing":
                    key = random_key(rng)
                    res = session.post(f"{gateway.url}/get_value", json={"key": key}, timeout=10)
                    want = (404, {"message": f"key {key} not found"})
                elif kind == "invalid":
                    key = rng.choice(keys)[:-1] + "z"
                    res = session.post(f"{gateway.url}/get_value", json={"key": key}, timeout=10)
                    why = f"{show_key(key)} is not a UUID (expected {FORMS})"
                    detail = {"type": "uuid_parsing", "loc": ["body", "key"], "input": key, "ctx": {"error": why}}
                    want = (
                        422,
                        {"message": why, "detail": [{**detail, "msg": f"Input should be a valid UUID, {why}"}]},
                    )
                else:
                    batch = [
                        rng.choice(keys) if rng.random() < 0.8 else random_key(rng) for _ in range(rng.randint(1, 200))
                    ]
                    res = session.post(f"{gateway.url}/get_values", json={"keys": batch}, timeout=10)
                    want = (200, {"values": [example.get(k) for k in batch]})
                got = (res.status_code, res.json())
                with lock:
                    counted[kind] += 1
                    if got != want:
                        errors.append(f"{kind}: {got} != {want}")

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(client, range(12)))
    assert errors == []
    assert sum(counted.values()) == 12 * 150 and min(counted.values()) > 0


# ------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "text, bind",
    [
        ("0.0.0.0:9000", Bind("0.0.0.0", 9000)),
        ("localhost", Bind("localhost", 8080)),
        (":9001", Bind("127.0.0.1", 9001)),
        ("[::1]:9002", Bind("::1", 9002)),
        ("[::]", Bind("::", 8080)),
    ],
)
def test_rokv_http_forms(text: str, bind: Bind) -> None:
    assert parse_bind(text) == bind


@pytest.mark.parametrize("text", ["0.0.0.0:0", "host:http", "::1", "[::1", "a b:80", "1.2.3.4:65536", " "])
def test_bad_rokv_http_is_refused(text: str) -> None:
    with pytest.raises(SettingError, match="ROKV_HTTP"):
        parse_bind(text)


def test_the_endpoint_defaults_to_this_hosts_broker() -> None:
    assert endpoint_from_env({}) == "tcp://127.0.0.1:5555"
    assert endpoint_from_env({"ROKV_FRONTEND": "tcp://0.0.0.0:6000"}) == "tcp://127.0.0.1:6000"
    assert endpoint_from_env({"ROKV_FRONTEND": "tcp://*:6000"}) == "tcp://127.0.0.1:6000"
    both = "tcp://b1:5555,tcp://b2:5555"
    assert endpoint_from_env({"ROKV_FRONTEND": "tcp://*:6000", "ROKV_ENDPOINT": both}) == both


@pytest.mark.parametrize(
    "env, said",
    [
        ({"ROKV_HTTP": "nowhere:http"}, "ROKV_HTTP='nowhere:http'"),
        ({"ROKV_HTTP_WORKERS": "0"}, "ROKV_HTTP_WORKERS='0'"),
        ({"ROKV_HTTP_MAX_BODY": "1k"}, "ROKV_HTTP_MAX_BODY='1k'"),
    ],
)
def test_a_bad_setting_exits_2_with_the_reason(env: dict[str, str], said: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rokv.gateway"], env=child_env(**env), capture_output=True, text=True, timeout=scaled(30)
    )
    assert result.returncode == 2
    assert said in result.stderr and "Traceback" not in result.stderr


def test_a_bad_endpoint_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "rokv.gateway", "--bind", f"127.0.0.1:{port}", "--endpoint", "nonsense"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 1
    assert "nonsense" in result.stderr


def test_several_processes_serve_one_port(make_gateway, stack: Stack, example: dict[str, str]) -> None:
    g = make_gateway(stack.frontend, "--workers", "2").wait_healthy()
    keys = list(example)[:40]
    with requests.Session() as session:
        for key in keys:
            assert session.post(f"{g.url}/get_value", json={"key": key}, timeout=10).json() == {"value": example[key]}
    assert g.proc.stop() == 0
