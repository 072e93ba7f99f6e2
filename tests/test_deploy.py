"""Deploying a new dataset version under load: build it, repoint the served
path, restart the workers one at a time with supervisor; no lookup fails, and
ping shows the switch-over (the procedure the README gives)."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from procs import free_port, scaled, seen_workers, wait_for
from supervision import Supervisor

from rokv import Client, ServiceUnavailable
from rokv.keys import random_key
from rokv.worker.build import build
from rokv.worker.store import open_store

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
                except Exception as exc:  # every kind counts as a failed lookup
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
    workers = wait_for(lambda: (r := {n: p for n, p in sup.running().items() if n.startswith("worker:")})
                       and len(r) == 2 and r, 15, "two workers RUNNING")

    allowed = {k: {f"one {i} é", f"two {i} é"} for i, k in enumerate(all_keys)}
    load = Load(frontend, all_keys, allowed)
    try:
        wait_for(lambda: load.lookups > 500, 30, "the load to run")
        assert pings(frontend) == {digest1}

        point(current, v2)  # the new version, where the workers look for it
        for name in sorted(workers):  # one at a time: the other keeps serving
            result = sup.ctl("restart", name)
            assert result.returncode == 0, result.stdout + result.stderr
            new_pid = wait_for(lambda: (p := sup.running().get(name)) and p != workers[name] and p, 20,
                               f"{name} to run again")
            wait_for(lambda: new_pid in answering_pids(frontend, digest2), 20, f"{name} to serve v2")
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
