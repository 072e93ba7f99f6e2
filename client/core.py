"""What both clients share: the retry policy, request ids and bodies, reading
replies, splitting long key lists and putting their answers back together.

Only the transport differs between :class:`rokv.Client` (blocking) and
:class:`rokv.AsyncClient` (asyncio); everything that decides what is sent and
what a reply means lives here or in :mod:`rokv.replies`, so the two cannot
drift apart.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from rokv import protocol as p
from rokv.endpoints import check_endpoints
from rokv.errors import DamagedValue, InvalidKey, KeyNotFound, RokvError, ServiceUnavailable
from rokv.keys import match_canonical, normalize_key
from rokv.replies import check_key_type, error_from_reply, values_from_reply
from rokv.security import CurvePeer, peer_from_env

DEFAULT_ENDPOINT = p.DEFAULT_FRONTEND
# Chosen under faults (RELIABILITY.md): with tries of 0.25, 0.5, 1 and 2 s a
# request lost with a killed or stopped worker is answered within ~250 ms, no
# lookup was lost, and a call still gives up within 3.75 s; the doubling keeps
# retries from multiplying the load on a merely slow service.
DEFAULT_TIMEOUT = 0.25
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 2.0
#: Keys per mget message; longer get_many lists travel as several, pipelined.
DEFAULT_BATCH_SIZE = 1000


def resolve_endpoint(endpoint: str | None) -> str:
    """``endpoint``, else ``$ROKV_ENDPOINT``, else the loopback default (the
    text as given: one endpoint or several, comma-separated)."""
    return endpoint or os.environ.get("ROKV_ENDPOINT") or DEFAULT_ENDPOINT


def resolve_endpoints(endpoint: str | Sequence[str] | None) -> list[str]:
    """The brokers a client talks to: ``endpoint`` (one endpoint, several
    comma-separated, or a list), else ``$ROKV_ENDPOINT``, else the loopback
    default.

    Raises:
        ValueError: an endpoint is malformed, or the list is empty.
    """
    if endpoint is None or endpoint == "":
        endpoint = resolve_endpoint(None)
    return check_endpoints(endpoint)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a client waits for a reply, and how often it asks again.

    Args:
        timeout: seconds to wait for the reply to the first try (> 0).
        retries: extra tries after the first when no reply came in time
            (lookups are idempotent, so a retry is always safe).
        backoff: each further try waits ``backoff`` times longer than the one
            before (>= 1; 1 keeps every try at ``timeout``).
        max_timeout: no single try waits longer than this (>= ``timeout``).

    A call that got no reply after ``1 + retries`` tries raises
    :class:`~rokv.errors.ServiceUnavailable`, at the latest about
    :attr:`total` seconds after it started. A reply to any try answers the
    call. Immutable, so one policy may be shared by any number of clients.
    """

    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout!r}")
        if not (type(self.retries) is int and self.retries >= 0):
            raise ValueError(f"retries must be an integer >= 0, not {self.retries!r}")
        if not (isinstance(self.backoff, (int, float)) and self.backoff >= 1):
            raise ValueError(f"backoff must be a number >= 1, not {self.backoff!r}")
        if not (isinstance(self.max_timeout, (int, float)) and self.max_timeout >= self.timeout):
            raise ValueError(f"max_timeout must be >= timeout ({self.timeout!r}), not {self.max_timeout!r}")

    @property
    def tries(self) -> int:
        """How many times a request is sent at most: ``1 + retries``."""
        return 1 + self.retries

    def try_timeout(self, attempt: int) -> float:
        """Seconds to wait for a reply to try number ``attempt`` (0-based)."""
        return min(self.timeout * self.backoff**attempt, self.max_timeout)

    @property
    def total(self) -> float:
        """The longest a call waits before it gives up, in seconds."""
        return sum(self.try_timeout(i) for i in range(self.tries))

    def unavailable(self, endpoint: str, *, curve: bool = False, hint: str = "") -> ServiceUnavailable:
        """The error of a call that ran out of tries; ``curve`` when the
        client uses CurveZMQ, whose refusals are silent on the client's side;
        ``hint`` is added to the message (what a probe found)."""
        tries = self.tries
        first, last = self.try_timeout(0), self.try_timeout(tries - 1)
        wait = f"{first:g} s" if first == last else f"{first:g} to {last:g} s"
        curve_hint = (
            (
                "; CURVE is on: the broker may be refusing this client (its key not on the broker's client "
                "allow-list, or a wrong broker public key): see the broker's log"
            )
            if curve
            else ""
        )
        return ServiceUnavailable(
            f"no reply from {endpoint} within {wait} on {tries} {'try' if tries == 1 else 'tries'}{curve_hint}{hint}"
        )


#: What a client uses unless told otherwise: ``RetryPolicy()`` itself.
DEFAULT_POLICY = RetryPolicy()


def make_policy(retry: RetryPolicy | None, timeout: float | None, retries: int | None) -> RetryPolicy:
    """The policy a client was asked for: ``retry``; or the loose ``timeout``
    and ``retries`` keywords, which mean the same wait for every try (the two
    ways cannot be mixed); or, given neither, :data:`DEFAULT_POLICY`."""
    if retry is not None:
        if timeout is not None or retries is not None:
            raise ValueError("give either retry=RetryPolicy(...) or timeout=/retries=, not both")
        if not isinstance(retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        return retry
    if timeout is None and retries is None:
        return DEFAULT_POLICY
    return RetryPolicy(
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        retries=DEFAULT_RETRIES if retries is None else retries,
        backoff=1.0,
    )


def check_batch_size(batch_size: int) -> int:
    if not (type(batch_size) is int and 1 <= batch_size <= p.MAX_MGET_KEYS):
        raise ValueError(f"batch_size must be an integer from 1 to {p.MAX_MGET_KEYS}, not {batch_size!r}")
    return batch_size


def request_ids() -> Iterator[int]:
    """Fresh request ids for one socket. 2**64 of them outlast any process."""
    return itertools.count(1)


def resolve_curve(curve: CurvePeer | None) -> CurvePeer | None:
    """``curve``, else the keys in ``$ROKV_CLIENT_SECRET`` and ``$ROKV_BROKER_KEY``."""
    return curve if curve is not None else peer_from_env("ROKV_CLIENT_SECRET")


def reply_of(body: bytes) -> tuple[int, dict[str, Any]] | None:
    """The id and map of a one-frame reply, or ``None`` when it is not
    msgpack or has no integer id."""
    try:
        reply = p.decode_reply(body)
    except p.ProtocolViolation:
        return None
    rid = reply.get(p.F_ID)
    if type(rid) is not int:
        return None
    return rid, reply


#: What the clients take as a key: a string, or a ``uuid.UUID`` (sent as its
#: canonical string).
Key = str | uuid.UUID


def check_key(key: object) -> str:
    """``key`` as a get sends it: a ``uuid.UUID`` becomes its canonical
    string; a valid key string is sent as given.

    Raises:
        InvalidKey: ``key`` is neither a string nor a UUID, or not a valid
            key in any accepted form, with the message the server sends for
            it: an invalid key is refused at once, without a request,
            whether the service is up or not.
    """
    if isinstance(key, uuid.UUID):
        return str(key)
    check_key_type(key)
    assert isinstance(key, str)
    reason = _reason(key)
    if reason is not None:
        raise InvalidKey(reason, key)
    return key


def check_keys(keys: Iterable[object]) -> list[str]:
    """``keys`` as a get_many sends them, in a new list: ``uuid.UUID``
    objects become their canonical strings.

    Raises:
        TypeError: ``keys`` is a single ``str`` or ``bytes`` (whose
            characters would otherwise be taken for keys).
        InvalidKey: a key is neither a string nor a UUID; or some key is
            longer than :data:`~client.protocol.MAX_KEY_LENGTH`: then the
            first invalid key is named, as the server would name it, so that
            no request can outgrow the broker's message size limit.
    """
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"get_many takes a list of keys, not a single {type(keys).__name__}: use get(key) or get_many([key])"
        )
    given = list(keys)
    # The all-str case stays in C: str.join refuses anything but strings, and
    # costs 0.5 us for 100 keys where a set of their types costs 2 us.
    try:
        joined = "".join(cast("list[str]", given))
    except TypeError:
        given = [str(key) if isinstance(key, uuid.UUID) else key for key in given]
        for index, key in enumerate(given):
            check_key_type(key, index)
        joined = "".join(cast("list[str]", given))
    strings = cast("list[str]", given)  # every one a str now: checked above
    # 1.5 us for 100 keys (isascii is a flag of the string, not a scan): a
    # key too long or not ASCII, never valid, is refused before anything
    # travels, so 10,000 keys always fit in the broker's 1 MiB.
    if strings and (max(map(len, strings)) > p.MAX_KEY_LENGTH or not joined.isascii()):
        for index, key in enumerate(strings):
            reason = _reason(key)
            if reason is not None:
                raise InvalidKey(p.key_at(index, reason), key, index=index, reason=reason)
    return strings


def _reason(key: str) -> str | None:
    """Why the server refuses ``key``, or ``None`` when it is valid."""
    try:
        # The server receives a str subclass as a plain str: so must this check.
        normalize_key(str.__str__(key))
    except InvalidKey as exc:
        return exc.message
    return None


def first_invalid(keys: Sequence[str]) -> InvalidKey | None:
    """The error naming the first invalid key of ``keys`` (strings), as the
    server would word it, or None when all are valid. Per key in Python: for
    a command line, not for every get_many (the server checks them anyway)."""
    for index, key in enumerate(keys):
        if not match_canonical(key):
            reason = _reason(key)
            if reason is not None:
                return InvalidKey(p.key_at(index, reason), key, index=index, reason=reason)
    return None


def split_keys(keys: list[str], batch_size: int) -> list[tuple[int, list[str]]]:
    """``keys`` as (offset, chunk) pairs of at most ``batch_size`` keys."""
    if len(keys) <= batch_size:
        return [(0, keys)]
    return [(start, keys[start : start + batch_size]) for start in range(0, len(keys), batch_size)]


def join_batches(parts: Sequence[tuple[int, list[str], dict[str, Any]]]) -> list[str | None]:
    """The values of a get_many from its (offset, chunk, reply) parts, in
    offset order.

    Raises:
        InvalidKey: naming the first invalid key of the whole list, with its
            index in the whole list (a worker only knows its chunk).
        ProtocolError: a reply does not fit its request.
    """
    if len(parts) == 1:
        return values_from_reply(parts[0][2], parts[0][1])
    values: list[str | None] = []
    failure: RokvError | None = None
    for offset, chunk, reply in parts:
        try:
            values.extend(values_from_reply(reply, chunk, offset))
        except InvalidKey as exc:
            if failure is None or not isinstance(failure, InvalidKey):
                failure = exc
        except RokvError as exc:
            failure = failure or exc
        if failure is not None and isinstance(failure, InvalidKey):
            break  # chunks are in order: this is the first invalid key
    if failure is not None:
        raise failure
    return values


# ------------------------------------------------------------ coalescing


def key_and_canonical(key: object) -> tuple[str, str]:
    """``key`` as sent (a ``uuid.UUID`` as its string) and normalised, for a
    get that travels inside a shared mget.

    Raises:
        InvalidKey: with the message the server would send for a get of
            ``key``, since one invalid key would fail the whole mget.
    """
    if isinstance(key, uuid.UUID):
        key = str(key)
    return cast(str, key), normalize_key(key)  # normalize_key refuses anything but a str


def not_found(canonical: str, key: str) -> KeyNotFound:
    """The error a get of a missing key gets, worded as the server words it."""
    return KeyNotFound(p.error_message(p.NOT_FOUND, key=canonical), key)


def damaged(canonical: str, key: str) -> DamagedValue:
    """The error a get of a key whose value is damaged gets, worded as the
    server words it."""
    return DamagedValue(p.error_message(p.DAMAGED_VALUE, key=canonical), key)


def batch_error(reply: dict[str, Any]) -> RokvError:
    """The error of a failed coalesced mget, for each caller in it."""
    return error_from_reply(reply)
