"""The real supervisord running the real supervisord.conf."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from client import Client, ServiceUnavailable
from procs import EXAMPLE, REPO, child_env, free_port, scaled, seen_workers, wait_for


class Supervisor:
    """supervisord -n on a copy of the checkout's supervisord.conf in a temp folder."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.conf = root / "supervisord.conf"
        shutil.copy(REPO / "supervisord.conf", self.conf)
        (root / "run").mkdir()
        (root / "data").symlink_to(REPO / "data")
        # supervisord execs rokv-broker and friends from PATH: the ones
        # installed next to this interpreter.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.log = open(root / "supervisord.out", "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            env=self.env, capture_output=True, text=True, timeout=scaled(30),
        )

    def status(self) -> dict[str, tuple[str, int | None]]:
        """Process name -> (state, pid)."""
        states = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
                states[parts[0]] = (parts[1], pid)
        return states

    def running(self) -> dict[str, int]:
        return {name: pid for name, (state, pid) in self.status().items() if state == "RUNNING" and pid}

    def shutdown(self) -> None:
        if self.popen.poll() is None:
            self.ctl("shutdown")
            try:
                self.popen.wait(scaled(30))
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(scaled(15))
        self.log.close()


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture()
def supervisor_factory(tmp_path: Path) -> Iterator:
    started: list[Supervisor] = []

    def start(**env: str) -> Supervisor:
        sup = Supervisor(tmp_path, child_env(**env))
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.shutdown()


def test_defaults_run_a_broker_and_two_workers_that_are_restarted_and_stopped(
    supervisor_factory, example: dict[str, str]
) -> None:
    if ports_free(5555, 5556):
        sup = supervisor_factory()  # no ROKV_* variables at all: the defaults
        endpoint = "tcp://127.0.0.1:5555"
    else:
        # The quick start's own service holds the default ports: check all the
        # other defaults on free ports rather than talk to that service.
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        sup = supervisor_factory(ROKV_FRONTEND=endpoint, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}")
    assert len(seen_workers(endpoint, 2, timeout=30)) == 2
    running = wait_for(
        lambda: (r := sup.running()) and {"broker", "worker:worker_00", "worker:worker_01"} <= set(r) and r,
        15, "broker and two workers RUNNING",
    )
    assert "worker:worker_02" not in running
    keys = list(example)[:200]

    victim = running["worker:worker_00"]
    os.kill(victim, signal.SIGKILL)
    with Client(endpoint, timeout=0.5, retries=4) as client:
        for key in keys:  # keep looking up while supervisor restarts the victim
            assert client.get(key) == example[key]
        restarted = wait_for(
            lambda: (pid := sup.running().get("worker:worker_00")) and pid != victim and pid,
            20, "worker_00 to be restarted",
        )
        assert client.get_many(keys) == [example[k] for k in keys]
    assert not alive(victim)
    assert restarted in {int(w["pid"]) for w in [_ping_until(endpoint, restarted)]}

    pids = list(sup.running().values())
    sup.shutdown()
    assert sup.popen.returncode == 0
    assert [pid for pid in pids if alive(pid)] == []
    with Client(endpoint, timeout=0.2, retries=0) as client:
        with pytest.raises(ServiceUnavailable):
            client.ping()


def _ping_until(endpoint: str, pid: int) -> dict:
    """Ping until the worker with ``pid`` answers (proves it serves)."""
    with Client(endpoint, timeout=0.5, retries=0) as client:
        def hit() -> dict | None:
            try:
                info = client.ping()
            except ServiceUnavailable:
                return None
            return info if info["pid"] == pid else None
        return wait_for(hit, 20, f"worker pid {pid} to answer", interval=0.01)


def test_environment_sets_workers_dataset_and_endpoints(supervisor_factory, tmp_path: Path) -> None:
    data = tmp_path / "small.jsonl"
    data.write_text(
        json.dumps({"key": "8a35eb59-62b3-481c-8875-1f248df4c952", "value": "only one"}) + "\n", encoding="utf-8"
    )
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    sup = supervisor_factory(ROKV_WORKERS="3", ROKV_DATA=str(data), ROKV_FRONTEND=frontend, ROKV_BACKEND=backend)
    ids = seen_workers(frontend, 3, timeout=30)
    assert ids == {"worker_00", "worker_01", "worker_02"}  # supervisor's process names
    with Client(frontend, timeout=1, retries=2) as client:
        assert client.get("8A35EB59-62B3-481C-8875-1F248DF4C952") == "only one"
        assert client.ping()["keys"] == 1
    wanted = {"broker", "worker:worker_00", "worker:worker_01", "worker:worker_02"}
    running = wait_for(lambda: (r := sup.running()) and wanted <= set(r) and r, 15, "three workers RUNNING")
    assert "worker:worker_03" not in running
    assert sup.status()["worker:worker_03"][0] == "STOPPED"
