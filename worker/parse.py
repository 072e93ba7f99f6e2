"""Parsing a byte range of a JSON Lines dataset into packed records, for
``rokv build``: several processes parse ranges of one file at once.

A range ``[start, end)`` owns the lines that begin in it, so ranges cut
anywhere split the file into whole lines, each parsed once. Three paths, the
first that takes the whole range wins:

1. **Columns.** Lines exactly as ``json.dumps`` writes them
   (``{"key": "<canonical UUID>", "value": "..."}``, no escape in the value)
   are parsed by numpy as columns of bytes: newlines found at once, the fixed
   parts and the key's digits checked for every line at once, the values cut
   out with one mask. No Python object per line.
2. **Pattern.** Other spacing, and values with escapes: one regular
   expression over the whole range, one match per line, at C speed.
3. **Loader.** Anything else (a key in another spelling, members in another
   order, a byte order mark, an invalid line): the loader's own line-by-line
   path (:func:`rokv.dataset.iter_jsonl_lines`), same rules, same
   messages.

The first two accept exactly what the loader accepts: a JSON object of the
two members, a key in canonical form (other spellings of the same UUID take
the loader's path), a JSON string value (no raw control character; escapes
are decoded by json and checked for lone surrogates), UTF-8 bytes.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rokv.dataset import iter_jsonl_lines
from rokv.worker.layout import SEPARATOR

if TYPE_CHECKING:
    import numpy as np

_WS = rb"[ \t\r]*"
#: One line: blank (JSON whitespace only), or a record in the usual shape.
#: No part of it matches a newline, so each match is exactly one line.
#: One line: a record in the usual shape, or blank (JSON whitespace only).
#: No part of it matches a newline, so each match is exactly one line. The
#: value's part is an unrolled loop (runs of plain characters between
#: escapes): linear, where an alternation under a star backtracks.
_LINE = re.compile(
    rb"^(?:"
    + _WS
    + rb"\{"
    + _WS
    + rb'"key"'
    + _WS
    + rb":"
    + _WS
    + rb'"([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})"'
    + _WS
    + rb","
    + _WS
    + rb'"value"'
    + _WS
    + rb":"
    + _WS
    + rb'"([^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*)"'
    + _WS
    + rb"\}"
    + _WS
    + rb"|"
    + _WS
    + rb")$",
    re.MULTILINE,
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_READ = 1 << 20


class _Slow(Exception):
    """The fast path cannot take this range: take the loader's."""


@dataclass
class Records:
    """Parsed pairs, in no particular order: ``keys`` holds 16 bytes a key
    (FORMAT.md), ``sizes[i]`` is the size of value i's UTF-8 bytes plus one
    (its separator), ``values`` the values end to end, each followed by
    :data:`SEPARATOR` (any buffer: bytes, a numpy array), unless ``starts``
    says where each one is."""

    keys: bytes
    sizes: np.ndarray
    values: Any
    #: Where each value starts in ``values``, when they are not end to end.
    starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sizes)


def read_range(path: str, start: int, end: int) -> tuple[int, bytes]:
    """The whole lines that begin in ``[start, end)`` of the file, and where
    the first begins. Reads at most one line beyond ``end``."""
    with open(path, "rb") as f:
        if start > 0:
            # Skip the end of a line begun before ``start``: the range owns
            # only the lines that begin in it (scan, never read a long line whole).
            f.seek(start - 1)
            at = start - 1
            while True:
                block = f.read(min(_READ, max(end - at, 1)))
                newline = block.find(b"\n")
                if newline >= 0:
                    at += newline + 1
                    break
                at += len(block)
                if not block or at >= end:
                    return at, b""
            if at >= end:
                return at, b""
            f.seek(at)
        else:
            at = 0
        data = f.read(end - at)
        if data and not data.endswith(b"\n"):
            data += f.readline()
    return at, data


def parse_range(path: str, start: int, end: int, *, exact: bool = False) -> Records:
    """The records of the lines that begin in ``[start, end)``.

    ``exact``: count the lines before the range first, so that a refusal
    names the right line (the error path: a worker parsing a range does not
    know its first line's number, and its messages may name the wrong one).

    Raises:
        DatasetError: as the loader would for the first bad line of the range.
        OSError: the file cannot be read.
    """
    # Each path reads the range itself, so that it can drop the text once
    # parsed (a line may be hundreds of MB); a path that gives up costs a
    # read from the page cache.
    for fast in (_columns, _pattern):
        try:
            return fast(read_range(path, start, end)[1])
        except _Slow:
            pass
    at, data = read_range(path, start, end)
    # Line 1 alone may start with a byte order mark: any other number will do.
    first_line = _line_of(path, at) if exact else 1 if at == 0 else 2
    return _slow(path, data, first_line)


def _line_of(path: str, offset: int) -> int:
    """The 1-based number of the line that begins at byte ``offset``."""
    lines = 1
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(1 << 24, offset))
            if not block:
                break
            lines += block.count(b"\n")
            offset -= len(block)
    return lines


#: The fixed parts of a line as json.dumps writes it, around the key and value.
_HEAD = b'{"key": "'
_MIDDLE = b'", "value": "'
_KEY = 36
_VALUE_AT = len(_HEAD) + _KEY + len(_MIDDLE)
#: Lines longer than this on average take the pattern's path.
_LONG_LINE = 4096


def _hex_table() -> np.ndarray:
    import numpy as np

    table = np.full(256, 255, np.uint8)
    for i, digit in enumerate(b"0123456789abcdef"):
        table[digit] = i
    return table


_HEX: list[np.ndarray] = []


def _columns(data: bytes) -> Records:
    """The lines exactly as json.dumps writes them, parsed as columns."""
    import numpy as np

    # Long lines go to the pattern, which holds 2 copies of a value at most
    # (the mask here costs 3 bytes per byte of the range).
    if not data.endswith(b"\n") or b"\\" in data or len(data) > _LONG_LINE * data.count(b"\n"):
        raise _Slow
    text = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(text == 10)
    n = len(ends)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    # Each line's only quotes: 3 before the key, 4 between key and value, 1
    # after the value, and no control character but the newline (JSON allows
    # none raw in a string, and \r or \t around the members are for the pattern).
    if (
        (ends - starts < _VALUE_AT + 2).any()
        or np.count_nonzero(text == 34) != 8 * n
        or np.count_nonzero(text < 32) != n
    ):
        raise _Slow
    # Every line's first bytes at once: a view whose element i is the
    # _VALUE_AT bytes from byte i, indexed by the lines' starts.
    windows = np.ndarray((len(text) - _VALUE_AT + 1,), f"V{_VALUE_AT}", data, strides=(1,))
    head = windows[starts].view(np.uint8).reshape(n, _VALUE_AT)
    if not (
        (head[:, : len(_HEAD)] == np.frombuffer(_HEAD, np.uint8)).all()
        and (head[:, len(_HEAD) + _KEY :] == np.frombuffer(_MIDDLE, np.uint8)).all()
        and (text[ends - 1] == ord("}")).all()
        and (text[ends - 2] == ord('"')).all()
    ):
        raise _Slow
    key = head[:, len(_HEAD) : len(_HEAD) + _KEY]
    if not (key[:, [8, 13, 18, 23]] == ord("-")).all() or not (key[:, 14] == ord("4")).all():
        raise _Slow
    if not _HEX:
        _HEX.append(_hex_table())
    digits = _HEX[0][key[:, [i for i in range(_KEY) if i not in (8, 13, 18, 23)]]]
    if digits.max(initial=0) > 15 or not (digits[:, 16] >= 8).all() or not (digits[:, 16] <= 11).all():
        raise _Slow
    if not data.isascii():
        _check_utf8(data)
    keys = (digits[:, 0::2] << 4 | digits[:, 1::2]).tobytes()
    # Each value with its closing quote, which becomes its separator; they
    # stay in place (the spill gathers them in bucket order).
    first = starts + _VALUE_AT
    sizes = (ends - 1 - first).astype(np.uint64)
    text = text.copy()
    text[ends - 2] = SEPARATOR[0]
    return Records(keys, sizes, text, first.astype(np.uint64))


def _pattern(data: bytes) -> Records:
    import numpy as np

    if not data.isascii():
        _check_utf8(data)
    found = _LINE.findall(data)
    # One match per line, and one more for the empty string after a final
    # newline: fewer means some line is not in the usual shape.
    if len(found) != data.count(b"\n") + 1:
        raise _Slow
    escapes = b"\\" in data
    del data
    if not found:
        return Records(b"", np.zeros(0, np.uint64), b"")
    keys, values = zip(*found)
    blanks = keys.count(b"")
    if blanks == 1 and not keys[-1]:
        keys, values = keys[:-1], values[:-1]
    elif blanks:
        kept = [i for i, key in enumerate(keys) if key]
        keys, values = tuple(keys[i] for i in kept), tuple(values[i] for i in kept)
    packed = bytes.fromhex(b"".join(keys).replace(b"-", b"").decode("ascii"))
    del found, keys
    value_list = list(values)
    del values
    if escapes:
        for i, value in enumerate(value_list):
            if b"\\" in value:
                value_list[i] = b""  # the escaped text is freed as soon as decoded
                value_list[i] = _unescape(value)
                del value
    return records(packed, value_list)


def records(keys: bytes, values: list[bytes]) -> Records:
    """The records of ``keys`` (16 bytes each) and their ``values`` (UTF-8,
    no separator; the list is consumed)."""
    import numpy as np

    sizes = np.fromiter(map(len, values), np.uint64, len(values))
    sizes += np.uint64(1)
    values.append(b"")
    return Records(keys, sizes, SEPARATOR.join(values) if len(values) > 1 else b"")


def _unescape(escaped: bytes) -> bytes:
    text = json.loads(b'"' + escaped + b'"')
    if _SURROGATE.search(text):
        raise _Slow  # a lone surrogate: the loader's path names it
    return text.encode("utf-8")


def _check_utf8(data: bytes) -> None:
    """Raise _Slow unless ``data`` is UTF-8, in bounded memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    step = 1 << 22
    try:
        for at in range(0, len(data), step):
            decoder.decode(view[at : at + step])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _Slow from None


def _slow(path: str, data: bytes, first_line: int) -> Records:
    keys = bytearray()
    values: list[bytes] = []
    fromhex = bytes.fromhex
    for _, key, value in iter_jsonl_lines(path, data, first_line):
        keys += fromhex(key.replace("-", ""))
        values.append(value.encode("utf-8"))
    return records(bytes(keys), values)
