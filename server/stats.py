"""What a worker has answered, counted in plain integers.

The serving loop pays one list increment per request here (and a clock read
and a bucket search for the handling time); nothing in this module imports
prometheus_client. :mod:`rokv.server.metrics` reads these counts about once a
second and publishes the increase since its last reading, so the cost of
Prometheus' bookkeeping is paid a few times a second, not once a request.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from time import perf_counter

#: Operations as counted: ``other`` is a request refused before its
#: operation could be read.
OPS = ("get", "mget", "ping", "other")
#: A request's outcome. An mget is ``found`` when every key was, else
#: ``not_found``; ``invalid``: refused for an invalid key; ``damaged``: a
#: key's stored value is damaged (not valid UTF-8); ``refused``: a protocol
#: violation (bad_request, unsupported_version); ``error``: the worker failed
#: (internal); ``ok``: a ping answered.
OUTCOMES = ("found", "not_found", "invalid", "damaged", "refused", "error", "ok")
#: A key's outcome. An mget refused for an invalid key counts that one key
#: as invalid and nothing for its other keys: they got no answer. An mget
#: with damaged values counts each of them as damaged, its other keys as
#: found or not found (their values travel in the reply).
KEY_OUTCOMES = ("found", "not_found", "invalid", "damaged")

#: Upper bounds (seconds) of the handling-time histogram's buckets: a get
#: takes a few microseconds, an mget of 1,000 keys about a millisecond.
BUCKETS = (2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def request_index(op: str, outcome: str) -> int:
    """The position of (op, outcome) in :attr:`RequestStats.requests`."""
    return OPS.index(op) * len(OUTCOMES) + OUTCOMES.index(outcome)


# The handler's increments use these constants (a global load, no lookup).
GET_FOUND = request_index("get", "found")
GET_NOT_FOUND = request_index("get", "not_found")
GET_INVALID = request_index("get", "invalid")
MGET_FOUND = request_index("mget", "found")
MGET_NOT_FOUND = request_index("mget", "not_found")
MGET_INVALID = request_index("mget", "invalid")
GET_DAMAGED = request_index("get", "damaged")
MGET_DAMAGED = request_index("mget", "damaged")
PING_OK = request_index("ping", "ok")
OTHER_REFUSED = request_index("other", "refused")
OTHER_ERROR = request_index("other", "error")
KEY_FOUND, KEY_NOT_FOUND, KEY_INVALID, KEY_DAMAGED = range(4)


class RequestStats:
    """Counts since the start of this process; only ever increase.

    ``requests[request_index(op, outcome)]``: requests. ``mget_keys[i]``:
    keys of mget requests by :data:`KEY_OUTCOMES` (a get's key is counted by
    its request: see :meth:`snapshot`). ``buckets[i]``: requests whose
    handling took at most ``BUCKETS[i]`` and more than the bound before
    (the last slot: longer than every bound); ``seconds``: their sum.

    Not thread-safe: the serving loop alone writes; a reader in the same
    thread sees a consistent state.
    """

    __slots__ = ("requests", "mget_keys", "buckets", "seconds")

    def __init__(self) -> None:
        self.requests = [0] * (len(OPS) * len(OUTCOMES))
        self.mget_keys = [0] * len(KEY_OUTCOMES)
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0

    def observe(self, seconds: float, _bisect=bisect_left, _bounds=BUCKETS) -> None:
        """Count one request's handling time (``le`` semantics: a time equal
        to a bound falls in that bound's bucket)."""
        self.buckets[_bisect(_bounds, seconds)] += 1
        self.seconds += seconds

    def snapshot(self) -> Snapshot:
        """The totals as published: a get's key counts as a key of its outcome."""
        keys = list(self.mget_keys)
        keys[KEY_FOUND] += self.requests[GET_FOUND]
        keys[KEY_NOT_FOUND] += self.requests[GET_NOT_FOUND]
        keys[KEY_INVALID] += self.requests[GET_INVALID]
        keys[KEY_DAMAGED] += self.requests[GET_DAMAGED]
        return Snapshot(list(self.requests), keys, list(self.buckets), self.seconds)


@dataclass
class Snapshot:
    """Totals at one moment (see :class:`RequestStats`)."""

    requests: list[int]
    keys: list[int]
    buckets: list[int]
    seconds: float

    @classmethod
    def zero(cls) -> Snapshot:
        return RequestStats().snapshot()


clock = perf_counter
