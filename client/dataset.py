"""Loading a dataset file into memory, refusing anything the worker could not serve.

One reader for everything that reads a dataset source: the worker serving
it, ``rokv build`` compiling it, and ``rokv bench`` checking answers against
it (so a dataset the workers refuse is refused by bench with the same
message). It needs only the protocol's key rules, so it lives with the
client (``rokv.dataset``), the layer everything else may import.

Two formats, chosen by the file's suffix (any letter case):

- ``.json``: one JSON object mapping keys to values;
- ``.jsonl``: JSON Lines, one ``{"key": ..., "value": ...}`` object per line;
  lines holding only JSON whitespace are skipped.

Keys must be valid per :func:`rokv.keys.normalize_key` and are stored in
canonical lowercase form; two spellings of one UUID are a duplicate. Values
must be strings that UTF-8 can encode (no lone surrogates) and are kept exactly
as decoded. A leading UTF-8 byte order mark is ignored. A dataset of no keys
is refused unless the caller allows it (``allow_empty``): an empty export must
not be deployed by mistake. Everything else is refused with a
:class:`DatasetError` naming the file and the line or key.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import NoReturn

from rokv.errors import InvalidKey
from rokv.keys import is_canonical, normalize_key, show_key
from rokv.protocol import quote

_BOM = "\ufeff"
_JSON_WS = " \t\r\n"
_WS = re.compile(r"[ \t\r\n]*")
# A lone surrogate can only come from a \uD800-\uDFFF escape, since the text
# itself is strict UTF-8: without such an escape, no value needs checking.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class DatasetError(Exception):
    """The dataset file cannot be served; str() is a one-line message naming
    the file and the line or key.

    ``path`` is the file as given and ``line`` the 1-based line at fault, when
    known (both ``None`` when not given).
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


def _error(path: str, message: str, line: int | None = None) -> DatasetError:
    return DatasetError(f"{_show_path(path)}: {message}", path=path, line=line)


class _Object(list[tuple[str, object]]):
    """A JSON object as its (name, value) pairs in file order, duplicates kept.

    Being a list subclass, it costs one copy of the pairs json already built,
    and values that are objects can still be told apart from arrays.
    """


# One decoder for all lines: json.loads(..., object_pairs_hook=...) would build
# a new decoder on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_Object)


def load_dataset(path: str | os.PathLike[str], *, allow_empty: bool = False) -> dict[str, str]:
    """Read the dataset at ``path`` into a dict of canonical key to value.

    ``allow_empty``: accept a dataset of no keys (``{}``, or a ``.jsonl``
    file of blank lines only), which is otherwise refused.

    Raises:
        DatasetError: the suffix is not ``.json`` or ``.jsonl``; the dataset
            holds no keys and ``allow_empty`` is false; the file is
            missing, a directory or unreadable; it is not UTF-8 or not valid
            JSON (JSON Lines); a ``.json`` file's top-level value is not an
            object; a ``.jsonl`` line is not an object with exactly the members
            ``key`` and ``value``; a key is invalid or repeated (in any
            spelling); a value is not a string or holds a lone surrogate.
    """
    name = os.fsdecode(path)
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".json":
        dataset = _load_json(name)
    elif suffix == ".jsonl":
        dataset = _load_jsonl(name)
    else:
        raise unsupported_error(name, suffix, ".json or .jsonl")
    if not dataset and not allow_empty:
        raise empty_error(name)
    return dataset


def unsupported_error(path: str, suffix: str, accepted: str) -> DatasetError:
    what = quote(suffix) if suffix else "(no suffix)"
    return _error(path, f"unsupported dataset format {what}: use {accepted}")


def empty_error(path: str | os.PathLike[str]) -> DatasetError:
    """The error for a dataset of no keys, when that was not allowed."""
    return _error(
        os.fsdecode(path),
        "the dataset holds no keys; an empty dataset is refused unless allowed "
        "(--allow-empty, or ROKV_ALLOW_EMPTY=1 for rokv-worker)",
    )


# --- .json -----------------------------------------------------------------


def _load_json(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _os_error(path, exc) from None
    text = _decode(path, data)
    del data
    if text.startswith(_BOM):
        text = text[1:]
    if not text:
        raise _error(path, "invalid JSON: the file is empty (an empty dataset is {})", 1)

    try:
        top = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _syntax_error(path, exc) from None
    except RecursionError:
        raise _error(path, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise _error(path, f"invalid JSON: {exc}") from None
    if not isinstance(top, _Object):
        line = text.count("\n", 0, _skip_ws(text)) + 1
        raise _error(
            path, f"line {line}: the top-level JSON value is {_kind(top)}, not an object of keys to values", line
        )

    dataset = dict(top)
    # Checked in bulk, at C speed where possible: no repeated name, every key
    # canonical, every value a string holding no lone surrogate. Anything
    # else (other key spellings included) takes the member by member path.
    if (
        len(dataset) == len(top)
        and all(map(is_canonical, dataset))
        and set(map(type, dataset.values())) <= {str}
        and not (_SURROGATE_ESCAPE.search(text) and any(map(_SURROGATE.search, dataset.values())))  # type: ignore[arg-type]  # values are str: checked just above
    ):
        return dataset  # type: ignore[return-value]  # every value is a str: checked above
    return _load_json_members(path, text, top)


def _load_json_members(path: str, text: str, pairs: _Object) -> dict[str, str]:
    """The dataset of ``pairs``, normalising keys one by one."""
    dataset: dict[str, str] = {}
    for index, (key, value) in enumerate(pairs):
        canonical = _normalize_or_none(key)
        if canonical is None or type(value) is not str or canonical in dataset or _SURROGATE.search(value):
            _json_member_error(path, text, pairs, index)
        dataset[canonical] = value
    return dataset


def _json_member_error(path: str, text: str, pairs: _Object, index: int) -> NoReturn:
    """Raise the DatasetError for top-level member ``index``, with lines if found."""
    key, value = pairs[index]
    canonical = _normalize_or_none(key)
    first = None
    if canonical is not None and type(value) is str and not _SURROGATE.search(value):
        # Nothing wrong with the member itself, so it repeats an earlier key.
        first = next(i for i, (k, _) in enumerate(pairs) if _normalize_or_none(k) == canonical)
    lines = _member_lines(text, index)
    if first is None:
        raise _member_error(path, key, value, lines.get(index))
    raise _member_error(path, key, value, lines.get(index), pairs[first][0], lines.get(first))


def _member_lines(text: str, last: int) -> dict[int, int]:
    """Map the indexes of members 0 to ``last`` of the (valid) top-level
    object in ``text`` to their lines.

    Only run to explain an error, as it re-reads the text. Should the text
    surprise it, gives up quietly with fewer entries: the key is named anyway.
    """
    lines: dict[int, int] = {}
    try:
        line, counted = 1, 0
        for index, offset in enumerate(itertools.islice(_member_offsets(text), last + 1)):
            line += text.count("\n", counted, offset)
            counted = offset
            lines[index] = line
    except (ValueError, IndexError, TypeError, RecursionError):
        pass
    return lines


def _skip_ws(text: str, pos: int = 0) -> int:
    """Where the JSON whitespace starting at ``pos`` ends."""
    found = _WS.match(text, pos)
    return found.end() if found else pos


def _member_offsets(text: str) -> Iterator[int]:
    """Yield where each member name of the top-level object in ``text`` starts."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text)
    if text[pos] != "{":
        return
    pos = _skip_ws(text, pos + 1)
    while text[pos] == '"':
        yield pos
        _, pos = decoder.raw_decode(text, pos)  # the name, a JSON string
        pos = _skip_ws(text, pos) + 1  # past the ':'
        _, pos = decoder.raw_decode(text, _skip_ws(text, pos))
        pos = _skip_ws(text, pos)
        if text[pos] != ",":
            return
        pos = _skip_ws(text, pos + 1)


# --- .jsonl ----------------------------------------------------------------


def _load_jsonl(path: str) -> dict[str, str]:
    dataset: dict[str, str] = {}
    for line, canonical, value in iter_jsonl_pairs(path):
        if canonical in dataset:
            raise duplicate_error(path, line)
        dataset[canonical] = value
    return dataset


def iter_jsonl_pairs(
    path: str | os.PathLike[str], progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, str, str]]:
    """Yield (line, canonical key, value) for each record of the JSON Lines
    file at ``path``, checked exactly as :func:`load_dataset` checks them,
    except for duplicates, which the caller must detect (and report with
    :func:`duplicate_error`). Holds one record at a time.

    ``progress``, if given, is called now and then with the bytes read so far.

    Raises:
        DatasetError: as :func:`load_dataset`, with the same messages.
    """
    name = os.fsdecode(path)
    for line, key, value in _jsonl_records(name, progress):
        yield line, _checked_record(name, line, key, value), value  # type: ignore[misc]  # checked: a str


def iter_jsonl_lines(path: str | os.PathLike[str], data: bytes, first_line: int = 1) -> Iterator[tuple[int, str, str]]:
    """As :func:`iter_jsonl_pairs`, for ``data``: whole lines of the JSON
    Lines file at ``path`` (read by the caller), the first of which is line
    ``first_line`` of the file. Same checks, same messages; line numbers are
    right when ``first_line`` is."""
    name = os.fsdecode(path)
    at, end, line = 0, len(data), first_line
    while at < end:
        stop = data.find(b"\n", at)
        stop = end if stop < 0 else stop + 1
        record = _parse_jsonl_line(name, line, data[at:stop])
        if record is not None:
            yield line, _checked_record(name, line, *record), record[1]  # type: ignore[misc]  # checked: a str
        at, line = stop, line + 1


def _checked_record(path: str, line: int, key: object, value: object) -> str:
    """The canonical form of ``key``, once the record passes the loader's checks."""
    canonical = key if type(key) is str and is_canonical(key) else _normalize_or_none(key)
    if canonical is None or type(value) is not str or _SURROGATE.search(value):
        raise _member_error(path, key, value, line)
    return canonical


def duplicate_error(path: str | os.PathLike[str], line: int) -> DatasetError:
    """The error :func:`load_dataset` raises when the record at ``line`` of a
    JSON Lines file repeats an earlier record's key. Re-reads the file."""
    name = os.fsdecode(path)
    for at, key, value in _jsonl_records(name):
        if at == line:
            first_line, first_key = _jsonl_first(name, normalize_key(key))
            return _member_error(name, key, value, line, first_key, first_line)
    return _error(name, f"line {line}: duplicate key", line)  # the file changed meanwhile


def _jsonl_records(path: str, progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, object, object]]:
    """Yield (line number, key, value) for each record line of the file;
    ``progress`` gets the bytes read every 65536 lines."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise _os_error(path, exc) from None
    with f:
        try:
            # Split on b"\n" only: str.splitlines would also split at U+2028,
            # form feeds and the like, which may sit raw inside JSON strings.
            for line, raw in enumerate(f, 1):
                if progress is not None and not line & 0xFFFF:
                    progress(f.tell())
                record = _parse_jsonl_line(path, line, raw)
                if record is not None:
                    yield (line, *record)
        except OSError as exc:
            raise _os_error(path, exc) from None


def _parse_jsonl_line(path: str, line: int, raw: bytes) -> tuple[object, object] | None:
    """The (key, value) of one line, or None for a blank line."""
    text = _decode(path, raw, line)
    if line == 1 and text.startswith(_BOM):
        text = text[1:]
    record = text.strip(_JSON_WS)
    if not record:
        return None
    try:
        # raw_decode on the stripped line saves decode()'s two whitespace
        # scans, a good part of the cost per line.
        obj, end = _DECODER.raw_decode(record)
        if end != len(record):
            raise json.JSONDecodeError("Extra data", record, _skip_ws(record, end))
    except json.JSONDecodeError as exc:
        column = exc.colno + len(text) - len(text.lstrip(_JSON_WS))
        raise _error(path, f"line {line} column {column}: invalid JSON: {exc.msg}", line) from None
    except RecursionError:
        raise _error(path, f"line {line}: invalid JSON: nested too deeply", line) from None
    except ValueError as exc:
        raise _error(path, f"line {line}: invalid JSON: {exc}", line) from None

    if type(obj) is _Object and len(obj) == 2:
        (n1, v1), (n2, v2) = obj
        if n1 == "key" and n2 == "value":
            return v1, v2
        if n1 == "value" and n2 == "key":
            return v2, v1
    raise _error(path, f"line {line}: {_record_problem(obj)}", line)


def _record_problem(obj: object) -> str:
    shape = 'an object {"key": ..., "value": ...}'
    if not isinstance(obj, _Object):
        return f"expected {shape}, not {_kind(obj)}"
    names = [name for name, _ in obj]
    for name in names:
        if name not in ("key", "value"):
            return f"unexpected member {show_key(name)} (expected {shape})"
    for name in ("key", "value"):
        if names.count(name) > 1:
            return f"member {quote(name)} appears more than once"
    missing = [name for name in ("key", "value") if name not in names]
    return f"missing member {' and '.join(map(quote, missing))} (expected {shape})"


def _jsonl_first(path: str, canonical: str) -> tuple[int | None, object]:
    """Line and spelling of the first record whose key is ``canonical``."""
    for line, key, _ in _jsonl_records(path):
        if _normalize_or_none(key) == canonical:
            return line, key
    return None, None


# --- shared ----------------------------------------------------------------


def _member_error(
    path: str,
    key: object,
    value: object,
    line: int | None,
    first_key: object = None,
    first_line: int | None = None,
) -> DatasetError:
    """The error for a member whose key or value is refused (or a duplicate,
    when ``first_key`` is given)."""
    where = f"line {line}: " if line is not None else ""
    if type(key) is not str:  # in JSON's words, not msgpack's
        return _error(path, f"{where}invalid key: key must be a string, not {_kind(key)}", line)
    try:
        normalize_key(key)
    except InvalidKey as exc:
        return _error(path, f"{where}invalid key: {exc}", line)
    if type(value) is not str:
        return _error(path, f"{where}the value of key {show_key(key)} is {_kind(value)}, not a string", line)
    surrogate = _SURROGATE.search(value)
    if surrogate:
        return _error(
            path,
            f"{where}the value of key {show_key(key)} holds a lone surrogate "
            f"U+{ord(surrogate.group()):04X} at character {surrogate.start()}, which UTF-8 cannot encode",
            line,
        )
    first = f" at line {first_line}" if first_line is not None else ""
    if first_key is not None and first_key != key:
        return _error(path, f"{where}duplicate key {show_key(key)}: same UUID as {show_key(first_key)}{first}", line)
    return _error(path, f"{where}duplicate key {show_key(key)}" + (f" (first{first})" if first else ""), line)


def _normalize_or_none(key: object) -> str | None:
    try:
        return normalize_key(key)
    except InvalidKey:
        return None


def _decode(path: str, data: bytes, line: int | None = None) -> str:
    """``data`` as strict UTF-8. ``line``: the line number when ``data`` is
    one line; else lines are counted in ``data``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if line is None:
            line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = " ".join(f"0x{byte:02x}" for byte in data[exc.start : exc.end])
        raise _error(
            path, f"line {line}: not valid UTF-8: {exc.reason} (byte {bad} at byte column {column})", line
        ) from None


def _syntax_error(path: str, exc: json.JSONDecodeError) -> DatasetError:
    return _error(path, f"line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}", exc.lineno)


def _os_error(path: str, exc: OSError) -> DatasetError:
    if isinstance(exc, FileNotFoundError):
        return _error(path, "no such file")
    if isinstance(exc, IsADirectoryError):
        return _error(path, "is a directory, not a dataset file")
    if isinstance(exc, PermissionError):
        return _error(path, "cannot read: permission denied")
    return _error(path, f"cannot read: {exc.strerror or exc}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, _Object):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _show_path(path: str) -> str:
    # The message must stay on one line whatever the file is called.
    return path if path.isprintable() else repr(path)
