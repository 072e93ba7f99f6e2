"""Metrics of pools run by the real supervisord (ROKV_METRICS): a worker
killed and restarted under load, a real Prometheus scraping a pool, and
`rokv top` over a pool of two hosts (network namespaces)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rokv import Client, ServiceUnavailable

from support import netns
from support.procs import Proc, child_env, free_port, scaled, seen_workers, wait_for
from support.scrape import health, label_values, scrape, total

pytestmark = pytest.mark.slow


class Load:
    """Lookups from a thread until stopped, bounded in time: gets of known
    keys, at most ``rate`` a second when given; counts what was answered."""

    def __init__(self, endpoint: str, keys: list[str], seconds: float, rate: float | None = None) -> None:
        self.endpoint, self.keys, self.rate = endpoint, keys, rate
        self.deadline = time.monotonic() + scaled(seconds)
        self.answered = 0
        self.timeline: list[tuple[float, int]] = []  # (time.time(), answered)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        with Client(self.endpoint, timeout=0.5, retries=6) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                if self.rate is not None:
                    due = started + self.answered / self.rate
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())
                try:
                    client.get(self.keys[self.answered % len(self.keys)])
                except ServiceUnavailable as exc:
                    self.failures.append(str(exc))
                    continue
                self.answered += 1
                if self.answered % 50 == 0:
                    self.timeline.append((time.time(), self.answered))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(scaled(30))


def _pool(supervisor_factory, **extra: str) -> tuple[object, str, str]:
    address = f"127.0.0.1:{free_port()}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sup = supervisor_factory(
        ROKV_METRICS=address, ROKV_FRONTEND=endpoint, ROKV_BACKEND=f"tcp://127.0.0.1:{free_port()}", **extra
    )
    seen_workers(endpoint, 2, timeout=30)
    wait_for(lambda: _healthy(address), 30, "/healthz to say ok")
    return sup, address, endpoint


def _healthy(address: str) -> bool:
    try:
        return health(address)[0] == 200
    except OSError:
        return False


def test_a_worker_killed_under_load_neither_lowers_totals_nor_leaves_a_ghost(
    supervisor_factory, example: dict[str, str]
) -> None:
    sup, address, endpoint = _pool(supervisor_factory)
    load = Load(endpoint, list(example)[:2000], seconds=60)
    seen: list[dict[str, float]] = []

    def record() -> dict[str, float]:
        samples = scrape(address)
        point = {w: total(samples, "rokv_worker_requests_total", worker=w) for w in ("worker_00", "worker_01")}
        point["keys"] = total(samples, "rokv_worker_keys_total")
        point["histogram"] = total(samples, "rokv_worker_request_duration_seconds_count")
        seen.append(point)
        return point

    try:
        wait_for(lambda: record()["worker_00"] > 200 and seen[-1]["worker_01"] > 200, 30, "load on both workers")
        victim = sup.running()["worker:worker_00"]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: record() and sup.running().get("worker:worker_00") not in (None, victim),
            30,
            "worker_00 to be restarted",
        )
        before = seen[-1]["worker_00"]
        wait_for(lambda: record()["worker_00"] > before + 200, 30, "the restarted worker_00 to count again")
        statuses = [health(address)[0] for _ in range(3)]
    finally:
        load.stop()
    assert not load.failures, load.failures[:3]
    for name in ("worker_00", "worker_01", "keys", "histogram"):
        series = [point[name] for point in seen]
        assert series == sorted(series), f"{name} went down: {series}"
    samples = scrape(address)
    # One entry per worker name: the killed process's gauges were retired.
    for gauge in (
        "rokv_worker_dataset_info",
        "rokv_worker_heartbeat_timestamp_seconds",
        "rokv_worker_dataset_keys",
        "rokv_worker_start_time_seconds",
    ):
        assert label_values(samples, gauge, "worker") == ["worker_00", "worker_01"], gauge
    assert statuses == [200] * 3
    # A worker stopped on purpose: gone from the gauges at once, the host still healthy.
    assert sup.ctl("stop", "worker:worker_01").returncode == 0
    samples = scrape(address)
    assert label_values(samples, "rokv_worker_dataset_info", "worker") == ["worker_00"]
    status, report = health(address)
    assert status == 200 and report["processes"]["worker:worker_01"] == "stopped", report
    # The broker stopped: rokv_broker_up says 0 (from supervisord: the broker itself is gone).
    assert sup.ctl("stop", "broker").returncode == 0
    samples = scrape(address)
    assert label_values(samples, "rokv_broker_up", "broker") == ["broker"]
    assert total(samples, "rokv_broker_up") == 0
    status, report = health(address)
    assert status == 200 and report["processes"]["broker"] == "stopped", report
    # A worker whose loop is stuck (SIGSTOP): 503, naming it.
    os.kill(sup.running()["worker:worker_00"], signal.SIGSTOP)
    try:
        status, report = wait_for(lambda: (r := health(address))[0] == 503 and r, 20, "a 503 for a stuck worker")
    finally:
        os.kill(sup.running()["worker:worker_00"], signal.SIGCONT)
    assert "worker:worker_00" in report["reason"] and "stuck" in report["reason"], report
    wait_for(lambda: _healthy(address), 20, "/healthz to recover once the worker runs again")


# ------------------------------------------------------------- Prometheus


def _prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus; .ci/run does it)")
    return binary


def _query(port: int, query: str, at: float) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_a_real_prometheus_scrapes_the_pool_and_sees_the_load_rate(
    supervisor_factory, tmp_path: Path, example: dict[str, str]
) -> None:
    binary = _prometheus()
    sup, address, endpoint = _pool(supervisor_factory)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    # The scrape configuration docs/operations.md "Monitoring" gives, with a 1 s interval for the test.
    config.write_text(f"""\
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: rokv
    static_configs:
      - targets: ["{address}"]
""")
    prometheus = Proc(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path,
        child_env(),
    )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 60, "Prometheus to be ready")
        wait_for(
            lambda: (
                _query(port, 'up{job="rokv"}', time.time())
                and _query(port, 'up{job="rokv"}', time.time())[0]["value"][1] == "1"
            ),
            30,
            "Prometheus to scrape rokv",
        )
        load = Load(endpoint, list(example), seconds=40, rate=300)
        try:
            time.sleep(scaled(16))
        finally:
            load.stop()
        assert not load.failures, load.failures[:3]
        # The load's own rate over the last 10 s of its steady part, and Prometheus' over the same window.
        end = load.timeline[-1][0] - 1
        start = end - 10
        inside = [(t, n) for t, n in load.timeline if start <= t <= end]
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        expected = (n1 - n0) / (t1 - t0)
        time.sleep(3)  # the scrapes of that window are in
        result = _query(port, 'sum(rate(rokv_worker_requests_total{op="get"}[10s]))', end)
        measured = float(result[0]["value"][1])
        print(f"\nload {expected:.1f} gets/s; Prometheus rate() {measured:.1f}/s")
        assert abs(measured - expected) <= 0.1 * expected, (measured, expected)
        assert _query(port, "rokv_broker_workers_connected", end)[0]["value"][1] == "2"
    finally:
        prometheus.stop()


# ------------------------------------------------------------- two hosts


@pytest.fixture()
def network() -> Iterator[netns.Network]:
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    net = netns.Network(net=7)
    try:
        yield net
    finally:
        net.close()


def _build(tmp_path: Path, name: str, pairs: dict[str, str]) -> Path:
    source = tmp_path / f"{name}.json"
    source.write_text(json.dumps(pairs))
    out = tmp_path / f"{name}.rokv"
    result = subprocess.run(
        [sys.executable, "-m", "rokv", "build", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out


def _digest(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "rokv", "inspect", str(path)], capture_output=True, text=True, timeout=60
    )
    return json.loads(result.stdout)["digest"]


def _answering(endpoint: str, count: int) -> None:
    """Wait until ``count`` worker processes answer (by PID: both hosts run
    a worker_00)."""
    pids: set[int] = set()
    with Client(endpoint, timeout=0.5, retries=0) as client:

        def enough() -> bool:
            try:
                pids.add(int(client.ping()["pid"]))
            except ServiceUnavailable:
                pass
            return len(pids) >= count

        wait_for(enough, 60, f"{count} workers to answer at {endpoint}", interval=0.01)


def test_rokv_top_reports_every_worker_of_two_hosts_and_flags_the_odd_dataset(
    network: netns.Network, tmp_path: Path, example: dict[str, str]
) -> None:
    main = _build(tmp_path, "main", example)
    odd = _build(tmp_path, "odd", dict(list(example.items())[:100]))
    network.attach_root()
    h1, h2 = network.add_host("h1"), network.add_host("h2")
    backend = h1.endpoint(5556)
    h1.supervise(
        tmp_path / "h1",
        child_env(
            ROKV_METRICS=f"{h1.address}:9555",
            ROKV_FRONTEND=h1.endpoint(5555),
            ROKV_BACKEND=backend,
            ROKV_DATA=str(main),
        ),
    )
    h2.supervise(
        tmp_path / "h2",
        child_env(ROKV_ROLE="worker", ROKV_METRICS=f"{h2.address}:9555", ROKV_BACKEND=backend, ROKV_DATA=str(main)),
    )
    _answering(h1.endpoint(5555), 4)
    # A worker started by hand on h2 with another dataset, publishing with the others.
    h2.start(
        "odd",
        [sys.executable, "-m", "rokv.worker", "--backend", backend, "--data", str(odd), "--name", "odd"],
        tmp_path,
        child_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "h2" / "run" / "metrics")),
    )
    _answering(h1.endpoint(5555), 5)
    addresses = f"{h1.address}:9555,{h2.address}:9555"

    def top() -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "rokv", "top", "--once", "--json", "--interval", "0.5", "--metrics", addresses],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    shown = wait_for(lambda: (s := top()) and s["workers"] == 5 and s, 30, "rokv top to list 5 workers")
    by_host = {h["address"]: {w["name"]: w for w in h["workers"]} for h in shown["hosts"]}
    assert sorted(by_host[f"{h1.address}:9555"]) == ["worker_00", "worker_01"]
    assert sorted(by_host[f"{h2.address}:9555"]) == ["odd", "worker_00", "worker_01"]
    main_digest, odd_digest = _digest(main), _digest(odd)
    assert shown["majority_dataset"] == main_digest
    for workers in by_host.values():
        for name, w in workers.items():
            assert w["digest"] == (odd_digest if name == "odd" else main_digest)
            assert w["flagged"] is (name == "odd")
    assert shown["flagged"] == [{"host": f"{h2.address}:9555", "worker": "odd", "dataset": odd_digest}]
    assert [b["workers_connected"] for b in shown["hosts"][0]["brokers"]] == [5]
    text = subprocess.run(
        [sys.executable, "-m", "rokv", "top", "--once", "--interval", "0.5", "--metrics", addresses],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    print("\n" + text)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert any(line.strip().startswith("odd !") for line in text.splitlines()), text
