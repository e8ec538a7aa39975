"""The benchmark suite's entry point: rows are selectable and a row without its hardware says so."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_entry_point_runs_a_row_and_rejects_unknown_rows():
    run = [sys.executable, "bench/run.py"]
    out = subprocess.run(run + ["--rows", "e", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "row (e)" in out.stdout
    import torch

    if not torch.cuda.is_available():
        assert "unmeasured" in out.stdout
    bad = subprocess.run(run + ["--rows", "z"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown rows z" in bad.stderr
