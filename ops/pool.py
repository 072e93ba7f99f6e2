"""``rokv-pool``: turn this host's ROKV_* settings into supervisor programs.

Supervisor cannot take a program's ``numprocs`` (or whether a program exists at
all) from an environment variable that may be unset: ``%(ENV_X)s`` has no
default, and supervisord refuses to start when ``X`` is unset. So
``supervisord.conf`` runs only this program, plus an ``[include]`` of the file
it writes. At supervisord's start, rokv-pool:

1. reads and checks the settings (``ROKV_ROLE``: all, broker or worker;
   ``ROKV_WORKERS``; defaults when unset);
2. writes the broker and worker programs they call for into that file (the
   workers as ``[program:worker]`` with ``numprocs=ROKV_WORKERS``, so any count
   works and no idle slots are listed), the HTTP gateway (``rokv-http``) as
   ``[program:http]`` when ``ROKV_HTTP`` is set, and ``rokv-metrics`` as
   ``[program:metrics]`` when ``ROKV_METRICS`` names a scrape address (every
   rokv program then publishes into run/metrics, emptied here first);
3. has supervisord load the file, as ``supervisorctl update`` would, and starts
   the programs; they are then ordinary supervised programs (restarted when
   they die, stopped with SIGTERM);
4. stays RUNNING until supervisord stops it: a RUNNING ``pool`` is part of
   "everything rokv runs on this host is RUNNING", which ``rokv status``
   (:mod:`rokv.ops.status`) checks, with a ping of every worker.

A bad setting is refused: rokv-pool prints why and exits 2 before starting
anything, supervisor marks it FATAL, and ``rokv status`` exits 3 with the
reason (so does ``supervisorctl status``; ``supervisorctl tail pool`` shows
it too). It first empties the included file and has supervisord drop the
programs it read from the previous run's copy, so no status lists them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xmlrpc.client import Fault

from rokv.exitcodes import Exit, epilog
from rokv.hostport import METRICS_ENV, parse_address
from rokv.ops import metricfiles
from rokv.server import metrics

DEFAULT_WORKERS = 2
#: The process groups this program owns; any others in the configuration are
#: left to the operator.
MANAGED = ("metrics", "broker", "worker", "http")
#: How long rokv-pool keeps asking a busy supervisord to load its programs.
RPC_PATIENCE_SECONDS = 30.0


class SettingError(ValueError):
    """A ROKV_* variable holds a value rokv cannot run with."""


#: ROKV_ROLE: what a host runs. One configuration serves every host of a pool.
ROLES = {
    "all": ("broker", "worker"),  # the default: a pool on one host
    "broker": ("broker",),
    "worker": ("worker",),
}
DEFAULT_ROLE = "all"


@dataclass(frozen=True)
class Settings:
    """What this host runs."""

    role: str
    workers: int
    #: ROKV_METRICS: this host's scrape address (HOST:PORT), or None: off.
    metrics: str | None = None

    @property
    def broker(self) -> bool:
        return "broker" in ROLES[self.role]

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str]) -> Settings:
        """Read the settings.

        Raises:
            SettingError: a variable is set to something unusable; the message
                names it, its value and what is expected.
        """
        role = env.get("ROKV_ROLE", "").strip().lower() or DEFAULT_ROLE
        if role not in ROLES:
            raise SettingError(
                f"ROKV_ROLE={env.get('ROKV_ROLE')!r}: expected one of {', '.join(ROLES)} (default {DEFAULT_ROLE})"
            )
        scrape = env.get(METRICS_ENV, "").strip() or None
        if scrape is not None:
            try:
                parse_address(scrape)
            except ValueError as exc:
                raise SettingError(f"{METRICS_ENV}: {exc}") from None
        if "worker" not in ROLES[role]:
            return cls(role=role, workers=0, metrics=scrape)
        raw = env.get("ROKV_WORKERS", "").strip()
        if not raw:
            return cls(role=role, workers=DEFAULT_WORKERS, metrics=scrape)
        try:
            workers = int(raw)
        except ValueError:
            raise SettingError(
                f"ROKV_WORKERS={raw!r} is not a whole number: expected a count of workers, "
                f"1 or more (default {DEFAULT_WORKERS})"
            ) from None
        if workers < 1:
            raise SettingError(f"ROKV_WORKERS={raw!r}: a pool needs at least 1 worker")
        return cls(role=role, workers=workers, metrics=scrape)


def http_from_env(env: dict[str, str] | os._Environ[str]) -> str | None:
    """``ROKV_HTTP``, checked as rokv-http reads it, or None when unset (no gateway).

    Raises:
        SettingError: it is not HOST:PORT (the message says why).
    """
    raw = env.get("ROKV_HTTP", "").strip()
    if not raw:
        return None
    # Standard library only: this check needs no HTTP server installed.
    from rokv.gateway.settings import SettingError as BadBind
    from rokv.gateway.settings import parse_bind

    try:
        parse_bind(raw)
    except BadBind as exc:
        raise SettingError(str(exc)) from None
    return raw


# startsecs=2: a worker that refuses its dataset exits well within it (a
# refusal it remembers is found before anything is loaded), so supervisor
# counts that as a failed start and, after startretries, marks it FATAL; on a
# busy machine a Python start alone can take most of a second.
_COMMON = """\
directory={here}
autostart=false
autorestart=true
startsecs=2
startretries=3
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
"""


def render(settings: Settings, here: Path, http: str | None = None) -> str:
    """The supervisor configuration for ``settings``; paths under ``here``
    (the folder of supervisord.conf, where relative ROKV_DATA paths point);
    with ``http`` (ROKV_HTTP), the gateway too."""
    common = _COMMON.format(here=here)
    if settings.metrics:
        # Every program publishes into the folder rokv-metrics serves from.
        common += f'environment={metrics.DIR_ENV}="{metrics_dir(here)}"\n'
    sections = [
        f"; Written by rokv-pool at each start of supervisord from the ROKV_* variables (role {settings.role});\n"
        "; edits are lost. autostart=false: rokv-pool starts these once the file is loaded, so a stale\n"
        "; copy read at supervisord's start never runs.\n"
    ]
    if settings.metrics:
        sections.append(
            f"[program:metrics]\ncommand=rokv-metrics --listen {settings.metrics}\npriority=5\n{common}"
            f"stdout_logfile={here}/run/metrics.log\n"
        )
    if settings.broker:
        sections.append(
            f"[program:broker]\ncommand=rokv-broker\npriority=10\n{common}stdout_logfile={here}/run/broker.log\n"
        )
    if settings.workers:
        sections.append(
            f"[program:worker]\ncommand=rokv-worker\nprocess_name=worker_%(process_num)02d\n"
            f"numprocs={settings.workers}\npriority=20\n{common}"
            f"stdout_logfile={here}/run/worker_%(process_num)02d.log\n"
        )
    if http:
        # rokv-http reads ROKV_HTTP itself; stopped first (highest priority),
        # it answers what is in flight while the workers still run.
        sections.append(f"[program:http]\ncommand=rokv-http\npriority=30\n{common}stdout_logfile={here}/run/http.log\n")
    return "\n".join(sections)


def metrics_dir(here: Path) -> Path:
    """The folder every program of this host publishes its metrics into."""
    return here / "run" / "metrics"


def write_if_changed(path: Path, text: str) -> bool:
    """Replace ``path`` atomically with ``text`` unless it holds it already."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def apply(rpc: Any, metrics_folder: Path | None = None) -> list[str]:
    """Have supervisord load the written file for the groups rokv owns, as
    ``supervisorctl update`` does, then start every program of those groups
    that is not running; the groups now configured. ``metrics_folder`` is
    emptied first when no rokv program runs (supervisord's start): totals
    start again at 0 with the pool, never under a running process."""
    if metrics_folder is not None and not any(
        info["group"] in MANAGED and info["statename"] not in ("STOPPED", "EXITED", "FATAL")
        for info in rpc.supervisor.getAllProcessInfo()
    ):
        metricfiles.clear(metrics_folder)
    added, changed, removed = rpc.supervisor.reloadConfig()[0]
    for name in [*removed, *changed]:
        if name in MANAGED:
            rpc.supervisor.stopProcessGroup(name, True)
            rpc.supervisor.removeProcessGroup(name)
    for name in [*added, *changed]:
        if name in MANAGED:
            rpc.supervisor.addProcessGroup(name)
    groups = sorted({info["group"] for info in rpc.supervisor.getAllProcessInfo()} & set(MANAGED), key=MANAGED.index)
    for group in groups:
        # wait=False: a worker that takes a minute to map a big dataset must
        # not hold up the others; supervisor reports each start in its log.
        rpc.supervisor.startProcessGroup(group, False)
    return groups


#: What the included file holds after a refused setting: no programs.
NOTHING = "; Written by rokv-pool: a ROKV_* setting was refused (see run/pool.log), so no program runs.\n"


def unload(include: Path, childutils: Any) -> None:
    """After a refused setting: empty the included file, and have
    supervisord drop the programs it read from the previous run's copy at
    its start, so that no status lists them as if they were this run's.
    One quick try: supervisord marks this program FATAL only if it exits
    within ``startsecs``; the emptied file does it at the next start anyway."""
    try:
        write_if_changed(include, NOTHING)
    except OSError:
        return
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        return
    try:
        apply(childutils.getRPCInterface(os.environ))
    except (Fault, OSError) as exc:
        print(f"rokv-pool: could not unload the previous run's programs: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rokv-pool",
        description="Run this host's rokv programs under supervisord, from the ROKV_* variables "
        "(started by supervisord itself, which sets SUPERVISOR_SERVER_URL).",
        epilog=epilog("rokv-pool"),
    )
    parser.add_argument(
        "--here", required=True, type=Path, help="the folder of supervisord.conf: relative paths and logs are under it"
    )
    parser.add_argument(
        "--include", type=Path, default=None, help="the file supervisord.conf includes (default HERE/run/pool.conf)"
    )
    args = parser.parse_args(argv)
    include: Path = args.include or args.here / "run" / "pool.conf"
    try:  # only here: --help needs no server extra
        from supervisor import childutils
    except ModuleNotFoundError as exc:
        print(
            f"rokv-pool needs {exc.name}, which comes with the server extra: pip install 'rokv[server]'",
            file=sys.stderr,
        )
        return Exit.USAGE
    try:
        settings = Settings.from_env(os.environ)
        http = http_from_env(os.environ)
    except SettingError as exc:
        print(f"rokv-pool: refusing to start the pool: {exc}", file=sys.stderr, flush=True)
        unload(include, childutils)
        return Exit.USAGE
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        parser.error("SUPERVISOR_SERVER_URL is not set: supervisord runs me")
    if settings.workers > 4 * (os.cpu_count() or 1):
        print(
            f"rokv-pool: warning: {settings.workers} workers on {os.cpu_count()} cores; "
            "more workers than cores add no throughput",
            file=sys.stderr,
            flush=True,
        )

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    write_if_changed(include, render(settings, args.here.resolve(), http))
    rpc: Any = childutils.getRPCInterface(os.environ)
    # supervisord may still be busy starting: transient refusals are retried
    # here, since supervisor itself does not retry this program (a bad
    # setting must end FATAL at once).
    deadline = time.monotonic() + RPC_PATIENCE_SECONDS
    while True:
        try:
            groups = apply(rpc, metrics_dir(args.here.resolve()) if settings.metrics else None)
            break
        except (Fault, OSError) as exc:
            if time.monotonic() > deadline:
                print(
                    f"rokv-pool: supervisord refused the generated configuration {include}: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                return Exit.NO
            time.sleep(0.5)
    print(
        f"rokv-pool: role {settings.role}: started {' and '.join(groups) or 'nothing'} "
        f"({settings.workers} workers) from {include}",
        flush=True,
    )
    # Stay up: a RUNNING pool program is part of "everything is running".
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
