"""Clients that go straight to the workers (direct=True): the same answers as
the brokered path, spread over the workers, and the map followed as the pool
changes (rokv.workerset)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from rokv import AsyncClient, Client, InvalidKey, KeyNotFound, workerset
from rokv.gateway.settings import SettingError, Settings
from rokv.workerset import Link, Workers

from support.procs import DIRECT_BIND, EXAMPLE, REPO, Stack, child_env, scaled, start_worker, wait_for

MISSING = "11111111-2222-4333-8444-555555555555"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("pool"), direct=True)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture()
def own_pool(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, direct=True)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def links(client: Client | AsyncClient) -> dict[str, int]:
    assert client._workers is not None
    return {link.endpoint: link.replies for link in client._workers.links}


def test_a_direct_client_answers_like_a_brokered_one_and_spreads_over_the_workers(
    pool: Stack, example: dict[str, str]
) -> None:
    keys = list(example)[:300]
    with Client(pool.frontend, direct=True) as direct, Client(pool.frontend) as brokered:
        for key in keys:
            assert direct.get(key) == brokered.get(key) == example[key]
        assert direct.get_many([*keys, MISSING]) == brokered.get_many([*keys, MISSING])
        for bad in (MISSING, "nope", 7):
            with pytest.raises((KeyNotFound, InvalidKey)) as direct_error:
                direct.get(bad)  # type: ignore[arg-type]
            with pytest.raises((KeyNotFound, InvalidKey)) as brokered_error:
                brokered.get(bad)  # type: ignore[arg-type]
            assert type(direct_error.value) is type(brokered_error.value)
            assert str(direct_error.value) == str(brokered_error.value)
        with pytest.raises(InvalidKey) as direct_error:
            direct.get_many([keys[0], "bad"])
        assert direct_error.value.index == 1
        assert direct.ping()["direct"] in pool.directs.values()
        spread = links(direct)
    assert set(spread) == set(pool.directs.values())
    assert all(n > 50 for n in spread.values()), spread


def test_a_direct_async_client_answers_like_a_brokered_one(pool: Stack, example: dict[str, str]) -> None:
    keys = list(example)[:500]

    async def run() -> tuple[list, list, dict[str, int]]:
        async with AsyncClient(pool.frontend, direct=True) as direct, AsyncClient(pool.frontend) as brokered:
            await direct.get(keys[0])
            await asyncio.sleep(0.1)  # the map arrives
            got = await asyncio.gather(*(direct.get(k) for k in keys))
            many = await direct.get_many([*keys, MISSING])
            assert many == await brokered.get_many([*keys, MISSING])
            with pytest.raises(KeyNotFound) as missing:
                await direct.get(MISSING)
            assert "not found" in str(missing.value)
            with pytest.raises(InvalidKey):
                await direct.get("nope")
            for _ in range(20):
                await direct.get_many(keys[:10])
            return got, many, links(direct)

    got, many, spread = asyncio.run(run())
    assert got == [example[k] for k in keys]
    assert many[-1] is None
    assert set(spread) == set(pool.directs.values()) and all(spread.values()), spread


def test_workers_without_a_direct_endpoint_are_reached_through_the_brokers(
    tmp_path: Path, example: dict[str, str]
) -> None:
    s = Stack(tmp_path, direct=False)
    try:
        s.wait_ready()
        key = next(iter(example))
        with Client(s.frontend, direct=True) as client:
            assert [client.get(key) for _ in range(20)] == [example[key]] * 20
            assert links(client) == {}

        async def run() -> list[str]:
            async with AsyncClient(s.frontend, direct=True) as aclient:
                return await asyncio.gather(*(aclient.get(key) for _ in range(20)))

        assert asyncio.run(run()) == [example[key]] * 20
    finally:
        s.stop()


def test_new_workers_are_used_within_two_seconds_and_gone_ones_dropped(
    own_pool: Stack, tmp_path: Path, example: dict[str, str]
) -> None:
    key = next(iter(example))
    with Client(own_pool.frontend, direct=True) as client:
        client.get(key)
        assert len(links(client)) == 2
        newcomer = start_worker(tmp_path, own_pool.backend, EXAMPLE, *DIRECT_BIND, name="newcomer")
        try:
            started = time.monotonic()

            def three() -> bool:
                client.get(key)
                return len(links(client)) == 3

            wait_for(three, 30, "the newcomer in the client's map", interval=0.02)
            # Counted from when the newcomer could answer, which includes its start.
            assert time.monotonic() - started < scaled(2.0) + _start_time(newcomer)
            gone = own_pool.workers[0]
            gone.stop()

            def two() -> bool:
                assert client.get(key) == example[key]
                return len(links(client)) == 2

            wait_for(two, 3, "the stopped worker out of the client's map", interval=0.02)
        finally:
            newcomer.stop()


def _start_time(proc) -> float:
    """Seconds from the process's start to its serving line (its log's timestamps)."""
    import re
    from datetime import datetime

    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", proc.log(), re.M)
    if len(stamps) < 2:
        return 5.0
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds() + 1.0  # and the interpreter's start before its first line


def test_with_every_broker_stopped_direct_calls_go_on_with_the_last_map(
    own_pool: Stack, example: dict[str, str]
) -> None:
    keys = list(example)[:50]
    with Client(own_pool.frontend, direct=True) as client:
        client.get(keys[0])
        own_pool.broker.signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert client.get_many(keys) == [example[k] for k in keys]
                assert time.monotonic() - started < 0.2  # no try waited on a broker
            assert len(links(client)) == 2
        finally:
            own_pool.broker.signal(signal.SIGCONT)


def test_a_stopped_worker_costs_one_try_and_is_avoided(own_pool: Stack, example: dict[str, str]) -> None:
    keys = list(example)[:200]
    with Client(own_pool.frontend, direct=True) as client:
        client.get(keys[0])
        stuck = own_pool.workers[0]
        stuck.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for key in keys:
                assert client.get(key) == example[key]
            # One first-try timeout (0.25 s) at most for the stuck worker, then it is avoided.
            assert time.monotonic() - started < 0.25 + scaled(1.5)
        finally:
            stuck.signal(signal.SIGCONT)


def test_the_command_line_goes_direct(pool: Stack, example: dict[str, str]) -> None:
    key = next(iter(example))
    out = subprocess.run(
        [sys.executable, "-m", "rokv", "get", key, "--direct", "--endpoint", pool.frontend],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == example[key]


def test_the_gateway_reads_rokv_direct() -> None:
    assert Settings.from_env({"ROKV_DIRECT": "1"}).direct is True
    assert Settings.from_env({"ROKV_DIRECT": "0"}).direct is False
    assert Settings.from_env({}).direct is False
    with pytest.raises(SettingError, match="ROKV_DIRECT"):
        Settings.from_env({"ROKV_DIRECT": "yes"})


def test_the_bench_goes_direct(pool: Stack) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rokv",
            "bench",
            "--direct",
            "--endpoint",
            pool.frontend,
            "--requests",
            "2000",
            "--data",
            str(EXAMPLE),
            "--json",
        ],
        env={**child_env(), **{k: v for k, v in os.environ.items() if k == "ROKV_TEST_WAIT_SCALE"}},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert out.returncode == 0, out.stderr
    assert '"direct": true' in out.stdout and '"wrong": 0' in out.stdout


def test_a_blocking_client_stays_with_a_worker_for_a_run_of_calls_then_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("rokv.workerset.time.monotonic", lambda: clock[0])
    workers = Workers(zmq.Context.instance(), [], None, stick=64)
    spread = Workers(zmq.Context.instance(), [], None)  # an AsyncClient's
    try:
        workers.links = spread.links = [Link(f"tcp://127.0.0.1:{port}", None, {}) for port in (1, 2, 3)]
        firsts = [workers.order()[0] for _ in range(64 * 3)]
        runs = [firsts[i : i + 64] for i in range(0, len(firsts), 64)]
        assert all(len(set(run)) == 1 for run in runs)  # 64 calls in a row to one worker
        assert len({run[0].endpoint for run in runs}) == 3  # then the next, in turn
        # A slow caller moves on after STICK_SECONDS, within a run too.
        seen = []
        for _ in range(6):
            clock[0] += workerset.STICK_SECONDS
            seen.append(workers.order()[0])
        assert all(a is not b for a, b in zip(seen, seen[1:]))
        # An asyncio client's map spreads call by call.
        assert len({spread.order()[0].endpoint for _ in range(3)}) == 3
    finally:
        workers.links = spread.links = []
        workers.close()
        spread.close()
