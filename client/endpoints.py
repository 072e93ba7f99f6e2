"""What a valid endpoint is, checked in one place for the client, the ``rokv``
command, the broker and the worker.

libzmq takes some bad endpoints without complaint: ``tcp://127.0.0.1:99999``
connects to (or binds) a port of its choosing, ``tcp://::1:5555`` guesses where
the port starts. So every endpoint is checked here before it reaches a socket.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from rokv.hostport import split_host_port

#: Transports a client may use; ``inproc`` only reaches a socket bound in the
#: same process, with the same context.
CLIENT_TRANSPORTS = ("tcp", "ipc", "inproc")
#: Transports between processes: the broker's, a worker's and the command's.
PROCESS_TRANSPORTS = ("tcp", "ipc")

_FORMS = {"tcp": "tcp://HOST:PORT", "ipc": "ipc://PATH", "inproc": "inproc://NAME"}


def check_endpoint(endpoint: str, *, transports: tuple[str, ...] = CLIENT_TRANSPORTS) -> str:
    """Return ``endpoint`` unchanged when it is one well-formed ZeroMQ endpoint.

    Accepted: ``tcp://HOST:PORT`` with PORT from 1 to 65535 and an IPv6 HOST
    in brackets (``tcp://[::1]:5555``); ``ipc://PATH``; ``inproc://NAME``; of
    those, only the ``transports`` given.

    Raises:
        ValueError: ``endpoint`` is not a string, has no or another transport,
            or its address is empty or malformed; the message says which.
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"an endpoint must be a string, not {type(endpoint).__name__}")
    forms = " or ".join(_FORMS[t] for t in transports)
    transport, sep, address = endpoint.partition("://")
    if not sep:
        raise ValueError(f"endpoint {endpoint!r} has no transport: expected {forms}")
    if transport not in transports:
        raise ValueError(f"endpoint {endpoint!r}: transport {transport!r} is not supported here: expected {forms}")
    if not address:
        raise ValueError(f"endpoint {endpoint!r} has no address: expected {forms}")
    if transport == "tcp":
        _check_tcp(endpoint, address)
    return endpoint


def _check_tcp(endpoint: str, address: str) -> None:
    # libzmq's "tcp://SOURCE;HOST:PORT" form: the destination is what matters.
    try:
        split_host_port(address.rpartition(";")[2])
    except ValueError as exc:
        raise ValueError(f"endpoint {endpoint!r}: {exc}") from None


def endpoint_argument(transports: tuple[str, ...] = PROCESS_TRANSPORTS) -> Callable[[str], str]:
    """An argparse ``type=`` that checks one endpoint, so a bad one is a
    usage error with :func:`check_endpoint`'s message (argparse shows only
    the messages of ``ArgumentTypeError``)."""

    def endpoint(text: str) -> str:
        try:
            return check_endpoint(text, transports=transports)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return endpoint


def check_endpoints(endpoints: str | Sequence[str], *, transports: tuple[str, ...] = CLIENT_TRANSPORTS) -> list[str]:
    """Several brokers' endpoints, from a comma-separated string (as in
    ``ROKV_ENDPOINT`` or ``--endpoint``) or a sequence of strings; each is
    checked by :func:`check_endpoint`.

    Raises:
        ValueError: the list is empty, names an endpoint twice, or holds a
            malformed endpoint; the message says which.
    """
    if isinstance(endpoints, str):
        items = [item.strip() for item in endpoints.split(",")]
    elif isinstance(endpoints, Sequence):
        items = list(endpoints)
    else:
        raise ValueError(f"endpoints must be a string or a list of strings, not {type(endpoints).__name__}")
    if not items or items == [""]:
        raise ValueError("no endpoint given")
    checked = []
    for item in items:
        if item == "":
            raise ValueError(f"endpoint list {endpoints!r} has an empty item (a stray comma?)")
        checked.append(check_endpoint(item, transports=transports))
    if len(set(checked)) != len(checked):
        twice = next(e for e in checked if checked.count(e) > 1)
        raise ValueError(f"endpoint {twice!r} is named twice")
    return checked


def endpoints_argument(transports: tuple[str, ...] = PROCESS_TRANSPORTS) -> Callable[[str], str]:
    """An argparse ``type=`` for one or several comma-separated endpoints;
    keeps the text, checked."""

    def endpoints(text: str) -> str:
        try:
            check_endpoints(text, transports=transports)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return endpoints
