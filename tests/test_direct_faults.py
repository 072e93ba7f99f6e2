"""The issue's fault scenario on the direct path: under a checking load of
direct clients, every broker SIGSTOPped for 3 s, then a worker SIGKILLed, then
a new worker started, then (the brokers stopped again) every old worker
killed, leaving the newcomer alone: no lookup lost, none wrong."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from rokv import directory

from support import drivers
from support.procs import DIRECT_BIND, EXAMPLE, Stack, scaled, start_worker, wait_for

pytestmark = pytest.mark.slow

DRIVERS = 3
SECONDS = 18.0


def _listed(stack: Stack) -> set[int]:
    import msgpack
    import zmq

    endpoint = directory.directory_endpoint(stack.frontend)
    assert endpoint is not None
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send(directory.encode_pool_request(1))
        if not sock.poll(1000):
            return set()
        return {entry["pid"] for entry in msgpack.unpackb(sock.recv())["workers"]}
    finally:
        sock.close()


@pytest.mark.parametrize("loop", ["compiled", "python"])
def test_brokers_stopped_workers_killed_and_a_newcomer_alone_lose_nothing(tmp_path: Path, loop: str) -> None:
    stack = Stack(tmp_path, workers=2, pure_python=loop == "python", direct=True)
    newcomer = None
    try:
        stack.wait_ready()
        load = drivers.start_drivers(
            stack.frontend, count=DRIVERS, seconds=SECONDS, min_found=0, client_env={}, extra=["--direct"]
        )
        started = time.monotonic()
        time.sleep(2.0)  # the drivers start and learn the map
        stack.broker.signal(signal.SIGSTOP)  # every broker (this pool has one)
        time.sleep(3.0)
        stack.broker.signal(signal.SIGCONT)
        stack.workers[0].signal(signal.SIGKILL)
        newcomer = start_worker(
            tmp_path, stack.backend, EXAMPLE, *DIRECT_BIND, name="newcomer", pure_python=loop == "python"
        )
        wait_for(lambda: newcomer.pid in _listed(stack), 20, "the newcomer in the broker's map", interval=0.1)
        time.sleep(2.0)  # the clients refresh their map (every second)
        stack.broker.signal(signal.SIGSTOP)
        stack.workers[1].signal(signal.SIGKILL)
        alone_at = time.monotonic() - started
        assert alone_at < SECONDS - 3, "the scenario took too long for the drivers to see its end"
        result = drivers.collect(load, timeout=SECONDS * 4 + 30)
    finally:
        stack.broker.signal(signal.SIGCONT)
        if newcomer is not None:
            newcomer.stop()
        stack.stop()
    print(
        f"\n{loop}: {result['lookups']} lookups, {result['retried']} retried, lost {result['lost']}, "
        f"wrong {result['wrong']}, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.0f} ms; "
        f"alone from {alone_at:.1f} s; direct replies {result['direct_replies']}"
    )
    assert result["wrong"] == 0, result["errors"]
    assert result["lost"] == 0, result["errors"]
    assert result["lookups"] >= scaled(1) * 2000
    newcomer_replies = [
        n for endpoint, n in result["direct_replies"].items() if endpoint in newcomer.log_path.read_text()
    ]
    assert newcomer_replies and sum(newcomer_replies) > 100, result["direct_replies"]
