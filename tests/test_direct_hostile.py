"""Hostile and careless clients straight at a worker's direct endpoint: the
worker keeps answering, and its memory stays bounded (test_hostile.py's
barrage, aimed past the broker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from test_hostile import Checker, K, barrage_messages, raw_socket, rss_mb

from rokv import Client
from rokv import protocol as p

from support.procs import Stack, scaled, wait_for


@pytest.fixture()
def direct_stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, workers=1, direct=True)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def test_a_raw_barrage_at_the_direct_endpoint_harms_nothing(direct_stack: Stack, example: dict[str, str]) -> None:
    stack = direct_stack
    (worker,) = stack.workers
    with Client(stack.frontend, direct=True) as warm:
        warm.get_many(list(example)[:1000])
    before = rss_mb(worker.pid)
    checker = Checker(stack.frontend, example)  # through the broker, to the same worker, meanwhile
    checker.start()
    ctx = zmq.Context()
    try:
        socks = [raw_socket(stack.raw_endpoint, ctx) for _ in range(6)]
        messages = barrage_messages()
        socks[0].send(msgpack.packb({"v": 1, "id": 3, "op": "mget", "keys": [K] * 1_000_000}))
        deadline = time.monotonic() + scaled(15)
        for round_ in range(20):
            for i, sock in enumerate(socks[1:]):
                sock.send_multipart(messages[(round_ + i) % len(messages)])
            if time.monotonic() > deadline:
                break
        time.sleep(scaled(1.0))
        for sock in socks:
            sock.close()
    finally:
        ctx.destroy(linger=0)
        time.sleep(scaled(0.5))
        checker.stop.set()
        checker.join(scaled(30))
    assert checker.failures == []
    assert checker.done > 50
    with Client(stack.frontend, direct=True) as client:
        keys = list(example)[:2000]
        assert client.get_many(keys) == [example[k] for k in keys]
        assert client._workers is not None and client._workers.links[0].replies >= 2
    growth = rss_mb(worker.pid) - before
    assert growth < 64, growth


def test_a_direct_client_that_never_reads_costs_the_worker_bounded_memory(
    direct_stack: Stack, example: dict[str, str]
) -> None:
    (worker,) = direct_stack.workers
    baseline = rss_mb(worker.pid)
    ctx = zmq.Context()
    try:
        sock = raw_socket(direct_stack.raw_endpoint, ctx)
        sock.rcvhwm = 10  # and never recv: the worker's ROUTER drops what does not fit
        request = p.encode_request(1, p.OP_MGET, list(example)[:100])
        for _ in range(20_000):
            sock.send(request)
        with Client(direct_stack.frontend, direct=True, timeout=scaled(2.0)) as client:
            assert client.get(next(iter(example))) == example[next(iter(example))]
        wait_for(lambda: rss_mb(worker.pid) < baseline + 64, 20, "worker memory to stay bounded")
        sock.close()
    finally:
        ctx.destroy(linger=0)
    assert rss_mb(worker.pid) < baseline + 64
