"""The image's HEALTHCHECK: exit 0 when this container serves its role.

- all, worker (supervisord runs the pool): `rokv status` exits 0: every
  program RUNNING and every worker answers a ping (a worker container runs
  no broker: its workers are pinged only with ROKV_ENDPOINT set); then, for
  all with ROKV_HTTP, the gateway's GET /healthz answers 200 too.
- http: the gateway's GET /healthz answers 200, which means a worker
  answered a ping through the broker.
- broker: the frontend accepts TCP connections (its workers may be elsewhere,
  so a ping would judge them, not it).

The image's HEALTHCHECK gives this 5 s: with two checks, each has 2 s.
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


#: The container's supervisord.conf (ROKV_SUPERVISOR_CONF, as rokv status reads it).
SUPERVISOR_CONF = "/app/supervisord.conf"


def main() -> int:
    role = os.environ.get("ROKV_ROLE", "all").strip().lower() or "all"
    if role in ("all", "worker"):
        conf = os.environ.get("ROKV_SUPERVISOR_CONF") or SUPERVISOR_CONF
        code = subprocess.call(["rokv", "status", "-c", conf, "--timeout", "2"])
        if code != 0 or role == "worker":
            return code
    if role in ("all", "http") and os.environ.get("ROKV_HTTP", "").strip():
        bind = parse_bind(os.environ["ROKV_HTTP"])
        host = LOOPBACK.get(bind.host, bind.host)
        url = f"http://[{host}]:{bind.port}/healthz" if ":" in host else f"http://{host}:{bind.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2 if role == "all" else 4) as res:
                return 0 if res.status == 200 else 1
        except OSError as exc:
            print(f"unhealthy: {url}: {exc}")
            return 1
    if role == "http":
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
    if role == "all":
        return 0  # without a gateway: rokv status pinged the workers through this host's broker
    print(f"unhealthy: unknown ROKV_ROLE={role!r}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
