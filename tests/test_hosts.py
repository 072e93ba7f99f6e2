"""A pool spread over real hosts (network namespaces), under checking load,
while hosts vanish without closing their connections, a broker dies and a
worker host joins: nothing lost, nothing wrong.

Topology: broker hosts b1 and b2, worker hosts w1 and w2 (each worker
connected to both brokers), later w3; a client host runs the load drivers
(tests/loaddriver.py) against both brokers. Every host runs the checkout's
supervisord.conf with its role (ROKV_ROLE). `pytest tests/test_hosts.py -s`
prints the figures RELIABILITY.md quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import netns
from procs import EXAMPLE, REPO, child_env, scaled, wait_for
from rokv import Client, ServiceUnavailable
from rokv.security import CurvePeer, make_key_pair

pytestmark = pytest.mark.slow

FRONT, BACK = 5555, 5556
DRIVERS = 2
MIN_LOOKUPS = 50_000
CUT_SECONDS = 6.0  # longer than the whole default retry budget (3.75 s)


@pytest.fixture()
def network() -> Iterator[netns.Network]:
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    net = netns.Network()
    try:
        yield net
    finally:
        net.close()


def curve_env(root: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Keys for a pool whose brokers share one key pair (README "Several
    hosts"): the environments of broker hosts, worker hosts and clients."""
    broker_public, broker_secret = make_key_pair(root, "broker")
    client_public, client_secret = make_key_pair(root, "client")
    worker_public, worker_secret = make_key_pair(root, "worker")
    for folder, public in (("clients", client_public), ("workers", worker_public)):
        (root / folder).mkdir()
        shutil.copy(public, root / folder)
    return (
        {"ROKV_BROKER_SECRET": str(broker_secret), "ROKV_CLIENT_KEYS": str(root / "clients"),
         "ROKV_WORKER_KEYS": str(root / "workers")},
        {"ROKV_WORKER_SECRET": str(worker_secret), "ROKV_BROKER_KEY": str(broker_public)},
        {"ROKV_CLIENT_SECRET": str(client_secret), "ROKV_BROKER_KEY": str(broker_public)},
    )


class Pool:
    """The hosts of one pool and how to reach it."""

    def __init__(self, net: netns.Network, root: Path, curve: bool) -> None:
        self.net, self.root = net, root
        self.observer = net.attach_root()
        self.b1, self.b2 = net.add_host("b1"), net.add_host("b2")
        self.w1, self.w2, self.w3 = net.add_host("w1"), net.add_host("w2"), net.add_host("w3")
        self.client_host = net.add_host("client")
        self.brokers_env, self.workers_env, self.clients_env = curve_env(root / "keys") if curve else ({}, {}, {})
        self.endpoints = [self.b1.endpoint(FRONT), self.b2.endpoint(FRONT)]
        self.backends = ",".join(b.endpoint(BACK) for b in (self.b1, self.b2))
        for broker in (self.b1, self.b2):
            broker.supervise(root / broker.name, child_env(
                ROKV_ROLE="broker", ROKV_FRONTEND=broker.endpoint(FRONT), ROKV_BACKEND=broker.endpoint(BACK),
                **self.brokers_env))
        for worker in (self.w1, self.w2):
            self.start_worker_host(worker)

    def start_worker_host(self, host: netns.Host) -> None:
        host.supervise(self.root / host.name, child_env(
            ROKV_ROLE="worker", ROKV_WORKERS="1", ROKV_BACKEND=self.backends, **self.workers_env))

    def client(self, endpoints: list[str] | None = None, **kwargs: float) -> Client:
        curve = None
        if self.clients_env:
            curve = CurvePeer(self.clients_env["ROKV_CLIENT_SECRET"], self.clients_env["ROKV_BROKER_KEY"])
        return Client(endpoints or self.endpoints, curve=curve, **kwargs)  # type: ignore[arg-type]

    def worker_pid(self, host: netns.Host) -> int | None:
        return host.supervisors[0].running().get("worker:worker_00")

    def broker_pid(self, host: netns.Host) -> int | None:
        return host.supervisors[0].running().get("broker")

    def answering_pids(self, endpoints: list[str], pings: int = 20) -> set[int]:
        found: set[int] = set()
        with self.client(endpoints, timeout=0.5, retries=0) as client:
            for _ in range(pings):
                try:
                    found.add(int(client.ping()["pid"]))
                except ServiceUnavailable:
                    pass
        return found

    def wait_ready(self) -> None:
        def serving(endpoint: str) -> bool:
            wanted = {self.worker_pid(self.w1), self.worker_pid(self.w2)}
            return None not in wanted and wanted <= self.answering_pids([endpoint])

        for endpoint in self.endpoints:
            wait_for(lambda: serving(endpoint), 60, f"both workers to serve through {endpoint}")

    def start_drivers(self, seconds: float) -> list[subprocess.Popen[str]]:
        return [
            subprocess.Popen(
                [*self.client_host.prefix(), sys.executable, str(REPO / "tests" / "loaddriver.py"),
                 "--endpoint", ",".join(self.endpoints), "--data", str(EXAMPLE), "--seconds", str(seconds),
                 "--seed", str(seed), "--min-found", str(MIN_LOOKUPS // DRIVERS + 5_000),
                 "--max-seconds", str(seconds * 4)],
                env=child_env(**self.clients_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for seed in range(DRIVERS)
        ]


def collect(drivers: list[subprocess.Popen[str]], timeout: float) -> dict:
    total: dict = {"requests": 0, "lookups": 0, "found": 0, "retried": 0, "lost": 0, "wrong": 0, "errors": [],
                   "timelines": []}
    for driver in drivers:
        try:
            out, err = driver.communicate(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.communicate()
            raise AssertionError("a load driver did not finish in time") from None
        assert driver.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        for name in ("requests", "lookups", "found", "retried", "lost", "wrong"):
            total[name] += result[name]
        total["errors"] += result["errors"]
        total["timelines"].append(result["timeline"])
        total["p99_ms"] = max(total.get("p99_ms", 0), result["p99_ms"])
        total["max_ms"] = max(total.get("max_ms", 0), result["max_ms"])
    return total


def replies_between(timelines: list[list], broker: int, start: float, end: float) -> int:
    """Replies the drivers took from ``broker`` between two monotonic times."""
    total = 0
    for timeline in timelines:
        inside = [counts[broker] for t, counts in timeline if start <= t <= end]
        if len(inside) >= 2:
            total += inside[-1] - inside[0]
    return total


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_hosts_vanish_die_and_join_under_load_and_nothing_is_lost(network: netns.Network, tmp_path: Path,
                                                                  curve: bool) -> None:
    pool = Pool(network, tmp_path, curve)
    pool.wait_ready()
    drivers = pool.start_drivers(seconds=30)
    events: dict[str, float] = {}
    try:
        time.sleep(3)
        # 1. Broker host b1 vanishes (no FIN, no RST) for longer than any call's retry budget.
        events["b1 cut"] = time.monotonic()
        network.cut(pool.b1)
        time.sleep(CUT_SECONDS)
        network.restore(pool.b1)
        events["b1 back"] = time.monotonic()
        # 2. Broker b2 is killed; its supervisor restarts it.
        time.sleep(3)
        killed = pool.broker_pid(pool.b2)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        events["b2 killed"] = time.monotonic()
        wait_for(lambda: pool.broker_pid(pool.b2) not in (None, killed), 30, "b2's broker to be restarted")
        # 3. Worker host w1 vanishes for a while.
        time.sleep(2)
        events["w1 cut"] = time.monotonic()
        network.cut(pool.w1)
        time.sleep(4)
        network.restore(pool.w1)
        # 4. A new worker host joins and answers.
        pool.start_worker_host(pool.w3)
        events["w3 started"] = time.monotonic()
        wait_for(lambda: (pid := pool.worker_pid(pool.w3)) is not None and pid in pool.answering_pids(
            pool.endpoints, 40), 60, "the new worker host to answer")
        events["w3 answers"] = time.monotonic()
    finally:
        result = collect(drivers, 200)
    end = max(t for timeline in result["timelines"] for t, _ in timeline)
    b1_after = replies_between(result["timelines"], 0, events["b1 back"] + 5, end)
    print(
        f"\n| hosts: b1 cut {CUT_SECONDS:.0f} s, b2 killed, w1 cut 4 s, w3 joined{', CURVE' if curve else ''} | "
        f"{result['requests']} | {result['lookups']} | {result['retried']} | {result['lost']} | {result['wrong']} | "
        f"{result['p99_ms']:.1f} | {result['max_ms']:.0f} | {b1_after} | "
        f"{events['w3 answers'] - events['w3 started']:.1f} |"
    )
    assert result["wrong"] == 0, result["errors"]
    assert result["lost"] == 0, result["errors"]
    assert result["found"] >= MIN_LOOKUPS
    # After its return, the restored broker carries traffic again.
    assert b1_after > 500, result["timelines"]


def test_a_broker_cut_off_costs_a_call_at_most_one_try(network: netns.Network, tmp_path: Path,
                                                      example: dict[str, str]) -> None:
    pool = Pool(network, tmp_path, curve=False)
    pool.wait_ready()
    keys = list(example)[:2000]
    with pool.client(timeout=0.25, retries=3) as client:
        assert client.get_many(keys) == [example[k] for k in keys]
        network.cut(pool.b1)
        try:
            worst, started = 0.0, time.monotonic()
            for key in keys[:600]:  # about 1 s of calls and more: heartbeats notice the cut
                began = time.monotonic()
                assert client.get(key) == example[key]
                worst = max(worst, time.monotonic() - began)
            assert time.monotonic() - started > 1.5 or worst > 0.25
        finally:
            network.restore(pool.b1)
    print(f"\nb1 cut off: slowest of 600 sequential gets {worst * 1000:.0f} ms")
    # One try's timeout (0.25 s) and the retry through b2, plus slack for a busy machine.
    assert worst < 0.25 + scaled(0.25)
