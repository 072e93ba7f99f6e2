"""A ROUTER on a free loopback port, served by a thread of its own: what the
tests' stand-ins for a broker and its workers share. A subclass sets what its
``_serve`` loop needs, then calls ``super().__init__()``, which starts it; the
loop runs until ``_stop`` is set."""

from __future__ import annotations

import threading

import zmq

from support.procs import free_port


class ServingRouter:
    def __init__(self, unbounded: bool = False) -> None:
        """``unbounded``: no high-water marks, so the ROUTER itself never
        drops what a test sends or answers."""
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.linger = 0
        if unbounded:
            self._sock.rcvhwm = self._sock.sndhwm = 0
        self._sock.bind(self.endpoint)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the loop (within its poll interval) and close the socket."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
