"""Remembering that a dataset file was refused, so that a supervised worker
fails fast on its next start instead of reparsing a large broken file forever.

Supervisor counts a start as failed only when the process exits within
``startsecs``; a worker that needs a minute to find a duplicate key on the last
line of a big file would be restarted (and reparse it) forever, never reaching
``FATAL``. So the first start that refuses a file records why, keyed by the
file's identity (path, device, inode, size, modification time) and the rules
that judged it; a restart that finds the same unchanged file refuses it at
once, which supervisor counts as a failed start: after ``startretries`` of them
the worker is ``FATAL``, with the reason in its log each time.

Replacing or editing the file changes its identity, so the next start loads it
afresh. Records live in a per-user folder under the system's temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path


def _folder() -> Path:
    return Path(tempfile.gettempdir()) / f"rokv-{os.getuid()}" / "refused"


def _identity(path: str, rules: str) -> tuple[Path, dict[str, object]] | None:
    """Where a refusal of ``path`` is recorded, and what it must match; None
    when the file cannot be examined (then there is nothing to remember)."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    ident: dict[str, object] = {
        "path": real,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "rules": rules,
    }
    name = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return _folder() / f"{name}.json", ident


def recall(path: str, rules: str) -> str | None:
    """The reason ``path`` was refused by an earlier start, if the file is
    unchanged since and was judged by the same ``rules``; else None."""
    found = _identity(path, rules)
    if found is None:
        return None
    record_path, ident = found
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("identity") != ident:
        return None
    reason = record.get("reason")
    when = record.get("at")
    if not isinstance(reason, str):
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "earlier"
    return f"{reason} (found by the start at {stamp}; the file has not changed since: fix or replace it)"


def remember(path: str, rules: str, reason: str) -> None:
    """Record that ``path`` was refused for ``reason``. Never raises: failing
    to remember only costs a slower failure next time."""
    found = _identity(path, rules)
    if found is None:
        return
    record_path, ident = found
    try:
        record_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = record_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": ident, "reason": reason, "at": time.time()}), encoding="utf-8")
        os.replace(tmp, record_path)
    except OSError:
        pass


def forget(path: str, rules: str) -> None:
    """Drop any record for ``path`` (it was loaded fine)."""
    found = _identity(path, rules)
    if found is not None:
        try:
            found[0].unlink()
        except OSError:
            pass
