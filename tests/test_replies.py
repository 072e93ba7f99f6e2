"""How clients read replies (PROTOCOL.md "Replies"): a reply carrying ``error``
is an error whatever else it holds, unknown fields are ignored, and the
default retry policy is the one PROTOCOL.md states in numbers.

A real worker never sends a value and an error together, so a ROUTER thread
stands in for the service here and answers each request with a crafted map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from rokv import AsyncClient, Client, KeyNotFound, ProtocolError
from rokv import protocol as p
from rokv.core import DEFAULT_POLICY
from rokv.replies import value_from_reply

from support.routers import ServingRouter

K1 = "11111111-2222-4333-8444-555555555555"
K2 = "21111111-2222-4333-8444-555555555555"

#: Builds the reply map for one decoded request.
Answer = Callable[[p.Request], dict[str, Any]]


class CraftedServer(ServingRouter):
    """A ROUTER that answers every request with ``answer(request)``."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        super().__init__()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            route, body = self._sock.recv_multipart()
            reply = {"id": p.decode_request(body).request_id, **self._answer(p.decode_request(body))}
            self._sock.send_multipart([route, msgpack.packb(reply)])


@pytest.fixture()
def serve() -> Iterator[Callable[[Answer], CraftedServer]]:
    made: list[CraftedServer] = []

    def make(answer: Answer) -> CraftedServer:
        made.append(CraftedServer(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def both_clients(endpoint: str, call: str, arg: Any = None) -> list[tuple[str, str]]:
    """What a blocking Client and an AsyncClient (coalescing gets into mgets)
    make of the same service: ("value", result) or (exception name, message)."""

    def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
        try:
            return ("value", fn())
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            return (type(exc).__name__, str(exc))

    with Client(endpoint, timeout=2.0, retries=0) as client:
        sync = outcome(lambda: getattr(client, call)(*([] if arg is None else [arg])))

    async def main() -> Any:
        async with AsyncClient(endpoint, timeout=2.0, retries=0) as client:
            return await getattr(client, call)(*([] if arg is None else [arg]))

    return [sync, outcome(lambda: asyncio.run(main()))]


def test_a_reply_with_an_error_is_an_error_whatever_else_it_holds(serve) -> None:
    def answer(req: p.Request) -> dict[str, Any]:
        values = [f"value of {k}" for k in req.keys or []]
        return {
            "value": "a value",
            "values": values,
            "worker": {"id": "w"},
            "error": "internal",
            "message": "internal error; see the worker's log",
        }

    server = serve(answer)
    for call, arg in (("get", K1), ("get_many", [K1, K2]), ("ping", None)):
        outcome = ("ProtocolError", "internal error; see the worker's log")
        assert both_clients(server.endpoint, call, arg) == [outcome] * 2


def test_an_error_reply_without_a_message_is_described_in_plain_words(serve) -> None:
    server = serve(lambda req: {"error": "not_found", "value": "ignored"})
    assert (
        both_clients(server.endpoint, "get", K1)
        == [("KeyNotFound", 'server answered error "not_found" without a message')] * 2
    )
    server = serve(lambda req: {"error": None})
    assert (
        both_clients(server.endpoint, "get", K1)
        == [("ProtocolError", "server answered error nil without a message")] * 2
    )


def test_unknown_reply_fields_are_ignored(serve) -> None:
    extra = {"later": {"nested": [1, 2]}, "trace": "x", "index": 7}

    def answer(req: p.Request) -> dict[str, Any]:
        if req.op == p.OP_PING:
            return {"worker": {"id": "w", "new_field": 1}, **extra}
        return {"values": ["v"] * len(req.keys or []), **extra} if req.op == p.OP_MGET else {"value": "v", **extra}

    server = serve(answer)
    assert both_clients(server.endpoint, "get", K1) == [("value", "v")] * 2
    assert both_clients(server.endpoint, "get_many", [K1, K2]) == [("value", ["v", "v"])] * 2
    assert both_clients(server.endpoint, "ping") == [("value", {"id": "w", "new_field": 1})] * 2


def test_error_classes_do_not_depend_on_reply_field_order() -> None:
    # msgpack maps have an order; a reader must not depend on it.
    for reply in (
        {"error": "not_found", "message": "m", "id": 1, "value": "v"},
        {"value": "v", "id": 1, "message": "m", "error": "not_found"},
    ):
        with pytest.raises(KeyNotFound):
            value_from_reply(reply, K1)
    with pytest.raises(ProtocolError, match="no string value"):
        value_from_reply({"id": 1, "value": None}, K1)


def test_the_default_retry_policy_is_the_one_protocol_md_states() -> None:
    assert [DEFAULT_POLICY.try_timeout(i) for i in range(DEFAULT_POLICY.tries)] == [0.25, 0.5, 1.0, 2.0]
    assert DEFAULT_POLICY.total == 3.75
