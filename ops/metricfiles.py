"""Housekeeping of prometheus_client's multiprocess folder, done by the
exporter before each reading: the documented limits of multiprocess mode,
handled.

- A process that is gone keeps its files. Its live gauges must be removed
  (``mark_process_dead``), or a stopped or restarted worker stays listed as a
  ghost: :func:`sweep` does it for every PID that no longer exists, so a
  ghost lasts until the next scrape at most.
- Its counters and histograms must stay, or totals would go down; but one
  file pair per process that ever ran makes every scrape slower as workers
  restart. :func:`sweep` adds the dead processes' counts into one archive
  file per type and removes theirs, in an order that survives the exporter
  being killed at any point (see :func:`_merge`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

#: Files of the types merged when their process is gone.
MERGED_TYPES = ("counter", "histogram")
ARCHIVE = "archive"  # counter_archive.db: not a PID, never swept


def _pid(name: str) -> tuple[str, int] | None:
    """(type, pid) of a per-process file name (``counter_123.db``,
    ``gauge_livemostrecent_123.db``); None for any other file."""
    if not name.endswith(".db"):
        return None
    parts = name[:-3].split("_")
    if len(parts) < 2 or not parts[-1].isdigit():
        return None
    return parts[0], int(parts[-1])


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(path: str | Path) -> list[int]:
    """Retire every process of ``path`` that is gone: its live gauges
    removed, its counts merged into the archives; the PIDs retired.

    Raises:
        OSError: the folder cannot be read or written.
    """
    from prometheus_client import multiprocess

    folder = Path(path)
    recover(folder)
    dead: dict[str, list[Path]] = defaultdict(list)
    pids: set[int] = set()
    for entry in os.scandir(folder):
        parsed = _pid(entry.name)
        if parsed is None:
            continue
        typ, pid = parsed
        if pid == os.getpid() or alive(pid):
            continue
        pids.add(pid)
        if typ in MERGED_TYPES:
            dead[typ].append(Path(entry.path))
    for pid in sorted(pids):
        multiprocess.mark_process_dead(pid, str(folder))
    for typ, files in dead.items():
        _merge(folder, typ, sorted(files))
    return sorted(pids)


def _names(folder: Path, typ: str) -> tuple[Path, Path, Path]:
    return (folder / f"{typ}_{ARCHIVE}.db", folder / f"{typ}_{ARCHIVE}.db.new", folder / f"{typ}_{ARCHIVE}.journal")


def _merge(folder: Path, typ: str, files: list[Path]) -> None:
    """Add ``files`` into the ``typ`` archive, then remove them.

    Order: (1) the new archive is written beside the old one (``.new``, which
    readers do not glob); (2) a journal names the files it includes; (3) the
    new archive replaces the old (an atomic rename); (4) the files go; (5) the
    journal goes. Killed before (3), ``.new`` still exists and the merge never
    happened; killed after, ``.new`` is gone and the journal says which files
    the archive already counts. :func:`recover` finishes either way.
    """
    from prometheus_client.mmap_dict import MmapedDict

    archive, new, journal = _names(folder, typ)
    totals: dict[str, float] = defaultdict(float)
    for source in ([archive] if archive.exists() else []) + files:
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(source)):
            totals[key] += value
    new.unlink(missing_ok=True)
    merged = MmapedDict(str(new))
    try:
        for key, value in totals.items():
            merged.write_value(key, value, 0.0)
    finally:
        merged.close()
    journal.write_text(json.dumps([f.name for f in files]), encoding="utf-8")
    os.replace(new, archive)
    for f in files:
        f.unlink(missing_ok=True)
    journal.unlink()


def recover(folder: Path) -> None:
    """Finish or undo a merge the exporter was killed in (see :func:`_merge`)."""
    for typ in MERGED_TYPES:
        _, new, journal = _names(folder, typ)
        if new.exists():  # the archive was never replaced: the merge did not happen
            new.unlink()
            journal.unlink(missing_ok=True)
        elif journal.exists():  # replaced: the files it lists are counted in it
            try:
                names = json.loads(journal.read_text(encoding="utf-8"))
            except ValueError:
                names = []
            for name in names:
                if isinstance(name, str) and "/" not in name:
                    (folder / name).unlink(missing_ok=True)
            journal.unlink()


def clear(path: str | Path) -> None:
    """Empty the folder (made if missing): rokv-pool does it when supervisord
    starts the pool, so that totals start at 0 with the processes.

    Raises:
        OSError: the folder cannot be made or a file removed.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(folder):
        if entry.is_file() and (entry.name.endswith(".db") or ".db." in entry.name or entry.name.endswith(".journal")):
            os.unlink(entry.path)
