"""The CurveZMQ gatekeeper of the brokers and of the workers' direct endpoints:
pyzmq's ZAP authenticator, allow-list folders (a broker has two, one per side;
a worker's direct endpoint has the clients' one), a log line for every refused
peer, and reloading that reports which keys were removed (so their connections
can be closed)."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("rokv.auth")

CLIENTS_DOMAIN = "clients"
WORKERS_DOMAIN = "workers"
#: At most one refusal line per peer key and address in this many seconds: a
#: refused peer retries every 100 ms.
REFUSAL_LOG_INTERVAL = 10.0


def fingerprint(public_key: bytes) -> str:
    """A short, stable name for a raw 32-byte CURVE public key: the first 16
    hex digits of its SHA-256, safe to log (the key itself is public too, but
    shorter is easier to compare)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class GateKeeper(ThreadAuthenticator):
    """A ZAP authenticator in a thread that logs each refused peer: address,
    mechanism, key fingerprint and which allow-list refused it."""

    def __init__(self, context: zmq.Context, folders: dict[str, str]) -> None:
        super().__init__(context, log=logging.getLogger("rokv.broker.zap"))
        self.folders = folders
        self._request: list[bytes] | None = None
        self._last_logged: dict[tuple[bytes, bytes], float] = {}
        self.refused = 0

    def load(self) -> dict[str, set[str]]:
        """(Re)read every allow-list folder; the keys removed since the last
        load, per domain (empty at the first load)."""
        removed: dict[str, set[str]] = {}
        for domain, folder in self.folders.items():
            before = set(self.certs.get(domain, {}))
            self.configure_curve(domain=domain, location=folder)
            after = set(self.certs.get(domain, {}))
            if before - after:
                removed[domain] = {k.decode() if isinstance(k, bytes) else k for k in before - after}
        log.info(
            "allow-lists loaded: %s",
            ", ".join(f"{len(self.certs.get(d, {}))} {d[:-1]} keys from {f}" for d, f in self.folders.items()),
        )
        return removed

    # The authenticator thread handles one ZAP request at a time (it awaits
    # each in turn), so the request being answered can be kept on self.
    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._request = msg
        try:
            await super().handle_zap_message(msg)
        finally:
            self._request = None

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: Any = "anonymous"
    ) -> None:
        if status_code != b"200" and self._request is not None:
            self._log_refusal(self._request, status_text)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def _log_refusal(self, msg: list[bytes], reason: bytes) -> None:
        self.refused += 1
        # ZAP request: version, request id, domain, address, identity, mechanism, credentials...
        domain, address, mechanism = (msg[i].decode("utf-8", "replace") if len(msg) > i else "?" for i in (2, 3, 5))
        key = msg[6] if mechanism == "CURVE" and len(msg) > 6 else b""
        now = time.monotonic()
        peer = (key, msg[3] if len(msg) > 3 else b"")
        if now - self._last_logged.get(peer, -1e9) < REFUSAL_LOG_INTERVAL:
            return
        self._last_logged[peer] = now
        if len(self._last_logged) > 10_000:  # forget old peers rather than grow without bound
            self._last_logged.clear()
        side = {CLIENTS_DOMAIN: "client", WORKERS_DOMAIN: "worker"}.get(domain, domain)
        folder = self.folders.get(domain, "?")
        log.warning(
            "refused a %s from %s: mechanism %s, key %s (z85 %s) is not in the %s allow-list %s (%s)",
            side,
            address,
            mechanism,
            fingerprint(key) if key else "-",
            z85.encode(key).decode() if len(key) == 32 else "-",
            domain,
            folder,
            reason.decode("utf-8", "replace"),
        )
