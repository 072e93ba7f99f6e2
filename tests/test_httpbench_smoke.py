"""benchmarks/httpbench.py end to end in seconds: wrk drives the seed's
FastAPI app and rokv-http, every response is checked, and only the HTTP
section of the markdown changes. Correctness only: no timing is asserted."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.procs import REPO, child_env, scaled

pytestmark = pytest.mark.slow


def test_the_smoke_run_checks_every_answer_and_fills_only_its_section(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    if importlib.util.find_spec("fastapi") is None:
        pytest.skip("the seed's FastAPI app needs the bench extra: pip install -e '.[bench]'")
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nKept.\n\n<!-- http:begin -->\nstale\n<!-- http:end -->\n\nTrailer kept.\n")
    result = subprocess.run(
        [sys.executable, "benchmarks/httpbench.py", "--smoke", "--systems", "seed,gateway", "--out", str(out)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nKept.\n") and text.rstrip().endswith("Trailer kept.")
    assert "stale" not in text
    rows = [line for line in text.splitlines() if line.startswith("| rokv-http")]
    assert [row.split(" | ")[1] for row in rows] == ["get", "get_values"]
    assert "bad 0" in result.stderr and "socket errors" not in result.stderr
