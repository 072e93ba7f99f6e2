"""``rokv build`` / ``inspect`` / ``verify``: the loader's rules and messages,
atomic output, and the commands' output and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rokv.dataset import DatasetError, load_dataset
from rokv.worker.build import build
from rokv.worker.reader import open_store

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
    seen: dict[str, list[float]] = {}
    build(src, tmp_path / "s.rokv", lambda phase, fraction: seen.setdefault(phase, []).append(fraction))
    assert list(seen) == ["reading", "sorting", "writing"]
    assert seen["reading"][-1] == 1.0 and 0 < seen["reading"][0] < 1 and seen["writing"][-1] == 1.0


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
