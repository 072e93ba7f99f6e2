"""ROKV_HTTP makes the real supervisord run rokv-http next to the pool."""

from __future__ import annotations

import os
import signal

import pytest
import requests

from support.procs import free_port, wait_for
from support.supervision import alive


def test_rokv_http_adds_a_supervised_gateway_that_asks_this_hosts_broker(
    supervisor_factory, example: dict[str, str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # No ROKV_ENDPOINT: the gateway finds the broker through ROKV_FRONTEND.
    sup = supervisor_factory(
        ROKV_HTTP=f"127.0.0.1:{port}",
        ROKV_FRONTEND=f"tcp://127.0.0.1:{free_port()}",
        ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}",
    )
    wanted = {"pool", "broker", "worker:worker_00", "worker:worker_01", "http"}
    running = wait_for(lambda: (r := sup.running()) and set(r) == wanted and r, 30, "the pool and http RUNNING")
    assert sup.status_code() == 0

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, 30, "the gateway's /healthz to answer 200")
    key = next(iter(example))
    assert requests.post(f"{url}/get_value", json={"key": key}, timeout=10).json() == {"value": example[key]}

    os.kill(running["http"], signal.SIGKILL)
    wait_for(lambda: (pid := sup.running().get("http")) and pid != running["http"], 30, "http to be restarted")
    wait_for(healthy, 30, "the restarted gateway to answer")

    pids = list(sup.running().values())
    sup.shutdown()
    assert sup.popen.returncode == 0
    assert [pid for pid in pids if alive(pid)] == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_without_rokv_http_there_is_no_gateway(supervisor_factory) -> None:
    sup = supervisor_factory(
        ROKV_WORKERS="1", ROKV_FRONTEND=f"tcp://127.0.0.1:{free_port()}", ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}"
    )
    wait_for(lambda: set(sup.running()) == {"pool", "broker", "worker:worker_00"}, 30, "the pool RUNNING")
    assert "http" not in sup.status()


def test_a_bad_rokv_http_starts_nothing_and_says_why(supervisor_factory) -> None:
    sup = supervisor_factory(
        ROKV_HTTP="0.0.0.0:http",
        ROKV_FRONTEND=f"tcp://127.0.0.1:{free_port()}",
        ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}",
    )
    # The reason, not the FATAL state: on a loaded machine rokv-pool may take
    # over startsecs (1 s) to refuse, and supervisor then retries it for good.
    wait_for(lambda: "ROKV_HTTP='0.0.0.0:http'" in sup.ctl("tail", "pool").stdout, 30, "the refusal in pool's log")
    assert set(sup.status()) == {"pool"}  # nothing else was started
