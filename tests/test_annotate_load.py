"""The load benchmark (bench/annotate_load.py) at test size: a real `rlhfkit annotate serve`, 5 simulated annotators
for 3 s, every acknowledged judgment in the store exactly once (the full run, 50 annotators for 60 s, is in
BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_load_benchmark_loses_and_duplicates_nothing():
    result = subprocess.run(
        [sys.executable, "bench/annotate_load.py", "--annotators", "5", "--duration", "3", "--pairs", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = dict(
        line.strip("| ").rsplit(" | ", 1)
        for line in result.stdout.splitlines()
        if line.startswith("| ") and line.count("|") == 3
    )
    assert int(table["judgments acknowledged (200)"]) > 0
    assert table["judgment rows in the store"] == table["judgments acknowledged (200)"]
    assert table["acknowledged but lost"] == table["duplicated rows"] == table["errors (non-200)"] == "0"
    assert "| fetch next |" in result.stdout and "| submit judgment |" in result.stdout
