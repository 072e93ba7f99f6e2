"""The real supervisord running the real supervisord.conf."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from client import Client, ServiceUnavailable
from procs import free_port, seen_workers, wait_for
from supervision import alive, ports_free


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
