"""No lookup lost or wrong while workers crash, stall or roll and the broker dies.

Each scenario runs two checking load drivers (tests/support/loaddriver.py) against a
real supervisord stack for SCENARIO_SECONDS while it injects its fault, then
requires zero wrong and zero lost answers. `pytest tests/test_chaos.py -s`
prints each scenario's figures as a markdown row (see RELIABILITY.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rokv.security import CurvePeer

from support import drivers
from support.drivers import curve_pool_keys
from support.procs import free_port, seen_workers, wait_for
from support.supervision import Supervisor

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` leaves these out of the inner loop

SCENARIO_SECONDS = float(os.environ.get("ROKV_CHAOS_SECONDS", "12"))
DRIVERS = 2
MIN_LOOKUPS = 50_000
#: The drivers' retry policy; the client's defaults unless overridden, so other
#: policies can be compared under the same faults.
POLICY = [
    f"--{name}={os.environ[var]}"
    for name, var in (
        ("timeout", "ROKV_CHAOS_TIMEOUT"),
        ("retries", "ROKV_CHAOS_RETRIES"),
        ("backoff", "ROKV_CHAOS_BACKOFF"),
    )
    if var in os.environ
]


@pytest.fixture(params=["plain", "curve", "python"])
def security(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, dict[str, str]]:
    """Every scenario runs three times: without encryption; with CurveZMQ on
    both sides of the broker (the variables of docs/operations.md "Security"); and
    without encryption on the workers' pure-Python loop (ROKV_PURE_PYTHON),
    the other two running the compiled one. Returns the environment of
    supervisord and of the load drivers."""
    if request.param == "plain":
        return {"pool": {}, "drivers": {}}
    if request.param == "python":
        return {"pool": {"ROKV_PURE_PYTHON": "1"}, "drivers": {}}
    brokers, workers, clients = curve_pool_keys(tmp_path / "keys")
    return {"pool": {**brokers, **workers}, "drivers": clients}


class Pool:
    """A supervised pool and how its clients reach it."""

    def __init__(self, supervisor_factory, security: dict[str, dict[str, str]]) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.client_env = security["drivers"]
        self.sup: Supervisor = supervisor_factory(
            ROKV_FRONTEND=self.endpoint,
            ROKV_WORKERS="2",
            ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}",
            **security["pool"],
        )
        curve = None
        if self.client_env:
            curve = CurvePeer(self.client_env["ROKV_CLIENT_SECRET"], self.client_env["ROKV_BROKER_KEY"])
        seen_workers(self.endpoint, 2, timeout=30, curve=curve)
        wait_for(
            lambda: {"broker", "worker:worker_00", "worker:worker_01"} <= set(self.sup.running()), 15, "stack RUNNING"
        )

    def running(self) -> dict[str, int]:
        return self.sup.running()


def start_drivers(pool: Pool) -> list[subprocess.Popen[str]]:
    return drivers.start_drivers(
        pool.endpoint,
        count=DRIVERS,
        seconds=SCENARIO_SECONDS,
        extra=POLICY,
        min_found=MIN_LOOKUPS // DRIVERS + 5_000,
        client_env=pool.client_env,
    )


def drivers_running(drivers: list[subprocess.Popen[str]]) -> bool:
    return any(d.poll() is None for d in drivers)


def collect(running: list[subprocess.Popen[str]]) -> dict:
    return drivers.collect(running, SCENARIO_SECONDS * 4 + 30)


def report(name: str, result: dict, faults: str) -> None:
    print(
        f"\n| {name} | {faults} | {result['requests']} | {result['lookups']} | {result['retried']} | "
        f"{result['lost']} | {result['wrong']} | {result['p50_ms']:.2f} | {result['p99_ms']:.1f} | "
        f"{result['max_ms']:.0f} |"
    )


def label(security: dict[str, dict[str, str]]) -> str:
    if "ROKV_PURE_PYTHON" in security["pool"]:
        return ", pure Python"
    return ", CURVE" if security["pool"] else ""


def assert_nothing_lost(result: dict) -> None:
    assert result["wrong"] == 0, result["errors"]
    assert result["lost"] == 0, result["errors"]
    assert result["found"] >= MIN_LOOKUPS, f"only {result['found']} lookups of known keys: too light to prove anything"


def test_a_worker_sigkilled_every_second(supervisor_factory, security) -> None:
    pool = Pool(supervisor_factory, security)
    rng = random.Random(7)
    drivers = start_drivers(pool)
    kills = 0
    deadline = time.monotonic() + SCENARIO_SECONDS * 4 + 10
    while drivers_running(drivers) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.8, 1.2))
        # Only workers supervisor counts as started: killing one inside its
        # startsecs would count as a failed start and, thrice, make it FATAL.
        victims = [pid for name, pid in pool.running().items() if name.startswith("worker:")]
        if victims and drivers_running(drivers):
            os.kill(rng.choice(victims), signal.SIGKILL)
            kills += 1
    result = collect(drivers)
    report(f"worker SIGKILL ~every 1 s{label(security)}", result, f"{kills} kills")
    assert kills >= SCENARIO_SECONDS / 3
    assert_nothing_lost(result)


def test_the_broker_sigkilled_once(supervisor_factory, security) -> None:
    pool = Pool(supervisor_factory, security)
    drivers = start_drivers(pool)
    time.sleep(SCENARIO_SECONDS / 3)
    broker = pool.running()["broker"]
    os.kill(broker, signal.SIGKILL)
    wait_for(lambda: pool.running().get("broker") not in (None, broker), 20, "supervisor to restart the broker")
    result = collect(drivers)
    report(f"broker SIGKILL once{label(security)}", result, "1 kill")
    assert_nothing_lost(result)


def test_a_worker_stopped_for_5_seconds(supervisor_factory, security) -> None:
    pool = Pool(supervisor_factory, security)
    drivers = start_drivers(pool)
    time.sleep(SCENARIO_SECONDS / 4)
    victim = pool.running()["worker:worker_00"]
    os.kill(victim, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(victim, signal.SIGCONT)
    result = collect(drivers)
    report(f"worker SIGSTOP 5 s{label(security)}", result, "1 stop")
    assert_nothing_lost(result)


def test_a_rolling_restart_of_every_worker(supervisor_factory, security) -> None:
    pool = Pool(supervisor_factory, security)
    drivers = start_drivers(pool)
    restarts = 0
    deadline = time.monotonic() + SCENARIO_SECONDS * 4 + 10
    while drivers_running(drivers) and time.monotonic() < deadline:
        for name in ("worker:worker_00", "worker:worker_01"):
            if not drivers_running(drivers):
                break
            done = pool.sup.ctl("restart", name)
            assert "started" in done.stdout, done.stdout + done.stderr
            restarts += 1
            wait_for(lambda: name in pool.running(), 15, f"{name} RUNNING again")  # noqa: B023 - called before the loop moves on
            time.sleep(0.5)
    result = collect(drivers)
    report(f"rolling restart{label(security)}", result, f"{restarts} restarts")
    assert restarts >= 2
    assert_nothing_lost(result)
