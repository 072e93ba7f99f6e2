"""The image's HEALTHCHECK: exit 0 when this container serves its role.

- all, http (with ROKV_HTTP): the gateway's GET /healthz answers 200, which
  means a worker answered a ping through the broker.
- all without ROKV_HTTP: a worker answers `rokv ping` through this broker.
- broker: the frontend accepts TCP connections (its workers may be elsewhere,
  so a ping would judge them, not it).
- worker: supervisorctl status exits 0 (every worker RUNNING).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from urllib.parse import urlsplit

from rokv.gateway.settings import endpoint_from_env, parse_bind

LOOPBACK = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def main() -> int:
    role = os.environ.get("ROKV_ROLE", "all").strip().lower() or "all"
    if role in ("all", "http") and os.environ.get("ROKV_HTTP", "").strip():
        bind = parse_bind(os.environ["ROKV_HTTP"])
        host = LOOPBACK.get(bind.host, bind.host)
        url = f"http://[{host}]:{bind.port}/healthz" if ":" in host else f"http://{host}:{bind.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=4) as res:
                return 0 if res.status == 200 else 1
        except OSError as exc:
            print(f"unhealthy: {url}: {exc}")
            return 1
    if role in ("all", "http"):
        return subprocess.call(
            [
                "rokv",
                "ping",
                "--endpoint",
                endpoint_from_env(os.environ).split(",")[0],
                "--timeout",
                "2",
                "--retries",
                "0",
            ]
        )
    if role == "broker":
        where = urlsplit(os.environ.get("ROKV_FRONTEND", "tcp://127.0.0.1:5555").replace("://*:", "://0.0.0.0:"))
        host = LOOPBACK.get(where.hostname or "", where.hostname or "127.0.0.1")
        try:
            socket.create_connection((host, where.port or 5555), timeout=2).close()
        except OSError as exc:
            print(f"unhealthy: broker frontend {host}:{where.port}: {exc}")
            return 1
        return 0
    if role == "worker":
        return subprocess.call(["supervisorctl", "-c", "/app/supervisord.conf", "status"])
    print(f"unhealthy: unknown ROKV_ROLE={role!r}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
