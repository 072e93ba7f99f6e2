"""The direct path across real hosts (network namespaces): a broker host, two
worker hosts serving direct endpoints on their own addresses, and a client
host whose checking load drivers go direct, while a worker host vanishes
without closing its connections (no FIN, no RST) and comes back: nothing
lost, nothing wrong, and the workers that are up carry the load."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import drivers, netns
from support.procs import EXAMPLE, child_env, wait_for

pytestmark = pytest.mark.slow

FRONT, BACK = 5555, 5556
SECONDS = 14.0
CUT_SECONDS = 5.0


@pytest.fixture()
def network() -> Iterator[netns.Network]:
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    net = netns.Network(net=3)
    try:
        yield net
    finally:
        net.close()


def test_direct_clients_ride_out_a_worker_host_cut_off(network: netns.Network, tmp_path: Path) -> None:
    broker = network.add_host("b1")
    workers = [network.add_host("w1"), network.add_host("w2")]
    client_host = network.add_host("client")
    broker.start(
        "broker",
        [
            sys.executable,
            "-m",
            "rokv.broker",
            "--frontend",
            broker.endpoint(FRONT),
            "--backend",
            f"tcp://0.0.0.0:{BACK}",
        ],
        tmp_path,
    )
    for host in workers:
        host.start(
            "worker",
            [
                sys.executable,
                "-m",
                "rokv.worker",
                "--backend",
                broker.endpoint(BACK),
                "--data",
                str(EXAMPLE),
                "--name",
                host.name,
                "--direct-bind",
                "tcp://0.0.0.0:*",
                "--advertise",
                f"tcp://{host.address}:*",
            ],
            tmp_path,
            child_env(),
        )
    for host in workers:
        wait_for(lambda h=host: f"advertised as tcp://{h.address}:" in h.procs[0].log(), 30, f"{host.name} serving")
    load = drivers.start_drivers(
        broker.endpoint(FRONT),
        count=2,
        seconds=SECONDS,
        min_found=0,
        client_env={},
        prefix=client_host.prefix(),
        extra=["--direct"],
    )
    time.sleep(3.0)
    network.cut(workers[0])
    time.sleep(CUT_SECONDS)
    network.restore(workers[0])
    result = drivers.collect(load, timeout=SECONDS * 4 + 30)
    print(
        f"\ndirect across hosts, w1 cut {CUT_SECONDS:g} s: {result['lookups']} lookups, {result['retried']} retried, "
        f"lost {result['lost']}, wrong {result['wrong']}, max {result['max_ms']:.0f} ms; {result['direct_replies']}"
    )
    assert result["wrong"] == 0, result["errors"]
    assert result["lost"] == 0, result["errors"]
    served = {endpoint.rpartition(":")[0]: n for endpoint, n in result["direct_replies"].items()}
    assert served.get(f"tcp://{workers[1].address}", 0) > 1000, result["direct_replies"]
