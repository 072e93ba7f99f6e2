"""CurveZMQ keys for rokv: making key pairs and putting them on sockets.

Who may talk to whom is decided by the broker: it holds a secret key, and two
allow-list folders of public keys, one for clients and one for workers (see
README "Security"). A client or worker needs its own secret key file and the
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

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth


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


def make_key_pair(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``folder`` (created if
    needed); returns their paths. The secret file is readable by its owner only.

    Raises:
        FileExistsError: a key of that name exists already (never overwritten).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists already; choose another name or folder")
    public_file, secret_file = zmq.auth.create_certificates(folder, name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)
