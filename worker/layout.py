"""The ``.rokv`` format's header and layout: its constants, where each
section lies, and :func:`read_header`, which checks a header against the file.

FORMAT.md describes the format; these definitions are the reference. The
reader (:mod:`rokv.worker.reader`) and the writer (:mod:`rokv.worker.writer`)
both build on this module and on nothing of each other.

Versions: this rokv reads and writes version :data:`FORMAT_VERSION` and
refuses any other with a message that says so.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass

from rokv.dataset import DatasetError

MAGIC = b"ROKV\r\n\x1a\n"
FORMAT_VERSION = 1
SUFFIX = ".rokv"
#: How a digest is named wherever it is shown: "blake2b-256:<64 hex digits>".
DIGEST_ALGORITHM = "blake2b-256"
#: magic, version, header size, key count, build time (ns), bucket bits,
#: flags, 6 offsets/sizes, digest, header CRC, reserved. Little-endian.
HEADER = struct.Struct("<8sIIQQII6Q32sII")
HEADER_SIZE = HEADER.size  # 128
#: Where the header's CRC-32 sits: it covers the bytes before it.
CRC_AT = HEADER_SIZE - 8
#: Bucket table entries are uint32 indexes into the sorted keys.
MAX_KEYS = (1 << 32) - 1
#: Ends every stored value. 0xFF never occurs in UTF-8, so a run of values
#: could be decoded in one call (with surrogateescape) and split on U+DCFF;
#: measured slower than slicing value by value, but it costs one byte a key
#: and makes values self-delimiting for tools.
SEPARATOR = b"\xff"
ALIGN = 8
DIGEST_SIZE = 32


class StoreError(DatasetError):
    """A ``.rokv`` file that cannot be served: missing, truncated, of another
    format or version, or (from :func:`verify_store`) corrupt."""


@dataclass(frozen=True)
class Header:
    """A ``.rokv`` file's header, checked for consistency with the file size."""

    version: int
    count: int
    build_time_ns: int
    bucket_bits: int
    table_offset: int
    keys_offset: int
    offsets_offset: int
    values_offset: int
    values_size: int
    file_size: int
    digest: bytes

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()

    def as_dict(self) -> dict[str, object]:
        """The header as JSON-friendly values (what ``rokv inspect`` prints)."""
        return {
            "format": "rokv",
            "version": self.version,
            "keys": self.count,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.build_time_ns / 1e9)),
            "digest": f"{DIGEST_ALGORITHM}:{self.digest_hex}",
            "file_size": self.file_size,
            "values_size": self.values_size,
            "bucket_bits": self.bucket_bits,
        }


def bucket_bits_for(count: int) -> int:
    """Bits of the key that pick its bucket: 2**bits buckets, 0.5 to 1 key each."""
    return min(32, max(0, (count - 1).bit_length()))


def layout(count: int, bucket_bits: int, values_size: int) -> tuple[int, int, int, int, int]:
    """Offsets of the table, keys, value offsets and values, and the file size."""
    table = HEADER_SIZE
    keys = align(table + 4 * ((1 << bucket_bits) + 1))
    offsets = align(keys + 16 * count)
    values = align(offsets + 8 * (count + 1))
    return table, keys, offsets, values, values + values_size


def align(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def read_header(path: str | os.PathLike[str], data: bytes | None = None, size: int | None = None) -> Header:
    """Parse and check the header of the file at ``path`` (or of ``data``, its
    first bytes, when given with the file's ``size``).

    Raises:
        StoreError: missing or unreadable file; wrong magic (not a .rokv
            file); unknown format version; header checksum mismatch; section
            sizes that do not add up to the file's size (truncated or extended).
    """
    name = os.fsdecode(path)
    if data is None:
        try:
            with open(name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(HEADER_SIZE)
        except FileNotFoundError:
            raise StoreError(f"{name}: no such file", path=name) from None
        except IsADirectoryError:
            raise StoreError(f"{name}: is a directory, not a dataset file", path=name) from None
        except OSError as exc:
            raise StoreError(f"{name}: cannot read: {exc.strerror or exc}", path=name) from None
    assert size is not None
    if not data.startswith(MAGIC):
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise StoreError(f"{name}: truncated: {size} bytes, shorter than the header", path=name)
        raise StoreError(f"{name}: not a .rokv file (wrong magic number)", path=name)
    if len(data) < 12:
        raise StoreError(f"{name}: truncated: {size} bytes, shorter than the header", path=name)
    version = struct.unpack_from("<I", data, 8)[0]
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{name}: unknown .rokv format version {version} (this rokv reads version {FORMAT_VERSION}); "
            "rebuild the file with this rokv's `rokv build`",
            path=name,
        )
    if len(data) < HEADER_SIZE:
        raise StoreError(f"{name}: truncated: {size} bytes, shorter than the {HEADER_SIZE}-byte header", path=name)
    fields = HEADER.unpack_from(data)
    (
        _,
        _,
        header_size,
        count,
        built,
        bits,
        _flags,
        table,
        keys,
        offsets,
        values,
        values_size,
        file_size,
        digest,
        crc,
        _,
    ) = fields
    if crc != zlib.crc32(data[:CRC_AT]):
        raise StoreError(f"{name}: corrupt header (checksum mismatch)", path=name)
    if (
        header_size != HEADER_SIZE
        or count > MAX_KEYS
        or bits != bucket_bits_for(count)
        or (table, keys, offsets, values, file_size) != layout(count, bits, values_size)
        or values_size < count
    ):
        raise StoreError(f"{name}: corrupt header (inconsistent section sizes)", path=name)
    if size != file_size:
        what = "truncated" if size < file_size else "has trailing data"
        raise StoreError(f"{name}: {what}: {size} bytes, the header says {file_size}", path=name)
    return Header(version, count, built, bits, table, keys, offsets, values, values_size, file_size, digest)
