"""The gateway's settings: where it listens, which brokers it asks, its limits.

Standard library only, so that ``rokv-pool`` can check ``ROKV_HTTP`` without
the HTTP server installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from rokv import protocol as p
from rokv.hostport import split_host_port

DEFAULT_HOST = "127.0.0.1"
#: The seed service's port.
DEFAULT_PORT = 8080
#: Largest request body read, in bytes: room for 10,000 keys in any accepted
#: form (``"urn:uuid:...",`` is 48 bytes) with spaces around them.
DEFAULT_MAX_BODY = 1 << 20
#: Most keys one /get_values may ask for: what one request of the protocol
#: may carry.
MAX_KEYS = p.MAX_MGET_KEYS
#: Seconds /healthz waits for a ping before it says the pool is down.
DEFAULT_HEALTH_TIMEOUT = 1.0


class SettingError(ValueError):
    """A ROKV_HTTP* variable or option holds a value the gateway cannot use;
    the message names it, its value and what is expected."""


@dataclass(frozen=True)
class Bind:
    """An address to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind(text: str, name: str = "ROKV_HTTP") -> Bind:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[IPV6]:PORT`` as a :class:`Bind`;
    the host defaults to 127.0.0.1 and the port to 8080.

    Raises:
        SettingError: not one of those forms, or a port outside 1 to 65535.
    """
    raw = text.strip()
    expected = f"expected HOST:PORT such as 0.0.0.0:{DEFAULT_PORT} or 127.0.0.1:{DEFAULT_PORT}"
    if not raw:
        raise SettingError(f"{name} is empty: {expected}")
    try:
        return Bind(*split_host_port(raw, default_host=DEFAULT_HOST, default_port=DEFAULT_PORT))
    except ValueError as exc:
        raise SettingError(f"{name}={text!r}: {exc}; {expected}") from None


def parse_size(text: str, name: str) -> int:
    """A byte count of at least 1 KiB.

    Raises:
        SettingError: not a whole number, or under 1024.
    """
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1024:
        raise SettingError(f"{name}={text!r}: expected a size in bytes, 1024 or more")
    return int(raw)


def endpoint_from_env(env: Mapping[str, str]) -> str:
    """The broker(s) the gateway asks: ``ROKV_ENDPOINT`` as given (one or more
    endpoints, comma-separated); else this host's broker, ``ROKV_FRONTEND``
    with a wildcard host (``*``, ``0.0.0.0``, ``[::]``) turned into loopback;
    else the default, tcp://127.0.0.1:5555."""
    endpoint = env.get("ROKV_ENDPOINT", "").strip()
    if endpoint:
        return endpoint
    frontend = env.get("ROKV_FRONTEND", "").strip()
    if not frontend:
        return p.DEFAULT_FRONTEND
    for wildcard, loopback in (("://*:", "://127.0.0.1:"), ("://0.0.0.0:", "://127.0.0.1:"), ("://[::]:", "://[::1]:")):
        frontend = frontend.replace(wildcard, loopback)
    return frontend


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads from its environment."""

    bind: Bind
    endpoint: str
    max_body: int = DEFAULT_MAX_BODY
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``ROKV_HTTP``, ``ROKV_ENDPOINT`` (or ``ROKV_FRONTEND``) and
        ``ROKV_HTTP_MAX_BODY``; unset ones take their defaults.

        Raises:
            SettingError: a variable holds an unusable value.
        """
        env = os.environ if env is None else env
        http = env.get("ROKV_HTTP", "")
        bind = parse_bind(http) if http.strip() else Bind(DEFAULT_HOST, DEFAULT_PORT)
        max_body = env.get("ROKV_HTTP_MAX_BODY", "")
        return cls(
            bind=bind,
            endpoint=endpoint_from_env(env),
            max_body=parse_size(max_body, "ROKV_HTTP_MAX_BODY") if max_body.strip() else DEFAULT_MAX_BODY,
        )
