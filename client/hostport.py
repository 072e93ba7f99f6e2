"""``HOST:PORT`` addresses of metrics endpoints (``ROKV_METRICS``, ``rokv top
--metrics``): parsed and checked in one place for the server and the client."""

from __future__ import annotations

#: The variable that names this host's metrics address.
METRICS_ENV = "ROKV_METRICS"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets: ``[::1]:9555``) as (host, port).

    Raises:
        ValueError: not of that form, or the port is not 1-65535; the
            message quotes the text and says what is expected.
    """
    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9555)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{text!r}: an IPv6 host goes in brackets, as [::1]:9555")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 host goes in brackets, as [::1]:9555")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """A comma-separated list of ``host:port``.

    Raises:
        ValueError: the list is empty or an item is not ``host:port``.
    """
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise ValueError(f"{text!r} names no HOST:PORT")
    return [parse_address(item) for item in items]


def show_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
