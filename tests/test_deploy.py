"""Deploying a new dataset version under load: build it, repoint the served
path, restart the workers one at a time with supervisor; no lookup fails, and
ping shows the switch-over. First by hand, then with ``rokv deploy`` (the
procedure docs/operations.md gives), which must also refuse a bad file before touching
anything and roll back when a worker fails on the new one."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rokv import Client, ServiceUnavailable
from rokv.exitcodes import Exit
from rokv.keys import random_key
from rokv.ops import deploy
from rokv.ops.deploy import target_for
from rokv.ops.supervisor_rpc import Process, Refused
from rokv.ops.supervisor_rpc import Supervisor as SupervisorRPC
from rokv.worker.build import build
from rokv.worker.layout import HEADER_SIZE, read_header
from rokv.worker.reader import open_store

from support.procs import child_env, free_port, scaled, seen_workers, wait_for
from support.supervision import Supervisor

pytestmark = pytest.mark.slow  # every test here runs the real supervisord under load

KEYS = 3000


def keys(rng: random.Random) -> list[str]:
    return [random_key(rng) for _ in range(KEYS)]


def version(folder: Path, name: str, tag: str, all_keys: list[str]) -> tuple[Path, str]:
    src = folder / f"{name}.json"
    src.write_text("{" + ",".join(f'"{k}": "{tag} {i} é"' for i, k in enumerate(all_keys)) + "}", encoding="utf-8")
    out = folder / f"{name}.rokv"
    build(src, out)
    return out, open_store(out).digest


def point(link: Path, target: Path) -> None:
    """Repoint ``link`` atomically (a reader sees the old or the new target)."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


class Load:
    """Threads looking keys up until stopped, checking every answer is one of
    the versions' exact values; counts lookups, failures and wrong answers."""

    def __init__(self, endpoint: str, all_keys: list[str], allowed: dict[str, set[str]], threads: int = 2) -> None:
        self.endpoint, self.keys, self.allowed = endpoint, all_keys, allowed
        self.stop = threading.Event()
        self.lookups = 0
        self.failures: list[str] = []
        self.wrong: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + scaled(120)  # bounded even if never stopped
        with Client(self.endpoint, timeout=1.0, retries=5) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                batch = rng.sample(self.keys, 20)
                try:
                    values = client.get_many(batch) if rng.random() < 0.5 else [client.get(batch[0])]
                except Exception as exc:  # noqa: BLE001 - every kind counts as a failed lookup
                    with self._lock:
                        self.failures.append(repr(exc))
                    continue
                with self._lock:
                    self.lookups += len(values)
                    self.wrong += [(k, v) for k, v in zip(batch, values) if v not in self.allowed[k]]

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(scaled(30))


def test_rolling_dataset_swap_under_load_fails_no_lookup(supervisor_factory, tmp_path: Path) -> None:
    folder = tmp_path / "datasets"
    folder.mkdir()
    all_keys = keys(random.Random(11))
    v1, digest1 = version(folder, "v1", "one", all_keys)
    v2, digest2 = version(folder, "v2", "two", all_keys)
    assert digest1 != digest2
    current = folder / "current.rokv"
    point(current, v1)
    frontend = f"tcp://127.0.0.1:{free_port()}"
    sup: Supervisor = supervisor_factory(
        ROKV_WORKERS="2", ROKV_DATA=str(current), ROKV_FRONTEND=frontend, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}"
    )
    seen_workers(frontend, 2, timeout=30)
    workers = wait_for(
        lambda: (r := {n: p for n, p in sup.running().items() if n.startswith("worker:")}) and len(r) == 2 and r,
        15,
        "two workers RUNNING",
    )

    allowed = {k: {f"one {i} é", f"two {i} é"} for i, k in enumerate(all_keys)}
    load = Load(frontend, all_keys, allowed)
    try:
        wait_for(lambda: load.lookups > 500, 30, "the load to run")
        assert pings(frontend) == {digest1}

        point(current, v2)  # the new version, where the workers look for it
        for name in sorted(workers):  # one at a time: the other keeps serving
            result = sup.ctl("restart", name)
            assert result.returncode == 0, result.stdout + result.stderr
            new_pid = wait_for(
                lambda n=name: (p := sup.running().get(n)) and p != workers[n] and p, 20, f"{name} to run again"
            )
            wait_for(lambda pid=new_pid: pid in answering_pids(frontend, digest2), 20, f"{name} to serve v2")
        before = load.lookups
        wait_for(lambda: load.lookups > before + 500, 30, "the load to run on v2")
    finally:
        load.finish()

    assert load.failures == []
    assert load.wrong == []
    assert load.lookups > 1000
    assert pings(frontend) == {digest2}
    with Client(frontend, timeout=2.0, retries=2) as client:
        assert client.get_many(all_keys[:500]) == [f"two {i} é" for i in range(500)]


def pings(endpoint: str, count: int = 20) -> set[str]:
    """The digests the workers report over ``count`` pings."""
    with Client(endpoint, timeout=2.0, retries=2) as client:
        return {client.ping()["digest"] for _ in range(count)}


def answering_pids(endpoint: str, digest: str, count: int = 10) -> set[int]:
    found = set()
    with Client(endpoint, timeout=0.5, retries=0) as client:
        for _ in range(count):
            try:
                info = client.ping()
            except ServiceUnavailable:
                continue
            if info.get("digest") == digest:
                found.add(int(info["pid"]))
    return found


# ------------------------------------------------------------------ rokv deploy


def rokv_deploy(sup: Supervisor, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """``rokv deploy ARGS -c <the test supervisord.conf>`` in a subprocess
    (or ``script``, a Python program that runs it, given ARGS in sys.argv)."""
    command = ["-m", "rokv", "deploy"] if script is None else ["-c", script]
    return subprocess.run(
        [sys.executable, *command, *args, "-c", str(sup.conf)],
        cwd=sup.conf.parent,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )


class Service:
    """supervisord with two workers serving v1 through a link, and v2 built."""

    def __init__(self, supervisor_factory, tmp_path: Path) -> None:
        self.folder = tmp_path / "datasets"
        self.folder.mkdir()
        self.keys = keys(random.Random(12))
        self.v1, self.digest1 = version(self.folder, "v1", "one", self.keys)
        self.v2, self.digest2 = version(self.folder, "v2", "two", self.keys)
        self.link = self.folder / "current.rokv"
        point(self.link, self.v1)
        self.frontend = f"tcp://127.0.0.1:{free_port()}"
        self.sup: Supervisor = supervisor_factory(
            ROKV_WORKERS="2",
            ROKV_DATA=str(self.link),
            ROKV_FRONTEND=self.frontend,
            ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}",
        )
        seen_workers(self.frontend, 2, timeout=30)
        self.pids = self.workers()

    def workers(self) -> dict[str, int]:
        """The RUNNING workers' pids, once both run."""
        return wait_for(
            lambda: (
                (r := {n: p for n, p in self.sup.running().items() if n.startswith("worker:")}) and len(r) == 2 and r
            ),
            15,
            "two workers RUNNING",
        )

    def deploy(self, new: Path, *extra: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        return rokv_deploy(
            self.sup,
            str(new),
            "--link",
            str(self.link),
            "--endpoint",
            self.frontend,
            "--timeout",
            str(scaled(30)),
            *extra,
            script=script,
        )

    def load(self, *tags: str) -> Load:
        allowed = {k: {f"{tag} {i} é" for tag in tags} for i, k in enumerate(self.keys)}
        load = Load(self.frontend, self.keys, allowed)
        wait_for(lambda: load.lookups > 500, 30, "the load to run")
        return load


def corrupt_index(good: Path, out: Path) -> Path:
    """A copy of ``good`` whose header is intact (so ``rokv inspect`` and
    ``--no-verify`` accept it) but whose bucket table a worker refuses."""
    data = bytearray(good.read_bytes())
    data[HEADER_SIZE : HEADER_SIZE + 4] = struct.pack("<I", 1)  # the table must start at 0
    out.write_bytes(bytes(data))
    read_header(out)
    return out


def test_deploy_switches_under_load_then_rolls_back_by_command(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    load = pool.load("one", "two")
    try:
        done = pool.deploy(pool.v2)
        assert done.returncode == Exit.OK, done.stdout + done.stderr
        assert os.readlink(pool.link) == "v2.rokv"  # the link's relative style is kept
        assert pings(pool.frontend) == {pool.digest2}
        after = pool.workers()
        assert all(after[n] != pool.pids[n] for n in pool.pids), (pool.pids, after)
        assert "worker:worker_00: pid" in done.stdout and "worker:worker_01: pid" in done.stdout
        assert f"deployed v2.rokv ({pool.digest2})" in done.stdout

        again = pool.deploy(pool.v2)  # nothing left to do: no restart
        assert again.returncode == Exit.OK, again.stdout + again.stderr
        assert "nothing to do" in again.stdout
        assert pool.workers() == after

        before = load.lookups
        back = pool.deploy(pool.v1)  # how a finished deploy is undone
        assert back.returncode == Exit.OK, back.stdout + back.stderr
        assert os.readlink(pool.link) == "v1.rokv"
        wait_for(lambda: load.lookups > before + 500, 30, "the load to run on v1")
    finally:
        load.finish()
    assert load.failures == []
    assert load.wrong == []
    assert pings(pool.frontend) == {pool.digest1}


def test_deploy_refuses_a_truncated_file_before_touching_anything(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    bad = pool.folder / "bad.rokv"
    bad.write_bytes(pool.v2.read_bytes()[: pool.v2.stat().st_size // 2])
    for extra in ([], ["--no-verify"]):  # the size is in the header: caught either way
        result = pool.deploy(bad, *extra)
        assert result.returncode == Exit.NO, result.stdout + result.stderr
        assert f"rokv: refused: {bad}: truncated" in result.stderr
        assert "Nothing was changed" in result.stderr
        assert os.readlink(pool.link) == "v1.rokv"
        assert pool.workers() == pool.pids
        assert pings(pool.frontend) == {pool.digest1}

    corrupt = corrupt_index(pool.v2, pool.folder / "corrupt.rokv")  # only the full check sees this one
    result = pool.deploy(corrupt)
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert f"rokv: refused: {corrupt}: corrupt" in result.stderr
    assert pool.workers() == pool.pids

    other = pool.folder / "other.rokv"  # a link the workers do not load
    point(other, pool.v1)
    result = rokv_deploy(pool.sup, str(pool.v2), "--link", str(other), "--endpoint", pool.frontend)
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert f"worker:worker_00 loads {pool.link}, not {other}" in result.stderr
    assert os.readlink(other) == "v1.rokv"

    nobody = f"tcp://127.0.0.1:{free_port()}"  # no broker there
    result = rokv_deploy(pool.sup, str(pool.v2), "--link", str(pool.link), "--endpoint", nobody, "--timeout", "1")
    assert result.returncode == Exit.UNAVAILABLE, result.stdout + result.stderr
    assert f"no answer from {nobody}" in result.stderr
    assert os.readlink(pool.link) == "v1.rokv"
    assert pool.workers() == pool.pids

    # The link repointed by hand, workers not restarted (a deploy cut short):
    # deploying the same file finishes the job.
    point(pool.link, pool.v2)
    result = pool.deploy(pool.v2)
    assert result.returncode == Exit.OK, result.stdout + result.stderr
    assert "2 of 2 workers do not serve it yet" in result.stdout
    assert pings(pool.frontend) == {pool.digest2}

    # A pool that is down has no worker to keep serving: refused, link untouched.
    assert pool.sup.ctl("stop", "worker:worker_00", "worker:worker_01").returncode == 0
    result = pool.deploy(pool.v1)
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert "no worker process is RUNNING" in result.stderr
    assert os.readlink(pool.link) == "v2.rokv"


def test_deploy_rolls_back_when_the_first_worker_fails(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    corrupt = corrupt_index(pool.v2, pool.folder / "corrupt.rokv")
    load = pool.load("one")  # nothing of v2 may ever be served
    try:
        result = pool.deploy(corrupt, "--no-verify")
        before = load.lookups
        wait_for(lambda: load.lookups > before + 300, 30, "the load to run after the rollback")
    finally:
        load.finish()
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert f"deploy of {corrupt} failed at worker:worker_00: did not start" in result.stderr
    assert "corrupt index" in result.stderr  # the end of the worker's log
    assert "rolled back" in result.stderr
    assert "worker:worker_01" in result.stderr  # never touched, and said so
    assert os.readlink(pool.link) == "v1.rokv"
    after = pool.workers()
    assert after["worker:worker_01"] == pool.pids["worker:worker_01"]
    assert pings(pool.frontend) == {pool.digest1}
    assert load.failures == []
    assert load.wrong == []


# The second worker fails after the first switched: the command must bring
# the first back too. What makes it fail (v2 replaced by a corrupt copy just
# before the second restart) is injected around the real command.
_FAIL_SECOND = """
import os, shutil, sys
import rokv.ops.deploy as d
from rokv.cli import main
real = d.Pool.restart
def restart(self, worker, digest):
    if worker.name == "worker:worker_01" and digest == os.environ["NEW_DIGEST"]:
        os.replace(os.environ["CORRUPT"], os.environ["NEW"])
    return real(self, worker, digest)
d.Pool.restart = restart
sys.exit(main(["deploy", *sys.argv[1:]]))
"""


def test_deploy_rolls_back_the_workers_already_switched(
    supervisor_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = Service(supervisor_factory, tmp_path)
    new = pool.folder / "v2-copy.rokv"
    shutil.copy(pool.v2, new)
    corrupt = corrupt_index(pool.v2, pool.folder / ".corrupt.rokv")
    monkeypatch.setenv("NEW", str(new))
    monkeypatch.setenv("CORRUPT", str(corrupt))
    monkeypatch.setenv("NEW_DIGEST", pool.digest2)
    load = pool.load("one", "two")
    try:
        result = pool.deploy(new, script=_FAIL_SECOND)
        before = load.lookups
        wait_for(lambda: load.lookups > before + 300, 30, "the load to run after the rollback")
    finally:
        load.finish()
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert "worker:worker_00: pid" in result.stdout  # switched first
    assert "failed at worker:worker_01: did not start" in result.stderr
    assert "worker:worker_00: back on" in result.stdout
    assert os.readlink(pool.link) == "v1.rokv"
    after = pool.workers()
    assert all(after[n] != pool.pids[n] for n in pool.pids)
    assert pings(pool.frontend) == {pool.digest1}
    assert load.failures == []
    assert load.wrong == []


def test_deploy_rolls_back_when_stopped_by_sigterm(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    load = pool.load("one", "two")
    try:
        command = [
            sys.executable,
            "-m",
            "rokv",
            "deploy",
            str(pool.v2),
            "--link",
            str(pool.link),
            "--endpoint",
            pool.frontend,
            "-c",
            str(pool.sup.conf),
        ]
        proc = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            seen = []
            for line in iter(proc.stdout.readline, ""):
                seen.append(line)
                if line.startswith("worker:worker_00: pid"):
                    break
            # Stopped while the second worker restarts (at least its 1 s of startsecs).
            wait_for(
                lambda: pool.sup.running().get("worker:worker_01") != pool.pids["worker:worker_01"],
                15,
                "worker_01's restart to begin",
            )
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=scaled(60))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        before = load.lookups
        wait_for(lambda: load.lookups > before + 300, 30, "the load to run after the rollback")
    finally:
        load.finish()
    assert proc.returncode == Exit.NO, "".join(seen) + out + err
    assert "failed at worker:worker_01: interrupted" in err, err
    assert "worker:worker_00: back on" in out
    assert "rolled back" in err
    assert os.readlink(pool.link) == "v1.rokv"
    assert pings(pool.frontend) == {pool.digest1}
    assert load.failures == []
    assert load.wrong == []

    # Cut short at the wrong moment, a call leaves a worker STOPPING, which
    # supervisord cannot start: a restart waits until it is down.
    rpc = SupervisorRPC.from_config(str(pool.sup.conf))
    name = "worker:worker_01"
    rpc.call("supervisor.stopProcess", name, False)
    assert rpc.process(name).state == "STOPPING"
    restarter = deploy.Pool(rpc, pool.frontend, str(pool.link), scaled(30))
    try:
        pid, _ = restarter.restart(rpc.process(name), pool.digest1)
    finally:
        restarter.close()
    assert rpc.process(name).state == "RUNNING" and rpc.process(name).pid == pid


# ------------------------------------------------------------------ refusals without supervisord


def test_deploy_usage_errors_change_nothing(tmp_path: Path) -> None:
    all_keys = keys(random.Random(13))[:50]
    v1, _ = version(tmp_path, "v1", "one", all_keys)
    v2, _ = version(tmp_path, "v2", "two", all_keys)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisorctl]\nserverurl=unix://{tmp_path}/nobody.sock\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rokv", "deploy", *args],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )

    result = run(str(v2), "-c", str(conf))  # no --link, no ROKV_DATA
    assert result.returncode == Exit.USAGE and "give --link or set ROKV_DATA" in result.stderr
    result = run(str(v2), "--link", str(v1), "-c", str(conf))
    assert result.returncode == Exit.USAGE and "is not a symbolic link" in result.stderr
    link = tmp_path / "current.rokv"
    point(link, v1)
    result = run(str(v2), "--link", str(link), "-c", str(tmp_path / "missing.conf"))
    assert result.returncode == Exit.USAGE and "no such supervisord configuration file" in result.stderr
    result = run(str(v2), "--link", str(link), "-c", str(conf))
    assert result.returncode == Exit.UNAVAILABLE, result.stderr
    assert "cannot reach supervisord" in result.stderr and "Nothing was changed" in result.stderr
    assert os.readlink(link) == "v1.rokv"
    assert "Traceback" not in result.stderr


def test_target_keeps_the_links_style(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    new = tmp_path / "a" / "v2.rokv"
    new.touch()
    link = tmp_path / "current.rokv"
    assert target_for(str(link), str(new), "v1.rokv") == "a/v2.rokv"
    assert target_for(str(link), str(new), "/srv/v1.rokv") == os.path.realpath(new)


# ------------------------------------------------------------------ cut short, wrong pool, wrong file


def test_a_deploy_killed_mid_way_is_finished_by_running_it_again(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    rpc = SupervisorRPC.from_config(str(pool.sup.conf))
    load = pool.load("one", "two")
    try:
        # kill -9 once the first worker is switched: the second is being
        # restarted. Where the kill lands, supervisord finishes the stop it
        # was asked for; a stop through its RPC stands for that moment.
        command = [sys.executable, "-m", "rokv", "deploy", str(pool.v2), "--link", str(pool.link)]
        command += ["--endpoint", pool.frontend, "-c", str(pool.sup.conf)]
        proc = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, ""):
                if line.startswith("worker:worker_00: pid"):
                    break
            proc.kill()
        finally:
            proc.kill()
            proc.wait(scaled(30))
            assert proc.stdout is not None
            proc.stdout.close()
        stop_for_good(rpc, "worker:worker_01")
        assert os.readlink(pool.link) == "v2.rokv"
        assert pool.sup.status()["worker:worker_01"][0] == "STOPPED"

        again = pool.deploy(pool.v2)
        assert again.returncode == Exit.OK, again.stdout + again.stderr
        assert "1 of 2 workers do not serve it yet (1 down)" in again.stdout
        assert "worker:worker_01: was STOPPED -> pid" in again.stdout
        serving_everywhere(pool, pool.digest2)

        # Cut while the first worker was being stopped, deploying v1 back: the
        # link moved, worker_00 STOPPED, worker_01 still on v2.
        point(pool.link, pool.v1)
        stop_for_good(rpc, "worker:worker_00")
        again = pool.deploy(pool.v1)
        assert again.returncode == Exit.OK, again.stdout + again.stderr
        assert "2 of 2 workers do not serve it yet (1 down)" in again.stdout
        serving_everywhere(pool, pool.digest1)
        before = load.lookups
        wait_for(lambda: load.lookups > before + 300, 30, "the load to run on v1")
    finally:
        load.finish()
    assert load.failures == []
    assert load.wrong == []


def stop_for_good(rpc: SupervisorRPC, name: str) -> None:
    """Leave ``name`` STOPPED, whatever state it is in."""
    try:
        rpc.call("supervisor.stopProcess", name, True)
    except Refused as exc:
        assert exc.fault == "NOT_RUNNING", exc
    wait_for(lambda: rpc.process(name).state == "STOPPED", 15, f"{name} to be STOPPED")


def serving_everywhere(pool: Service, digest: str) -> None:
    """Every worker RUNNING and answering with ``digest``; rokv status says so."""
    running = pool.workers()
    for pid in running.values():
        wait_for(lambda pid=pid: pid in answering_pids(pool.frontend, digest), 20, f"pid {pid} to serve {digest}")
    assert pings(pool.frontend) == {digest}
    status = subprocess.run(
        [sys.executable, "-m", "rokv", "status", "-c", str(pool.sup.conf), "--endpoint", pool.frontend],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert status.returncode == Exit.OK, status.stdout + status.stderr


def test_deploy_refuses_a_pool_whose_workers_load_another_path(supervisor_factory, tmp_path: Path) -> None:
    # The default pool loads data/example.json, a path relative to its folder.
    frontend = f"tcp://127.0.0.1:{free_port()}"
    sup: Supervisor = supervisor_factory(ROKV_FRONTEND=frontend, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}")
    seen_workers(frontend, 2, timeout=30)
    pids = wait_for(
        lambda: (r := {n: p for n, p in sup.running().items() if n.startswith("worker:")}) and len(r) == 2 and r,
        15,
        "two workers RUNNING",
    )
    all_keys = keys(random.Random(14))
    v1, _ = version(tmp_path, "v1", "one", all_keys)
    v2, _ = version(tmp_path, "v2", "two", all_keys)
    link = tmp_path / "current.rokv"
    point(link, v1)
    result = rokv_deploy(sup, str(v2), "--link", str(link), "--endpoint", frontend, "--timeout", str(scaled(30)))
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert f"refused: worker:worker_00 loads data/example.json (not a .rokv file), not {link}" in result.stderr
    assert f"have them load the link (ROKV_DATA={link}" in result.stderr
    assert "Nothing was changed" in result.stderr
    assert os.readlink(link) == "v1.rokv"
    assert {n: p for n, p in sup.running().items() if n.startswith("worker:")} == pids


def test_a_worker_elsewhere_is_judged_by_what_it_serves() -> None:
    workers = [running_process("worker:worker_00", 10)]
    ok = {"worker:worker_00": deploy.Answer("blake2b-256:aa", "current.rokv")}
    deploy._check_datasets("/", workers, ok, False, {"blake2b-256:aa", "blake2b-256:bb"})  # no refusal
    for answer in (deploy.Answer(None, "data/example.json"), deploy.Answer("blake2b-256:cc", "other.rokv")):
        with pytest.raises(deploy.Stop) as refused:
            deploy._check_datasets("/", workers, {"worker:worker_00": answer}, False, {"blake2b-256:aa"})
        assert refused.value.code == Exit.NO
        assert f"worker:worker_00 loads {answer.dataset}" in str(refused.value)


def running_process(name: str, pid: int) -> Process:
    group, _, process = name.partition(":")
    return Process(name=name, process=process, group=group, state="RUNNING", pid=pid, description="", spawnerr="")


def test_deploy_refuses_a_file_of_other_keys_unless_allowed(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    rng = random.Random(15)
    # Keeps 40% of the keys: below the 50% a new version must share.
    mixed = pool.keys[: KEYS * 2 // 5] + [random_key(rng) for _ in range(KEYS * 3 // 5)]
    v3, digest3 = version(pool.folder, "v3", "three", mixed)
    result = pool.deploy(v3)
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    share = re.search(r"only (\d+) of 1000 keys sampled from the serving file .*, ([\d.]+)%, are in", result.stderr)
    assert share is not None, result.stderr
    assert 340 <= int(share[1]) <= 460 and share[2] == f"{int(share[1]) / 10:.1f}"
    assert "at least 50% are expected" in result.stderr and "--allow-new-keys" in result.stderr
    assert "Nothing was changed" in result.stderr
    assert os.readlink(pool.link) == "v1.rokv"
    assert pool.workers() == pool.pids

    result = pool.deploy(v3, "--allow-new-keys")
    assert result.returncode == Exit.OK, result.stdout + result.stderr
    assert pings(pool.frontend) == {digest3}
    assert os.readlink(pool.link) == "v3.rokv"
    # Measured against what serves now: going back to v2 is refused too.
    result = pool.deploy(pool.v2)
    assert result.returncode == Exit.NO
    assert "--allow-new-keys" in result.stderr


def test_key_share_samples_the_serving_file(tmp_path: Path) -> None:
    rng = random.Random(16)
    old = [random_key(rng) for _ in range(5000)]
    a, _ = version(tmp_path, "a", "a", old)
    b, _ = version(tmp_path, "b", "b", old[:1250] + [random_key(rng) for _ in range(100)])
    c, _ = version(tmp_path, "c", "c", [random_key(rng) for _ in range(3)])
    assert deploy.key_share(str(a), str(a)) == (1000, 1000)
    found, sampled = deploy.key_share(str(a), str(b))
    assert sampled == 1000 and 200 <= found <= 300  # a quarter of the keys
    assert deploy.key_share(str(a), str(c)) == (0, 1000)
    assert deploy.key_share(str(c), str(a)) == (0, 3)  # a small file: every key


def test_a_down_worker_is_started_first_and_stopped_again_by_a_rollback(supervisor_factory, tmp_path: Path) -> None:
    pool = Service(supervisor_factory, tmp_path)
    corrupt = corrupt_index(pool.v2, pool.folder / "corrupt.rokv")
    assert pool.sup.ctl("stop", "worker:worker_01").returncode == 0
    load = pool.load("one")
    try:
        result = pool.deploy(corrupt, "--no-verify")
    finally:
        load.finish()
    assert result.returncode == Exit.NO, result.stdout + result.stderr
    assert "starting first what is down: worker:worker_01 (STOPPED)" in result.stdout
    assert f"deploy of {corrupt} failed at worker:worker_01: did not start" in result.stderr
    assert "worker:worker_01: stopped again (it was STOPPED before the deploy)" in result.stdout
    assert "worker:worker_00 never left it" in result.stderr
    assert os.readlink(pool.link) == "v1.rokv"
    assert pool.sup.status()["worker:worker_01"][0] == "STOPPED"
    assert pool.sup.running()["worker:worker_00"] == pool.pids["worker:worker_00"]  # never touched
    assert load.failures == []
    assert load.wrong == []
