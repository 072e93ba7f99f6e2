"""Spill files of ``rokv build``: parsed records, split by the leading bits
of their keys into buckets, on disk until each bucket is sorted alone.

A spill folder holds, for each bucket, one file per process that wrote to it
(``BUCKET.PID``, BUCKET in hex), so that processes append without sharing a
file. A file is a run of blocks, each written by one call::

    count (uint64) | values size (uint64) | keys (16 x count) |
    value sizes (uint64 x count, each with its separator) | values (each followed by 0xFF)

All integers little-endian. Blocks are in no particular order: the bucket is
sorted when read back.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

from rokv.worker.parse import Records

if TYPE_CHECKING:
    import numpy as np

_BLOCK = struct.Struct("<QQ")
#: Pieces per writev() call: under Linux's IOV_MAX of 1024.
_IOV = 1000
#: Bytes above which :func:`gather` slices instead of indexing.
GATHER_BYTES = 1 << 22


def bucket_of(keys: np.ndarray, prefix_bits: int) -> np.ndarray:
    """The bucket of each 16-byte key (a ``V16`` array): its first
    ``prefix_bits`` bits."""
    import numpy as np

    if not prefix_bits:
        return np.zeros(len(keys), np.intp)
    return (np.ascontiguousarray(keys).view(">u4")[::4] >> (32 - prefix_bits)).astype(np.intp)


def append(folder: str, prefix_bits: int, records: Records) -> tuple[np.ndarray, np.ndarray]:
    """Append ``records`` to this process's files of their buckets in
    ``folder``; return the keys and the values' bytes added to each bucket."""
    import numpy as np

    buckets = 1 << prefix_bits
    counts = np.zeros(buckets, np.int64)
    value_bytes = np.zeros(buckets, np.int64)
    if not len(records):
        return counts, value_bytes
    keys = np.frombuffer(records.keys, "V16")
    sizes = records.sizes.astype("<u8", copy=False)
    values = records.values
    bucket = bucket_of(keys, prefix_bits)
    starts = records.starts
    if prefix_bits and len(keys) > 1:
        order = np.argsort(bucket, kind="stable")
        if starts is None:
            starts = np.cumsum(sizes) - sizes
        bucket, keys, sizes, starts = bucket[order], keys[order], sizes[order], starts[order]
    if starts is not None:
        values = gather(values, starts, sizes)
    counts[:] = np.bincount(bucket, minlength=buckets)
    ends = np.cumsum(counts)
    running = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=running[1:])
    value_bytes[:] = running[ends] - running[ends - counts]
    view = memoryview(values).cast("B")
    pid = os.getpid()
    at = 0
    for b in np.flatnonzero(counts).tolist():
        end = int(ends[b])
        header = _BLOCK.pack(end - at, int(value_bytes[b]))
        pieces = [header, keys[at:end].tobytes(), sizes[at:end].tobytes(), view[running[at] : running[end]]]
        _write_file(os.path.join(folder, f"{b:04x}.{pid}"), pieces)
        at = end
    return counts, value_bytes


def gather(values: Any, starts: np.ndarray, sizes: np.ndarray) -> Any:
    """``values[starts[i] : starts[i] + sizes[i]]`` end to end, for each i.
    Small runs by one numpy gather (its index costs 16 bytes per byte),
    big ones slice by slice."""
    import numpy as np

    total = int(sizes.sum())
    size = sizes.astype(np.intp)
    if total <= GATHER_BYTES:
        index = np.repeat(starts.astype(np.intp) - (np.cumsum(size) - size), size)
        index += np.arange(total)
        return np.frombuffer(values, np.uint8)[index]
    return b"".join(pieces(values, starts, sizes))


def pieces(values: Any, starts: np.ndarray, sizes: np.ndarray) -> list[memoryview]:
    """``values[starts[i] : starts[i] + sizes[i]]`` for each i, as views."""
    view = memoryview(values).cast("B")
    return list(map(view.__getitem__, map(slice, starts.tolist(), (starts + sizes).tolist())))


def _write_file(path: str, pieces: list[Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for at in range(0, len(pieces), _IOV):
            group = pieces[at : at + _IOV]
            done = os.writev(fd, group)
            total = sum(map(len, group))
            if done < total:  # a short write: the rest, piece by piece
                rest = b"".join(group)[done:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
    finally:
        os.close(fd)


def bucket_files(folder: str) -> dict[int, list[str]]:
    """Bucket -> its files in ``folder``."""
    files: dict[int, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        bucket, _, _ = name.partition(".")
        files.setdefault(int(bucket, 16), []).append(os.path.join(folder, name))
    return files


def read_bucket(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One bucket's records read back: ``(buffer, keys, sizes, starts)``,
    where value i is ``buffer[starts[i] : starts[i] + sizes[i]]`` (with its
    separator). Memory: the files' size plus 32 bytes a key."""
    import numpy as np

    total = sum(os.path.getsize(p) for p in paths)
    buffer = np.empty(total, np.uint8)
    view = memoryview(buffer.data)
    at = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view[at:]):
                at += n
    if at != total:
        raise OSError(f"{paths[0]}: spill file changed while being read")
    keys, sizes, starts = [], [], []
    at = 0
    while at < total:
        count, value_bytes = _BLOCK.unpack_from(view, at)
        at += _BLOCK.size
        keys.append(buffer[at : at + 16 * count].view("V16"))
        at += 16 * count
        block_sizes = buffer[at : at + 8 * count].view("<u8")
        at += 8 * count
        sizes.append(block_sizes)
        starts.append(np.cumsum(block_sizes) - block_sizes + np.uint64(at))
        at += value_bytes
    if not keys:
        empty = np.zeros(0, np.uint64)
        return buffer, np.zeros(0, "V16"), empty, empty
    return buffer, np.concatenate(keys), np.concatenate(sizes).astype(np.uint64), np.concatenate(starts)
