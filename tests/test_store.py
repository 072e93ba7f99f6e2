"""The .rokv file: round trip through build and the mapped store, lookups of
every spelling, and every damaged file refused at open (or by verify)."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from rokv.dataset import DatasetError, load_dataset
from rokv.keys import random_key
from rokv.worker.build import build
from rokv.worker.layout import FORMAT_VERSION, HEADER_SIZE, StoreError
from rokv.worker.load import open_dataset
from rokv.worker.reader import open_store, verify_store

from support.procs import REPO, Stack, child_env, scaled, seen_workers

K1 = "8a35eb59-62b3-481c-8875-1f248df4c952"
MISSING = "11111111-2222-4333-8444-555555555555"


uuid4 = random_key


def tricky_pairs() -> dict[str, str]:
    """Values that bite: empty, 64 KB, unicode of every width, separators,
    NUL, and U+DCFF's neighbours; plus ordinary ones."""
    rng = random.Random(5)
    pairs = {
        uuid4(rng): "",
        uuid4(rng): "x" * 65536,
        uuid4(rng): "é" * 30000 + "😀" * 1000,
        uuid4(rng): "line\nbreak\u2028sep\x00nul\x85\ufeff",
        uuid4(rng): "\U0010ffff\ud7ff\ue000",
        K1: "the one",
    }
    for i in range(3000):
        pairs[uuid4(rng)] = f"value {i} " + "ü" * (i % 7)
    return pairs


def write_jsonl(path: Path, pairs: dict[str, str], spell=lambda k: k) -> Path:
    path.write_text(
        "".join(json.dumps({"key": spell(k), "value": v}) + "\n" for k, v in pairs.items()), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    pairs = tricky_pairs()
    folder = tmp_path_factory.mktemp("tricky")
    src = write_jsonl(folder / "src.jsonl", pairs, spell=lambda k: k.upper() if k[0] < "8" else k)
    out = folder / "data.rokv"
    build(src, out)
    return pairs, out


def test_round_trip_every_value_exact(tricky: tuple[dict[str, str], Path]) -> None:
    pairs, path = tricky
    with open_store(path) as store:
        assert len(store) == len(pairs)
        for key, value in pairs.items():
            assert store.get(key) == value
        keys = list(pairs)
        assert store.get_many(keys) == list(pairs.values())
        assert dict(store.items()) == pairs
        assert list(store) == sorted(pairs)


def test_get_many_matches_get_on_random_batches(tricky: tuple[dict[str, str], Path]) -> None:
    pairs, path = tricky
    rng = random.Random(7)
    keys = list(pairs)
    noise = [
        MISSING,
        K1.upper(),
        K1.replace("-", ""),
        "{" + K1 + "}",
        "urn:uuid:" + K1,
        "nope",
        5,
        None,
        b"x",
        K1[:8] + "-" + K1[9:13] + "-" + K1[14:],
        K1.replace("-", " ", 1),
        K1[:35] + "é",
        "-" * 36,
        K1[:8] + "-" + K1[9:12] + "-" + K1[12:],
    ]
    with open_store(path) as store:
        for _ in range(300):
            batch = rng.sample(keys, rng.randint(0, 40)) + rng.sample(noise, rng.randint(0, 3))
            rng.shuffle(batch)
            assert store.get_many(batch) == [store.get(k) for k in batch]
            assert store.get_many(batch) == [pairs.get(k.lower()) if _canonical_any_case(k) else None for k in batch]


def _canonical_any_case(key: object) -> bool:
    return (
        type(key) is str
        and len(key) == 36
        and key.count("-") == 4
        and key[8:24:5] == "----"
        and all(c in "0123456789abcdefABCDEF" for c in key.replace("-", ""))
    )


def test_only_the_8_4_4_4_12_form_is_found(tricky: tuple[dict[str, str], Path]) -> None:
    _, path = tricky
    with open_store(path) as store:
        assert store.get(K1) == "the one"
        assert store.get(K1.upper()) == "the one"  # the same UUID: any case is a hit
        for other in (
            K1.replace("-", ""),
            "{" + K1 + "}",
            "urn:uuid:" + K1,
            K1 + " ",
            " " + K1[:-1],
            K1.replace("-", "", 1) + "0",
            MISSING,
            "",
            None,
            12,
            [K1],
            K1.encode(),
        ):
            assert store.get(other) is None, other  # type: ignore[arg-type]  # a wrong type on purpose


def test_a_crowded_bucket_is_searched_past_the_probe(tmp_path: Path) -> None:
    # Keys sharing their first 8 hex digits land in one bucket, beyond the
    # batch path's probe width: those take the per-key path.
    rng = random.Random(3)
    pairs = {"abcdef01" + uuid4(rng)[8:]: f"crowd {i}" for i in range(12)}
    pairs.update({uuid4(rng): f"v{i}" for i in range(20)})
    # Keys sharing their first 8 bytes: the build's sort must look further.
    pairs.update(
        {
            f"abcdef01-2345-4678-{tail}": tail
            for tail in ("b000-000000000001", "8fff-ffffffffffff", "a000-000000000000", "8000-000000000000")
        }
    )
    out = tmp_path / "c.rokv"
    build(write_jsonl(tmp_path / "c.jsonl", pairs), out)
    with open_store(out) as store:
        keys = list(pairs)
        assert store.get_many(keys) == list(pairs.values())
        assert [store.get(k) for k in keys] == list(pairs.values())
        assert store.get_many(keys + ["abcdef01" + MISSING[8:]]) == list(pairs.values()) + [None]
        assert list(store) == sorted(pairs)


@pytest.mark.parametrize("content", ["{}", ""])
def test_empty_dataset(tmp_path: Path, content: str) -> None:
    src = tmp_path / ("e.json" if content else "e.jsonl")
    src.write_text(content)
    out = tmp_path / "e.rokv"
    with pytest.raises(DatasetError, match="holds no keys"):
        build(src, out)
    assert not out.exists()
    build(src, out, allow_empty=True)
    with open_store(out) as store:
        assert len(store) == 0 and store.get(K1) is None and store.get_many([K1, MISSING]) == [None, None]
    assert verify_store(out).count == 0
    # Serving it is refused too, unless allowed.
    with pytest.raises(DatasetError) as info:
        open_dataset(out)
    assert str(info.value).startswith(f"{out}: the dataset holds no keys") and "--allow-empty" in str(info.value)
    assert len(open_dataset(out, allow_empty=True)) == 0


def test_one_key_has_no_bucket_bits(tmp_path: Path) -> None:
    out = tmp_path / "one.rokv"
    build(write_jsonl(tmp_path / "one.jsonl", {K1: "one"}), out)
    with open_store(out) as store:
        assert store.header.bucket_bits == 0
        assert store.get_many([K1, MISSING] * 10) == ["one", None] * 10  # the batch path shifts by 32
        assert store.get(K1) == "one" and store.get(MISSING) is None


def test_json_source_same_as_the_loader(tmp_path: Path) -> None:
    src = REPO / "data" / "example.json"
    out = tmp_path / "ex.rokv"
    header = build(src, out)
    assert header.count == 10000
    example = load_dataset(src)
    store = open_dataset(out)
    assert dict(store.items()) == example  # type: ignore[union-attr]  # a Store here, not a dict


def test_digest_names_the_content_not_the_build(tmp_path: Path, tricky: tuple[dict[str, str], Path]) -> None:
    pairs, path = tricky
    again = tmp_path / "again.rokv"
    build(write_jsonl(tmp_path / "s.jsonl", dict(reversed(list(pairs.items())))), again)
    assert open_store(again).digest == open_store(path).digest
    other = tmp_path / "other.rokv"
    build(write_jsonl(tmp_path / "o.jsonl", {**pairs, K1: "changed"}), other)
    assert open_store(other).digest != open_store(path).digest


# --- damaged files -------------------------------------------------------------


def damaged(tmp_path: Path, source: Path, edit) -> Path:
    data = bytearray(source.read_bytes())
    data = edit(data)
    path = tmp_path / "damaged.rokv"
    path.write_bytes(bytes(data))
    return path


def with_crc(data: bytearray) -> bytearray:
    data[HEADER_SIZE - 8 : HEADER_SIZE - 4] = struct.pack("<I", zlib.crc32(bytes(data[: HEADER_SIZE - 8])))
    return data


def set_version(data: bytearray, version: int) -> bytearray:
    data[8:12] = struct.pack("<I", version)
    return with_crc(data)


CASES = {
    "empty": (lambda d: d[:0], "truncated: 0 bytes"),
    "half a header": (lambda d: d[:60], "truncated: 60 bytes"),
    "a few magic bytes": (lambda d: d[:5], "truncated: 5 bytes"),
    "cut mid-values": (lambda d: d[:-10], "truncated"),
    "cut after the header": (lambda d: d[:HEADER_SIZE], "truncated"),
    "trailing data": (lambda d: d + b"\0", "has trailing data"),
    "wrong magic": (lambda d: b"PK\x03\x04" + d[4:], "not a .rokv file (wrong magic number)"),
    "json instead": (lambda d: bytearray(b'{"a": "b"}'), "not a .rokv file"),
    "future version": (
        lambda d: set_version(d, FORMAT_VERSION + 1),
        f"unknown .rokv format version {FORMAT_VERSION + 1}",
    ),
    "version 0": (lambda d: set_version(d, 0), "unknown .rokv format version 0"),
    "header bit flip": (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "corrupt header (checksum mismatch)"),
    "inconsistent sizes": (lambda d: with_crc(d[:16] + struct.pack("<Q", 3) + d[24:]), "corrupt header"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_is_refused_at_open(tmp_path: Path, tricky: tuple[dict[str, str], Path], case: str) -> None:
    edit, says = CASES[case]
    path = damaged(tmp_path, tricky[1], edit)
    for action in (open_store, open_dataset, verify_store):
        with pytest.raises(StoreError) as info:
            action(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and says in message, message
        assert isinstance(info.value, DatasetError) and "\n" not in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        open_dataset(tmp_path / "nope.rokv")
    (tmp_path / "dir.rokv").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        open_dataset(tmp_path / "dir.rokv")


@pytest.mark.parametrize("where", ["keys", "values", "table"])
def test_verify_finds_a_flipped_byte_that_open_does_not_check(
    tmp_path: Path, tricky: tuple[dict[str, str], Path], where: str
) -> None:
    header = open_store(tricky[1]).header
    at = {"keys": header.keys_offset + 5, "values": header.file_size - 3, "table": header.table_offset + 9}[where]
    path = damaged(tmp_path, tricky[1], lambda d: d[:at] + bytes([d[at] ^ 0x40]) + d[at + 1 :])
    open_store(path).close()  # opening stays O(1): it reads no content
    with pytest.raises(StoreError, match="corrupt: content digest .* does not match"):
        verify_store(path)


def test_a_worker_exits_non_zero_on_a_damaged_file(tmp_path: Path, tricky: tuple[dict[str, str], Path]) -> None:
    path = damaged(tmp_path, tricky[1], lambda d: set_version(d, 99))
    result = subprocess.run(
        [sys.executable, "-m", "rokv.worker", "--backend", "tcp://127.0.0.1:9", "--data", str(path)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 1
    assert f"rokv-worker: {path}: unknown .rokv format version 99" in result.stderr


def test_two_workers_serve_one_mapped_file(make_stack, tricky: tuple[dict[str, str], Path]) -> None:
    pairs, path = tricky
    stack: Stack = make_stack(workers=2, data=path)
    ids = seen_workers(stack.frontend, 2)
    digest = open_store(path).digest
    keys = list(pairs)
    with stack.client(timeout=5.0, retries=1) as client:
        pings = {}
        while set(pings) != ids:  # bounded by seen_workers above: both answer
            info = client.ping()
            pings[info["id"]] = info
        assert {(i["digest"], i["keys"]) for i in pings.values()} == {(digest, len(pairs))}
        for _ in range(4):  # round-robin: each worker answers some batches
            assert client.get_many(keys) == list(pairs.values())
        for key in keys[:100]:
            assert client.get(key) == pairs[key]
        assert client.get(K1.upper()) == "the one"
        assert client.get("{" + K1 + "}") == "the one"
        assert client.get_many([MISSING, K1]) == [None, "the one"]
