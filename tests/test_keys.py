"""Which keys are valid, how they are normalised, and why the others are not."""

from __future__ import annotations

import json

import pytest

from rokv.errors import InvalidKey
from rokv.keys import normalize_key

CANON = "8a35eb59-62b3-481c-8875-1f248df4c952"
HEX = CANON.replace("-", "")

GOOD = [
    (CANON, CANON),
    (CANON.upper(), CANON),
    ("8A35eb59-62B3-481C-8875-1f248DF4C952", CANON),
    (HEX, CANON),
    (HEX.upper(), CANON),
    ("{" + CANON + "}", CANON),
    ("{" + HEX + "}", CANON),
    ("urn:uuid:" + CANON, CANON),
    ("URN:UUID:" + CANON.upper(), CANON),
    ("urn:uuid:" + HEX, CANON),
    ("00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000"),
    ("ffffffff-ffff-4fff-bfff-ffffffffffff", "ffffffff-ffff-4fff-bfff-ffffffffffff"),
    ("8a35eb59-62b3-481c-9875-1f248df4c952", "8a35eb59-62b3-481c-9875-1f248df4c952"),
    ("8a35eb59-62b3-481c-a875-1f248df4c952", "8a35eb59-62b3-481c-a875-1f248df4c952"),
]

BAD = [
    (None, "must be a string, not nil"),
    (42, "must be a string, not integer"),
    (b"8a35eb59-62b3-481c-8875-1f248df4c952", "must be a string, not binary"),
    ([CANON], "must be a string, not array"),
    ("", "is not a UUID"),
    ("hello", "is not a UUID"),
    (CANON[:-1], "is not a UUID"),
    (CANON + "0", "is not a UUID"),
    (" " + CANON, "is not a UUID"),
    (CANON + "\n", "is not a UUID"),
    ("8a35eb5-962b3-481c-8875-1f248df4c952", "is not a UUID"),  # hyphen elsewhere
    ("8a35eb59-62b3-481c-8875-1f248df4c95g", "is not a UUID"),  # not hex
    ("8a35eb59_62b3_481c_8875_1f248df4c952", "is not a UUID"),  # underscores
    ("8a35eb5962b3481c88751f248df4c95_", "is not a UUID"),
    ("+8a35eb5962b3481c88751f248df4c95", "is not a UUID"),  # a sign uuid.UUID's int() would accept
    ("８a35eb59-62b3-481c-8875-1f248df4c952", "is not a UUID"),  # fullwidth digit
    ("٨a35eb59-62b3-481c-8875-1f248df4c952", "is not a UUID"),  # Arabic-Indic digit
    ("{" + CANON, "is not a UUID"),  # unbalanced braces
    (CANON + "}", "is not a UUID"),
    ("{{" + CANON + "}}", "is not a UUID"),
    ("urn:uuid:{" + CANON + "}", "is not a UUID"),
    ("uuid:" + CANON, "is not a UUID"),
    ("8a35eb59-62b3-181c-8875-1f248df4c952", "version 1 UUID, not version 4"),
    ("8a35eb59-62b3-581c-8875-1f248df4c952", "version 5 UUID, not version 4"),
    ("8a35eb59-62b3-f81c-8875-1f248df4c952", "version 15 UUID, not version 4"),
    ("8a35eb59-62b3-481c-0875-1f248df4c952", "RFC 4122 variant"),  # NCS variant
    ("8a35eb59-62b3-481c-c875-1f248df4c952", "RFC 4122 variant"),  # Microsoft variant
    ("8a35eb59-62b3-481c-e875-1f248df4c952", "RFC 4122 variant"),
]


@pytest.mark.parametrize(("key", "canonical"), GOOD)
def test_accepted_forms_normalise_to_canonical_lowercase(key: str, canonical: str) -> None:
    assert normalize_key(key) == canonical


@pytest.mark.parametrize(("key", "reason"), BAD)
def test_invalid_keys_are_refused_with_their_reason(key: object, reason: str) -> None:
    with pytest.raises(InvalidKey) as info:
        normalize_key(key)
    assert reason in str(info.value)
    assert info.value.key is key
    assert isinstance(info.value, ValueError)


def test_a_huge_key_is_named_briefly_in_the_message() -> None:
    with pytest.raises(InvalidKey) as info:
        normalize_key("x" * 1_000_000)
    assert len(str(info.value)) < 200


def test_str_subclasses_are_not_keys() -> None:
    class Sneaky(str):
        pass

    with pytest.raises(InvalidKey, match="not Sneaky"):
        normalize_key(Sneaky(CANON))


@pytest.mark.parametrize("key", ["x" * 100, "8a35eb59-62b3-481c-8875-1f248df4c952" * 2, "'\"" * 40])
def test_a_long_key_is_cut_in_the_middle_and_keeps_its_quotes(key: str) -> None:
    with pytest.raises(InvalidKey) as info:
        normalize_key(key)
    shown = str(info.value).split(" is not a UUID")[0]
    assert len(shown) <= 60 and "..." in shown
    assert shown[0] == shown[-1] == '"'  # both quotes, JSON-style
    assert shown.startswith(json.dumps(key)[:30]) and shown.endswith(json.dumps(key)[-10:])
