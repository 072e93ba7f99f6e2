"""Compiling a dataset into a ``.rokv`` file, and the ``rokv build``,
``rokv inspect`` and ``rokv verify`` commands.

The build is an external bucket sort, in memory bounded by ``memory``
whatever the key count, on ``jobs`` processes:

1. **Reading.** The source is cut into ranges of a few MB, parsed in parallel
   (:mod:`rokv.worker.parse`: the loader's rules and messages) and each
   record is appended to the spill file of its *bucket* (:mod:`rokv.worker.spill`):
   the first P bits of its key. The spill folder (``.OUT.PID.spill``) sits
   next to the output, on the same disk.
2. **Sorting.** Each bucket is read back and sorted alone, in parallel, and
   written straight to its place in the output (:class:`rokv.worker.writer.Output`):
   bucket b's keys, value offsets, values and slice of the bucket table all
   start where the buckets before it end, which the reading phase counted.
   Its spill files are then deleted.
3. **Hashing.** The output is read back once for its digest, then renamed
   over the target.

Why buckets by key prefix: version 4 UUIDs are uniformly random in their
first 48 bits (the version digit comes after), so 2^P buckets by prefix hold
N / 2^P keys each, give or take a fraction of a percent at these sizes; a
bucket's keys sort to one contiguous run of the output, in bucket order, so no
merge is needed (a merge sort of runs would read everything twice and keep P
runs open), and buckets are independent, so they sort on every core. P is
chosen from the source's size and the budget so that a bucket fits one
job's share of ``memory`` (about 2.25 bytes of memory per byte of source, at
most; see :func:`plan`). Keys that are not random (sequential test keys)
make uneven buckets: the build stays right, but a crowded bucket may exceed
its share.

The output does not depend on ``jobs`` or ``memory``: it is the sorted pairs
in the layout of FORMAT.md, the same bytes (but for the build time) as
:func:`rokv.worker.writer.write_store` writes from the same pairs.

A ``.json`` source is one JSON object, which the loader reads whole anyway
(about twice the file's size in memory): it takes the loader's path, then
its pairs are spilled one by one (freed as they go) and sorted like a
``.jsonl`` file's.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from rokv.dataset import DatasetError, duplicate_error, empty_error, iter_jsonl_pairs, load_dataset
from rokv.exitcodes import Exit, epilog
from rokv.worker import spill
from rokv.worker.layout import DIGEST_ALGORITHM, HEADER_SIZE, SUFFIX, Header, StoreError, read_header
from rokv.worker.parse import parse_range, records
from rokv.worker.reader import verify_store
from rokv.worker.writer import Output, bucket_table, pwrite_all, pwritev_all

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where used: the rokv CLI registers these commands on
# every run, and `rokv get` should not pay for importing numpy.

#: ``rokv build --memory``'s default: the whole process tree's peak RSS.
DEFAULT_MEMORY = 2 << 30
#: One process's own memory, before its share of the work: the interpreter,
#: numpy, a range being parsed (measured: 40 to 50 MB).
BASE_MEMORY = 64 << 20
#: The least memory a job can work with from the command line.
MIN_JOB_MEMORY = 64 << 20
#: Memory a bucket's sort needs per byte of source, at most: a record of a
#: .jsonl file is 54 bytes plus its value's, and takes 105 bytes plus its
#: value's while sorted (spilled bytes, key, size, position, order, sorted
#: key, offset), with room for uneven buckets.
MEMORY_PER_SOURCE_BYTE = 2.25
#: Source bytes per bucket at most, whatever the budget: smaller buckets
#: share the work among jobs more evenly and sort faster (in cache).
BUCKET_SOURCE_BYTES = 256 << 20
#: At most 2^12 buckets (and spill files per process).
MAX_PREFIX_BITS = 12
#: Keys whose values are gathered at once while writing a bucket.
_GATHER_KEYS = 1 << 15
#: Repeated keys a bucket reports, at most (to explain a refusal).
_MAX_REPEATS = 100_000

#: ``progress(phase, fraction of the phase done, keys done)``.
Progress = Callable[[str, float, int], None]
T = TypeVar("T")
R = TypeVar("R")


class Interrupted(BaseException):
    """The build was stopped by a signal (SIGTERM; SIGINT raises
    KeyboardInterrupt); its temporary files are removed by then."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan(source_size: int, memory: int, jobs: int) -> tuple[int, int]:
    """``(prefix bits, range size)`` for a source of ``source_size`` bytes:
    2^bits buckets small enough that ``jobs`` of them sorted at once fit in
    ``memory`` with every process's own (:data:`BASE_MEMORY`), and parse
    ranges of a sixteenth of a job's share (64 KB to 4 MB)."""
    share = max(256 << 10, (memory - (jobs + 1) * BASE_MEMORY) // max(jobs, 1))
    buckets = max(1.0, MEMORY_PER_SOURCE_BYTE * source_size / share, source_size / BUCKET_SOURCE_BYTES)
    bits = min(MAX_PREFIX_BITS, math.ceil(math.log2(buckets)))
    return bits, max(64 << 10, min(4 << 20, share // 16))


def build(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    allow_empty: bool = False,
    memory: int = DEFAULT_MEMORY,
    jobs: int | None = None,
) -> Header:
    """Compile the dataset at ``src`` (``.json`` or ``.jsonl``) into the
    ``.rokv`` file ``out``, atomically (see :class:`rokv.worker.writer.Output`),
    on ``jobs`` processes (default: one per core) in about ``memory`` bytes
    (the whole process tree's RSS). The output's bytes do not depend on
    ``jobs`` or ``memory``. Temporary files (spill and output) sit next to
    ``out`` and are removed whatever happens, SIGTERM and SIGINT included
    (when called from the main thread), except after SIGKILL.

    ``progress(phase, fraction, keys)`` is called now and then, if given;
    the phases are ``reading``, ``sorting`` and ``hashing``.
    ``allow_empty``: compile a dataset of no keys, which is otherwise refused.

    Raises:
        DatasetError: ``src`` would be refused by the loader (given the same
            ``allow_empty``); the message is the loader's.
        OSError: ``out`` cannot be written.
        Interrupted: SIGTERM arrived (KeyboardInterrupt: SIGINT).
    """
    src_name = os.fsdecode(src)
    out_name = os.fsdecode(out)
    started = time.time_ns()
    jobs = jobs or default_jobs()
    suffix = os.path.splitext(src_name)[1].lower()
    if suffix not in (".json", ".jsonl") or not os.path.isfile(src_name):
        load_dataset(src_name, allow_empty=allow_empty)  # raises the loader's refusal
    prefix_bits, chunk = plan(os.path.getsize(src_name), memory, jobs)
    folder = os.path.dirname(os.path.abspath(out_name))
    spill_dir = os.path.join(folder, f".{os.path.basename(out_name)}.{os.getpid()}.spill")
    with _signals_raise():
        os.mkdir(spill_dir, 0o700)
        pool: _Pool | None = None
        output: Output | None = None
        ok = False
        try:
            if suffix == ".jsonl":
                pool = _Pool(jobs, src_name, spill_dir, prefix_bits)
                counts, value_bytes = _read_jsonl(pool, src_name, chunk, progress)
            else:
                counts, value_bytes = _read_json(src_name, spill_dir, prefix_bits, chunk, allow_empty, progress)
                pool = _Pool(jobs, src_name, spill_dir, prefix_bits)
            count = int(counts.sum())
            if not count and not allow_empty:
                raise empty_error(src_name)
            output = Output(out_name, count, int(value_bytes.sum()))
            _sort(pool, output, src_name, spill_dir, prefix_bits, counts, value_bytes, progress)
            pool.close()
            header = output.finish(
                started,
                progress and (lambda done: progress("hashing", done / max(output.file_size - HEADER_SIZE, 1), count)),
            )
            ok = True
            return header
        finally:
            with _signals_held():  # a second Ctrl-C must not cut the cleanup short
                if pool is not None:
                    pool.close(kill=not ok)
                if output is not None:
                    output.abort()
                shutil.rmtree(spill_dir, ignore_errors=True)


class _signals_raise:
    """While inside: SIGTERM raises :class:`Interrupted` (as SIGINT raises
    KeyboardInterrupt), so the build's ``finally`` clauses remove its files.
    Only from the main thread (Python runs handlers there)."""

    def __enter__(self) -> None:
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _signals_held:
    """While inside: SIGINT and SIGTERM are held (from the main thread only:
    Python runs its handlers there); the first one that arrived is raised
    again on leaving, if nothing else is being raised."""

    def __enter__(self) -> None:
        self._held: list[int] = []
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, lambda n, _: self._held.append(n))

    def __exit__(self, kind: object, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._held and kind is None:
            signal.raise_signal(self._held[0])


# ------------------------------------------------------------------ processes

#: What a worker process works on: (source, spill folder, prefix bits).
_job: tuple[str, str, int] = ("", "", 0)


def _init_job(src: str, spill_dir: str, prefix_bits: int, child: bool = False) -> None:
    global _job
    _job = (src, spill_dir, prefix_bits)
    if child:
        # Ctrl-C reaches the whole process group: the parent alone handles
        # it (and stops the workers); SIGTERM from the parent ends them.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Pool:
    """``jobs`` worker processes (forked), or this process alone for one job."""

    def __init__(self, jobs: int, src: str, spill_dir: str, prefix_bits: int) -> None:
        _init_job(src, spill_dir, prefix_bits)
        self._executor: ProcessPoolExecutor | None = None
        if jobs > 1:
            self._executor = ProcessPoolExecutor(
                jobs,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_job,
                initargs=(src, spill_dir, prefix_bits, True),
            )

    def ordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        if self._executor is None:
            return map(fn, items)
        return self._executor.map(fn, items)

    def unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        if self._executor is None:
            yield from map(fn, items)
            return
        futures: list[Future[R]] = [self._executor.submit(fn, item) for item in items]
        for future in as_completed(futures):
            yield future.result()

    def close(self, kill: bool = False) -> None:
        """Stop the workers: at once when ``kill`` (an error or a signal), so
        that none writes to a spill file being removed. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        if kill:
            for process in processes:
                process.terminate()
        executor.shutdown(wait=not kill, cancel_futures=True)
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(10)


# ------------------------------------------------------------------ reading


def _parse_task(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | str:
    """Parse one range and spill it; a refusal comes back as its message."""
    src, spill_dir, prefix_bits = _job
    try:
        records = parse_range(src, *span)
    except DatasetError as exc:
        return str(exc)
    return spill.append(spill_dir, prefix_bits, records)


def _read_jsonl(pool: _Pool, src: str, chunk: int, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and spill the whole file; the keys and value bytes of each bucket."""
    import numpy as np

    size = os.path.getsize(src)
    buckets = 1 << _job[2]
    counts = np.zeros(buckets, np.int64)
    value_bytes = np.zeros(buckets, np.int64)
    spans = [(at, min(at + chunk, size)) for at in range(0, size, chunk)]
    # In file order: the first range refused is the first refusal in the file.
    for span, result in zip(spans, pool.ordered(_parse_task, spans)):
        if isinstance(result, str):
            parse_range(src, *span, exact=True)  # raises the loader's message, with the right line
            raise DatasetError(result, path=src)  # the file changed meanwhile
        counts += result[0]
        value_bytes += result[1]
        if progress:
            progress("reading", span[1] / size, int(counts.sum()))
    if progress:
        progress("reading", 1.0, int(counts.sum()))
    return counts, value_bytes


def _read_json(
    src: str, spill_dir: str, prefix_bits: int, chunk: int, allow_empty: bool, progress: Progress | None
) -> tuple[np.ndarray, np.ndarray]:
    """Load a .json source with the loader and spill its pairs, freeing each
    value once spilled (peak memory: about what the loader needs)."""
    import numpy as np

    data = load_dataset(src, allow_empty=allow_empty)
    total = len(data)
    buckets = 1 << prefix_bits
    counts = np.zeros(buckets, np.int64)
    value_bytes = np.zeros(buckets, np.int64)
    keys = bytearray()
    values: list[bytes] = []
    held = 0
    fromhex = bytes.fromhex
    while data:
        key, value = data.popitem()
        keys += fromhex(key.replace("-", ""))
        encoded = value.encode("utf-8")
        del value
        values.append(encoded)
        held += len(encoded) + 16
        if held >= chunk or not data:
            added = spill.append(spill_dir, prefix_bits, records(bytes(keys), values))
            counts += added[0]
            value_bytes += added[1]
            keys, values, held = bytearray(), [], 0
            if progress:
                progress("reading", 1 - len(data) / total, int(counts.sum()))
    if progress:
        progress("reading", 1.0, total)
    return counts, value_bytes


# ------------------------------------------------------------------ sorting


@dataclass(frozen=True)
class _Target:
    """Where a bucket's sort writes: the output's temporary and its layout."""

    path: str
    bits: int
    prefix_bits: int
    table_at: int
    keys_at: int
    offsets_at: int
    values_at: int


def _sort(
    pool: _Pool,
    output: Output,
    src: str,
    spill_dir: str,
    prefix_bits: int,
    counts: np.ndarray,
    value_bytes: np.ndarray,
    progress: Progress | None,
) -> None:
    import numpy as np

    target = _Target(
        output.tmp, output.bits, prefix_bits, output.table_at, output.keys_at, output.offsets_at, output.values_at
    )
    files = spill.bucket_files(spill_dir)
    firsts = (np.cumsum(counts) - counts).tolist()
    bases = (np.cumsum(value_bytes) - value_bytes).tolist()
    tasks = [(target, b, files.get(b, []), firsts[b], bases[b]) for b in range(len(counts))]
    done = 0
    repeats: list[bytes] = []
    if progress:
        progress("sorting", 0.0, 0)
    for count, repeated in pool.unordered(_sort_task, tasks):
        done += count
        repeats += repeated
        if progress:
            progress("sorting", done / max(output.count, 1), done)
    if repeats:
        raise duplicate_error(src, _first_repeat(src, repeats))
    if prefix_bits > output.bits:
        # More buckets than the table has entries (fewer than 2^12 keys):
        # the sorts left the table to be made here, from the keys written.
        with open(output.tmp, "r+b") as f:
            f.seek(output.keys_at)
            keys = np.frombuffer(f.read(16 * output.count), "V16")
            pwrite_all(f.fileno(), bucket_table(keys, output.bits)[:-1], output.table_at)


def _sort_task(task: tuple[_Target, int, list[str], int, int]) -> tuple[int, list[bytes]]:
    """Sort one bucket and write it to its place in the output; the number
    of its keys, and its repeated keys (the output is then abandoned)."""
    import numpy as np

    target, bucket, paths, first, value_base = task
    buffer, keys, sizes, starts = spill.read_bucket(paths)
    n = len(keys)
    # By the key's bytes: the first 8 decide unless two keys share them
    # (1 chance in 2^64 / n^2 for random UUIDs, or a repeated key), which a
    # full two-word sort then settles. 3x faster than always sorting on both.
    words = keys.view(">u8")
    high = words[0::2].astype(np.uint64)
    order = np.argsort(high)
    ordered = high[order]
    if n > 1 and np.any(ordered[1:] == ordered[:-1]):
        order = np.lexsort((words[1::2], words[0::2]))
    del high, ordered, words
    keys = keys[order]
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if len(repeated):
        return n, [key.tobytes() for key in keys[repeated[:_MAX_REPEATS]]]
    sizes = sizes[order]
    starts = starts[order]
    del order
    fd = os.open(target.path, os.O_WRONLY)
    try:
        if target.prefix_bits <= target.bits:
            pwrite_all(
                fd,
                _table_slice(keys, target, bucket, first),
                target.table_at + 4 * (bucket << (target.bits - target.prefix_bits)),
            )
        pwrite_all(fd, keys, target.keys_at + 16 * first)
        offsets = np.empty(n, "<u8")
        if n:
            offsets[0] = 0
            np.cumsum(sizes[:-1], out=offsets[1:])
            offsets += np.uint64(value_base)
        pwrite_all(fd, offsets, target.offsets_at + 8 * first)
        del offsets
        _write_values(fd, buffer, sizes, starts, target.values_at + value_base)
    finally:
        os.close(fd)
    for path in paths:
        os.unlink(path)
    return n, []


def _table_slice(keys: np.ndarray, target: _Target, bucket: int, first: int) -> np.ndarray:
    """The bucket table's entries for the table buckets inside this spill
    bucket (2^(B - P) of them)."""
    import numpy as np

    width = 1 << (target.bits - target.prefix_bits)
    entries = np.empty(width, "<u4")
    entries[0] = first
    if width > 1:
        tops = keys.view(">u4")[::4] >> (32 - target.bits)
        local = (tops - (bucket << (target.bits - target.prefix_bits))).astype(np.intp)
        np.cumsum(np.bincount(local, minlength=width)[:-1], out=entries[1:])
        entries[1:] += np.uint32(first)
    return entries


def _write_values(fd: int, buffer: np.ndarray, sizes: np.ndarray, starts: np.ndarray, at: int) -> None:
    """Copy the values, in key order, from the spill buffer to the output."""
    for i in range(0, len(sizes), _GATHER_KEYS):
        size = sizes[i : i + _GATHER_KEYS]
        start = starts[i : i + _GATHER_KEYS]
        total = int(size.sum())
        if total <= spill.GATHER_BYTES:
            pwrite_all(fd, spill.gather(buffer, start, size), at)
        else:  # big values: from the buffer as they are, never copied
            for j in range(0, len(size), 1000):
                pwritev_all(fd, spill.pieces(buffer, start[j : j + 1000], size[j : j + 1000]), at)
                at += int(size[j : j + 1000].sum())
            continue
        at += total


def _first_repeat(src: str, repeated: list[bytes]) -> int:
    """The line the loader stops at: the earliest second occurrence of any of
    the ``repeated`` keys. Re-reads the file: only on this error path, so the
    build keeps no line number per record."""
    wanted = {key.hex() for key in repeated}
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
    """A one-line progress bar on stderr, redrawn at most 5 times a second:
    the phase, its share done, keys per second and the phase's time left
    (from its pace so far), and the time since the start."""

    def __init__(self) -> None:
        self._next = 0.0
        self._started = time.monotonic()
        self._phase = ""
        self._phase_started = self._started

    def __call__(self, phase: str, fraction: float, keys: int) -> None:
        now = time.monotonic()
        if phase != self._phase:
            self._phase, self._phase_started, self._next = phase, now, 0.0
        if now < self._next and fraction < 1.0:
            return
        self._next = now + 0.2
        fraction = min(max(fraction, 0.0), 1.0)
        spent = now - self._phase_started
        rate = f"{keys / spent:>11,.0f} keys/s" if spent > 0 else " " * 18
        left = f"{spent * (1 - fraction) / fraction:6.0f} s left" if fraction > 0 else " " * 11
        filled = int(30 * fraction)
        sys.stderr.write(
            f"\r{phase:<8} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {rate} {left} "
            f"{now - self._started:7.1f} s"
        )
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``1500000000``: bytes (K, M, G, T are powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    digits = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = digits[-1:] if digits[-1:] in units else ""
    try:
        value = float(digits[: len(digits) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 2G, 512M or a number of bytes)") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (it must be positive)")
    return int(value * units[unit])


def _jobs_for(memory: int, jobs: int | None) -> int | str:
    """The jobs to run in ``memory``, or why ``memory`` is too small."""
    fits = (memory - BASE_MEMORY) // (BASE_MEMORY + MIN_JOB_MEMORY)
    if jobs is None:
        jobs = min(default_jobs(), fits)
    least = BASE_MEMORY + max(jobs, 1) * (BASE_MEMORY + MIN_JOB_MEMORY)
    if fits < max(jobs, 1):
        return f"--memory {memory >> 20}M is too small for {max(jobs, 1)} job(s): give at least {least >> 20}M"
    return jobs


def cmd_build(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(SUFFIX):
        sys.stderr.write(f"rokv: error: the output must end in {SUFFIX} (workers pick the format by suffix)\n")
        return Exit.USAGE
    jobs = _jobs_for(args.memory, args.jobs)
    if isinstance(jobs, str):
        sys.stderr.write(f"rokv: error: {jobs}\n")
        return Exit.USAGE
    bar = _Bar() if sys.stderr.isatty() and not args.quiet else None
    started = time.monotonic()
    try:
        header = build(args.src, args.output, bar, allow_empty=args.allow_empty, memory=args.memory, jobs=jobs)
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
    except BrokenExecutor:
        if bar:
            bar.done()
        sys.stderr.write(
            "rokv: a build process died (killed, or out of memory: give a --memory this machine has); "
            "nothing written, temporary files removed\n"
        )
        return Exit.NO
    except (KeyboardInterrupt, Interrupted) as exc:
        if bar:
            bar.done()
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        sys.stderr.write(
            f"rokv: build stopped by {signal.Signals(signum).name}: nothing written, temporary files removed\n"
        )
        sys.stderr.flush()
        # Die of the signal, as the caller (a shell, a job runner) expects.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        raise
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
        "The output appears atomically; the build sorts in bounded memory on every core, with temporary "
        "files next to the output (removed at the end, on failure, SIGINT and SIGTERM). The output's bytes "
        "do not depend on --memory or --jobs.",
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
    p.add_argument(
        "--memory",
        type=parse_size,
        default=DEFAULT_MEMORY,
        metavar="SIZE",
        help="peak memory of the whole build, all its processes (default 2G; e.g. 512M, 4G). "
        "A .json source is read whole by the loader first (about twice its size)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="processes that parse and sort (default: one per core, as many as --memory allows)",
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
