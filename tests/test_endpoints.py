"""Endpoints: one check for the client, the command, the broker and the worker,
so that a typo fails at once instead of reaching a port nobody meant."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from rokv import AsyncClient, Client
from rokv.endpoints import PROCESS_TRANSPORTS, check_endpoint

from support.procs import REPO, child_env, free_port, scaled

GOOD = [
    "tcp://127.0.0.1:5555",
    "tcp://localhost:1",
    "tcp://*:65535",
    "tcp://[::1]:5555",
    "tcp://[fe80::1%eth0]:5555",
    "tcp://eth0;192.0.2.1:5555",
    "tcp://rokv.example.com:5555",
    "ipc:///tmp/rokv.sock",
    "ipc://@abstract",
    "inproc://rokv-test",
]

BAD = [
    ("tcp://127.0.0.1:99999", "port '99999' is not a port number from 1 to 65535"),
    ("tcp://127.0.0.1:65536", "from 1 to 65535"),
    ("tcp://127.0.0.1:0", "from 1 to 65535"),
    ("tcp://127.0.0.1:*", "from 1 to 65535"),
    ("tcp://127.0.0.1:55x5", "from 1 to 65535"),
    ("tcp://127.0.0.1:５５５５", "from 1 to 65535"),  # fullwidth digits
    ("tcp://127.0.0.1:", "from 1 to 65535"),
    ("tcp://127.0.0.1", "needs a host and a port"),
    ("tcp://:5555", "needs a host and a port"),
    ("tcp://::1:5555", "IPv6 address goes in brackets"),
    ("tcp://[::1:5555", "not an IPv6 address in brackets"),
    ("tcp://[nonsense]:5555", "not an IPv6 address in brackets"),
    ("tcp://local host:5555", "white space"),
    ("tcp://", "has no address"),
    ("ipc://", "has no address"),
    ("127.0.0.1:5555", "has no transport"),
    ("nonsense", "has no transport"),
    ("", "has no transport"),
    ("TCP://127.0.0.1:5555", "transport 'TCP' is not supported"),
    ("udp://127.0.0.1:5555", "transport 'udp' is not supported"),
    ("pgm://eth0;239.192.1.1:5555", "transport 'pgm' is not supported"),
]


@pytest.mark.parametrize("endpoint", GOOD)
def test_well_formed_endpoints_are_returned_unchanged(endpoint: str) -> None:
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize(("endpoint", "says"), BAD)
def test_malformed_endpoints_are_refused_with_the_reason(endpoint: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        check_endpoint(endpoint)
    assert says in str(info.value)
    assert repr(endpoint) in str(info.value)


def test_the_transports_can_be_narrowed_and_a_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match="'inproc' is not supported here: expected tcp://HOST:PORT or ipc://PATH"):
        check_endpoint("inproc://x", transports=PROCESS_TRANSPORTS)
    with pytest.raises(ValueError, match="must be a string, not int"):
        check_endpoint(5555)  # type: ignore[arg-type]  # a wrong type on purpose


def test_both_clients_refuse_a_bad_endpoint_at_construction() -> None:
    with pytest.raises(ValueError, match="port '99999'"):
        Client("tcp://127.0.0.1:99999")
    with pytest.raises(ValueError, match="in brackets"):
        AsyncClient("tcp://::1:5555")

    async def in_a_loop() -> None:
        with pytest.raises(ValueError, match="port '70000'"):
            AsyncClient("tcp://127.0.0.1:70000")

    asyncio.run(in_a_loop())


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )


MISSING = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize("command", [["get", MISSING], ["get-many", MISSING], ["ping"], ["bench", "-n", "1"]])
def test_the_command_calls_a_bad_endpoint_a_usage_error(command: list[str]) -> None:
    result = run("client", *command, "--endpoint", "tcp://127.0.0.1:99999")
    assert result.returncode == 2
    assert "--endpoint: endpoint 'tcp://127.0.0.1:99999': port '99999'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("client", *command, ROKV_ENDPOINT="tcp://127.0.0.1:99999")
    assert result.returncode == 2
    assert "rokv: error: endpoint 'tcp://127.0.0.1:99999': port '99999'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "env"), [("--frontend", "ROKV_FRONTEND"), ("--backend", "ROKV_BACKEND")])
def test_the_broker_refuses_a_bad_endpoint_before_binding(option: str, env: str) -> None:
    good = f"tcp://127.0.0.1:{free_port()}"
    other = "--backend" if option == "--frontend" else "--frontend"
    result = run("broker", option, "tcp://127.0.0.1:99999", other, good)
    assert result.returncode == 2
    assert f"argument {option}: endpoint 'tcp://127.0.0.1:99999': port '99999'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("broker", other, good, **{env: "tcp://[::1:5555"})
    assert result.returncode == 2 and "not an IPv6 address in brackets" in result.stderr


def test_the_worker_refuses_a_bad_backend() -> None:
    result = run("worker", "--backend", "tcp://127.0.0.1:99999")
    assert result.returncode == 2
    assert "argument --backend: endpoint 'tcp://127.0.0.1:99999': port '99999'" in result.stderr
    result = run("worker", ROKV_BACKEND="inproc://x")
    assert result.returncode == 2 and "transport 'inproc' is not supported here" in result.stderr
