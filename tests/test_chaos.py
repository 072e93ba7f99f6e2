"""No lookup lost or wrong while workers crash, stall or roll and the broker dies.

Each scenario runs two checking load drivers (tests/loaddriver.py) against a
real supervisord stack for SCENARIO_SECONDS while it injects its fault, then
requires zero wrong and zero lost answers. `pytest tests/test_chaos.py -s`
prints each scenario's figures as a markdown row (see RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


from procs import EXAMPLE, REPO, child_env, free_port, scaled, seen_workers, wait_for
from supervision import Supervisor

from rokv.security import CurvePeer, make_key_pair

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` leaves these out of the inner loop

SCENARIO_SECONDS = float(os.environ.get("ROKV_CHAOS_SECONDS", "12"))
DRIVERS = 2
MIN_LOOKUPS = 50_000
#: The drivers' retry policy; the client's defaults unless overridden, so other
#: policies can be compared under the same faults.
POLICY = [
    f"--{name}={os.environ[var]}"
    for name, var in (("timeout", "ROKV_CHAOS_TIMEOUT"), ("retries", "ROKV_CHAOS_RETRIES"),
                      ("backoff", "ROKV_CHAOS_BACKOFF"))
    if var in os.environ
]


@pytest.fixture(params=["plain", "curve"])
def security(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, dict[str, str]]:
    """Every scenario runs twice: without encryption, and with CurveZMQ on both
    sides of the broker (the variables of README "Security"). Returns the
    environment of supervisord and of the load drivers."""
    if request.param == "plain":
        return {"pool": {}, "drivers": {}}
    keys = tmp_path / "keys"
    broker_public, broker_secret = make_key_pair(keys, "broker")
    client_public, client_secret = make_key_pair(keys, "client")
    worker_public, worker_secret = make_key_pair(keys, "worker")
    for folder, public in (("clients", client_public), ("workers", worker_public)):
        (keys / folder).mkdir()
        shutil.copy(public, keys / folder)
    return {
        "pool": {"ROKV_BROKER_SECRET": str(broker_secret), "ROKV_CLIENT_KEYS": str(keys / "clients"),
                 "ROKV_WORKER_KEYS": str(keys / "workers"), "ROKV_WORKER_SECRET": str(worker_secret),
                 "ROKV_BROKER_KEY": str(broker_public)},
        "drivers": {"ROKV_CLIENT_SECRET": str(client_secret), "ROKV_BROKER_KEY": str(broker_public)},
    }


class Pool:
    """A supervised pool and how its clients reach it."""

    def __init__(self, supervisor_factory, security: dict[str, dict[str, str]]) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.client_env = security["drivers"]
        self.sup: Supervisor = supervisor_factory(ROKV_FRONTEND=self.endpoint, ROKV_WORKERS="2",
                                                  ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}", **security["pool"])
        curve = None
        if self.client_env:
            curve = CurvePeer(self.client_env["ROKV_CLIENT_SECRET"], self.client_env["ROKV_BROKER_KEY"])
        seen_workers(self.endpoint, 2, timeout=30, curve=curve)
        wait_for(lambda: {"broker", "worker:worker_00", "worker:worker_01"} <= set(self.sup.running()), 15,
                 "stack RUNNING")

    def running(self) -> dict[str, int]:
        return self.sup.running()


def start_drivers(pool: Pool) -> list[subprocess.Popen[str]]:
    endpoint = pool.endpoint
    return [
        subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "loaddriver.py"), "--endpoint", endpoint, "--data", str(EXAMPLE),
             "--seconds", str(SCENARIO_SECONDS), "--seed", str(seed), *POLICY,
             # On a loaded machine, run longer rather than prove too little.
             "--min-found", str(MIN_LOOKUPS // DRIVERS + 5_000), "--max-seconds", str(SCENARIO_SECONDS * 4)],
            env=child_env(**pool.client_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for seed in range(DRIVERS)
    ]


def drivers_running(drivers: list[subprocess.Popen[str]]) -> bool:
    return any(d.poll() is None for d in drivers)


def collect(drivers: list[subprocess.Popen[str]]) -> dict:
    total: dict = {"requests": 0, "lookups": 0, "found": 0, "retried": 0, "lost": 0, "wrong": 0, "errors": []}
    p50s, p99s, maxes = [], [], []
    for driver in drivers:
        try:
            out, err = driver.communicate(timeout=scaled(SCENARIO_SECONDS * 4 + 30))
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.communicate()
            raise AssertionError("a load driver did not finish in time") from None
        assert driver.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        for field in ("requests", "lookups", "found", "retried", "lost", "wrong"):
            total[field] += result[field]
        total["errors"] += result["errors"]
        p50s.append(result["p50_ms"])
        p99s.append(result["p99_ms"])
        maxes.append(result["max_ms"])
    total.update(p50_ms=max(p50s), p99_ms=max(p99s), max_ms=max(maxes))
    return total


def report(name: str, result: dict, faults: str) -> None:
    print(
        f"\n| {name} | {faults} | {result['requests']} | {result['lookups']} | {result['retried']} | "
        f"{result['lost']} | {result['wrong']} | {result['p50_ms']:.2f} | {result['p99_ms']:.1f} | "
        f"{result['max_ms']:.0f} |"
    )


def label(security: dict[str, dict[str, str]]) -> str:
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
            wait_for(lambda: name in pool.running(), 15, f"{name} RUNNING again")
            time.sleep(0.5)
    result = collect(drivers)
    report(f"rolling restart{label(security)}", result, f"{restarts} restarts")
    assert restarts >= 2
    assert_nothing_lost(result)
