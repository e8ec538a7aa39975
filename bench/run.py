"""The benchmark suite: one entry point for rows (a)-(e), each measured side by side in one process.

    LHOPT_DATA_DIR=../shared/data .venv/bin/python bench/run.py [--rows abcde] [--quick]

(a) CIAO's step against ``torch.optim.AdamW(foreach=True)``, CPU, 1M and 25M parameters
    (bench/optim_bench.py --part a);
(b) the share of an inner run spent on features, per family (bench/optim_bench.py --part b);
(c) the 35-baseline grid of representative default tasks: an eager population against sequential
    runs (bench/population_bench.py, which also times a compiled population unless --no-compile);
(d) meta-training throughput on task_specs/smoke.yaml with populations off, on and compiled
    (bench/meta_bench.py);
(e) on a GPU: CIAO against fused AdamW on 100M parameters, and population member-steps per second
    (bench/gpu_bench.py; says "unmeasured" where there is no CUDA device).

Every row prints ratios of contenders run in the same process, interleaved, so that a shared
machine slows them alike; each module's docstring says exactly what it times. ``--quick`` runs
shorter versions (minutes instead of a few hours on two cores); docs/PERFORMANCE.md
holds the full table. Run from the repository root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the row modules sit beside this file

import gpu_bench  # noqa: E402
import meta_bench  # noqa: E402
import optim_bench  # noqa: E402
import population_bench  # noqa: E402

FULL = {
    "a": (optim_bench.main, ["--part", "a"]),
    "b": (optim_bench.main, ["--part", "b"]),
    # Representative default tasks of every batchable family (sample seeds; docs/PERFORMANCE.md, row (c)).
    "c": (population_bench.main, ["--spec", "task_specs/default.yaml", "--seeds", population_bench.DEFAULT_SEEDS,
                                  "--reps", "1", "--no-compile"]),
    "d": (meta_bench.main, ["--iterations", "6", "--rounds", "2"]),
    "e": (gpu_bench.main, []),
}
QUICK = {
    "a": ["--part", "a", "--sizes", "512x4", "--seconds-a", "4", "--min-rounds", "4"],
    "b": ["--part", "b", "--families", "transformer", "--max-inner", "100", "--reps", "2", "--seconds-b", "1"],
    "c": ["--spec", "task_specs/smoke.yaml", "--families", "nqm,mlp", "--reps", "1"],
    "d": ["--iterations", "2", "--rounds", "1"],
    "e": ["--members", "35,140", "--seconds", "1"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="abcde", help="which rows to run, e.g. 'cd' (default: all)")
    ap.add_argument("--quick", action="store_true", help="short versions of every row (for a smoke check)")
    args = ap.parse_args(argv)
    unknown = set(args.rows) - set(FULL)
    if unknown:
        ap.error(f"unknown rows {''.join(sorted(unknown))}; rows are {''.join(FULL)}")
    for row in args.rows:
        fn, row_args = FULL[row]
        if args.quick:
            row_args = QUICK[row]
        print(f"\n===== row ({row}): {' '.join(row_args)} =====", flush=True)
        t0 = time.perf_counter()
        fn(row_args)
        print(f"===== row ({row}) took {time.perf_counter() - t0:.0f} s =====", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
