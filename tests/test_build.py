"""``rokv build`` / ``inspect`` / ``verify``: the loader's rules and messages,
atomic output, the same bytes whatever the memory and jobs, bounded memory,
temporary files removed on every exit, and the commands' output and exit codes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rokv.dataset import DatasetError, load_dataset
from rokv.keys import random_key
from rokv.worker.build import _Bar, build, plan
from rokv.worker.layout import HEADER_SIZE
from rokv.worker.reader import open_store, verify_store
from rokv.worker.writer import write_store

from support.procs import REPO, child_env, scaled, wait_for

K1 = "8a35eb59-62b3-481c-8875-1f248df4c952"
K2 = "0b7e1f3a-9c4d-4e2f-a1b2-c3d4e5f60718"
K3 = "f0e1d2c3-b4a5-4968-b7a6-958473625140"


def rokv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rokv", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


def line(key: object, value: object) -> str:
    return json.dumps({"key": key, "value": value}) + "\n"


BAD_JSONL = {
    "invalid key": line("nope", "v"),
    "version 1 key": line(K1.replace("-481c-", "-181c-"), "v"),
    "key not a string": line(5, "v"),
    "value not a string": line(K1, 5),
    "null value": line(K1, None),
    "lone surrogate": '{"key": "%s", "value": "a\\udc00b"}\n' % K1,
    "syntax error": '{"key": "%s", "value": "v"\n' % K1,
    "two records on a line": line(K1, "a").strip() + line(K2, "b"),
    "extra member": json.dumps({"key": K1, "value": "v", "x": 1}) + "\n",
    "missing value": json.dumps({"key": K1}) + "\n",
    "repeated member": '{"key": "%s", "key": "%s", "value": "v"}\n' % (K1, K2),
    "array": "[1, 2]\n",
    "duplicate": line(K1, "a") + line(K2, "b") + line(K1, "c"),
    "duplicate, other spelling": line(K1, "a") + line(K1.upper().replace("-", ""), "b"),
    "two duplicated keys": line(K2, "a") + line(K1, "b") + line(K3, "x") + line(K1, "c") + line(K2, "d"),
    "triple": line(K3, "a") + line(K2, "y") + line(K3, "b") + line(K3, "c"),
    "duplicate with the same value": line(K1, "a") + line(K1, "a"),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_jsonl_refused_with_the_loaders_message(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src.jsonl"
    src.write_text(line(K3.replace("f0e1", "aaaa"), "fine") * (case != "triple") + BAD_JSONL[case], encoding="utf-8")
    with pytest.raises(DatasetError) as expected:
        load_dataset(src)
    out = tmp_path / "out.rokv"
    with pytest.raises(DatasetError) as got:
        build(src, out)
    assert str(got.value) == str(expected.value)
    assert got.value.line == expected.value.line
    assert os.listdir(tmp_path) == ["src.jsonl"]  # no output, no temporary left behind


def test_invalid_utf8_refused_like_the_loader(tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(line(K1, "a").encode() + b'{"key": "' + K2.encode() + b'", "value": "\xff"}\n')
    with pytest.raises(DatasetError) as expected:
        load_dataset(src)
    with pytest.raises(DatasetError) as got:
        build(src, tmp_path / "out.rokv")
    assert str(got.value) == str(expected.value) and "not valid UTF-8" in str(got.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.json", '{"%s": "a", "%s": "b"}' % (K1, K1.upper())),
        ("d.json", '{"%s": 1}' % K1),
        ("d.json", "[]"),
        ("d.txt", "{}"),
        ("d.rokv", "{}"),
        ("missing.jsonl", None),
    ],
)
def test_other_refusals_match_the_loader(tmp_path: Path, name: str, content: str | None) -> None:
    src = tmp_path / name
    if content is not None:
        src.write_text(content)
    with pytest.raises(DatasetError) as expected:
        load_dataset(src)
    with pytest.raises(DatasetError) as got:
        build(src, tmp_path / "out.rokv")
    assert str(got.value) == str(expected.value)
    assert not (tmp_path / "out.rokv").exists()


def test_a_failed_build_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(line(K1, "v1"))
    out = tmp_path / "data.rokv"
    build(good, out)
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line(K1, "v2") + line("nope", "x"))
    with pytest.raises(DatasetError):
        build(bad, out)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "data.rokv", "good.jsonl"]


def test_a_killed_build_leaves_no_file_at_the_target(tmp_path: Path) -> None:
    # Big enough that the write phase lasts a while on any machine.
    src = tmp_path / "big.jsonl"
    with open(src, "w") as f:
        for i in range(150_000):
            f.write(line(f"{i:08x}-0000-4000-8000-{i * 7919 % 10**12:012d}", "v" * 200))
    out = tmp_path / "out.rokv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rokv", "build", str(src), "-o", str(out), "--quiet"],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The output's temporary file appears when writing starts: kill then.
        tmp = wait_for(
            lambda: [n for n in os.listdir(tmp_path) if n.startswith(".out.rokv.")],
            60,
            "the build to start writing",
            interval=0.002,
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(scaled(10)) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not out.exists()
    assert tmp  # a killed writer can leave its temporary (hidden, named for its pid), never the target


def test_progress_reports_every_phase(tmp_path: Path) -> None:
    src = tmp_path / "s.jsonl"
    src.write_text("".join(line(f"{i:08x}-0000-4000-8000-000000000000", "v") for i in range(70_000)))
    seen: dict[str, list[tuple[float, int]]] = {}
    build(
        src,
        tmp_path / "s.rokv",
        lambda phase, fraction, keys: seen.setdefault(phase, []).append((fraction, keys)),
        memory=1 << 20,  # ranges of 64 KB: the reading phase reports several times
        jobs=2,
    )
    assert list(seen) == ["reading", "sorting", "hashing"]
    assert 0 < seen["reading"][0][0] < 1 and seen["reading"][-1] == (1.0, 70_000)
    assert seen["sorting"][-1] == (1.0, 70_000) and seen["hashing"][-1][0] == 1.0
    assert [keys for _, keys in seen["reading"]] == sorted(keys for _, keys in seen["reading"])


def test_the_bar_shows_phase_rate_and_time_left(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    clock = iter([100.0, 100.0, 102.0])
    monkeypatch.setattr("rokv.worker.build.time.monotonic", lambda: next(clock))
    bar = _Bar()
    bar("reading", 0.0, 0)
    bar("reading", 0.5, 1_000_000)
    shown = capsys.readouterr().err.split("\r")[-1]
    assert shown.startswith("reading  [###############...............]  50%")
    assert "500,000 keys/s" in shown and "2 s left" in shown and shown.endswith(" 2.0 s")


def mixed_pairs(count: int, seed: int = 11) -> tuple[dict[str, str], str]:
    """``count`` pairs, and a .jsonl text of them that takes every parsing
    path: json.dumps lines, other spacing, escapes, other key spellings,
    members in the other order, blank lines, non-ASCII values."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    lines = []
    for i in range(count):
        key = random_key(rng)
        value = "".join(rng.choice('abcé😀 "\\\n\t') for _ in range(rng.randrange(0, 30)))
        pairs[key] = value
        kind = i % 97
        if kind == 1:
            lines.append('{"key":"%s","value":%s}\r\n' % (key, json.dumps(value)))
        elif kind == 2:
            lines.append(json.dumps({"key": key.upper(), "value": value}) + "\n")
        elif kind == 3:
            lines.append(json.dumps({"value": value, "key": key}) + "\n\n")
        else:
            lines.append(json.dumps({"key": key, "value": value}, ensure_ascii=bool(kind & 1)) + "\n")
    return pairs, "".join(lines)


def without_build_time(data: bytes) -> bytes:
    """The file but its build time and the header CRC that covers it."""
    return data[:24] + data[32:120] + data[HEADER_SIZE:]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, bytes]:
    """A source, and the file the in-memory writer makes of its pairs (the
    previous builder's path: everything sorted in memory at once)."""
    pairs, text = mixed_pairs(20_000)
    folder = tmp_path_factory.mktemp("mixed")
    src = folder / "src.jsonl"
    src.write_text(text, encoding="utf-8")
    ordered = sorted(pairs)
    keys = np.frombuffer(bytes.fromhex("".join(ordered).replace("-", "")), "V16")
    encoded = [pairs[k].encode() for k in ordered]
    sizes = np.array([len(v) + 1 for v in encoded], np.uint64)
    ref = folder / "ref.rokv"
    write_store(ref, keys, sizes, [b"".join(v + b"\xff" for v in encoded)])
    return pairs, src, ref.read_bytes()


@pytest.mark.parametrize(("memory", "jobs"), [(2 << 30, 1), (2 << 30, 2), (1 << 20, 1), (1 << 20, 2), (3 << 20, 3)])
def test_same_bytes_whatever_the_memory_and_jobs(tmp_path: Path, mixed, memory: int, jobs: int) -> None:
    pairs, src, reference = mixed
    if memory < 1 << 30:  # a budget this small forces many buckets and parse ranges
        assert plan(src.stat().st_size, memory, jobs)[0] >= 4
    out = tmp_path / "out.rokv"
    build(src, out, memory=memory, jobs=jobs)
    assert without_build_time(out.read_bytes()) == without_build_time(reference)
    assert verify_store(out).count == len(pairs)
    with open_store(out) as store:
        assert dict(store.items()) == pairs
    assert os.listdir(tmp_path) == ["out.rokv"]  # spill files and temporaries gone


@pytest.mark.parametrize("case", ["duplicate", "two duplicated keys", "invalid key", "lone surrogate", "syntax error"])
def test_refusals_are_the_loaders_with_many_buckets_and_jobs(tmp_path: Path, mixed, case: str) -> None:
    """A bad record deep in the file, found by one of several workers: the
    message and line are still the loader's (the first in the file)."""
    _, good, _ = mixed
    text = good.read_text(encoding="utf-8")
    middle = text.index("\n", len(text) // 2) + 1
    src = tmp_path / "src.jsonl"
    src.write_text(text[:middle] + BAD_JSONL[case] + text[middle:] + BAD_JSONL[case], encoding="utf-8")
    with pytest.raises(DatasetError) as expected:
        load_dataset(src)
    with pytest.raises(DatasetError) as got:
        build(src, tmp_path / "out.rokv", memory=1 << 20, jobs=2)
    assert (str(got.value), got.value.line) == (str(expected.value), expected.value.line)
    assert os.listdir(tmp_path) == ["src.jsonl"]


def big_source(path: Path, count: int = 300_000) -> Path:
    with open(path, "w") as f:
        rng = random.Random(1)
        for _ in range(count):
            f.write(line(random_key(rng), "v" * 100))
    return path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_removes_its_temporary_files(tmp_path: Path, signum: int) -> None:
    src = big_source(tmp_path / "big.jsonl")
    out = tmp_path / "out.rokv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rokv", "build", str(src), "-o", str(out), "--jobs", "2", "--memory", "400M"],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's job
    )
    try:
        # Stop it while it spills: the spill folder holds files.
        wait_for(
            lambda: [n for n in os.listdir(tmp_path) if n.endswith(".spill") and os.listdir(tmp_path / n)],
            scaled(60),
            "the build to spill",
            interval=0.002,
        )
        # Ctrl-C reaches the whole group; SIGTERM (a job runner, kill) the build alone.
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        assert proc.wait(scaled(30)) == -signum
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.stderr is not None
    assert f"build stopped by {signal.Signals(signum).name}" in proc.stderr.read().decode()
    assert sorted(os.listdir(tmp_path)) == ["big.jsonl"]
    wait_for(lambda: not children_of(proc.pid), scaled(10), "the build's workers to exit")


def test_a_worker_that_dies_fails_the_build_cleanly(tmp_path: Path) -> None:
    src = big_source(tmp_path / "big.jsonl")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rokv", "build", str(src), "-o", str(tmp_path / "out.rokv"), "--jobs", "2"],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: [n for n in os.listdir(tmp_path) if n.endswith(".spill") and os.listdir(tmp_path / n)],
            scaled(60),
            "the build to spill",
            interval=0.002,
        )
        os.kill(children_of(proc.pid)[0], signal.SIGKILL)  # as the kernel's OOM killer would
        assert proc.wait(scaled(30)) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "rokv: a build process died" in proc.stderr.read().decode()
    assert sorted(os.listdir(tmp_path)) == ["big.jsonl"]


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (its workers, if any are left)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


PEAK_RSS = """
import resource, sys
from rokv.worker.build import build
import numpy
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
build(sys.argv[1], sys.argv[2], jobs=1)
print(base * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


VERIFY_RSS = """
import resource, sys
from rokv.worker.build import cmd_inspect, cmd_verify
from rokv.worker.reader import open_store
import argparse, numpy
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert cmd_verify(argparse.Namespace(file=sys.argv[1])) == 0
assert cmd_inspect(argparse.Namespace(file=sys.argv[1])) == 0
print(base * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_verify_and_inspect_read_in_bounded_memory(tmp_path: Path) -> None:
    out = tmp_path / "big.rokv"
    build(big_source(tmp_path / "big.jsonl"), out)
    result = subprocess.run(
        [sys.executable, "-c", VERIFY_RSS, str(out)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stderr
    base, peak = map(int, result.stdout.split()[-2:])
    assert peak - base < min(16 << 20, out.stat().st_size // 4)


@pytest.mark.parametrize("name", ["big.json", "big.jsonl"])
def test_one_big_value_builds_in_about_twice_the_file(tmp_path: Path, name: str) -> None:
    """Issue 18: a .json of one 500 MB value took 17 times its size."""
    src = tmp_path / name
    value = "é" + "x" * (60 << 20)
    pairs = {K1: "small", K2: value, K3: "small"}
    if name.endswith(".jsonl"):
        text = "".join(json.dumps({"key": k, "value": v}, ensure_ascii=False) + "\n" for k, v in pairs.items())
    else:
        text = json.dumps(pairs, ensure_ascii=False)
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "big.rokv"
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(src), str(out)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    base, peak = map(int, result.stdout.split())
    assert peak - base <= 2.2 * src.stat().st_size, (peak - base) / src.stat().st_size
    with open_store(out) as store:
        assert store.get(K2) == value


def test_cli_build_inspect_verify(tmp_path: Path) -> None:
    src = tmp_path / "s.jsonl"
    src.write_text(line(K1, "one") + line(K2, "two"))
    out = tmp_path / "s.rokv"
    result = rokv("build", str(src), "-o", str(out))
    assert result.returncode == 0, result.stderr
    digest = open_store(out).digest
    assert f"built {out}: 2 keys" in result.stdout and digest in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal

    result = rokv("inspect", str(out))
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert info["keys"] == 2 and info["version"] == 1 and info["digest"] == digest
    assert info["file_size"] == out.stat().st_size and info["built"].endswith("Z")

    assert rokv("verify", str(out)).stdout == f"{out}: ok: 2 keys, digest {digest}\n"
    data = bytearray(out.read_bytes())
    data[-2] ^= 1
    out.write_bytes(bytes(data))
    result = rokv("verify", str(out))
    assert result.returncode == 1 and "corrupt: content digest" in result.stderr
    assert rokv("inspect", str(out)).returncode == 0  # the header itself is intact


def test_cli_refusals_and_exit_codes(tmp_path: Path) -> None:
    src = tmp_path / "s.jsonl"
    src.write_text(line(K1, "one") + line("nope", "x"))
    result = rokv("build", str(src), "-o", str(tmp_path / "s.rokv"))
    assert result.returncode == 1
    assert (
        result.stderr == f'rokv: {src}: line 2: invalid key: "nope" is not a UUID '
        f"(expected 8-4-4-4-12 or 32 hex digits, optionally in braces or after urn:uuid:)\n"
    )
    result = rokv("build", str(src), "-o", str(tmp_path / "s.bin"))
    assert result.returncode == 2 and "must end in .rokv" in result.stderr
    assert rokv("build", str(src)).returncode == 2  # -o is required
    result = rokv("inspect", str(src))
    assert result.returncode == 1 and "not a .rokv file" in result.stderr
    result = rokv("verify", str(tmp_path / "none.rokv"))
    assert result.returncode == 1 and "no such file" in result.stderr
    assert os.listdir(tmp_path) == ["s.jsonl"]


@pytest.mark.parametrize(("name", "content"), [("e.json", "{}"), ("e.jsonl", ""), ("e.jsonl", "\n  \n")])
def test_an_empty_source_is_refused_unless_allowed(tmp_path: Path, name: str, content: str) -> None:
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "e.rokv"
    result = rokv("build", str(src), "-o", str(out))
    assert result.returncode == 1
    assert result.stderr.startswith(f"rokv: {src}: the dataset holds no keys") and "--allow-empty" in result.stderr
    assert not out.exists()
    result = rokv("build", str(src), "-o", str(out), "--allow-empty")
    assert result.returncode == 0, result.stderr
    assert f"built {out}: 0 keys" in result.stdout
    assert open_store(out).header.count == 0
