"""``rokv bench``: it checks every answer against the dataset, detects wrong
ones and counts errors by kind. Runs are short and bounded by count."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rokv import InvalidKey, KeyNotFound, ProtocolError, ServiceUnavailable
from rokv.loadgen import INVALID, NOT_FOUND, Probe, Tally, check, make_probes

from support.procs import REPO, Stack, child_env, free_port, scaled

MISSING = "11111111-2222-4333-8444-555555555555"


def bench(*args: str, timeout: float = 60) -> tuple[int, dict | str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "rokv", "bench", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )
    out: dict | str = result.stdout
    if "--json" in args and result.stdout.strip():
        out = json.loads(result.stdout)
    return result.returncode, out, result.stderr


def test_a_mixed_load_is_all_right_and_counted_by_kind(stack: Stack) -> None:
    code, report, err = bench(
        "--endpoint",
        stack.frontend,
        "-p",
        "2",
        "-c",
        "16",
        "-n",
        "3000",
        "--missing",
        "0.2",
        "--invalid",
        "0.1",
        "--json",
    )
    assert code == 0, err
    assert isinstance(report, dict)
    assert report["requests"] == report["keys"] + report["keys_rejected"] == 3000
    assert report["wrong"] == 0 and report["errors"] == {}
    answers = report["answers"]
    assert report["keys_rejected"] == answers["invalid_key"]
    assert sum(answers.values()) == 3000
    # Shares drawn at random: loose bounds that still catch a miscount.
    assert 300 < answers["not_found"] < 900
    assert 100 < answers["invalid_key"] < 500
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


@pytest.mark.parametrize(
    "args",
    [["--client", "sync", "-c", "1"], ["-k", "25", "-c", "4", "--invalid", "0.01"], ["--no-coalesce", "-c", "32"]],
)
def test_every_mode_prints_a_table_and_finds_nothing_wrong(stack: Stack, args: list[str]) -> None:
    code, table, err = bench("--endpoint", stack.frontend, "-n", "400", "--missing", "0.1", *args)
    assert code == 0, err
    assert isinstance(table, str)
    assert "wrong answers 0" in table and "requests" in table and "p99.9" in table


def test_a_wrong_value_is_detected_and_reported(stack: Stack, example: dict[str, str], tmp_path: Path) -> None:
    # The bench believes in a dataset where 10 of its 200 keys differ from
    # what the service holds, and one key the service lacks.
    keys = list(example)[:200]
    believed = {k: example[k] for k in keys}
    for k in keys[:10]:
        believed[k] = example[k] + " (not what is served)"
    believed[MISSING] = "a value the service does not have"
    data = tmp_path / "believed.json"
    data.write_text(json.dumps(believed), encoding="utf-8")
    code, report, err = bench("--endpoint", stack.frontend, "--data", str(data), "-n", "2000", "-c", "8", "--json")
    assert code == 1, err
    assert isinstance(report, dict)
    assert report["wrong"] >= 10
    assert report["wrong_examples"]
    code, table, _ = bench("--endpoint", stack.frontend, "--data", str(data), "-n", "2000", "-k", "20", "-c", "8")
    assert code == 1
    assert "wrong answers 0" not in table and "wrong value at index" in table


def test_requests_without_an_answer_are_counted_as_unavailable(make_stack) -> None:
    stack: Stack = make_stack(workers=1).wait_ready()
    worker = stack.workers[0]
    # Stop the only worker shortly into a 2 s run, for about a second.
    stopper = threading.Timer(0.8, worker.signal, (signal.SIGSTOP,))
    resumer = threading.Timer(1.8, worker.signal, (signal.SIGCONT,))
    stopper.start()
    resumer.start()
    try:
        code, report, err = bench(
            "--endpoint", stack.frontend, "-d", "2", "-c", "4", "--timeout", "0.2", "--retries", "0", "--json"
        )
    finally:
        stopper.cancel()
        resumer.join()
        worker.signal(signal.SIGCONT)
    assert code == 3, err
    assert isinstance(report, dict)
    assert report["errors"].get("unavailable", 0) > 0
    assert report["wrong"] == 0


def test_no_service_and_bad_usage_fail_fast() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    code, _, err = bench("--endpoint", endpoint, "-n", "10", "--timeout", "0.1", "--retries", "0")
    assert code == 3 and "cannot reach" in err
    code, _, err = bench("--endpoint", endpoint, "--missing", "0.7", "--invalid", "0.5")
    assert code == 2 and "must not exceed 1" in err
    code, _, err = bench("--endpoint", endpoint, "--data", "/nonexistent.json")
    assert code == 2 and err == "rokv: /nonexistent.json: no such file\n"
    code, _, err = bench("--endpoint", endpoint, "--data", "/srv/data.rokv")
    assert code == 2 and "give the .json or .jsonl it was built from" in err


REFUSED = {
    "number.json": '{"8a35eb59-62b3-481c-8875-1f248df4c952": 5}',
    "null.jsonl": '{"key": "8a35eb59-62b3-481c-8875-1f248df4c952", "value": null}\n',
    "twice.json": '{"8a35eb59-62b3-481c-8875-1f248df4c952": "a", "8A35EB59-62B3-481C-8875-1F248DF4C952": "b"}',
    "surrogate.json": '{"8a35eb59-62b3-481c-8875-1f248df4c952": "\\ud800"}',
    "shape.jsonl": '{"key": "8a35eb59-62b3-481c-8875-1f248df4c952"}\n',
    "empty.json": "{}",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_dataset_the_workers_refuse_is_refused_with_the_workers_message(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(REFUSED[name], encoding="utf-8")
    worker = subprocess.run(
        [sys.executable, "-m", "rokv.worker", "--backend", f"tcp://127.0.0.1:{free_port()}", "--data", str(path)],
        cwd=REPO,
        env=child_env(TMPDIR=str(tmp_path)),  # the worker's refusal record stays in tmp_path
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert worker.returncode == 1 and worker.stderr.startswith("rokv-worker: "), worker.stderr
    code, _, err = bench("--endpoint", f"tcp://127.0.0.1:{free_port()}", "--data", str(path))
    assert code == 2
    assert err == "rokv: " + worker.stderr.removeprefix("rokv-worker: ")


def test_check_tells_right_from_wrong_and_counts_each_kind(example: dict[str, str]) -> None:
    k1, k2 = list(example)[:2]
    hit, miss, bad = Probe(example, [k1]), Probe(example, [MISSING]), Probe(example, ["nope"])
    many = Probe(example, [k1, MISSING, k2.upper()])
    many_bad = Probe(example, [k1, "nope", "nope2"])
    assert (hit.expect, miss.expect, bad.expect, bad.invalid_key) == (example[k1], NOT_FOUND, INVALID, "nope")
    assert many.expect == [example[k1], None, example[k2]]
    assert (many_bad.expect, many_bad.invalid_key) == (INVALID, "nope")
    tally = Tally()
    right = [
        (hit, example[k1]),
        (miss, KeyNotFound("x", MISSING)),
        (bad, InvalidKey("x", "nope")),
        (many, [example[k1], None, example[k2]]),
        (many_bad, InvalidKey("x", "nope")),
    ]
    for probe, result in right:
        check(tally, probe, result)
    assert tally.wrong == 0
    assert dict(tally.answers) == {"value": 2, NOT_FOUND: 1, INVALID: 2}
    assert tally.keys_rejected == 1 + 3  # the refused get and get_many
    wrong = [
        (hit, example[k2]),
        (hit, KeyNotFound("x", k1)),
        (miss, "a value"),
        (many, [example[k1], None, None]),
        (many_bad, InvalidKey("x", "nope2")),
        (many_bad, [None, None, None]),
        (bad, "a value"),
    ]
    for probe, result in wrong:
        check(tally, probe, result)
    assert tally.wrong == len(wrong)
    for error in (
        ServiceUnavailable("down"),
        ServiceUnavailable("down"),
        ProtocolError("no", "bad_request"),
        RuntimeError("boom"),
    ):
        check(tally, hit, error)
    assert dict(tally.errors) == {"unavailable": 2, "protocol:bad_request": 1, "other:RuntimeError": 1}
    assert tally.keys_rejected == 4 + 3 + 4  # a wrong refusal and the errors reject keys too
    assert tally.wrong == len(wrong)


def test_the_probe_pool_draws_the_asked_shares(example: dict[str, str]) -> None:
    probes = make_probes(example, 1, missing=0.25, invalid=0.25, seed=7, count=4000)
    kinds = [p.expect if p.expect in (NOT_FOUND, INVALID) else "hit" for p in probes]
    assert 800 < kinds.count(NOT_FOUND) < 1200
    assert 800 < kinds.count(INVALID) < 1200
    assert all(p.keys[0] in example for p, kind in zip(probes, kinds) if kind == "hit")


def test_keys_per_second_counts_only_answered_keys(stack: Stack) -> None:
    # With 100 keys a request and 1% invalid keys, about 63% of the requests
    # are refused whole: their keys were never answered.
    code, report, err = bench(
        "--endpoint", stack.frontend, "-n", "300", "-k", "100", "-c", "8", "--invalid", "0.01", "--json"
    )
    assert code == 0, err
    assert isinstance(report, dict)
    refused = report["answers"]["invalid_key"]
    assert 100 < refused < 290
    assert report["keys_rejected"] == 100 * refused
    assert report["keys"] == 100 * (300 - refused)
    assert report["keys_per_s"] == pytest.approx(report["keys"] / report["elapsed_s"])
    code, table, err = bench("--endpoint", stack.frontend, "-n", "300", "-k", "100", "-c", "8", "--invalid", "0.01")
    assert code == 0, err
    assert isinstance(table, str)
    keys = re.search(r"^  keys +([\d,]+) +([\d,]+) /s  answered$", table, re.M)
    rejected = re.search(r"^  rejected +([\d,]+)  keys of refused or unanswered requests$", table, re.M)
    assert keys and rejected, table
    assert int(keys[1].replace(",", "")) + int(rejected[1].replace(",", "")) == 30_000
    assert int(rejected[1].replace(",", "")) > 10_000


def test_the_live_line_ends_on_the_reports_figures(stack: Stack) -> None:
    # The live line is drawn only on a terminal: give the bench one.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rokv", "bench", "--endpoint", stack.frontend, "-n", "3000", "-c", "8"],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    try:
        os.close(slave)
        slave = -1
        live = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the bench closed its end
                break
            if not chunk:
                break
            live += chunk
        table, _ = proc.communicate(timeout=scaled(60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0, live
    elapsed = re.search(r"^  elapsed +([\d.]+) s$", table, re.M)
    requests = re.search(r"^  requests +([\d,]+) +([\d,]+) /s$", table, re.M)
    assert elapsed and requests, table
    text = live.decode()
    assert text.endswith("\n")  # the line is kept, not erased
    last = text.rstrip("\r\n").rsplit("\r", 1)[-1].replace("\x1b[K", "").split()
    assert last[:7] == [elapsed[1], "s", requests[1], "requests", requests[2], "req/s", "3,000"], live
