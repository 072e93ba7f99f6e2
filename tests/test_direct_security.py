"""CurveZMQ on the direct path: a worker's direct endpoint is a CURVE server
with its own key pair (which its reports carry to the clients) and the
clients' allow-list, refusals logged as the brokers log theirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from test_security import Keys

from rokv import Client, ServiceUnavailable
from rokv import protocol as p
from rokv.security import load_public, load_secret

from support.procs import DIRECT_BIND, EXAMPLE, Proc, free_frontend, free_port, start_broker, start_worker, wait_for


class DirectSecureStack:
    def __init__(self, tmp_path: Path) -> None:
        self.keys = Keys(tmp_path / "keys")
        self.frontend = free_frontend()
        self.backend = f"tcp://127.0.0.1:{free_port()}"
        self.broker = start_broker(tmp_path, self.frontend, self.backend, *self.keys.broker_args())
        self.worker = start_worker(
            tmp_path,
            self.backend,
            EXAMPLE,
            *self.keys.worker_args("worker"),
            *DIRECT_BIND,
            "--client-keys",
            str(self.keys.clients),
            name="allowed",
        )
        self.procs: list[Proc] = [self.broker, self.worker]

    def client(self, name: str = "client", **kwargs) -> Client:
        return Client(self.frontend, curve=self.keys.peer(name), direct=True, **kwargs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture()
def secure(tmp_path: Path) -> Iterator[DirectSecureStack]:
    stack = DirectSecureStack(tmp_path)
    try:
        with Client(stack.frontend, curve=stack.keys.peer("client"), timeout=0.5, retries=20) as client:
            client.ping()
        yield stack
    finally:
        stack.stop()


def _direct_endpoint(stack: DirectSecureStack) -> str:
    return wait_for(
        lambda: (m := __import__("re").search(r"advertised as (\S+)", stack.worker.log())) and m.group(1),
        10,
        "the worker's direct endpoint",
    )


def test_an_allowed_client_goes_direct_over_curve(secure: DirectSecureStack, example: dict[str, str]) -> None:
    keys = list(example)[:100]
    with secure.client() as client:
        assert client.get_many(keys) == [example[k] for k in keys]
        for key in keys:
            assert client.get(key) == example[key]
        assert client._workers is not None
        (link,) = client._workers.links
        assert link.endpoint == _direct_endpoint(secure)
        assert link.replies >= 50  # most calls; the first ones may go through the broker while CURVE shakes hands
        worker_key = load_public(str(secure.keys.root / "worker" / "worker.key")).decode()
        assert link.entry["curve_key"] == worker_key
        assert link.sock is not None and link.stream is None  # CURVE: a libzmq socket, not a plain stream


def _raw_curve(endpoint: str, secret_file: Path | None, server_key: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if secret_file is not None:
        sock.curve_publickey, sock.curve_secretkey = load_secret(str(secret_file))
        sock.curve_serverkey = server_key
    sock.connect(endpoint)
    return sock


@pytest.mark.parametrize("who", ["client", "stranger-client", None])
def test_only_allowed_clients_reach_the_direct_endpoint(secure: DirectSecureStack, who: str | None) -> None:
    endpoint = _direct_endpoint(secure)
    server_key = load_public(str(secure.keys.root / "worker" / "worker.key"))
    secret = secure.keys.root / who / f"{who}.key_secret" if who else None
    sock = _raw_curve(endpoint, secret, server_key)
    try:
        sock.send(p.encode_request(5, p.OP_PING))
        answered = sock.poll(1500)
        reply = msgpack.unpackb(sock.recv()) if answered else None
    finally:
        sock.close()
    if who == "client":
        assert reply is not None and reply["id"] == 5
    else:
        assert reply is None
    if who == "stranger-client":
        wait_for(lambda: "refused a client" in secure.worker.log(), 5, "the worker's refusal line")


def test_a_stranger_client_gets_nothing_direct_or_brokered(secure: DirectSecureStack, example: dict[str, str]) -> None:
    with secure.client("stranger-client", timeout=0.3, retries=1) as client:
        with pytest.raises(ServiceUnavailable):
            client.get(next(iter(example)))


def test_curve_and_a_direct_endpoint_without_an_allow_list_is_refused(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    worker = start_worker(tmp_path, "tcp://127.0.0.1:1", EXAMPLE, *keys.worker_args("worker"), *DIRECT_BIND)
    assert worker.wait(30) == 2
    assert "--client-keys" in worker.log()
