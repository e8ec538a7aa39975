"""(c) The 35 AdamW baselines of one task: one batched population vs 35 sequential runs.

    LHOPT_DATA_DIR=../shared/data python bench/population_bench.py [--spec task_specs/default.yaml]
        [--families mlp,cnn,rnn,transformer,nqm] [--horizon 1] [--max-inner 300] [--reps 2]
        [--no-compile] [--threads 1]

For the first task of each family in the spec (inner steps capped), times the 35 baselines
(learning rates 1e-4 ... 1e-2 x the seven schedules) run one after another with ``run_schedule``,
as one population with ``run_population`` (``torch.func.vmap`` over stacked parameters), and as
one ``torch.compile``d population, in rotating order and repeated; prints the median times, the
ratios and the largest relative difference between the population's and the sequential runs'
validation losses. The compiled population is compiled in a warm-up run first; its compile time
(once per architecture and process) is printed beside it. Goal: the population at least 2.5x
faster on two cores. Timed by this process's CPU time, which stays meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.env import SHAPES, Schedule, run_schedule
from lhopt_dsl.compile import estimate_cost
from lhopt_dsl.population import batchable, run_population

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/default.yaml")
    ap.add_argument("--families", default="mlp,cnn,rnn,transformer,nqm")
    ap.add_argument("--horizon", type=int, default=1, help="run length in units of T (default 1)")
    ap.add_argument("--max-inner", type=int, default=300)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled population")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    schedules = [Schedule(lr=lr, shape=shape) for lr in LRS for shape in SHAPES]
    print(f"(c) 35 baselines of one task: torch={torch.__version__} threads={torch.get_num_threads()} "
          f"members={len(schedules)} spec={args.spec}\n")
    print("| family | params | T | sequential s | population s | speedup | compiled s | speedup | compile s | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family in args.families.split(","):
        cfg = typical(spec, family, args.max_inner)
        if cfg is None:
            continue
        steps = args.horizon * cfg.task.inner_steps
        if not batchable(cfg):
            print(f"| {family} | {estimate_cost(cfg).params:,} | {steps} | - | not batchable (runs sequentially) | | | | | |")
            continue
        run_schedule(cfg, schedules[0], steps=2)  # warm caches (datasets) for every contender
        t0 = time.process_time()
        if args.compile:
            run_population(cfg, schedules, steps=steps, compile=True)
        compile_s = time.process_time() - t0
        contenders = {"seq": lambda: [run_schedule(cfg, s, steps=steps) for s in schedules],
                      "pop": lambda: run_population(cfg, schedules, steps=steps)}  # fmt: skip
        if args.compile:
            contenders["comp"] = lambda: run_population(cfg, schedules, steps=steps, compile=True)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        curves: dict[str, list] = {}
        names = list(contenders)
        for r in range(args.reps):
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.process_time()
                curves[name] = contenders[name]()
                times[name].append(time.process_time() - t0)
        diff = 0.0
        for other in (k for k in curves if k != "seq"):
            for p, q in zip(curves[other], curves["seq"]):
                for a, b in zip(p.valid_loss, q.valid_loss):
                    if math.isfinite(a) and math.isfinite(b):
                        diff = max(diff, abs(a - b) / max(abs(b), 1e-12))
        s, p = statistics.median(times["seq"]), statistics.median(times["pop"])
        row = f"| {family} | {estimate_cost(cfg).params:,} | {steps} | {s:.2f} | {p:.2f} | **{s / p:.2f}x** |"
        if args.compile:
            c = statistics.median(times["comp"])
            row += f" {c:.2f} | **{s / c:.2f}x** | {compile_s - c:.1f} |"
        else:
            row += " - | - | - |"
        print(row + f" {diff:.1e} |")
    print("\nGoal: 35 baselines as a population at least 2.5x faster than sequential on two CPU cores.")
    print("Relative differences come from chaotic high-learning-rate members, where any change of summation")
    print("order grows over the run; step by step the paths agree to rounding (tests/test_population.py).")


if __name__ == "__main__":
    main()
