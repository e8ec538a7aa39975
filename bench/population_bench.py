"""The 35 AdamW baselines of one task: one batched population vs 35 sequential runs.

    LHOPT_DATA_DIR=../shared/data python bench/population_bench.py [--spec task_specs/default.yaml]
        [--families mlp,cnn,transformer,nqm] [--horizon 1] [--max-inner 300] [--reps 2] [--threads 1]

For the first task of each family in the spec (inner steps capped), times the 35 baselines
(learning rates 1e-4 ... 1e-2 x the seven schedules) run one after another with ``run_schedule``
and as one population with ``run_population`` (``torch.func.vmap`` over stacked parameters),
alternating the two and repeating; prints the median ratio and the largest relative difference
between the two paths' validation losses. Goal: the population at least 2.5x faster on two cores.
Timed by this process's CPU time, which stays meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.env import SHAPES, Schedule, run_schedule
from lhopt_dsl.population import run_population

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def typical(spec, family: str, max_inner: int) -> TaskConfig | None:
    for seed in range(3000):
        cfg = sample(spec, seed)
        if cfg.family == family:
            t = cfg.task
            inner = min(t.inner_steps, max_inner)
            task = t.model_copy(update={"inner_steps": inner, "outer_steps": min(t.outer_steps, inner)})
            return TaskConfig.model_validate({**cfg.model_dump(), "task": task.model_dump()})
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/default.yaml")
    ap.add_argument("--families", default="mlp,cnn,transformer,nqm")
    ap.add_argument("--horizon", type=int, default=1, help="run length in units of T (default 1)")
    ap.add_argument("--max-inner", type=int, default=300)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    schedules = [Schedule(lr=lr, shape=shape) for lr in LRS for shape in SHAPES]
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} members={len(schedules)} spec={args.spec}\n")
    print("| family | params | T | sequential s | population s | speedup | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for family in args.families.split(","):
        cfg = typical(spec, family, args.max_inner)
        if cfg is None:
            continue
        steps = args.horizon * cfg.task.inner_steps
        seq_t, pop_t, diff, pop = [], [], 0.0, None
        run_schedule(cfg, schedules[0], steps=2)  # warm caches (datasets) for both contenders
        for _ in range(args.reps):
            t0 = time.process_time()
            pop = run_population(cfg, schedules, steps=steps)
            pop_t.append(time.process_time() - t0)
            if pop is None:
                break
            t0 = time.process_time()
            seq = [run_schedule(cfg, s, steps=steps) for s in schedules]
            seq_t.append(time.process_time() - t0)
            for p, q in zip(pop, seq):
                for a, b in zip(p.valid_loss, q.valid_loss):
                    if math.isfinite(a) and math.isfinite(b):
                        diff = max(diff, abs(a - b) / max(abs(b), 1e-12))
        if pop is None:
            print(f"| {family} | - | {steps} | - | - | not batchable (sequential) | - |")
            continue
        from lhopt_dsl.compile import estimate_cost

        s, p = statistics.median(seq_t), statistics.median(pop_t)
        print(f"| {family} | {estimate_cost(cfg).params:,} | {steps} | {s:.2f} | {p:.2f} | **{s / p:.2f}x** | {diff:.1e} |")
    print("\nGoal: 35 baselines as a population at least 2.5x faster than sequential on two CPU cores.")


if __name__ == "__main__":
    main()
