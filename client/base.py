"""What :class:`rokv.Client` and :class:`rokv.AsyncClient` share: their
settings, how those are checked, and the brokers they talk to. Only the
transport (blocking or asyncio) differs between the two."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import zmq

from rokv import core
from rokv.brokerset import Brokers
from rokv.core import DEFAULT_BATCH_SIZE, RetryPolicy
from rokv.errors import RokvError, ServiceUnavailable
from rokv.security import CurvePeer, HandshakeProbe
from rokv.workerset import Workers


class ClientBase:
    """Settings of a rokv client.

    Args:
        endpoint: the broker, e.g. ``tcp://127.0.0.1:5555`` or ``ipc:///path``;
            or several brokers of one pool, as a list or comma-separated
            (requests spread over those that are up; a try that gets no reply
            is retried through another). Default ``$ROKV_ENDPOINT`` (one or
            comma-separated), else ``tcp://127.0.0.1:5555``.
        timeout: seconds to wait for the reply to each try (> 0).
        retries: extra tries after the first when no reply came in time
            (lookups are idempotent, so a retry is always safe).
        retry: a :class:`~rokv.core.RetryPolicy` instead of ``timeout`` and
            ``retries`` (it can also lengthen each further try); not both.
            Given none of the three, the client uses ``RetryPolicy()``: tries
            of 0.25, 0.5, 1 and 2 s, then ``ServiceUnavailable`` after 3.75 s.
        batch_size: keys per message in ``get_many`` (1 to 10,000).
        context: a ``zmq.Context`` to use; default the process-wide instance.
        curve: CurveZMQ keys (own secret, broker's public) when the brokers
            require them; default from ``$ROKV_CLIENT_SECRET`` and
            ``$ROKV_BROKER_KEY``, else none. A key the broker does not allow
            gets no connection: calls raise ``ServiceUnavailable``.
        direct: send requests straight to the workers, one hop instead of
            two: the client asks the brokers' directories for the pool's map
            (again every second), connects to every worker listed (those
            started with ``--direct-bind``) and spreads calls over them. A try
            that goes unanswered is retried at another worker, or through a
            broker; with no worker reachable, calls go through the brokers,
            and with every broker down they go on with the last map. Replies,
            errors and retries are those of the brokered path (the default).

    Raises:
        ValueError: a setting is out of range, an endpoint is malformed, or a
            key file is bad.

    Every call either returns the exact answer or raises a ``RokvError``:
    ``KeyNotFound``, ``InvalidKey``, ``ServiceUnavailable`` after
    ``1 + retries`` tries without reply, ``ProtocolError`` when the server
    refuses the request. A call waits at most about ``retry.total`` seconds.
    Construction does not contact the service; connecting is lazy and
    automatic, as is reconnecting after a broker restart.
    """

    #: Reach direct workers over plain TCP (:mod:`rokv.zmtp`) where possible:
    #: a client that reads in its caller's thread saves libzmq's I/O thread
    #: two hand-offs a round trip.
    _plain_streams = False
    #: Calls in a row sent to one worker (:class:`rokv.workerset.Workers`).
    _stick = 1

    def __init__(
        self,
        endpoint: str | Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        context: zmq.Context | None = None,
        curve: CurvePeer | None = None,
        direct: bool = False,
    ) -> None:
        self.retry = core.make_policy(retry, timeout, retries)
        self.batch_size = core.check_batch_size(batch_size)
        self.endpoints: tuple[str, ...] = tuple(core.resolve_endpoints(endpoint))
        self.endpoint = ",".join(self.endpoints)
        self._pid = os.getpid()
        self._ids = core.request_ids()
        resolved = core.resolve_curve(curve)
        self._curve = resolved is not None
        self._context = context or zmq.Context.instance()
        self._brokers: Brokers | None = Brokers(self._context, self.endpoints, resolved)
        # Without CURVE keys, a probe of the brokers' handshakes, made when a
        # try goes unanswered (see _silence), and until when it is recent.
        self._probe: HandshakeProbe | None = None
        self._probe_until = 0.0
        #: The workers, for a direct client (``direct=True``); None otherwise.
        self._workers: Workers | None = None
        self.direct = bool(direct)
        if self.direct:
            try:
                self._workers = Workers(
                    self._context, self.endpoints, resolved, streams=self._plain_streams, stick=self._stick
                )
            except BaseException:
                self._brokers.close()
                raise

    @property
    def timeout(self) -> float:
        """Seconds to wait for the reply to the first try."""
        return self.retry.timeout

    @property
    def retries(self) -> int:
        """Extra tries after the first."""
        return self.retry.retries

    def _usable(self, what: str) -> Brokers:
        """The brokers, when this client may still be used.

        Raises:
            RokvError: the client is closed, or was created in another process.
        """
        brokers = self._brokers
        if brokers is None:
            raise RokvError(f"this {what} is closed")
        if os.getpid() != self._pid:
            raise RokvError(f"this {what} was created in another process; create one after fork()")
        return brokers

    def _unavailable(self) -> ServiceUnavailable:
        """The error of a call that ran out of tries; it names a broker that
        requires CURVE when this client has no keys (see :meth:`_silence`)."""
        hint = self._probe.hint() if self._probe is not None else ""
        return self.retry.unavailable(self.endpoint, curve=self._curve, hint=hint)

    def _silence(self) -> None:
        """A try went unanswered. A client without CURVE keys cannot tell a
        broker that refuses it for want of them from one that is down (its
        own socket only sees no reply): so probe the brokers' handshakes
        once (a connection each, no reconnection), for :meth:`_unavailable`
        to report. One probe serves every call for the retry budget's time."""
        if self._curve or self._brokers is None:
            return
        now = time.monotonic()
        if self._probe is not None and now < self._probe_until:
            return
        self._close_probe()
        self._probe = HandshakeProbe(self._context, self.endpoints)
        self._probe_until = now + self.retry.total

    def _close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
