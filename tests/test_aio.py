"""AsyncClient: the same answers and errors as Client over the same service,
timeouts and retries, cancellation, coalescing of concurrent gets."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from rokv import AsyncClient, Client, InvalidKey, KeyNotFound, RetryPolicy, RokvError, ServiceUnavailable
from rokv import protocol as p
from rokv.core import DEFAULT_POLICY
from rokv.worker.handler import Handler

from support.procs import Stack, free_port, scaled
from support.routers import ServingRouter

#: Every test on `stack` runs against the compiled loop and the Python one (conftest.py).
BOTH_PATHS = True

MISSING = "11111111-2222-4333-8444-555555555555"


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), scaled(60)))


def outcome_sync(client: Client, key: object) -> tuple:
    try:
        return ("value", client.get(key))  # type: ignore[arg-type]  # a wrong type on purpose
    except (KeyNotFound, InvalidKey) as exc:
        return (type(exc).__name__, str(exc), exc.key)


async def outcome_async(client: AsyncClient, key: object) -> tuple:
    try:
        return ("value", await client.get(key))  # type: ignore[arg-type]  # a wrong type on purpose
    except (KeyNotFound, InvalidKey) as exc:
        return (type(exc).__name__, str(exc), exc.key)


def tricky_keys(example: dict[str, str]) -> list[object]:
    k1, k2 = list(example)[:2]
    return [
        k1,
        k2,
        k1.upper(),
        "{" + k1 + "}",
        "urn:uuid:" + k2,
        k1.replace("-", ""),
        MISSING,
        MISSING.upper(),
        "not-a-key",
        "8a35eb59-62b3-181c-8875-1f248df4c952",
        "8a35eb59-62b3-481c-c875-1f248df4c952",
        " " + k1,
        "",
        123,
        None,
        b"bytes",
        ["list"],
    ]


@pytest.mark.parametrize("coalesce", [True, False])
def test_every_key_returns_its_exact_value(stack: Stack, example: dict[str, str], coalesce: bool) -> None:
    keys = list(example)

    async def main() -> list[str]:
        async with AsyncClient(stack.frontend, coalesce=coalesce) as client:
            return list(await asyncio.gather(*(client.get(k) for k in keys)))

    assert run(main) == [example[k] for k in keys]


@pytest.mark.parametrize("coalesce", [True, False])
def test_answers_and_errors_match_the_blocking_client(stack: Stack, example: dict[str, str], coalesce: bool) -> None:
    keys = tricky_keys(example)
    with stack.client() as client:
        expected = [outcome_sync(client, k) for k in keys]

    async def main() -> tuple[list, list]:
        async with AsyncClient(stack.frontend, coalesce=coalesce) as client:
            one_by_one = [await outcome_async(client, k) for k in keys]
            together = list(await asyncio.gather(*(outcome_async(client, k) for k in keys)))
            return one_by_one, together

    one_by_one, together = run(main)
    assert one_by_one == expected
    assert together == expected
    # Sanity: the list holds hits, misses and invalid keys alike.
    assert {e[0] for e in expected} == {"value", "KeyNotFound", "InvalidKey"}


def test_get_many_matches_the_blocking_client_across_batches(stack: Stack, example: dict[str, str]) -> None:
    keys = list(example)[:2500] + [MISSING, list(example)[0].upper()]
    bad = keys[:1500] + ["bogus"] + keys[1500:] + ["also-bogus"]
    with Client(stack.frontend, batch_size=100) as client:
        expected = client.get_many(keys)
        with pytest.raises(InvalidKey) as sync_info:
            client.get_many(bad)

    async def main() -> tuple[list, InvalidKey]:
        async with AsyncClient(stack.frontend, batch_size=100) as client:
            values = await client.get_many(keys)
            assert await client.get_many([]) == []
            with pytest.raises(InvalidKey) as info:
                await client.get_many(bad)
            with pytest.raises(InvalidKey, match=r"keys\[1\]: key must be a string"):
                await client.get_many([keys[0], 5])  # type: ignore[list-item]  # a wrong type on purpose
            return values, info.value

    values, error = run(main)
    assert values == expected == [example.get(k.lower()) for k in keys]
    # The index is the one in the caller's list, not in the batch of 100.
    assert str(error) == str(sync_info.value)
    assert str(error).startswith("keys[1500]: ")
    assert error.key == sync_info.value.key == "bogus"


def test_ping_and_close(stack: Stack) -> None:
    async def main() -> None:
        client = AsyncClient(stack.frontend)
        info = await client.ping()
        assert info["keys"] == 10_000 and info["pid"] in {w.pid for w in stack.workers}
        await client.close()
        await client.close()
        with pytest.raises(RokvError, match="closed"):
            await client.ping()
        with pytest.raises(RokvError, match="closed"):
            await client.get(MISSING)

    run(main)


def test_thousands_of_requests_in_flight_on_one_socket(stack: Stack, example: dict[str, str]) -> None:
    keys = list(example)[:5000]

    async def main() -> list[str]:
        async with AsyncClient(stack.frontend, coalesce=False) as client:
            return list(await asyncio.gather(*(client.get(k) for k in keys)))

    assert run(main) == [example[k] for k in keys]


def test_no_service_means_service_unavailable_within_the_timeouts() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"

    async def main() -> None:
        for coalesce in (True, False):
            async with AsyncClient(endpoint, timeout=0.1, retries=2, coalesce=coalesce) as client:
                started = time.monotonic()
                results = await asyncio.gather(
                    client.get(MISSING), client.ping(), client.get_many([MISSING]), return_exceptions=True
                )
                assert time.monotonic() - started < scaled(2)
                for result in results:
                    assert isinstance(result, ServiceUnavailable) and "3 tries" in str(result)

    run(main)


def test_retries_recover_requests_held_by_a_stalled_worker(make_stack, example: dict[str, str]) -> None:
    stack: Stack = make_stack(workers=2).wait_ready()
    keys = list(example)[:40]

    # Concurrent requests are spread over both workers on every try; the
    # growing timeouts outlast the broker's heartbeat timeout, after which it
    # routes only to the live worker.
    policy = RetryPolicy(timeout=0.3, retries=4, backoff=2)

    async def main() -> tuple[list, list]:
        async with (
            AsyncClient(stack.frontend, retry=policy, coalesce=False) as plain,
            AsyncClient(stack.frontend, retry=policy, max_batch=5) as batched,
        ):
            return (
                list(await asyncio.gather(*(plain.get(k) for k in keys))),
                list(await asyncio.gather(*(batched.get(k) for k in keys))),
            )

    stack.workers[0].signal(signal.SIGSTOP)
    try:
        plain, batched = run(main)
    finally:
        stack.workers[0].signal(signal.SIGCONT)
    assert plain == batched == [example[k] for k in keys]


def test_cancelled_and_abandoned_calls_leave_the_client_usable(make_stack, example: dict[str, str]) -> None:
    stack: Stack = make_stack(workers=1).wait_ready()
    first, second, third = list(example)[:3]
    worker = stack.workers[0]

    async def main() -> None:
        for coalesce in (False, True):
            async with AsyncClient(stack.frontend, timeout=0.3, retries=0, coalesce=coalesce) as client:
                worker.signal(signal.SIGSTOP)
                try:
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(client.get(first), 0.1)
                    with pytest.raises(ServiceUnavailable):
                        await client.get(second)
                finally:
                    worker.signal(signal.SIGCONT)
                # The woken worker now answers both abandoned requests; those
                # replies reach this socket first and must be dropped.
                assert await client.get(third) == example[third]
                assert await client.get(first) == example[first]
                assert await client.get_many([second, MISSING]) == [example[second], None]

    run(main)


class FakeWorker(ServingRouter):
    """A ROUTER standing in for broker + worker, answering with the worker's
    own Handler, that counts the requests it sees and can ignore the first
    tries: it shows what travels on the wire."""

    def __init__(self, data: dict[str, str], drop_first: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self._handler = Handler(data, worker_id="fake", dataset="-")
        self._drop = drop_first
        super().__init__()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(20):
                continue
            frames = self._sock.recv_multipart()
            self.requests.append(dataclasses.asdict(p.decode_request(frames[1])) if len(frames) == 2 else {})
            if self._drop > 0:
                self._drop -= 1
                continue
            reply = self._handler.handle(frames)
            if reply is not None:
                self._sock.send_multipart(reply)


@pytest.fixture()
def fake(example: dict[str, str]) -> Iterator[Callable[..., FakeWorker]]:
    made: list[FakeWorker] = []

    def make(**kwargs: int) -> FakeWorker:
        made.append(FakeWorker(example, **kwargs))
        return made[-1]

    yield make
    for f in made:
        f.close()


def test_concurrent_gets_travel_as_one_mget_and_each_caller_gets_its_own_answer(fake, example: dict[str, str]) -> None:
    server = fake()
    hits = list(example)[:50]
    keys: list[object] = [*hits, MISSING, hits[3].upper(), "bogus", 7, hits[0]]

    async def main() -> list:
        async with AsyncClient(server.endpoint) as client:
            return list(await asyncio.gather(*(outcome_async(client, k) for k in keys)))

    results = run(main)
    assert results[:50] == [("value", example[k]) for k in hits]
    assert results[50] == ("KeyNotFound", f"key {MISSING} not found", MISSING)
    assert results[51] == ("value", example[hits[3]])
    assert results[52][0] == results[53][0] == "InvalidKey"
    assert results[54] == ("value", example[hits[0]])
    # The invalid keys failed locally; the 53 valid ones went as one mget.
    assert [(r["op"], len(r["keys"] or [])) for r in server.requests] == [("mget", 53)]


def test_coalescing_obeys_max_batch_max_delay_and_the_off_switch(fake, example: dict[str, str]) -> None:
    keys = list(example)[:100]

    async def gather_gets(client: AsyncClient) -> list[str]:
        return list(await asyncio.gather(*(client.get(k) for k in keys)))

    async def staggered(client: AsyncClient) -> list[str]:
        async def later(i: int, key: str) -> str:
            await asyncio.sleep(0.001 * (i % 3))  # spread over several loop turns
            return await client.get(key)

        return list(await asyncio.gather(*(later(i, k) for i, k in enumerate(keys))))

    expected = [example[k] for k in keys]
    by_30 = fake()
    off = fake()
    delayed = fake()

    async def main() -> None:
        async with AsyncClient(by_30.endpoint, max_batch=30) as client:
            assert await gather_gets(client) == expected
        async with AsyncClient(off.endpoint, coalesce=False) as client:
            assert await gather_gets(client) == expected
        async with AsyncClient(delayed.endpoint, max_delay=0.2) as client:
            assert await staggered(client) == expected

    run(main)
    assert [len(r["keys"]) for r in by_30.requests] == [30, 30, 30, 10]
    assert [r["op"] for r in off.requests] == ["get"] * 100
    assert [len(r["keys"]) for r in delayed.requests] == [100]


def test_a_retry_resends_the_same_request_id(fake, example: dict[str, str]) -> None:
    server = fake(drop_first=2)
    key = next(iter(example))

    async def main() -> None:
        async with AsyncClient(server.endpoint, retry=RetryPolicy(timeout=0.1, retries=2), coalesce=False) as client:
            assert await client.get(key) == example[key]

    run(main)
    assert len(server.requests) == 3
    assert len({r["request_id"] for r in server.requests}) == 1


def test_of_one_burst_only_the_unanswered_requests_are_resent(fake, example: dict[str, str]) -> None:
    # The ten gets leave in one burst and share one deadline; the server
    # ignores the first three, so exactly those three go again, once.
    server = fake(drop_first=3)
    keys = list(example)[:10]

    async def main() -> list[str]:
        async with AsyncClient(server.endpoint, retry=RetryPolicy(timeout=0.2, retries=2), coalesce=False) as client:
            return list(await asyncio.gather(*(client.get(k) for k in keys)))

    assert run(main) == [example[k] for k in keys]
    first, resent = server.requests[:10], server.requests[10:]
    assert len(first) == 10 and len(resent) == 3
    assert [r["request_id"] for r in resent] == [r["request_id"] for r in first[:3]]


def test_retry_policy_is_validated_and_shared_by_both_clients() -> None:
    policy = RetryPolicy(timeout=0.5, retries=3, backoff=2, max_timeout=1.5)
    assert [policy.try_timeout(i) for i in range(policy.tries)] == [0.5, 1.0, 1.5, 1.5]
    assert policy.total == 4.5
    assert "0.5 to 1.5 s on 4 tries" in str(policy.unavailable("tcp://x:1"))
    for bad in ({"timeout": 0}, {"retries": -1}, {"retries": True}, {"backoff": 0.5}, {"max_timeout": 0.1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]  # a wrong type on purpose
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Client(endpoint, retry=policy) as client:
        assert (client.timeout, client.retries, client.retry) == (0.5, 3, policy)
    assert AsyncClient(endpoint, retry=policy).retry is policy
    # timeout=/retries= mean the same wait for every try.
    assert Client(endpoint, timeout=0.2, retries=1).retry == RetryPolicy(timeout=0.2, retries=1, backoff=1)
    # RetryPolicy() is the documented default: 0.25, 0.5, 1, 2 s.
    assert Client(endpoint).retry == RetryPolicy() == DEFAULT_POLICY
    assert [RetryPolicy().try_timeout(i) for i in range(RetryPolicy().tries)] == [0.25, 0.5, 1, 2]
    with pytest.raises(ValueError, match="not both"):
        Client(endpoint, retry=policy, timeout=1.0)
    with pytest.raises(ValueError):
        AsyncClient(endpoint, max_batch=0)
    with pytest.raises(ValueError):
        AsyncClient("nonsense")


def test_twenty_thousand_concurrent_gets_on_one_socket_need_no_retry(stack: Stack, example: dict[str, str]) -> None:
    # A socket with more unanswered requests than the broker queues replies
    # for used to lose some (200-1,100 of 5,000-20,000): only retries
    # recovered them. With no retry allowed, every call must be answered.
    keys = [list(example)[i % len(example)] for i in range(20_000)]

    async def main() -> list[str]:
        async with AsyncClient(
            stack.frontend, coalesce=False, retry=RetryPolicy(timeout=scaled(20), retries=0)
        ) as client:
            return list(await asyncio.gather(*(client.get(k) for k in keys)))

    assert run(main) == [example[k] for k in keys]


class HoldingServer(ServingRouter):
    """A ROUTER that takes requests without answering for ``hold`` seconds,
    then answers all of them, and so on: ``largest`` is the most requests a
    client had unanswered at once."""

    def __init__(self, data: dict[str, str], hold: float = 0.3) -> None:
        self.largest = 0
        self._handler = Handler(data, worker_id="holding", dataset="-")
        self._hold = hold
        super().__init__(unbounded=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            held = []
            until = time.monotonic() + self._hold
            while time.monotonic() < until:
                if self._sock.poll(10):
                    held.append(self._sock.recv_multipart())
            self.largest = max(self.largest, len(held))
            for frames in held:
                self._sock.send_multipart(self._handler.handle(frames))


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_client_never_has_more_than_max_in_flight_requests_unanswered(example: dict[str, str], kind: str) -> None:
    server = HoldingServer(example)
    keys = [list(example)[i % len(example)] for i in range(2_500)]
    policy = RetryPolicy(timeout=scaled(10), retries=0)  # held requests must not be on the clock
    try:
        if kind == "async":

            async def main() -> list[str]:
                async with AsyncClient(server.endpoint, coalesce=False, retry=policy) as client:
                    return list(await asyncio.gather(*(client.get(k) for k in keys)))

            values = run(main)
        else:
            with Client(server.endpoint, retry=policy, batch_size=1) as client:
                values = client.get_many(keys)
    finally:
        server.close()
    assert values == [example[k] for k in keys]
    assert server.largest == p.MAX_IN_FLIGHT
