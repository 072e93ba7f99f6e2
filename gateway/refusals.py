"""What the gateway answers when it gives no value: one table from rokv's
exceptions to HTTP statuses, and FastAPI's ``detail`` list beside rokv's
``message`` for the requests the seed service refused before its handler ran.

The seed was a FastAPI app (benchmarks/seed_app.py rebuilds it). FastAPI
refused a body that is not a JSON object holding a ``key`` UUIDv4 with 422
``{"detail": [{"type", "loc", "msg", "input"[, "ctx"]}]}`` (pydantic v2's
error list), and a body not sent as JSON (``text/plain``, a form, or no
``Content-Type``) the same way. rokv answers those with 422 too, and with both
keys: ``{"message": "<why, in words>", "detail": [...]}``, so a client written
against the seed finds what it parsed and a person reads why. ``type``,
``loc`` and ``input`` are FastAPI's; ``msg`` is FastAPI's wording except for
``uuid_parsing``, where the reason after FastAPI's "Input should be a valid
UUID, " is rokv's own (tests/test_gateway.py compares with the seed).

Where rokv differs on purpose: it accepts every key form rokv.keys does (the
seed refused 32 hex digits in braces), and it answers 422 with a
``json_invalid`` detail to a body that is not UTF-8 or nests too deeply,
where FastAPI answered 400 ``{"detail": "There was an error parsing the body"}``.
"""

from __future__ import annotations

from typing import Any

from rokv.errors import InvalidKey, KeyNotFound, RokvError, ServiceUnavailable
from rokv.gateway.jsoncodec import dumps

__all__ = [
    "ERROR_STATUS",
    "Refusal",
    "is_json_media_type",
    "json_invalid",
    "key_error",
    "list_type",
    "missing",
    "not_an_object",
    "refusal_for",
]

Loc = tuple[str | int, ...]

#: The one exception -> HTTP status table: every error a lookup may raise, the
#: status it is answered with, and the words put before its message. The
#: first row whose class matches wins, so subclasses come before RokvError.
ERROR_STATUS: tuple[tuple[type[RokvError], int, str], ...] = (
    (KeyNotFound, 404, ""),
    (InvalidKey, 422, ""),
    (ServiceUnavailable, 503, "the pool did not answer in time: "),
    (RokvError, 502, "the pool refused the request: "),
)


class Refusal(Exception):
    """Ends a request with ``status`` and ``{"message": message}``, plus
    ``"detail": detail`` (FastAPI's error list) when one is given."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail

    def body(self) -> bytes:
        if self.detail is None:
            return dumps({"message": self.message})
        return dumps({"message": self.message, "detail": self.detail})


def refusal_for(exc: RokvError, detail: list[dict[str, Any]] | None = None) -> Refusal:
    """The answer to a lookup that raised ``exc``, from :data:`ERROR_STATUS`."""
    for cls, status, prefix in ERROR_STATUS:
        if isinstance(exc, cls):
            return Refusal(status, prefix + exc.message, detail)
    raise AssertionError("ERROR_STATUS ends with RokvError, which every rokv error is")  # pragma: no cover


def is_json_media_type(content_type: bytes) -> bool:
    """True for the media types FastAPI reads a body of as JSON:
    ``application/json`` and ``application/*+json``, any parameters."""
    if content_type == b"application/json":
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    main, _, sub = media.partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


# ---------------------------------------------------------- FastAPI's errors


def missing(loc: Loc, given: object) -> dict[str, Any]:
    """A required field (or the whole body) is absent."""
    return {"type": "missing", "loc": list(loc), "msg": "Field required", "input": given}


def not_an_object(given: object) -> dict[str, Any]:
    """The body is not a JSON object (or not JSON at all, by its content type)."""
    return {
        "type": "model_attributes_type",
        "loc": ["body"],
        "msg": "Input should be a valid dictionary or object to extract fields from",
        "input": given,
    }


def json_invalid(position: int, error: str) -> dict[str, Any]:
    """The body does not parse as JSON; ``position`` is where parsing stopped."""
    return {
        "type": "json_invalid",
        "loc": ["body", position],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": error},
    }


def list_type(loc: Loc, given: object) -> dict[str, Any]:
    """A field that must be an array is not."""
    return {"type": "list_type", "loc": list(loc), "msg": "Input should be a valid list", "input": given}


def key_error(loc: Loc, key: object, reason: str = "") -> dict[str, Any]:
    """Why ``key`` (at ``loc``) is not a UUIDv4, as pydantic's ``UUID4`` says
    it; ``reason`` is :class:`~rokv.errors.InvalidKey`'s for a string."""
    if type(key) is not str:
        return {
            "type": "uuid_type",
            "loc": list(loc),
            "msg": "UUID input should be a string, bytes or UUID object",
            "input": key,
        }
    # rokv.keys ends its reason so for a well-formed UUID of another version
    # or variant (the key itself comes first, quoted); pydantic calls both
    # "uuid_version" (Python's UUID.version is None for a variant other than
    # RFC 4122's). tests/test_gateway.py pins the pairing.
    if reason.endswith(", not version 4") or reason.endswith("expected 8, 9, a or b)"):
        return {
            "type": "uuid_version",
            "loc": list(loc),
            "msg": "UUID version 4 expected",
            "input": key,
            "ctx": {"expected_version": 4},
        }
    return {
        "type": "uuid_parsing",
        "loc": list(loc),
        "msg": f"Input should be a valid UUID, {reason}",
        "input": key,
        "ctx": {"error": reason},
    }
