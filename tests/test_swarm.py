"""deploy/swarm/stack.yaml, run for real: a single-node Docker Swarm made by
this test, the image built from the Dockerfile on the local base, the stack
deployed, and under a checking load through the published ports (the two
brokers' and the gateway's):

- every lookup is right;
- ``docker service scale`` of the workers 2 -> 4: the new ones answer through
  both brokers within 10 s (their container host names in ``ping`` answers);
- a broker's container killed: 0 lookups lost, and Swarm's replacement task
  rejoined by every worker (tcp+dns:// re-resolution) within 10 s;
- a dataset change rolled out with ``docker service update``, one task at a
  time, and a refused dataset rolled back by Swarm by itself (the workers'
  health check fails, ``failure_action: rollback``), the pool serving
  throughout.

The figures are printed (``pytest -s``). Whatever happens, the stack is
removed, the swarm left (only when this test made it), and the images and
configs it made removed. Needs Docker and the local base image, as
tests/test_container.py (.ci/docker-prepare makes both).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_container import BASE, docker, docker_unavailable

from rokv import Client, ServiceUnavailable

from support.procs import REPO, free_port, scaled, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

#: The address pool of the swarm's overlay networks: 198.18.0.0/15, never a
#: private range (.ci/docker-prepare gives the daemon's bridges the same range).
SWARM_POOL = ("--default-addr-pool", "198.19.64.0/18", "--default-addr-pool-mask-length", "24")
STACK_FILE = REPO / "deploy" / "swarm" / "stack.yaml"
#: Seconds the issue allows for new workers to answer, and for every worker
#: to rejoin a replaced broker.
WITHIN = 10.0


class Swarm:
    """The stack of one test run, and what it made (removed by :meth:`remove`)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.suffix = suffix = uuid.uuid4().hex[:12]
        self.name = f"rokvtest{suffix}"
        self.image = f"rokv-swarm-test:{suffix}"
        self.ports = {
            "ROKV_BROKER_A_PORT": free_port(),
            "ROKV_BROKER_B_PORT": free_port(),
            "ROKV_HTTP_PORT": free_port(),
            "ROKV_METRICS_PORT": free_port(),
        }
        self.made_swarm = False
        self.made_gwbridge = False
        self.deployed = False
        self.configs: list[str] = []

    # -------------------------------------------------------------- setup

    def build(self) -> float:
        started = time.monotonic()
        args = ["build", "--force-rm", "--build-arg", f"BASE={BASE}", "--build-arg", f"ROKV_BUILD_ID={self.suffix}"]
        cas = "".join(Path(p).read_text() for p in sorted(glob.glob("/usr/local/share/ca-certificates/*.crt")))
        if cas:  # a TLS-intercepting proxy's CA, for pip in the build (see the Dockerfile)
            args += ["--build-arg", f"EXTRA_CA_CERTS={cas}"]
        docker(*args, "-t", self.image, str(REPO), timeout=1200)
        return time.monotonic() - started

    def init(self) -> None:
        state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
        if state != "inactive":
            pytest.skip(f"this Docker daemon is in a swarm already ({state}); the test makes and leaves its own")
        self.made_gwbridge = docker("network", "inspect", "docker_gwbridge", check=False).returncode != 0
        # Overlay networks from the range reserved for network benchmarks, as
        # every test host here is (Docker's default pools are private ranges).
        docker("swarm", "init", "--advertise-addr", "127.0.0.1", *SWARM_POOL)
        self.made_swarm = True

    def deploy(self) -> None:
        self.deployed = True
        # The stack file's variables: this build's image, free host ports.
        env = {**os.environ, "ROKV_IMAGE": self.image, **{k: str(v) for k, v in self.ports.items()}}
        result = subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), self.name],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(120),
        )
        assert result.returncode == 0, f"docker stack deploy failed:\n{result.stdout}\n{result.stderr}"

    def config(self, name: str, path: Path) -> str:
        full = f"{self.name}-{name}"
        docker("config", "create", full, str(path))
        self.configs.append(full)
        return full

    # -------------------------------------------------------------- looking

    def service(self, service: str) -> str:
        return f"{self.name}_{service}"

    def containers(self, service: str) -> list[str]:
        return docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.service(service)}"
        ).stdout.split()

    def inspect(self, service: str) -> dict:
        return json.loads(docker("service", "inspect", self.service(service)).stdout)[0]

    def update_state(self, service: str) -> str:
        return (self.inspect(service).get("UpdateStatus") or {}).get("State", "")

    def env(self, service: str) -> dict[str, str]:
        spec = self.inspect(service)["Spec"]["TaskTemplate"]["ContainerSpec"]
        return dict(item.split("=", 1) for item in spec.get("Env", []))

    def endpoint(self, broker: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[f'ROKV_BROKER_{broker.upper()}_PORT']}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ROKV_HTTP_PORT']}"

    def logs(self) -> str:
        out = []
        for service in ("broker-a", "broker-b", "workers", "gateway"):
            result = docker("service", "logs", "--tail", "30", self.service(service), check=False, timeout=30)
            out.append(f"--- {service}\n{result.stdout[-3000:]}{result.stderr[-1000:]}")
        ps = docker("stack", "ps", "--no-trunc", self.name, check=False).stdout
        return "\n".join([ps, *out])

    # -------------------------------------------------------------- teardown

    def remove(self) -> None:
        """Whatever happened: the stack, its configs, the swarm (when made
        here), the image and this build's leftover stage."""
        if self.deployed:
            docker("stack", "rm", self.name, check=False, timeout=120)
            label = f"label=com.docker.stack.namespace={self.name}"
            try:
                wait_for(lambda: not docker("ps", "-aq", "--filter", label).stdout.strip(), 60, "the stack to go")
            except AssertionError:
                pass  # leaving the swarm below removes what is left
        for config in self.configs:
            docker("config", "rm", config, check=False)
        if self.made_swarm:
            docker("swarm", "leave", "--force", check=False, timeout=120)
            if self.made_gwbridge:
                docker("network", "rm", "docker_gwbridge", check=False)
        docker("rmi", "-f", self.image, check=False, timeout=120)
        # This build's leftover stage only (the Dockerfile labels it with
        # ROKV_BUILD_ID): others may be building on this daemon.
        docker("image", "prune", "-f", "--filter", f"label=rokv.build={self.suffix}", check=False, timeout=120)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    why = docker_unavailable()
    if why:
        pytest.skip(f"Docker cannot run here: {why}")
    made = Swarm(tmp_path_factory.mktemp("swarm"))
    try:
        took = made.build()
        print(f"\nimage {made.image} built in {took:.0f} s")
        made.init()
        made.deploy()
        yield made
    finally:
        made.remove()


# ------------------------------------------------------------------ load


class Load:
    """Lookups through both brokers' published ports and through the
    gateway's, each answer checked, until stopped."""

    def __init__(self, swarm: Swarm, example: dict[str, str], keys: list[str]) -> None:
        self.swarm, self.example, self.keys = swarm, example, keys
        self.counts = {"zmq": 0, "http": 0}
        self.lost: list[str] = []
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._zmq), threading.Thread(target=self._http)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(scaled(30))

    @property
    def total(self) -> int:
        return self.counts["zmq"] + self.counts["http"]

    def _zmq(self) -> None:
        endpoint = f"{self.swarm.endpoint('a')},{self.swarm.endpoint('b')}"
        with Client(endpoint) as client:  # the default retries: 3.75 s before a call gives up
            i = 0
            while not self._stop.is_set() and i < 10_000_000:
                chunk = [self.keys[(i + j) % len(self.keys)] for j in range(10)]
                i += 10
                try:
                    values = client.get_many(chunk)
                except ServiceUnavailable as exc:
                    self.lost.append(f"zmq: {exc}")
                    continue
                self.counts["zmq"] += len(chunk)
                self.wrong += [f"zmq {k}: {v!r}" for k, v in zip(chunk, values) if v != self.example[k]]
                time.sleep(0.002)  # a steady load, not a saturating one: the machine is shared

    def _http(self) -> None:
        with requests.Session() as http:
            i = 0
            while not self._stop.is_set() and i < 1_000_000:
                key = self.keys[i % len(self.keys)]
                i += 1
                try:
                    res = http.post(f"{self.swarm.url}/get_value", json={"key": key}, timeout=10)
                except requests.RequestException as exc:
                    self.lost.append(f"http: {exc}")
                    time.sleep(0.1)
                    continue
                self.counts["http"] += 1
                if res.status_code != 200:
                    self.lost.append(f"http {res.status_code}: {res.text[:200]}")
                elif res.json() != {"value": self.example[key]}:
                    self.wrong.append(f"http {key}: {res.text[:200]}")
                time.sleep(0.01)


def workers_seen(swarm: Swarm, broker: str, tries: int = 60) -> dict[str, dict]:
    """The workers answering pings through ``broker``'s published port, by
    container host name (each worker runs in a container of its own)."""
    seen: dict[str, dict] = {}
    try:
        with Client(swarm.endpoint(broker), timeout=0.5, retries=0) as client:
            for _ in range(tries):
                try:
                    info = client.ping()
                except ServiceUnavailable:
                    continue
                seen[info["host"]] = info
    except ValueError:
        pass
    return seen


def wait_joined(swarm: Swarm, broker: str, workers: set[str], timeout: float) -> float:
    """Seconds until every one of ``workers`` (host names) has answered a
    ping through ``broker``'s port: pings go round-robin over the workers
    connected to it, so each answers once it has joined."""
    started = time.monotonic()
    seen: set[str] = set()
    with Client(swarm.endpoint(broker), timeout=0.3, retries=0) as client:
        while not seen >= workers:
            try:
                seen.add(client.ping()["host"])
            except ServiceUnavailable:
                pass
            if time.monotonic() - started > scaled(timeout):
                raise AssertionError(f"only {sorted(seen)} of {sorted(workers)} joined\n{swarm.logs()}")
    return time.monotonic() - started


def wait_workers(swarm: Swarm, count: int, timeout: float, what: str, check: object = None) -> float:
    """Seconds until ``count`` workers answer through both brokers (and
    ``check(info)`` holds for each, when given)."""
    started = time.monotonic()

    def ready() -> bool:
        for broker in ("a", "b"):
            seen = workers_seen(swarm, broker)
            if len(seen) < count or (check is not None and not all(check(i) for i in seen.values())):  # type: ignore[operator]
                return False
        return True

    try:
        wait_for(ready, timeout, what, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{swarm.logs()}") from None
    return time.monotonic() - started


# ------------------------------------------------------------------ the test


def test_a_swarm_stack_serves_scales_survives_a_killed_broker_and_rolls_datasets_out_and_back(
    swarm: Swarm, example: dict[str, str], tmp_path: Path
) -> None:
    keys = list(example)[:2000]
    # The pool comes up: both brokers reach both workers, the gateway answers.
    wait_workers(swarm, 2, 240, "the stack's 2 workers to answer through both brokers")
    wait_for(
        lambda: _status(f"{swarm.url}/healthz") == 200, 120, f"the gateway to be healthy\n{swarm.logs()}", interval=0.5
    )
    metrics = requests.get(f"http://127.0.0.1:{swarm.ports['ROKV_METRICS_PORT']}/metrics", timeout=10).text
    assert "rokv_broker_" in metrics, metrics[:2000]
    figures: dict[str, str] = {}

    with Load(swarm, example, keys) as load:
        time.sleep(scaled(3))
        assert load.counts["zmq"] > 0 and load.counts["http"] > 0, (load.counts, load.lost[:5])
        assert load.lost == [] and load.wrong == []

        # Scale the workers 2 -> 4: the new ones answer through both brokers.
        before = set(workers_seen(swarm, "a"))
        started = time.monotonic()
        docker("service", "scale", "--detach", f"{swarm.service('workers')}=4")
        took = wait_workers(swarm, 4, 60, "4 workers to answer through both brokers")
        scaled_in = time.monotonic() - started
        after = workers_seen(swarm, "a", tries=80)
        assert len(set(after) - before) >= 2, (before, after)
        figures["scale 2 -> 4: new workers answering through both brokers"] = f"{scaled_in:.1f} s"
        assert took <= scaled(WITHIN), f"new workers answered after {scaled_in:.1f} s"

        # Kill broker-a's container: Swarm starts a new task (a new address);
        # every worker finds it by its name and serves it.
        workers = set(workers_seen(swarm, "b", tries=80))
        assert len(workers) == 4
        lost_before = len(load.lost)
        (victim,) = swarm.containers("broker-a")
        started = time.monotonic()
        docker("kill", victim)
        wait_for(lambda: swarm.containers("broker-a") not in ([], [victim]), 60, "Swarm to replace broker-a")
        replaced = time.monotonic() - started
        rejoined = replaced + wait_joined(swarm, "a", workers, 60)
        figures["broker-a killed: new task running"] = f"{replaced:.1f} s after the kill"
        figures["broker-a killed: every worker serving its new task"] = (
            f"{rejoined - replaced:.1f} s after it ran ({rejoined:.1f} s after the kill)"
        )
        assert len(load.lost) == lost_before, load.lost[lost_before:][:5]

        # A new dataset, rolled out one task at a time: 2000 keys of the
        # example (the load's keys, so every answer stays checkable) and 10 new.
        extra = {str(uuid.uuid4()): f"v2 value {i}" for i in range(10)}
        v2 = {**{k: example[k] for k in keys}, **extra}
        (tmp_path / "v2.json").write_text(json.dumps(v2))
        config = swarm.config("data-v2", tmp_path / "v2.json")
        started = time.monotonic()
        docker(
            "service",
            "update",
            "--detach",
            "--config-add",
            f"source={config},target=/data/v2.json",
            "--env-add",
            "ROKV_DATA=/data/v2.json",
            swarm.service("workers"),
            timeout=120,
        )
        wait_for(
            lambda: swarm.update_state("workers") == "completed", 300, f"the rollout to complete\n{swarm.logs()}", 1
        )
        rolled = time.monotonic() - started
        wait_workers(swarm, 4, 60, "4 workers serving the new dataset", check=lambda i: i["keys"] == len(v2))
        with Client(f"{swarm.endpoint('a')},{swarm.endpoint('b')}") as client:
            assert client.get_many(list(extra)) == list(extra.values())
        figures["dataset v2 rolled out over 4 workers"] = f"{rolled:.0f} s"

        # A dataset the workers refuse: the new task never becomes healthy,
        # and Swarm rolls the service back by itself; v2 is served throughout.
        (tmp_path / "broken.json").write_text('{"not-a-uuid": "refused"}')
        broken = swarm.config("data-broken", tmp_path / "broken.json")
        started = time.monotonic()
        docker(
            "service",
            "update",
            "--detach",
            "--config-add",
            f"source={broken},target=/data/broken.json",
            "--env-add",
            "ROKV_DATA=/data/broken.json",
            swarm.service("workers"),
            timeout=120,
        )
        states: list[str] = []

        def rolled_back() -> bool:
            state = swarm.update_state("workers")
            if not states or states[-1] != state:
                states.append(state)
            return state == "rollback_completed"

        wait_for(rolled_back, 300, f"Swarm to roll the broken dataset back\n{swarm.logs()}", 1)
        back = time.monotonic() - started
        assert swarm.env("workers")["ROKV_DATA"] == "/data/v2.json"
        wait_workers(swarm, 4, 60, "4 workers serving v2 after the rollback", check=lambda i: i["keys"] == len(v2))
        figures["broken dataset rolled back by Swarm"] = f"{back:.0f} s ({' -> '.join(states)})"
        time.sleep(scaled(2))

    print("\nSwarm stack under a checking load (2 brokers, workers 2 -> 4, the gateway):")
    print(f"  lookups: {load.total} ({load.counts['zmq']} through the brokers' ports, {load.counts['http']} over HTTP)")
    print(f"  lost: {len(load.lost)}, wrong: {len(load.wrong)}")
    for what, figure in figures.items():
        print(f"  {what}: {figure}")
    assert load.wrong == [], load.wrong[:5]
    assert load.lost == [], load.lost[:5]
    assert rejoined - replaced <= scaled(WITHIN), (
        f"every worker served the new broker {rejoined - replaced:.1f} s after it ran"
    )


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return 0
