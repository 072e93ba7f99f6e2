"""CurveZMQ: only allowed clients get answers, only allowed workers get requests."""

from __future__ import annotations

import json
import signal
import shutil
from pathlib import Path

import pytest

from client import Client, ServiceUnavailable
from client.security import CurvePeer, make_key_pair
from procs import EXAMPLE, Proc, free_port, start_broker, start_worker, wait_for


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
        return ["--curve-secret", str(self.broker_secret), "--client-keys", str(self.clients),
                "--worker-keys", str(self.workers)]

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
        return Client(self.frontend, curve=self.keys.peer(name), **kwargs)  # type: ignore[arg-type]

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


def test_a_stranger_worker_never_receives_a_request(secure: SecureStack, tmp_path: Path,
                                                    example: dict[str, str]) -> None:
    # The stranger would serve wrong values for every key: one answer from it would show.
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({k: "WRONG" for k in list(example)[:500]}), encoding="utf-8")
    stranger = start_worker(tmp_path, secure.backend, wrong, *secure.keys.worker_args("stranger-worker"),
                            name="stranger")
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
    broker = start_broker(tmp_path, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}",
                          "--curve-secret", str(keys.broker_secret))
    assert broker.wait(10) == 2
    assert "needs --client-keys and --worker-keys" in broker.log()


def test_a_public_key_given_as_the_secret_is_refused_clearly(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    broker = start_broker(tmp_path, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}",
                          "--curve-secret", str(keys.broker_public), "--client-keys", str(keys.clients),
                          "--worker-keys", str(keys.workers))
    assert broker.wait(10) != 0
    assert "holds no secret key" in broker.log() and "Traceback" not in broker.log()
