"""What metrics cost: the standard benchmark against a pool with metrics off
and one with metrics on, interleaved, medians.

Two stacks on loopback, each a broker and 2 workers on data/example.json;
the "on" stack's processes publish into a metrics folder (as under
supervisor with ROKV_METRICS), rokv-metrics serves it, and a scraper reads
/metrics every second throughout (a busier scrape than Prometheus' usual
15 s, as with `rokv top` open). Both stacks stay up; each round runs every
scenario against "off" then "on" (the order alternates by round), with
`rokv bench`; the report gives the medians, their ratio, and the CPU the
broker and workers used per request (steadier than rates on a noisy machine).

    python benchmarks/metrics_cost.py                     # 7 rounds of 5 s
    python benchmarks/metrics_cost.py --rounds 3 --duration 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rokv import Client, ServiceUnavailable  # noqa: E402 - after sys.path is set

SCENARIOS = {
    "get ×64, coalescing on (the default)": [],
    "get ×64, coalescing off": ["--no-coalesce"],
    "get_many 100 ×16": ["-c", "16", "-k", "100"],
}
DATA = REPO / "data" / "example.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Pool:
    def __init__(self, name: str, folder: Path | None) -> None:
        self.name = name
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        backend = f"tcp://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROKV_", "PROMETHEUS_"))}
        if folder is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        py = sys.executable
        self.procs = [
            subprocess.Popen(
                [py, "-m", "rokv.broker", "--frontend", self.frontend, "--backend", backend],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        for i in range(2):
            self.procs.append(
                subprocess.Popen(
                    [py, "-m", "rokv.worker", "--backend", backend, "--data", str(DATA), "--name", f"worker_{i:02d}"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.scrape_address = None
        if folder is not None:
            self.scrape_address = f"127.0.0.1:{free_port()}"
            self.procs.append(
                subprocess.Popen(
                    [py, "-m", "rokv.ops.exporter", "--listen", self.scrape_address, "--dir", str(folder)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        with Client(self.frontend, timeout=0.5, retries=0) as client:
            while len(seen) < 2:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: workers did not answer")
                try:
                    seen.add(client.ping()["id"])
                except ServiceUnavailable:
                    pass

    def server_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs[:3])

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def scraper(address: str, stop: threading.Event, scrapes: list[int]) -> None:
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as r:
                r.read()
            scrapes.append(1)
        except OSError:
            pass


def bench(pool: Pool, args: list[str], duration: float) -> tuple[float, float, float]:
    """(requests/s, keys/s, server CPU µs per request)."""
    cpu = pool.server_cpu()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rokv",
            "bench",
            "--endpoint",
            pool.frontend,
            "--data",
            str(DATA),
            "-d",
            str(duration),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 120,
    )
    cpu = pool.server_cpu() - cpu
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if report["wrong"] or report["errors"]:
        raise SystemExit(f"bench against {pool.name} failed: {report['errors']} {report['wrong_examples']}")
    return report["requests_per_s"], report["keys_per_s"], cpu / report["requests"] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rokv-metrics-cost-"))
    off = on = None
    stop = threading.Event()
    scrapes: list[int] = []
    try:
        off = Pool("off", None)
        on = Pool("on", tmp)
        assert on.scrape_address is not None
        threading.Thread(target=scraper, args=(on.scrape_address, stop, scrapes), daemon=True).start()
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for round_ in range(args.rounds):
            for scenario, extra in SCENARIOS.items():
                order = (off, on) if round_ % 2 == 0 else (on, off)
                for pool in order:
                    results.setdefault((scenario, pool.name), []).append(bench(pool, extra, args.duration))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        stop.set()
        print(
            f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/metrics_cost.py --rounds {args.rounds} "
            f'--duration {args.duration:g}`; {len(scrapes)} scrapes of the "on" pool during the runs.\n'
        )
        print("| scenario | keys/s off | keys/s on | on ÷ off | server CPU µs/request off / on | raw keys/s off; on |")
        print("|---|---|---|---|---|---|")
        for scenario in SCENARIOS:
            a, b = results[(scenario, "off")], results[(scenario, "on")]
            ka, kb = statistics.median(r[1] for r in a), statistics.median(r[1] for r in b)
            ca, cb = statistics.median(r[2] for r in a), statistics.median(r[2] for r in b)
            print(
                f"| {scenario} | {ka:,.0f} | {kb:,.0f} | {kb / ka:.3f} | {ca:.1f} / {cb:.1f} | "
                f"{', '.join(f'{r[1]:,.0f}' for r in a)}; {', '.join(f'{r[1]:,.0f}' for r in b)} |"
            )
    finally:
        stop.set()
        for pool in (on, off):
            if pool is not None:
                pool.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
