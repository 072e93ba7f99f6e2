"""The compiled hot path, when there is one: loading it, or saying why not.

``rokv._native`` (client/_native.c) is built at install time when a C compiler
is there. It talks to libzmq directly, so it must use the very library pyzmq
loaded: this module finds that library's path among the process's mappings
and hands it over. Whatever goes wrong (no compiled module, no libzmq found,
``ROKV_PURE_PYTHON=1``), rokv runs its pure-Python path, which behaves the
same, and says once in the log which path is in use.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger("rokv.native")

_loaded: ModuleType | None = None
_why_not: str | None = None
_tried = False


def _libzmq_path() -> str | None:
    """The file of the libzmq that pyzmq loaded, from /proc/self/maps."""
    import zmq  # noqa: F401 - loads libzmq, whose mapping is looked for below

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "libzmq" in os.path.basename(path) and os.path.exists(path):
                    return path
    except OSError:
        return None
    return None


def load() -> ModuleType | None:
    """``rokv._native``, ready to use, or None (then :func:`reason` says
    why). Logs which path is in use, once per process."""
    global _loaded, _why_not, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("ROKV_PURE_PYTHON", "") not in ("", "0"):
        _why_not = "ROKV_PURE_PYTHON is set"
    else:
        try:
            from rokv import _native  # type: ignore[attr-defined]  # built from client/_native.c
        except ImportError as exc:
            _why_not = f"the compiled module is not installed ({exc}); install with a C compiler to build it"
        else:
            path = _libzmq_path()
            if path is None:
                _why_not = "pyzmq's libzmq could not be located"
            else:
                try:
                    _native.init(path)
                except OSError as exc:
                    _why_not = str(exc)
                else:
                    _loaded = _native
    if _loaded is not None:
        log.info("compiled hot path in use (rokv._native)")
    else:
        log.warning("pure-Python path in use, slower: %s", _why_not)
    return _loaded


def reason() -> str | None:
    """Why the compiled path is not in use, or None when it is (or was not
    asked for yet)."""
    return _why_not
