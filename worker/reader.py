"""Reading ``.rokv`` files: :func:`open_store` maps a file and checks its
header (cost independent of the file's size; the pages are read on demand and
shared through the page cache by every process that maps the file);
:class:`Store` looks keys up in it; :func:`verify_store` re-reads it all and
checks its digest.

A ``Store`` is read-only and may be shared by threads.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rokv.worker.layout import DIGEST_ALGORITHM, DIGEST_SIZE, HEADER_SIZE, Header, StoreError, read_header

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where used (batches of keys): a worker that opens a file
# starts without paying for it (0.1 to 0.2 s here).

#: Batches at least this long take get_many's numpy path (measured: below
#: it, numpy's fixed cost of about 15 us exceeds the per-key path's).
BATCH = 16
_decode = bytes.decode
#: How many keys of a bucket get_many compares at once; a key further into
#: its bucket (rare: buckets hold 0.5 to 1 key on average) takes the slow path.
_PROBE = 4


def open_store(path: str | os.PathLike[str]) -> Store:
    """Map the ``.rokv`` file at ``path``. Reads the header and a few words;
    the rest is paged in on demand, so opening takes the same time whatever
    the file's size. The file must not be modified while mapped: deploy a new
    version under a new name (or rename over the old one; a mapping keeps the
    old inode).

    Raises:
        StoreError: see :func:`read_header`; also a bucket table or offsets
            whose end points disagree with the header.
    """
    return Store(path)


class Store:
    """Canonical key -> value lookups in a mapped ``.rokv`` file.

    ``get`` and ``get_many`` take keys as strings; a key is found only when
    spelled ``8-4-4-4-12`` (hex digits in either case, which name the same
    UUID), so a hit needs no further validation and anything else (other
    spellings, non-strings) is simply not found: callers normalise on a miss.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fsdecode(path)
        try:
            f = open(self.path, "rb")
        except OSError:
            read_header(self.path)  # raises the right StoreError
            raise
        with f:
            size = os.fstat(f.fileno()).st_size
            header = read_header(self.path, f.read(HEADER_SIZE), size)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.header = header
        h, mm, n = header, self._mm, header.count
        self._n = n
        self._shift = 32 - h.bucket_bits
        self._keys_at = h.keys_offset
        self._values_at = h.values_offset
        buckets = (1 << h.bucket_bits) + 1
        # Views for the per-key path (memoryview indexing is the cheapest
        # from Python) and numpy views for batches; none copies the file.
        view = memoryview(mm)
        self._table = view[h.table_offset : h.table_offset + 4 * buckets].cast("I")
        self._offsets = view[h.offsets_offset : h.offsets_offset + 8 * (n + 1)].cast("Q")
        self._np_keys: np.ndarray | None = None  # numpy views, made by the first batch
        if (
            self._table[0] != 0
            or self._table[buckets - 1] != n
            or self._offsets[0] != 0
            or self._offsets[n] != h.values_size
        ):
            self.close()
            raise StoreError(f"{self.path}: corrupt index (bucket table or value offsets)", path=self.path)
        self._get = self._make_get()
        # Callers (the handler) get the closure itself: no method call between.
        self.get = self._get  # type: ignore[method-assign,assignment]  # the closure, not a bound method

    # The digest identifies the content: two builds of the same pairs have
    # the same digest whatever their build time.
    @property
    def digest(self) -> str:
        """The content digest as ``blake2b-256:<hex>``: the one form that
        ``ping``, ``build``, ``inspect`` and ``verify`` all print."""
        return f"{DIGEST_ALGORITHM}:{self.header.digest_hex}"

    def __len__(self) -> int:
        return self._n

    def native_lookup(self, native: Any) -> Any:
        """This store as ``rokv.worker._native`` reads it: the mapping and where its
        sections are (FORMAT.md), for lookups in compiled code."""
        h = self.header
        return native.store_lookup(
            self._mm, h.table_offset, h.keys_offset, h.offsets_offset, h.values_offset, h.count, h.bucket_bits
        )

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]  # get answers None for any non-key

    def get(self, key: str, default: None = None) -> str | None:
        """The value of ``key`` (``8-4-4-4-12``, either case), else None.

        Bound to a closure over the file's views at open: local lookups
        instead of attribute lookups save a fifth of the time per key.
        """
        return self._get(key)

    def _make_get(self) -> Callable[[str], str | None]:
        mm, find, table, offsets = self._mm, self._mm.find, self._table, self._offsets
        keys_at, values_at, shift, fromhex = self._keys_at, self._values_at, self._shift, bytes.fromhex

        def get(key: str, default: None = None) -> str | None:
            try:
                # Exactly four hyphens, where the canonical form has them, and
                # 32 hex digits (fromhex skips whitespace: the length check
                # catches it).
                if key[8:24:5] != "----" or len(key) != 36:
                    return None
                kb = fromhex(key.replace("-", ""))
                bucket = int(key[:8], 16) >> shift
            except (TypeError, ValueError):
                return None
            if len(kb) != 16:
                return None
            first = table[bucket]
            at = keys_at + 16 * first
            if mm[at : at + 16] == kb:  # the common case: first in its bucket
                return mm[values_at + offsets[first] : values_at + offsets[first + 1] - 1].decode()
            end = keys_at + 16 * table[bucket + 1]
            pos = find(kb, at, end)
            while pos >= 0:
                index, misaligned = divmod(pos - keys_at, 16)
                if not misaligned:
                    # The value, without its separator.
                    return mm[values_at + offsets[index] : values_at + offsets[index + 1] - 1].decode()
                pos = find(kb, pos + 1, end)
            return None

        return get

    def get_many(self, keys: list[str]) -> list[str | None]:
        """The values of ``keys`` in order, None where :meth:`get` gives None.

        From :data:`BATCH` keys on, batches in numpy: a fixed number of array
        operations for the whole list instead of a dozen Python operations
        per key; below that, numpy's fixed cost is the larger.
        """
        m = len(keys)
        if m < BATCH or not self._n:
            return list(map(self._get, keys))
        try:
            raw = "".join(keys).encode("ascii")
        except (TypeError, UnicodeEncodeError):
            return list(map(self._get, keys))
        dashes = b"-" * m
        if (
            len(raw) != 36 * m
            or raw.count(b"-") != 4 * m
            or max(map(len, keys)) != 36
            or raw[8::36] != dashes
            or raw[13::36] != dashes
            or raw[18::36] != dashes
            or raw[23::36] != dashes
        ):
            return list(map(self._get, keys))
        # Every key is 36 characters with its four hyphens in place: 32 hex
        # digits each (fromhex checks), so the bytes split back key by key.
        try:
            packed = bytes.fromhex(raw.replace(b"-", b"").decode("ascii"))
        except ValueError:
            return list(map(self._get, keys))
        if len(packed) != 16 * m:
            return list(map(self._get, keys))
        if self._np_keys is None or self._np_table is None:
            self._map_arrays()
        assert self._np_keys is not None and self._np_table is not None
        import numpy as np

        buckets = np.frombuffer(packed, ">u4")[::4] >> self._shift
        start = self._np_table[buckets].astype(np.intp)
        candidates = start[:, None] + self._probes
        np.minimum(candidates, self._n - 1, out=candidates)
        # Keys are unique, so an equal key is the one wanted wherever it sits:
        # no need to check the bucket's end.
        hits = self._np_keys[candidates] == np.frombuffer(packed, "V16")[:, None]
        index = start + hits.argmax(1)
        found = hits.any(1)
        if not found.all():
            return self._some_found(keys, found, index, buckets)
        return self._values(index)

    def _map_arrays(self) -> None:
        import numpy as np

        h, mm, n = self.header, self._mm, self._n
        self._np_table = np.frombuffer(mm, "<u4", (1 << h.bucket_bits) + 1, h.table_offset)
        self._np_offsets = np.frombuffer(mm, "<u8", n + 1, h.offsets_offset)
        self._probes = np.arange(_PROBE, dtype=np.intp)
        self._np_keys = np.frombuffer(mm, "V16", n, h.keys_offset)

    def _some_found(self, keys: list[str], found: np.ndarray, index: np.ndarray, buckets: np.ndarray) -> list:
        import numpy as np

        values: list[str | None] = [None] * len(keys)
        hit = np.flatnonzero(found)
        for i, value in zip(hit.tolist(), self._values(index[hit])):
            values[i] = value
        # Keys beyond the probed part of a crowded bucket: one by one.
        sizes = self._np_table[buckets + 1].astype(np.intp) - self._np_table[buckets].astype(np.intp)
        for i in np.flatnonzero(~found & (sizes > _PROBE)).tolist():
            values[i] = self._get(keys[i])
        return values

    def _values(self, index: np.ndarray) -> list[str | None]:
        """The values at sorted positions ``index``: slices of the map,
        made and decoded by map() in C, without a Python loop."""
        starts = self._np_offsets[index]
        ends = self._np_offsets[index + 1]
        starts += self._values_at
        ends += self._values_at - 1  # without the separator
        return list(map(_decode, map(self._mm.__getitem__, map(slice, starts.tolist(), ends.tolist()))))

    def keys(self) -> Iterator[str]:
        """All keys, canonical, in sorted (binary) order."""
        mm, at = self._mm, self._keys_at
        for i in range(self._n):
            h = mm[at + 16 * i : at + 16 * i + 16].hex()
            yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def items(self) -> Iterator[tuple[str, str]]:
        offsets = self._offsets
        for i, key in enumerate(self.keys()):
            yield key, self._mm[self._values_at + offsets[i] : self._values_at + offsets[i + 1] - 1].decode()

    __iter__ = keys

    def close(self) -> None:
        """Unmap the file; lookups afterwards raise ValueError. Idempotent."""
        for name in ("_table", "_offsets"):
            view = self.__dict__.pop(name, None)
            if view is not None:
                view.release()
        # The lookup closure keeps the released views: it raises ValueError.
        for name in ("_np_table", "_np_offsets", "_probes"):
            self.__dict__.pop(name, None)
        self._np_keys = None
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a view; the GC unmaps later
            pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_store(path: str | os.PathLike[str], chunk: int = 1 << 22) -> Header:
    """Check the file's header and structure, then recompute the digest of
    everything after the header and compare. Reads the whole file.

    Raises:
        StoreError: as :func:`open_store`, or the digest does not match
            (the file was corrupted after it was built).
    """
    with open_store(path) as store:
        header = store.header
    name = os.fsdecode(path)
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    with open(name, "rb") as f:
        f.seek(HEADER_SIZE)
        while block := f.read(chunk):
            digest.update(block)
    if digest.digest() != header.digest:
        raise StoreError(
            f"{name}: corrupt: content digest {digest.hexdigest()} does not match the header's {header.digest_hex}",
            path=name,
        )
    return header
