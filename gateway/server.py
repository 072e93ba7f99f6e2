"""``rokv-http``: serve the gateway's ASGI app with uvicorn (httptools, uvloop).

Why uvicorn: measured against granian on the 2-core machine with
benchmarks/httpbench.py (BENCHMARKS.md, "HTTP"); see the commit that chose it.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys

from rokv.exitcodes import Exit, epilog
from rokv.gateway.settings import DEFAULT_PORT, SettingError, Settings, parse_bind, parse_size

#: Seconds a stopping server lets in-flight requests finish: well inside
#: supervisor's stopwaitsecs and docker stop's 10 s.
GRACEFUL_STOP = 5
APP = "rokv.gateway.app:app"
#: uvicorn's httptools protocol, one send per response (see protocol.py).
PROTOCOL = "rokv.gateway.protocol:CorkedHttpToolsProtocol"


def _workers(text: str, name: str) -> int:
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 64:
        raise SettingError(f"{name}={text!r}: expected a number of server processes from 1 to 64")
    return int(raw)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rokv-http",
        description="The seed service's HTTP API (POST /get_value, POST /get_values, GET /healthz) in front of "
        "a rokv pool. Every option falls back to its environment variable.",
        epilog=epilog("rokv-http"),
    )
    parser.add_argument(
        "--bind",
        default=None,
        metavar="HOST:PORT",
        help=f"where to listen (default $ROKV_HTTP, else 127.0.0.1:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--endpoint",
        default=None,
        help="the broker(s) to ask, comma-separated (default $ROKV_ENDPOINT, else this host's "
        "$ROKV_FRONTEND, else tcp://127.0.0.1:5555)",
    )
    parser.add_argument(
        "--workers",
        default=None,
        metavar="N",
        help="server processes, each with its own client (default $ROKV_HTTP_WORKERS, else 1)",
    )
    parser.add_argument(
        "--max-body",
        default=None,
        metavar="BYTES",
        help="largest request body (default $ROKV_HTTP_MAX_BODY, else 1048576)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; in-flight requests are
    answered (for up to GRACEFUL_STOP seconds) before it exits 0. A bad
    setting, or the http extra not installed, exits 2 with the reason; a
    server that cannot start exits 1."""
    args = parse_args(argv)
    try:
        # The app reads its settings from the environment in each server
        # process, so options become variables; checked here first to fail
        # before any process starts.
        if args.bind is not None:
            os.environ["ROKV_HTTP"] = str(parse_bind(args.bind, "--bind"))
        if args.endpoint is not None:
            os.environ["ROKV_ENDPOINT"] = args.endpoint
        if args.max_body is not None:
            os.environ["ROKV_HTTP_MAX_BODY"] = str(parse_size(args.max_body, "--max-body"))
        workers = (
            _workers(args.workers, "--workers")
            if args.workers is not None
            else _workers(os.environ.get("ROKV_HTTP_WORKERS", "") or "1", "ROKV_HTTP_WORKERS")
        )
        settings = Settings.from_env()
    except SettingError as exc:
        print(f"rokv-http: {exc}", file=sys.stderr)
        return Exit.USAGE

    try:  # only here: `rokv-http --help` and bad settings need no server
        import httptools  # noqa: F401 - uvicorn names it by string; missing, it would fail later
        import uvicorn
        import uvloop  # noqa: F401 - uvicorn names it by string too; missing, it would fail later
        from uvicorn.config import LOGGING_CONFIG
    except ModuleNotFoundError as exc:
        print(f"rokv-http needs {exc.name}, which comes with the http extra: pip install 'rokv[http]'", file=sys.stderr)
        return Exit.USAGE

    # The gateway's own messages go where uvicorn's go, in every server
    # process (each configures logging from this when it starts).
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["rokv.gateway"] = {
        "handlers": ["default"],
        "level": args.log_level.upper(),
        "propagate": False,
    }
    print(
        f"rokv-http: listening on http://{settings.bind} with {workers} process(es), asking {settings.endpoint}",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again
    # for the handler it found installed: with this one, the process exits 0
    # (a clean stop) instead of dying by the signal it already handled.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.run(
            APP,
            host=settings.bind.host,
            port=settings.bind.port,
            workers=workers,
            http=PROTOCOL,
            loop="uvloop",
            lifespan="on",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            log_level=args.log_level,
            log_config=log_config,
            timeout_graceful_shutdown=GRACEFUL_STOP,
        )
    except SystemExit as exc:  # uvicorn exits 3 when the app refuses to start
        return Exit.NO if exc.code else Exit.OK
    return Exit.OK
