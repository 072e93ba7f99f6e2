"""``HOST:PORT`` addresses, parsed and checked in one place: the host and port
of a ``tcp://`` endpoint (:mod:`rokv.endpoints`), metrics addresses
(``ROKV_METRICS``, ``rokv top --metrics``, ``rokv-metrics --listen``) and the
gateway's listening address (``ROKV_HTTP``).

The rules: an IPv6 host goes in brackets (``[::1]:9555``) and must be an IPv6
address there; any other host holds no ``:``, brackets, white space or URL
punctuation (``/?#@``); a port is 1 to 5 ASCII digits (``str.isdigit`` would
also take ``'５５５５'``, which libzmq and the socket calls do not) from 1 to
65535.
"""

from __future__ import annotations

import ipaddress
import re

#: The variable that names this host's metrics address.
METRICS_ENV = "ROKV_METRICS"

_PORT = re.compile(r"[0-9]{1,5}")


def split_host_port(
    address: str, *, default_host: str | None = None, default_port: int | None = None
) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPV6]:PORT``) as (host, port), the host without
    brackets. With ``default_host``, the host may be left out (``:PORT``);
    with ``default_port``, the port may (``HOST``, ``[IPV6]``).

    Raises:
        ValueError: the address breaks a rule; the message says which, without
            quoting ``address`` (callers say where it came from).
    """
    if address.startswith("["):
        end = address.find("]")
        host, rest = (address[1:end], address[end + 1 :]) if end > 0 else (address, "")
        if end < 0 or not _is_ipv6(host) or (rest and not rest.startswith(":")):
            raise ValueError(f"{address[: end + 1] if end > 0 else address!r} is not an IPv6 address in brackets")
        colon, port = bool(rest), rest[1:]
    else:
        host, sep, port = address.rpartition(":")
        colon = bool(sep)
        if not colon:
            host = address
        if ":" in host or "[" in host or "]" in host:
            raise ValueError("an IPv6 address goes in brackets, as [::1]:5555")
    if not host and default_host is not None:
        host = default_host
    if not host or (not colon and default_port is None):
        raise ValueError("needs a host and a port")
    if any(c.isspace() for c in host):
        raise ValueError(f"the host {host!r} holds white space")
    if any(c in "/?#@" for c in host):
        raise ValueError(f"{host!r} is not a host name or address")
    if not colon:
        assert default_port is not None  # checked above
        return host, default_port
    return host, parse_port(port)


def parse_port(text: str) -> int:
    """A port number: 1 to 5 ASCII digits, from 1 to 65535.

    Raises:
        ValueError: anything else.
    """
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a port number from 1 to 65535")
    return int(text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets: ``[::1]:9555``) as (host,
    port); white space around it is ignored.

    Raises:
        ValueError: not of that form (:func:`split_host_port`); the message
            quotes the text and says what is expected.
    """
    try:
        return split_host_port(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc} (expected HOST:PORT, as 127.0.0.1:9555)") from None


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
