"""The whole request path through real broker and worker processes."""

from __future__ import annotations

import signal
import time

import msgpack
import pytest
import zmq

from rokv import Client, InvalidKey, KeyNotFound, ServiceUnavailable
from rokv import protocol as p

from support.procs import Stack, free_port, scaled, seen_workers, wait_for

#: Every test on `stack` runs against the compiled loop and the Python one (conftest.py).
BOTH_PATHS = True

MISSING = "11111111-2222-4333-8444-555555555555"


def test_every_key_returns_its_exact_value_through_get(stack: Stack, example: dict[str, str]) -> None:
    with stack.client() as client:
        wrong = [k for k, v in example.items() if client.get(k) != v]
    assert wrong == []


def test_every_key_returns_its_exact_value_through_get_many(stack: Stack, example: dict[str, str]) -> None:
    keys = list(example)
    with stack.client() as client:
        assert client.get_many(keys) == [example[k] for k in keys]
        assert client.get_many(keys[:1]) == [example[keys[0]]]


def test_get_many_is_aligned_with_none_for_missing_keys(stack: Stack, example: dict[str, str]) -> None:
    k1, k2 = list(example)[:2]
    with stack.client() as client:
        assert client.get_many([k2, MISSING, k1.upper(), k2]) == [example[k2], None, example[k1], example[k2]]
        assert client.get_many([]) == []
        assert client.get_many(iter([k1])) == [example[k1]]


def test_get_many_splits_long_lists_into_batches(stack: Stack, example: dict[str, str]) -> None:
    keys = list(example)[:2500] + [MISSING]
    with Client(stack.frontend, batch_size=100) as client:
        assert client.get_many(keys) == [example.get(k) for k in keys]


def test_a_missing_key_raises_key_not_found(stack: Stack) -> None:
    with stack.client() as client:
        with pytest.raises(KeyNotFound) as info:
            client.get(MISSING)
    assert info.value.key == MISSING
    assert MISSING in str(info.value)
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("not-a-key", "is not a UUID"),
        ("8a35eb59-62b3-181c-8875-1f248df4c952", "version 1"),
        (123, "not int"),
        (None, "not nil"),
    ],
)
def test_an_invalid_key_raises_invalid_key_with_the_reason(stack: Stack, key: object, says: str) -> None:
    with stack.client() as client:
        with pytest.raises(InvalidKey, match=says):
            client.get(key)  # type: ignore[arg-type]  # a wrong type on purpose


def test_get_many_with_an_invalid_key_names_it(stack: Stack, example: dict[str, str]) -> None:
    k1 = next(iter(example))
    with stack.client() as client:
        with pytest.raises(InvalidKey) as info:
            client.get_many([k1, MISSING, "bogus"])
        assert info.value.key == "bogus"
        assert "keys[2]" in str(info.value)
        with pytest.raises(InvalidKey, match=r"keys\[1\]: key must be a string"):
            client.get_many([k1, 5])  # type: ignore[list-item]  # a wrong type on purpose


def test_ping_says_which_worker_answered(stack: Stack) -> None:
    with stack.client() as client:
        info = client.ping()
    assert info["keys"] == 10_000
    assert info["id"] in {"worker0", "worker1"}
    assert info["pid"] in {w.pid for w in stack.workers}


def test_ping_reports_the_limits_a_client_must_respect(stack: Stack) -> None:
    with stack.client() as client:
        limits = client.ping()["limits"]
    assert limits == {"max_message_size": 1 << 20, "max_in_flight": 1000, "max_mget_keys": 10_000, "max_key_length": 45}


def test_the_client_is_a_context_manager_and_close_is_idempotent(stack: Stack) -> None:
    client = stack.client()
    with client:
        client.ping()
    client.close()
    with pytest.raises(Exception, match="closed"):
        client.ping()


def raw_socket(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = int(scaled(3000))
    sock.connect(endpoint)
    return sock


def test_a_client_with_another_protocol_version_gets_unsupported_version(stack: Stack) -> None:
    sock = raw_socket(stack.frontend)
    try:
        sock.send(msgpack.packb({"v": 2, "id": 77, "op": "get", "key": MISSING}))
        reply = msgpack.unpackb(sock.recv())
    finally:
        sock.close()
    assert reply["id"] == 77
    assert reply["error"] == "unsupported_version"
    assert "version 2" in reply["message"]


def test_a_late_reply_to_an_abandoned_request_is_never_returned(make_stack, example: dict[str, str]) -> None:
    stack: Stack = make_stack(workers=1).wait_ready()
    first, second = list(example)[:2]
    worker = stack.workers[0]
    with Client(stack.frontend, timeout=0.3, retries=0) as client:
        worker.signal(signal.SIGSTOP)
        try:
            with pytest.raises(ServiceUnavailable):
                client.get(first)
        finally:
            worker.signal(signal.SIGCONT)
        # The stopped worker now answers the abandoned request; that reply
        # reaches this socket first and must be dropped.
        assert client.get(second) == example[second]
        assert client.get(first) == example[first]


def test_retries_recover_requests_held_by_a_stalled_worker(make_stack, example: dict[str, str]) -> None:
    stack: Stack = make_stack(workers=2).wait_ready()
    keys = list(example)[:20]
    stack.workers[0].signal(signal.SIGSTOP)
    try:
        with Client(stack.frontend, timeout=0.3, retries=3) as client:
            assert [client.get(k) for k in keys] == [example[k] for k in keys]
    finally:
        stack.workers[0].signal(signal.SIGCONT)


def test_no_service_means_service_unavailable_within_the_timeouts() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Client(endpoint, timeout=0.1, retries=2) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="3 tries"):
            client.get(MISSING)
        assert time.monotonic() - started < scaled(2)


def test_the_broker_stops_routing_to_a_stopped_worker(make_stack, example: dict[str, str]) -> None:
    stack: Stack = make_stack(workers=2).wait_ready()
    keys = list(example)[:40]
    stack.workers[0].signal(signal.SIGSTOP)
    try:
        # ZMTP heartbeats drop the stopped worker within HEARTBEAT_TIMEOUT_MS;
        # from then on no request is routed to it, so no try times out.
        time.sleep((p.HEARTBEAT_IVL_MS + p.HEARTBEAT_TIMEOUT_MS) / 1000 + scaled(1))
        with Client(stack.frontend, timeout=scaled(1.0), retries=0) as client:
            answers = [client.get(k) for k in keys]
            assert {client.ping()["id"] for _ in range(10)} == {"worker1"}
        assert answers == [example[k] for k in keys]
    finally:
        stack.workers[0].signal(signal.SIGCONT)
    # Once resumed, it reconnects and takes its share again.
    assert len(seen_workers(stack.frontend, 2)) == 2


def test_the_workers_answer_through_the_path_under_test(stack: Stack) -> None:
    # Which loop answers is said once in each worker's log (rokv.worker.native).
    from rokv.worker import native

    wanted = "pure-Python path in use" if stack.pure_python or native.load() is None else "compiled hot path in use"
    for worker in stack.workers:
        wait_for(lambda w=worker: wanted in w.log(), 10, f"{worker.name} to say '{wanted}'")
