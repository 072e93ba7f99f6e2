"""Types of rokv.worker._native, built from _native.c (see rokv.worker.native)."""

from collections.abc import Callable
from typing import Any

class Lookup:
    """A dataset as the compiled loop reads it: a dict, or a .rokv mapping."""

def init(libzmq_path: str, /) -> None:
    """Find libzmq's functions in the library pyzmq loaded. Raises OSError."""

def configure(constants: dict[str, Any], /) -> None:
    """The protocol's constants and the counters' layout (rokv.worker.native.constants())."""

def config() -> dict[str, Any]:
    """The constants configure() was given, read back."""

def dict_lookup(data: dict[str, str], /) -> Lookup: ...
def store_lookup(
    mapping: Any, table: int, keys: int, offsets: int, values: int, count: int, bits: int, /
) -> Lookup: ...
def serve(socket_address: int, lookup: Lookup, handler: Any, limit: int, dontwait: bool, /) -> tuple[int, int, bool]:
    """Answer up to ``limit`` messages: (answered, replies dropped, interrupted by a signal)."""

def serve_many(
    socket_addresses: tuple[int, ...],
    lookup: Lookup,
    handler: Any,
    burst: int,
    timeout_ms: int,
    endpoint: Endpoint | None = None,
    /,
) -> tuple[list[int], int, bool]:
    """Poll every socket (and ``endpoint``'s connections) up to ``timeout_ms``, then answer up to ``burst``
    messages from each that has some: (answered per socket, the endpoint's count last; replies dropped;
    interrupted by a signal)."""

class Endpoint:
    """A direct endpoint served by serve_many itself: ZMTP 3 as a ROUTER on the connections it accepts
    from ``listen_fd`` (a bound, listening, non-blocking TCP socket that stays the caller's).
    ``on_event(kind, peer, detail)`` is called per connection: "accepted", "closed", "refused", "failed"."""

    def __init__(
        self, listen_fd: int, max_message_size: int, max_connections: int, on_event: Callable[[str, str, str], Any], /
    ) -> None: ...
    def close(self, linger_ms: int, /) -> None:
        """Send what waits for up to ``linger_ms``, then close every connection."""

    def counts(self) -> dict[str, int]:
        """{connections, accepted, closed, refused}"""

def answer(lookup: Lookup, body: bytes, /) -> bytes | None:
    """The compiled answer to one request body, or None where Python answers."""

def take_stats() -> tuple[list[int], list[int], list[int], float]:
    """(requests, mget keys, buckets, seconds) counted since the last call."""
