"""Dict-backed against ``.rokv``-backed workers, at several dataset sizes.

For each size: the time ``rokv build`` takes; then two stacks on loopback (a
broker and ``--workers`` workers each), one serving the ``.jsonl`` (each worker
parses it into a dict) and one serving the ``.rokv`` file (each worker maps
it); for each: a worker's start time (process start to its first answer, the
worker started alone), lookup throughput under the standard load (``rokv
bench``: 64 concurrent gets from one AsyncClient process, coalescing on; and
get_many of 100 keys with 16 in flight), runs of the two stacks interleaved,
and each worker's RSS and PSS (``/proc/PID/smaps_rollup``) after the load.

Writes a markdown section between ``<!-- scale:begin -->`` and
``<!-- scale:end -->`` in BENCHMARKS.md (creating the file or the markers if
absent; everything else in the file is kept) and prints it.

    python benchmarks/scale.py                          # 10k, 1M and 10M keys
    python benchmarks/scale.py --sizes 10000 --duration 2 --repeats 1 --no-write
    python benchmarks/scale.py --build-only --sizes 10000000,100000000 --tmp /var/tmp/rokv-scale

``--build-only`` measures ``.rokv`` files alone, at sizes no dict-backed
worker could hold (100M keys: an 8 GB JSON Lines file): per size, the build
(wall and CPU time, CPU time per phase, peak RSS of its whole process tree
and peak size of its spill files, both sampled every 50 ms, and that nothing
is left behind), the file's size, a worker's start, and then, all sizes
served at once by their own stacks, the standard load's throughput against
each, runs interleaved, and the PSS of each stack's workers' mapping of the
file. It writes its own section (``<!-- scale-build:begin -->``).

Datasets are generated with data/generate.py under ``--tmp`` and deleted at
the end unless ``--keep`` (100M keys: about 40 minutes of one core, 8 GB of
disk, and as much again for the .rokv file and the build's spill). 10M keys
need about 12 GB of memory for the four dict-backed workers and take several
minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rokv import Client, ServiceUnavailable  # noqa: E402 - after sys.path is set

from benchmarks.sections import write_block  # noqa: E402 - after sys.path is set

BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
BUILD_BEGIN, BUILD_END = "<!-- scale-build:begin -->", "<!-- scale-build:end -->"
SCENARIOS = {
    "get ×64": ["-c", "64", "-k", "1"],
    "get_many 100 ×16": ["-c", "16", "-k", "100"],
}
SAMPLE = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ROKV_")}
    e["PYTHONUNBUFFERED"] = "1"
    return e


class Stack:
    """A broker and workers serving one dataset file."""

    def __init__(self, data: Path, workers: int, log_dir: Path, name: str) -> None:
        self.data, self.name, self.log_dir = data, name, log_dir
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        self.backend = f"tcp://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []
        self.broker = self._spawn(
            "broker", [sys.executable, "-m", "rokv.broker", "--frontend", self.frontend, "--backend", self.backend]
        )
        self.workers: list[subprocess.Popen] = []
        # The first worker alone, so its start time is its own.
        started = time.monotonic()
        self.workers.append(self._worker(0))
        self.first_answer_pid = self._wait_pid(self.workers[0].pid, timeout=600)
        self.start_seconds = time.monotonic() - started
        self.workers += [self._worker(i) for i in range(1, workers)]
        for w in self.workers[1:]:
            self._wait_pid(w.pid, timeout=900)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{self.name}-{name}.log", "wb")
        proc = subprocess.Popen(
            args, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.procs.append(proc)
        return proc

    def _worker(self, i: int) -> subprocess.Popen:
        return self._spawn(
            f"worker{i}",
            [
                sys.executable,
                "-m",
                "rokv.worker",
                "--backend",
                self.backend,
                "--data",
                str(self.data),
                "--name",
                f"{self.name}-{i}",
            ],
        )

    def _wait_pid(self, pid: int, timeout: float) -> int:
        """Ping until the worker with ``pid`` answers."""
        deadline = time.monotonic() + timeout
        with Client(self.frontend, timeout=0.05, retries=0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.ping()["pid"] == pid:
                        return pid
                except ServiceUnavailable:
                    pass
                for p in self.workers:
                    if p.poll() is not None:
                        raise RuntimeError(f"{self.name}: a worker exited with {p.returncode}")
        raise RuntimeError(f"{self.name}: worker {pid} did not answer within {timeout} s")

    def memory(self) -> list[dict[str, int]]:
        """Rss and Pss in kB of each worker, from smaps_rollup."""
        out = []
        for w in self.workers:
            fields = {}
            for line in Path(f"/proc/{w.pid}/smaps_rollup").read_text().splitlines():
                parts = line.split()
                if parts and parts[0] in ("Rss:", "Pss:"):
                    fields[parts[0][:-1].lower()] = int(parts[1])
            out.append(fields)
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def bench(stack: Stack, sample: Path, scenario: list[str], duration: float) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rokv",
            "bench",
            "--endpoint",
            stack.frontend,
            "--data",
            str(sample),
            "-p",
            "1",
            "-d",
            str(duration),
            "--json",
            *scenario,
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=duration + 300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"rokv bench failed ({result.returncode}): {result.stderr or result.stdout}")
    return json.loads(result.stdout)


def sample_pairs(src: Path, out: Path, count: int, seed: int = 1) -> None:
    """A uniform sample of ``count`` records of ``src`` (reservoir), for the
    load generator's key draw and answer checks."""
    rng = random.Random(seed)
    kept: list[bytes] = []
    with open(src, "rb") as f:
        for i, line in enumerate(f):
            if i < count:
                kept.append(line)
            else:
                j = rng.randrange(i + 1)
                if j < count:
                    kept[j] = line
    out.write_bytes(b"".join(kept))


def measure_size(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    src = tmp / f"scale-{n}.jsonl"
    if not src.exists():
        print(f"[{n:,}] generating {src}", flush=True)
        subprocess.run(
            [sys.executable, "data/generate.py", "--count", str(n), "-o", str(src)],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    out = tmp / f"scale-{n}.rokv"
    builds, build_cpu = [], []
    for _ in range(args.builds):
        started = time.monotonic()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [sys.executable, "-m", "rokv", "build", str(src), "-o", str(out), "-q"],
            cwd=REPO,
            env=env(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        builds.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        build_cpu.append(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime)
    print(f"[{n:,}] built in {statistics.median(builds):.1f} s", flush=True)
    sample = tmp / f"scale-{n}-sample.jsonl"
    sample_pairs(src, sample, min(SAMPLE, n))

    row: dict[str, Any] = {
        "keys": n,
        "jsonl_bytes": src.stat().st_size,
        "rokv_bytes": out.stat().st_size,
        "build_s": builds,
        "build_cpu_s": build_cpu,
    }
    stacks: dict[str, Stack] = {}
    try:
        for kind, data in (("rokv", out), ("dict", src)):
            print(f"[{n:,}] starting {args.workers} {kind} workers", flush=True)
            stacks[kind] = Stack(data, args.workers, tmp, f"{kind}-{n}")
            row[f"{kind}_start_s"] = stacks[kind].start_seconds
        runs: dict[str, dict[str, list[float]]] = {k: {s: [] for s in SCENARIOS} for k in stacks}
        for rep in range(args.repeats):
            order = ["dict", "rokv"] if rep % 2 == 0 else ["rokv", "dict"]
            for name, scenario in SCENARIOS.items():
                for kind in order:
                    report = bench(stacks[kind], sample, scenario, args.duration)
                    if report["wrong"] or report["errors"]:
                        raise RuntimeError(f"{kind} {name}: wrong {report['wrong']}, errors {report['errors']}")
                    runs[kind][name].append(report["keys_per_s"])
                    print(f"[{n:,}] {kind:<4} {name:<18} {report['keys_per_s']:>12,.0f} keys/s", flush=True)
        row["throughput"] = runs
        for kind, stack in stacks.items():
            row[f"{kind}_memory"] = stack.memory()
    finally:
        for stack in stacks.values():
            stack.stop()
    if not args.keep:
        for path in (src, out, sample):
            path.unlink(missing_ok=True)
    return row


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    import numpy
    import zmq

    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, pyzmq {zmq.__version__} "
        f"(libzmq {zmq.zmq_version()}), numpy {numpy.__version__}"
    )


def mb(kb: float) -> str:
    return f"{kb / 1024:,.0f}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "## Scale: dict-backed against .rokv-backed workers",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {machine()}, with "
        f"`python benchmarks/scale.py --sizes {','.join(str(r['keys']) for r in rows)} --workers {args.workers} "
        f"--duration {args.duration:g} --repeats {args.repeats}`. Datasets from data/generate.py (values of a few "
        "random words). Each stack is a broker and "
        f"{args.workers} workers on loopback; the standard load is `rokv bench`, one client process: 64 "
        "concurrent gets (AsyncClient, coalescing on) and get_many of 100 keys with 16 in flight; medians of "
        f"{args.repeats} runs of {args.duration:g} s, dict and .rokv runs interleaved. Start: process start to "
        "first answer, worker started alone. PSS from /proc/PID/smaps_rollup after the load.",
        "",
        "| keys | .jsonl MB | .rokv MB | build s (CPU s) | start s dict / rokv | RSS MB per worker dict / rokv "
        "| PSS MB, all workers dict / rokv | PSS / file size | "
        + " | ".join(f"{name} keys/s dict / rokv (ratio)" for name in SCENARIOS)
        + " |",
        "|" + "---|" * (8 + len(SCENARIOS)),
    ]
    for r in rows:
        rss = {k: statistics.mean(m["rss"] for m in r[f"{k}_memory"]) for k in ("dict", "rokv")}
        pss = {k: sum(m["pss"] for m in r[f"{k}_memory"]) for k in ("dict", "rokv")}
        cells = [
            f"{r['keys']:,}",
            f"{r['jsonl_bytes'] / 2**20:,.0f}",
            f"{r['rokv_bytes'] / 2**20:,.1f}",
            f"{statistics.median(r['build_s']):.1f} ({statistics.median(r.get('build_cpu_s') or [math.nan]):.1f})",
            f"{r['dict_start_s']:.2f} / {r['rokv_start_s']:.2f}",
            f"{mb(rss['dict'])} / {mb(rss['rokv'])}",
            f"{mb(pss['dict'])} / {mb(pss['rokv'])}",
            f"{pss['rokv'] * 1024 / r['rokv_bytes']:.2f}",
        ]
        for name in SCENARIOS:
            d = statistics.median(r["throughput"]["dict"][name])
            k = statistics.median(r["throughput"]["rokv"][name])
            cells.append(f"{d:,.0f} / {k:,.0f} ({k / d:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "PSS counts each worker's interpreter too (about 20 MB, 30 MB with numpy): the PSS / file size ratio "
        "means something only for big files. A .rokv worker's RSS includes the pages of the file it has touched, "
        "which all the workers share (PSS splits them). Runs vary by a factor of up to 2 on this shared machine "
        "(see the raw runs): compare the ratios of interleaved medians, not single figures.",
        "",
        *targets(rows[-1]),
        "",
        "Raw runs (keys/s):",
        "",
    ]
    for r in rows:
        for name in SCENARIOS:
            lines.append(
                f"- {r['keys']:,} keys, {name}: dict "
                + ", ".join(f"{x:,.0f}" for x in r["throughput"]["dict"][name])
                + "; rokv "
                + ", ".join(f"{x:,.0f}" for x in r["throughput"]["rokv"][name])
            )
    return "\n".join(lines) + "\n"


def targets(r: dict[str, Any]) -> list[str]:
    """The issue's targets checked against the largest size measured."""
    file_mb = r["rokv_bytes"] / 2**20
    pss = sum(m["pss"] for m in r["rokv_memory"]) / 1024
    checks = [
        ("build within 60 s", statistics.median(r["build_s"]), 60.0, "s", True),
        ("worker start under 1 s", r["rokv_start_s"], 1.0, "s", True),
        (f"4 workers' PSS at most 1.3 x the file ({1.3 * file_mb:,.0f} MB)", pss, 1.3 * file_mb, "MB", True),
    ]
    for name in SCENARIOS:
        ratio = statistics.median(r["throughput"]["rokv"][name]) / statistics.median(r["throughput"]["dict"][name])
        checks.append((f"{name}: throughput at least 0.9 x dict", ratio, 0.9, "x", False))
    out = [f"Targets at {r['keys']:,} keys:", ""]
    for what, value, limit, unit, at_most in checks:
        ok = value <= limit if at_most else value >= limit
        out.append(
            f"- {what}: {value:,.2f} {unit}, " + ("met" if ok else f"**missed** by {abs(value - limit) / limit:.0%}")
        )
    return out


# ------------------------------------------------------------------ --build-only

#: Runs rokv.worker.build.build (what `rokv build` runs) and prints, as JSON,
#: when each phase began and the CPU seconds of the whole process tree then
#: (this process and its workers, read live from /proc).
BUILD_SCRIPT = """
import json, os, sys, time
from rokv.worker.build import build

def tree_cpu():
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in [os.getpid()] + children(os.getpid()):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == os.getpid():
            total += int(fields[13]) + int(fields[14])  # of the workers already reaped
    return total / tick

def children(parent):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                found.append(int(entry))
    return found

phases = []
started = time.monotonic()

def progress(phase, fraction, keys=0):
    if not phases or phases[-1][0] != phase:
        phases.append((phase, time.monotonic() - started, tree_cpu()))

try:
    header = build(sys.argv[1], sys.argv[2], progress, memory=int(sys.argv[3]), jobs=int(sys.argv[4]))
except TypeError:  # a rokv before --memory and --jobs (--baseline)
    header = build(sys.argv[1], sys.argv[2], progress)
phases.append(("end", time.monotonic() - started, tree_cpu()))
print(json.dumps({"phases": phases, "keys": header.count, "file_size": header.file_size}))
"""


def tree_rss_kb(root: int) -> int:
    """RSS of ``root`` and all its descendants, in kB (shared pages counted
    in each process: an upper bound)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def spill_bytes(folder: Path) -> int:
    """Disk used by the spill folders (``*.spill``) in ``folder``."""
    total = 0
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(".spill")]
        for entry in entries:
            for file in os.scandir(entry.path):
                try:
                    total += file.stat().st_blocks * 512
                except OSError:  # removed meanwhile
                    pass
    except OSError:
        pass
    return total


def measured_build(src: Path, out: Path, memory: int, jobs: int, pythonpath: str | None = None) -> dict[str, Any]:
    """Build ``out`` from ``src`` in a child process, sampling its tree's RSS
    and the spill's disk use every 50 ms; with the rokv package found on
    ``pythonpath`` first, if given."""
    work = out.parent / f"build-{out.stem}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    target = work / out.name
    load_before = os.getloadavg()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, str(src), str(target), str(memory), str(jobs)],
        cwd=out.parent,
        env={**env(), **({"PYTHONPATH": pythonpath} if pythonpath else {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    peak_rss = peak_disk = 0
    while proc.poll() is None:
        peak_rss = max(peak_rss, tree_rss_kb(proc.pid))
        peak_disk = max(peak_disk, spill_bytes(work))
        time.sleep(0.05)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.stdout is not None
    if proc.returncode != 0:
        raise RuntimeError(f"build of {src} failed ({proc.returncode})")
    result = json.loads(proc.stdout.read())
    left = sorted(os.listdir(work))
    os.replace(target, out)
    work.rmdir()
    phases = result["phases"]
    return {
        "wall_s": wall,
        "cpu_s": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "user_s": after.ru_utime - cpu.ru_utime,
        "phases": {a[0]: {"wall_s": b[1] - a[1], "cpu_s": b[2] - a[2]} for a, b in zip(phases, phases[1:])},
        "peak_rss_kb": peak_rss,
        "peak_spill_bytes": peak_disk,
        "left_behind": [n for n in left if n != out.name],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def sample_by_seeks(src: Path, out: Path, count: int, seed: int = 1) -> None:
    """About ``count`` records of ``src``, from random places in it: reading
    the whole of a 8 GB file for a reservoir would take minutes."""
    rng = random.Random(seed)
    size = src.stat().st_size
    kept: dict[bytes, bytes] = {}
    with open(src, "rb") as f:
        for at in sorted(rng.randrange(size) for _ in range(count)):
            f.seek(at)
            f.readline()
            line = f.readline()
            if line.endswith(b"\n"):
                kept[line[:48]] = line
    out.write_bytes(b"".join(kept.values()))


def mapping_kb(pid: int, path: Path) -> dict[str, int]:
    """Rss and Pss (kB) of ``pid``'s mappings of the file ``path``."""
    fields = {"rss": 0, "pss": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
            inside = len(parts) >= 6 and parts[5] == str(path)
        elif inside and parts[0] in ("Rss:", "Pss:"):
            fields[parts[0][:-1].lower()] += int(parts[1])
    return fields


def measure_builds(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from rokv.worker.build import default_jobs, parse_size
    from rokv.worker.reader import open_store

    memory = parse_size(args.memory)
    jobs = args.jobs or default_jobs()
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.sizes.split(",")):
        src = tmp / f"scale-{n}.jsonl"
        if not src.exists():
            print(f"[{n:,}] generating {src}", flush=True)
            subprocess.run(
                [sys.executable, "data/generate.py", "--count", str(n), "-o", str(src), *["--fast"] * args.fast_data],
                cwd=REPO,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        out = tmp / f"scale-{n}.rokv"
        print(f"[{n:,}] building {out} (--memory {args.memory}, --jobs {jobs})", flush=True)
        build = measured_build(src, out, memory, jobs)
        print(f"[{n:,}] {json.dumps(build)}", flush=True)
        sample = tmp / f"scale-{n}-sample.jsonl"
        sample_by_seeks(src, sample, SAMPLE)
        opened = []
        for _ in range(5):  # what a worker's start costs for the dataset itself
            started = time.perf_counter()
            open_store(out).close()
            opened.append(time.perf_counter() - started)
        rows.append(
            {
                "keys": n,
                "jsonl_bytes": src.stat().st_size,
                "rokv_bytes": out.stat().st_size,
                "memory": memory,
                "jobs": jobs,
                "build": build,
                "open_ms": 1000 * statistics.median(opened),
            }
        )
        if args.baseline and n == int(args.sizes.split(",")[0]):
            rows[-1]["baseline"] = compare_builds(src, out, memory, jobs, args)
        if not args.keep:
            src.unlink()
    stacks: dict[int, Stack] = {}
    try:
        for row in rows:
            n = row["keys"]
            print(f"[{n:,}] starting {args.workers} workers", flush=True)
            stacks[n] = Stack(tmp / f"scale-{n}.rokv", args.workers, tmp, f"rokv-{n}")
            row["start_s"] = stacks[n].start_seconds
        for row in rows:
            row["throughput"] = {name: [] for name in SCENARIOS}
        for rep in range(args.repeats):
            order = rows if rep % 2 == 0 else rows[::-1]
            for name, scenario in SCENARIOS.items():
                for row in order:
                    n = row["keys"]
                    result = bench(stacks[n], tmp / f"scale-{n}-sample.jsonl", scenario, args.duration)
                    if result["wrong"] or result["errors"]:
                        raise RuntimeError(f"{n} {name}: wrong {result['wrong']}, errors {result['errors']}")
                    row["throughput"][name].append(result["keys_per_s"])
                    print(f"[{n:,}] {name:<18} {result['keys_per_s']:>12,.0f} keys/s", flush=True)
        for row in rows:
            n = row["keys"]
            row["mapping"] = [mapping_kb(w.pid, tmp / f"scale-{n}.rokv") for w in stacks[n].workers]
            row["memory_kb"] = stacks[n].memory()
    finally:
        for stack in stacks.values():
            stack.stop()
    if not args.keep:
        for row in rows:
            n = row["keys"]
            for path in (tmp / f"scale-{n}.rokv", tmp / f"scale-{n}-sample.jsonl"):
                path.unlink(missing_ok=True)
    return rows


def compare_builds(src: Path, out: Path, memory: int, jobs: int, args: argparse.Namespace) -> dict[str, Any]:
    """Builds of ``src`` by the rokv on ``--baseline`` and by this one,
    interleaved; the outputs must hold the same content (same digest)."""
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    digests = set()
    for rep in range(args.baseline_runs):
        for kind in ("baseline", "this") if rep % 2 == 0 else ("this", "baseline"):
            target = out.with_name(f"{kind}-{out.name}")
            runs[kind].append(measured_build(src, target, memory, jobs, args.baseline if kind == "baseline" else None))
            with open(target, "rb") as f:
                digests.add(f.read(120)[88:120])
            target.unlink()
            print(f"[{src.name}] {kind}: {json.dumps(runs[kind][-1])}", flush=True)
    if len(digests) != 1:
        raise RuntimeError(f"{src}: the baseline and this rokv built different content")
    return runs


def build_targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 20's targets, checked against what was measured."""
    checks: list[tuple[str, float, float, str, bool]] = []
    for r in rows:
        b, n = r["build"], f"{r['keys']:,} keys"
        if r["keys"] >= 100_000_000:
            checks += [
                (f"{n}: build within 180 s", b["wall_s"], 180.0, "s", True),
                (f"{n}: build peak RSS at most 4 GB", b["peak_rss_kb"] / 2**20, 4.0, "GB", True),
                (f"{n}: worker start under 1 s", r["start_s"], 1.0, "s", True),
                (
                    f"{n}: workers' PSS of the file at most 1.1 x the file",
                    sum(m["pss"] for m in r["mapping"]) * 1024 / r["rokv_bytes"],
                    1.1,
                    "x",
                    True,
                ),
            ]
        checks.append((f"{n}: spill at most 1.2 x the file", b["peak_spill_bytes"] / r["rokv_bytes"], 1.2, "x", True))
        if "baseline" in r:
            old = statistics.median(x["wall_s"] for x in r["baseline"]["baseline"])
            new = statistics.median(x["wall_s"] for x in r["baseline"]["this"])
            checks.append((f"{n}: at least 1.5 x the baseline's speed", old / new, 1.5, "x", False))
        if r["keys"] == 10_000_000:
            checks.append((f"{n}: build peak RSS at most 1 GB", b["peak_rss_kb"] / 2**20, 1.0, "GB", True))
    if len(rows) > 1:
        first = SCENARIOS and next(iter(SCENARIOS))
        ratio = statistics.median(rows[-1]["throughput"][first]) / statistics.median(rows[0]["throughput"][first])
        checks.append(
            (f"{first} at {rows[-1]['keys']:,} keys at least 0.9 x at {rows[0]['keys']:,}", ratio, 0.9, "x", False)
        )
    out = ["Targets:", ""]
    for what, value, limit, unit, at_most in checks:
        ok = value <= limit if at_most else value >= limit
        out.append(
            f"- {what}: {value:,.2f} {unit}, " + ("met" if ok else f"**missed** by {abs(value - limit) / limit:.0%}")
        )
    return out


def build_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    first = rows[0]
    lines = [
        "## Scale: building and serving .rokv files up to 100M keys",
        "",
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {machine()}, with "
        f"`python benchmarks/scale.py --build-only --sizes {','.join(str(r['keys']) for r in rows)} "
        f"--workers {args.workers} --duration {args.duration:g} --repeats {args.repeats} --memory {args.memory}"
        + (f" --jobs {args.jobs}" if args.jobs else "")
        + (" --fast-data" if args.fast_data else "")
        + (f" --baseline OLD --baseline-runs {args.baseline_runs}" if args.baseline else "")
        + "`"
        + (f" (OLD: {args.baseline_label}, on PYTHONPATH)" if args.baseline else "")
        + f" (the build on {first['jobs']} jobs; datasets from data/generate.py"
        + (" --fast" if args.fast_data else "")
        + "). The build is rokv.worker.build.build, what `rokv build` runs, in "
        "a child process; its peak RSS is that of its whole process tree (the parent and its workers, shared pages "
        "counted in each: an upper bound) and the spill's peak is the disk its temporary files used (sampled every "
        "50 ms). Load averages (1, 5, 15 min) are before and after each build: the machine is shared with other "
        "jobs, so wall times are noisy and CPU times the steadier figure. Serving: one stack per size (a broker and "
        f"{args.workers} workers, all up at once), the standard load of `rokv bench` (64 concurrent gets, and get_many "
        f"of 100 keys with 16 in flight) from a sample of {SAMPLE:,} records, medians of {args.repeats} runs of "
        f"{args.duration:g} s, sizes interleaved. Mapping PSS: the workers' share of the file's pages after the load "
        "(not a sweep of every page).",
        "",
        "| keys | .jsonl MB | .rokv MB | build wall s | build CPU s (reading / sorting / hashing) | peak RSS MB "
        "| spill peak MB (/ file) | left behind | load before → after | worker start s | mapping PSS MB, all workers |"
        + " | ".join(f" {name} keys/s" for name in SCENARIOS)
        + " |",
        "|" + "---|" * (11 + len(SCENARIOS)),
    ]
    for r in rows:
        b = r["build"]
        phases = " / ".join(
            f"{b['phases'].get(p, {}).get('cpu_s', math.nan):.1f}" for p in ("reading", "sorting", "hashing")
        )
        pss = sum(m["pss"] for m in r["mapping"])
        cells = [
            f"{r['keys']:,}",
            f"{r['jsonl_bytes'] / 2**20:,.0f}",
            f"{r['rokv_bytes'] / 2**20:,.0f}",
            f"{b['wall_s']:.1f}",
            f"{b['cpu_s']:.1f} ({phases})",
            f"{b['peak_rss_kb'] / 1024:,.0f}",
            f"{b['peak_spill_bytes'] / 2**20:,.0f} ({b['peak_spill_bytes'] / r['rokv_bytes']:.2f})",
            ", ".join(b["left_behind"]) or "nothing",
            f"{b['load_before'][0]:.1f} → {b['load_after'][0]:.1f}",
            f"{r['start_s']:.2f}",
            f"{pss / 1024:,.0f}",
        ]
        for name in SCENARIOS:
            cells.append(f"{statistics.median(r['throughput'][name]):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if "baseline" in r:
            lines += [
                "",
                f"{r['keys']:,} keys, this build against the baseline's (`--baseline`), same digest, "
                f"{len(r['baseline']['this'])} runs each, interleaved; medians:",
                "",
            ]
            for what, key in (("wall s", "wall_s"), ("CPU s", "cpu_s")):
                old = statistics.median(x[key] for x in r["baseline"]["baseline"])
                new = statistics.median(x[key] for x in r["baseline"]["this"])
                lines.append(f"- {what}: {old:.1f} → {new:.1f} ({old / new:.2f}x faster)")
            old = statistics.median(x["peak_rss_kb"] for x in r["baseline"]["baseline"]) / 1024
            new = statistics.median(x["peak_rss_kb"] for x in r["baseline"]["this"]) / 1024
            lines.append(f"- peak RSS MB: {old:,.0f} → {new:,.0f}")
            loads = [x["load_before"][0] for k in ("baseline", "this") for x in r["baseline"][k]]
            lines.append(f"- load average (1 min) before each run: {min(loads):.1f} to {max(loads):.1f}")
    last, base = rows[-1], rows[0]
    if all("open_ms" in r for r in rows):
        lines += [
            "",
            "Opening the file (what a worker's start costs for its dataset; the rest of the start is the "
            "interpreter's and its imports', which grow with the machine's load): "
            + ", ".join(f"{r['keys']:,} keys {r['open_ms']:.2f} ms" for r in rows)
            + " (median of 5).",
        ]
    lines += ["", *build_targets(rows)]
    lines += ["", f"Ratios, {last['keys']:,} keys against {base['keys']:,}:", ""]
    for name in SCENARIOS:
        ratio = statistics.median(last["throughput"][name]) / statistics.median(base["throughput"][name])
        lines.append(f"- {name}: {ratio:.2f}")
    lines += ["", "Raw runs (keys/s):", ""]
    for r in rows:
        for name in SCENARIOS:
            lines.append(f"- {r['keys']:,} keys, {name}: " + ", ".join(f"{x:,.0f}" for x in r["throughput"][name]))
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace what lies between this script's markers in ``path``."""
    write_block(path, BEGIN, END, f"{BEGIN}\n{section}{END}")


def write_build_section(path: Path, section: str) -> None:
    write_block(path, BUILD_BEGIN, BUILD_END, f"{BUILD_BEGIN}\n{section}{BUILD_END}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000", help="comma-separated key counts")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--builds", type=int, default=1, help="builds timed per size (median)")
    parser.add_argument("--tmp", default="/tmp/rokv-scale", help="folder for datasets and logs")
    parser.add_argument("--keep", action="store_true", help="keep the generated datasets")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--from-json", help="measure nothing: rewrite the section from raw results saved by --json")
    parser.add_argument(
        "--build-only", action="store_true", help=".rokv files only: build, start and throughput (see above)"
    )
    parser.add_argument("--memory", default="2G", help="--build-only: the build's --memory (default %(default)s)")
    parser.add_argument("--jobs", type=int, help="--build-only: the build's --jobs (default: one per core)")
    parser.add_argument(
        "--baseline",
        metavar="PYTHONPATH",
        help="--build-only: also build the first size with the rokv package found on PYTHONPATH (an older "
        "checkout), interleaved with this one",
    )
    parser.add_argument("--baseline-runs", type=int, default=2, help="builds each for --baseline (default 2)")
    parser.add_argument("--baseline-label", default="an older rokv", help="what --baseline is, for the report")
    parser.add_argument(
        "--fast-data", action="store_true", help="--build-only: generate with data/generate.py --fast (minutes at 100M)"
    )
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        section = (build_report if args.build_only else report)(rows, args)
        print(section)
        if not args.no_write:
            (write_build_section if args.build_only else write_section)(REPO / "BENCHMARKS.md", section)
        return 0
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        rows = measure_builds(args, tmp)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        section = build_report(rows, args)
        print(section)
        if not args.no_write:
            write_build_section(REPO / "BENCHMARKS.md", section)
        return 0
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(measure_size(n, args, tmp))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    section = report(rows, args)
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", section)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
