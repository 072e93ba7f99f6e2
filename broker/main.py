"""``rokv-broker``: a ROUTER frontend for clients and a DEALER backend for
workers, joined by ``zmq.proxy_steerable`` so that forwarding runs in libzmq."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

from client import protocol as p
from client.security import KeyFileError, load_secret

log = logging.getLogger("rokv.broker")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
#: SIGHUP re-reads the CURVE allow-list folders.
WAITED_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}
CLIENTS_DOMAIN = "clients"
WORKERS_DOMAIN = "workers"
CONTROL_ENDPOINT = "inproc://rokv-broker-control"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        sys.exit(f"rokv-broker: {name}={raw!r} is not an integer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from client.endpoints import endpoint_argument

    parser = argparse.ArgumentParser(
        prog="rokv-broker",
        description="Forward client requests to workers. Exits 0 on SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--frontend",
        default=os.environ.get("ROKV_FRONTEND") or p.DEFAULT_FRONTEND,
        type=endpoint_argument(),
        help="endpoint clients connect to (env ROKV_FRONTEND; default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("ROKV_BACKEND") or p.DEFAULT_BACKEND,
        type=endpoint_argument(),
        help="endpoint workers connect to (env ROKV_BACKEND; default %(default)s)",
    )
    parser.add_argument(
        "--io-threads",
        type=int,
        default=_int_env("ROKV_IO_THREADS", 1),
        help="libzmq I/O threads (env ROKV_IO_THREADS; default %(default)s)",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=_int_env("ROKV_MAX_MESSAGE_SIZE", p.DEFAULT_MAX_MESSAGE_SIZE),
        help="largest request in bytes; a client sending more is disconnected "
        "(env ROKV_MAX_MESSAGE_SIZE; default %(default)s)",
    )
    parser.add_argument(
        "--curve-secret",
        default=os.environ.get("ROKV_BROKER_SECRET") or None,
        help="the broker's CurveZMQ .key_secret file: encrypt and authenticate both sides "
        "(env ROKV_BROKER_SECRET; default: no encryption)",
    )
    parser.add_argument(
        "--client-keys",
        default=os.environ.get("ROKV_CLIENT_KEYS") or None,
        help="with --curve-secret: folder of the public .key files of clients allowed in (env ROKV_CLIENT_KEYS)",
    )
    parser.add_argument(
        "--worker-keys",
        default=os.environ.get("ROKV_WORKER_KEYS") or None,
        help="with --curve-secret: folder of the public .key files of workers allowed to serve "
        "(env ROKV_WORKER_KEYS)",
    )
    args = parser.parse_args(argv)
    if args.curve_secret and not (args.client_keys and args.worker_keys):
        # CURVE without an authenticator encrypts but admits anyone.
        parser.error("--curve-secret needs --client-keys and --worker-keys (allow-list folders)")
    if not args.curve_secret and (args.client_keys or args.worker_keys):
        parser.error("--client-keys and --worker-keys need --curve-secret")
    for folder in (args.client_keys, args.worker_keys):
        if folder and not os.path.isdir(folder):
            parser.error(f"allow-list folder {folder!r} does not exist")
    if args.io_threads < 1:
        parser.error("--io-threads must be at least 1")
    if args.max_message_size < 1024:
        parser.error("--max-message-size must be at least 1024 bytes")
    return args


def _bind(sock: zmq.Socket, endpoint: str, role: str) -> None:
    if "[" in endpoint:
        sock.ipv6 = True
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise SystemExit(f"rokv-broker: cannot bind {role} {endpoint!r}: {exc}") from None


def _secure(ctx: zmq.Context, frontend: zmq.Socket, backend: zmq.Socket, args: argparse.Namespace) -> ThreadAuthenticator:
    """Make both sides CURVE servers, each checked against its own allow-list."""
    public, secret = load_secret(args.curve_secret)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("rokv.broker.auth"))
    auth.start()
    _load_allow_lists(auth, args)
    for sock, domain in ((frontend, CLIENTS_DOMAIN), (backend, WORKERS_DOMAIN)):
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.zap_domain = domain.encode()
    return auth


def _load_allow_lists(auth: ThreadAuthenticator, args: argparse.Namespace) -> None:
    auth.configure_curve(domain=CLIENTS_DOMAIN, location=args.client_keys)
    auth.configure_curve(domain=WORKERS_DOMAIN, location=args.worker_keys)
    log.info(
        "allow-lists loaded: %d client keys from %s, %d worker keys from %s",
        len(auth.certs.get(CLIENTS_DOMAIN, {})), args.client_keys,
        len(auth.certs.get(WORKERS_DOMAIN, {})), args.worker_keys,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rokv-broker[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # Block the stop signals before any thread exists, so that libzmq's and the
    # proxy's threads inherit the mask and the main thread alone takes them,
    # with sigtimedwait: a Python handler would never run while the proxy
    # blocks inside libzmq.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED_SIGNALS)

    ctx = zmq.Context(io_threads=args.io_threads)
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.DEALER)
    control = ctx.socket(zmq.PAIR)
    proxy_control = ctx.socket(zmq.PAIR)
    sockets = (frontend, backend, control, proxy_control)
    auth: ThreadAuthenticator | None = None

    def close() -> None:
        if auth is not None:
            auth.stop()
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()

    for sock in sockets:
        sock.linger = 0
    frontend.maxmsgsize = args.max_message_size
    # Drop workers (and clients) that stop answering ZMTP PINGs: the DEALER
    # would otherwise keep handing a stopped worker its round-robin share.
    for sock in (frontend, backend):
        sock.heartbeat_ivl = p.HEARTBEAT_IVL_MS
        sock.heartbeat_timeout = p.HEARTBEAT_TIMEOUT_MS
    try:
        if args.curve_secret:
            auth = _secure(ctx, frontend, backend, args)
        _bind(frontend, args.frontend, "frontend")
        _bind(backend, args.backend, "backend")
        control.bind(CONTROL_ENDPOINT)
        proxy_control.connect(CONTROL_ENDPOINT)
    except KeyFileError as exc:
        close()
        raise SystemExit(f"rokv-broker: {exc}") from None
    except SystemExit:
        close()
        raise

    failure: list[BaseException] = []

    def run_proxy() -> None:
        try:
            zmq.proxy_steerable(frontend, backend, None, proxy_control)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    proxy = threading.Thread(target=run_proxy, name="rokv-proxy", daemon=True)
    proxy.start()
    log.info(
        "forwarding %s (clients) <-> %s (workers); io_threads=%d max_message_size=%d curve=%s",
        args.frontend, args.backend, args.io_threads, args.max_message_size, "on" if auth else "off",
    )

    received = None
    while proxy.is_alive():
        received = signal.sigtimedwait(WAITED_SIGNALS, 0.5)
        if received is None:
            continue
        if received.si_signo in STOP_SIGNALS:
            break
        if auth is not None:
            _load_allow_lists(auth, args)
        received = None
    if received is not None:
        log.info("received %s: stopping", signal.Signals(received.si_signo).name)
        control.send(b"TERMINATE")
        proxy.join(timeout=3)
        if proxy.is_alive():
            # Never seen; but closing sockets under a running proxy is unsafe
            # and ctx.term() would then hang, so leave without cleaning up.
            log.error("proxy did not stop within 3 s; exiting without cleanup")
            os._exit(0)
    close()
    if failure:
        log.error("proxy failed: %s", failure[0])
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
