"""The compiled hot path against the pure-Python one (issue 14), A/B in one run.

    python benchmarks/native.py                          # 3 interleaved rounds of 3 s per load and path
    python benchmarks/native.py --duration 0.5 --repeats 1 --out /tmp/B.md   # a quick look

Two stacks on free loopback ports, a broker and 2 workers each on the same
dataset: one whose workers run rokv.worker._native (the default), one whose workers
run with ROKV_PURE_PYTHON=1. Round after round, every load runs against both
(the order alternating), driven by `rokv bench` (which checks every answer):

- ``get-nc``: single-key gets, 64 in flight, coalescing off;
- ``get``: single-key gets from 64 callers, coalesced;
- ``mget100x16``: get_many of 100 keys, 16 in flight;
- ``mget100x1``: get_many of 100 keys, one at a time;
- ``seq8``: 8 client processes, each one blocking ``Client.get`` after another
  (a web application's workers).

Around each run, the CPU time (utime + stime, reaped children included) of
the client's process tree, the broker and the workers is read from
``/proc/PID/stat``; the table gives throughput and CPU microseconds per
request for each kind of process, medians of the rounds, and the ratio of
the compiled path to the Python one. The table is written into BENCHMARKS.md
between ``<!-- native:begin -->`` and ``<!-- native:end -->``. Every process
started is stopped by PID. Exit status 0 when every answer was right.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rokv import Client, ServiceUnavailable  # noqa: E402 - after sys.path is set

from benchmarks.run import free_endpoint, machine  # noqa: E402 - after sys.path is set
from benchmarks.scaleout import child_env, process_table, stop_all, tree_cpu  # noqa: E402 - after sys.path is set
from benchmarks.sections import write_block  # noqa: E402 - after sys.path is set

BEGIN, END = "<!-- native:begin -->", "<!-- native:end -->"


@dataclass(frozen=True)
class Load:
    name: str
    title: str
    args: tuple[str, ...]


LOADS = (
    Load("get-nc", "get, 64 in flight, uncoalesced", ("--no-coalesce", "-c", "64")),
    Load("get", "get, 64 callers, coalesced", ("-c", "64")),
    Load("mget100x16", "get_many of 100, 16 in flight", ("-k", "100", "-c", "16")),
    Load("mget100x1", "get_many of 100, one at a time", ("-k", "100", "-c", "1")),
    Load("seq8", "8 processes of sequential Client.get", ("--client", "sync", "-c", "1", "-p", "8")),
)
PATHS = ("compiled", "python")


class Stack:
    """A broker and 2 workers; ``pure`` sets ROKV_PURE_PYTHON for the workers."""

    def __init__(self, data: str, pure: bool, log_dir: Path) -> None:
        self.frontend, self.backend = free_endpoint(), free_endpoint()
        env = child_env()
        if pure:
            env["ROKV_PURE_PYTHON"] = "1"
        tag = "python" if pure else "compiled"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

        def start(name: str, args: list[str]) -> subprocess.Popen:
            log = log_dir / f"{tag}-{name}.log"
            self.logs.append(log)
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            self.procs.append(proc)
            return proc

        self.broker = start(
            "broker", [sys.executable, "-m", "rokv.broker", "--frontend", self.frontend, "--backend", self.backend]
        )
        self.workers = [
            start(
                f"worker{i}",
                [sys.executable, "-m", "rokv.worker", "--backend", self.backend, "--data", data, "--name", f"w{i}"],
            )
            for i in range(2)
        ]

    def wait_ready(self, timeout: float = 60) -> None:
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        with Client(self.frontend, timeout=0.5, retries=0) as client:
            while len(seen) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workers of {self.frontend} did not answer in {timeout:.0f} s")
                try:
                    seen.add(client.ping()["id"])
                except ServiceUnavailable:
                    pass

    def path(self) -> str:
        """Which loop the workers said they run."""
        text = "".join(log.read_text(errors="replace") for log in self.logs)
        return "compiled" if "compiled hot path in use" in text else "python"

    def stop(self) -> None:
        stop_all(self.procs)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children: a `rokv bench` run,
    with the client processes it forked and reaped, once it is waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(stack: Stack, load: Load, sample: str, duration: float) -> dict[str, Any]:
    """One `rokv bench` run; its report and the CPU seconds of each role."""
    before, client_before = process_table(), children_cpu()
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rokv",
            "bench",
            "--endpoint",
            stack.frontend,
            "--data",
            sample,
            "-d",
            str(duration),
            "--json",
            *load.args,
        ],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = bench.communicate(timeout=duration * 4 + 60)
    after = process_table()
    if bench.returncode != 0:
        raise RuntimeError(f"rokv bench {' '.join(load.args)} failed ({bench.returncode}): {err.strip()[-400:]}")
    report = json.loads(out)
    cpu = {
        "client": children_cpu() - client_before,
        "broker": tree_cpu([stack.broker.pid], after) - tree_cpu([stack.broker.pid], before),
        "workers": sum(tree_cpu([w.pid], after) - tree_cpu([w.pid], before) for w in stack.workers),
    }
    return {"report": report, "cpu": cpu}


def measure(args: argparse.Namespace, log_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    stacks = {path: Stack(args.data, path == "python", log_dir) for path in PATHS}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for stack in stacks.values():
            stack.wait_ready()
        said = {path: stacks[path].path() for path in PATHS}
        if said != {"compiled": "compiled", "python": "python"}:
            raise RuntimeError(f"the workers do not run the paths asked for: {said}")
        for rep in range(args.repeats):
            for load in LOADS:
                order = PATHS if rep % 2 == 0 else PATHS[::-1]
                for path in order:
                    rec = run(stacks[path], load, args.sample, args.duration)
                    results.setdefault((load.name, path), []).append(rec)
                    r = rec["report"]
                    print(
                        f"  round {rep + 1} {load.name:<10} {path:<8} {r['requests_per_s']:>10,.0f} req/s  "
                        f"wrong {r.get('wrong', 0)}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for stack in stacks.values():
            stack.stop()
    return results


def summarize(recs: list[dict[str, Any]]) -> dict[str, float]:
    def med(fn: Any) -> float:
        return statistics.median(fn(r) for r in recs)

    row = {
        "rps": med(lambda r: r["report"]["requests_per_s"]),
        "kps": med(lambda r: r["report"]["keys_per_s"]),
        "p50": med(lambda r: r["report"]["latency_ms"]["p50"]),
        "wrong": sum(r["report"].get("wrong", 0) for r in recs),
    }
    for role in ("client", "broker", "workers"):
        row[role] = med(lambda r, role=role: r["cpu"][role] / max(r["report"]["requests"], 1) * 1e6)
    return row


def render(results: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace, command: str) -> str:
    lines = [
        BEGIN,
        "## The compiled hot path (issue 14)",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}; {machine()}. A broker and 2 workers per "
        f"path on `{Path(args.data).name}`, the workers running rokv.worker._native (compiled) or Python "
        "(`ROKV_PURE_PYTHON=1`); `rokv bench` checking every answer; medians of "
        f"{args.repeats} interleaved rounds of {args.duration:g} s. CPU per request from /proc, for the client "
        "process tree, the broker and both workers together.",
        "",
        "| load | path | req/s | keys/s | p50 ms | client µs/req | broker µs/req | workers µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for load in LOADS:
        rows = {path: summarize(results[(load.name, path)]) for path in PATHS}
        for path in PATHS:
            row = rows[path]
            lines.append(
                f"| {load.title} | {path} | {row['rps']:,.0f} | {row['kps']:,.0f} | {row['p50']:.3f} | "
                f"{row['client']:.1f} | {row['broker']:.1f} | {row['workers']:.1f} |"
            )
        c, p = rows["compiled"], rows["python"]
        ratios.append(
            f"- {load.title}: throughput ×{c['rps'] / p['rps']:.2f}, worker CPU per request "
            f"×{c['workers'] / p['workers']:.2f} ({p['workers']:.1f} → {c['workers']:.1f} µs)"
        )
    lines += ["", "Compiled against Python, same run:", "", *ratios, "", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this script's block of ``path`` (``section`` holds its markers)."""
    write_block(path, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/native.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(REPO / "data" / "example.json"),
        help="the workers' dataset (.json, .jsonl or .rokv; default the example)",
    )
    parser.add_argument(
        "--sample",
        default=None,
        help="the JSON `rokv bench` checks answers against (default --data; give the source of a .rokv)",
    )
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.sample = args.sample or args.data
    if args.sample.endswith(".rokv"):
        parser.error("give --sample, the JSON or JSONL the .rokv was built from")
    command = "python benchmarks/native.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    with tempfile.TemporaryDirectory(prefix="rokv-native-") as tmp:
        results = measure(args, Path(tmp))
    section = render(results, args, command)
    print(section)
    if not args.no_write:
        write_section(args.out, section)
    wrong = sum(r["report"].get("wrong", 0) for recs in results.values() for r in recs)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
