"""What the fault tests share: CURVE keys for a whole pool, and running and
collecting the checking load drivers (tests/support/loaddriver.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from rokv.security import make_key_pair

from support.procs import EXAMPLE, REPO, child_env, scaled


def curve_pool_keys(root: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Keys for a pool whose brokers share one key pair (docs/operations.md "Several
    hosts"), written under ``root``: the ROKV_* variables of broker hosts,
    of worker hosts and of clients."""
    broker_public, broker_secret = make_key_pair(root, "broker")
    client_public, client_secret = make_key_pair(root, "client")
    worker_public, worker_secret = make_key_pair(root, "worker")
    for folder, public in (("clients", client_public), ("workers", worker_public)):
        (root / folder).mkdir()
        shutil.copy(public, root / folder)
    return (
        {
            "ROKV_BROKER_SECRET": str(broker_secret),
            "ROKV_CLIENT_KEYS": str(root / "clients"),
            "ROKV_WORKER_KEYS": str(root / "workers"),
        },
        {"ROKV_WORKER_SECRET": str(worker_secret), "ROKV_BROKER_KEY": str(broker_public)},
        {"ROKV_CLIENT_SECRET": str(client_secret), "ROKV_BROKER_KEY": str(broker_public)},
    )


def start_drivers(
    endpoint: str,
    *,
    count: int,
    seconds: float,
    min_found: int,
    client_env: dict[str, str],
    prefix: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[subprocess.Popen[str]]:
    """``count`` load drivers against ``endpoint`` (one or several brokers),
    each for at least ``seconds`` and until it has looked ``min_found`` known
    keys up (a loaded machine runs longer rather than prove too little),
    never past four times ``seconds``; ``prefix`` runs them on another host."""
    return [
        subprocess.Popen(
            [
                *(prefix or []),
                sys.executable,
                str(REPO / "tests" / "support" / "loaddriver.py"),
                "--endpoint",
                endpoint,
                "--data",
                str(EXAMPLE),
                "--seconds",
                str(seconds),
                "--seed",
                str(seed),
                *(extra or []),
                "--min-found",
                str(min_found),
                "--max-seconds",
                str(seconds * 4),
            ],
            env=child_env(**client_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(count)
    ]


def collect(drivers: list[subprocess.Popen[str]], timeout: float) -> dict:
    """The drivers' summed counts, their worst latencies (p50, p99, max, in
    ms), errors and per-broker timelines; fails when one did not finish."""
    total: dict = {
        "requests": 0,
        "lookups": 0,
        "found": 0,
        "retried": 0,
        "lost": 0,
        "wrong": 0,
        "errors": [],
        "timelines": [],
        "p50_ms": 0.0,
        "p99_ms": 0.0,
        "max_ms": 0.0,
    }
    for driver in drivers:
        try:
            out, err = driver.communicate(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.communicate()
            raise AssertionError("a load driver did not finish in time") from None
        assert driver.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        for name in ("requests", "lookups", "found", "retried", "lost", "wrong"):
            total[name] += result[name]
        total["errors"] += result["errors"]
        total["timelines"].append(result["timeline"])
        for name in ("p50_ms", "p99_ms", "max_ms"):
            total[name] = max(total[name], result[name])
    return total
