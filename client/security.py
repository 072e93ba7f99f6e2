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
