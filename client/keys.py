"""What a valid key is, decided in one place for the client, worker and loader.

A key is a UUID of version 4 with the RFC 4122 variant, spelled with ASCII hex
digits in one of these forms, any letter case:

- ``8-4-4-4-12`` (canonical), or 32 hex digits without hyphens;
- either of those in braces: ``{...}``;
- either of those after ``urn:uuid:``.

Everything else is refused, including what ``uuid.UUID`` happens to tolerate
(non-ASCII digits, underscores, ``+``, hyphens elsewhere, unbalanced braces).
"""

from __future__ import annotations

import random
import re

from rokv.errors import InvalidKey
from rokv.protocol import describe, kind, quote

# Regex classes spelled out with ASCII ranges: \d or str.isdigit() would let
# fullwidth and other Unicode digits in.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_HYPHEN_POSITIONS = (8, 13, 18, 23)
_URN_PREFIX = "urn:uuid:"
_SHOW_MAX = 60

FORMS = "8-4-4-4-12 or 32 hex digits, optionally in braces or after urn:uuid:"


def show_key(key: object) -> str:
    """A short printable form of ``key`` for error messages: a string as JSON
    (double quotes, escapes), cut in the middle when long so that it still
    shows both its quotes; anything else in plain words ("an integer 7")."""
    if not isinstance(key, str):
        return describe(key)
    text = quote(key)
    if len(text) > _SHOW_MAX:
        head = (_SHOW_MAX - 3) * 2 // 3
        text = text[:head] + "..." + text[len(text) - (_SHOW_MAX - 3 - head) :]
    return text


def normalize_key(key: object) -> str:
    """Return ``key`` in canonical lowercase ``8-4-4-4-12`` form.

    Raises:
        InvalidKey: ``key`` is not a string, not a UUID in an accepted form,
            not version 4, or not the RFC 4122 variant; the message says which.
    """
    if type(key) is not str:
        raise InvalidKey(f"key must be a string, not {kind(key)}", key)
    if _CANONICAL.fullmatch(key):
        return key

    body = key
    if body[: len(_URN_PREFIX)].lower() == _URN_PREFIX:
        body = body[len(_URN_PREFIX) :]
    elif len(body) >= 2 and body[0] == "{" and body[-1] == "}":
        body = body[1:-1]

    if len(body) == 36 and all(body[i] == "-" for i in _HYPHEN_POSITIONS):
        digits = body[0:8] + body[9:13] + body[14:18] + body[19:23] + body[24:36]
    elif len(body) == 32:
        digits = body
    else:
        digits = ""
    if not _HEX32.fullmatch(digits):
        raise InvalidKey(f"{show_key(key)} is not a UUID (expected {FORMS})", key)

    digits = digits.lower()
    version = int(digits[12], 16)
    if version != 4:
        raise InvalidKey(f"{show_key(key)} is a version {version} UUID, not version 4", key)
    if digits[16] not in "89ab":
        raise InvalidKey(
            f"{show_key(key)} does not have the RFC 4122 variant "
            f"(17th hex digit is {digits[16]!r}; expected 8, 9, a or b)",
            key,
        )
    return f"{digits[0:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:32]}"


def is_canonical(key: str) -> bool:
    """True when ``key`` is already a valid key in canonical lowercase form."""
    return _CANONICAL.fullmatch(key) is not None


#: ``match_canonical(key)`` is truthy exactly when ``is_canonical(key)``: the
#: bound regex method itself, for per-call paths where a Python call counts.
match_canonical = _CANONICAL.fullmatch


_VERSION_BITS = 0xF << 76
_VARIANT_BITS = 0x3 << 62


def random_key(rng: random.Random) -> str:
    """A canonical UUIDv4 drawn from ``rng``: reproducible from a seed, which
    ``uuid.uuid4`` is not (load generators and tests use it)."""
    bits = rng.getrandbits(128) & ~_VERSION_BITS & ~_VARIANT_BITS | (0x4 << 76) | (0x2 << 62)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
