"""Several brokers on one host (loopback): clients spread over them and fail
over, workers serve each through its own socket. The same with real hosts cut
off from the network is tests/test_hosts.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rokv import AsyncClient, Client, RetryPolicy

from support.procs import REPO, Proc, child_env, free_port, scaled, seen_workers, start_broker, start_worker, wait_for


class TwoBrokers:
    """Brokers A and B (B started only on demand) and workers connected to both."""

    def __init__(self, log_dir: Path, workers: int = 2, start_b: bool = True) -> None:
        self.log_dir = log_dir
        self.fa, self.ba, self.fb, self.bb = (f"tcp://127.0.0.1:{free_port()}" for _ in range(4))
        self.a: Proc | None = start_broker(log_dir, self.fa, self.ba, name="broker-a")
        self.b: Proc | None = start_broker(log_dir, self.fb, self.bb, name="broker-b") if start_b else None
        self.workers = [start_worker(log_dir, f"{self.ba},{self.bb}", name=f"worker{i}") for i in range(workers)]

    @property
    def endpoints(self) -> list[str]:
        return [self.fa, self.fb]

    def start_b(self) -> None:
        self.b = start_broker(self.log_dir, self.fb, self.bb, name="broker-b")

    def stop(self) -> None:
        for proc in [*self.workers, self.a, self.b]:
            if proc is not None:
                proc.stop()


@pytest.fixture()
def pool(tmp_path: Path) -> Iterator[TwoBrokers]:
    made = TwoBrokers(tmp_path)
    try:
        seen_workers(made.fa, 2)
        seen_workers(made.fb, 2)
        yield made
    finally:
        made.stop()


def timed_gets(client: Client, keys: list[str], example: dict[str, str]) -> float:
    """Look every key up, checking each answer; the slowest call, in seconds."""
    worst = 0.0
    for key in keys:
        started = time.monotonic()
        assert client.get(key) == example[key]
        worst = max(worst, time.monotonic() - started)
    return worst


def test_requests_spread_over_every_broker(pool: TwoBrokers, example: dict[str, str]) -> None:
    keys = list(example)[:400]
    # Long tries: on a loaded machine a try that times out makes its broker
    # suspect for a while, which is right, but not what is measured here.
    patient = RetryPolicy(timeout=scaled(5), retries=1)
    with Client(pool.endpoints, retry=patient) as client:
        timed_gets(client, keys, example)
        time.sleep(0.1)  # both connections are surely up now
        assert client._brokers is not None
        before = list(client._brokers.replies)
        timed_gets(client, keys, example)
        spread = [after - was for after, was in zip(client._brokers.replies, before)]
        assert min(spread) > 150, spread

    async def main() -> list[int]:
        async with AsyncClient(",".join(pool.endpoints), coalesce=False, retry=patient) as aclient:
            for _ in range(4):
                assert await asyncio.gather(*(aclient.get(k) for k in keys)) == [example[k] for k in keys]
            assert aclient._brokers is not None
            return aclient._brokers.replies

    assert min(asyncio.run(asyncio.wait_for(main(), scaled(60)))) > 100


def test_a_client_given_a_broker_that_was_never_up_works_at_full_speed_from_its_first_call(
    tmp_path: Path, example: dict[str, str]
) -> None:
    pool = TwoBrokers(tmp_path, start_b=False)
    try:
        seen_workers(pool.fa, 2)
        keys = list(example)[:300]
        # A call that waited out a try would take at least its timeout.
        policy = RetryPolicy(timeout=scaled(1.0), retries=3)
        for endpoints in (pool.endpoints, pool.endpoints[::-1]):
            with Client(endpoints, retry=policy) as client:
                # No call may have waited out a try: none was sent to B.
                assert timed_gets(client, keys, example) < 0.9 * policy.timeout

        async def main() -> float:
            worst = 0.0
            async with AsyncClient(pool.endpoints[::-1], retry=policy) as aclient:
                for key in keys[:50]:
                    started = time.monotonic()
                    assert await aclient.get(key) == example[key]
                    worst = max(worst, time.monotonic() - started)
                assert await asyncio.gather(*(aclient.get(k) for k in keys)) == [example[k] for k in keys]
            return worst

        assert asyncio.run(asyncio.wait_for(main(), scaled(60))) < 0.9 * policy.timeout
    finally:
        pool.stop()


def test_a_worker_joins_a_broker_that_appears_after_it_started(tmp_path: Path, example: dict[str, str]) -> None:
    pool = TwoBrokers(tmp_path, start_b=False)
    try:
        key = next(iter(example))
        with Client(pool.fa, timeout=1, retries=5) as client:
            assert client.get(key) == example[key]  # serving A while B is down
        pool.start_b()
        assert seen_workers(pool.fb, 2, timeout=30) == {"worker0", "worker1"}
        with Client(pool.fb, timeout=1, retries=2) as client:
            assert client.get_many(list(example)[:100]) == [example[k] for k in list(example)[:100]]
        for worker in pool.workers:
            assert "connected to broker " + pool.bb in worker.log()
    finally:
        pool.stop()


def test_a_killed_broker_costs_a_call_at_most_one_try_and_workers_rejoin_its_successor(
    pool: TwoBrokers, example: dict[str, str]
) -> None:
    keys = list(example)[:300]
    policy = RetryPolicy(timeout=0.25, retries=3)
    with Client(pool.endpoints, retry=policy) as client:
        timed_gets(client, keys, example)
        assert pool.a is not None
        pool.a.signal(signal.SIGKILL)
        pool.a.popen.wait(10)
        # Every call is answered, none after more than one try's timeout.
        # One lost try costs 0.25 s and its retry answers; two would cost 0.75 s and more.
        assert timed_gets(client, keys, example) < 0.7
        # A new broker A: workers rejoin it without a restart.
        pool.a = start_broker(pool.log_dir, pool.fa, pool.ba, name="broker-a2")
        assert seen_workers(pool.fa, 2, timeout=30) == {"worker0", "worker1"}
        assert client._brokers is not None
        before = list(client._brokers.replies)
        timed_gets(client, keys, example)
        wait_for(
            lambda: client.get(keys[0]) and client._brokers is not None and client._brokers.replies[0] > before[0] + 50,
            10,
            "broker A to carry traffic again",
        )
    for worker in pool.workers:
        assert worker.popen.poll() is None


def test_a_broker_given_a_list_of_backends_asks_for_the_one_it_binds() -> None:
    # ROKV_BACKEND lists every broker for the workers of a host; the broker
    # of a host that runs both must be told which one it binds.
    env = child_env(
        ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}",
        ROKV_FRONTEND=f"tcp://127.0.0.1:{free_port()}",
    )
    result = subprocess.run(
        [sys.executable, "-m", "rokv.broker"], env=env, cwd=REPO, capture_output=True, text=True, timeout=scaled(30)
    )
    assert result.returncode == 2
    assert "set ROKV_BROKER_BACKEND" in result.stderr
