"""CurveZMQ keys for rokv: making key pairs and putting them on sockets.

Who may talk to whom is decided by the broker: it holds a secret key, and two
allow-list folders of public keys, one for clients and one for workers (see
docs/operations.md "Security"). A client or worker needs its own secret key file and the
broker's public key file. Key files are ZeroMQ certificates as written by
``zmq.auth.create_certificates``: ``NAME.key`` (public, safe to copy) and
``NAME.key_secret`` (keep private).

Environment variables (all optional; none set means no encryption):

- ``ROKV_BROKER_SECRET``: the broker's ``.key_secret``;
- ``ROKV_CLIENT_KEYS`` / ``ROKV_WORKER_KEYS``: the broker's allow-list folders;
- ``ROKV_BROKER_KEY``: the broker's public ``.key``, for clients and workers;
- ``ROKV_CLIENT_SECRET`` / ``ROKV_WORKER_SECRET``: a client's / worker's own
  ``.key_secret``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message


class KeyFileError(ValueError):
    """A key file is missing, unreadable, or lacks the part that is needed."""


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The public key in a ``.key`` or ``.key_secret`` file.

    Raises:
        KeyFileError: the file is missing or not a ZeroMQ certificate.
    """
    public, _ = _load(path)
    return public


def load_secret(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file.

    Raises:
        KeyFileError: the file is missing, not a certificate, or has no secret
            key (a ``.key`` file was given where a ``.key_secret`` is needed).
    """
    public, secret = _load(path)
    if not secret:
        raise KeyFileError(f"{path}: holds no secret key (give the .key_secret file, not the .key)")
    return public, secret


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a readable ZeroMQ key file ({exc})") from None
    if not public:
        raise KeyFileError(f"{path}: holds no public key")
    return public, secret


@dataclass(frozen=True)
class CurvePeer:
    """The keys a client or worker needs to reach a broker that uses CURVE:
    its own secret key file and the broker's public key file."""

    secret_file: str
    broker_key_file: str

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the broker. Call before connect().

        Raises:
            KeyFileError: a key file is missing or of the wrong kind.
        """
        public, secret = load_secret(self.secret_file)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = load_public(self.broker_key_file)


def peer_from_env(secret_variable: str) -> CurvePeer | None:
    """The CURVE keys named by ``$secret_variable`` and ``$ROKV_BROKER_KEY``,
    or ``None`` when neither is set.

    Raises:
        KeyFileError: only one of the two is set.
    """
    secret = os.environ.get(secret_variable)
    broker_key = os.environ.get("ROKV_BROKER_KEY")
    if not secret and not broker_key:
        return None
    if not (secret and broker_key):
        raise KeyFileError(f"{secret_variable} and ROKV_BROKER_KEY must be set together")
    return CurvePeer(secret, broker_key)


# ------------------------------------------------------------ a side without keys

#: libzmq's ZMTP protocol error codes (socket-monitor event values): the peer's
#: keys are wrong; the two sides use different security mechanisms.
CRYPTOGRAPHIC = int(getattr(zmq, "PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC", 0x11000001))
MECHANISM_MISMATCH = int(getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002))


def without_curve(event: int, value: int, who: str = "this side") -> str | None:
    """Plain words for a handshake failure seen by a connecting side
    (``who``) that has no CURVE keys, or None when the event is not a
    failure. Such a side cannot hold a wrong broker key: the mismatch is the
    thing to name."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == MECHANISM_MISMATCH:
        return f"security mismatch: the broker requires CURVE and {who} has no CURVE keys"
    if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
        return f"the broker broke off the handshake: it probably requires CURVE, and {who} has no CURVE keys"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the broker refused {who}, which has no CURVE keys (ZAP status {value})"
    return None


_PROBE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


#: Each probe's monitor endpoint is new: a closed one is released by libzmq's
#: reaper thread, later.
_probe_numbers = itertools.count()


class HandshakeProbe:
    """One connection to each broker, without CURVE, whose handshake the
    socket monitor reports: what tells a client without keys that its broker
    requires CURVE (the refused client itself only sees no reply).

    Started when a try goes unanswered, read when the call gives up (by then
    the handshake is long over), so it costs nothing while replies come. The
    probe never reconnects, so its monitor queues a few events at most, and
    nothing has to read them in the meantime.
    """

    def __init__(self, ctx: zmq.Context, endpoints: tuple[str, ...]) -> None:
        self._probes: list[tuple[str, zmq.Socket, zmq.Socket]] = []
        self._refused: dict[str, str] = {}  # endpoint -> why, as read so far
        try:
            for endpoint in endpoints:
                # Plain sockets, even from a zmq.asyncio.Context.
                sock: zmq.Socket = zmq.Socket(ctx, zmq.DEALER)
                sock.linger = 0
                sock.reconnect_ivl = -1  # one attempt: a handful of events at most
                if "[" in endpoint:
                    sock.ipv6 = True
                address = f"inproc://rokv-probe-{os.getpid()}-{next(_probe_numbers)}"
                sock.monitor(address, _PROBE_EVENTS)
                monitor: zmq.Socket = zmq.Socket(ctx, zmq.PAIR)
                monitor.linger = 0
                monitor.connect(address)
                self._probes.append((endpoint, sock, monitor))
                sock.connect(endpoint)
        except zmq.ZMQError:
            self.close()  # a diagnosis only: never an error of its own

    def hint(self) -> str:
        """``""``, or why the brokers refused a client without CURVE keys and
        how to give it some, for the end of a ServiceUnavailable message."""
        for endpoint, _, monitor in self._probes:
            while True:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except zmq.ZMQError:
                    break
                why = without_curve(int(event["event"]), int(event["value"]), "this client")
                if why is not None:
                    self._refused[endpoint] = why
        refused = [f"{endpoint}: {why}" for endpoint, why in self._refused.items()]
        if not refused:
            return ""
        return (
            f"; {'; '.join(refused)}: give it CURVE keys (curve=CurvePeer(secret_file, broker_key_file), "
            "or ROKV_CLIENT_SECRET and ROKV_BROKER_KEY)"
        )

    def close(self) -> None:
        """Close the probe's sockets. Idempotent."""
        for _, sock, monitor in self._probes:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            sock.close(linger=0)
            monitor.close(linger=0)
        self._probes = []


class KeyNameError(ValueError):
    """A key pair name that could write outside its folder or hide its files."""


def default_key_dir() -> Path:
    """Where ``rokv keygen`` writes unless told: ``$XDG_CONFIG_HOME/rokv/keys``,
    else ``~/.config/rokv/keys``. Outside any checkout on purpose, so a secret
    key cannot be committed by accident."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative value, as if it were unset.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "rokv" / "keys"


def check_key_name(name: str) -> str:
    """``name`` when it is safe as the stem of ``NAME.key`` in a folder.

    Raises:
        KeyNameError: ``name`` is empty, holds a path separator (``/`` or
            ``\\``) or ``..``, or starts with ``.`` (a hidden file: the
            broker's allow-list, which globs ``*.key``, would skip it silently).
    """
    if not name:
        raise KeyNameError("a key name must not be empty")
    if "/" in name or "\\" in name or ".." in name:
        raise KeyNameError(f"key name {name!r} must not contain '/', '\\' or '..'; use --dir to choose the folder")
    if name.startswith("."):
        raise KeyNameError(f"key name {name!r} must not start with '.'")
    if "\0" in name:
        raise KeyNameError("a key name must not contain a NUL character")
    return name


_PUBLIC_BANNER = "#   ZeroMQ CURVE Public Certificate, made by rokv keygen: safe to copy\n\n"
_SECRET_BANNER = "#   ZeroMQ CURVE **Secret** Certificate, made by rokv keygen: keep it private\n\n"


def make_key_pair(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``folder``; returns
    their paths. A folder that does not exist is created readable by its owner
    only (0700); the secret file is created with mode 0600, never briefly
    readable by others. Both are ZeroMQ certificates (``zmq.auth`` reads them).

    Raises:
        KeyNameError: ``name`` is unsafe (see :func:`check_key_name`).
        FileExistsError: a key of that name exists already (never overwritten).
        OSError: the folder or files cannot be written.
    """
    check_key_name(name)
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise FileExistsError(f"{path} exists already; choose another name or folder")
    public, secret = zmq.curve_keypair()
    # Secret first: if it cannot be made, nothing is left behind.
    _write_certificate(secret_path, 0o600, _SECRET_BANNER, public, secret)
    try:
        _write_certificate(public_path, 0o644, _PUBLIC_BANNER, public)
    except BaseException:
        secret_path.unlink()
        raise
    return public_path, secret_path


def _write_certificate(path: Path, mode: int, banner: str, public: bytes, secret: bytes | None = None) -> None:
    """Write a certificate in zmq.auth's format, created with ``mode`` (O_EXCL:
    an existing file is never replaced). Unlike zmq.auth.create_certificates,
    which writes with the umask's mode and leaves the caller to chmod after."""
    text = f'{banner}metadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text)
