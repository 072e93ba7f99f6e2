"""Workers count direct and brokered requests apart, and rokv top shows each
worker's direct endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rokv import Client
from rokv.ops.poolview import HostScrape, WorkerTotals, view
from rokv.ops.top import WIDTH, render

from support.procs import wait_for
from support.scrape import MeteredStack, scrape, total


@pytest.fixture(params=["compiled", "python"])
def metered(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeteredStack]:
    stack = MeteredStack(tmp_path, direct=True, pure_python=request.param == "python")
    try:
        yield stack.wait_ready()
    finally:
        stack.stop()


def _paths(address: str) -> tuple[float, float]:
    samples = scrape(address)
    return (
        total(samples, "rokv_worker_path_requests_total", path="broker"),
        total(samples, "rokv_worker_path_requests_total", path="direct"),
    )


def test_direct_and_brokered_requests_are_counted_apart(metered: MeteredStack, example: dict[str, str]) -> None:
    keys = list(example)[:40]
    with Client(metered.frontend, direct=True) as direct, Client(metered.frontend) as brokered:
        direct.get(keys[0])  # the map, the connections
        time.sleep(1.2)  # one publication (every second) after
        before = _paths(metered.address)
        for key in keys:
            assert direct.get(key) == example[key]
        assert direct.get_many(keys) == [example[k] for k in keys]
        for key in keys[:15]:
            assert brokered.get(key) == example[key]
        expected = (before[0] + 15, before[1] + 41)
        wait_for(lambda: _paths(metered.address) == expected, 10, f"counts {expected}")
        # The direct client holds one connection to each worker's endpoint.
        wait_for(
            lambda: total(scrape(metered.address), "rokv_worker_direct_connections") == 2, 10, "2 direct connections"
        )
    wait_for(lambda: total(scrape(metered.address), "rokv_worker_direct_connections") == 0, 10, "none once closed")


def test_rokv_top_shows_each_workers_direct_endpoint(metered: MeteredStack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rokv", "top", "--once", "--json", "--interval", "0.5", "--metrics", metered.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (host,) = json.loads(result.stdout)["hosts"]
    for worker in host["workers"]:
        assert worker["direct"].startswith("tcp://127.0.0.1:")
    assert len({w["direct"] for w in host["workers"]}) == 2


def test_top_renders_the_direct_endpoint_and_share_within_80_columns() -> None:
    def worker(direct: float, broker: float) -> WorkerTotals:
        return WorkerTotals(
            "worker_00",
            requests=direct + broker,
            direct="tcp://127.0.0.1:40001",
            paths={"direct": direct, "broker": broker},
        )

    shown = view(
        [HostScrape("198.18.0.1:9555", 0.0, {"worker_00": worker(0, 0)})],
        [HostScrape("198.18.0.1:9555", 1.0, {"worker_00": worker(750, 250)})],
    )
    row = shown["hosts"][0]["workers"][0]
    assert row["direct"] == "tcp://127.0.0.1:40001" and row["direct_share"] == pytest.approx(0.75)
    lines = render(shown, 1.0)
    assert "    direct tcp://127.0.0.1:40001  75% of requests direct" in lines
    assert all(len(line) <= WIDTH for line in lines)
