"""``rokv-worker``: load the dataset, connect to the broker's backend, answer
until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from rokv import native
from rokv import protocol as p
from rokv.endpoints import check_endpoints
from rokv.monitor import ConnectionWatcher
from rokv.security import CurvePeer, KeyFileError
from rokv.worker import metrics, refusal
from rokv.worker.dataset import DatasetError, open_dataset
from rokv.worker.handler import Handler

log = logging.getLogger("rokv.worker")

#: Relative to the working folder: supervisord.conf runs workers in its own
#: folder, so in a checkout this is the bundled example dataset.
DEFAULT_DATA = "data/example.json"
#: Exit status of a worker that refuses its dataset (and serves nothing).
EXIT_DATASET_REFUSED = 1
#: Longest a worker waits on an idle socket before it looks at the stop flag
#: again: the most a stop request waits when no request comes.
STOP_CHECK_MS = 100
#: How long a stopping worker keeps trying to hand its last replies over.
CLOSE_LINGER_MS = 1000
SEND_TIMEOUT_MS = 1000
#: On stop: answer until no request came for DRAIN_QUIET_MS, for at most
#: DRAIN_MAX_SECONDS.
DRAIN_QUIET_MS = 50
DRAIN_MAX_SECONDS = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from rokv.endpoints import endpoints_argument

    parser = argparse.ArgumentParser(
        prog="rokv-worker",
        description="Serve a rokv dataset to the broker's backend. Exits 0 on SIGTERM/SIGINT, "
        "non-zero (without serving anything) when the dataset cannot be loaded.",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("ROKV_DATA") or DEFAULT_DATA,
        help="dataset file: .rokv (built by `rokv build`, memory-mapped), .json or .jsonl "
        "(env ROKV_DATA; default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("ROKV_BACKEND") or p.DEFAULT_BACKEND,
        type=endpoints_argument(),
        help="the broker backend to connect to, or several brokers' comma-separated: this worker serves "
        "each, answering every request through the broker that brought it (env ROKV_BACKEND; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("SUPERVISOR_PROCESS_NAME") or f"{socket.gethostname()}:{os.getpid()}",
        help="worker id reported by ping (default: supervisor's process name, else host:pid)",
    )
    parser.add_argument(
        "--curve-secret",
        default=os.environ.get("ROKV_WORKER_SECRET") or None,
        help="this worker's CurveZMQ .key_secret file, when the broker uses CURVE (env ROKV_WORKER_SECRET)",
    )
    parser.add_argument(
        "--broker-key",
        default=os.environ.get("ROKV_BROKER_KEY") or None,
        help="the broker's public .key file, with --curve-secret (env ROKV_BROKER_KEY)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        default=os.environ.get("ROKV_ALLOW_EMPTY") == "1",
        help="serve a dataset of no keys, which is refused by default (env ROKV_ALLOW_EMPTY=1)",
    )
    args = parser.parse_args(argv)
    if os.environ.get("ROKV_ALLOW_EMPTY", "") not in ("", "0", "1"):
        parser.error(f"ROKV_ALLOW_EMPTY={os.environ['ROKV_ALLOW_EMPTY']!r}: expected 1 (allow) or 0")
    if bool(args.curve_secret) != bool(args.broker_key):
        parser.error("--curve-secret and --broker-key go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rokv-worker[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # A stop request only raises a flag: the receive loop looks at it between
    # messages, so no request is ever dropped halfway through its answer.
    stop = _StopFlag()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop.raise_flag)

    started = time.monotonic()
    rules = _rules(allow_empty=args.allow_empty)
    remembered = refusal.recall(args.data, rules)
    if remembered is not None:
        print(f"rokv-worker: {remembered}", file=sys.stderr)
        return EXIT_DATASET_REFUSED
    try:
        data = open_dataset(args.data, allow_empty=args.allow_empty)
    except DatasetError as exc:
        reason = str(exc)
        if args.data == DEFAULT_DATA and not os.path.exists(DEFAULT_DATA):
            reason += (
                f" (the default {DEFAULT_DATA} exists only in a checkout of rokv, where supervisord.conf "
                "runs workers; give a dataset with ROKV_DATA or --data)"
            )
        print(f"rokv-worker: {reason}", file=sys.stderr)
        refusal.remember(args.data, rules, reason)
        return EXIT_DATASET_REFUSED
    refusal.forget(args.data, rules)
    load_seconds = time.monotonic() - started
    if stop.raised:
        return 0  # stopped while loading

    ctx = zmq.Context()
    watcher = ConnectionWatcher(log)
    backends = check_endpoints(args.backend)
    socks: list[zmq.Socket] = []
    try:
        for backend in backends:
            socks.append(_connect(ctx, watcher, backend, args))
    except KeyFileError as exc:
        print(f"rokv-worker: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"rokv-worker: cannot connect to {backend!r}: {exc}", file=sys.stderr)
        return 1
    finally:
        if len(socks) < len(backends):
            for sock in socks:
                ConnectionWatcher.unwatch(sock)
                sock.close(linger=0)
            watcher.stop()
            ctx.term()
    # A .rokv file names its content: ping and the log say which version is served.
    digest = getattr(data, "digest", None)
    extra: dict[str, object] = {"limits": _limits()}
    if digest:
        extra["digest"] = digest
    handler = Handler(data, worker_id=args.name, dataset=args.data, extra_info=extra)
    log.info(
        "serving %s: %d keys %s in %.2f s%s; connecting to %s as %s",
        args.data,
        len(data),
        "mapped" if digest else "loaded",
        load_seconds,
        f" (digest {digest})" if digest else "",
        ", ".join(backends),
        args.name,
    )
    published = _publisher(handler, args, digest, len(data), load_seconds, watcher)
    module = native.load()
    compiled = Compiled(module, handler) if module is not None else None
    try:
        serve(socks, handler, stop, tick=published.maybe_publish if published else _nothing, compiled=compiled)
    finally:
        if published is not None:
            published.publish()  # what was counted since the last second
            metrics.retire()
        for sock in socks:
            ConnectionWatcher.unwatch(sock)
            sock.close()  # waits up to CLOSE_LINGER_MS for replies still queued
        watcher.stop()
        ctx.term()
    log.info("stopped")
    return 0


def _publisher(
    handler: Handler,
    args: argparse.Namespace,
    digest: str | None,
    keys: int,
    load_seconds: float,
    watcher: ConnectionWatcher,
) -> metrics.WorkerMetrics | None:
    """This worker's metrics when the host publishes them (ROKV_METRICS set,
    so rokv-pool set PROMETHEUS_MULTIPROC_DIR); None otherwise, or when they
    cannot be published (logged: serving matters more than metrics)."""
    folder = metrics.metrics_dir()
    if folder is None:
        return None
    try:
        metrics.prepare(folder)
        return metrics.WorkerMetrics(
            args.name,
            handler.stats,
            dataset=os.path.abspath(args.data),
            digest=digest,
            keys=keys,
            load_seconds=load_seconds,
            brokers_connected=lambda: sum(link.up for link in watcher.links()),
        )
    except ImportError as exc:
        log.error("metrics are off: %s (it comes with the server extra: pip install 'rokv[server]')", exc)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("metrics are off: cannot publish into %s: %s", folder, exc)
    return None


def _nothing() -> None:
    pass


def _connect(ctx: zmq.Context, watcher: ConnectionWatcher, backend: str, args: argparse.Namespace) -> zmq.Socket:
    """A DEALER connected to one broker's backend. One socket per broker: a
    DEALER connected to several would round-robin its replies over them, and
    a reply reaching a broker that never saw the request is dropped.

    Raises:
        KeyFileError: a CURVE key file is bad.
        zmq.ZMQError: libzmq refused the endpoint.
    """
    sock = ctx.socket(zmq.DEALER)
    sock.linger = CLOSE_LINGER_MS
    sock.sndtimeo = SEND_TIMEOUT_MS
    # Notice a broker that vanished without closing the connection, and
    # reconnect (by itself, when it comes back), rather than wait on a dead link.
    sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
    sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
    if "[" in backend:
        sock.ipv6 = True
    try:
        if args.curve_secret:
            CurvePeer(args.curve_secret, args.broker_key).apply(sock)
        # Logs when the broker admits this worker, refuses it (a CURVE key
        # not on its allow-list, a wrong broker key) or is lost.
        watcher.watch(sock, f"broker {backend}", server=False)
        sock.connect(backend)
    except BaseException:
        ConnectionWatcher.unwatch(sock)
        sock.close(linger=0)
        raise
    return sock


def _rules(*, allow_empty: bool) -> str:
    """What decides whether a dataset is accepted: a refusal remembered under
    other rules (another rokv version, another --allow-empty) is not trusted."""
    try:
        from importlib.metadata import version

        return f"rokv {version('rokv')}; allow_empty={allow_empty}"
    except Exception:  # noqa: BLE001 - not installed (run from a checkout): judge afresh
        return f"rokv unknown {time.time()}"


def _limits() -> dict[str, int]:
    """The limits a client must respect (PROTOCOL.md, "Limits"), as ping
    reports them. The message size is the broker's setting: a worker reads the
    same variable, since pools are configured through one environment."""
    try:
        max_message_size = int(os.environ.get("ROKV_MAX_MESSAGE_SIZE") or p.DEFAULT_MAX_MESSAGE_SIZE)
    except ValueError:
        max_message_size = p.DEFAULT_MAX_MESSAGE_SIZE
    return {
        "max_message_size": max_message_size,
        "max_in_flight": p.MAX_IN_FLIGHT,
        "max_mget_keys": p.MAX_MGET_KEYS,
        "max_key_length": p.MAX_KEY_LENGTH,
    }


class _StopFlag:
    """Set by SIGTERM/SIGINT."""

    def __init__(self) -> None:
        self.raised = False

    def raise_flag(self, *_: object) -> None:
        self.raised = True


def serve(
    socks: list[zmq.Socket],
    handler: Handler,
    stop: _StopFlag,
    tick: Callable[[], None] = _nothing,
    compiled: Compiled | None = None,
) -> None:
    """Answer requests on ``socks`` (one per broker) until ``stop`` is
    raised, then answer what has already arrived and return. ``tick`` is
    called at least every :data:`TICK_EVERY` messages and at every idle
    timeout (:data:`STOP_CHECK_MS`): publishing metrics rides on it. With
    ``compiled``, its loop answers (and hands the handler what it does not)."""
    answer = _answer
    if compiled is not None:
        answer, tick = compiled.answer, compiled.ticking(tick)
    try:
        _serve(socks, handler, stop, tick, answer)
    finally:
        if compiled is not None:
            compiled.collect()


def _serve(
    socks: list[zmq.Socket], handler: Handler, stop: _StopFlag, tick: Callable[[], None], answer: Answer
) -> None:
    if len(socks) > 1:
        _serve_several(socks, handler, stop, tick, answer)
        return
    sock = socks[0]
    # A blocking receive with a timeout, not poll then receive: per message
    # that saves the poll and, at the end of every burst, the zmq.Again
    # exception of a receive that finds nothing. A signal still reaches the
    # flag at once (pyzmq runs handlers when libzmq returns EINTR) or, when
    # another thread took it, by the next timeout.
    sock.rcvtimeo = STOP_CHECK_MS
    answer(sock, handler, lambda: stop.raised, False, 1 << 62, tick)
    # Answer what has reached this host, not just this socket: libzmq's I/O
    # thread may still be moving requests in from the kernel, so stop after a
    # short quiet spell (bounded, so a busy broker cannot hold the exit up).
    sock.rcvtimeo = DRAIN_QUIET_MS
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    answered = answer(sock, handler, lambda: time.monotonic() > deadline, True, 1 << 62, _nothing)
    log.info("stopping: answered %d requests that arrived before or just after the stop signal", answered)


#: With several brokers, the most requests answered from one broker's socket
#: before the others get their turn.
BURST = 64


def _serve_several(
    socks: list[zmq.Socket], handler: Handler, stop: _StopFlag, tick: Callable[[], None], answer: Answer
) -> None:
    """:func:`serve` for several brokers: a poll, then a burst from each
    socket that has requests, each answered on the socket it came from."""
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
        sock.rcvtimeo = 0  # the poll waits; receives only take what is there

    def answer_ready(timeout_ms: int) -> int:
        count = 0
        for sock, _ in poller.poll(timeout_ms):
            count += answer(sock, handler, _never, True, BURST, _nothing)
        return count

    while not stop.raised:
        answer_ready(STOP_CHECK_MS)
        tick()  # after every poll: a burst is at most BURST messages a socket
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    answered = 0
    while time.monotonic() < deadline:
        got = answer_ready(DRAIN_QUIET_MS)
        if not got:
            break
        answered += got
    log.info("stopping: answered %d requests that arrived before or just after the stop signal", answered)


def _never() -> bool:
    return False


#: Messages between two calls of the loop's ``tick`` under load (a function
#: call and a clock read: about 3 ns a message); at 1,000 requests a second,
#: every 32 ms, so a publication is late by that much at most.
TICK_EVERY = 32
_TICK_MASK = TICK_EVERY - 1

# Plain ints: pyzmq turns enum flags into enum arithmetic, and its
# recv_multipart/send_multipart ask ZMQ_RCVMORE through an enum conversion
# (0.7 us) after every frame; this loop asks once per message.
_SNDMORE, _RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)


#: How a loop answers messages from one socket: (socket, handler, done,
#: stop_when_idle, limit, tick) -> how many it answered; :func:`_answer` in
#: Python, or :meth:`Compiled.answer`.
Answer = Callable[[zmq.Socket, Handler, Callable[[], bool], bool, int, Callable[[], None]], int]


def _answer(
    sock: zmq.Socket,
    handler: Handler,
    done: Callable[[], bool],
    stop_when_idle: bool,
    limit: int = 1 << 62,
    tick: Callable[[], None] = _nothing,
) -> int:
    """Answer one message after another until ``done()``, or ``limit`` were
    answered, or until a wait for the next one times out when
    ``stop_when_idle``; the count answered. ``tick()`` runs at every receive
    timeout and every :data:`TICK_EVERY` messages."""
    recv, send, more = sock.recv, sock.send, sock.get
    count = 0
    while count < limit and not done():
        try:
            route = recv()
        except zmq.Again:  # the receive timeout: nothing came
            tick()
            if stop_when_idle:
                break
            continue
        count += 1
        if not count & _TICK_MASK:
            tick()
        # The broker's ROUTER puts the client's routing id before the client's
        # frames, and a message has at least one frame: a body follows.
        frames = [route, recv()]
        while more(_RCVMORE):  # a client sent several frames: refused below
            frames.append(recv())
        reply = handler.handle(frames)
        if reply is not None:
            try:
                send(reply[0], _SNDMORE)
                send(reply[1])
            except zmq.Again:
                log.warning("dropped a reply: the broker did not take it within %d ms", SEND_TIMEOUT_MS)
    return count


class Compiled:
    """The compiled loop (rokv._native) over this worker's dataset.

    It answers what it can, gets and mgets of well-formed keys, and hands the
    handler every other message, so replies are the handler's in every case;
    it counts what it answered in the handler's layout, merged into the
    handler's stats by :meth:`collect` (so metrics see one worker).
    """

    def __init__(self, module: Any, handler: Handler) -> None:
        from rokv.worker.stats import BUCKETS

        self._native = module
        data = handler.data
        native_lookup = getattr(data, "native_lookup", None)
        self._lookup = native_lookup(module) if native_lookup is not None else module.dict_lookup(data)
        module.set_buckets(BUCKETS)
        self._handle = handler.handle
        self._stats = handler.stats

    def answer(
        self,
        sock: zmq.Socket,
        handler: Handler,
        done: Callable[[], bool],
        stop_when_idle: bool,
        limit: int = 1 << 62,
        tick: Callable[[], None] = _nothing,
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
                log.warning("dropped %d replies: the broker did not take them within %d ms", dropped, SEND_TIMEOUT_MS)
            if answered < asked and not interrupted:  # the receive timed out: nothing came
                tick()
                if stop_when_idle:
                    break
            elif answered == asked:
                tick()
        return count

    def ticking(self, tick: Callable[[], None]) -> Callable[[], None]:
        """``tick``, after the compiled loop's counts joined the handler's."""
        if tick is _nothing:
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


if __name__ == "__main__":
    sys.exit(main())
