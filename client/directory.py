"""The pool's directory, defined once (PROTOCOL.md, "Direct path and the
pool's directory"): what a worker reports to each broker, what a client asks a
broker for, and the map it gets back.

Workers serve a direct endpoint (a ROUTER that answers exactly like the broker
path) and report it, every :data:`REPORT_SECONDS`, through each broker they are
connected to: a report travels on the worker's backend connection addressed to
:data:`DIRECTORY_ROUTE`, the routing id under which the broker's directory is
attached to its own frontend, so forwarding stays inside libzmq and the
directory sees only reports. A broker forgets a worker :data:`EXPIRY_SECONDS`
after its last report. Clients ask the broker's directory endpoint (by default
the frontend's port + :data:`DIRECTORY_PORT_OFFSET`) with ``op: pool`` and get
the map; they ask again every :data:`REFRESH_SECONDS`.

Plain functions over bytes and dicts, shared by the broker, the workers and
both clients; it imports only the protocol module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack

from rokv import protocol as p
from rokv.endpoints import PROCESS_TRANSPORTS, check_endpoint

#: The routing id of the broker's directory on its own frontend: a worker's
#: report is ``[DIRECTORY_ROUTE, body]`` on its backend connection (libzmq
#: forbids routing ids that start with a zero byte, the ones it makes up).
DIRECTORY_ROUTE = b"rokv-directory"
#: A broker's directory endpoint is its frontend's, this many ports higher
#: (5555 -> 5557: next to the default backend, 5556).
DIRECTORY_PORT_OFFSET = 2
#: How often a worker reports itself to each broker.
REPORT_SECONDS = 0.5
#: A broker forgets a worker this long after its last report: a worker that
#: stops or is killed is out of the map within 2 s.
EXPIRY_SECONDS = 1.5
#: How often a direct client asks for the map again (a new worker is in use
#: within REPORT_SECONDS + REFRESH_SECONDS, under 2 s).
REFRESH_SECONDS = 1.0

OP_POOL = "pool"
OP_REPORT = "report"
OP_LEAVE = "leave"

F_WORKERS = "workers"
F_REFRESH = "refresh"

#: A worker's entry: field -> the types it may take (None for nil).
ENTRY_FIELDS: dict[str, tuple[type | None, ...]] = {
    "id": (str,),
    "endpoint": (str, None),
    "host": (str,),
    "pid": (int,),
    "digest": (str, None),
    "keys": (int,),
    "curve_key": (str, None),
}
#: Longest string in an entry, and most workers in one map.
MAX_FIELD_LENGTH = 256
MAX_WORKERS = 1024
#: Largest report or pool request a broker reads (libzmq's ZMQ_MAXMSGSIZE on
#: the directory endpoint; reports are checked against it too).
MAX_MESSAGE_SIZE = 4096

_pack = msgpack.Packer().pack


def directory_endpoint(frontend: str) -> str | None:
    """The directory endpoint that belongs with a broker's ``frontend``:
    ``tcp://HOST:PORT`` -> ``tcp://HOST:PORT+2`` (and ``tcp+dns://NAME:PORT``
    -> ``tcp+dns://NAME:PORT+2``, every broker the name stands for);
    ``ipc://PATH`` -> ``ipc://PATH.directory``; None when there is none (a
    port too high, or another transport)."""
    transport, _, address = frontend.partition("://")
    if transport == "ipc":
        return f"{frontend}.directory"
    if transport not in ("tcp", "tcp+dns"):
        return None
    host, _, port = address.rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) + DIRECTORY_PORT_OFFSET > 65535:
        return None
    return f"{transport}://{host}:{int(port) + DIRECTORY_PORT_OFFSET}"


def check_entry(entry: object) -> dict[str, Any]:
    """A worker's entry with exactly the known fields, checked.

    Raises:
        ValueError: a field is missing, of another type or too long, or the
            endpoint is not a tcp or ipc endpoint.
    """
    if type(entry) is not dict:
        raise ValueError(f"a worker entry must be a map, not {p.describe(entry)}")
    checked: dict[str, Any] = {}
    for field, types in ENTRY_FIELDS.items():
        value = entry.get(field)
        if not any(value is None if t is None else type(value) is t for t in types):
            raise ValueError(f"worker field {field!r} is {p.describe(value)}")
        if type(value) is str and len(value) > MAX_FIELD_LENGTH:
            raise ValueError(f"worker field {field!r} is longer than {MAX_FIELD_LENGTH} characters")
        if type(value) is int and not 0 <= value < 1 << 63:
            raise ValueError(f"worker field {field!r} is out of range")
        checked[field] = value
    if checked["endpoint"] is not None:
        check_endpoint(checked["endpoint"], transports=PROCESS_TRANSPORTS)
    return checked


def encode_report(entry: Mapping[str, Any], *, leaving: bool = False) -> bytes:
    """A worker's report (or, ``leaving``, its goodbye) of ``entry``."""
    return _pack({p.F_VERSION: p.PROTOCOL_VERSION, p.F_OP: OP_LEAVE if leaving else OP_REPORT, p.F_WORKER: entry})


def decode_report(body: bytes) -> tuple[bool, dict[str, Any]]:
    """(leaving, entry) of a report.

    Raises:
        ValueError: not a report of this protocol version, or a bad entry.
    """
    if len(body) > MAX_MESSAGE_SIZE:
        raise ValueError(f"a report of {len(body)} bytes is over {MAX_MESSAGE_SIZE}")
    try:
        report = msgpack.unpackb(body, raw=False, max_array_len=16, max_map_len=32)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ValueError("a report that is not valid msgpack") from None
    if type(report) is not dict or report.get(p.F_VERSION) != p.PROTOCOL_VERSION:
        raise ValueError("not a report of protocol version 1")
    op = report.get(p.F_OP)
    if op not in (OP_REPORT, OP_LEAVE):
        raise ValueError(f"unknown report operation {p.describe(op)}")
    return op == OP_LEAVE, check_entry(report.get(p.F_WORKER))


def encode_pool_request(request_id: int) -> bytes:
    """A client's question to a broker's directory: the pool's map."""
    return _pack({p.F_VERSION: p.PROTOCOL_VERSION, p.F_ID: request_id, p.F_OP: OP_POOL})


def answer_pool_request(body: bytes, entries: list[dict[str, Any]]) -> bytes:
    """The directory's reply to ``body``: the map of ``entries``, or an error
    reply in the protocol's words (ids as the workers treat them)."""
    try:
        request = msgpack.unpackb(body, raw=False, max_array_len=16, max_map_len=p.MAX_REQUEST_MAP_LEN)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
        return p.encode_error(None, p.BAD_REQUEST, "request is not valid msgpack")
    if type(request) is not dict:
        return p.encode_error(None, p.BAD_REQUEST, f"request must be a map, not {p.describe(request)}")
    rid = request.get(p.F_ID)
    if not (type(rid) is int and 0 <= rid <= p.MAX_REQUEST_ID):
        return p.encode_error(None, p.BAD_REQUEST, "request id is missing or not an unsigned 64-bit integer")
    version = request.get(p.F_VERSION)
    if type(version) is not int or version != p.PROTOCOL_VERSION:
        return p.encode_error(
            rid,
            p.UNSUPPORTED_VERSION,
            f"protocol version is missing or not {p.PROTOCOL_VERSION}; this server speaks version {p.PROTOCOL_VERSION}",
        )
    op = request.get(p.F_OP)
    if op != OP_POOL:
        shown = p.show_text(op) if type(op) is str else p.describe(op)
        return p.encode_error(rid, p.BAD_REQUEST, f"unknown operation {shown}; a directory answers only {OP_POOL}")
    return _pack({p.F_ID: rid, F_WORKERS: entries, F_REFRESH: REFRESH_SECONDS})


def decode_pool(reply: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The workers of a directory's reply (already read by
    :func:`rokv.core.reply_of`) that can be dialled: entries with an
    endpoint; malformed entries are skipped.

    Raises:
        ValueError: an error reply, or no ``workers`` array.
    """
    if p.F_ERROR in reply:
        raise ValueError(f"the directory refused: {reply.get(p.F_MESSAGE)!r}")
    workers = reply.get(F_WORKERS)
    if type(workers) is not list:
        raise ValueError("a directory reply without a workers array")
    usable = []
    for entry in workers[:MAX_WORKERS]:
        try:
            known = {k: v for k, v in entry.items() if k in ENTRY_FIELDS} if type(entry) is dict else entry
            checked = check_entry(known)
        except ValueError:
            continue
        if checked["endpoint"] is not None:
            usable.append(checked)
    return usable


def refresh_of(reply: Mapping[str, Any]) -> float:
    """How often the directory wants to be asked, within sane bounds."""
    value = reply.get(F_REFRESH)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return min(max(float(value), 0.1), 10.0)
    return REFRESH_SECONDS
