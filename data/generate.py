"""Generate a rokv dataset: N unique UUIDv4 keys mapped to a few random words.

Run as a script::

    python data/generate.py -o data/example.json            # 10,000 pairs, JSON
    python data/generate.py --count 10000000 -o /tmp/big.jsonl
    python data/generate.py --fast --count 100000000 -o /tmp/huge.jsonl

or import it and call :func:`generate` (or :func:`generate_fast`). The output
depends only on the count, the seed and the format, so a committed dataset can
be reproduced byte for byte. Pairs are written as they are drawn, so memory
does not grow with the count beyond a filter of 4 to 8 bytes per key that
keeps keys unique.

``--fast`` draws the same kind of pairs with numpy, a batch at a time, about
50 times faster (100M pairs: minutes, not an hour of one core): other bytes
than the default mode for the same seed, JSON Lines only, and keys checked
unique within a batch only (a repeat across batches of 122-bit random keys
has a chance of about 10^-21 at 10^8 keys; ``rokv build`` would refuse it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

DEFAULT_COUNT = 10_000
DEFAULT_SEED = 20261127
FORMATS = ("json", "jsonl")

_ALPHABET = string.ascii_lowercase

# UUIDv4 layout within the 128-bit integer (bit 0 = last hex digit).
_VERSION_MASK = 0xF << 76
_VERSION_4 = 0x4 << 76
_VARIANT_MASK = 0x3 << 62
_VARIANT_RFC4122 = 0x2 << 62


def format_for(path: str | os.PathLike[str]) -> str:
    """The format implied by ``path``'s suffix: ``"json"`` or ``"jsonl"``.

    Raises:
        ValueError: the suffix is neither ``.json`` nor ``.jsonl``.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".jsonl"):
        return suffix[1:]
    raise ValueError(f"cannot tell the format of {os.fspath(path)!r} from its suffix; use .json or .jsonl")


def generate(
    path: str | os.PathLike[str],
    count: int = DEFAULT_COUNT,
    seed: int = DEFAULT_SEED,
    fmt: str | None = None,
) -> None:
    """Write ``count`` pairs drawn from ``random.Random(seed)`` to ``path``.

    ``fmt`` is ``"json"`` (one object, one pair per line) or ``"jsonl"`` (one
    ``{"key": ..., "value": ...}`` per line); ``None`` takes it from the suffix.
    The file appears complete or not at all: it is written to a temporary file
    in the same folder, then renamed over ``path``.

    Raises:
        ValueError: ``count`` is negative, or ``fmt`` is unknown (or ``None``
            and the suffix is neither ``.json`` nor ``.jsonl``).
        OSError: the folder cannot be written.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, not {count}")
    if fmt is None:
        fmt = format_for(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")

    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
            _write(out, tmp, count, random.Random(seed), fmt)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp makes the file private; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(out: TextIO, written: Path, count: int, rng: random.Random, fmt: str) -> None:
    """Write the pairs to ``out``, whose content so far is in file ``written``."""
    dumps = json.dumps
    if fmt == "json":
        out.write("{\n")
        separator = ""
        for key, value in _pairs(out, written, count, rng):
            out.write(f"{separator}{dumps(key, ensure_ascii=False)}: {dumps(value, ensure_ascii=False)}")
            separator = ",\n"
        out.write("\n}\n" if separator else "}\n")
    else:
        for key, value in _pairs(out, written, count, rng):
            out.write(dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")


def _pairs(out: TextIO, written: Path, count: int, rng: random.Random) -> Iterator[tuple[str, str]]:
    """Draw ``count`` pairs with distinct keys; a key drawn again is redrawn.

    Duplicates are so unlikely (122 random bits) that they are caught by a
    filter first, and only the filter's rare false alarms are settled by
    searching what has been written, instead of keeping every key in memory.
    """
    seen = _BloomFilter(count)
    produced = 0
    while produced < count:
        bits = (rng.getrandbits(128) & ~_VERSION_MASK & ~_VARIANT_MASK) | _VERSION_4 | _VARIANT_RFC4122
        digits = f"{bits:032x}"
        key = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
        if seen.add(bits):
            out.flush()
            if _file_contains(written, f'"{key}"'.encode("ascii")):
                continue
        yield key, _value(rng)
        produced += 1


def _value(rng: random.Random) -> str:
    """2 to 5 words of 2 to 9 letters a-z."""
    # 2 + getrandbits(n) is uniform over exactly these ranges, and much
    # cheaper than randint.
    return " ".join("".join(rng.choices(_ALPHABET, k=2 + rng.getrandbits(3))) for _ in range(2 + rng.getrandbits(2)))


class _BloomFilter:
    """Remembers UUID integers approximately: ``add`` says "maybe seen" for
    every integer added before and, rarely, for one that was not."""

    _PROBES = 8

    def __init__(self, expected: int) -> None:
        # At least 32 bits per expected key (a power of two, so masking picks
        # a bit): with 8 probes, fewer than 1 in 10^5 adds is a false alarm.
        size = 1 << max(16, (32 * expected - 1).bit_length())
        self._mask = size - 1
        self._bits = bytearray(size // 8)

    def add(self, bits: int) -> bool:
        """Add a UUIDv4 integer; True if it may have been added before."""
        # The key is already uniformly random, so its random runs serve as the
        # two hashes of double hashing; no hash function needed.
        h = bits & ((1 << 62) - 1)
        step = (bits >> 80) | 1
        table = self._bits
        mask = self._mask
        maybe_seen = True
        for _ in range(self._PROBES):
            pos = h & mask
            byte, bit = pos >> 3, 1 << (pos & 7)
            if not table[byte] & bit:
                table[byte] |= bit
                maybe_seen = False
            h += step
        return maybe_seen


def _file_contains(path: Path, needle: bytes, chunk: int = 1 << 22) -> bool:
    overlap = len(needle) - 1  # so a needle split across two reads is found
    with open(path, "rb") as f:
        carry = b""
        while block := f.read(chunk):
            buf = carry + block
            if needle in buf:
                return True
            carry = buf[-overlap:] if overlap else b""
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Pairs drawn at once by :func:`generate_fast` (about 40 MB of index arrays).
_FAST_BATCH = 1 << 18
_HEAD = b'{"key": "'
_MIDDLE = b'", "value": "'
_TAIL = b'"}\n'


def generate_fast(path: str | os.PathLike[str], count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> None:
    """Write ``count`` JSON Lines pairs like :func:`generate`'s (UUIDv4 keys,
    2 to 5 words of 2 to 9 letters a-z), drawn by numpy from ``seed`` a batch
    at a time; atomically, as :func:`generate`. Other bytes than
    :func:`generate` for the same seed.

    Raises:
        ValueError: ``count`` is negative.
        OSError: the folder cannot be written.
    """
    import numpy as np

    if count < 0:
        raise ValueError(f"count must be 0 or more, not {count}")
    rng = np.random.default_rng(seed)
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for at in range(0, count, _FAST_BATCH):
                out.write(_fast_batch(rng, min(_FAST_BATCH, count - at)))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _fast_batch(rng: Any, n: int) -> bytes:
    """``n`` lines of JSON Lines, as json.dumps writes them."""
    import numpy as np

    while True:
        raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
        raw[:, 6] = raw[:, 6] & 0x0F | 0x40  # version 4
        raw[:, 8] = raw[:, 8] & 0x3F | 0x80  # RFC 4122 variant
        if len(np.unique(raw.view("V16").ravel())) == n:
            break
    hexdigits = np.frombuffer(b"0123456789abcdef", np.uint8)
    digits = np.empty((n, 32), np.uint8)
    digits[:, 0::2] = hexdigits[raw >> 4]
    digits[:, 1::2] = hexdigits[raw & 15]
    dashes = [8, 13, 18, 23]
    key = np.full((n, 36), ord("-"), np.uint8)
    key[:, [i for i in range(36) if i not in dashes]] = digits

    words = 2 + rng.integers(0, 4, n)  # per line
    letters = 2 + rng.integers(0, 8, int(words.sum()))  # per word
    word_line = np.repeat(np.arange(n), words)
    value_size = np.bincount(word_line, weights=letters, minlength=n).astype(np.int64) + words - 1
    head = len(_HEAD) + 36 + len(_MIDDLE)
    line_size = head + value_size + len(_TAIL)
    line_start = np.cumsum(line_size) - line_size
    out = np.empty(int(line_size.sum()), np.uint8)
    fixed = np.concatenate([np.frombuffer(_HEAD, np.uint8), np.zeros(36, np.uint8), np.frombuffer(_MIDDLE, np.uint8)])
    heads = np.broadcast_to(fixed, (n, head)).copy()
    heads[:, len(_HEAD) : len(_HEAD) + 36] = key
    out[line_start[:, None] + np.arange(head)] = heads
    value_start = line_start + head
    total = int(value_size.sum())
    index = np.repeat(value_start - (np.cumsum(value_size) - value_size), value_size) + np.arange(total)
    out[index] = rng.integers(ord("a"), ord("z") + 1, total, dtype=np.uint8)
    # A space after each word but a line's last.
    step = letters + 1
    at_in_all = np.cumsum(step) - step
    first_word = np.cumsum(words) - words
    within = at_in_all - np.repeat(at_in_all[first_word], words)
    last = np.zeros(len(letters), bool)
    last[first_word + words - 1] = True
    spaces = value_start[word_line] + within + letters
    out[spaces[~last]] = ord(" ")
    tail = value_start + value_size
    out[tail[:, None] + np.arange(len(_TAIL))] = np.frombuffer(_TAIL, np.uint8)
    return out.tobytes()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Generate a rokv dataset of unique UUIDv4 keys mapped to random lowercase words. "
        "The same count, seed and format always give the same bytes."
    )
    parser.add_argument("-o", "--output", required=True, help="file to write (.json or .jsonl)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="number of pairs (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from the output file's suffix)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="draw with numpy, about 50 times faster: other bytes for the same seed, .jsonl only (needs numpy)",
    )
    args = parser.parse_args(argv)

    if args.count < 0:
        parser.error(f"--count must be 0 or more, not {args.count}")
    fmt = args.format
    if fmt is None:
        try:
            fmt = format_for(args.output)
        except ValueError as exc:
            parser.error(f"{exc}, or give --format")
    if args.fast and fmt != "jsonl":
        parser.error("--fast writes JSON Lines only: give a .jsonl output")
    try:
        if args.fast:
            generate_fast(args.output, args.count, args.seed)
        else:
            generate(args.output, args.count, args.seed, fmt)
    except OSError as exc:
        print(f"{parser.prog}: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.count} pairs to {args.output} ({fmt}, seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
