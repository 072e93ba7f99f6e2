"""``rokv status``: exit 0 only when every program of the pool is RUNNING and
every worker answers; else 3, naming what is not serving and why. Against the
real supervisord running the real supervisord.conf; the image's health check
(docker/healthcheck.py) runs the same command for the roles under supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rokv.exitcodes import Exit

from support.procs import REPO, child_env, free_port, scaled, seen_workers, wait_for
from support.supervision import Supervisor


def rokv_status(sup: Supervisor | Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    conf = sup.conf if isinstance(sup, Supervisor) else sup
    return subprocess.run(
        [sys.executable, "-m", "rokv", "status", "-c", str(conf), *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


def health(sup: Supervisor, **env: str) -> subprocess.CompletedProcess[str]:
    """The image's health check, run here on the test's supervisord."""
    return subprocess.run(
        [sys.executable, str(REPO / "docker" / "healthcheck.py")],
        env=child_env(ROKV_SUPERVISOR_CONF=str(sup.conf), **env),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


def ports() -> dict[str, str]:
    return {"ROKV_FRONTEND": f"tcp://127.0.0.1:{free_port()}", "ROKV_BACKEND": f"tcp://127.0.0.1:{free_port()}"}


def test_status_exits_0_only_while_every_program_runs_and_every_worker_answers(supervisor_factory) -> None:
    env = ports()
    sup = supervisor_factory(ROKV_WORKERS="2", **env)
    seen_workers(env["ROKV_FRONTEND"], 2, timeout=30)
    wait_for(lambda: len(sup.running()) == 4, 15, "pool, broker and two workers RUNNING")

    # Run without ROKV_* variables, as from an operator's shell: the pings find
    # the broker's frontend (a free port, not the default) by themselves.
    ok = rokv_status(sup)
    assert ok.returncode == Exit.OK, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["pool", "broker", "worker:worker_00", "worker:worker_01"]
    assert all("RUNNING" in line for line in lines[:4])
    assert sum("answers: 10000 keys from data/example.json" in line for line in lines) == 2
    assert lines[-1] == "serving: 4 programs RUNNING, 2 workers"
    assert health(sup, ROKV_ROLE="all", **env).returncode == 0

    # A worker stuck (SIGSTOP): RUNNING to supervisor, silent to clients.
    stuck = sup.running()["worker:worker_01"]
    os.kill(stuck, signal.SIGSTOP)
    try:
        silent = rokv_status(sup, "--timeout", "1")
        assert sup.ctl("status").returncode == 0  # supervisor's view: all is well
        checked = health(sup, ROKV_ROLE="worker", **env)
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert silent.returncode == Exit.UNAVAILABLE, silent.stdout + silent.stderr
    assert "worker:worker_01  RUNNING   NOT SERVING: RUNNING but did not answer a ping through" in silent.stdout
    assert "INFO serving data/example.json" in silent.stdout  # the end of its log
    assert silent.stdout.splitlines()[-1].startswith("not serving: worker:worker_01 (supervisord at unix://")
    assert checked.returncode == Exit.UNAVAILABLE, checked.stdout

    # A worker stopped.
    assert sup.ctl("stop", "worker:worker_00").returncode == 0
    down = rokv_status(sup)
    assert down.returncode == Exit.UNAVAILABLE, down.stdout
    assert "worker:worker_00  STOPPED   NOT SERVING:" in down.stdout
    assert "INFO stopped" in down.stdout
    assert health(sup, ROKV_ROLE="all", **env).returncode != 0

    assert sup.ctl("start", "worker:worker_00").returncode == 0
    again = wait_for(lambda: (r := rokv_status(sup)).returncode == 0 and r, 30, "rokv status to exit 0 again")
    assert "NOT SERVING" not in again.stdout


@pytest.mark.slow
def test_status_is_3_while_a_worker_cannot_start_though_supervisorctl_says_0(
    supervisor_factory, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.json"
    sup = supervisor_factory(ROKV_WORKERS="1", ROKV_DATA=str(missing), **ports())
    # About 9 s of STARTING and BACKOFF before FATAL: supervisorctl status
    # exits 0 meanwhile (its rule), rokv status never does.
    seen: set[str] = set()
    codes: set[int] = set()

    def fatal() -> bool:
        state = sup.status().get("worker:worker_00", ("",))[0]
        seen.add(state)
        if state in ("STARTING", "BACKOFF"):
            codes.add(rokv_status(sup, "--timeout", "1").returncode)
        return state == "FATAL"

    wait_for(fatal, 60, "the worker to be FATAL", interval=0.2)
    assert seen & {"STARTING", "BACKOFF"}
    assert codes == {Exit.UNAVAILABLE}
    result = rokv_status(sup)
    assert result.returncode == Exit.UNAVAILABLE
    assert "worker:worker_00  FATAL     NOT SERVING: Exited too quickly" in result.stdout
    assert f"{missing}: no such file" in result.stdout, result.stdout  # the end of its log says why


def test_after_a_bad_setting_status_lists_only_the_refused_pool(supervisor_factory) -> None:
    env = ports()
    first = supervisor_factory(ROKV_WORKERS="2", **env)
    wait_for(lambda: len(first.running()) == 4, 30, "the first run's programs RUNNING")
    first.shutdown()
    # The same folder: supervisord reads the first run's run/pool.conf at its start.
    second = supervisor_factory(ROKV_WORKERS="abc", **env)
    wait_for(lambda: second.status().get("pool", ("",))[0] == "FATAL", 30, "the pool program to be FATAL")
    assert set(second.status()) == {"pool"}  # not the first run's broker and workers
    result = rokv_status(second)
    assert result.returncode == Exit.UNAVAILABLE
    assert result.stdout.splitlines()[0].startswith("pool  FATAL     NOT SERVING: Exited too quickly")
    assert "ROKV_WORKERS='abc' is not a whole number" in result.stdout
    listed = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith("    |")]
    assert listed == ["pool", "not"]  # the pool, then the verdict


@pytest.mark.slow
def test_a_worker_host_is_judged_by_its_states_unless_given_a_broker(supervisor_factory) -> None:
    env = ports()
    sup = supervisor_factory(ROKV_ROLE="worker", ROKV_WORKERS="1", **env)
    wait_for(lambda: set(sup.running()) == {"pool", "worker:worker_00"}, 30, "the worker host")
    result = rokv_status(sup)
    assert result.returncode == Exit.OK, result.stdout
    assert "note: workers not pinged: this host runs no broker" in result.stdout
    # Given a broker's frontend (no broker there), the pings say it.
    result = rokv_status(sup, "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == Exit.UNAVAILABLE
    assert "RUNNING but nothing answered through" in result.stdout


def test_status_without_supervisord_or_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisorctl]\nserverurl=unix://{tmp_path}/nobody.sock\n")
    result = rokv_status(conf)
    assert result.returncode == Exit.UNAVAILABLE
    assert "rokv: not serving: cannot reach supervisord" in result.stderr
    result = rokv_status(tmp_path / "missing.conf")
    assert result.returncode == Exit.USAGE
    assert "no such supervisord configuration file" in result.stderr
    result = rokv_status(conf, "--timeout", "0")
    assert result.returncode == Exit.USAGE
    assert "Traceback" not in result.stderr


class FakeSupervisor:
    """getAllProcessInfo and the log calls of a supervisord, from a table."""

    serverurl = "unix:///nowhere.sock"

    def __init__(self, states: dict[str, tuple[str, int]]) -> None:
        self.infos = []
        for name, (state, pid) in states.items():
            group, _, process = name.rpartition(":")
            group = group or process
            self.infos.append({"group": group, "name": process, "statename": state, "pid": pid})

    def call(self, method: str, *args: object) -> object:
        assert method == "supervisor.getAllProcessInfo"
        return self.infos

    def log_since(self, name: str, offset: int | None, lines: int) -> list[str]:
        return [f"the end of {name}'s log"]


class FakeClient:
    """Pings answered in turn by the given replies (None: no answer)."""

    def __init__(self, replies: list[dict | None]) -> None:
        self.replies, self.at = replies, 0

    def ping(self) -> dict:
        from rokv import ServiceUnavailable

        reply = self.replies[self.at % len(self.replies)]
        self.at += 1
        if reply is None:
            raise ServiceUnavailable("no reply")
        return reply

    def close(self) -> None:
        pass


def test_the_report_names_silent_workers_and_a_pool_on_two_versions() -> None:
    import socket

    from rokv.ops import status

    sup = FakeSupervisor(
        {
            "pool": ("RUNNING", 1),
            "broker": ("RUNNING", 2),
            "worker:worker_00": ("RUNNING", 10),
            "worker:worker_01": ("RUNNING", 11),
            "worker:worker_02": ("RUNNING", 12),
            "other": ("STOPPED", 0),  # not the pool's: not judged
        }
    )
    here = socket.gethostname()
    replies = [
        {"pid": 10, "host": here, "digest": "blake2b-256:" + "a" * 64, "dataset": "/srv/current.rokv"},
        {"pid": 12, "host": "elsewhere", "digest": "blake2b-256:" + "c" * 64},  # another host's pid 12
        {"pid": 11, "host": here, "digest": "blake2b-256:" + "b" * 64, "dataset": "/srv/current.rokv"},
        None,
    ]
    report = status.check(sup, "tcp://127.0.0.1:1", 0.3, client_factory=lambda e: FakeClient(replies))  # type: ignore[arg-type]
    assert not report.ok
    assert [status.shown(e.process) for e in report.failing] == ["worker:worker_02"]
    text = "\n".join(report.lines())
    assert "worker:worker_00  RUNNING   pid 10, answers: blake2b-256:aaaaaaaaaaaaaaaa... from /srv/current.rokv" in text
    assert "worker:worker_02  RUNNING   NOT SERVING: RUNNING but did not answer a ping through" in text
    assert "    | the end of worker:worker_02's log" in text
    assert "note: the workers serve 2 versions: a deploy was cut short?" in text
    assert "other" not in text
    assert report.lines()[-1] == f"not serving: worker:worker_02 (supervisord at {sup.serverurl})"
