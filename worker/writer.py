"""Writing ``.rokv`` files: :func:`write_store` lays out sorted keys and
their values (FORMAT.md) and writes the file atomically; :class:`Output` is
the same file written piece by piece at the offsets of its layout (by several
processes at once, each with its own descriptor), then digested and renamed
into place; :func:`bucket_table` builds the index."""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable
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

__all__ = ["SEPARATOR", "Output", "bucket_table", "pwrite_all", "pwritev_all", "write_store"]


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
            header = _header(count, built, bits, values_size, digest.digest())
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


def _header(count: int, built: int, bits: int, values_size: int, digest: bytes) -> bytes:
    table_at, keys_at, offsets_at, values_at, file_size = layout(count, bits, values_size)
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
        digest,
        0,
        0,
    )
    return header[:CRC_AT] + struct.pack("<II", zlib.crc32(header[:CRC_AT]), 0)


def pwrite_all(fd: int, data: object, at: int) -> None:
    """Write all of ``data`` (any buffer) at offset ``at`` of ``fd``: a
    single pwrite stops at about 2 GB."""
    view = memoryview(data).cast("B")  # type: ignore[arg-type]  # any buffer
    while view:
        done = os.pwrite(fd, view, at)
        view, at = view[done:], at + done


def pwritev_all(fd: int, views: list[memoryview], at: int) -> None:
    """Write ``views`` (at most IOV_MAX, 1024) end to end at offset ``at``."""
    done = os.pwritev(fd, views, at)
    for view in views:
        if done < len(view):  # a single call stops at about 2 GB
            pwrite_all(fd, view[max(done, 0) :], at + max(done, 0))
        done -= len(view)
        at += len(view)


class Output:
    """A ``.rokv`` file of ``count`` keys and ``values_size`` bytes of values,
    written out of order: its temporary (``.NAME.PID.tmp`` in the target's
    folder, as :func:`write_store` names it) is created at its final size,
    every section's bytes are written where :func:`rokv.worker.layout.layout`
    puts them (by any process: :attr:`tmp` and the offsets are plain data),
    then :meth:`finish` digests it, writes the header, syncs it and renames
    it over the target. :meth:`abort` (or leaving a ``with`` block on an
    error) removes the temporary.

    The end points of the table and the offsets (``table[2**B] = N`` and
    ``offsets[N] = values_size``) are written by :meth:`finish`; the rest is
    the writers'.
    """

    def __init__(self, path: str | os.PathLike[str], count: int, values_size: int) -> None:
        if count > MAX_KEYS:
            raise ValueError(f"{count} keys: a .rokv file holds at most {MAX_KEYS}")
        self.name = os.fsdecode(path)
        self.count, self.values_size = count, values_size
        self.bits = bucket_bits_for(count)
        self.table_at, self.keys_at, self.offsets_at, self.values_at, self.file_size = layout(
            count, self.bits, values_size
        )
        self.folder = os.path.dirname(os.path.abspath(self.name))
        self.tmp = os.path.join(self.folder, f".{os.path.basename(self.name)}.{os.getpid()}.tmp")
        self._fd: int | None = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.ftruncate(self._fd, self.file_size)  # holes read as the zero padding
        except BaseException:
            self.abort()
            raise

    def finish(self, build_time_ns: int | None = None, progress: Callable[[int], None] | None = None) -> Header:
        """Digest the content (read back: the pieces were written out of
        order), write the header, fsync, rename over the target, fsync the
        folder. ``progress(bytes digested)`` is called now and then."""
        import numpy as np

        fd = self._fd
        assert fd is not None, "finished or aborted"
        try:
            pwrite_all(fd, np.array([self.count], "<u4"), self.table_at + 4 * (1 << self.bits))
            pwrite_all(fd, np.array([self.values_size], "<u8"), self.offsets_at + 8 * self.count)
            digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
            block = bytearray(1 << 23)
            view = memoryview(block)
            at = HEADER_SIZE
            while at < self.file_size:
                n = os.preadv(fd, [view[: min(len(block), self.file_size - at)]], at)
                if n <= 0:
                    raise OSError(f"{self.tmp}: shorter than written")
                digest.update(view[:n])
                at += n
                if progress is not None:
                    progress(at - HEADER_SIZE)
            built = time.time_ns() if build_time_ns is None else build_time_ns
            pwrite_all(fd, _header(self.count, built, self.bits, self.values_size, digest.digest()), 0)
            os.fsync(fd)
            os.close(fd)
            self._fd = None
            os.replace(self.tmp, self.name)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.folder)
        return read_header(self.name)

    def abort(self) -> None:
        """Close and remove the temporary. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self.tmp)
            except OSError:
                pass

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


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
