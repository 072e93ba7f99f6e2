"""``rokv status``: is everything this host's supervisord runs for rokv serving?

``supervisorctl status`` exits 0 while a program is STARTING or in BACKOFF
(for about 9 s with a missing dataset, before FATAL): that is supervisor's
rule, not "serving". This command exits 0 only when

1. the pool's programs (``pool``, and the groups rokv-pool writes:
   ``metrics``, ``broker``, ``worker``, ``http``) are all RUNNING, and at
   least a broker or a worker is among them; and
2. every worker answers a ping, through the broker, with its own pid.

Otherwise it exits 3 and names each program that is not serving and why:
its state, supervisor's description and the last lines of its log. The
pings go to ``--endpoint``, else ``$ROKV_ENDPOINT``, else the frontend of
this host's broker (read from the broker's environment when supervisord runs
on this host), else ``$ROKV_FRONTEND`` and the default. A host that runs
workers without a broker (``ROKV_ROLE=worker``) and no endpoint given cannot
ping them: the report says so and judges their state only.

The supervisord is the one ``supervisorctl -c FILE`` talks to (``-c``, else
``$ROKV_SUPERVISOR_CONF``, else ./supervisord.conf). Exit codes are
:data:`rokv.exitcodes.PROGRAMS` ``["rokv status"]``.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rokv.exitcodes import Exit, epilog
from rokv.ops import supervisor_rpc
from rokv.ops.pool import MANAGED
from rokv.ops.supervisor_rpc import Process, Refused, Supervisor, SupervisorConfigError, SupervisorUnreachable

#: The program supervisord.conf runs, which writes and starts the others.
POOL_PROGRAM = "pool"
#: The pool's groups, in the order they are reported: the pool itself, then
#: the ones it writes.
GROUPS = (POOL_PROGRAM, *MANAGED)
WORKER_GROUP = "worker"
#: How long all workers have, together, to answer; the image's health check
#: gives 2 s.
DEFAULT_TIMEOUT = 5.0
#: One ping's wait for its reply; unanswered pings are simply sent again.
PING_TIMEOUT = 0.5
#: Pause between pings: enough to reach every worker quickly.
PING_INTERVAL = 0.02
#: Lines of a program's log shown when it is not serving.
LOG_LINES = 5


# ------------------------------------------------------------------ pinging workers


def from_worker(info: dict[str, Any], pid: int, host: str | None) -> bool:
    """Whether a ping's reply came from the process ``pid`` (on ``host``,
    when known: workers of other hosts may share the broker, and pids)."""
    return info.get("pid") == pid and (host is None or info.get("host") in (None, host))


def local_host(supervisor: Supervisor) -> str | None:
    """This host's name when ``supervisor`` runs here (reached by its unix
    socket), so its processes' pids are this host's; else None."""
    return socket.gethostname() if supervisor.serverurl.startswith("unix://") else None


@dataclass
class Survey:
    """What each worker said (``answers`` by process name, from the ones
    that answered), whether anything replied at all, and how long it took."""

    answers: dict[str, dict[str, Any]]
    replied: bool
    waited: float


def survey(
    ping: Callable[[], dict[str, Any] | None],
    workers: list[Process],
    host: str | None,
    timeout: float,
    reach_timeout: float | None = None,
) -> Survey:
    """Ping until every one of ``workers`` has answered, or for ``timeout``
    seconds; with no reply at all, stop after ``reach_timeout``. Through a
    broker each ping reaches one worker (round robin), so this takes about
    as many pings as workers."""
    pending = {w.pid: w for w in workers}
    answers: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    replied = False
    while pending:
        info = ping()
        if info is not None:
            replied = True
            worker = next((w for pid, w in pending.items() if from_worker(info, pid, host)), None)
            if worker is not None:
                del pending[worker.pid]
                answers[worker.name] = info
                continue
        waited = time.monotonic() - started
        if waited > timeout or (not replied and reach_timeout is not None and waited > reach_timeout):
            break
        time.sleep(PING_INTERVAL)
    return Survey(answers, replied, time.monotonic() - started)


def broker_frontend(supervisor: Supervisor, broker: Process | None) -> str | None:
    """The frontend this host's broker serves (its ``ROKV_FRONTEND``, a
    wildcard host turned into loopback), read from its environment when it
    runs on this host; None when that cannot be read."""
    if broker is None or broker.state != "RUNNING" or local_host(supervisor) is None:
        return None
    try:
        with open(f"/proc/{broker.pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = dict(item.decode("utf-8", "replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)
    from rokv.gateway.settings import endpoint_from_env  # standard library only

    return endpoint_from_env({"ROKV_FRONTEND": env.get("ROKV_FRONTEND", "")})


# ------------------------------------------------------------------ the report


@dataclass
class Entry:
    """One program of the pool, and what is wrong with it (None: serving)."""

    process: Process
    problem: str | None = None
    log: list[str] = field(default_factory=list)
    answer: dict[str, Any] | None = None


@dataclass
class Report:
    """The pool's programs, what is wrong, and how the workers were pinged."""

    serverurl: str
    entries: list[Entry]
    endpoint: str | None
    #: Problems that belong to no one program (nothing loaded, no answer at all).
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failing(self) -> list[Entry]:
        return [e for e in self.entries if e.problem is not None]

    @property
    def ok(self) -> bool:
        return not self.failing and not self.problems

    def lines(self) -> list[str]:
        """The report as text: a line per program (with its log's end when
        it is not serving), notes, then a verdict."""
        width = max((len(shown(e.process)) for e in self.entries), default=0)
        out: list[str] = []
        for e in self.entries:
            p = e.process
            state = f"{shown(p):<{width}}  {p.state:<8}"
            if e.problem is None:
                detail = f"pid {p.pid}"
                if e.answer is not None:
                    detail += f", answers: {_digest(e.answer)} from {e.answer.get('dataset')}"
                out.append(f"{state}  {detail}")
            else:
                out.append(f"{state}  NOT SERVING: {e.problem}")
                out.extend(f"    | {line}" for line in e.log)
        out.extend(f"note: {n}" for n in self.notes)
        out.extend(f"NOT SERVING: {p}" for p in self.problems)
        if self.ok:
            workers = sum(1 for e in self.entries if e.process.group == WORKER_GROUP)
            out.append(f"serving: {len(self.entries)} programs RUNNING, {workers} workers")
        else:
            names = ", ".join(shown(e.process) for e in self.failing)
            out.append(f"not serving: {names or 'see above'} (supervisord at {self.serverurl})")
        return out


def shown(process: Process) -> str:
    """A process's name as supervisorctl shows it: ``broker``, ``worker:worker_00``."""
    return process.process if process.process == process.group else process.name


def _digest(info: dict[str, Any]) -> str:
    digest = info.get("digest")
    if not digest:
        return f"{info.get('keys')} keys"
    name, _, hexdigits = str(digest).partition(":")
    return f"{name}:{hexdigits[:16]}..."


def pool_processes(supervisor: Supervisor) -> list[Process]:
    """The pool's processes under ``supervisor``, in :data:`GROUPS` order.

    Raises:
        SupervisorUnreachable: no answer (or a refusal).
    """
    try:
        infos = supervisor.call("supervisor.getAllProcessInfo")
    except Refused as exc:
        raise SupervisorUnreachable(f"supervisord at {supervisor.serverurl} refused getAllProcessInfo: {exc}") from None
    found: dict[str, list[Process]] = {g: [] for g in GROUPS}
    for info in infos:
        if info["group"] in found:
            found[info["group"]].append(Process.from_info(info))
    return [p for g in GROUPS for p in sorted(found[g], key=lambda p: p.name)]


def check(
    supervisor: Supervisor,
    endpoint: str | None,
    timeout: float = DEFAULT_TIMEOUT,
    client_factory: Callable[[str], Any] | None = None,
) -> Report:
    """Look at every program of the pool and ping every RUNNING worker.

    ``endpoint``: where to ping (None: found as the module docstring says).

    Raises:
        SupervisorUnreachable: supervisord did not answer.
        ValueError: a bad endpoint or CURVE key file (from the client).
    """
    processes = pool_processes(supervisor)
    entries = [Entry(p) for p in processes]
    report = Report(supervisor.serverurl, entries, None)
    for e in entries:
        if e.process.state != "RUNNING":
            p = e.process
            e.problem = p.description or p.state
            if p.spawnerr and p.spawnerr not in p.description:
                e.problem += f": {p.spawnerr}"
            e.log = supervisor.log_since(e.process.name, None, LOG_LINES)
    groups = {p.group for p in processes}
    if not groups & {"broker", WORKER_GROUP}:
        pool = next((e for e in entries if e.process.group == POOL_PROGRAM), None)
        if pool is None:
            report.problems.append(
                f"supervisord at {supervisor.serverurl} runs no rokv program (is it the pool's supervisord.conf?)"
            )
        elif pool.problem is None:
            report.problems.append("no broker or worker program is loaded yet (rokv-pool is still starting them?)")

    workers = [e for e in entries if e.process.group == WORKER_GROUP and e.process.state == "RUNNING"]
    if not workers:
        return report
    if endpoint is None:
        endpoint = os.environ.get("ROKV_ENDPOINT", "").strip() or None
    if endpoint is None:
        broker = next((p for p in processes if p.group == "broker"), None)
        if broker is None:
            report.notes.append(
                "workers not pinged: this host runs no broker; give --endpoint (or ROKV_ENDPOINT) "
                "to ping them through one"
            )
            return report
        endpoint = broker_frontend(supervisor, broker)
    if endpoint is None:
        from rokv.gateway.settings import endpoint_from_env

        endpoint = endpoint_from_env(os.environ)
    report.endpoint = endpoint
    client = (client_factory or _client)(endpoint)
    try:
        result = survey(_pinger(client), [e.process for e in workers], local_host(supervisor), timeout)
    finally:
        client.close()
    for e in workers:
        e.answer = result.answers.get(e.process.name)
        if e.answer is None:
            e.problem = (
                f"RUNNING but did not answer a ping through {endpoint} in {timeout:g} s"
                if result.replied
                else f"RUNNING but nothing answered through {endpoint} in {timeout:g} s (is it this pool's broker?)"
            )
            e.log = supervisor.log_since(e.process.name, None, LOG_LINES)
    digests = {str(e.answer.get("digest")) for e in workers if e.answer is not None}
    if len(digests) > 1:
        report.notes.append(
            f"the workers serve {len(digests)} versions: a deploy was cut short? `rokv deploy` of the "
            f"link's file finishes it"
        )
    return report


def _client(endpoint: str) -> Any:
    from rokv.sync import Client

    return Client(endpoint, timeout=PING_TIMEOUT, retries=0)


def _pinger(client: Any) -> Callable[[], dict[str, Any] | None]:
    from rokv.errors import RokvError

    def ping() -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = client.ping()
            return info
        except RokvError:
            return None

    return ping


# ------------------------------------------------------------------ the command


def _print(text: str, err: bool = False) -> None:
    """A line of the report. Never raises (a closed pipe must not turn an
    answer into a traceback)."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def cmd_status(args: argparse.Namespace) -> int:
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        _print(f"rokv: error: --timeout must be a number of seconds > 0, not {args.timeout:g}", err=True)
        return Exit.USAGE
    configuration = supervisor_rpc.configuration(args)
    try:
        supervisor = Supervisor.from_config(configuration)
    except SupervisorConfigError as exc:
        _print(f"rokv: {exc}", err=True)
        return Exit.USAGE
    try:
        report = check(supervisor, args.endpoint, args.timeout)
    except SupervisorUnreachable as exc:
        _print(f"rokv: not serving: {exc} (is supervisord running with -c {configuration}?)", err=True)
        return Exit.UNAVAILABLE
    except ValueError as exc:  # a bad endpoint or CURVE key file, from the client
        _print(f"rokv: error: {exc}", err=True)
        return Exit.USAGE
    for line in report.lines():
        _print(line)
    return Exit.OK if report.ok else Exit.UNAVAILABLE


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status`` on the ``rokv`` parser (rokv.cli loads this
    module when the command runs)."""
    from rokv.endpoints import endpoints_argument

    p = sub.add_parser(
        "status",
        description="Exit 0 when every program of this host's pool is RUNNING under supervisord and every "
        "worker answers a ping; else exit 3, naming what is not serving and why (the end of its log).",
        epilog=epilog("rokv status"),
    )
    supervisor_rpc.add_configuration_option(p)
    p.add_argument(
        "--endpoint",
        default=None,
        type=endpoints_argument(),
        help="broker frontend for the pings (default: $ROKV_ENDPOINT, else this host's broker)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long the workers have to answer, all together (default %(default)g)",
    )
    p.set_defaults(run=cmd_status)
