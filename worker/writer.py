"""Writing ``.rokv`` files: :func:`write_store` lays out sorted keys and
their values (FORMAT.md) and writes the file atomically; :func:`bucket_table`
builds its index."""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rokv.worker.layout import (
    CRC_AT,
    DIGEST_SIZE,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_KEYS,
    SEPARATOR,
    Header,
    bucket_bits_for,
    layout,
    read_header,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SEPARATOR", "bucket_table", "write_store"]


def bucket_table(keys: np.ndarray, bits: int) -> np.ndarray:
    """The bucket table of sorted 16-byte ``keys`` (a ``V16`` or ``S16``
    array): entry b is the index of the first key whose top ``bits`` bits are
    >= b; one more entry holds the key count."""
    import numpy as np

    top = np.ascontiguousarray(keys).view(">u4")[::4]
    buckets = (top >> (32 - bits)).astype(np.int64) if bits else np.zeros(len(top), np.int64)
    table = np.zeros((1 << bits) + 1, "<u4")
    np.cumsum(np.bincount(buckets, minlength=1 << bits), out=table[1:])
    return table


def write_store(
    path: str | os.PathLike[str],
    keys: np.ndarray,
    value_sizes: np.ndarray,
    values: Iterable[bytes],
    build_time_ns: int | None = None,
) -> Header:
    """Write a ``.rokv`` file atomically: to a temporary name in the same
    folder, fsync'd, then renamed over ``path``, so a reader sees the old file
    or the whole new one, and a killed writer leaves nothing at ``path``.

    ``keys`` are the 16-byte binary keys (``V16``), sorted, no repeats;
    ``value_sizes[i]`` is the size of key i's UTF-8 value plus one (its
    separator); ``values`` yields the values' bytes in key order, each followed
    by :data:`SEPARATOR`, in chunks of any size.

    Raises:
        OSError: the folder is not writable, the disk is full, ...
        ValueError: more than :data:`MAX_KEYS` keys or the values' bytes do
            not add up to ``value_sizes``.
    """
    import numpy as np

    name = os.fsdecode(path)
    count = len(keys)
    if count > MAX_KEYS:
        raise ValueError(f"{count} keys: a .rokv file holds at most {MAX_KEYS}")
    bits = bucket_bits_for(count)
    offsets = np.zeros(count + 1, "<u8")
    np.cumsum(value_sizes, out=offsets[1:])
    values_size = int(offsets[-1])
    table_at, keys_at, offsets_at, values_at, file_size = layout(count, bits, values_size)
    built = time.time_ns() if build_time_ns is None else build_time_ns

    folder = os.path.dirname(os.path.abspath(name))
    tmp = os.path.join(folder, f".{os.path.basename(name)}.{os.getpid()}.tmp")
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER_SIZE))

            def put(data: bytes | memoryview, at: int | None = None) -> None:
                if at is not None and at != f.tell():
                    pad = bytes(at - f.tell())
                    digest.update(pad)
                    f.write(pad)
                digest.update(data)
                f.write(data)

            put(bucket_table(keys, bits).data, table_at)
            put(np.ascontiguousarray(keys).data, keys_at)
            put(offsets.data, offsets_at)
            put(b"", values_at)
            written = 0
            for block in values:
                written += len(block)
                put(block)
            if written != values_size:
                raise ValueError(f"values: {written} bytes written, {values_size} expected")
            assert f.tell() == file_size
            header = HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                HEADER_SIZE,
                count,
                built,
                bits,
                0,
                table_at,
                keys_at,
                offsets_at,
                values_at,
                values_size,
                file_size,
                digest.digest(),
                0,
                0,
            )
            header = header[:CRC_AT] + struct.pack("<II", zlib.crc32(header[:CRC_AT]), 0)
            f.seek(0)
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return read_header(name)


def _fsync_dir(folder: str) -> None:
    # The rename itself is durable only once the folder is synced.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
