"""Answering one request: pure logic over frames, no sockets, so it can be
tested (and fuzzed) without processes."""

from __future__ import annotations

import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rokv import protocol as p
from rokv.errors import InvalidKey
from rokv.keys import normalize_key
from rokv.server.stats import (
    BUCKETS,
    GET_DAMAGED,
    GET_FOUND,
    GET_INVALID,
    GET_NOT_FOUND,
    KEY_DAMAGED,
    KEY_FOUND,
    KEY_INVALID,
    KEY_NOT_FOUND,
    MGET_DAMAGED,
    MGET_FOUND,
    MGET_INVALID,
    MGET_NOT_FOUND,
    OTHER_ERROR,
    OTHER_REFUSED,
    PING_OK,
    RequestStats,
    clock,
)

log = logging.getLogger("rokv.worker")


class RateLimitedLog:
    """Logs at most one line per ``interval`` seconds and counts the rest, so a
    barrage of garbage cannot flood the log or slow the worker down."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar lines suppressed)"
            self._suppressed = 0
        self._next = now + self._interval
        self._logger.warning(message)


class Lookup(Protocol):
    """What Handler needs of a dataset: a dict, or a mapped .rokv Store
    (which also has ``get_many``, used for mget when present)."""

    def get(self, key: str) -> str | None: ...

    def __len__(self) -> int: ...


class Handler:
    """Answers get, mget and ping over a dataset.

    ``data`` maps canonical lowercase keys to values; since only valid keys are
    in it, a hit needs no validation, and keys are validated (and normalised)
    only on a miss. ``extra_info`` is added to the ping reply (for a .rokv
    dataset: its digest). ``stats`` counts every request by operation and
    outcome, and its handling time, in plain integers (see
    :mod:`rokv.server.stats`).
    """

    def __init__(
        self, data: Lookup, *, worker_id: str, dataset: str, extra_info: Mapping[str, Any] | None = None
    ) -> None:
        self.data = data
        get_many = getattr(data, "get_many", None)
        self._get_many: Callable[[list[Any]], list[str | None]] = get_many or (lambda keys: list(map(data.get, keys)))
        # For a dict, all hits (the common case) stay in C: __getitem__ raises
        # at the first miss instead of a scan for None afterwards (1.2 us a
        # 100-key mget).
        self._dict_getitem = data.__getitem__ if isinstance(data, dict) else None
        self._started = time.monotonic()
        self._info: dict[str, Any] = {
            "id": worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "keys": len(data),
            "dataset": dataset,
            "protocol": p.PROTOCOL_VERSION,
            **(extra_info or {}),
        }
        self._drop_log = RateLimitedLog(log)
        self._damage_log = RateLimitedLog(log)
        self.stats = RequestStats()
        self._requests = self.stats.requests
        self._mget_keys = self.stats.mget_keys

    def handle(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply frames for one message from the broker, or ``None`` when
        it cannot be addressed. Never raises."""
        start = clock()
        try:
            if len(frames) < 2:
                self._requests[OTHER_REFUSED] += 1
                self._drop_log.warning(f"dropped a message of {len(frames)} frame(s): no routing id and body")
                return None
            route = frames[0]
            if len(frames) != 2:
                self._requests[OTHER_REFUSED] += 1
                self._drop_log.warning(f"refused a request of {len(frames) - 1} frames")
                return [route, p.encode_error(None, p.BAD_REQUEST, f"a request is one frame, not {len(frames) - 1}")]
            try:
                return [route, self.answer(frames[1])]
            except Exception:  # a bug must cost one reply, never the worker
                self._requests[OTHER_ERROR] += 1
                log.exception("internal error while answering a request")
                return [route, p.encode_error(None, p.INTERNAL, p.error_message(p.INTERNAL))]
        finally:
            # Inlined RequestStats.observe: this runs for every request.
            seconds = clock() - start
            stats = self.stats
            stats.buckets[bisect_left(BUCKETS, seconds)] += 1
            stats.seconds += seconds

    def answer(self, body: bytes) -> bytes:
        """The reply body for one request body."""
        try:
            req = p.decode_request(body)
        except p.ProtocolViolation as exc:
            self._requests[OTHER_REFUSED] += 1
            self._drop_log.warning(f"refused a request: {exc.code}: {exc.message}")
            return p.encode_error(exc.request_id, exc.code, exc.message)
        # A mapped .rokv file decodes each value as it is read: a value that is
        # not UTF-8 (the file changed on disk) raises, and is answered below.
        if req.op == p.OP_GET:
            try:
                return self._get(req.request_id, req.key)
            except UnicodeDecodeError as exc:
                return self._damaged_get(req.request_id, req.key, exc)
        if req.op == p.OP_MGET:
            try:
                return self._mget(req.request_id, req.keys or [])
            except UnicodeDecodeError:
                return self._damaged_mget(req.request_id, req.keys or [])
        self._requests[PING_OK] += 1
        return p.encode_worker(req.request_id, {**self._info, "uptime": time.monotonic() - self._started})

    def _get(self, rid: int, key: Any) -> bytes:
        value = self.data.get(key) if type(key) is str else None
        if value is not None:
            self._requests[GET_FOUND] += 1
            return p.encode_value(rid, value)
        try:
            canonical = normalize_key(key)
        except InvalidKey as exc:
            self._requests[GET_INVALID] += 1
            return p.encode_error(rid, p.INVALID_KEY, exc.message)
        if canonical != key:
            value = self.data.get(canonical)
            if value is not None:
                self._requests[GET_FOUND] += 1
                return p.encode_value(rid, value)
        self._requests[GET_NOT_FOUND] += 1
        return p.encode_error(rid, p.NOT_FOUND, p.error_message(p.NOT_FOUND, key=canonical))

    def _mget(self, rid: int, keys: list[Any]) -> bytes:
        if self._dict_getitem is not None:
            try:
                reply = p.encode_values(rid, list(map(self._dict_getitem, keys)))
            except (KeyError, TypeError):  # a miss, or an unhashable key
                pass
            else:
                self._requests[MGET_FOUND] += 1
                self._mget_keys[KEY_FOUND] += len(keys)
                return reply
        get = self.data.get
        try:
            values = self._get_many(keys)
        except TypeError:  # an unhashable key: validate one by one below
            values = [None] * len(keys)
        if None in values:
            for index, value in enumerate(values):
                if value is not None:
                    continue
                key = keys[index]
                try:
                    canonical = normalize_key(key)
                except InvalidKey as exc:
                    return self._invalid_in_mget(rid, exc, index)
                values[index] = get(canonical)
            missing = values.count(None)
        else:
            missing = 0
        self._requests[MGET_NOT_FOUND if missing else MGET_FOUND] += 1
        self._mget_keys[KEY_FOUND] += len(values) - missing
        self._mget_keys[KEY_NOT_FOUND] += missing
        return p.encode_values(rid, values)

    def _invalid_in_mget(self, rid: int, exc: InvalidKey, index: int) -> bytes:
        """The reply to an mget refused for its invalid key at ``index``,
        counted. The position travels as data; clients word "keys[i]: ..."
        with the index into their own, possibly longer, list."""
        self._requests[MGET_INVALID] += 1
        self._mget_keys[KEY_INVALID] += 1
        return p.encode_error(rid, p.INVALID_KEY, exc.message, index=index)

    # ------------------------------------------------------------ damaged values
    # Rare (a dataset file changed on disk), so plain and key by key.

    def _damaged_get(self, rid: int, key: str, exc: UnicodeDecodeError) -> bytes:
        """The reply to a get whose value is damaged: ``damaged_value``
        naming the key, logged and counted."""
        canonical = normalize_key(key)  # it was found: a valid key
        self._requests[GET_DAMAGED] += 1
        self._log_damage(canonical, exc)
        return p.encode_damaged(rid, canonical)

    def _damaged_mget(self, rid: int, keys: list[Any]) -> bytes:
        """The reply to an mget holding a key whose value is damaged: an
        invalid key still refuses the whole request first; otherwise a
        ``damaged_value`` error naming the first damaged key, carrying the
        other values and the index of every damaged key."""
        get = self.data.get
        values: list[str | None] = []
        canonicals: list[str] = []
        damaged: list[int] = []
        for index, key in enumerate(keys):
            try:
                canonical = normalize_key(key)
            except InvalidKey as exc:
                return self._invalid_in_mget(rid, exc, index)
            canonicals.append(canonical)
            try:
                values.append(get(canonical))
            except UnicodeDecodeError as exc:
                values.append(None)
                damaged.append(index)
                self._log_damage(canonical, exc)
        missing = values.count(None) - len(damaged)
        self._requests[MGET_DAMAGED] += 1
        self._mget_keys[KEY_FOUND] += len(values) - missing - len(damaged)
        self._mget_keys[KEY_NOT_FOUND] += missing
        self._mget_keys[KEY_DAMAGED] += len(damaged)
        return p.encode_damaged_values(rid, canonicals, values, damaged)

    def _log_damage(self, key: str, exc: UnicodeDecodeError) -> None:
        dataset = self._info["dataset"]
        self._damage_log.warning(
            f"key {key}: its value in {dataset} is damaged ({len(exc.object):,} bytes, not valid UTF-8 from byte "
            f"{exc.start}): answered damaged_value; was the file changed on disk, or deployed with --no-verify? "
            f"`rokv verify {dataset}` checks it: deploy a good copy"
        )
