"""benchmarks/run.py end to end in a few seconds: every system answers, every
rokv answer is right, and only the perf section of the markdown changes.
Correctness only: no timing is asserted."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

from benchmarks import redisbench
from procs import REPO, child_env, scaled

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` leaves these out of the inner loop

OTHERS = "# rokv benchmarks\n\nIntro kept.\n\n<!-- scale:begin -->\nscale figures kept\n<!-- scale:end -->\n"


def run_smoke(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out), "--cache", str(out.parent / "cache")],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=scaled(120),
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


def test_the_one_hop_comparison_runs_and_prints_each_path() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/onehop.py", "--reps", "1", "--duration", "0.3"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for in_flight in (" 1 in flight", "16 in flight"):
        for path in ("one hop (direct)", "two hops (broker)"):
            line = next(l for l in result.stdout.splitlines() if l.startswith(in_flight) and path in l)
            assert int(line.split(path)[1].split("keys/s")[0].replace(",", "")) > 0
