"""The dataset loader: what it accepts, what it keeps, and how it refuses the rest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rokv.dataset import DatasetError, load_dataset
from rokv.worker.load import open_dataset

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "example.json"

K1 = "8a35eb59-62b3-481c-8875-1f248df4c952"
K2 = "0b7e1f3a-9c4d-4e2f-a1b2-c3d4e5f60718"
K3 = "f0e1d2c3-b4a5-4968-b7a6-958473625140"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def refused(path: Path | str, *fragments: str) -> DatasetError:
    """Assert loading ``path`` fails with a one-line message that starts with
    the path and holds every fragment."""
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# --- accepted ----------------------------------------------------------------


def test_json_object(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", json.dumps({K1: "one", K2: "two"}))
    assert load_dataset(path) == {K1: "one", K2: "two"}


def test_jsonl_records_in_either_member_order_and_blank_lines_skipped(tmp_path: Path) -> None:
    text = (
        f'{{"key": "{K1}", "value": "one"}}\n'
        "\n"
        "   \t \n"
        f'{{"value": "two", "key": "{K2}"}}\r\n'
        f'  {{"key": "{K3}", "value": "three"}}  '  # no final newline
    )
    path = write(tmp_path, "d.jsonl", text)
    assert load_dataset(path) == {K1: "one", K2: "two", K3: "three"}


def test_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", json.dumps({K1: "v"}))
    assert load_dataset(str(path)) == load_dataset(path) == {K1: "v"}


def test_suffix_letter_case_does_not_matter(tmp_path: Path) -> None:
    assert load_dataset(write(tmp_path, "d.JSON", json.dumps({K1: "v"}))) == {K1: "v"}
    assert load_dataset(write(tmp_path, "d.JsonL", jsonl({"key": K1, "value": "v"}))) == {K1: "v"}


SPELLINGS = [
    K1.upper(),
    K1.replace("-", ""),
    K1.replace("-", "").upper(),
    "{" + K1 + "}",
    "{" + K1.upper() + "}",
    "urn:uuid:" + K1,
    "URN:UUID:" + K1.upper(),
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_other_key_spellings_are_stored_canonical(tmp_path: Path, spelling: str) -> None:
    as_json = write(tmp_path, "d.json", json.dumps({spelling: "v", K2: "w"}))
    as_jsonl = write(tmp_path, "d.jsonl", jsonl({"key": spelling, "value": "v"}, {"key": K2, "value": "w"}))
    assert load_dataset(as_json) == load_dataset(as_jsonl) == {K1: "v", K2: "w"}


VALUES = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "line one\nline two\r\nline three",
    "line\u2028separator\u2029paragraph",
    "nul \x00 inside",
    "\t\x1f control characters",
    "unicode: \u00e9 e\u0301 \u65e5\u672c\u8a9e \U0001f600 \ufeff",
    "\ufb01 ligature, \u212b angstrom sign (not normalised)",
    'quotes " and backslashes \\',
    "x" * 65536,
    "\U0010ffff" * 16384,
]


@pytest.mark.parametrize("ascii_only", [False, True], ids=["raw", "escaped"])
def test_values_kept_exactly(tmp_path: Path, ascii_only: bool) -> None:
    keys = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(len(VALUES))]
    expected = dict(zip(keys, VALUES))
    as_json = write(tmp_path, "d.json", json.dumps(expected, ensure_ascii=ascii_only))
    jsonl_text = "".join(
        json.dumps({"key": k, "value": v}, ensure_ascii=ascii_only) + "\n" for k, v in expected.items()
    )
    assert ascii_only or "\u2028" in jsonl_text  # raw U+2028 must not end a JSON Lines record
    as_jsonl = write(tmp_path, "d.jsonl", jsonl_text)
    for path in (as_json, as_jsonl):
        loaded = load_dataset(path)
        assert loaded == expected
        assert all(loaded[k] == v and len(loaded[k]) == len(v) for k, v in expected.items())


def test_surrogate_pair_escape_is_one_character(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", '{"%s": "smile \\ud83d\\ude00 \\uD83D\\uDE00"}' % K1)
    assert load_dataset(path) == {K1: "smile \U0001f600 \U0001f600"}


@pytest.mark.parametrize(
    "name, content", [("d.json", "{}"), ("d.json", " \n{ \n}\n "), ("d.jsonl", ""), ("d.jsonl", "\n \n\t\n")]
)
def test_empty_dataset_is_refused_unless_allowed(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path, name, content)
    error = refused(path, "holds no keys", "--allow-empty", "ROKV_ALLOW_EMPTY=1")
    assert error.path == str(path)
    assert load_dataset(path, allow_empty=True) == {}
    with pytest.raises(DatasetError, match="holds no keys"):
        open_dataset(path)
    assert open_dataset(path, allow_empty=True) == {}


def test_leading_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    assert load_dataset(write(tmp_path, "d.json", bom + json.dumps({K1: "v"}).encode())) == {K1: "v"}
    assert load_dataset(write(tmp_path, "d.jsonl", bom + jsonl({"key": K1, "value": "v"}).encode())) == {K1: "v"}


def test_committed_example_dataset() -> None:
    data = load_dataset(EXAMPLE)
    assert len(data) == 10_000
    word = re.compile(r"[a-z]{2,9}( [a-z]{2,9}){1,4}")
    assert all(word.fullmatch(value) for value in data.values())


# --- refused: the file itself ------------------------------------------------


@pytest.mark.parametrize("name", ["d.txt", "d.json.gz", "d.yaml", "d", "d.json.bak"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, json.dumps({K1: "v"}))
    refused(path, "unsupported dataset format", "use .json or .jsonl")
    # What a worker opens may also be compiled: its message names all three.
    with pytest.raises(DatasetError) as info:
        open_dataset(path)
    assert str(info.value).startswith(f"{path}: unsupported dataset format ")
    assert str(info.value).endswith(": use .rokv, .json or .jsonl")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "absent.json", "no such file")
    refused(tmp_path / "absent.jsonl", "no such file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    (tmp_path / "d.jsonl").mkdir()
    refused(tmp_path / "d.json", "directory")
    refused(tmp_path / "d.jsonl", "directory")


def test_invalid_utf8_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", b'{\n"%s": "ok",\n"%s": "caf\xe9"\n}' % (K1.encode(), K2.encode()))
    error = refused(path, "line 3", "UTF-8", "0xe9")
    assert error.line == 3


def test_invalid_utf8_jsonl_names_the_line(tmp_path: Path) -> None:
    content = jsonl({"key": K1, "value": "ok"}).encode() + b'{"key": "%s", "value": "\xff"}\n' % K2.encode()
    refused(write(tmp_path, "d.jsonl", content), "line 2", "UTF-8")


def test_encoded_surrogate_is_not_utf8(tmp_path: Path) -> None:
    # CESU-8 style U+D800: Python's codec refuses it, as UTF-8 requires.
    refused(write(tmp_path, "d.json", b'{"%s": "\xed\xa0\x80"}' % K1.encode()), "line 1", "UTF-8")


def test_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", f'{{\n"{K1}": "one",\n"{K2}": "two"\n"{K3}": "three"\n}}\n')
    error = refused(path, "line 4 column 1", "invalid JSON", "Expecting ',' delimiter")
    assert error.line == 4


def test_jsonl_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    content = jsonl({"key": K1, "value": "one"}) + "\n" + f'  {{"key": "{K2}" "value": "two"}}\n'
    refused(write(tmp_path, "d.jsonl", content), "line 3 column 50", "invalid JSON")


def test_jsonl_two_records_on_one_line(tmp_path: Path) -> None:
    record = json.dumps({"key": K1, "value": "one"})
    refused(write(tmp_path, "d.jsonl", f"{record} {record}\n"), "line 1", "Extra data")


def test_json_trailing_data(tmp_path: Path) -> None:
    refused(write(tmp_path, "d.json", json.dumps({K1: "v"}) + "\n{}\n"), "line 2 column 1", "Extra data")


def test_empty_json_file_is_a_syntax_error(tmp_path: Path) -> None:
    refused(write(tmp_path, "d.json", ""), "invalid JSON", "empty")
    refused(write(tmp_path, "d.json", "\n  \n"), "invalid JSON", "line 3")


@pytest.mark.parametrize(
    "content, kind",
    [("[]", "an array"), ('"text"', "a string"), ("42", "a number"), ("null", "null"), ("true", "a boolean")],
)
def test_json_top_level_must_be_an_object(tmp_path: Path, content: str, kind: str) -> None:
    refused(write(tmp_path, "d.json", content), "top-level", kind, "not an object")


def test_deep_nesting_is_refused_cleanly(tmp_path: Path) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    refused(write(tmp_path, "d.json", f'{{"{K1}": {deep}}}'), "invalid JSON")
    refused(write(tmp_path, "d.jsonl", f'{{"key": "{K1}", "value": {deep}}}\n'), "line 1", "invalid JSON")


def test_huge_number_is_refused_cleanly(tmp_path: Path) -> None:
    refused(write(tmp_path, "d.json", f'{{"{K1}": {"9" * 10_000}}}'), "invalid JSON")


# --- refused: keys -----------------------------------------------------------

BAD_KEYS = [
    ("not-a-uuid", "is not a UUID"),
    ("", "is not a UUID"),
    (K1.replace("-481c-", "-181c-"), "version 1"),
    (K1.replace("-8875-", "-c875-"), "RFC 4122 variant"),
    (" " + K1, "is not a UUID"),
    (K1 + "\n", "is not a UUID"),
    ("\uff18" + K1[1:], "is not a UUID"),  # fullwidth digit
]


@pytest.mark.parametrize("key, reason", BAD_KEYS)
def test_invalid_key_json(tmp_path: Path, key: str, reason: str) -> None:
    path = write(tmp_path, "d.json", "{\n" + f'"{K1}": "ok",\n' + json.dumps(key) + ': "v"\n}\n')
    error = refused(path, "invalid key", reason, "line 3")
    assert error.line == 3


@pytest.mark.parametrize("key, reason", BAD_KEYS)
def test_invalid_key_jsonl(tmp_path: Path, key: str, reason: str) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"key": K1, "value": "ok"}, {"key": key, "value": "v"}))
    refused(path, "line 2", "invalid key", reason)


def test_invalid_key_names_the_key(tmp_path: Path) -> None:
    refused(write(tmp_path, "d.json", json.dumps({"banana": "v"})), '"banana"')


@pytest.mark.parametrize("key, kind", [(5, "a number"), (None, "null"), ([K1], "an array"), (True, "a boolean")])
def test_jsonl_key_must_be_a_string(tmp_path: Path, key: object, kind: str) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"key": key, "value": "v"}))
    refused(path, "line 1", "invalid key", "must be a string", kind)


def test_duplicate_key_json(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", f'{{\n"{K1}": "one",\n"{K2}": "two",\n"{K1}": "again"\n}}\n')
    error = refused(path, "duplicate key", json.dumps(K1), "line 4", "line 2")
    assert error.line == 4


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_duplicate_key_in_another_spelling_json(tmp_path: Path, spelling: str) -> None:
    path = write(tmp_path, "d.json", "{\n" + f'"{K1}": "one",\n' + json.dumps(spelling) + ': "two"\n}')
    refused(path, "duplicate key", json.dumps(spelling), json.dumps(K1), "line 3", "line 2")


def test_duplicate_key_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonl",
        jsonl({"key": K1, "value": "one"}) + "\n" + jsonl({"key": K2, "value": "two"}, {"key": K1, "value": "x"}),
    )
    error = refused(path, "duplicate key", json.dumps(K1), "line 4", "line 1")
    assert error.line == 4


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_duplicate_key_in_another_spelling_jsonl(tmp_path: Path, spelling: str) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"key": spelling, "value": "one"}, {"key": K1, "value": "two"}))
    refused(path, "line 2", "duplicate key", json.dumps(K1), json.dumps(spelling), "line 1")


def test_duplicate_with_the_same_value_is_still_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", f'{{"{K1}": "same", "{K1}": "same"}}')
    refused(path, "duplicate key", json.dumps(K1))


def test_nested_objects_do_not_confuse_the_duplicate_check(tmp_path: Path) -> None:
    # An inner object repeating names, or naming top-level keys, is not a
    # duplicate of the dataset: it is refused as a value that is no string.
    inner = f'{{"{K1}": "x", "{K1}": "y", "{K2}": {{"{K2}": 1, "{K2}": 2}}}}'
    path = write(tmp_path, "d.json", f'{{\n"{K1}": "one",\n"{K2}": {inner}\n}}')
    error = refused(path, json.dumps(K2), "is an object, not a string", "line 3")
    assert "duplicate" not in str(error)
    path = write(tmp_path, "d.jsonl", jsonl({"key": K1, "value": {K1: "a", "key": K2}}))
    error = refused(path, "line 1", json.dumps(K1), "is an object")
    assert "duplicate" not in str(error)


# --- refused: values and records ---------------------------------------------

NOT_STRINGS = [
    ("42", "a number"),
    ("-1.5e3", "a number"),
    ("NaN", "a number"),
    ("Infinity", "a number"),
    ("null", "null"),
    ("true", "a boolean"),
    ("false", "a boolean"),
    ('["a"]', "an array"),
    ("[]", "an array"),
    ('{"a": "b"}', "an object"),
    ("{}", "an object"),
]


@pytest.mark.parametrize("value, kind", NOT_STRINGS)
def test_value_must_be_a_string_json(tmp_path: Path, value: str, kind: str) -> None:
    path = write(tmp_path, "d.json", f'{{\n"{K1}": "ok",\n"{K2}": {value}\n}}')
    refused(path, json.dumps(K2), kind, "not a string", "line 3")


@pytest.mark.parametrize("value, kind", NOT_STRINGS)
def test_value_must_be_a_string_jsonl(tmp_path: Path, value: str, kind: str) -> None:
    content = jsonl({"key": K1, "value": "ok"}) + f'{{"key": "{K2}", "value": {value}}}\n'
    path = write(tmp_path, "d.jsonl", content)
    refused(path, "line 2", json.dumps(K2), kind, "not a string")


LONE_SURROGATES = [
    ("\\ud800", "U+D800"),
    ("\\uDFFF", "U+DFFF"),
    ("ok \\ud83d then text", "U+D83D"),
    ("\\ude00\\ud83d", "U+DE00"),  # a pair in the wrong order
    ("\\ud83d\\ud83d\\ude00", "U+D83D"),  # a pair preceded by a lone high half
]


@pytest.mark.parametrize("escaped, code", LONE_SURROGATES)
def test_lone_surrogate_in_value_json(tmp_path: Path, escaped: str, code: str) -> None:
    path = write(tmp_path, "d.json", f'{{\n"{K1}": "ok \\ud83d\\ude00",\n"{K2}": "{escaped}"\n}}')
    refused(path, json.dumps(K2), "lone surrogate", code, "line 3")


@pytest.mark.parametrize("escaped, code", LONE_SURROGATES)
def test_lone_surrogate_in_value_jsonl(tmp_path: Path, escaped: str, code: str) -> None:
    content = f'{{"key": "{K1}", "value": "ok"}}\n{{"key": "{K2}", "value": "{escaped}"}}\n'
    path = write(tmp_path, "d.jsonl", content)
    refused(path, "line 2", json.dumps(K2), "lone surrogate", code)


def test_lone_surrogate_in_key_is_an_invalid_key(tmp_path: Path) -> None:
    refused(write(tmp_path, "d.json", '{"\\ud800": "v"}'), "invalid key", "\\ud800")


@pytest.mark.parametrize(
    "record, fragments",
    [
        ({"key": K1, "value": "v", "extra": 1}, ['unexpected member "extra"']),
        ({"key": K1, "value": "v", "Key": K2}, ['unexpected member "Key"']),
        ({"key": K1}, ['missing member "value"']),
        ({"value": "v"}, ['missing member "key"']),
        ({}, ['missing member "key" and "value"']),
        ({"k": K1, "v": "x"}, ['unexpected member "k"']),
        ([K1, "v"], ["expected an object", "an array"]),
        (K1, ["expected an object", "a string"]),
        (None, ["expected an object", "null"]),
    ],
)
def test_jsonl_record_shape(tmp_path: Path, record: object, fragments: list[str]) -> None:
    path = write(tmp_path, "d.jsonl", jsonl({"key": K2, "value": "ok"}) + json.dumps(record) + "\n")
    refused(path, "line 2", *fragments)


def test_jsonl_repeated_member(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", f'{{"key": "{K1}", "value": "a", "value": "b"}}\n')
    refused(path, "line 1", '"value" appears more than once')


def test_error_carries_path_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", "\n\n[1]\n")
    error = refused(path, "line 3")
    assert (error.path, error.line) == (str(path), 3)


@pytest.mark.parametrize("name", ["d.json", "d.jsonl"])
@pytest.mark.parametrize(
    "exc, fragment",
    [
        (PermissionError(13, "Permission denied"), "permission denied"),
        (OSError(5, "Input/output error"), "Input/output error"),
    ],
)
def test_read_errors_become_dataset_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, exc: OSError, fragment: str
) -> None:
    # The same paths as a real unreadable file or failing disk, even as root.
    path = write(tmp_path, name, "{}")

    def failing_open(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr("rokv.dataset.open", failing_open, raising=False)
    refused(path, "cannot read", fragment)
