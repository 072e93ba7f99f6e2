"""Compiling a dataset into a ``.rokv`` file, and the ``rokv build``,
``rokv inspect`` and ``rokv verify`` commands.

A ``.jsonl`` source is streamed: each record is checked by the loader's own
code (:func:`rokv.dataset.iter_jsonl_pairs`, same rules, same messages) and
packed into flat buffers (16 bytes of key, the value's UTF-8 bytes in an
unlinked temporary file, its size in an array), so memory holds no Python
object per pair: 24 bytes a key plus the sort's arrays. The
keys are then sorted with numpy, repeats found next to each other, and the
values copied out in key order. A ``.json`` source is one JSON object, which
the loader reads whole anyway; it takes the loader's path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from rokv.dataset import DatasetError, duplicate_error, empty_error, iter_jsonl_pairs, load_dataset
from rokv.exitcodes import Exit, epilog
from rokv.worker.layout import DIGEST_ALGORITHM, SEPARATOR, SUFFIX, Header, StoreError, read_header
from rokv.worker.reader import verify_store
from rokv.worker.writer import write_store

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where used: the rokv CLI registers these commands on
# every run, and `rokv get` should not pay for importing numpy.

#: Keys whose values are copied in one numpy gather while writing.
_CHUNK_KEYS = 1 << 16
_FLUSH_BYTES = 1 << 24

Progress = Callable[[str, float], None]


def build(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    allow_empty: bool = False,
) -> Header:
    """Compile the dataset at ``src`` (``.json`` or ``.jsonl``) into the
    ``.rokv`` file ``out``, atomically (see :func:`rokv.worker.writer.write_store`).

    ``progress(phase, fraction)`` is called now and then, if given.
    ``allow_empty``: compile a dataset of no keys, which is otherwise refused.

    Raises:
        DatasetError: ``src`` would be refused by the loader (given the same
            ``allow_empty``); the message is the loader's.
        OSError: ``out`` cannot be written.
    """
    import numpy as np

    src_name = os.fsdecode(src)
    out_name = os.fsdecode(out)
    started = time.time_ns()
    folder = os.path.dirname(os.path.abspath(out_name))
    if os.path.splitext(src_name)[1].lower() == ".jsonl":
        with tempfile.TemporaryFile(dir=folder, prefix=".rokv-build-") as spill:
            keys, sizes, values = _read_jsonl(src_name, spill, progress)
            if not len(keys) and not allow_empty:
                raise empty_error(src_name)
            return _write(src_name, out_name, keys, sizes, values, started, progress)
    data = load_dataset(src_name, allow_empty=allow_empty)  # .json, or the loader's own refusal
    if progress:
        progress("reading", 1.0)
    keys = np.frombuffer(bytes.fromhex("".join(data).replace("-", "")), "V16")
    encoded = [v.encode("utf-8") for v in data.values()]
    sizes = np.fromiter(map(len, encoded), np.uint64, len(encoded)) + np.uint64(1)
    encoded.append(b"")
    values = np.frombuffer(SEPARATOR.join(encoded), np.uint8)
    del data, encoded
    return _write(src_name, out_name, keys, sizes, values, started, progress)


def _read_jsonl(src: str, spill: IO[bytes], progress: Progress | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys (V16), value sizes (with separator), and the values
    end to end (mapped from ``spill``), in file order."""
    import numpy as np

    try:
        total = max(os.path.getsize(src), 1)
    except OSError:
        total = 1  # reading it fails next, with the loader's message
    keys = bytearray()
    sizes = array("Q")
    buffer = bytearray()
    fromhex = bytes.fromhex
    report = None if progress is None else (lambda done: progress("reading", done / total))
    for _, key, value in iter_jsonl_pairs(src, report):
        keys += fromhex(key.replace("-", ""))
        encoded = value.encode("utf-8")
        buffer += encoded
        buffer += SEPARATOR
        sizes.append(len(encoded) + 1)
        if len(buffer) >= _FLUSH_BYTES:
            spill.write(buffer)
            buffer.clear()
    spill.write(buffer)
    spill.flush()
    if progress:
        progress("reading", 1.0)
    size = spill.tell()
    values = np.memmap(spill, np.uint8, "r", shape=(size,)) if size else np.zeros(0, np.uint8)
    return np.frombuffer(keys, "V16"), np.frombuffer(sizes, np.uint64), values


def _write(
    src: str,
    out: str,
    keys: np.ndarray,
    sizes: np.ndarray,
    values: np.ndarray,
    started: int,
    progress: Progress | None,
) -> Header:
    import numpy as np

    if progress:
        progress("sorting", 0.0)
    # By the key's bytes: the first 8 decide unless two keys share them
    # (1 chance in 2^64 / N^2 for random UUIDs, or a repeated key), which a
    # full two-word sort then settles. 3x faster than always sorting on both.
    words = keys.view(">u8")
    high = words[0::2].astype(np.uint64)
    order = np.argsort(high, kind="stable")
    ordered_high = high[order]
    if np.any(ordered_high[1:] == ordered_high[:-1]):
        order = np.lexsort((words[1::2], words[0::2]))
    del high, ordered_high
    sorted_keys = keys[order]
    repeats = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if len(repeats):
        raise duplicate_error(src, _first_repeat(src, sorted_keys[repeats]))
    starts = np.cumsum(sizes) - sizes  # where each value sits in ``values``
    count = len(keys)

    def ordered_values() -> Iterator[bytes]:
        for at in range(0, count, _CHUNK_KEYS):
            index = order[at : at + _CHUNK_KEYS]
            size = sizes[index].astype(np.intp)
            shift = starts[index].astype(np.intp) - (np.cumsum(size) - size)
            yield values[np.repeat(shift, size) + np.arange(int(size.sum()))].tobytes()
            if progress:
                progress("writing", min(1.0, (at + _CHUNK_KEYS) / count))

    return write_store(out, sorted_keys, sizes[order], ordered_values(), started)


def _first_repeat(src: str, repeated: np.ndarray) -> int:
    """The line the loader stops at: the earliest second occurrence of any of
    the ``repeated`` keys. Re-reads the file: only on this error path, so the
    build keeps no line number per record."""
    wanted = {key.tobytes().hex() for key in repeated}
    seen: set[str] = set()
    for line, key, _ in iter_jsonl_pairs(src):
        digits = key.replace("-", "")
        if digits in wanted:
            if digits in seen:
                return line
            seen.add(digits)
    raise AssertionError(f"{src}: changed while being built")


# ------------------------------------------------------------------ commands


class _Bar:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self) -> None:
        self._next = 0.0
        self._started = time.monotonic()

    def __call__(self, phase: str, fraction: float) -> None:
        now = time.monotonic()
        if now < self._next and fraction < 1.0:
            return
        self._next = now + 0.2
        filled = int(30 * min(max(fraction, 0.0), 1.0))
        sys.stderr.write(
            f"\r{phase:<8} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {now - self._started:6.1f} s"
        )
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def cmd_build(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(SUFFIX):
        sys.stderr.write(f"rokv: error: the output must end in {SUFFIX} (workers pick the format by suffix)\n")
        return Exit.USAGE
    bar = _Bar() if sys.stderr.isatty() and not args.quiet else None
    started = time.monotonic()
    try:
        header = build(args.src, args.output, bar, allow_empty=args.allow_empty)
    except DatasetError as exc:
        if bar:
            bar.done()
        sys.stderr.write(f"rokv: {exc}\n")
        return Exit.NO
    except OSError as exc:
        if bar:
            bar.done()
        sys.stderr.write(f"rokv: cannot write {args.output}: {exc.strerror or exc}\n")
        return Exit.NO
    if bar:
        bar.done()
    print(
        f"built {args.output}: {header.count} keys, {header.file_size} bytes, "
        f"digest {DIGEST_ALGORITHM}:{header.digest_hex}, in {time.monotonic() - started:.1f} s"
    )
    return Exit.OK


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        header = read_header(args.file)
    except StoreError as exc:
        sys.stderr.write(f"rokv: {exc}\n")
        return Exit.NO
    print(json.dumps(header.as_dict(), indent=2))
    return Exit.OK


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        header = verify_store(args.file)
    except StoreError as exc:
        sys.stderr.write(f"rokv: {exc}\n")
        return Exit.NO
    print(f"{args.file}: ok: {header.count} keys, digest {DIGEST_ALGORITHM}:{header.digest_hex}")
    return Exit.OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``build``, ``inspect`` and ``verify`` on the ``rokv`` parser
    (rokv.cli loads this module when one of them runs; their one-line help
    is in rokv.cli.SERVER_COMMANDS)."""
    p = sub.add_parser(
        "build",
        description="Compile SRC (.json or .jsonl) into one immutable .rokv file that workers memory-map. "
        "SRC is checked exactly as a worker checks it; one of no keys is refused unless --allow-empty. "
        "The output appears atomically.",
        epilog=epilog("rokv build"),
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--output", metavar="OUT.rokv", required=True)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="compile a dataset of no keys (refused by default: an empty export is usually a mistake)",
    )
    p.set_defaults(run=cmd_build)
    p = sub.add_parser(
        "inspect",
        description="Print the header of a .rokv file (format version, key count, build time, digest).",
        epilog=epilog("rokv inspect"),
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=cmd_inspect)
    p = sub.add_parser(
        "verify",
        description="Read the whole .rokv file and check its structure and content digest.",
        epilog=epilog("rokv verify"),
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=cmd_verify)
