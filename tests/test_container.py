"""The Dockerfile, built and run for real: the image serves through the HTTP
gateway and the ZeroMQ port, runs as a non-root user without build tools,
reports healthy, and stops on SIGTERM within 10 s with exit status 0.

Needs a running Docker daemon and a local base image (no registry is
reachable here): .ci/run prepares both (.ci/docker-prepare, which runs
docker/make-base). Without them the tests that build are skipped, with the
reason shown by ``pytest -ra``; the ones that read the files always run.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from rokv import Client

from support.procs import REPO, scaled, wait_for

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

T = TypeVar("T")

#: What the final image must not hold: no way to compile or install anything.
BUILD_TOOLS = ("gcc", "cc", "make", "pip", "pip3")
#: Prints where each name given is found, one a line, then pip's version if
#: python3 has pip as a module. One `command -v` per name: given several,
#: dash's looks at the first only (a missing gcc once hid /usr/bin/pip).
FIND_TOOLS = 'for name in "$@"; do command -v "$name"; done; python3 -m pip --version 2>/dev/null; true'


def built(test: T) -> T:
    """Marks a test that builds the image: slow, and minutes on a fresh
    machine (the build downloads the dependencies)."""
    return pytest.mark.slow(pytest.mark.timeout(900)(test))


#: The base image to build FROM: a local image (.ci/docker-prepare makes
#: this one with debootstrap), since no registry is reachable here.
BASE = os.environ.get("ROKV_TEST_DOCKER_BASE", "rokv-base:bookworm")


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def docker_unavailable() -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "the docker command is not installed (.ci/docker-prepare installs it)"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"the Docker daemon is not running or not reachable: {info.stderr.strip()[:200]}"
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        return f"the base image {BASE} is missing (.ci/docker-prepare builds it with debootstrap)"
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    why = docker_unavailable()
    if why:
        pytest.skip(f"Docker cannot run here: {why}")
    build_id = uuid.uuid4().hex[:12]
    tag = f"rokv-test:{build_id}"
    args = ["build", "--force-rm", "--build-arg", f"BASE={BASE}", "--build-arg", f"ROKV_BUILD_ID={build_id}", "-t", tag]
    # A TLS-intercepting proxy's CA, if this host trusts one, for pip in the build.
    cas = "".join(Path(p).read_text() for p in sorted(glob.glob("/usr/local/share/ca-certificates/*.crt")))
    if cas:
        args += ["--build-arg", f"EXTRA_CA_CERTS={cas}"]
    try:
        docker(*args, str(REPO), timeout=900)
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)
        # This build's leftover stage only: others may be building on this daemon.
        docker("image", "prune", "-f", "--filter", f"label=rokv.build={build_id}", check=False)
        left = docker("images", "-q", "--filter", f"label=rokv.build={build_id}", check=False).stdout.split()
        assert left == [], f"the build stage of {tag} is left behind: {left}"


class Container:
    """One container started by a test, removed after it."""

    def __init__(
        self, image: str, *args: str, command: tuple[str, ...] = (), registry: list[Container] | None = None
    ) -> None:
        self.name = f"rokv-test-{uuid.uuid4().hex[:12]}"
        if registry is not None:
            registry.append(self)  # before the run: a container made but not started is removed too
        docker("run", "-d", "--name", self.name, *args, image, *command)

    def port(self, inner: int) -> int:
        out = docker("port", self.name, f"{inner}/tcp").stdout.split()[0]
        return int(out.rsplit(":", 1)[1])

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)


def wait_healthy(url: str, container: Container, what: str) -> None:
    """Wait until the gateway at ``url`` answers /healthz with 200."""

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, 60, f"{what} to answer /healthz\n{container.logs()}", interval=0.2)


def health_passes(c: Container) -> bool:
    """The image's own health check, run in ``c``, exits 0."""
    return docker("exec", c.name, "rokv-container", "health", check=False).returncode == 0


def wait_health_passes(c: Container) -> None:
    """Wait for the image's health check to pass in ``c``: programs under
    supervisor count as serving only once RUNNING (startsecs after their
    start), which may be later than their first answer."""
    wait_for(lambda: health_passes(c), 30, f"{c.name}'s health check to pass", interval=0.5)


@pytest.fixture()
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.remove()


@built
def test_the_image_serves_every_role_in_one_container_and_stops_cleanly_on_sigterm(
    image: str, containers: list[Container], example: dict[str, str]
) -> None:
    c = Container(image, "-p", "127.0.0.1::8080", "-p", "127.0.0.1::5555", registry=containers)
    url = f"http://127.0.0.1:{c.port(8080)}"

    wait_healthy(url, c, "the container's gateway")

    keys = list(example)[:100]
    with requests.Session() as http:
        for key in keys[:20]:
            assert http.post(f"{url}/get_value", json={"key": key}, timeout=10).json() == {"value": example[key]}
        got = http.post(f"{url}/get_values", json={"keys": keys}, timeout=10).json()
        assert got == {"values": [example[k] for k in keys]}
    with Client(f"tcp://127.0.0.1:{c.port(5555)}", timeout=2, retries=2) as kv:
        assert kv.get_many(keys) == [example[k] for k in keys]

    assert docker("exec", c.name, "id", "-u").stdout.strip() != "0"
    # The build stage had a compiler: the workers run the compiled loop.
    worker_log = docker("exec", c.name, "cat", "/app/run/worker_00.log").stdout
    assert "compiled hot path in use" in worker_log, worker_log
    tools = docker("exec", c.name, "sh", "-c", FIND_TOOLS, "sh", *BUILD_TOOLS)
    assert tools.stdout == "", tools.stdout
    wait_health_passes(c)
    wait_for(lambda: c.state().get("Health", {}).get("Status") == "healthy", 60, "docker to report healthy")

    # SIGTERM under load: every answer that comes is right, and it is over within 10 s.
    wrong: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as http:
            i = 0
            while not stop.is_set():
                key = keys[i % len(keys)]
                i += 1
                try:
                    res = http.post(f"{url}/get_value", json={"key": key}, timeout=10)
                except requests.ConnectionError:
                    continue  # refused once the gateway stopped listening
                if (res.status_code, res.json()) != (200, {"value": example[key]}):
                    wrong.append(f"{res.status_code} {res.text[:200]}")
                answered[0] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(scaled(1))
        started = time.monotonic()
        docker("kill", "--signal", "TERM", c.name)
        wait_for(lambda: not c.state()["Running"], 15, "the container to stop after SIGTERM", interval=0.1)
        took = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join(scaled(20))
    assert wrong == []
    assert answered[0] > 20
    state = c.state()
    assert state["ExitCode"] == 0, c.logs()
    assert took < 10, f"stopped in {took:.1f} s"
    logs = c.logs()
    assert "Traceback" not in logs
    for program in ("http", "worker_00", "worker_01", "broker"):
        assert f"stopped: {program} (exit status 0)" in logs, logs


@built
def test_the_compose_layout_two_brokers_a_worker_container_and_a_gateway(
    image: str, containers: list[Container], example: dict[str, str]
) -> None:
    # compose.yaml's services, started with plain docker (no compose here).
    network = f"rokv-test-{uuid.uuid4().hex[:12]}"
    docker("network", "create", network)
    try:
        b1 = Container(image, "--network", network, "-e", "ROKV_ROLE=broker", registry=containers)
        b2 = Container(image, "--network", network, "-e", "ROKV_ROLE=broker", registry=containers)
        workers = Container(
            image,
            "--network",
            network,
            "-e",
            "ROKV_ROLE=worker",
            "-e",
            "ROKV_WORKERS=2",
            "-e",
            f"ROKV_BACKEND=tcp://{b1.name}:5556,tcp://{b2.name}:5556",
            registry=containers,
        )
        gateway = Container(
            image,
            "--network",
            network,
            "-e",
            "ROKV_ROLE=http",
            "-e",
            f"ROKV_ENDPOINT=tcp://{b1.name}:5555,tcp://{b2.name}:5555",
            "-p",
            "127.0.0.1::8080",
            registry=containers,
        )
        url = f"http://127.0.0.1:{gateway.port(8080)}"

        wait_healthy(url, gateway, "the gateway container")
        keys = list(example)[100:300]
        with requests.Session() as http:
            assert http.post(f"{url}/get_values", json={"keys": keys}, timeout=10).json() == {
                "values": [example[k] for k in keys]
            }
            # The worker container runs workers only, under supervisor.
            status = docker(
                "exec", workers.name, "supervisorctl", "-c", "/app/supervisord.conf", "status", check=False
            ).stdout
            assert "worker:worker_00" in status and "worker:worker_01" in status and "broker" not in status
            assert "http" not in status, status
            for c in (b1, b2, workers, gateway):
                wait_health_passes(c)
            # One broker gone: the gateway goes on through the other.
            docker("stop", "-t", "10", b1.name, timeout=30)
            assert b1.state()["ExitCode"] == 0, b1.logs()
            for key in keys[:50]:
                res = http.post(f"{url}/get_value", json={"key": key}, timeout=10)
                assert (res.status_code, res.json()) == (200, {"value": example[key]})
        for c in (gateway, workers, b2):
            started = time.monotonic()
            docker("stop", "-t", "10", c.name, timeout=30)
            assert time.monotonic() - started < 10
            assert c.state()["ExitCode"] == 0, c.logs()
    finally:
        for c in containers:
            c.remove()
        docker("network", "rm", network, check=False)


@built
def test_broker_worker_and_gateway_roles_in_containers_of_their_own(
    image: str, containers: list[Container], example: dict[str, str]
) -> None:
    network = f"rokv-test-{uuid.uuid4().hex[:12]}"
    docker("network", "create", network)
    try:
        broker = Container(image, "--network", network, "-e", "ROKV_ROLE=broker", registry=containers)
        # A command after the image replaces the role: one worker process.
        Container(
            image,
            "--network",
            network,
            command=("rokv-worker", "--backend", f"tcp://{broker.name}:5556"),
            registry=containers,
        )
        gateway = Container(
            image,
            "--network",
            network,
            "-e",
            "ROKV_ROLE=http",
            "-e",
            f"ROKV_ENDPOINT=tcp://{broker.name}:5555",
            "-p",
            "127.0.0.1::8080",
            registry=containers,
        )
        url = f"http://127.0.0.1:{gateway.port(8080)}"

        wait_healthy(url, gateway, "the gateway container")
        keys = list(example)[100:150]
        res = requests.post(f"{url}/get_values", json={"keys": keys}, timeout=10)
        assert res.json() == {"values": [example[k] for k in keys]}
        for c in (broker, gateway):
            wait_health_passes(c)
        for c in reversed(containers):
            started = time.monotonic()
            docker("stop", "-t", "10", c.name, timeout=30)
            assert time.monotonic() - started < 10
            assert c.state()["ExitCode"] == 0, c.logs()
    finally:
        for c in containers:
            c.remove()
        docker("network", "rm", network, check=False)


# ------------------------------------------------------------ the files themselves (no Docker needed)


def test_the_build_tools_check_looks_at_each_name(tmp_path: Path) -> None:
    for name in ("make", "pip3"):  # not the first name asked: dash's `command -v gcc cc ...` missed them
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    found = subprocess.run(
        ["/bin/sh", "-c", FIND_TOOLS, "sh", *BUILD_TOOLS],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert found.stdout.split() == [str(tmp_path / "make"), str(tmp_path / "pip3")]


def dockerfile_args() -> set[str]:
    return set(re.findall(r"^ARG ([A-Z_]+)", (REPO / "Dockerfile").read_text(), re.MULTILINE))


def test_the_build_stage_copies_every_folder_of_the_package_mapping() -> None:
    # A layout change once added server/ and ops/ but not to the Dockerfile:
    # pip stopped at "package directory server does not exist".
    with open(REPO / "pyproject.toml", "rb") as f:
        folders = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) /src/\1$", dockerfile, re.MULTILINE))
    assert folders <= copied, f"the Dockerfile does not copy {sorted(folders - copied)} (pyproject's package-dir)"
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert not folders & ignored, f".dockerignore leaves out {sorted(folders & ignored)}"


def test_compose_builds_with_the_same_arguments_as_docker_build() -> None:
    # Behind a TLS-intercepting proxy, pip in the build needs EXTRA_CA_CERTS:
    # `docker compose up --build` must be able to pass it as `docker build` does.
    compose = (REPO / "compose.yaml").read_text()
    block = re.search(r"^    args:\n((?:      .*\n)+)", compose, re.MULTILINE)
    assert block, "compose.yaml has no build args"
    passed = dict(re.findall(r"^      ([A-Z_]+): (\S+)", block.group(1), re.MULTILINE))
    # ROKV_BUILD_ID only labels the build stage for the tests' cleanup.
    assert set(passed) == dockerfile_args() - {"ROKV_BUILD_ID"}
    assert passed["EXTRA_CA_CERTS"] == "${EXTRA_CA_CERTS:-}", passed


def test_every_documented_docker_run_publishes_on_loopback_only() -> None:
    # `-p 5555:5555` publishes an unencrypted pool on every interface of the host.
    published = []
    for path in [REPO / "README.md", REPO / "Dockerfile", *sorted((REPO / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if "docker run" in line:
                published += [(path.name, p) for p in re.findall(r"(?:-p|--publish)[ =](\S+)", line)]
    assert published, "no documented docker run publishes a port"
    assert [(name, p) for name, p in published if not p.startswith("127.0.0.1:")] == []
