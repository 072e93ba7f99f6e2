"""The real supervisord running the real supervisord.conf."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rokv import Client, ServiceUnavailable

from support.procs import REPO, child_env, free_port, scaled, seen_workers, wait_for
from support.supervision import Supervisor, alive, ports_free


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
        15,
        "broker and two workers RUNNING",
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
            20,
            "worker_00 to be restarted",
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
    wanted = {"pool", "broker", "worker:worker_00", "worker:worker_01", "worker:worker_02"}
    wait_for(lambda: set(sup.running()) == wanted, 15, "three workers RUNNING")
    # No idle slots: what is listed is what runs, so status says "healthy".
    assert set(sup.status()) == wanted
    assert sup.status_code() == 0


@pytest.mark.slow
def test_more_workers_than_the_old_sixteen_slots(supervisor_factory) -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    sup = supervisor_factory(ROKV_WORKERS="17", ROKV_FRONTEND=frontend, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}")
    workers = {f"worker:worker_{i:02d}" for i in range(17)}
    wait_for(lambda: set(sup.running()) == {"pool", "broker"} | workers, 60, "17 workers RUNNING")
    assert sup.status_code() == 0
    assert len(seen_workers(frontend, 17, timeout=60)) == 17


@pytest.mark.parametrize("value", ["0", "abc", "-1", "2.5"])
def test_a_bad_worker_count_starts_nothing_and_says_why(supervisor_factory, value: str) -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    sup = supervisor_factory(ROKV_WORKERS=value, ROKV_FRONTEND=frontend, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}")
    wait_for(lambda: sup.status().get("pool", ("",))[0] == "FATAL", 30, "the pool program to be FATAL")
    assert sup.status_code() == 3  # what monitoring reads as "not running"
    assert set(sup.status()) == {"pool"}  # nothing else was started
    tail = sup.ctl("tail", "pool").stdout
    assert f"ROKV_WORKERS={value!r}" in tail, tail
    with Client(frontend, timeout=0.2, retries=0) as client:
        with pytest.raises(ServiceUnavailable):
            client.ping()


@pytest.mark.slow
def test_a_restart_with_another_count_replaces_the_last_runs_workers(supervisor_factory) -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    env = {"ROKV_FRONTEND": frontend, "ROKV_BACKEND": f"tcp://127.0.0.1:{free_port()}"}
    first = supervisor_factory(ROKV_WORKERS="3", **env)
    wait_for(lambda: "worker:worker_02" in first.running(), 30, "three workers")
    first.shutdown()
    # The same folder, so run/pool.conf of the first run is read at the start.
    second = supervisor_factory(ROKV_WORKERS="1", **env)
    wait_for(lambda: set(second.running()) == {"pool", "broker", "worker:worker_00"}, 30, "one worker")
    assert set(second.status()) == {"pool", "broker", "worker:worker_00"}
    assert second.status_code() == 0


@pytest.mark.slow
def test_a_big_broken_dataset_ends_fatal_after_one_parse(supervisor_factory, tmp_path: Path) -> None:
    # Loading takes longer than startsecs (1 s), so supervisor counts each
    # start as good and used to restart the worker forever, reparsing the file
    # every time. The worker now remembers the refusal of an unchanged file
    # and refuses it at once, which supervisor counts as failed starts.
    data = tmp_path / "big.jsonl"
    subprocess.run(
        [sys.executable, str(REPO / "data" / "generate.py"), "-o", str(data), "--count", "600000"],
        check=True,
        capture_output=True,
        timeout=scaled(120),
    )
    with data.open("rb+") as f:
        first = f.readline()
        f.seek(0, 2)
        f.write(first)  # a duplicate key on the last line
    frontend = f"tcp://127.0.0.1:{free_port()}"
    sup = supervisor_factory(
        ROKV_WORKERS="1", ROKV_DATA=str(data), ROKV_FRONTEND=frontend, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}"
    )
    wait_for(lambda: sup.status().get("worker:worker_00", ("",))[0] == "FATAL", 90, "the worker to be FATAL")
    log = (tmp_path / "run" / "worker_00.log").read_text()
    refusals = [line for line in log.splitlines() if "duplicate key" in line]
    assert "line 600001: duplicate key" in refusals[0]
    parses = [line for line in refusals if "found by the start at" not in line]
    assert len(parses) == 1, log  # every later start refused the unchanged file at once
    assert len(refusals) >= 2
    assert sup.status_code() == 3
    assert "Traceback" not in log


@pytest.mark.slow
def test_one_configuration_runs_a_broker_host_a_worker_host_or_both(
    supervisor_factory, tmp_path: Path, example: dict[str, str]
) -> None:
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = {"ROKV_FRONTEND": frontend, "ROKV_BACKEND": backend}
    broker_host = Supervisor(tmp_path / "broker-host", child_env(ROKV_ROLE="broker", **env), fresh=True)
    worker_host = Supervisor(
        tmp_path / "worker-host", child_env(ROKV_ROLE="worker", ROKV_WORKERS="2", **env), fresh=True
    )
    try:
        wait_for(lambda: set(broker_host.running()) == {"pool", "broker"}, 30, "the broker host")
        wait_for(
            lambda: set(worker_host.running()) == {"pool", "worker:worker_00", "worker:worker_01"},
            30,
            "the worker host",
        )
        assert broker_host.status_code() == worker_host.status_code() == 0
        assert len(seen_workers(frontend, 2, timeout=30)) == 2
        key = next(iter(example))
        with Client(frontend, timeout=1, retries=2) as client:
            assert client.get(key) == example[key]
    finally:
        worker_host.shutdown()
        broker_host.shutdown()


def test_an_unknown_role_starts_nothing_and_says_why(supervisor_factory) -> None:
    sup = supervisor_factory(
        ROKV_ROLE="gateway",
        ROKV_FRONTEND=f"tcp://127.0.0.1:{free_port()}",
        ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}",
    )
    wait_for(lambda: sup.status().get("pool", ("",))[0] == "FATAL", 30, "the pool program to be FATAL")
    assert set(sup.status()) == {"pool"}
    assert "ROKV_ROLE='gateway': expected one of all, broker, worker" in sup.ctl("tail", "pool").stdout
