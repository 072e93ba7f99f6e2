"""The dataset generator, data/generate.py: deterministic, well-formed, unique keys."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from rokv.dataset import load_dataset
from rokv.keys import is_canonical, normalize_key

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "generate.py"
EXAMPLE = REPO / "data" / "example.json"
VALUE = re.compile(r"[a-z]{2,9}( [a-z]{2,9}){1,4}")


def _load_generator() -> ModuleType:
    # data/ is not a package: load the script by its path.
    spec = importlib.util.spec_from_file_location("rokv_data_generate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def read_json(path: Path) -> dict[str, str]:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> dict[str, str]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(list(record) == ["key", "value"] for record in records)
    return {record["key"]: record["value"] for record in records}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    gen.generate(a, 500, seed=7)
    gen.generate(b, 500, seed=7)
    gen.generate(c, 500, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert not set(read_json(a)) & set(read_json(c))


def test_json_and_jsonl_hold_the_same_pairs(tmp_path: Path) -> None:
    gen.generate(tmp_path / "d.json", 300, seed=3)
    gen.generate(tmp_path / "d.jsonl", 300, seed=3)
    as_json = read_json(tmp_path / "d.json")
    assert as_json == read_jsonl(tmp_path / "d.jsonl")
    assert list(as_json) == list(read_jsonl(tmp_path / "d.jsonl"))  # same order too
    assert load_dataset(tmp_path / "d.json") == load_dataset(tmp_path / "d.jsonl") == as_json


def test_keys_are_canonical_unique_uuid4_and_values_are_words(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    gen.generate(path, 2000, seed=11)
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 2000
    for key in keys:
        assert is_canonical(key) and normalize_key(key) == key
        parsed = uuid.UUID(key)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, key)
    values = [json.loads(line)["value"] for line in lines]
    assert all(VALUE.fullmatch(value) for value in values)
    # Every word count and length in range shows up: the draws cover the ranges.
    assert {len(v.split()) for v in values} == {2, 3, 4, 5}
    assert {len(w) for v in values for w in v.split()} == set(range(2, 10))


def test_json_layout_is_one_pair_per_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    gen.generate(path, 3, seed=1)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "{" and lines[-2:] == ["}", ""]
    assert len(lines) == 3 + 3
    for line in lines[1:3]:
        assert re.fullmatch(r'"[0-9a-f-]{36}": "[a-z ]+",', line)
    assert re.fullmatch(r'"[0-9a-f-]{36}": "[a-z ]+"', lines[3])


def test_defaults_reproduce_the_committed_example(tmp_path: Path) -> None:
    path = tmp_path / "example.json"
    gen.generate(path)
    assert path.read_bytes() == EXAMPLE.read_bytes()
    assert (gen.DEFAULT_COUNT, gen.DEFAULT_SEED) == (10_000, 20261127)


def test_fewer_pairs_are_a_prefix_of_more(tmp_path: Path) -> None:
    # The draws do not depend on the count (the uniqueness filter is sized by
    # it, but only settles doubts), so a small dataset is the start of a big one.
    gen.generate(tmp_path / "small.jsonl", 10, seed=5)
    gen.generate(tmp_path / "big.jsonl", 1000, seed=5)
    small = (tmp_path / "small.jsonl").read_bytes()
    assert (tmp_path / "big.jsonl").read_bytes().startswith(small)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_small_counts(tmp_path: Path, count: int) -> None:
    gen.generate(tmp_path / "d.json", count)
    gen.generate(tmp_path / "d.jsonl", count)
    assert len(read_json(tmp_path / "d.json")) == count
    assert read_json(tmp_path / "d.json") == read_jsonl(tmp_path / "d.jsonl")
    assert load_dataset(tmp_path / "d.json", allow_empty=True) == load_dataset(tmp_path / "d.jsonl", allow_empty=True)
    if count == 0:
        assert (tmp_path / "d.json").read_text() == "{\n}\n"
        assert (tmp_path / "d.jsonl").read_bytes() == b""


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    gen.generate(tmp_path / "d.txt", 5, fmt="jsonl")
    gen.generate(tmp_path / "d.jsonl", 5)
    assert (tmp_path / "d.txt").read_bytes() == (tmp_path / "d.jsonl").read_bytes()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        gen.generate(tmp_path / "d.txt", 5)
    with pytest.raises(ValueError, match="format"):
        gen.generate(tmp_path / "d.json", 5, fmt="csv")
    with pytest.raises(ValueError, match="count"):
        gen.generate(tmp_path / "d.json", -1)
    assert list(tmp_path.iterdir()) == []


class _RepeatingRandom(random.Random):
    """Draws the first 128-bit number twice in a row, then carries on."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.first: int | None = None

    def getrandbits(self, k: int) -> int:
        if k == 128 and self.first is not None:
            first, self.first = self.first, -1
            if first >= 0:
                return first
        bits = super().getrandbits(k)
        if k == 128 and self.first is None:
            self.first = bits
        return bits


def test_a_repeated_key_is_drawn_again(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        gen._write(out, path, 5, _RepeatingRandom(1), "jsonl")
    keys = list(read_jsonl(path))
    assert len(keys) == len(set(keys)) == 5
    # The repeat cost no other draw: the output is what no repeat gives.
    plain = tmp_path / "plain.jsonl"
    with open(plain, "w", encoding="utf-8") as out:
        gen._write(out, plain, 5, random.Random(1), "jsonl")
    assert path.read_bytes() == plain.read_bytes()


def test_filter_false_alarms_do_not_change_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen.generate(tmp_path / "plain.json", 200, seed=9)
    # A filter that always doubts sends every key to the exact check.
    monkeypatch.setattr(gen._BloomFilter, "add", lambda self, bits: True)
    gen.generate(tmp_path / "doubting.json", 200, seed=9)
    assert (tmp_path / "plain.json").read_bytes() == (tmp_path / "doubting.json").read_bytes()


def test_file_contains_finds_a_needle_across_reads(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10 + b"needle" + b"y" * 10)
    for chunk in range(1, 20):
        assert gen._file_contains(path, b"needle", chunk)
        assert not gen._file_contains(path, b"needles", chunk)


def test_failure_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "d.json"
    target.write_text("previous\n")
    calls = 0

    def failing_value(rng: random.Random) -> str:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("disk on fire")
        return "some words"

    monkeypatch.setattr(gen, "_value", failing_value)
    with pytest.raises(RuntimeError):
        gen.generate(target, 10)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


def test_output_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        gen.generate(tmp_path / "d.json", 1)
    finally:
        os.umask(old)
    assert (tmp_path / "d.json").stat().st_mode & 0o777 == 0o640


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def test_command_line(tmp_path: Path) -> None:
    done = run_script("--count", "25", "--seed", "4", "-o", str(tmp_path / "d.jsonl"))
    assert done.returncode == 0, done.stderr
    gen.generate(tmp_path / "ref.jsonl", 25, 4)
    assert (tmp_path / "d.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()

    done = run_script("--count", "25", "--seed", "4", "--format", "jsonl", "--output", str(tmp_path / "d.out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d.out").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "5"], "required"),
        (["-o", "d.txt"], "--format"),
        (["-o", "d.json", "--count", "-2"], "--count"),
        (["-o", "d.json", "--format", "xml"], "invalid choice"),
        (["-o", "missing-dir/d.json"], "cannot write"),
    ],
)
def test_command_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("count", [0, 1, 300_000])  # 300,000: more than one batch
def test_fast_mode_draws_the_same_kind_of_pairs(tmp_path: Path, count: int) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    gen.generate_fast(a, count, seed=7)
    gen.generate_fast(b, count, seed=7)
    assert a.read_bytes() == b.read_bytes()
    pairs = load_dataset(a, allow_empty=True)  # what a worker would serve, every key unique
    assert len(pairs) == count
    for line in a.read_text().splitlines()[:1000]:
        record = json.loads(line)
        assert line == json.dumps(record) and list(record) == ["key", "value"]
        assert is_canonical(record["key"]) and uuid.UUID(record["key"]).version == 4
        assert VALUE.fullmatch(record["value"])
    if count > 1:
        gen.generate_fast(c, count, seed=8)
        assert not set(pairs) & set(load_dataset(c))
        words = [len(v.split()) for v in pairs.values()]
        assert set(words) == {2, 3, 4, 5} and 3.4 < sum(words) / len(words) < 3.6


def test_fast_mode_from_the_command_line(tmp_path: Path) -> None:
    done = run_script("--fast", "--count", "25", "--seed", "4", "-o", str(tmp_path / "d.jsonl"))
    assert done.returncode == 0, done.stderr
    gen.generate_fast(tmp_path / "ref.jsonl", 25, 4)
    assert (tmp_path / "d.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    done = run_script("--fast", "-o", str(tmp_path / "d.json"))
    assert done.returncode == 2 and "JSON Lines only" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl", "ref.jsonl"]
