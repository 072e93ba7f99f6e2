"""The HTTP gateway against the service it replaces, under wrk.

    apt-get install -y wrk && pip install -e '.[bench]'
    python benchmarks/httpbench.py                      # rokv-http against the seed, 3 runs of 10 s
    python benchmarks/httpbench.py --systems seed,uvicorn,granian   # the server choice
    python benchmarks/httpbench.py --smoke --out /tmp/B.md          # seconds: correctness only

It starts a rokv broker and 2 workers on data/example.json, then each HTTP
system on a free loopback port, one at a time, and drives it with
``wrk -c 50`` through benchmarks/wrk_check.lua, which posts random keys of
the dataset and counts every response that is not a 200 with a value: any
such response fails the run (exit 1). Systems run in turn, repeat after
repeat (interleaved), and each figure is the median of the repeats.

Systems:
  seed       benchmarks/seed_app.py (FastAPI, pydantic UUID4, a dict) under
             uvicorn, one process, started as the seed's README does
             (uvicorn's defaults, so its access log is on)
  seed-quiet the same with --no-access-log
  gateway    rokv-http as shipped, one process
  uvicorn    the gateway's ASGI app under uvicorn (httptools, uvloop)
  granian    the gateway's ASGI app under granian (asgi, uvloop)

Scenarios: ``get`` (POST /get_value, one key) against every system;
``get_values`` (POST /get_values, 100 keys) against the gateways, compared
in keys/s with the seed's ``get``. CPU is the server side's CPU seconds
(HTTP process, and for the gateways the broker and workers too) per
request. Only the part of BENCHMARKS.md between ``<!-- http:begin -->``
and ``<!-- http:end -->`` is rewritten.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.sections import write_block  # noqa: E402 - after sys.path is set

BEGIN, END = "<!-- http:begin -->", "<!-- http:end -->"
LUA = REPO / "benchmarks" / "wrk_check.lua"
DATA = REPO / "data" / "example.json"
BATCH = 100
GATEWAYS = ("gateway", "uvicorn", "granian")
LABELS = {
    "seed": "seed: FastAPI + uvicorn, access log on (as its README runs it)",
    "seed-quiet": "seed, access log off",
    "gateway": "rokv-http (1 process)",
    "uvicorn": "gateway app on uvicorn + httptools + uvloop",
    "granian": "gateway app on granian (asgi, uvloop)",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ROKV_", "GRANIAN_", "UVICORN_"))}
    e["PYTHONUNBUFFERED"] = "1"
    e.update(extra)
    return e


class Procs:
    """Processes started by this script, stopped by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], environ: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: granian's workers too
            proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (granian and uvicorn --workers fork)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo.extend(int(c) for c in children)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def http_ready(port: int, system: str, deadline: float) -> None:
    """Wait until the system answers a real request."""
    key = next(iter(json.loads(DATA.read_text())))
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request(
                "POST", "/get_value", body=json.dumps({"key": key}), headers={"Content-Type": "application/json"}
            )
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system} did not answer on port {port}; see its log")
        time.sleep(0.1)


def start_system(system: str, procs: Procs, endpoint: str, port: int) -> subprocess.Popen:
    py = sys.executable
    if system in ("seed", "seed-quiet"):
        args = [py, "-m", "uvicorn", "benchmarks.seed_app:app", "--host", "127.0.0.1", "--port", str(port)]
        if system == "seed-quiet":
            args.append("--no-access-log")
        return procs.start(system, args, env(SEED_DATA=str(DATA)))
    gateway_env = env(ROKV_ENDPOINT=endpoint)
    if system == "gateway":
        return procs.start(system, [py, "-m", "rokv.gateway", "--bind", f"127.0.0.1:{port}"], gateway_env)
    if system == "uvicorn":
        return procs.start(
            system,
            [
                py,
                "-m",
                "uvicorn",
                "rokv.gateway.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--http",
                "httptools",
                "--loop",
                "uvloop",
                "--no-access-log",
                "--lifespan",
                "on",
            ],
            gateway_env,
        )
    if system == "granian":
        return procs.start(
            system,
            [
                py,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--loop",
                "uvloop",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "rokv.gateway.app:app",
            ],
            gateway_env,
        )
    raise ValueError(f"unknown system {system!r}")


_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_CHECK = re.compile(r"CHECK ok=(\d+) bad_status=(\d+) bad_body=(\d+)")
_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_ERRORS = re.compile(r"Socket errors: (.*)")


def run_wrk(port: int, path: str, keys_file: Path, duration: float, connections: int, threads: int) -> dict:
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
    ]
    environ = env(WRK_KEYS=str(keys_file), WRK_PATH=path, WRK_BATCH=str(BATCH))
    out = subprocess.run(args, env=environ, capture_output=True, text=True, timeout=duration + 60).stdout
    rate, check = _RATE.search(out), _CHECK.search(out)
    if not rate or not check:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {int(p): float(v) * scale[u] for p, v, u in _PCT.findall(out)}
    ok, bad_status, bad_body = map(int, check.groups())
    errors = _ERRORS.search(out)
    return {
        "req_s": float(rate.group(1)),
        "p50_ms": pct.get(50),
        "p90_ms": pct.get(90),
        "p99_ms": pct.get(99),
        "ok": ok,
        "bad_status": bad_status,
        "bad_body": bad_body,
        "socket_errors": errors.group(1) if errors else None,
    }


def measure(
    system: str,
    scenario: str,
    args: argparse.Namespace,
    procs: Procs,
    endpoint: str,
    keys_file: Path,
    stack_pids: list[int],
) -> dict:
    port = free_port()
    proc = start_system(system, procs, endpoint, port)
    try:
        http_ready(port, system, time.monotonic() + 30)
        time.sleep(0.5)  # let granian's or uvicorn's start-up settle
        pids = tree_pids(proc.pid) + (stack_pids if system in GATEWAYS else [])
        path = "/get_value" if scenario == "get" else "/get_values"
        cpu0 = cpu_seconds(pids)
        result = run_wrk(port, path, keys_file, args.duration, args.connections, args.threads)
        cpu = cpu_seconds(pids) - cpu0
    finally:
        procs.stop(proc)
    requests = result["ok"] + result["bad_status"] + result["bad_body"]
    result["cpu_us"] = 1e6 * cpu / max(requests, 1)
    result["keys_s"] = result["req_s"] * (BATCH if scenario == "get_values" else 1)
    return result


def start_stack(procs: Procs, workers: int) -> tuple[str, list[int]]:
    from rokv import Client, ServiceUnavailable

    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    started = [
        procs.start(
            "broker", [sys.executable, "-m", "rokv.broker", "--frontend", frontend, "--backend", backend], env()
        )
    ]
    for i in range(workers):
        started.append(
            procs.start(
                f"worker{i}",
                [
                    sys.executable,
                    "-m",
                    "rokv.worker",
                    "--backend",
                    backend,
                    "--data",
                    str(DATA),
                    "--name",
                    f"worker{i}",
                ],
                env(),
            )
        )
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    with Client(frontend, timeout=0.5, retries=0) as client:
        while len(seen) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the rokv stack did not come up")
            try:
                seen.add(client.ping()["pid"])
            except ServiceUnavailable:
                pass
    return frontend, [p.pid for p in started]


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def versions() -> str:
    import importlib.metadata as md

    names = ["uvicorn", "httptools", "uvloop", "granian", "fastapi", "pydantic", "pyzmq"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip() or "wrk"
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {', '.join(found)}, {wrk}"


def render(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace, command: str) -> str:
    seed = "seed" if ("seed", "get") in results else None
    lines = [
        BEGIN,
        "## HTTP: rokv-http against the seed's FastAPI service",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {versions()}.",
        "",
        f"wrk, {args.connections} connections, {args.threads} threads, runs of {args.duration:g} s; each "
        f"figure is the median of {args.repeats} runs, systems interleaved run after run. Every response "
        "was checked by benchmarks/wrk_check.lua (status 200 and a value in the body; none failed). "
        "The gateways ask a broker and 2 workers on the same 2 cores (their CPU is counted in the CPU "
        "column); the seed holds the dict itself. `get`: POST /get_value, one random key of "
        f"data/example.json; `get_values`: POST /get_values of {BATCH} random keys.",
        "",
    ]
    if args.smoke:
        lines += ["**Smoke run: durations too short to mean anything; correctness check only.**", ""]
    lines += [
        "| system | scenario | req/s | keys/s | p50 ms | p90 ms | p99 ms | server CPU µs per req "
        "| vs seed: keys/s | vs seed: p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (system, scenario), runs in results.items():
        ratio_rate = ratio_p99 = "—"
        if seed and system != seed:
            base = results[(seed, "get")]
            ratio_rate = f"{med(runs, 'keys_s') / med(base, 'keys_s'):.2f}×"
            if scenario == "get":
                ratio_p99 = f"{med(runs, 'p99_ms') / med(base, 'p99_ms'):.2f}×"
        lines.append(
            f"| {LABELS[system]} | {scenario} | {fmt(med(runs, 'req_s'))} | {fmt(med(runs, 'keys_s'))} | "
            f"{med(runs, 'p50_ms'):.2f} | {med(runs, 'p90_ms'):.2f} | {med(runs, 'p99_ms'):.2f} | "
            f"{med(runs, 'cpu_us'):.0f} | {ratio_rate} | {ratio_p99} |"
        )
    lines += ["", "Raw runs (req/s, p99 ms):", ""]
    for (system, scenario), runs in results.items():
        cells = ", ".join(f"{r['req_s']:,.0f} ({r['p99_ms']:.1f})" for r in runs)
        lines.append(f"- {system} {scenario}: {cells}")
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this script's block of ``path`` (``section`` holds its markers)."""
    write_block(path, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems",
        default="seed,seed-quiet,gateway",
        help=f"comma-separated, from {', '.join(LABELS)} (default %(default)s)",
    )
    parser.add_argument("--scenarios", default="get,get_values", help="get, get_values (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default %(default)s)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="rokv workers (default %(default)s)")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update")
    parser.add_argument("--json", default=None, help="also write every raw result to this file")
    parser.add_argument("--smoke", action="store_true", help="1 run of 1 s each: checks that everything runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.duration = 1, 1.0
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install -y wrk)")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for system in systems:
        if system not in LABELS:
            parser.error(f"unknown system {system!r}")
    pairs = [(s, sc) for sc in scenarios for s in systems if sc == "get" or s in GATEWAYS]
    command = "python benchmarks/httpbench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[tuple[str, str], list[dict]] = {pair: [] for pair in pairs}
    failed = False
    with tempfile.TemporaryDirectory(prefix="rokv-httpbench-") as tmp:
        keys_file = Path(tmp) / "keys.txt"
        keys_file.write_text("\n".join(json.loads(DATA.read_text(encoding="utf-8"))) + "\n", encoding="utf-8")
        procs = Procs(Path(tmp))
        try:
            endpoint, stack_pids = start_stack(procs, args.workers)
            for rep in range(args.repeats):
                for system, scenario in pairs:
                    result = measure(system, scenario, args, procs, endpoint, keys_file, stack_pids)
                    results[(system, scenario)].append(result)
                    bad = result["bad_status"] + result["bad_body"]
                    failed |= bad > 0
                    print(
                        f"run {rep + 1}/{args.repeats} {system:10} {scenario:10} {result['req_s']:>9,.0f} req/s "
                        f"p50 {result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms "
                        f"cpu {result['cpu_us']:.0f} us/req  bad {bad}"
                        + (f"  socket errors: {result['socket_errors']}" if result["socket_errors"] else ""),
                        file=sys.stderr,
                        flush=True,
                    )
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                tail = log.read_text(errors="replace")[-1500:]
                print(f"--- {log.name}\n{tail}", file=sys.stderr)
            raise
        finally:
            procs.stop_all()
    if failed:
        print("some responses were not 200 with a value: figures not written", file=sys.stderr)
        return 1
    write_section(Path(args.out), render(results, args, command.strip()))
    if args.json:
        raw = [{"system": s, "scenario": sc, "runs": runs} for (s, sc), runs in results.items()]
        Path(args.json).write_text(json.dumps(raw, indent=1), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
