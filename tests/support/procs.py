"""Starting and stopping real rokv processes for tests, by PID, with bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rokv import Client, ServiceUnavailable
from rokv.security import CurvePeer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "data" / "example.json"
#: One knob to stretch every wait on a slow machine.
WAIT_SCALE = float(os.environ.get("ROKV_TEST_WAIT_SCALE", "1"))

T = TypeVar("T")


def scaled(seconds: float) -> float:
    return seconds * WAIT_SCALE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}")
        time.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROKV_") or k == "ROKV_TEST_WAIT_SCALE"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """One child process with its output captured to a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            args,
            cwd=REPO,
            env=env or child_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it outlives ``timeout``; returns the exit status."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)
        finally:
            self._log.close()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(scaled(timeout))


def start_broker(log_dir: Path, frontend: str, backend: str, *extra: str, name: str = "broker") -> Proc:
    return Proc(
        name, [sys.executable, "-m", "rokv.broker", "--frontend", frontend, "--backend", backend, *extra], log_dir
    )


def start_worker(
    log_dir: Path,
    backend: str,
    data: Path | str = EXAMPLE,
    *extra: str,
    name: str = "worker",
    pure_python: bool = False,
    env: dict[str, str] | None = None,
) -> Proc:
    """A worker; ``pure_python`` runs its Python loop instead of the compiled
    one; ``env``: settings added to its environment."""
    extra_env = {**(env or {}), **({"ROKV_PURE_PYTHON": "1"} if pure_python else {})}
    env = child_env(**extra_env) if extra_env else None
    return Proc(
        name,
        [sys.executable, "-m", "rokv.worker", "--backend", backend, "--data", str(data), "--name", name, *extra],
        log_dir,
        env,
    )


def seen_workers(endpoint: str, count: int, timeout: float = 15.0, curve: CurvePeer | None = None) -> set[str]:
    """Ping until ``count`` distinct workers have answered; their ids."""
    seen: set[str] = set()
    with Client(endpoint, timeout=0.5, retries=0, curve=curve) as client:

        def enough() -> bool:
            try:
                seen.add(client.ping()["id"])
            except ServiceUnavailable:
                pass
            return len(seen) >= count

        wait_for(enough, timeout, f"{count} workers to answer ping at {endpoint}", interval=0.01)
    return seen


#: What a worker is given to serve clients directly: a free loopback port.
DIRECT_BIND = ("--direct-bind", "tcp://127.0.0.1:*")


def free_frontend() -> str:
    """A loopback frontend endpoint whose directory port (+2) is free too."""
    from rokv.directory import directory_endpoint

    for _ in range(100):
        frontend = f"tcp://127.0.0.1:{free_port()}"
        directory = directory_endpoint(frontend)
        if directory is None:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", int(directory.rpartition(":")[2])))
            except OSError:
                continue
        return frontend
    raise AssertionError("no free frontend port with a free directory port")


def direct_endpoints(endpoint: str, count: int, timeout: float = 15.0) -> dict[str, str]:
    """Ping through the broker until ``count`` workers answered: their direct
    endpoints (from ``ping``), by worker id."""
    found: dict[str, str] = {}
    with Client(endpoint, timeout=0.5, retries=0) as client:

        def enough() -> bool:
            try:
                info = client.ping()
            except ServiceUnavailable:
                return False
            if info.get("direct"):
                found[info["id"]] = info["direct"]
            return len(found) >= count

        wait_for(enough, timeout, f"{count} workers' direct endpoints at {endpoint}", interval=0.01)
    return found


class Stack:
    """A broker and workers on free loopback ports; ``direct``: the workers
    serve direct endpoints too, and :meth:`client` goes direct."""

    def __init__(
        self,
        log_dir: Path,
        workers: int = 2,
        data: Path | str = EXAMPLE,
        pure_python: bool = False,
        direct: bool = False,
    ) -> None:
        self.log_dir = log_dir
        self.pure_python = pure_python
        self.direct = direct
        self.frontend = free_frontend()
        self.backend = f"tcp://127.0.0.1:{free_port()}"
        self.broker = start_broker(log_dir, self.frontend, self.backend)
        extra = DIRECT_BIND if direct else ()
        self.workers = [
            start_worker(log_dir, self.backend, data, *extra, name=f"worker{i}", pure_python=pure_python)
            for i in range(workers)
        ]
        #: Worker id -> direct endpoint, once ready (direct stacks only).
        self.directs: dict[str, str] = {}

    def wait_ready(self) -> Stack:
        seen_workers(self.frontend, len(self.workers))
        if self.direct:
            self.directs = direct_endpoints(self.frontend, len(self.workers))
        return self

    @property
    def raw_endpoint(self) -> str:
        """Where raw frames go: a worker's direct endpoint on a direct stack,
        else the broker's frontend."""
        return sorted(self.directs.values())[0] if self.direct else self.frontend

    def client(self, **kwargs: float) -> Client:
        if self.direct:
            kwargs.setdefault("direct", True)
        return Client(self.frontend, **kwargs)  # type: ignore[arg-type]  # the client's own keywords

    def stop(self) -> None:
        for proc in [*self.workers, self.broker]:
            proc.stop()
