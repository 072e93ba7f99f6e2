"""DNS discovery (``tcp+dns://NAME:PORT``): the endpoint form, the resolver
loop against a resolver the test controls, and real brokers, a real worker
and the clients following a name whose addresses change.

Two brokers share a port on two loopback addresses (127.0.0.1 and
127.0.0.2, both on ``lo`` on Linux), so one name can stand for both, as a
Kubernetes headless Service or Swarm's ``tasks.NAME`` does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rokv import AsyncClient, Client, ServiceUnavailable
from rokv import discovery as d
from rokv.directory import directory_endpoint
from rokv.endpoints import PROCESS_TRANSPORTS, check_endpoint, check_endpoints

from support.procs import EXAMPLE, Proc, Stack, child_env, scaled, start_broker, wait_for

# ------------------------------------------------------------------ the form


@pytest.mark.parametrize(
    "endpoint",
    ["tcp+dns://broker:5556", "tcp+dns://tasks.rokv_broker:5555", "tcp+dns://rokv-broker.ns.svc.cluster.local:1"],
)
def test_endpoint_lists_accept_tcp_dns_names(endpoint: str) -> None:
    assert check_endpoints(endpoint) == [endpoint]
    assert check_endpoints(f"tcp://127.0.0.1:5555,{endpoint}", transports=PROCESS_TRANSPORTS)[1] == endpoint
    assert d.split_dns(endpoint)[1] == int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("tcp+dns://broker", "needs a name and a port"),
        ("tcp+dns://:5555", "needs a name and a port"),
        ("tcp+dns://broker:0", "from 1 to 65535"),
        ("tcp+dns://broker:99999", "from 1 to 65535"),
        ("tcp+dns://broker:*", "from 1 to 65535"),
        ("tcp+dns://[::1]:5555", "is not a DNS name"),
        ("tcp+dns://bro ker:5555", "is not a DNS name"),
        ("tcp+dns://a..b:5555", "is not a DNS name"),
        ("tcp+dns://-broker:5555", "is not a DNS name"),
    ],
)
def test_malformed_tcp_dns_endpoints_are_refused_with_the_reason(endpoint: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_endpoints(endpoint)
    with pytest.raises(ValueError, match=says):
        Client(endpoint)


def test_a_single_endpoint_to_bind_is_never_a_name_to_resolve() -> None:
    """Brokers bind one endpoint (check_endpoint): tcp+dns:// means nothing there."""
    with pytest.raises(ValueError, match="transport 'tcp\\+dns' is not supported"):
        check_endpoint("tcp+dns://broker:5555", transports=PROCESS_TRANSPORTS)


@pytest.mark.parametrize(("text", "seconds"), [("", 5.0), ("0.5", 0.5), (" 30 ", 30.0), ("3600", 3600.0)])
def test_the_interval_comes_from_rokv_dns_interval(text: str, seconds: float) -> None:
    assert d.interval_from_env({"ROKV_DNS_INTERVAL": text}) == seconds
    assert d.interval_from_env({}) == d.DEFAULT_INTERVAL == 5


@pytest.mark.parametrize("text", ["abc", "0", "-1", "0.05", "inf", "nan", "3601"])
def test_a_bad_interval_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=f"ROKV_DNS_INTERVAL='{text}': expected seconds from 0.1 to 3600"):
        d.interval_from_env({"ROKV_DNS_INTERVAL": text})


def test_a_worker_with_a_bad_interval_stops_with_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rokv.worker", "--backend", "tcp+dns://localhost:5556", "--data", str(EXAMPLE)],
        env=child_env(ROKV_DNS_INTERVAL="soon"),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 2
    assert "ROKV_DNS_INTERVAL='soon'" in result.stderr


def test_the_system_resolver_prefers_ipv4_and_endpoints_bracket_ipv6() -> None:
    assert d.system_resolver("localhost") == ["127.0.0.1"]
    with pytest.raises(OSError):
        d.system_resolver("no-such-host.invalid")
    assert d.tcp_endpoint("10.0.0.1", 5555) == "tcp://10.0.0.1:5555"
    assert d.tcp_endpoint("fd00::1", 5555) == "tcp://[fd00::1]:5555"


# ------------------------------------------------------------------ the resolver loop


class Zone:
    """A resolver the test controls: NAME -> addresses; a missing name fails
    as NXDOMAIN does. Counts its lookups."""

    def __init__(self, **names: list[str]) -> None:
        self.names = {k.replace("_", "-"): v for k, v in names.items()}
        self.lookups = 0

    def __call__(self, name: str) -> list[str]:
        self.lookups += 1
        if name not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.names[name])


def test_a_name_stands_for_every_address_and_changes_are_found_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    zone = Zone(broker=["10.0.0.1", "10.0.0.2"])
    caplog.set_level(logging.INFO, logger="rokv.discovery")
    found = d.Discovery(["tcp+dns://broker:5556", "tcp://other:1"], resolver=zone, start=False)
    assert list(found.names) == ["tcp+dns://broker:5556"]  # plain tcp:// is libzmq's business
    assert found.peers("tcp+dns://broker:5556") == {"tcp://10.0.0.1:5556", "tcp://10.0.0.2:5556"}
    assert found.version == 1
    assert not found.resolve_all() and found.version == 1  # nothing changed: nothing logged
    zone.names["broker"] = ["10.0.0.2", "10.0.0.3"]
    assert found.resolve_all() and found.version == 2
    assert found.peers("tcp+dns://broker:5556") == {"tcp://10.0.0.2:5556", "tcp://10.0.0.3:5556"}
    # The name vanishes: the last addresses are kept, and it is said once, not at every try.
    del zone.names["broker"]
    for _ in range(5):
        assert not found.resolve_all()
    assert found.peers("tcp+dns://broker:5556") == {"tcp://10.0.0.2:5556", "tcp://10.0.0.3:5556"}
    zone.names["broker"] = ["10.0.0.3"]
    assert found.resolve_all() and found.peers("tcp+dns://broker:5556") == {"tcp://10.0.0.3:5556"}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "tcp+dns://broker:5556: broker resolves to 2 address(es); new tcp://10.0.0.1:5556, tcp://10.0.0.2:5556",
        "tcp+dns://broker:5556: broker resolves to 2 address(es); new tcp://10.0.0.3:5556; gone tcp://10.0.0.1:5556",
        "tcp+dns://broker:5556: broker does not resolve (gaierror: [Errno -2] Name or service not known); "
        "keeping 2 known, trying again",
        "tcp+dns://broker:5556: broker resolves to 1 address(es); gone tcp://10.0.0.2:5556",
    ]
    assert zone.lookups == 9


def test_a_name_that_never_resolved_is_tried_again_at_every_interval_in_the_background() -> None:
    zone = Zone()
    found = d.Discovery(["tcp+dns://late:5555"], resolver=zone, interval=0.05)
    try:
        assert found.peers("tcp+dns://late:5555") == frozenset() and found.version == 0
        zone.names["late"] = ["10.0.0.9"]
        wait_for(lambda: found.version == 1, 5, "the background thread to find the name")
        assert found.peers("tcp+dns://late:5555") == {"tcp://10.0.0.9:5555"}
    finally:
        found.close()
    time.sleep(0.2)
    after = zone.lookups
    time.sleep(0.3)
    assert zone.lookups == after, "close() stops the lookups"


class FakeSocket:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closed = False

    def connect(self, addr: str) -> None:
        self.calls.append(f"+{addr}")

    def disconnect(self, addr: str) -> None:
        self.calls.append(f"-{addr}")


def test_one_socket_follows_every_address_of_a_name() -> None:
    zone = Zone(b=["10.0.0.1", "10.0.0.2"])
    found = d.Discovery(["tcp+dns://b:1"], resolver=zone, start=False)
    sock = FakeSocket()
    link = d.Linked(sock, found, "tcp+dns://b:1")
    tracker = d.Tracker(found)
    assert tracker.changed()
    link.sync()
    assert sock.calls == ["+tcp://10.0.0.1:1", "+tcp://10.0.0.2:1"]
    assert not tracker.changed()
    zone.names["b"] = ["10.0.0.2", "10.0.0.3"]
    found.resolve_all()
    assert tracker.changed() and not tracker.changed()
    link.sync()
    assert sock.calls[2:] == ["+tcp://10.0.0.3:1", "-tcp://10.0.0.1:1"]


def test_one_socket_per_address_opened_and_closed_as_the_name_changes(caplog: pytest.LogCaptureFixture) -> None:
    zone = Zone(b=["10.0.0.1", "10.0.0.2"])
    found = d.Discovery(["tcp+dns://b:1"], resolver=zone, start=False)
    opened: list[str] = []
    closed: list[str] = []

    def open_peer(peer: str) -> str:
        if peer.startswith("tcp://10.0.0.66"):
            raise OSError("refused by the test")
        opened.append(peer)
        return f"sock {peer}"

    peers = d.PerPeer(found, "tcp+dns://b:1", open_peer, lambda peer, sock: closed.append(sock))
    assert peers.sync()
    assert peers.socks == {"tcp://10.0.0.1:1": "sock tcp://10.0.0.1:1", "tcp://10.0.0.2:1": "sock tcp://10.0.0.2:1"}
    assert not peers.sync()
    zone.names["b"] = ["10.0.0.2", "10.0.0.66"]
    found.resolve_all()
    assert peers.sync()
    assert closed == ["sock tcp://10.0.0.1:1"] and list(peers.socks) == ["tcp://10.0.0.2:1"]
    assert "cannot connect to tcp://10.0.0.66:1: refused by the test" in caplog.text
    peers.close()
    assert closed[-1] == "sock tcp://10.0.0.2:1" and peers.socks == {}


# ------------------------------------------------------------------ real processes

WORKER = """
import os, sys
import rokv.discovery as d

def resolve(name):
    # The test's zone: a file of addresses; empty means the name does not resolve.
    with open(os.environ["ROKV_TEST_ZONE"]) as f:
        addresses = f.read().split()
    if not addresses:
        raise OSError("NXDOMAIN (the test's zone is empty)")
    return addresses

d.system_resolver = resolve
from rokv.worker.main import main
sys.exit(main(sys.argv[1:]))
"""


def two_loopback_port() -> int:
    """A port free on both 127.0.0.1 and 127.0.0.2."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.2", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on both loopback addresses")


class Pool:
    """Two brokers on one port each of 127.0.0.1 and 127.0.0.2, and a worker
    serving tcp+dns://pool.test:BACKEND with the test's zone file."""

    def __init__(self, tmp_path: Path, zone: str = "127.0.0.1\n") -> None:
        self.front, self.back = two_loopback_port(), two_loopback_port()
        self.zone = tmp_path / "zone"
        self.zone.write_text(zone)
        self.brokers = {
            ip: start_broker(tmp_path, f"tcp://{ip}:{self.front}", f"tcp://{ip}:{self.back}", name=f"broker-{ip}")
            for ip in ("127.0.0.1", "127.0.0.2")
        }
        self.worker = Proc(
            "worker",
            [sys.executable, "-c", WORKER, "--backend", f"tcp+dns://pool.test:{self.back}", "--data", str(EXAMPLE)],
            tmp_path,
            child_env(ROKV_DNS_INTERVAL="0.2", ROKV_TEST_ZONE=str(self.zone)),
        )

    def answers(self, ip: str) -> bool:
        """True when a worker answers a ping through the broker at ``ip``."""
        try:
            with Client(f"tcp://{ip}:{self.front}", timeout=0.3, retries=0) as client:
                client.ping()
            return True
        except ServiceUnavailable:
            return False

    def stop(self) -> None:
        for proc in [self.worker, *self.brokers.values()]:
            proc.stop()


@pytest.fixture()
def pool(tmp_path: Path) -> Iterator[Pool]:
    made = Pool(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def test_a_worker_serves_every_broker_its_name_stands_for_as_the_name_changes(pool: Pool) -> None:
    wait_for(lambda: pool.answers("127.0.0.1"), 15, f"the worker to serve the first broker\n{pool.worker.log()}")
    assert not pool.answers("127.0.0.2")
    # A second broker appears under the name: served within an interval or so.
    pool.zone.write_text("127.0.0.1\n127.0.0.2\n")
    started = time.monotonic()
    wait_for(lambda: pool.answers("127.0.0.2"), 5, f"the worker to serve the new broker\n{pool.worker.log()}")
    joined = time.monotonic() - started
    # The name stops resolving: both stay served, and the log says so once.
    pool.zone.write_text("")
    time.sleep(1.5)  # several intervals of 0.2 s
    assert pool.answers("127.0.0.1") and pool.answers("127.0.0.2")
    assert pool.worker.log().count("does not resolve") == 1, pool.worker.log()
    # The first broker leaves the name: the worker drops it, the other stays served.
    pool.zone.write_text("127.0.0.2\n")
    wait_for(lambda: not pool.answers("127.0.0.1"), 5, "the worker to leave the broker gone from the name")
    assert pool.answers("127.0.0.2")
    assert f"no longer serving broker tcp://127.0.0.1:{pool.back}: gone from its name's addresses" in pool.worker.log()
    assert pool.worker.popen.poll() is None
    print(f"\nthe worker served a broker new under its name {joined:.2f} s after the change (interval 0.2 s)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_whose_name_does_not_resolve_yet_waits_idle_then_serves(tmp_path: Path) -> None:
    made = Pool(tmp_path, zone="")
    try:
        wait_for(lambda: "does not resolve" in made.worker.log(), 30, f"the worker to start\n{made.worker.log()}")
        time.sleep(1.5)  # the worker finishes starting (its compiled loop, its metrics)
        before = cpu_seconds(made.worker.pid)
        time.sleep(2.0)
        idle = cpu_seconds(made.worker.pid) - before
        # A busy loop takes a core (at least half of one on this loaded machine): 1 s or more.
        assert idle < 0.4, f"a worker with no broker used {idle:.2f} s of CPU in 2 s (a busy loop?)"
        assert not made.answers("127.0.0.1")
        print(f"\nan idle worker with no broker yet: {idle:.2f} s of CPU in 2 s")
        made.zone.write_text("127.0.0.1\n")
        wait_for(lambda: made.answers("127.0.0.1"), 5, f"the worker to serve the broker\n{made.worker.log()}")
        assert made.worker.log().count("does not resolve") == 1
    finally:
        made.stop()


def zone_resolver(zone: Path) -> d.Resolver:
    def resolve(name: str) -> list[str]:
        addresses = zone.read_text().split() if name == "pool.test" else []
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return addresses

    return resolve


def test_clients_reach_every_broker_of_a_name_and_lose_nothing_when_one_is_killed(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, example: dict[str, str]
) -> None:
    pool.zone.write_text("127.0.0.1\n127.0.0.2\n")
    wait_for(lambda: pool.answers("127.0.0.1") and pool.answers("127.0.0.2"), 15, "the worker to serve both brokers")
    monkeypatch.setattr(d, "system_resolver", zone_resolver(pool.zone))
    monkeypatch.setenv("ROKV_DNS_INTERVAL", "0.2")
    keys = list(example)[:200]
    endpoint = f"tcp+dns://pool.test:{pool.front}"
    got: list[int] = [0, 0]  # answered, wrong
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with Client(endpoint) as client:
            i = 0
            while not stop.is_set() and i < 100_000:
                key = keys[i % len(keys)]
                i += 1
                try:
                    value = client.get(key)
                except ServiceUnavailable as exc:
                    failures.append(str(exc))
                    continue
                got[0] += 1
                got[1] += value != example[key]

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(scaled(1))
        before = got[0]
        pool.brokers["127.0.0.1"].signal(signal.SIGKILL)
        pool.brokers["127.0.0.1"].wait(5)
        time.sleep(scaled(1.5))
        pool.zone.write_text("127.0.0.2\n")  # the name catches up with the loss
        time.sleep(scaled(0.5))
    finally:
        stop.set()
        thread.join(scaled(30))
    assert failures == [] and got[1] == 0
    assert got[0] > before > 0, "answers came before and after the broker was killed"
    # A name that does not resolve fails no call while another broker answers.
    with Client([f"tcp+dns://nowhere.test:{pool.front}", f"tcp://127.0.0.2:{pool.front}"], timeout=0.5) as client:
        assert client.get_many(keys[:50]) == [example[k] for k in keys[:50]]
    print(f"\n{got[0]} lookups through tcp+dns://, a broker killed midway: 0 lost, 0 wrong")


def test_the_async_client_follows_a_name_too(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, example: dict[str, str]
) -> None:
    import asyncio

    monkeypatch.setattr(d, "system_resolver", zone_resolver(pool.zone))
    monkeypatch.setenv("ROKV_DNS_INTERVAL", "0.2")
    pool.zone.write_text("")  # nothing yet: the first calls get no answer
    keys = list(example)[:64]

    async def run() -> float:
        async with AsyncClient(f"tcp+dns://pool.test:{pool.front}", timeout=0.2, retries=0) as client:
            with pytest.raises(ServiceUnavailable):
                await client.get(keys[0])
            pool.zone.write_text("127.0.0.1\n")
            started = time.monotonic()
            while True:
                try:
                    values = await asyncio.gather(*(client.get(k) for k in keys))
                    break
                except ServiceUnavailable:
                    assert time.monotonic() - started < scaled(10), "the name's broker was never used"
            assert values == [example[k] for k in keys]
            return time.monotonic() - started

    took = asyncio.run(run())
    print(f"\nthe async client answered through a broker new under its name within {took:.2f} s")


def test_the_worker_forgets_the_link_to_a_broker_gone_from_its_name() -> None:
    """Else it would be counted (rokv_worker_brokers_connected) and warned
    about as "no connection" forever."""
    import zmq

    from rokv.server.monitor import ConnectionWatcher

    ctx = zmq.Context()
    watcher = ConnectionWatcher(logging.getLogger("test"), warn_after=0.0)
    sock = ctx.socket(zmq.DEALER)
    try:
        watcher.watch(sock, "broker tcp://10.0.0.1:5556", server=False)
        assert [link.label for link in watcher.links()] == ["broker tcp://10.0.0.1:5556"]
        ConnectionWatcher.unwatch(sock)
        watcher.forget("broker tcp://10.0.0.1:5556")
        watcher.forget("broker never watched")  # no error
        assert watcher.links() == []
    finally:
        sock.close(linger=0)
        watcher.stop()
        ctx.term()


def test_the_directory_of_a_name_is_a_name_too_so_direct_clients_go_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example: dict[str, str]
) -> None:
    # The broker's directory sits at its frontend's port + 2, under the same
    # name: a direct client given tcp+dns://NAME:PORT asks tcp+dns://NAME:PORT+2.
    assert directory_endpoint("tcp+dns://brokers.test:5555") == "tcp+dns://brokers.test:5557"
    stack = Stack(tmp_path, direct=True)
    try:
        stack.wait_ready()
        port = int(stack.frontend.rpartition(":")[2])
        monkeypatch.setattr(d, "system_resolver", lambda name: ["127.0.0.1"] if name == "pool.test" else [])
        keys = list(example)[:200]
        with Client(f"tcp+dns://pool.test:{port}", direct=True) as client:
            assert client.get_many(keys) == [example[k] for k in keys]
            for key in keys:
                assert client.get(key) == example[key]
            assert client._workers is not None
            direct = {link.endpoint: link.replies for link in client._workers.links}
        assert set(direct) == set(stack.directs.values())
        assert sum(direct.values()) >= len(keys), f"the lookups went direct: {direct}"
    finally:
        stack.stop()
