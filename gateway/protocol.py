"""uvicorn's httptools protocol, with one send per response instead of two.

uvicorn writes a response's status line and headers, then its body, as two
``transport.write`` calls, and uvloop sends each at once: two system calls
(and two TCP segments) per response. Profiled under wrk, those writes were
half of rokv-http's CPU. Here the transport of each connection gathers the
writes of one event-loop turn and sends them together at the end of it: the
same bytes in the same order, one call. BENCHMARKS.md ("HTTP") has the gain.

Only ``connection_made`` is overridden: everything else is uvicorn's own
code, talking to the wrapped transport through the asyncio Transport API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CorkedHttpToolsProtocol"]


class _CorkedTransport:
    """A transport whose writes within one event-loop turn leave as one."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()  # what was written before close() still goes out, as with a plain transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol over a :class:`_CorkedTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own stub
        super().connection_made(_CorkedTransport(transport, self.loop))  # type: ignore[arg-type]  # a Transport in all but name
