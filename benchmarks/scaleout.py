"""Scale-out benchmark (issue 11): 1 and 2 brokers x 1, 2 and 4 workers, with
throughput and the CPU time each kind of process spends per request.

    python benchmarks/scaleout.py                       # the full matrix, 3 runs of 3 s each
    python benchmarks/scaleout.py --clients 8 --duration 5 --repeats 5   # a bigger machine
    python benchmarks/scaleout.py --brokers 1,2 --workers 1 --duration 0.3 --repeats 1 \\
        --out /tmp/B.md --no-redis                      # a few seconds: does it all run?

Every configuration is its own stack on free loopback ports, all started
first: B brokers (``python -m rokv.broker``) and W workers
(``python -m rokv.worker``), every worker connected to every broker. Then,
repeat after repeat, every load runs against every configuration in turn
(the order rotates from one repeat to the next):

- ``get``: single-key gets from 64 callers of one AsyncClient, coalesced;
- ``get-nc``: the same with coalescing off (64 messages in flight);
- ``mget100``: get_many of 100 keys, 16 in flight;

each from ``--clients`` client processes (benchmarks/scaleout_client.py), for
``--duration`` seconds. Every answer is checked against the dataset. Around
each run the CPU time (utime + stime, and that of reaped children) of each
role's whole process tree is read from ``/proc/PID/stat``: clients, brokers,
workers. CPU time per request gives the capacity of one core of each kind,
1 / (CPU seconds per request). With ``redis-server``, redis-py and hiredis
installed, one redis-server on loopback, driven by the same number of client
processes (pipelines of 16 MGETs of 100 keys), is the batched load's yardstick.

The table (medians of the repeats) goes into BENCHMARKS.md between
``<!-- scaleout:begin -->`` and ``<!-- scaleout:end -->`` (appended when
absent; the rest of the file is kept byte for byte). Every process started is
stopped by PID, on error and on SIGTERM too. Exit status: 0 when every
request got its right answer, 1 when one did not or the run failed, 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rokv import Client, CurvePeer, ServiceUnavailable  # noqa: E402 - after sys.path is set
from rokv.loadgen import Tally, load_expected, tally_from_json  # noqa: E402 - after sys.path is set

from benchmarks import redisbench  # noqa: E402 - after sys.path is set
from benchmarks.run import free_endpoint, machine  # noqa: E402 - after sys.path is set
from benchmarks.sections import write_block  # noqa: E402 - after sys.path is set

BEGIN, END = "<!-- scaleout:begin -->", "<!-- scaleout:end -->"
CLIENT = REPO / "benchmarks" / "scaleout_client.py"
ROLES = ("client", "broker", "worker")


@dataclass(frozen=True)
class Load:
    """One kind of traffic, per client process."""

    name: str
    title: str
    keys: int  # per request: 1 get, more get_many
    concurrency: int
    coalesce: bool = True


LOADS = {
    "get": Load("get", "get, 64 callers, coalesced", 1, 64, True),
    "get-nc": Load("get-nc", "get, 64 in flight, uncoalesced", 1, 64, False),
    "mget100": Load("mget100", "get_many of 100, 16 in flight", 100, 16),
}
#: Redis' pipeline for the batched load: as many MGETs in flight as rokv has.
REDIS_LOAD = "mget100"


# ---------------------------------------------------------------- CPU time


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process now, the CPU time
    being utime + stime + cutime + cstime: a child that exits and is reaped
    during a run moves its time into its parent's cutime, so the sum over a
    process tree stays whole."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = data.rsplit(b")", 1)[1].split()  # the name may hold spaces and parentheses
        table[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    return table


def tree_cpu(roots: Iterable[int], table: dict[int, tuple[int, float]]) -> float:
    """CPU seconds of the processes ``roots`` and all their descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children[pid])
    return total


# ---------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """This environment without ROKV_* (a stray ROKV_ENDPOINT must not
    redirect the load) and with unbuffered output for the logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROKV_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process still running, then SIGKILL what has not exited
    within 10 s; by PID only."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Stack:
    """``brokers`` brokers and ``workers`` workers, each worker connected to
    every broker; ``broker_args`` and ``worker_args`` go to every broker and
    worker (CURVE keys, say), and ``curve`` is then the client's side."""

    def __init__(
        self,
        brokers: int,
        workers: int,
        data: str,
        io_threads: int,
        log_dir: Path,
        *,
        broker_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        curve: CurvePeer | None = None,
    ) -> None:
        self.brokers, self.workers = brokers, workers
        self.curve = curve
        self.name = f"{brokers}b{workers}w"
        self.frontends = [free_endpoint() for _ in range(brokers)]
        self.backends = [free_endpoint() for _ in range(brokers)]
        self.endpoint = ",".join(self.frontends)
        self.procs: list[subprocess.Popen] = []
        self._logs: list[Any] = []
        try:
            self.broker_pids = [
                self._spawn(
                    f"broker{i}",
                    log_dir,
                    [
                        "-m",
                        "rokv.broker",
                        "--frontend",
                        front,
                        "--backend",
                        back,
                        "--io-threads",
                        str(io_threads),
                        *broker_args,
                    ],
                )
                for i, (front, back) in enumerate(zip(self.frontends, self.backends))
            ]
            self.worker_pids = [
                self._spawn(
                    f"worker{i}",
                    log_dir,
                    [
                        "-m",
                        "rokv.worker",
                        "--backend",
                        ",".join(self.backends),
                        "--data",
                        data,
                        "--name",
                        f"{self.name}-{i}",
                        *worker_args,
                    ],
                )
                for i in range(workers)
            ]
        except BaseException:
            self.stop()
            raise

    def _spawn(self, what: str, log_dir: Path, args: list[str]) -> int:
        log = open(log_dir / f"{self.name}-{what}.log", "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Return when every worker answers through every broker.

        Raises:
            RuntimeError: a process exited, or ``timeout`` passed.
        """
        deadline = time.monotonic() + timeout
        for frontend in self.frontends:
            seen: set[int] = set()
            with Client(frontend, timeout=0.2, retries=0, curve=self.curve) as client:
                while not set(self.worker_pids) <= seen:
                    dead = [p for p in self.procs if p.poll() is not None]
                    if dead:
                        raise RuntimeError(f"{self.name}: process {dead[0].pid} exited with {dead[0].returncode}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.name}: workers {sorted(set(self.worker_pids) - seen)} did not "
                            f"answer through {frontend} within {timeout:g} s"
                        )
                    try:
                        seen.add(client.ping()["pid"])
                    except ServiceUnavailable:
                        pass

    def stop(self) -> None:
        stop_all(self.procs)
        for log in self._logs:
            log.close()


def _read_line(proc: subprocess.Popen, deadline: float, what: str, log: Path) -> bytes:
    """The next line ``proc`` writes, by ``deadline``.

    Raises:
        RuntimeError: it exited first, or did not write in time.
    """
    assert proc.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"client process {proc.pid} sent no {what} in time; see {log}")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
        if ready:
            line = proc.stdout.readline()
            if not line:
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise RuntimeError(f"client process {proc.pid} exited ({proc.wait()}) before its {what}: {tail}")
            return line


def run_rokv(stack: Stack, load: Load, args: argparse.Namespace, rep: int, log_dir: Path) -> dict[str, Any]:
    """One run of ``load`` against ``stack`` from ``args.clients`` processes."""
    clients: list[subprocess.Popen] = []
    logs = [log_dir / f"client-{stack.name}-{load.name}-{rep}-{i}.log" for i in range(args.clients)]
    try:
        for i, log in enumerate(logs):
            with open(log, "wb") as err:
                clients.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(CLIENT),
                            "--endpoint",
                            stack.endpoint,
                            "--data",
                            args.data,
                            "--keys",
                            str(load.keys),
                            "--concurrency",
                            str(load.concurrency),
                            "--duration",
                            str(args.duration),
                            "--seed",
                            str(1000 * rep + i + 1),
                            *([] if load.coalesce else ["--no-coalesce"]),
                        ],
                        cwd=REPO,
                        env=child_env(),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                    )
                )
        deadline = time.monotonic() + args.start_timeout
        for proc, log in zip(clients, logs):
            if _read_line(proc, deadline, "ready line", log).strip() != b"ready":
                raise RuntimeError(f"client process {proc.pid}: unexpected first line; see {log}")
        pids = {"client": [p.pid for p in clients], "broker": stack.broker_pids, "worker": stack.worker_pids}
        before = process_table()
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        # The clients' retry budget (about 4 s by default) bounds a call that gets no answer.
        deadline = time.monotonic() + args.duration + 60
        outcomes = [json.loads(_read_line(p, deadline, "report", log)) for p, log in zip(clients, logs)]
        after = process_table()
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write(b"exit\n")
            proc.stdin.close()
    finally:
        stop_all(clients)
    total = Tally()
    for outcome in outcomes:
        total.add(tally_from_json(outcome["tally"]))
    replies = [sum(col) for col in zip(*(o["broker_replies"] for o in outcomes))]
    cpu = {role: tree_cpu(pids[role], after) - tree_cpu(pids[role], before) for role in ROLES}
    return record(total, cpu, replies)


def run_redis(server: redisbench.RedisServer, load: Load, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    """The batched load against one redis-server, from as many processes.
    Its clients are forked from this process and time their own loop
    (``time.process_time``); the server's CPU comes from /proc."""
    pid = server.proc.pid
    before = process_table()
    report = redisbench.run_clients(
        server.port, args.data, args.clients, load.concurrency, load.keys, args.duration, seed=1000 * rep + 1
    )
    after = process_table()
    tally = Tally(requests=report["requests"], keys=report["keys"], elapsed=report["elapsed_s"])
    # The report keeps the percentiles, not the histogram: carry p50 over as is.
    rec = record(
        tally,
        {
            "client": (report["client_cpu_us_per_request"] or 0) * report["requests"] / 1e6,
            "broker": 0.0,
            "worker": tree_cpu([pid], after) - tree_cpu([pid], before),
        },
        [],
    )
    rec["p50_ms"] = report["latency_ms"]["p50"]
    return rec


def record(tally: Tally, cpu: dict[str, float], replies: list[int]) -> dict[str, Any]:
    elapsed = tally.elapsed or float("nan")
    return {
        "requests": tally.requests,
        "keys": tally.keys,
        "elapsed_s": tally.elapsed,
        "requests_per_s": tally.requests / elapsed,
        "keys_per_s": tally.keys / elapsed,
        "p50_ms": tally.percentile(0.5) * 1000,
        "p99_ms": tally.percentile(0.99) * 1000,
        "cpu_s": cpu,
        "broker_replies": replies,
        "errors": dict(tally.errors),
        "wrong": tally.wrong,
        "wrong_examples": tally.wrong_examples,
    }


# ---------------------------------------------------------------- the matrix


def measure(args: argparse.Namespace, log_dir: Path) -> tuple[dict[str, list[dict]], str | None]:
    """Every run, by ``"load/config"`` (config ``1b2w`` or ``redis``), and
    why Redis was not compared (None when it was)."""
    configs = [(b, w) for b in args.brokers for w in args.workers]
    loads = [LOADS[name] for name in args.loads]
    why_no_redis = "not asked for (--no-redis)" if args.no_redis else redisbench.available()
    if why_no_redis is None and REDIS_LOAD not in args.loads:
        why_no_redis = f"the {REDIS_LOAD} load was not asked for"
    stacks: dict[tuple[int, int], Stack] = {}
    redis = None
    runs: dict[str, list[dict]] = defaultdict(list)
    try:
        for b, w in configs:
            stacks[b, w] = Stack(b, w, args.data, args.io_threads, log_dir)
        for stack in stacks.values():
            stack.wait_ready(args.start_timeout)
        if why_no_redis is None:
            redis = redisbench.RedisServer(log_dir / "redis.log")
            redis.load(load_expected(args.data))
        for rep in range(args.repeats):
            # Rotate the order, so that no configuration always runs first
            # (or right after the heaviest one).
            shift = rep % len(configs)
            order: list[Any] = configs[shift:] + configs[:shift]
            for load in loads:
                for config in order + (["redis"] if redis is not None and load.name == REDIS_LOAD else []):
                    if config == "redis":
                        assert redis is not None
                        key, rec = f"{load.name}/redis", run_redis(redis, load, args, rep)
                    else:
                        stack = stacks[config]
                        key, rec = f"{load.name}/{stack.name}", run_rokv(stack, load, args, rep, log_dir)
                    runs[key].append(rec)
                    progress(key, rep, rec)
    finally:
        if redis is not None:
            redis.stop()
        for stack in stacks.values():
            stack.stop()
    return dict(runs), why_no_redis


def progress(key: str, rep: int, rec: dict[str, Any]) -> None:
    cpu = " / ".join(f"{per_request_us(rec, role):.0f}" for role in ROLES)
    bad = sum(rec["errors"].values()) + rec["wrong"]
    print(
        f"run {rep + 1} {key:<16} {rec['requests_per_s']:>10,.0f} req/s {rec['keys_per_s']:>12,.0f} keys/s  "
        f"p50 {rec['p50_ms']:6.2f} ms  CPU µs/req client/broker/worker {cpu}" + (f"  FAILED {bad}" if bad else ""),
        file=sys.stderr,
        flush=True,
    )


def per_request_us(rec: dict[str, Any], role: str) -> float:
    return rec["cpu_s"][role] / rec["requests"] * 1e6 if rec["requests"] else float("nan")


# ---------------------------------------------------------------- the report


def med(recs: list[dict], fn: Any) -> float:
    return statistics.median(fn(r) for r in recs)


def fmt_rate(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Medians of each load/config: rates, p50, CPU per request by role,
    what one core of each role carries, and the cores the run kept busy."""
    out = {}
    for key, recs in runs.items():
        row: dict[str, Any] = {
            "requests_per_s": med(recs, lambda r: r["requests_per_s"]),
            "keys_per_s": med(recs, lambda r: r["keys_per_s"]),
            "p50_ms": med(recs, lambda r: r["p50_ms"]),
            "busy": med(recs, lambda r: sum(r["cpu_s"].values()) / r["elapsed_s"] if r["elapsed_s"] else 0.0),
            "failed": sum(sum(r["errors"].values()) for r in recs),
            "wrong": sum(r["wrong"] for r in recs),
        }
        for role in ROLES:
            us = med(recs, lambda r, role=role: per_request_us(r, role))
            row[f"{role}_us"] = us
            row[f"{role}_core"] = 1e6 / us if us > 0 else float("nan")
        replies = [sum(col) for col in zip(*(r["broker_replies"] for r in recs))]
        row["spread"] = [x / sum(replies) for x in replies] if len(replies) > 1 and sum(replies) else None
        out[key] = row
    return out


def bound(row: dict[str, Any], clients: int, brokers: int, workers: int) -> float:
    """Requests/s the configuration could carry with a free core for every
    process, at these CPU costs per request: its scarcest role."""
    return min(clients * row["client_core"], brokers * row["broker_core"], workers * row["worker_core"])


def render(runs: dict[str, list[dict]], why_no_redis: str | None, args: argparse.Namespace, command: str) -> str:
    cores = os.cpu_count() or 1
    rows = summarize(runs)
    most = args.clients + max(args.brokers) + max(args.workers)
    lines = [
        "## Scale-out: 1 and 2 brokers × 1, 2 and 4 workers (issue 11)",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {machine()}; 1-minute load average {args.load_average[0]:.1f} at the start and "
        f"{args.load_average[1]:.1f} at the end (it counts this run's own processes, and any other work).",
        "",
        f"Each configuration is B brokers and W workers on loopback, every worker connected to every broker, "
        f"serving `{args.data_label}` ({len(load_expected(args.data)):,} keys); the load comes from {args.clients} "
        f"client process{'es' if args.clients > 1 else ''} (AsyncClient over all the brokers, every answer "
        f"checked), each keeping the stated number of calls in flight for {args.duration:g} s. Figures are "
        f"medians of {args.repeats} runs; configurations ran in turn, in a rotating order, repeat after repeat. "
        "CPU µs per request is the CPU time (utime + stime, from /proc/PID/stat, each role's whole process tree) "
        "that all the processes of one role spent in the run, divided by the requests answered; one core of a "
        "role carries 1 / that many requests per second (a get_many request is 100 keys). *Cores busy* is the "
        "CPU time of all roles over the run's wall time. *Bound* is the smallest of clients × client capacity, "
        "brokers × broker capacity and workers × worker capacity: what the configuration would carry at these "
        "costs with a free core for every process.",
        "",
    ]
    if most > cores:
        lines += [
            f"**On this machine ({cores} cores, shared) the figures show CPU cost per request more than "
            f"scaling.** Every configuration runs up to {most} busy processes on {cores} cores, so throughput is "
            "capped by the cores, at about cores busy ÷ (client + broker + worker µs per request): a second "
            "broker or more workers add processes and context switches, not cores, so 2 brokers no faster (or "
            "slower) than 1, and 4 workers no faster than 1, are expected here. What carries over to a bigger "
            "machine is the CPU cost per request of each role and so the capacity of one core of each, and the "
            "*bound* column built from them. Where cores are free, run the same command with enough client "
            "processes (`--clients N`, until client capacity × N exceeds the brokers' and workers' bound); "
            "single-key throughput should then grow with brokers (goal: 2 brokers ≥ 1.6 × one) and with workers "
            "until the cores run out, and batched keys/s should reach at least twice one Redis instance driven "
            "by the same Python clients. Runs on this shared machine differ by 25% and more: CPU per request "
            "is steadier than rates.",
            "",
        ]
    else:
        lines += [
            f"This machine has {cores} cores for at most {most} busy processes: the goals below can be "
            "judged on these figures.",
            "",
        ]
    lines += [
        "| load (per client process) | brokers × workers | req/s | keys/s | vs 1 broker | p50 ms | cores busy | "
        "CPU µs per request: client / broker / worker | one core carries, req/s: client / broker / worker | "
        "bound, req/s | replies per broker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load in (LOADS[name] for name in args.loads):
        for b in args.brokers:
            for w in args.workers:
                row = rows.get(f"{load.name}/{b}b{w}w")
                if row is None:
                    continue
                one = rows.get(f"{load.name}/1b{w}w")
                vs = f"{row['requests_per_s'] / one['requests_per_s']:.2f}" if one and b != 1 else "—"
                spread = " / ".join(f"{x:.0%}" for x in row["spread"]) if row["spread"] else "—"
                lines.append(
                    f"| {load.title} | {b} × {w} | {fmt_rate(row['requests_per_s'])} | "
                    f"{fmt_rate(row['keys_per_s'])} | {vs} | {row['p50_ms']:.2f} | {row['busy']:.2f} | "
                    + " / ".join(f"{row[f'{r}_us']:.1f}" for r in ROLES)
                    + " | "
                    + " / ".join(fmt_rate(row[f"{r}_core"]) for r in ROLES)
                    + " | "
                    f"{fmt_rate(bound(row, args.clients, b, w))} | {spread} |"
                )
        redis = rows.get(f"{load.name}/redis")
        if redis is not None:
            lines.append(
                f"| {load.title} (pipelines of {load.concurrency} MGETs) | Redis: 1 redis-server | "
                f"{fmt_rate(redis['requests_per_s'])} | {fmt_rate(redis['keys_per_s'])} | — | "
                f"{redis['p50_ms']:.2f} | {redis['busy']:.2f} | {redis['client_us']:.1f} / — / "
                f"{redis['worker_us']:.1f} (server) | {fmt_rate(redis['client_core'])} / — / "
                f"{fmt_rate(redis['worker_core'])} | "
                f"{fmt_rate(min(args.clients * redis['client_core'], redis['worker_core']))} | — |"
            )
    lines += ["", *goals(rows, args, why_no_redis, most <= cores), ""]
    failed = sum(r["failed"] for r in rows.values())
    wrong = sum(r["wrong"] for r in rows.values())
    if failed or wrong:
        lines += [f"**{failed:,} requests got no answer and {wrong:,} got a wrong one: see the raw runs.**", ""]
    else:
        lines += ["Every request of every run got its right answer.", ""]
    if why_no_redis:
        lines += [f"Redis comparison skipped: {why_no_redis}.", ""]
    lines += ["Raw runs, req/s (and replies per broker where several):", ""]
    for key, recs in runs.items():
        cells = []
        for r in recs:
            cell = f"{r['requests_per_s']:,.0f}"
            if len(r["broker_replies"]) > 1:
                cell += " (" + "/".join(str(x) for x in r["broker_replies"]) + ")"
            if sum(r["errors"].values()) or r["wrong"]:
                cell += f" [no answer {sum(r['errors'].values())}, wrong {r['wrong']}]"
            cells.append(cell)
        lines.append(f"- {key}: " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def goals(
    rows: dict[str, dict[str, Any]], args: argparse.Namespace, why_no_redis: str | None, cores_free: bool
) -> list[str]:
    """The issue's goals against these figures, each marked met or missed;
    on a machine without a core per process, for reading only."""
    note = "" if cores_free else " (no free cores here: for reading, not a verdict)"
    out = [f"Goals{note}:", ""]

    def rate(load: str, b: int, w: int, key: str = "requests_per_s") -> float | None:
        row = rows.get(f"{load}/{b}b{w}w")
        return row[key] if row else None

    for load in (LOADS[n] for n in args.loads if LOADS[n].keys == 1):
        if 1 in args.brokers and 2 in args.brokers:
            parts = []
            for w in args.workers:
                one, two = rate(load.name, 1, w), rate(load.name, 2, w)
                if one and two:
                    parts.append(
                        f"{w} worker{'s' if w > 1 else ''} {two / one:.2f} × "
                        f"({'met' if two / one >= 1.6 else 'missed'})"
                    )
            out.append(f"- {load.title}: 2 brokers ≥ 1.6 × 1 broker: " + "; ".join(parts))
        if len(args.workers) > 1:
            parts = []
            for b in args.brokers:
                rates = [(w, rate(load.name, b, w)) for w in args.workers]
                steps = [
                    f"{w1}→{w2} workers {r2 / r1:.2f} ×" for (w1, r1), (w2, r2) in zip(rates, rates[1:]) if r1 and r2
                ]
                parts.append(f"{b} broker{'s' if b > 1 else ''}: " + ", ".join(steps))
            out.append(f"- {load.title}: grows with workers until the cores run out: " + "; ".join(parts))
    redis = rows.get(f"{REDIS_LOAD}/redis")
    if redis is not None:
        best = max(
            (rows[k]["keys_per_s"], k.split("/")[1])
            for k in rows
            if k.startswith(f"{REDIS_LOAD}/") and not k.endswith("/redis")
        )
        ratio = best[0] / redis["keys_per_s"]
        out.append(
            f"- get_many of 100: keys/s ≥ 2 × one Redis instance: best rokv configuration ({best[1]}) "
            f"{ratio:.2f} × Redis's {fmt_rate(redis['keys_per_s'])} keys/s "
            f"({'met' if ratio >= 2 else 'missed'})"
        )
    elif REDIS_LOAD in args.loads:
        out.append(f"- get_many of 100: keys/s ≥ 2 × one Redis instance: not measured ({why_no_redis})")
    out += projections(rows, args)
    return out


def projections(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """What the goals take where cores are free, at the CPU costs of the
    smallest configuration (the least contended): how many processes of each
    role, a core each. A guide for sizing a run on a bigger machine, no more:
    costs per request change with load and batching."""
    b, w = min(args.brokers), min(args.workers)
    out = []

    def need(rate: float, row: dict[str, Any], role: str) -> int:
        return max(1, math.ceil(rate / row[f"{role}_core"]))

    for load in (LOADS[n] for n in args.loads if LOADS[n].keys == 1):
        row = rows.get(f"{load.name}/{b}b{w}w")
        if row is None:
            continue
        two = 2 * row["broker_core"]
        c, k = need(two, row, "client"), need(two, row, "worker")
        out.append(
            f"- projection, {load.title}: one broker core carries {fmt_rate(row['broker_core'])} req/s; "
            f"to load 2 brokers fully takes about {c} client processes and {k} workers, {c + k + 2} cores "
            "in all"
        )
    row, redis = rows.get(f"{REDIS_LOAD}/{b}b{w}w"), rows.get(f"{REDIS_LOAD}/redis")
    if row is not None and redis is not None:
        target = 2 * redis["worker_core"]  # requests/s of 100 keys: twice one redis-server core
        keys = LOADS[REDIS_LOAD].keys
        out.append(
            f"- projection, get_many of 100: one redis-server core carries {fmt_rate(keys * redis['worker_core'])} "
            f"keys/s; twice that takes about {need(target, row, 'client')} client processes, "
            f"{need(target, row, 'broker')} brokers and {need(target, row, 'worker')} workers at rokv's "
            f"costs (one core of each carries {fmt_rate(keys * row['client_core'])} / "
            f"{fmt_rate(keys * row['broker_core'])} / {fmt_rate(keys * row['worker_core'])} keys/s)"
        )
    if out:
        out.insert(0, f"- (projections use the CPU costs of {b} × {w} and assume a free core for every process)")
    return out


def write_section(path: Path, section: str) -> None:
    """Replace what lies between this script's markers in ``path``."""
    write_block(path, BEGIN, END, f"{BEGIN}\n{section}{END}")


# ---------------------------------------------------------------- the command


def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers >= 1, comma-separated")
    return sorted(set(values))


def _loads(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in LOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown load {unknown[0] if unknown else text!r}; choose among {', '.join(LOADS)}"
        )
    return [n for n in LOADS if n in names]


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--brokers", type=_counts, default=[1, 2], help="broker counts, comma-separated")
    parser.add_argument("--workers", type=_counts, default=[1, 2, 4], help="worker counts, comma-separated")
    parser.add_argument(
        "--loads", type=_loads, default=list(LOADS), help=f"loads, comma-separated, among {', '.join(LOADS)}"
    )
    parser.add_argument(
        "--clients",
        type=_positive(int),
        default=1,
        help="client processes driving each run (more where cores are free)",
    )
    parser.add_argument("--duration", type=_positive(float), default=3.0, help="seconds per run")
    parser.add_argument("--repeats", type=_positive(int), default=3, help="runs of each load and configuration")
    parser.add_argument(
        "--data",
        default="data/example.json",
        help="dataset the workers serve and the clients check against (.json or .jsonl)",
    )
    parser.add_argument("--io-threads", type=_positive(int), default=1, help="each broker's libzmq I/O threads")
    parser.add_argument(
        "--start-timeout",
        type=_positive(float),
        default=120.0,
        help="seconds for stacks and client processes to come up",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis comparison")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print the section; do not touch --out")
    parser.add_argument("--json", help="also write every raw run to this file")
    args = parser.parse_args(argv)
    if args.duration > 3600:
        parser.error("--duration: at most 3600 s")
    data = Path(args.data) if Path(args.data).is_absolute() else REPO / args.data
    try:
        load_expected(str(data))
    except ValueError as exc:
        parser.error(str(exc))
    args.data_label, args.data = args.data, str(data)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/scaleout.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # SIGTERM unwinds like Ctrl-C, through every finally that stops a process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    cores = os.cpu_count() or 1
    busiest = args.clients + max(args.brokers) + max(args.workers)
    if busiest > cores:
        print(
            f"note: up to {busiest} busy processes on {cores} cores: these runs measure CPU cost per request "
            "more than scaling",
            file=sys.stderr,
        )
    log_dir = Path(tempfile.mkdtemp(prefix="rokv-scaleout-"))
    started_load = os.getloadavg()[0]
    try:
        runs, why_no_redis = measure(args, log_dir)
    except Exception as exc:  # noqa: BLE001 - any failure: say where the logs are
        print(f"scaleout: {exc}\nlogs kept in {log_dir}", file=sys.stderr)
        return 1
    args.load_average = (started_load, os.getloadavg()[0])
    shutil.rmtree(log_dir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1, sort_keys=True), encoding="utf-8")
    section = render(runs, why_no_redis, args, command.strip())
    print(section)
    if not args.no_write:
        write_section(Path(args.out), section)
        print(f"wrote {args.out}", file=sys.stderr)
    bad = sum(sum(r["errors"].values()) + r["wrong"] for recs in runs.values() for r in recs)
    if bad:
        print(f"scaleout: {bad:,} requests failed or were answered wrongly", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
