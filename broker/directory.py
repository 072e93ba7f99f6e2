"""The broker's directory of its pool: which workers report through it, and
the map it tells clients (PROTOCOL.md, "Direct path and the pool's
directory"; the wire format is :mod:`rokv.directory`).

Two sockets, served by a thread of their own:

- the *inlet*, a DEALER attached to the broker's own frontend (over inproc)
  under the routing id :data:`~rokv.directory.DIRECTORY_ROUTE`: a worker's
  report, sent on its backend connection addressed to that id, is forwarded
  by the proxy like any reply, inside libzmq. So lookups never pass through
  Python, and only a worker the backend admitted (CURVE allow-list) can
  report;
- the *directory endpoint*, a ROUTER clients ask for the map (``op: pool``),
  with the frontend's CURVE settings and allow-list.

Entries expire :data:`~rokv.directory.EXPIRY_SECONDS` after their last report.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from rokv import directory
from rokv import protocol as p

log = logging.getLogger("rokv.broker.directory")

#: Where the frontend is also bound, in-process, for the inlet to attach to.
INLET_ENDPOINT = "inproc://rokv-broker-directory"
#: Longest the thread waits before it looks for a stop or a new inlet.
POLL_MS = 100
#: At most one log line about bad reports in this many seconds.
BAD_REPORT_LOG_INTERVAL = 10.0


class Directory:
    """The directory's sockets and thread. The main thread creates the
    inlet (:meth:`attach`, after each frontend bind) and the endpoint; the
    thread alone uses them once started."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: dict[str, Any] | None) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.entries: dict[tuple[str, int, str], tuple[float, dict[str, Any]]] = {}
        self.reports = 0
        self.bad_reports = 0
        #: Messages and body bytes the inlet took: the proxy counted them as
        #: replies (2 frames each, with the routing id), which they are not.
        self.inlet_messages = 0
        self.inlet_bytes = 0
        self.queries = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new_inlet: zmq.Socket | None = None
        self._inlet: zmq.Socket | None = None
        self._last_bad_log = -1e9
        self._thread: threading.Thread | None = None
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.maxmsgsize = directory.MAX_MESSAGE_SIZE
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
        if curve is not None:
            sock.curve_server = True
            sock.curve_publickey = curve["public"]
            sock.curve_secretkey = curve["secret"]
            sock.zap_domain = curve["domain"].encode()
        if "[" in endpoint:
            sock.ipv6 = True
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self.sock = sock

    def attach(self) -> None:
        """A new inlet on the frontend's in-process endpoint (call right after
        binding it); the thread switches to it at its next wake-up."""
        inlet = self.ctx.socket(zmq.DEALER)
        inlet.linger = 0
        inlet.routing_id = directory.DIRECTORY_ROUTE
        inlet.connect(INLET_ENDPOINT)
        with self._lock:
            if self._new_inlet is not None:
                self._new_inlet.close(linger=0)
            self._new_inlet = inlet

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rokv-directory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        with self._lock:
            for sock in (self._inlet, self._new_inlet):
                if sock is not None:
                    sock.close(linger=0)
            self._inlet = self._new_inlet = None
        self.sock.close(linger=0)

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        """The live entries, each with ``age`` (seconds since its report)."""
        now = time.monotonic() if now is None else now
        return [{**entry, "age": round(now - seen, 3)} for seen, entry in self.entries.values()]

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                fresh, self._new_inlet = self._new_inlet, None
            if fresh is not None:
                if self._inlet is not None:
                    poller.unregister(self._inlet)
                    self._inlet.close(linger=0)
                self._inlet = fresh
                poller.register(fresh, zmq.POLLIN)
            try:
                ready = dict(poller.poll(POLL_MS))
            except zmq.ZMQError as exc:  # never seen; the directory must not take the broker down
                log.error("directory poll failed: %s", exc)
                time.sleep(POLL_MS / 1000)
                continue
            now = time.monotonic()
            if self._inlet is not None and self._inlet in ready:
                self._take_reports(self._inlet, now)
            self._expire(now)
            if self.sock in ready:
                self._answer(now)

    def _take_reports(self, inlet: zmq.Socket, now: float) -> None:
        for _ in range(1000):
            try:
                frames = inlet.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.inlet_messages += 1
            self.inlet_bytes += sum(len(f) for f in frames)
            try:
                if len(frames) != 1:
                    raise ValueError(f"a report of {len(frames)} frames")
                leaving, entry = directory.decode_report(frames[0])
            except ValueError as exc:
                self.bad_reports += 1
                if now - self._last_bad_log > BAD_REPORT_LOG_INTERVAL:
                    self._last_bad_log = now
                    log.warning("ignored a bad report from a worker: %s (%d so far)", exc, self.bad_reports)
                continue
            key = (entry["host"], entry["pid"], entry["id"])
            if leaving:
                self.entries.pop(key, None)
                continue
            if key not in self.entries and len(self.entries) >= directory.MAX_WORKERS:
                continue  # the map is full: a new worker waits for a place
            self.reports += 1
            self.entries[key] = (now, entry)

    def _expire(self, now: float) -> None:
        limit = now - directory.EXPIRY_SECONDS
        for key in [k for k, (seen, _) in self.entries.items() if seen < limit]:
            del self.entries[key]

    def _answer(self, now: float) -> None:
        workers: list[dict[str, Any]] | None = None
        for _ in range(1000):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            self.queries += 1
            if len(frames) != 2:
                reply = p.encode_error(None, p.BAD_REQUEST, f"a request is one frame, not {len(frames) - 1}")
            else:
                if workers is None:
                    workers = self.workers(now)
                reply = directory.answer_pool_request(frames[1], workers)
            try:
                self.sock.send_multipart([frames[0], reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client went away: a ROUTER drops what it cannot route
