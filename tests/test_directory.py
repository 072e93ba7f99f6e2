"""The brokers' directory of the pool: workers report through their broker
connection, clients ask for the map in one round trip (rokv.directory)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from rokv import directory
from rokv import protocol as p

from support.procs import Stack, free_port, scaled, start_broker, wait_for


@pytest.fixture()
def pool(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, direct=True)
    try:
        s.wait_ready()
        wait_for(lambda: len(the_map(s)) == 2, 5, "both workers in the map")
        yield s
    finally:
        s.stop()


def ask(endpoint: str, body: bytes | None = None, frames: list[bytes] | None = None) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames or [body or directory.encode_pool_request(1)])
        assert sock.poll(scaled(2000)), "the directory did not answer"
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close()


def the_map(stack: Stack) -> list[dict]:
    endpoint = directory.directory_endpoint(stack.frontend)
    assert endpoint is not None
    reply = ask(endpoint)
    assert reply["id"] == 1 and reply["refresh"] == directory.REFRESH_SECONDS
    return reply["workers"]


def test_the_map_lists_every_worker_with_its_direct_endpoint(pool: Stack) -> None:
    entries = wait_for(lambda: len(the_map(pool)) == 2 and the_map(pool), 5, "two workers in the map")
    by_id = {e["id"]: e for e in entries}
    assert {k: v["endpoint"] for k, v in by_id.items()} == pool.directs
    pids = {w.pid for w in pool.workers}
    for entry in entries:
        assert entry["pid"] in pids and entry["keys"] == 10_000 and entry["host"]
        assert entry["digest"] is None and entry["curve_key"] is None
        assert 0 <= entry["age"] < 1.0


def test_a_killed_worker_leaves_the_map_within_two_seconds_and_a_stopped_one_at_once(pool: Stack) -> None:
    wait_for(lambda: len(the_map(pool)) == 2, 5, "two workers in the map")
    killed = pool.workers[0]
    killed.signal(9)
    started = time.monotonic()
    wait_for(lambda: len(the_map(pool)) == 1, 3, "the killed worker to leave the map", interval=0.02)
    assert time.monotonic() - started < 2.0
    assert killed.pid not in {e["pid"] for e in the_map(pool)}
    started = time.monotonic()
    assert pool.workers[1].stop() == 0
    wait_for(lambda: not the_map(pool), 2, "the stopped worker to leave the map", interval=0.02)
    assert time.monotonic() - started < 1.5  # its goodbye, not the expiry


@pytest.mark.parametrize(
    ("frames", "code", "rid"),
    [
        ([b"junk"], p.BAD_REQUEST, None),
        ([msgpack.packb([1, 2])], p.BAD_REQUEST, None),
        ([msgpack.packb({"v": 1, "op": "pool"})], p.BAD_REQUEST, None),
        ([msgpack.packb({"v": 2, "id": 4, "op": "pool"})], p.UNSUPPORTED_VERSION, 4),
        ([msgpack.packb({"v": 1, "id": 5, "op": "get", "key": "x"})], p.BAD_REQUEST, 5),
        ([b"a", b"b"], p.BAD_REQUEST, None),
    ],
)
def test_the_directory_refuses_what_is_not_a_pool_request(pool: Stack, frames, code: str, rid) -> None:
    endpoint = directory.directory_endpoint(pool.frontend)
    assert endpoint is not None
    reply = ask(endpoint, frames=frames)
    assert reply["error"] == code and reply["id"] == rid
    assert len(the_map(pool)) == 2  # and serves on


def test_forged_reports_from_a_backend_peer_are_ignored_and_good_ones_listed(pool: Stack) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(pool.backend)
    good = {
        "id": "fake",
        "endpoint": "tcp://127.0.0.1:1",
        "host": "h",
        "pid": 1,
        "digest": None,
        "keys": 3,
        "curve_key": None,
    }
    try:
        for body in (
            b"junk",
            msgpack.packb({"v": 1, "op": "report", "worker": {**good, "endpoint": "tcp://nohost"}}),
            msgpack.packb({"v": 1, "op": "report", "worker": {**good, "pid": "1"}}),
            msgpack.packb({"v": 1, "op": "report", "worker": {**good, "id": "x" * 300}}),
            msgpack.packb({"v": 1, "op": "report", "worker": {**good, "endpoint": "tcp://127.0.0.1:2"}}),
        ):
            sock.send_multipart([directory.DIRECTORY_ROUTE, body])
        entries = wait_for(lambda: [e for e in the_map(pool) if e["id"] == "fake"], 3, "the good report in the map")
        assert [e["endpoint"] for e in entries] == ["tcp://127.0.0.1:2"]
        sock.send_multipart([directory.DIRECTORY_ROUTE, directory.encode_report(good, leaving=True)])
        wait_for(lambda: not [e for e in the_map(pool) if e["id"] == "fake"], 3, "the goodbye")
    finally:
        sock.close()
    assert "ignored a bad report" in pool.broker.log()


def test_the_directory_port_derives_from_the_frontend() -> None:
    assert directory.directory_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5557"
    assert directory.directory_endpoint("tcp://*:7000") == "tcp://*:7002"
    assert directory.directory_endpoint("tcp://[::1]:5555") == "tcp://[::1]:5557"
    assert directory.directory_endpoint("ipc:///tmp/b") == "ipc:///tmp/b.directory"
    assert directory.directory_endpoint("tcp://h:65534") is None


def test_a_taken_default_directory_port_leaves_the_broker_serving(tmp_path: Path) -> None:
    taken = zmq.Context.instance().socket(zmq.ROUTER)
    taken.linger = 0
    port = taken.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=60000)
    try:
        frontend = f"tcp://127.0.0.1:{port - directory.DIRECTORY_PORT_OFFSET}"
        broker = start_broker(tmp_path, frontend, f"tcp://127.0.0.1:{free_port()}")
        try:
            wait_for(lambda: "no directory" in broker.log(), 10, "the broker's warning")
            assert broker.popen.poll() is None
        finally:
            assert broker.stop() == 0
    finally:
        taken.close()
