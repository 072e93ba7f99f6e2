"""How the broker and workers start and stop: exit codes, timing, messages."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from rokv import Client
from rokv import protocol as p
from rokv.worker.build import build

from support.procs import REPO, Proc, child_env, free_port, scaled, seen_workers, start_broker, start_worker, wait_for


def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_broker_exits_0_promptly_even_with_a_request_queued_and_no_worker(tmp_path: Path, signum: int) -> None:
    frontend, backend = endpoints()
    broker = start_broker(tmp_path, frontend, backend)
    wait_for(lambda: "forwarding" in broker.log(), 10, "the broker to start")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(frontend)
    sock.send(p.encode_request(1, p.OP_PING))  # queued: no worker will ever take it
    time.sleep(0.2)
    started = time.monotonic()
    broker.signal(signum)
    status = broker.wait(5)
    sock.close()
    assert status == 0
    assert time.monotonic() - started < 5
    assert "Traceback" not in broker.log()


def test_broker_refuses_an_endpoint_it_cannot_bind(tmp_path: Path) -> None:
    frontend, backend = endpoints()
    first = start_broker(tmp_path, frontend, backend, name="first")
    try:
        wait_for(lambda: "forwarding" in first.log(), 10, "the first broker to start")
        second = start_broker(tmp_path, frontend, f"tcp://127.0.0.1:{free_port()}", name="second")
        assert second.wait(10) != 0
        assert "cannot bind frontend" in second.log()
        assert "Traceback" not in second.log()
    finally:
        first.stop()


def test_worker_logs_one_line_at_start_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    frontend, backend = endpoints()
    broker = start_broker(tmp_path, frontend, backend)
    worker = start_worker(tmp_path, backend)
    try:
        with Client(frontend, timeout=1, retries=5) as client:
            assert client.ping()["keys"] == 10_000
        line = wait_for(lambda: [x for x in worker.log().splitlines() if "serving" in x], 5, "the start line")[0]
        assert "data/example.json" in line and "10000 keys" in line and backend in line and " s;" in line
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(5) == 0
        # An idle worker blocks in a receive that wakes every 100 ms for the
        # stop flag, then waits 50 ms for stragglers: well under a second.
        assert time.monotonic() - started < scaled(1.5)
        assert "Traceback" not in worker.log()
    finally:
        worker.stop()
        broker.stop()


def test_worker_exits_0_on_sigterm_when_its_broker_is_unresponsive(tmp_path: Path) -> None:
    frontend, backend = endpoints()
    broker = start_broker(tmp_path, frontend, backend)
    worker = start_worker(tmp_path, backend)
    try:
        with Client(frontend, timeout=1, retries=5) as client:
            client.ping()
        broker.signal(signal.SIGSTOP)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(5) == 0
        assert time.monotonic() - started < 5
    finally:
        broker.signal(signal.SIGCONT)
        worker.stop()
        broker.stop()


def test_worker_exits_0_on_sigterm_with_no_broker_at_all(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, f"tcp://127.0.0.1:{free_port()}")
    try:
        wait_for(lambda: "serving" in worker.log(), 10, "the worker to start")
        worker.signal(signal.SIGTERM)
        assert worker.wait(5) == 0
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"8a35eb59-62b3-481c-8875-1f248df4c952": 5}', "8a35eb59-62b3-481c-8875-1f248df4c952"),
        ('{"not-a-key": "v"}', "not-a-key"),
        ('{"8a35eb59-62b3-481c-8875-1f248df4c952": "v",', "line 1"),
        ('["a"]', "object"),
    ],
)
def test_worker_with_a_broken_dataset_exits_nonzero_with_one_clear_message(
    tmp_path: Path, content: str, says: str
) -> None:
    data = tmp_path / "broken.json"
    data.write_text(content)
    worker = start_worker(tmp_path, f"tcp://127.0.0.1:{free_port()}", data)
    status = worker.wait(10)
    log = worker.log()
    assert status != 0
    assert str(data) in log and says in log
    assert "Traceback" not in log


def test_worker_with_a_missing_dataset_exits_nonzero(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, f"tcp://127.0.0.1:{free_port()}", tmp_path / "nope.json")
    assert worker.wait(10) != 0
    assert "nope.json" in worker.log() and "Traceback" not in worker.log()


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl", "empty.rokv"])
def test_worker_refuses_an_empty_dataset_unless_allowed(tmp_path: Path, name: str) -> None:
    data = tmp_path / name
    if name.endswith(".rokv"):
        source = tmp_path / "source.jsonl"
        source.write_text("")
        build(source, data, allow_empty=True)
    else:
        data.write_text("{}" if name.endswith(".json") else "\n")
    frontend, backend = endpoints()
    refused = start_worker(tmp_path, backend, data, name="refused")
    try:
        assert refused.wait(10) == 1
    finally:
        refused.stop()  # a worker that failed to refuse would serve on
    log = refused.log_path.read_text()
    assert f"{data}: the dataset holds no keys" in log and "--allow-empty" in log and "ROKV_ALLOW_EMPTY=1" in log
    assert "Traceback" not in log
    broker = start_broker(tmp_path, frontend, backend)
    by_flag = start_worker(tmp_path, backend, data, "--allow-empty", name="by-flag")
    by_env = Proc(
        "by-env",
        [sys.executable, "-m", "rokv.worker", "--backend", backend, "--data", str(data), "--name", "by-env"],
        tmp_path,
        child_env(ROKV_ALLOW_EMPTY="1"),
    )
    try:
        assert seen_workers(frontend, 2) == {"by-flag", "by-env"}
        with Client(frontend, timeout=2) as client:
            assert client.ping()["keys"] == 0
    finally:
        for proc in (by_flag, by_env, broker):
            proc.stop()


def test_worker_refuses_an_unclear_rokv_allow_empty(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text("{}")
    worker = Proc(
        "worker",
        [sys.executable, "-m", "rokv.worker", "--backend", f"tcp://127.0.0.1:{free_port()}", "--data", str(data)],
        tmp_path,
        child_env(ROKV_ALLOW_EMPTY="yes"),
    )
    try:
        assert worker.wait(10) == 2
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert "ROKV_ALLOW_EMPTY='yes'" in log and "Traceback" not in log


def test_a_stopping_worker_answers_what_it_already_received(tmp_path: Path) -> None:
    frontend, backend = endpoints()
    broker = start_broker(tmp_path, frontend, backend)
    worker = start_worker(tmp_path, backend)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        key = "11111111-2222-4333-8444-555555555555"  # any answer will do: each carries its id
        with Client(frontend, timeout=1, retries=5) as client:
            client.ping()
        sock.connect(frontend)
        # Requests reach the worker's host while it is stopped (briefly: under
        # the heartbeat timeout); the stop signal then arrives with them.
        worker.signal(signal.SIGSTOP)
        for rid in range(1, 51):
            sock.send(p.encode_request(rid, p.OP_GET, key))
        time.sleep(0.3)
        worker.signal(signal.SIGTERM)
        worker.signal(signal.SIGCONT)
        answered = set()
        while len(answered) < 50 and sock.poll(3000):
            answered.add(msgpack.unpackb(sock.recv())["id"])
        assert answered == set(range(1, 51))
        assert worker.wait(5) == 0
    finally:
        sock.close()
        worker.stop()
        broker.stop()


def test_ipc_endpoints_work_too(tmp_path: Path, example: dict[str, str]) -> None:
    frontend, backend = f"ipc://{tmp_path}/front.sock", f"ipc://{tmp_path}/back.sock"
    broker = start_broker(tmp_path, frontend, backend)
    worker = start_worker(tmp_path, backend)
    try:
        key = next(iter(example))
        with Client(frontend, timeout=1, retries=5) as client:
            assert client.get(key) == example[key]
    finally:
        worker.stop()
        broker.stop()


def test_the_client_library_needs_neither_broker_nor_worker_modules() -> None:
    code = (
        "import sys, rokv, rokv.cli\n"
        "rokv.cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[:2] in (['rokv', 'broker'], ['rokv', 'worker'])\n"
        "                or m.split('.')[0] in ('supervisor', 'numpy'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_refused_dataset_is_refused_at_once_until_the_file_changes(tmp_path: Path) -> None:
    data = tmp_path / "broken.jsonl"
    key = "8a35eb59-62b3-481c-8875-1f248df4c952"
    data.write_text(f'{{"key": "{key}", "value": "a"}}\n{{"key": "{key}", "value": "b"}}\n', encoding="utf-8")
    frontend, backend = endpoints()

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rokv.worker", "--data", str(data), "--backend", backend],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )

    first, second = run(), run()
    assert first.returncode == second.returncode == 1
    assert "line 2: duplicate key" in first.stderr and "found by the start" not in first.stderr
    assert "line 2: duplicate key" in second.stderr and "found by the start at" in second.stderr
    data.write_text(f'{{"key": "{key}", "value": "a"}}\n', encoding="utf-8")  # fixed: loaded afresh
    broker = start_broker(tmp_path, frontend, backend)
    worker = start_worker(tmp_path, backend, data)
    try:
        with Client(frontend, timeout=1, retries=5) as client:
            assert client.get(key) == "a"
    finally:
        worker.stop()
        broker.stop()
