"""Writing a benchmark's own section of BENCHMARKS.md: one place for every
script, so that each replaces exactly its block and keeps every other byte."""

from __future__ import annotations

import os
from pathlib import Path


def write_block(path: Path, begin: str, end: str, block: str, *, title: str = "# rokv benchmarks\n") -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in
    place of the first ``begin`` ... ``end`` block of ``path``, or append it
    when there is none (creating the file with ``title``). Written
    atomically: a reader sees the old file or the new one."""
    text = path.read_text(encoding="utf-8") if path.exists() else title
    start = text.find(begin)
    stop = text.find(end, start) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        text = text[:start] + block.rstrip("\n") + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
