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
import signal
import subprocess
import sys
import time


from procs import EXAMPLE, REPO, child_env, free_port, scaled, seen_workers, wait_for
from supervision import Supervisor

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


def start_stack(supervisor_factory) -> tuple[Supervisor, str]:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    sup = supervisor_factory(ROKV_FRONTEND=frontend, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}", ROKV_WORKERS="2")
    seen_workers(frontend, 2, timeout=30)
    wait_for(lambda: {"broker", "worker:worker_00", "worker:worker_01"} <= set(sup.running()), 15, "stack RUNNING")
    return sup, frontend


def start_drivers(endpoint: str) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "loaddriver.py"), "--endpoint", endpoint, "--data", str(EXAMPLE),
             "--seconds", str(SCENARIO_SECONDS), "--seed", str(seed), *POLICY,
             # On a loaded machine, run longer rather than prove too little.
             "--min-found", str(MIN_LOOKUPS // DRIVERS + 5_000), "--max-seconds", str(SCENARIO_SECONDS * 4)],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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


def assert_nothing_lost(result: dict) -> None:
    assert result["wrong"] == 0, result["errors"]
    assert result["lost"] == 0, result["errors"]
    assert result["found"] >= MIN_LOOKUPS, f"only {result['found']} lookups of known keys: too light to prove anything"


def test_a_worker_sigkilled_every_second(supervisor_factory) -> None:
    sup, endpoint = start_stack(supervisor_factory)
    rng = random.Random(7)
    drivers = start_drivers(endpoint)
    kills = 0
    deadline = time.monotonic() + SCENARIO_SECONDS * 4 + 10
    while drivers_running(drivers) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.8, 1.2))
        # Only workers supervisor counts as started: killing one inside its
        # startsecs would count as a failed start and, thrice, make it FATAL.
        victims = [pid for name, pid in sup.running().items() if name.startswith("worker:")]
        if victims and drivers_running(drivers):
            os.kill(rng.choice(victims), signal.SIGKILL)
            kills += 1
    result = collect(drivers)
    report("worker SIGKILL ~every 1 s", result, f"{kills} kills")
    assert kills >= SCENARIO_SECONDS / 3
    assert_nothing_lost(result)


def test_the_broker_sigkilled_once(supervisor_factory) -> None:
    sup, endpoint = start_stack(supervisor_factory)
    drivers = start_drivers(endpoint)
    time.sleep(SCENARIO_SECONDS / 3)
    broker = sup.running()["broker"]
    os.kill(broker, signal.SIGKILL)
    wait_for(lambda: sup.running().get("broker") not in (None, broker), 20, "supervisor to restart the broker")
    result = collect(drivers)
    report("broker SIGKILL once", result, "1 kill")
    assert_nothing_lost(result)


def test_a_worker_stopped_for_5_seconds(supervisor_factory) -> None:
    sup, endpoint = start_stack(supervisor_factory)
    drivers = start_drivers(endpoint)
    time.sleep(SCENARIO_SECONDS / 4)
    victim = sup.running()["worker:worker_00"]
    os.kill(victim, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(victim, signal.SIGCONT)
    result = collect(drivers)
    report("worker SIGSTOP 5 s", result, "1 stop")
    assert_nothing_lost(result)


def test_a_rolling_restart_of_every_worker(supervisor_factory) -> None:
    sup, endpoint = start_stack(supervisor_factory)
    drivers = start_drivers(endpoint)
    restarts = 0
    deadline = time.monotonic() + SCENARIO_SECONDS * 4 + 10
    while drivers_running(drivers) and time.monotonic() < deadline:
        for name in ("worker:worker_00", "worker:worker_01"):
            if not drivers_running(drivers):
                break
            done = sup.ctl("restart", name)
            assert "started" in done.stdout, done.stdout + done.stderr
            restarts += 1
            wait_for(lambda: name in sup.running(), 15, f"{name} RUNNING again")
            time.sleep(0.5)
    result = collect(drivers)
    report("rolling restart", result, f"{restarts} restarts")
    assert restarts >= 2
    assert_nothing_lost(result)
