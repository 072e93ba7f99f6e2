"""CurveZMQ: only allowed clients get answers, only allowed workers get requests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from rokv import AsyncClient, Client, ServiceUnavailable
from rokv.security import (
    CRYPTOGRAPHIC,
    MECHANISM_MISMATCH,
    CurvePeer,
    KeyNameError,
    load_public,
    load_secret,
    make_key_pair,
)
from rokv.server.monitor import handshake_failure

from support.procs import EXAMPLE, Proc, child_env, free_port, start_broker, start_worker, wait_for


class Keys:
    """A broker key pair, allow-list folders, and allowed and stranger peers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clients = root / "allowed-clients"
        self.workers = root / "allowed-workers"
        self.clients.mkdir(parents=True)
        self.workers.mkdir(parents=True)
        self.broker_public, self.broker_secret = make_key_pair(root / "broker", "broker")
        for name in ("client", "stranger-client", "late-client", "worker", "stranger-worker"):
            make_key_pair(root / name, name)
        shutil.copy(root / "client" / "client.key", self.clients)
        shutil.copy(root / "worker" / "worker.key", self.workers)

    def peer(self, name: str) -> CurvePeer:
        return CurvePeer(str(self.root / name / f"{name}.key_secret"), str(self.broker_public))

    def broker_args(self) -> list[str]:
        return [
            "--curve-secret",
            str(self.broker_secret),
            "--client-keys",
            str(self.clients),
            "--worker-keys",
            str(self.workers),
        ]

    def worker_args(self, name: str) -> list[str]:
        return ["--curve-secret", str(self.root / name / f"{name}.key_secret"), "--broker-key", str(self.broker_public)]


class SecureStack:
    def __init__(self, tmp_path: Path) -> None:
        self.keys = Keys(tmp_path / "keys")
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        self.backend = f"tcp://127.0.0.1:{free_port()}"
        self.broker = start_broker(tmp_path, self.frontend, self.backend, *self.keys.broker_args())
        self.worker = start_worker(tmp_path, self.backend, EXAMPLE, *self.keys.worker_args("worker"), name="allowed")
        self.procs: list[Proc] = [self.broker, self.worker]

    def client(self, name: str = "client", **kwargs: float) -> Client:
        return Client(self.frontend, curve=self.keys.peer(name), **kwargs)  # type: ignore[arg-type]  # the client's own keywords

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture()
def secure(tmp_path: Path):
    stack = SecureStack(tmp_path)
    try:
        with stack.client(timeout=0.5, retries=20) as client:
            client.ping()
        yield stack
    finally:
        stack.stop()


def test_an_allowed_client_gets_its_values(secure: SecureStack, example: dict[str, str]) -> None:
    keys = list(example)[:100]
    with secure.client() as client:
        assert client.get_many(keys) == [example[k] for k in keys]
        assert client.get(keys[0]) == example[keys[0]]


def test_a_client_with_an_unknown_key_gets_nothing(secure: SecureStack, example: dict[str, str]) -> None:
    with secure.client("stranger-client", timeout=0.5, retries=1) as client:
        with pytest.raises(ServiceUnavailable):
            client.get(next(iter(example)))


def test_a_client_without_curve_gets_nothing(secure: SecureStack, example: dict[str, str]) -> None:
    with Client(secure.frontend, timeout=0.5, retries=1) as client:
        with pytest.raises(ServiceUnavailable):
            client.get(next(iter(example)))


#: What a client without keys is told of a broker that requires CURVE (libzmq
#: reports a mechanism mismatch, or a handshake the broker broke off).
NO_KEYS_HINT = r"(security mismatch: the broker requires CURVE and|it probably requires CURVE, and) this client has no"


def test_a_client_without_curve_is_told_the_broker_requires_it(secure: SecureStack, example: dict[str, str]) -> None:
    key = next(iter(example))
    with Client(secure.frontend, timeout=0.3, retries=1) as client:
        with pytest.raises(ServiceUnavailable) as caught:
            client.get(key)
    message = str(caught.value)
    assert f"{secure.frontend}: " in message and "this client has no CURVE keys" in message, message
    assert re.search(NO_KEYS_HINT, message) and "ROKV_CLIENT_SECRET and ROKV_BROKER_KEY" in message

    async def main() -> list[object]:
        async with AsyncClient(secure.frontend, timeout=0.3, retries=1) as client:
            return await asyncio.gather(client.get(key), client.get_many([key]), return_exceptions=True)

    for failure in asyncio.run(main()):
        assert isinstance(failure, ServiceUnavailable) and "this client has no CURVE keys" in str(failure)
    done = subprocess.run(
        [sys.executable, "-m", "rokv", "get", key, "--endpoint", secure.frontend, "--timeout", "0.3", "--retries", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 3 and "this client has no CURVE keys" in done.stderr, done.stderr
    # A client with keys the broker refuses, or facing a broker that is down, is not told so.
    with secure.client("stranger-client", timeout=0.3, retries=1) as client:
        with pytest.raises(ServiceUnavailable) as caught:
            client.get(key)
    assert "no CURVE keys" not in str(caught.value)
    with Client(f"tcp://127.0.0.1:{free_port()}", timeout=0.2, retries=1) as client:
        with pytest.raises(ServiceUnavailable) as caught:
            client.get(key)
    assert "CURVE" not in str(caught.value)


def test_a_worker_without_curve_is_told_of_the_mismatch_first(secure: SecureStack, tmp_path: Path) -> None:
    plain = start_worker(tmp_path, secure.backend, EXAMPLE, name="plain")
    secure.procs.append(plain)
    wait_for(lambda: "not admitted" in plain.log(), 10, "the plain worker to log its refusal")
    first = next(line for line in plain.log().splitlines() if "not admitted" in line)
    assert "this worker has no CURVE keys" in first and "--curve-secret and --broker-key" in first, first
    assert "public key" not in plain.log()


def test_handshake_failures_of_a_side_without_keys_name_the_mismatch() -> None:
    for event, value in [
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MECHANISM_MISMATCH),
        (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 104),
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, CRYPTOGRAPHIC),
    ]:
        words = handshake_failure(event, value, server=False, curve=False)
        assert "this worker has no CURVE keys" in words and "public key" not in words
        # With keys, a failed handshake still points at the broker's key.
        if event != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL or value != MECHANISM_MISMATCH:
            assert "public key" in handshake_failure(event, value, server=False, curve=True)


def test_a_stranger_worker_never_receives_a_request(
    secure: SecureStack, tmp_path: Path, example: dict[str, str]
) -> None:
    # The stranger would serve wrong values for every key: one answer from it would show.
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({k: "WRONG" for k in list(example)[:500]}), encoding="utf-8")
    stranger = start_worker(
        tmp_path, secure.backend, wrong, *secure.keys.worker_args("stranger-worker"), name="stranger"
    )
    plain = start_worker(tmp_path, secure.backend, wrong, name="plain")
    secure.procs += [stranger, plain]
    wait_for(lambda: "serving" in stranger.log() and "serving" in plain.log(), 10, "the strangers to start")
    keys = list(example)[:500]
    with secure.client() as client:
        for _ in range(4):
            assert client.get_many(keys[:100]) == [example[k] for k in keys[:100]]
        assert [client.get(k) for k in keys[:200]] == [example[k] for k in keys[:200]]
        assert {client.ping()["id"] for _ in range(20)} == {"allowed"}


def test_sighup_reloads_the_allow_lists(secure: SecureStack, example: dict[str, str]) -> None:
    key = next(iter(example))
    with secure.client("late-client", timeout=0.3, retries=0) as client:
        with pytest.raises(ServiceUnavailable):
            client.get(key)
    shutil.copy(secure.keys.root / "late-client" / "late-client.key", secure.keys.clients)
    secure.broker.signal(signal.SIGHUP)
    wait_for(lambda: secure.broker.log().count("allow-lists loaded") >= 2, 10, "the broker to reload")
    with secure.client("late-client", timeout=1, retries=2) as client:
        assert client.get(key) == example[key]


def test_curve_without_allow_lists_is_refused(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    broker = start_broker(
        tmp_path,
        f"tcp://127.0.0.1:{free_port()}",
        f"tcp://127.0.0.1:{free_port()}",
        "--curve-secret",
        str(keys.broker_secret),
    )
    assert broker.wait(10) == 2
    assert "needs --client-keys and --worker-keys" in broker.log()


def test_a_public_key_given_as_the_secret_is_refused_clearly(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    broker = start_broker(
        tmp_path,
        f"tcp://127.0.0.1:{free_port()}",
        f"tcp://127.0.0.1:{free_port()}",
        "--curve-secret",
        str(keys.broker_public),
        "--client-keys",
        str(keys.clients),
        "--worker-keys",
        str(keys.workers),
    )
    assert broker.wait(10) != 0
    assert "holds no secret key" in broker.log() and "Traceback" not in broker.log()


def test_a_curve_pool_with_no_client_keeps_serving(tmp_path: Path, example: dict[str, str]) -> None:
    # libzmq 4.3.5's proxy used to fail ("Resource temporarily unavailable")
    # about 1.5 s after a CURVE worker connected while no client was: the
    # broker exited 1, and under supervisor restarted every 2.5 s forever.
    stack = SecureStack(tmp_path)
    try:
        wait_for(lambda: "connected to broker" in stack.worker.log(), 10, "the worker to be admitted")
        time.sleep(4)
        assert stack.broker.popen.poll() is None, stack.broker.log()
        key = next(iter(example))
        with stack.client(timeout=1, retries=3) as client:
            assert client.get(key) == example[key]
        time.sleep(2)  # and again once the client has gone
        with stack.client(timeout=1, retries=3) as client:
            assert client.get(key) == example[key]
        assert stack.broker.popen.poll() is None
        assert "proxy failed" not in stack.broker.log()
    finally:
        stack.stop()


def test_refused_peers_are_named_in_the_brokers_log_and_say_so_themselves(
    secure: SecureStack, tmp_path: Path, example: dict[str, str]
) -> None:
    stranger = start_worker(
        tmp_path, secure.backend, EXAMPLE, *secure.keys.worker_args("stranger-worker"), name="stranger"
    )
    plain = start_worker(tmp_path, secure.backend, EXAMPLE, name="plain")
    secure.procs += [stranger, plain]
    raw_key = z85.decode(load_public(secure.keys.root / "stranger-worker" / "stranger-worker.key"))
    fingerprint = hashlib.sha256(raw_key).hexdigest()[:16]
    wait_for(
        lambda: f"refused a worker from 127.0.0.1: mechanism CURVE, key {fingerprint}" in secure.broker.log(),
        10,
        "the broker to log the stranger worker",
    )
    assert "workers allow-list" in secure.broker.log()
    wait_for(
        lambda: "not admitted" in stranger.log() and "allow-list" in stranger.log(),
        10,
        "the stranger to log that it is refused",
    )
    wait_for(
        lambda: "not admitted" in plain.log() and "CURVE" in plain.log(),
        10,
        "the plain worker to log the security mismatch",
    )
    # libzmq reports a peer without CURVE as a mechanism mismatch, or as a
    # handshake that broke off (the peer gave up first): either way the
    # broker says so.
    wait_for(
        lambda: "without CURVE" in (log := secure.broker.log()) or "handshake broke off" in log,
        10,
        "the broker to log the plain worker",
    )
    with secure.client("stranger-client", timeout=0.2, retries=1) as client:
        with pytest.raises(ServiceUnavailable, match="CURVE is on: the broker may be refusing this client"):
            client.get(next(iter(example)))
    wait_for(lambda: "refused a client from 127.0.0.1" in secure.broker.log(), 10, "the client's refusal")
    # Refusals are rate-limited: a refused peer retries every 100 ms or so.
    time.sleep(1)
    assert secure.broker.log().count(f"key {fingerprint}") <= 2


def test_a_revoked_client_loses_its_connection_at_the_next_sighup(secure: SecureStack, example: dict[str, str]) -> None:
    key = next(iter(example))
    with secure.client("client", timeout=0.3, retries=1) as revoked, secure.client("late-client") as _:
        shutil.copy(secure.keys.root / "late-client" / "late-client.key", secure.keys.clients)
        assert revoked.get(key) == example[key]
        (secure.keys.clients / "client.key").unlink()
        secure.broker.signal(signal.SIGHUP)
        wait_for(lambda: "closed every client connection" in secure.broker.log(), 10, "the broker to reopen")
        with pytest.raises(ServiceUnavailable):
            revoked.get(key)  # same socket, same connection attempt: now refused
    with secure.client("late-client", timeout=0.5, retries=4) as allowed:
        assert allowed.get(key) == example[key]
    # Workers were not disturbed: the workers' side stayed open.
    assert "closed every worker connection" not in secure.broker.log()


# ---------------------------------------------------------------- key files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_key_pairs_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    folder = tmp_path / "config" / "rokv" / "keys"
    old = os.umask(umask)
    try:
        public, secret = make_key_pair(folder, "billing")
    finally:
        os.umask(old)
    assert (public, secret) == (folder / "billing.key", folder / "billing.key_secret")
    assert mode(folder) == 0o700, "a new key folder must not be readable by others"
    assert mode(secret) == 0o600
    assert mode(public) & 0o600 == 0o600 and not mode(public) & 0o022
    # The files are ZeroMQ certificates: what the broker's allow-list and the peers read.
    assert load_secret(secret)[0] == load_public(public)
    assert list(zmq.auth.load_certificates(folder)) == [load_public(public)]


def test_an_existing_folder_keeps_its_mode_and_a_key_is_never_overwritten(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    make_key_pair(tmp_path, "worker")
    before = (tmp_path / "worker.key_secret").read_bytes()
    with pytest.raises(FileExistsError, match="exists already"):
        make_key_pair(tmp_path, "worker")
    assert (tmp_path / "worker.key_secret").read_bytes() == before
    assert mode(tmp_path) == 0o750


@pytest.mark.parametrize("name", ["", "a/b", "../broker", "..", "a\\b", "a..b", ".hidden", "ABSOLUTE"])
def test_key_names_that_leave_the_folder_or_hide_are_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "keys"
    if name == "ABSOLUTE":  # an absolute name would replace the folder in a path join
        name = str(tmp_path / "elsewhere")
    with pytest.raises(KeyNameError):
        make_key_pair(folder, name)
    assert list(tmp_path.iterdir()) == [], "nothing may be written for a refused name"
