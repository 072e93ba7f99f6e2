"""The exceptions rokv raises, rooted at :class:`RokvError`.

Answers about the data (``KeyNotFound``, ``InvalidKey``) are kept apart from
failures to get an answer at all (``ServiceUnavailable``) and from protocol
trouble (``ProtocolError``), so callers can retry only what is worth retrying.
"""

from __future__ import annotations


class RokvError(Exception):
    """Root of every error rokv raises.

    ``code`` is the machine-readable error code of the wire protocol (see
    PROTOCOL.md) where the error came from a server reply, else ``None``.
    """

    code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class KeyNotFound(RokvError, KeyError):
    """The key is a valid UUIDv4 but the dataset does not hold it.

    Also a ``KeyError``, so ``except KeyError`` handlers work unchanged.
    """

    code = "not_found"

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    # KeyError.__str__ would wrap the message in quotes.
    __str__ = RokvError.__str__


class InvalidKey(RokvError, ValueError):
    """The key is not a UUID version 4 (RFC 4122 variant) or not a string.

    Also a ``ValueError``. ``key`` is the offending key as given; ``index``
    its position in a ``get_many`` list (``None`` for ``get``); ``reason``
    what is wrong with it, without the position.
    """

    code = "invalid_key"

    def __init__(self, message: str, key: object = None, index: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.index = index
        self.reason = message if reason is None else reason


class ServiceUnavailable(RokvError):
    """No reply came within the timeout on any try: broker or workers are down
    or overloaded. Lookups are idempotent, so retrying later is safe."""


class ProtocolError(RokvError):
    """The server refused the request (``bad_request``,
    ``unsupported_version``, ``internal``...) or sent a reply this client cannot
    read. Retrying the same request will not help."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class DamagedValue(ProtocolError):
    """The key is in the dataset but its stored value is damaged (not valid
    UTF-8: the worker's file changed on disk after it was verified, or was
    deployed with ``--no-verify``). The worker logs and counts it; retrying
    will not help until a good copy of the dataset is deployed.

    A ``ProtocolError`` (code ``damaged_value``) for callers that treat every
    refusal alike. ``key`` is the key as given; ``index`` its position in a
    ``get_many`` list (``None`` for ``get``).
    """

    def __init__(self, message: str, key: str | None = None, index: int | None = None) -> None:
        super().__init__(message, "damaged_value")
        self.key = key
        self.index = index
