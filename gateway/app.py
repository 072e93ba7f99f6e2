"""The gateway as a plain ASGI application: the seed service's HTTP API over
the pool, through one :class:`rokv.AsyncClient` per server process.

Endpoints (every body is JSON, every error ``{"message": why}``; a 422 also
carries FastAPI's ``detail`` list, as the seed service answered: see
:mod:`rokv.gateway.refusals`):

- ``POST /get_value`` ``{"key": "<uuid4>"}``, sent as ``application/json``:
  200 ``{"value": "..."}``; 404 a valid key the dataset lacks; 422 a body or
  key that is not valid, or a body not sent as JSON; 503 the pool did not
  answer in time; 413 a body over the size limit.
- ``POST /get_values`` ``{"keys": [...]}``, sent as ``application/json``: 200
  ``{"values": [...]}``, aligned with the keys, ``null`` where one is missing;
  422 naming the first invalid key; 413 more than 10,000 keys or a body over
  the limit.
- ``GET /healthz``: 200 ``{"status": "ok", ...}`` when a worker answers a ping
  within the health timeout, else 503 ``{"status": "unavailable", ...}``.

No web framework: routing three paths costs less than any framework's
request object, and the per-request Python cost is what limits one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rokv.aio import AsyncClient
from rokv.errors import InvalidKey, RokvError
from rokv.gateway import refusals as r
from rokv.gateway.jsoncodec import dumps, loads
from rokv.gateway.refusals import Refusal, refusal_for
from rokv.gateway.settings import MAX_KEYS, Settings
from rokv.keys import match_canonical, normalize_key

__all__ = ["Gateway", "app"]

log = logging.getLogger("rokv.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_ENDPOINTS = "POST /get_value, POST /get_values, GET /healthz"


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_type(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value
    return None


def _object_body(body: bytes, content_type: bytes | None, example: str) -> dict[str, Any]:
    """The request body as a JSON object, refused where the seed refused it.

    Raises:
        Refusal: 422, saying what is wrong with it, with FastAPI's detail.
    """
    if not body:
        raise Refusal(
            422, f"the request has no body: send a JSON object such as {example}", [r.missing(("body",), None)]
        )
    if content_type is None or not r.is_json_media_type(content_type):
        sent = "no Content-Type" if content_type is None else f"Content-Type {content_type[:100].decode('latin-1')!r}"
        raise Refusal(
            422,
            f"the body came with {sent}: send it as JSON, with the header Content-Type: application/json "
            "(curl: -H 'Content-Type: application/json'), as the seed service required",
            [r.not_an_object(body.decode("utf-8", "replace"))],
        )
    try:
        doc = loads(body)
    except ValueError as exc:  # a JSONDecodeError, or a UnicodeDecodeError
        why = "the request has no body" if not body.strip() else f"the body is not valid JSON ({exc})"
        position = getattr(exc, "pos", getattr(exc, "start", 0))
        raise Refusal(
            422,
            f"{why}: send a JSON object such as {example}",
            [r.json_invalid(position, getattr(exc, "msg", str(exc)))],
        ) from None
    except RecursionError:
        raise Refusal(
            422,
            f"the body is not valid JSON (nested too deeply): send a JSON object such as {example}",
            [r.json_invalid(0, "nested too deeply")],
        ) from None
    if type(doc) is not dict:
        raise Refusal(
            422, f"the body is {_json_type(doc)}, not a JSON object such as {example}", [r.not_an_object(doc)]
        )
    return doc


class Gateway:
    """The ASGI application.

    Args:
        settings: what to connect to and the limits; default read from the
            environment at startup (see :class:`~rokv.gateway.settings.Settings`).

    The :class:`AsyncClient` is made at the ASGI lifespan startup, in the
    server process that serves (after any fork), and closed at shutdown; a
    server that skips lifespan gets one at the first request.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.client: AsyncClient | None = None
        self._max_body = 0

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except ValueError as exc:  # a bad setting or endpoint: say it, do not serve
                    log.error("rokv-http: cannot start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                log.info("rokv-http: asking the pool at %s", self.settings.endpoint if self.settings else "?")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> AsyncClient:
        """Read the settings if none were given and open the client.

        Raises:
            ValueError: a setting or the endpoint is unusable (the message
                says which).
        """
        if self.client is None:
            if self.settings is None:
                self.settings = Settings.from_env()
            self._max_body = self.settings.max_body
            self.client = AsyncClient(self.settings.endpoint)
        return self.client

    async def close(self) -> None:
        """Close the client; idempotent."""
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        try:
            client = self.client or self.start()
            if path == "/get_value" or path == "/get_values":
                if method != "POST":
                    raise Refusal(405, f"{path} takes POST, not {method}")
                body = await self._read_body(receive)
                content_type = _content_type(scope)
                if path == "/get_value":
                    status, payload = await self._get_value(client, body, content_type)
                else:
                    status, payload = await self._get_values(client, body, content_type)
            elif path == "/healthz":
                if method != "GET" and method != "HEAD":
                    raise Refusal(405, f"{path} takes GET, not {method}")
                status, payload = await self._healthz(client)
            else:
                raise Refusal(404, f"no endpoint {path[:100]!r}; the endpoints are {_ENDPOINTS}")
        except Refusal as refusal:
            status, payload = refusal.status, refusal.body()
            if status == 405:
                allow = b"GET, HEAD" if path == "/healthz" else b"POST"
                await _respond(send, status, payload, [(b"allow", allow)])
                return
        except Exception:  # never a traceback to a client: log it here
            log.exception("rokv-http: %s %s failed", method, path[:100])
            status, payload = 500, Refusal(500, "internal error in the gateway; see its log").body()
        await _respond(send, status, payload)

    async def _read_body(self, receive: Receive) -> bytes:
        """The request body, read no further than the size limit.

        Raises:
            Refusal: 413 when the body is over the limit.
        """
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self._max_body:
                raise self._too_large()
            return body
        parts = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise self._too_large()
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self) -> Refusal:
        return Refusal(413, f"the body is over the limit of {self._max_body:,} bytes (ROKV_HTTP_MAX_BODY)")

    # ------------------------------------------------------------ endpoints

    @staticmethod
    async def _get_value(client: AsyncClient, body: bytes, content_type: bytes | None) -> tuple[int, bytes]:
        doc = _object_body(body, content_type, '{"key": "<uuid4>"}')
        if "key" not in doc:
            raise Refusal(
                422, 'the body has no "key" field: send {"key": "<uuid4>"}', [r.missing(("body", "key"), doc)]
            )
        key = doc["key"]
        if type(key) is not str:
            raise Refusal(
                422,
                f'"key" must be a string holding a UUID version 4, not {_json_type(key)}',
                [r.key_error(("body", "key"), key)],
            )
        try:
            value = await client.get(key)
        except InvalidKey as exc:  # checked by the client before anything is sent
            raise refusal_for(exc, [r.key_error(("body", "key"), key, exc.reason)]) from None
        except RokvError as exc:
            raise refusal_for(exc) from None
        return 200, dumps({"value": value})

    @staticmethod
    async def _get_values(client: AsyncClient, body: bytes, content_type: bytes | None) -> tuple[int, bytes]:
        doc = _object_body(body, content_type, '{"keys": ["<uuid4>", ...]}')
        if "keys" not in doc:
            raise Refusal(
                422,
                'the body has no "keys" field: send {"keys": ["<uuid4>", ...]}',
                [r.missing(("body", "keys"), doc)],
            )
        keys = doc["keys"]
        if type(keys) is not list:
            raise Refusal(
                422,
                f'"keys" must be an array of strings, not {_json_type(keys)}',
                [r.list_type(("body", "keys"), keys)],
            )
        if len(keys) > MAX_KEYS:
            raise Refusal(413, f"{len(keys):,} keys is over the limit of {MAX_KEYS:,} per request: split the list")
        # Checked here, not by the workers: the first invalid key is named
        # without a round trip, and what travels is canonical and short.
        canonical = keys
        for index, key in enumerate(keys):
            if type(key) is str and match_canonical(key):
                continue
            if canonical is keys:
                canonical = list(keys)
            if type(key) is not str:
                raise Refusal(
                    422,
                    f"keys[{index}] must be a string holding a UUID version 4, not {_json_type(key)}",
                    [r.key_error(("body", "keys", index), key)],
                )
            try:
                canonical[index] = normalize_key(key)
            except InvalidKey as exc:
                raise Refusal(
                    422, f"keys[{index}]: {exc.message}", [r.key_error(("body", "keys", index), key, exc.reason)]
                ) from None
        try:
            values = await client.get_many(canonical)
        except RokvError as exc:
            raise refusal_for(exc) from None
        return 200, dumps({"values": values})

    async def _healthz(self, client: AsyncClient) -> tuple[int, bytes]:
        wait = self.settings.health_timeout if self.settings else 1.0
        try:
            info = await asyncio.wait_for(client.ping(), wait)
        except (asyncio.TimeoutError, RokvError) as exc:
            why = str(exc) or f"no worker answered a ping within {wait:g} s"
            return 503, dumps({"status": "unavailable", "message": f"{why} (pool at {client.endpoint})"})
        return 200, dumps({"status": "ok", "worker": info.get("id"), "keys": info.get("keys")})


#: What servers import: ``rokv.gateway.app:app``.
app = Gateway()
