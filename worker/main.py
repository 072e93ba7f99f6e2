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

import zmq

from client import protocol as p
from client.security import CurvePeer, KeyFileError
from worker.dataset import DatasetError, open_dataset
from worker.handler import Handler

log = logging.getLogger("rokv.worker")

DEFAULT_DATA = "data/example.json"
#: Messages handled per poll: amortises the poll under load, bounded so a
#: stop request is noticed promptly.
BURST = 256
#: How long a stopping worker keeps trying to hand its last replies over.
CLOSE_LINGER_MS = 1000
SEND_TIMEOUT_MS = 1000
#: On stop: answer until no request came for DRAIN_QUIET_MS, for at most
#: DRAIN_MAX_SECONDS.
DRAIN_QUIET_MS = 50
DRAIN_MAX_SECONDS = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
        help="broker backend endpoint to connect to (env ROKV_BACKEND; default %(default)s)",
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
    args = parser.parse_args(argv)
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
    # Stop requests arrive as a byte on this socket pair, which the poll loop
    # watches next to the zmq socket: Python's own handlers do not run while
    # libzmq blocks in poll.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)

    started = time.monotonic()
    try:
        data = open_dataset(args.data)
    except DatasetError as exc:
        print(f"rokv-worker: {exc}", file=sys.stderr)
        return 1
    load_seconds = time.monotonic() - started
    if _readable(wake_r):
        return 0  # stopped while loading

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = CLOSE_LINGER_MS
    sock.sndtimeo = SEND_TIMEOUT_MS
    # Notice a broker that vanished without closing the connection, and
    # reconnect, rather than wait on a dead link.
    sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
    sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
    if "[" in args.backend:
        sock.ipv6 = True
    try:
        if args.curve_secret:
            CurvePeer(args.curve_secret, args.broker_key).apply(sock)
        sock.connect(args.backend)
    except KeyFileError as exc:
        print(f"rokv-worker: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"rokv-worker: cannot connect to {args.backend!r}: {exc}", file=sys.stderr)
        return 1
    # A .rokv file names its content: ping and the log say which version is served.
    digest = getattr(data, "digest", None)
    extra = {"digest": digest} if digest else {}
    handler = Handler(data, worker_id=args.name, dataset=args.data, extra_info=extra)
    log.info(
        "serving %s: %d keys %s in %.2f s%s; connected to %s as %s",
        args.data, len(data), "mapped" if digest else "loaded", load_seconds,
        f" (digest {digest})" if digest else "", args.backend, args.name,
    )
    try:
        serve(sock, handler, wake_r)
    finally:
        sock.close()  # waits up to CLOSE_LINGER_MS for replies still queued
        ctx.term()
    log.info("stopped")
    return 0


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(64, socket.MSG_PEEK))
    except BlockingIOError:
        return False


def serve(sock: zmq.Socket, handler: Handler, wake: socket.socket) -> None:
    """Answer requests until ``wake`` becomes readable, then answer what has
    already arrived and return."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if sock in ready:
            _answer_burst(sock, handler, BURST)
        if wake.fileno() in ready:  # pyzmq reports plain sockets by fd
            break
    # Answer what has reached this host, not just this socket: libzmq's I/O
    # thread may still be moving requests in from the kernel, so stop after a
    # short quiet spell (bounded, so a busy broker cannot hold the exit up).
    answered = 0
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    while True:
        answered += _answer_burst(sock, handler, BURST)
        if time.monotonic() > deadline or not sock.poll(DRAIN_QUIET_MS):
            break
    log.info("stopping: answered %d requests that arrived before or just after the stop signal", answered)


# Plain ints: pyzmq turns enum flags into enum arithmetic, and its
# recv_multipart/send_multipart ask ZMQ_RCVMORE through an enum conversion
# (0.7 us) after every frame; this loop asks once per message.
_NOBLOCK, _SNDMORE, _RCVMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.RCVMORE)


def _answer_burst(sock: zmq.Socket, handler: Handler, limit: int) -> int:
    recv, send, more = sock.recv, sock.send, sock.get
    count = 0
    while count < limit:
        try:
            route = recv(_NOBLOCK)
        except zmq.Again:
            break
        count += 1
        # The broker's ROUTER puts the client's routing id before the client's
        # frames, and a message has at least one frame: a body follows.
        frames = [route, recv(_NOBLOCK)]
        while more(_RCVMORE):  # a client sent several frames: refused below
            frames.append(recv(_NOBLOCK))
        reply = handler.handle(frames)
        if reply is not None:
            try:
                send(reply[0], _SNDMORE)
                send(reply[1])
            except zmq.Again:
                log.warning("dropped a reply: the broker did not take it within %d ms", SEND_TIMEOUT_MS)
    return count


if __name__ == "__main__":
    sys.exit(main())
