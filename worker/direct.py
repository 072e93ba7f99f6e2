"""A worker's direct endpoint and its reports to the brokers' directories.

The direct endpoint is a ROUTER the worker binds (``--direct-bind``): a client's
DEALER connected to it brings ``[routing_id, body]``, the very frames a broker
hands the worker, so the serving loop answers both alike. With CurveZMQ on,
it is a CURVE server with the worker's own key pair (which its reports carry,
so clients learn it from a broker they trust) and the clients' allow-list,
checked and logged by the brokers' gatekeeper.

Reports (:mod:`rokv.directory`) go out on every broker connection every
:data:`~rokv.directory.REPORT_SECONDS`, from the serving loop's tick.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import zmq

from rokv import directory
from rokv import protocol as p
from rokv.security import load_secret
from rokv.server.auth import CLIENTS_DOMAIN, GateKeeper
from rokv.server.monitor import ConnectionWatcher
from rokv.worker.loop import CLOSE_LINGER_MS

log = logging.getLogger("rokv.worker")

_WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "[::0]", "::")
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


def advertised(bound: str, advertise: str | None) -> str:
    """What clients are told to dial: ``advertise`` (its port ``*`` taken
    from ``bound``), else ``bound`` itself with a wildcard host (0.0.0.0,
    ``*``, ``[::]``) replaced by this host's name."""
    transport, _, address = bound.partition("://")
    bound_host, _, bound_port = address.rpartition(":")
    if advertise:
        if advertise.startswith("tcp://") and advertise.endswith(":*") and transport == "tcp":
            return f"{advertise[:-1]}{bound_port}"
        return advertise
    if transport == "tcp" and bound_host in _WILDCARD_HOSTS:
        return f"tcp://{socket.gethostname()}:{bound_port}"
    return bound


class DirectEndpoint:
    """The worker's bound ROUTER for clients, and its CURVE gatekeeper.

    Raises (from the constructor):
        KeyFileError: a CURVE key file is bad.
        zmq.ZMQError: the endpoint cannot be bound.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        watcher: ConnectionWatcher,
        bind: str,
        advertise: str | None,
        *,
        max_message_size: int,
        curve_secret: str | None = None,
        client_keys: str | None = None,
    ) -> None:
        self.auth: GateKeeper | None = None
        self.curve_key: str | None = None
        sock = ctx.socket(zmq.ROUTER)
        self.sock = sock
        sock.linger = CLOSE_LINGER_MS
        # The broker frontend's settings, for the same reasons: refuse a
        # message over the size limit, and make room for every reply a client
        # may have in flight (a ROUTER drops what does not fit).
        sock.maxmsgsize = max_message_size
        sock.sndhwm = p.BROKER_CLIENT_SNDHWM
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
        if "[" in bind:
            sock.ipv6 = True
        try:
            if curve_secret:
                public, secret = load_secret(curve_secret)
                assert client_keys is not None
                self.auth = GateKeeper(ctx, {CLIENTS_DOMAIN: client_keys})
                self.auth.start()
                self.auth.load()
                sock.curve_server = True
                sock.curve_publickey = public
                sock.curve_secretkey = secret
                sock.zap_domain = CLIENTS_DOMAIN.encode()
                self.curve_key = public.decode("ascii")
            watcher.watch(sock, f"direct endpoint {bind}", server=True)
            sock.bind(bind)
        except BaseException:
            self.close()
            raise
        self.bound: str = sock.last_endpoint.decode()
        self.advertised = advertised(self.bound, advertise)

    def close(self, linger: int | None = None) -> None:
        ConnectionWatcher.unwatch(self.sock)
        self.sock.close(linger=linger)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class Reporter:
    """Tells every broker about this worker: a report on each broker socket
    every REPORT_SECONDS (dropped, never queued for long, when a broker cannot
    take it), and a goodbye at the end."""

    def __init__(self, socks: list[zmq.Socket], entry: dict[str, Any]) -> None:
        self.socks = socks
        self.entry = directory.check_entry(entry)
        self._report = directory.encode_report(self.entry)
        self._next = 0.0

    def maybe_report(self) -> None:
        """Report when REPORT_SECONDS have passed since the last report (a
        clock read otherwise): the serving loop's tick."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + directory.REPORT_SECONDS
            self._send(self._report)

    def leave(self) -> None:
        """Say goodbye, so brokers drop this worker from their maps at once."""
        self._send(directory.encode_report(self.entry, leaving=True))

    def _send(self, body: bytes) -> None:
        for sock in self.socks:
            try:
                sock.send(directory.DIRECTORY_ROUTE, _SNDMORE | _NOBLOCK)
                sock.send(body, _NOBLOCK)
            except zmq.Again:
                pass  # no broker connection now: the next report will do
