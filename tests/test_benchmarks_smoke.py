"""benchmarks/run.py end to end in a few seconds: every system answers, every
rokv answer is right, and only the perf section of the markdown changes.
Correctness only: no timing is asserted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.procs import REPO, child_env, scaled

# The benchmark scripts are not installed: import them from the checkout, as
# they import each other.
sys.path.insert(0, str(REPO))
from benchmarks import redisbench

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` leaves these out of the inner loop

OTHERS = "# rokv benchmarks\n\nIntro kept.\n\n<!-- scale:begin -->\nscale figures kept\n<!-- scale:end -->\n"


def run_smoke(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out), "--cache", str(out.parent / "cache")],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )


def test_the_smoke_run_fills_only_the_perf_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(OTHERS + "\n<!-- perf:begin -->\nstale figures\n<!-- perf:end -->\n\nTrailer kept.\n")
    result = run_smoke(out)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith(OTHERS)
    assert text.rstrip().endswith("Trailer kept.")
    assert "stale figures" not in text
    assert text.count("<!-- perf:begin -->") == text.count("<!-- perf:end -->") == 1
    section = text.split("<!-- perf:begin -->")[1].split("<!-- perf:end -->")[0]
    assert "Machine: " in section and "pyzmq" in section
    for row in ("| 1 | sequential get", "| 2a |", "| 2b |", "| 3b |"):
        assert row in section
    rows = [line for line in section.splitlines() if line.startswith("| 1 |") or line.startswith("| 2a |")]
    assert all("req/s" in row for row in rows)  # rokv and the ceiling both answered
    # Both asyncio ceiling clients answered too: the cell names rokv's ratio to each.
    row_2a = next(line for line in section.splitlines() if line.startswith("| 2a |"))
    assert row_2a.count("(rokv ×") == 2
    if redisbench.available() is None:
        assert "Redis comparison skipped" not in section
        assert "redis-server" in section
    else:
        assert "Redis comparison skipped" in section


def test_a_missing_file_gets_the_markers(tmp_path: Path) -> None:
    from benchmarks.run import write_section

    out = tmp_path / "NEW.md"
    write_section(out, "<!-- perf:begin -->\nA\n<!-- perf:end -->")
    write_section(out, "<!-- perf:begin -->\nB\n<!-- perf:end -->")
    text = out.read_text()
    assert "B" in text and "\nA\n" not in text and text.count("<!-- perf:begin -->") == 1


def test_the_one_hop_comparison_runs_checks_and_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    out.write_text("# rokv benchmarks\n\nKept.\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/onehop.py",
            "--reps",
            "1",
            "--duration",
            "0.3",
            "--http-duration",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("`Client.get`, one at a time", "8 processes", "`get_many` of 100", "64 callers", "16 in flight"):
        line = next(x for x in result.stdout.splitlines() if label in x and "direct " in x)
        for path in ("direct", "broker"):
            assert int(line.split(f"{path} ")[1].split(" ")[0].replace(",", "")) > 0, line
    text = out.read_text(encoding="utf-8")
    assert "Kept." in text and "<!-- onehop:begin -->" in text and "python benchmarks/onehop.py --reps 1" in text
    # CPU per request of clients and servers, measured for every path:
    lines = text.splitlines()
    start = lines.index("| load | clients: direct / broker / Redis | servers: direct / broker / Redis |")
    rows = lines[start + 2 : start + 7]
    assert len(rows) == 5 and all(row.startswith("| ") for row in rows), rows
    for row in rows:
        for cell in [c.strip() for c in row.strip("|").split("|")][1:]:
            assert all(v == "—" or float(v) > 0 for v in cell.split(" / ")), row
            assert float(cell.split(" / ")[0]) > 0, row  # direct, always measured


# ---------------------------------------------------------------- scaleout.py

SCALEOUT_OTHERS = (
    "# rokv benchmarks\n\nIntro kept.\n\n<!-- perf:begin -->\nperf figures kept\n<!-- perf:end -->\n"
    "\n<!-- scaleout:begin -->\nstale figures\n<!-- scaleout:end -->\n\nTrailer kept.\n"
)


def _processes_naming(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_the_scaleout_smoke_run_writes_a_well_formed_table(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(SCALEOUT_OTHERS)
    # A dataset of its own: every broker, worker and client it starts names
    # tmp_path on its command line, so that none left behind goes unseen.
    data = tmp_path / "data.json"
    shutil.copy(REPO / "data" / "example.json", data)
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/scaleout.py",
            "--brokers",
            "1,2",
            "--workers",
            "1",
            "--loads",
            "get,mget100",
            "--duration",
            "0.3",
            "--repeats",
            "1",
            "--no-redis",
            "--data",
            str(data),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(180),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _processes_naming(str(tmp_path)) == []
    text = out.read_text()
    assert text.startswith(SCALEOUT_OTHERS.split("<!-- scaleout:begin -->")[0])
    assert text.rstrip().endswith("Trailer kept.")
    assert "stale figures" not in text
    assert text.count("<!-- scaleout:begin -->") == text.count("<!-- scaleout:end -->") == 1
    section = text.split("<!-- scaleout:begin -->")[1].split("<!-- scaleout:end -->")[0]
    assert "Written by `python benchmarks/scaleout.py --brokers 1,2 --workers 1" in section
    assert "Machine: " in section and "pyzmq" in section and "load average" in section
    assert "Redis comparison skipped: not asked for (--no-redis)." in section
    assert "Every request of every run got its right answer." in section
    header = next(line for line in section.splitlines() if line.startswith("| load"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| get"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == len(columns), line
            rows[cells[0], cells[1]] = dict(zip(columns, cells))
    assert set(rows) == {
        (load, config)
        for load in ("get, 64 callers, coalesced", "get_many of 100, 16 in flight")
        for config in ("1 × 1", "2 × 1")
    }
    for row in rows.values():
        assert _rate(row["req/s"]) > 0 and _rate(row["keys/s"]) > 0
        cpu = [float(x) for x in row["CPU µs per request: client / broker / worker"].split(" / ")]
        assert len(cpu) == 3 and all(x > 0 for x in cpu)  # each role's CPU was seen
        assert len(row["one core carries, req/s: client / broker / worker"].split(" / ")) == 3
    batched = rows["get_many of 100, 16 in flight", "1 × 1"]
    # Rates are shown to 2-3 significant figures ("1.7k"): up to 5% apart from rounding alone.
    assert _rate(batched["keys/s"]) == pytest.approx(100 * _rate(batched["req/s"]), rel=0.06)
    # Two brokers: both carried replies, and the ratio to one broker is shown.
    two = rows["get, 64 callers, coalesced", "2 × 1"]
    assert [int(x.rstrip("%")) > 0 for x in two["replies per broker"].split(" / ")] == [True, True]
    float(two["vs 1 broker"])
    assert "2 brokers ≥ 1.6 × 1 broker" in section
    assert "- projection, get, 64 callers, coalesced: one broker core carries" in section


def _rate(text: str) -> float:
    scale = {"k": 1e3, "M": 1e6}.get(text[-1], 1)
    return float(text.rstrip("kM")) * scale


def test_scaleout_refuses_bad_usage_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/scaleout.py", "--brokers", "0", "--no-write"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 2
    assert "--brokers" in result.stderr and "Traceback" not in result.stderr
