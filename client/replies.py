"""Turning reply maps into results or exceptions, shared by every client
transport so that they cannot drift apart.

As PROTOCOL.md says: a reply that has an ``error`` field is an error, whatever
else it holds; fields a reader does not know are ignored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rokv import protocol as p
from rokv.errors import DamagedValue, InvalidKey, KeyNotFound, ProtocolError, RokvError


def error_from_reply(reply: dict[str, Any], key: object = None) -> RokvError:
    """The exception an error reply stands for; ``key`` is the key it concerns."""
    code = reply.get(p.F_ERROR)
    message = reply.get(p.F_MESSAGE)
    if not isinstance(message, str):
        shown = p.show_text(code) if isinstance(code, str) else p.describe(code)
        message = f"server answered error {shown} without a message"
    if code == p.NOT_FOUND:
        return KeyNotFound(message, key if isinstance(key, str) else None)
    if code == p.INVALID_KEY:
        return InvalidKey(message, key)
    if code == p.DAMAGED_VALUE:
        return DamagedValue(message, key if isinstance(key, str) else None)
    return ProtocolError(message, code if isinstance(code, str) else None)


def value_from_reply(reply: dict[str, Any], key: str) -> str:
    """The value of a get reply. Raises the error the reply carries."""
    if p.F_ERROR in reply:
        raise error_from_reply(reply, key)
    value = reply.get(p.F_VALUE)
    if type(value) is str:
        return value
    raise ProtocolError(f"malformed get reply: no string value (fields: {', '.join(sorted(map(str, reply)))})")


def values_from_reply(reply: dict[str, Any], keys: Sequence[str], offset: int = 0) -> list[str | None]:
    """The values of an mget reply for ``keys``, aligned with them; ``keys``
    starts at ``offset`` of the caller's whole list.

    Raises:
        InvalidKey: naming the invalid key the worker pointed at, with its
            index in the caller's whole list.
        DamagedValue: the same for the first key whose value is damaged: the
            list fails as a whole, as for an invalid key, since no list of
            values can stand for "this one is damaged" (None means not found).
        ProtocolError: the reply does not fit the request.
    """
    if p.F_ERROR in reply:
        index = reply.get(p.F_INDEX)
        if type(index) is int and 0 <= index < len(keys):
            code = reply.get(p.F_ERROR)
            if code == p.INVALID_KEY:
                error = error_from_reply(reply, keys[index])
                raise InvalidKey(
                    p.key_at(offset + index, error.message), keys[index], index=offset + index, reason=error.message
                )
            if code == p.DAMAGED_VALUE:
                error = error_from_reply(reply)
                raise DamagedValue(p.key_at(offset + index, error.message), keys[index], index=offset + index)
        raise error_from_reply(reply)
    values = reply.get(p.F_VALUES)
    if type(values) is list and len(values) == len(keys):
        return values
    raise ProtocolError(f"malformed mget reply for {len(keys)} keys")


def partial_values(reply: dict[str, Any], count: int) -> tuple[list[str | None], set[int]] | None:
    """From a ``damaged_value`` reply to an mget of ``count`` keys: the
    values it still carries (None where missing or damaged) and the indexes
    of the damaged keys; None for any other reply, or one that does not fit.
    For a client that sent independent gets as one mget: the others get
    their answers."""
    if reply.get(p.F_ERROR) != p.DAMAGED_VALUE:
        return None
    values, damaged = reply.get(p.F_VALUES), reply.get(p.F_DAMAGED)
    if type(values) is not list or len(values) != count or type(damaged) is not list:
        return None
    if not all(type(i) is int and 0 <= i < count for i in damaged):
        return None
    if not all(v is None or type(v) is str for v in values):
        return None
    return values, set(damaged)


def worker_from_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """The worker description of a ping reply."""
    if p.F_ERROR in reply:
        raise error_from_reply(reply)
    info = reply.get(p.F_WORKER)
    if type(info) is dict:
        return info
    raise ProtocolError("malformed ping reply")


def check_key_type(key: object, index: int | None = None) -> None:
    """Refuse a non-string key before it travels: the answer is known.
    ``index`` is its position in a get_many list."""
    if not isinstance(key, str):
        reason = f"key must be a string, not {p.kind(key)}"
        raise InvalidKey(reason if index is None else p.key_at(index, reason), key, index=index, reason=reason)
