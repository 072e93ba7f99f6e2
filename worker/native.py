"""The worker's compiled loop, when there is one: loading it (or saying why
not), and :class:`Compiled`, which runs it with the contract of the Python
loop (:mod:`rokv.worker.loop`).

``rokv.worker._native`` (worker/_native.c, typed by _native.pyi) is built at
install time when a C compiler is there. It talks to libzmq directly, so it
must use the very library pyzmq loaded: this module finds that library's path
among the process's mappings and hands it over, then gives it the protocol's
constants and the counters' layout (:func:`constants`), which the C code
does not restate. Whatever goes wrong (no compiled module, no libzmq found,
``ROKV_PURE_PYTHON=1``), rokv runs its pure-Python path, which behaves the
same, and says once in the log which path is in use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import zmq

from rokv import protocol as p
from rokv.server import stats
from rokv.worker.handler import Handler
from rokv.worker.loop import SEND_TIMEOUT_MS, TICK_EVERY, nothing

log = logging.getLogger("rokv.worker.native")

_loaded: ModuleType | None = None
_why_not: str | None = None
_tried = False


def _libzmq_path() -> str | None:
    """The file of the libzmq that pyzmq loaded, from /proc/self/maps."""
    import zmq  # noqa: F401 - loads libzmq, whose mapping is looked for below

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "libzmq" in os.path.basename(path) and os.path.exists(path):
                    return path
    except OSError:
        return None
    return None


def constants() -> dict[str, Any]:
    """What the compiled loop is configured with: the protocol's field names,
    operations, version and mget limit, the not-found code and the message
    around its key, and where :class:`rokv.server.stats.RequestStats` counts
    what it answers (and the histogram's bounds)."""
    before, key, after = p.ERROR_MESSAGES[p.NOT_FOUND].partition("{key}")
    assert key, "the not-found message names its key"
    return {
        "fields": {
            "version": p.F_VERSION,
            "id": p.F_ID,
            "op": p.F_OP,
            "key": p.F_KEY,
            "keys": p.F_KEYS,
            "value": p.F_VALUE,
            "values": p.F_VALUES,
            "error": p.F_ERROR,
            "message": p.F_MESSAGE,
        },
        "ops": {"get": p.OP_GET, "mget": p.OP_MGET},
        "not_found": {"code": p.NOT_FOUND, "before": before, "after": after},
        "version": p.PROTOCOL_VERSION,
        "max_mget_keys": p.MAX_MGET_KEYS,
        "stats": {
            "requests": len(stats.OPS) * len(stats.OUTCOMES),
            "key_outcomes": len(stats.KEY_OUTCOMES),
            "get_found": stats.GET_FOUND,
            "get_not_found": stats.GET_NOT_FOUND,
            "mget_found": stats.MGET_FOUND,
            "mget_not_found": stats.MGET_NOT_FOUND,
            "key_found": stats.KEY_FOUND,
            "key_not_found": stats.KEY_NOT_FOUND,
            "buckets": tuple(stats.BUCKETS),
        },
    }


def load() -> ModuleType | None:
    """``rokv.worker._native``, ready to use, or None (then :func:`reason` says
    why). Logs which path is in use, once per process."""
    global _loaded, _why_not, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("ROKV_PURE_PYTHON", "") not in ("", "0"):
        _why_not = "ROKV_PURE_PYTHON is set"
    else:
        try:
            from rokv.worker import _native  # built from worker/_native.c (stub: _native.pyi)
        except ImportError as exc:
            _why_not = f"the compiled module is not installed ({exc}); install with a C compiler to build it"
        else:
            path = _libzmq_path()
            if path is None:
                _why_not = "pyzmq's libzmq could not be located"
            else:
                try:
                    _native.init(path)
                    _native.configure(constants())
                except OSError as exc:
                    _why_not = str(exc)
                else:
                    _loaded = _native
    if _loaded is not None:
        log.info("compiled hot path in use (rokv.worker._native)")
    else:
        log.warning("pure-Python path in use, slower: %s", _why_not)
    return _loaded


def reason() -> str | None:
    """Why the compiled path is not in use, or None when it is (or was not
    asked for yet)."""
    return _why_not


class Compiled:
    """The compiled loop (rokv.worker._native) over this worker's dataset.

    It answers what it can, gets and mgets of well-formed keys, and hands the
    handler every other message, so replies are the handler's in every case;
    it counts what it answered in the handler's layout, merged into the
    handler's stats by :meth:`collect` (so metrics see one worker).
    """

    def __init__(self, module: Any, handler: Handler) -> None:
        self._native = module
        data = handler.data
        native_lookup = getattr(data, "native_lookup", None)
        self._lookup = native_lookup(module) if native_lookup is not None else module.dict_lookup(data)
        self._handle = handler.handle
        self._stats = handler.stats
        #: The sockets' libzmq addresses, per list of sockets served together.
        self._polled: tuple[list[zmq.Socket], tuple[int, ...]] = ([], ())

    def answer(
        self,
        sock: zmq.Socket,
        handler: Handler,
        done: Callable[[], bool],
        stop_when_idle: bool,
        limit: int = 1 << 62,
        tick: Callable[[], None] = nothing,
    ) -> int:
        """:func:`_answer`'s contract, the loop in compiled code: it comes back
        every :data:`TICK_EVERY` messages, at a receive timeout and at a
        signal, so that ``done`` and ``tick`` are looked at as often."""
        serve, address, lookup, handle = self._native.serve, sock.underlying, self._lookup, self._handle
        count = 0
        while count < limit and not done():
            asked = min(limit - count, TICK_EVERY)
            answered, dropped, interrupted = serve(address, lookup, handle, asked, False)
            count += answered
            if dropped:
                logging.getLogger("rokv.worker").warning(
                    "dropped %d replies: the broker did not take them within %d ms", dropped, SEND_TIMEOUT_MS
                )
            if answered < asked and not interrupted:  # the receive timed out: nothing came
                tick()
                if stop_when_idle:
                    break
            elif answered == asked:
                tick()
        return count

    def answer_ready(self, socks: list[zmq.Socket], timeout_ms: int, burst: int, endpoint: Any = None) -> list[int]:
        """:data:`rokv.worker.loop.AnswerReady`'s contract in compiled code:
        one poll of every socket (up to ``timeout_ms``), then up to ``burst``
        answers from each that has requests; how many each answered. With
        ``endpoint`` (a ``_native.Endpoint``: the direct endpoint the compiled
        loop serves without libzmq), its connections are polled and answered
        too, and their count comes last."""
        polled, addresses = self._polled
        if polled != socks:  # the first call, or DNS discovery changed the brokers
            addresses = tuple(sock.underlying for sock in socks)
            self._polled = (list(socks), addresses)
        counts, dropped, _ = self._native.serve_many(addresses, self._lookup, self._handle, burst, timeout_ms, endpoint)
        if dropped:
            logging.getLogger("rokv.worker").warning(
                "dropped %d replies: the broker did not take them within %d ms", dropped, SEND_TIMEOUT_MS
            )
        return counts

    def ticking(self, tick: Callable[[], None]) -> Callable[[], None]:
        """``tick``, after the compiled loop's counts joined the handler's."""
        if tick is nothing:
            return tick

        def collected() -> None:
            self.collect()
            tick()

        return collected

    def collect(self) -> None:
        """Add what the compiled loop counted since the last call to the
        handler's stats."""
        requests, keys, buckets, seconds = self._native.take_stats()
        stats = self._stats
        for i, n in enumerate(requests):
            if n:
                stats.requests[i] += n
        for i, n in enumerate(keys):
            if n:
                stats.mget_keys[i] += n
        for i, n in enumerate(buckets):
            if n:
                stats.buckets[i] += n
        stats.seconds += seconds
