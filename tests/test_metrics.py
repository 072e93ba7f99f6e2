"""Metrics (issue 12): exact counts of a known load read back through
prometheus_client's parser, the worker's plain-int counting, the exporter's
housekeeping of the multiprocess folder, and what `rokv top` computes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from rokv import Client, KeyNotFound
from rokv import protocol as p
from rokv.keys import random_key
from rokv.ops import metricfiles
from rokv.ops.poolview import HostScrape, WorkerTotals, quantile, view
from rokv.ops.top import WIDTH, render
from rokv.server.stats import BUCKETS, KEY_OUTCOMES, RequestStats, request_index
from rokv.worker.handler import Handler

from support.procs import wait_for
from support.scrape import MeteredStack, health, label_values, scrape, total

K1 = "8a35eb59-62b3-481c-8875-1f248df4c952"
MISSING = "11111111-2222-4333-8444-555555555555"


# ------------------------------------------------------- counting in the worker


def test_the_handler_counts_each_request_by_operation_and_outcome() -> None:
    handler = Handler({K1: "v"}, worker_id="w", dataset="d.json")

    def send(request: dict) -> None:
        handler.handle([b"r", msgpack.packb({"v": 1, "id": 1, **request})])

    for request in (
        [{"op": "get", "key": K1}] * 3
        + [{"op": "get", "key": K1.upper()}]
        + [{"op": "get", "key": MISSING}] * 2
        + [{"op": "get", "key": "nope"}]
        + [
            {"op": "mget", "keys": [K1, K1]},
            {"op": "mget", "keys": [K1, MISSING, MISSING]},
            {"op": "mget", "keys": [K1, "bad", MISSING]},
            {"op": "mget", "keys": []},
            {"op": "ping"},
        ]
    ):
        send(request)
    handler.handle([b"r", b"\xc1"])  # not msgpack
    handler.handle([b"r", b"a", b"b"])  # two frames
    snap = handler.stats.snapshot()
    counts = {
        (op, outcome): snap.requests[request_index(op, outcome)]
        for op, outcome in [
            ("get", "found"),
            ("get", "not_found"),
            ("get", "invalid"),
            ("mget", "found"),
            ("mget", "not_found"),
            ("mget", "invalid"),
            ("ping", "ok"),
            ("other", "refused"),
        ]
    }
    assert counts == {
        ("get", "found"): 4,
        ("get", "not_found"): 2,
        ("get", "invalid"): 1,
        ("mget", "found"): 2,
        ("mget", "not_found"): 1,
        ("mget", "invalid"): 1,
        ("ping", "ok"): 1,
        ("other", "refused"): 2,
    }
    # An mget refused for an invalid key counts that key only: the others got no answer.
    assert dict(zip(KEY_OUTCOMES, snap.keys)) == {"found": 4 + 3, "not_found": 2 + 2, "invalid": 1 + 1, "damaged": 0}
    assert sum(snap.buckets) == 14 and snap.seconds > 0


def test_handling_times_fall_in_the_bucket_whose_bound_they_do_not_exceed() -> None:
    stats = RequestStats()
    for seconds in (BUCKETS[0], BUCKETS[0] * 1.01, BUCKETS[-1], BUCKETS[-1] * 2):
        stats.observe(seconds)
    assert stats.buckets[0] == 1 and stats.buckets[1] == 1
    assert stats.buckets[len(BUCKETS) - 1] == 1 and stats.buckets[len(BUCKETS)] == 1  # the last: +Inf


# ------------------------------------------------------------ real processes


@pytest.fixture()
def metered(tmp_path: Path) -> Iterator[MeteredStack]:
    stack = MeteredStack(tmp_path)
    try:
        yield stack.wait_ready()
    finally:
        stack.stop()


def _raw(frontend: str, requests: list[tuple[str, object]]) -> list[dict]:
    """Send requests the client library would refuse to send (invalid keys)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 5000
    try:
        sock.connect(frontend)
        for rid, (op, arg) in enumerate(requests, 1):
            sock.send(p.encode_request(rid, op, arg))
        return [p.decode_reply(sock.recv()) for _ in requests]
    finally:
        sock.close()
        ctx.term()


COUNTERS = (
    [
        ("rokv_worker_requests_total", {"op": op, "outcome": o})
        for op, o in [
            ("get", "found"),
            ("get", "not_found"),
            ("get", "invalid"),
            ("mget", "found"),
            ("mget", "not_found"),
            ("mget", "invalid"),
            ("ping", "ok"),
        ]
    ]
    + [("rokv_worker_keys_total", {"outcome": o}) for o in KEY_OUTCOMES]
    + [
        ("rokv_worker_request_duration_seconds_count", {}),
        ("rokv_broker_forwarded_frames_total", {"direction": "request"}),
        ("rokv_broker_forwarded_frames_total", {"direction": "reply"}),
    ]
)


def _counts(address: str) -> dict[str, float]:
    samples = scrape(address)
    return {f"{name}{sorted(labels.items())}": total(samples, name, **labels) for name, labels in COUNTERS}


def test_counters_match_a_known_load_exactly(metered: MeteredStack, example: dict[str, str]) -> None:
    rng = random.Random(12)
    found = list(example)[:200]
    missing = [random_key(rng) for _ in range(100)]

    # The readiness pings are done: what follows is counted from here.
    def settled() -> dict[str, float] | None:
        first = _counts(metered.address)
        time.sleep(0.4)  # longer than a publication interval
        return first if _counts(metered.address) == first else None

    before = wait_for(settled, 10, "the counts to settle")
    with Client(metered.frontend) as client:
        for key in found[:30]:
            assert client.get(key) == example[key]
        for key in missing[:20]:
            with pytest.raises(KeyNotFound):
                client.get(key)
        for i in range(4):  # 10 found and 5 missing each: mget not_found
            client.get_many(found[30 + 10 * i : 40 + 10 * i] + missing[20 + 5 * i : 25 + 5 * i])
        for i in range(3):  # all found
            assert client.get_many(found[100 + 10 * i : 110 + 10 * i]) == [
                example[k] for k in found[100 + 10 * i : 110 + 10 * i]
            ]
    replies = _raw(metered.frontend, [("get", "not-a-key")] * 7 + [("mget", [found[0], found[1], "x", "y"])] * 2)
    assert [r.get("error") for r in replies] == ["invalid_key"] * 9
    expected = {
        ("rokv_worker_requests_total", "get", "found"): 30,
        ("rokv_worker_requests_total", "get", "not_found"): 20,
        ("rokv_worker_requests_total", "get", "invalid"): 7,
        ("rokv_worker_requests_total", "mget", "found"): 3,
        ("rokv_worker_requests_total", "mget", "not_found"): 4,
        ("rokv_worker_requests_total", "mget", "invalid"): 2,
        ("rokv_worker_requests_total", "ping", "ok"): 0,
        ("rokv_worker_keys_total", "found"): 30 + 40 + 30,
        ("rokv_worker_keys_total", "not_found"): 20 + 20,
        ("rokv_worker_keys_total", "invalid"): 7 + 2,
        ("rokv_worker_keys_total", "damaged"): 0,
        ("rokv_worker_request_duration_seconds_count",): 66,
        # libzmq counts frames: a routing id and a body each way.
        ("rokv_broker_forwarded_frames_total", "request"): 2 * 66,
        ("rokv_broker_forwarded_frames_total", "reply"): 2 * 66,
    }
    expected_by_key = {}
    for (name, labels), (key, value) in zip(COUNTERS, expected.items()):
        assert key[0] == name
        expected_by_key[f"{name}{sorted(labels.items())}"] = value

    def deltas() -> dict[str, float]:
        now = _counts(metered.address)
        return {k: now[k] - before[k] for k in now}

    try:
        wait_for(lambda: deltas() == expected_by_key, 10, "the published counts to reach the load's")
    except AssertionError:
        pass  # the comparison below shows the difference
    assert deltas() == expected_by_key
    samples = scrape(metered.address)
    # Per worker, and the dataset each serves; no key ever becomes a label value.
    assert label_values(samples, "rokv_worker_dataset_keys", "worker") == ["worker_00", "worker_01"]
    assert {v for (n, _), v in samples.items() if n == "rokv_worker_dataset_keys"} == {len(example)}
    text = json.dumps(sorted(str(k) for k in samples))
    assert not any(key in text for key in found[:140] + missing[:40])
    assert total(samples, "rokv_broker_workers_connected") == 2
    assert total(samples, "rokv_broker_clients_connected") == 0
    assert total(samples, "rokv_broker_up") == 1
    status, report = health(metered.address)
    assert status == 200 and report["status"] == "ok", report


def test_a_stopped_worker_leaves_no_ghost_and_its_totals_stay(metered: MeteredStack, example: dict[str, str]) -> None:
    with Client(metered.frontend) as client:
        client.get_many(list(example)[:500])
        for key in list(example)[:50]:
            client.get(key)
    settled = wait_for(
        lambda: (t := total(scrape(metered.address), "rokv_worker_keys_total")) >= 550 and t,
        10,
        "the load to be published",
    )
    metered.workers[1].stop()  # SIGTERM: it publishes its last counts and retires its gauges
    samples = scrape(metered.address)
    assert label_values(samples, "rokv_worker_dataset_info", "worker") == ["worker_00"]
    assert label_values(samples, "rokv_worker_heartbeat_timestamp_seconds", "worker") == ["worker_00"]
    assert total(samples, "rokv_worker_keys_total") == settled  # nothing lost, nothing counted twice
    metered.workers[0].popen.kill()  # SIGKILL: the exporter retires it at the next scrape
    metered.workers[0].popen.wait()
    samples = scrape(metered.address)
    assert label_values(samples, "rokv_worker_dataset_info", "worker") == []
    assert total(samples, "rokv_worker_keys_total") == settled
    # The dead processes' counters were merged into one archive per type.
    names = sorted(f.name for f in metered.folder.iterdir())
    assert "counter_archive.db" in names and "histogram_archive.db" in names
    assert not any(n.startswith("histogram_") and n != "histogram_archive.db" for n in names), names


def test_a_stuck_worker_makes_the_host_unhealthy_until_it_serves_again(metered: MeteredStack) -> None:
    import signal

    metered.workers[0].signal(signal.SIGSTOP)
    try:
        status, report = wait_for(
            lambda: (r := health(metered.address))[0] == 503 and r, 15, "/healthz to see the stopped worker"
        )
        assert "worker_00" in report["reason"] and "stuck" in report["reason"], report
    finally:
        metered.workers[0].signal(signal.SIGCONT)
    wait_for(lambda: health(metered.address)[0] == 200, 15, "/healthz to recover")


# ------------------------------------------------ the multiprocess folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write(path: Path, values: dict[str, float]) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    d = MmapedDict(str(path))
    for name, value in values.items():
        d.write_value(mmap_key("m", name, (), (), "help"), value, 0.0)
    d.close()


def _read(path: Path) -> dict[str, float]:
    from prometheus_client.mmap_dict import MmapedDict

    return {json.loads(k)[1]: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(path))}


def test_sweep_merges_the_counts_of_dead_processes_and_keeps_the_live(tmp_path: Path) -> None:
    dead, other = _dead_pid(), _dead_pid()
    _write(tmp_path / f"counter_{dead}.db", {"a_total": 3, "b_total": 1})
    _write(tmp_path / f"counter_{other}.db", {"a_total": 4})
    _write(tmp_path / "counter_archive.db", {"a_total": 10})
    _write(tmp_path / f"gauge_livemostrecent_{dead}.db", {"g": 1})
    import os

    _write(tmp_path / f"counter_{os.getpid()}.db", {"a_total": 100})
    assert set(metricfiles.sweep(tmp_path)) == {dead, other}
    assert _read(tmp_path / "counter_archive.db") == {"a_total": 17, "b_total": 1}
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["counter_archive.db", f"counter_{os.getpid()}.db"])


def test_a_merge_interrupted_before_the_archive_is_replaced_is_undone(tmp_path: Path) -> None:
    dead = _dead_pid()
    _write(tmp_path / f"counter_{dead}.db", {"a_total": 3})
    _write(tmp_path / "counter_archive.db", {"a_total": 10})
    _write(tmp_path / "counter_archive.db.new", {"a_total": 13})
    (tmp_path / "counter_archive.journal").write_text(json.dumps([f"counter_{dead}.db"]))
    metricfiles.recover(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["counter_archive.db", f"counter_{dead}.db"])
    metricfiles.sweep(tmp_path)
    assert _read(tmp_path / "counter_archive.db") == {"a_total": 13}


def test_a_merge_interrupted_after_the_archive_is_replaced_is_finished(tmp_path: Path) -> None:
    dead = _dead_pid()
    _write(tmp_path / f"counter_{dead}.db", {"a_total": 3})
    _write(tmp_path / "counter_archive.db", {"a_total": 13})  # already counts it
    (tmp_path / "counter_archive.journal").write_text(json.dumps([f"counter_{dead}.db"]))
    metricfiles.sweep(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["counter_archive.db"]
    assert _read(tmp_path / "counter_archive.db") == {"a_total": 13}


# ------------------------------------------------------------- rokv top


def test_quantiles_interpolate_within_a_bucket_like_prometheus() -> None:
    buckets = {0.001: 50.0, 0.002: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.75, buckets) == pytest.approx(0.0015)
    assert quantile(0.5, {0.001: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.001: 0.0, float("inf"): 10.0}) == 0.001  # past the last bound


def _worker(name: str, requests: float, digest: str = "blake2b-256:" + "a" * 64) -> WorkerTotals:
    return WorkerTotals(
        name,
        requests,
        {"found": requests * 9, "not_found": requests},
        {1e-5: requests * 0.5, 1e-4: requests, float("inf"): requests},
        digest,
        "/data/x.rokv",
        10_000_000,
    )


def test_the_view_rates_flags_the_odd_dataset_and_fits_80_columns() -> None:
    before = [
        HostScrape("198.18.0.1:9555", 0.0, {f"worker_{i:02d}": _worker(f"worker_{i:02d}", 100) for i in range(3)}),
        HostScrape(
            "198.18.0.2:9555", 0.0, {"a-very-long-worker-name-indeed": _worker("x", 0, "blake2b-256:" + "b" * 64)}
        ),
    ]
    now = [
        HostScrape("198.18.0.1:9555", 2.0, {f"worker_{i:02d}": _worker(f"worker_{i:02d}", 2100) for i in range(3)}),
        HostScrape(
            "198.18.0.2:9555", 2.0, {"a-very-long-worker-name-indeed": _worker("x", 50, "blake2b-256:" + "b" * 64)}
        ),
        HostScrape("198.18.0.3:9555", 2.0, error="timed out"),
    ]
    shown = view(before, now)
    assert shown["majority_dataset"] == "blake2b-256:" + "a" * 64
    assert shown["flagged"] == [{"host": "198.18.0.2:9555", "worker": "x", "dataset": "blake2b-256:" + "b" * 64}]
    first = shown["hosts"][0]
    assert first["requests_per_second"] == pytest.approx(3000)
    assert first["keys_per_second"] == pytest.approx(30000)
    assert first["hit_ratio"] == pytest.approx(0.9)
    assert first["workers"][0]["p50_seconds"] == pytest.approx(1e-5)
    lines = render(shown, 1.0)
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    assert any("!" in line and line.lstrip().startswith("x") for line in lines), lines
    assert any("unreachable: timed out" in line for line in lines)


def test_rokv_top_says_what_is_wrong_with_its_arguments() -> None:
    for argv, says in (
        (["top", "--once"], "give --metrics"),
        (["top", "--once", "--metrics", "nohost"], "HOST:PORT"),
        (["top", "--once", "--metrics", "h:99999"], "1 to 65535"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "rokv", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in __import__("os").environ.items() if k != "ROKV_METRICS"},
        )
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_rokv_top_once_json_reports_a_running_pool(metered: MeteredStack, example: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rokv", "top", "--once", "--json", "--interval", "0.5", "--metrics", metered.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    (host,) = shown["hosts"]
    assert host["health"]["status"] == "ok"
    assert [w["name"] for w in host["workers"]] == ["worker_00", "worker_01"]
    assert {w["keys"] for w in host["workers"]} == {len(example)} and shown["flagged"] == []
    assert host["brokers"][0]["up"] is True and host["brokers"][0]["workers_connected"] == 2
