"""rokv client library: look UUIDv4 keys up in a rokv service.

>>> from rokv import Client
>>> with Client("tcp://127.0.0.1:5555") as kv:
...     kv.get("8a35eb59-62b3-481c-8875-1f248df4c952")

Needs only pyzmq and msgpack.
"""

from rokv.aio import AsyncClient
from rokv.core import RetryPolicy
from rokv.errors import DamagedValue, InvalidKey, KeyNotFound, ProtocolError, RokvError, ServiceUnavailable
from rokv.security import CurvePeer
from rokv.sync import Client

__all__ = [
    "Client",
    "AsyncClient",
    "RetryPolicy",
    "CurvePeer",
    "RokvError",
    "KeyNotFound",
    "InvalidKey",
    "ServiceUnavailable",
    "ProtocolError",
    "DamagedValue",
]
