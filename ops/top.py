"""``rokv top``: a live view of the pool from the metrics of one or more hosts.

Refreshed every second; 80 columns. ``--once`` prints one view (two
readings ``--interval`` apart, since rates need two), ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rokv.exitcodes import Exit, epilog
from rokv.hostport import METRICS_ENV, parse_addresses
from rokv.ops.poolview import HostScrape, MissingParser, scrape, view

WIDTH = 80
_HEADER = f"{'HOST / WORKER':<18}{'REQ/S':>8}{'KEYS/S':>9}{'HIT%':>6}{'P50 ms':>8}{'P99 ms':>8}{'KEYS':>8}  DATASET"


def add_commands(sub: Any) -> None:
    """Register ``rokv top`` on the ``rokv`` parser (rokv.cli loads this
    module when the command runs)."""
    top = sub.add_parser(
        "top",
        help="a live view of the pool from its hosts' metrics",
        description="Show, refreshed every second, each host's and each worker's requests and keys a second, "
        "hit ratio, p50/p99 handling time, dataset digest and key count, read from the hosts' metrics "
        "addresses (rokv-metrics). Workers serving another dataset than most are flagged with '!'.",
        epilog=epilog("rokv top"),
    )
    top.add_argument(
        "--metrics",
        default=os.environ.get(METRICS_ENV) or None,
        help=f"HOST:PORT of each host's metrics, comma-separated (default: ${METRICS_ENV})",
    )
    top.add_argument("--once", action="store_true", help="print one view and exit")
    top.add_argument("--json", action="store_true", help="print JSON (one object per view)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    top.set_defaults(run=cmd_top)


def _err(text: str) -> None:
    sys.stderr.write(f"rokv: {text}\n")


def read_all(addresses: list[tuple[str, int]], pool: ThreadPoolExecutor) -> list[HostScrape]:
    """One reading of every host, in parallel.

    Raises:
        MissingParser: prometheus_client is not installed.
    """
    return list(pool.map(lambda a: scrape(*a), addresses))


def cmd_top(args: argparse.Namespace) -> int:
    if not args.metrics:
        _err(f"error: give --metrics HOST:PORT[,HOST:PORT...] or set {METRICS_ENV}")
        return Exit.USAGE
    try:
        addresses = parse_addresses(args.metrics)
    except ValueError as exc:
        _err(f"error: --metrics: {exc}")
        return Exit.USAGE
    if not 0.1 <= args.interval <= 3600:
        _err("error: --interval must be from 0.1 to 3600 seconds")
        return Exit.USAGE
    try:
        import prometheus_client.parser  # noqa: F401 - said now, not after the first reading
    except ImportError:
        _err(f"error: {MissingParser.MESSAGE}")
        return Exit.USAGE
    live = not args.once and sys.stdout.isatty() and not args.json
    try:
        with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
            before = read_all(addresses, pool)
            while True:
                time.sleep(max(0.0, args.interval - (time.monotonic() - before[0].taken)))
                now = read_all(addresses, pool)
                shown = view(before, now)
                if args.json:
                    sys.stdout.write(json.dumps(shown, sort_keys=True) + "\n")
                else:
                    frame = "\n".join(render(shown, args.interval))
                    sys.stdout.write(("\x1b[H\x1b[2J" if live else "") + frame + "\n" + ("" if live else "\n"))
                sys.stdout.flush()
                if args.once:
                    return Exit.UNAVAILABLE if any(h["error"] for h in shown["hosts"]) else Exit.OK
                before = now
    except MissingParser as exc:
        _err(str(exc))
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.OK


# ---------------------------------------------------------------- the text


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    for limit, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if value >= limit:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}"


def _short(dataset: str | None, width: int) -> str:
    """A digest shown by its first hex digits; anything else cut to fit."""
    if not dataset:
        return "-"
    text = dataset.partition(":")[2] if dataset.startswith("blake2b-256:") else dataset
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(name: str, r: dict[str, Any], keys: int | None, dataset: str) -> str:
    return (
        f"{name[:18]:<18}{_num(r['requests_per_second']):>8}{_num(r['keys_per_second']):>9}"
        f"{_pct(r['hit_ratio']):>6}{_ms(r['p50_seconds']):>8}{_ms(r['p99_seconds']):>8}"
        f"{'' if keys is None else _num(keys) if keys >= 1e6 else f'{keys:,}':>8}  {dataset}"
    ).rstrip()[:WIDTH]


def render(shown: dict[str, Any], interval: float) -> list[str]:
    """The lines of one view, none longer than :data:`WIDTH`."""
    hosts = shown["hosts"]
    flagged = len(shown["flagged"])
    title = (
        f"rokv top  {len(hosts)} host{'s' * (len(hosts) != 1)}, {shown['workers']} "
        f"worker{'s' * (shown['workers'] != 1)}  {time.strftime('%H:%M:%S')}  every {interval:g} s"
    )
    lines = [title[:WIDTH]]
    majority = shown["majority_dataset"]
    lines.append(f"dataset of most workers: {_short(majority, 52)}"[:WIDTH] if majority else "no worker reports")
    if flagged:
        lines.append(f"! {flagged} worker{'s serve' if flagged != 1 else ' serves'} another dataset"[:WIDTH])
    lines.append(_HEADER)
    for host in hosts:
        if host["error"]:
            lines.append(f"{host['address']}  unreachable: {host['error']}"[:WIDTH])
            continue
        health = host.get("health") or {}
        status = {"ok": "healthy", "unavailable": "UNHEALTHY"}.get(str(health.get("status")), "health ?")
        lines.append(_row(host["address"], host, None, status))
        if health.get("reason"):
            lines.append(f"  {health['reason']}"[:WIDTH])
        for w in host["workers"]:
            mark = " !" if w["flagged"] else ""
            lines.append(_row(f"  {w['name'][: 16 - len(mark)]}{mark}", w, w["keys"], _short(w["dataset"], 13)))
            if w.get("direct"):
                share = w.get("direct_share")
                direct_share = "" if share is None else f"  {share * 100:.0f}% of requests direct"
                lines.append(f"    direct {w['direct']}{direct_share}"[:WIDTH])
        for b in host["brokers"]:
            state = {True: "up", False: "DOWN", None: "?"}[b["up"]]
            lines.append(
                f"  {b['name'][:14]} {state}: {b['workers_connected']} workers, "
                f"{b['clients_connected']} clients, {_num(b['requests_per_second'])} requests/s forwarded"[:WIDTH]
            )
    return lines
