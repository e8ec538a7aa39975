"""(c) The 35 AdamW baselines of one task: one batched population vs 35 sequential runs.

    LHOPT_DATA_DIR=../shared/data python bench/population_bench.py [--spec task_specs/default.yaml]
        [--families mlp,cnn,rnn,transformer,nqm | --seeds 4,10,8] [--horizon 1] [--max-inner 300]
        [--evaluations-per-T 8] [--reps 2] [--no-compile] [--threads 1]

For the first task of each family in the spec (or the spec's tasks of the given sample seeds;
inner steps capped), times the 35 baselines (learning rates 1e-4 ... 1e-2 x the seven schedules)
run one after another with ``run_schedule``, as one population with ``run_population``
(``torch.func.vmap`` over stacked parameters, run by the population's plan), and as one
``torch.compile``d population, in rotating order and repeated; prints the median times, the ratios
and the largest relative difference between the population's and the sequential runs' validation
losses. Every run measures its validation and test losses as the evaluation's baseline grid does
(``--evaluations-per-T`` times per T steps, default the grid's). The compiled population is compiled
in a warm-up run first; its compile time (once per architecture and process) is printed beside it.
Each row also shows what decides the population's plan and :func:`population_pays`: the elements one
member's training step works through, the members per batched gradient call, whether evaluations
go member by member, and the rule's verdict for 35 eager members. Goal: the population at least
2.5x faster on two cores. Timed by this process's CPU time, which stays meaningful on a shared
machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.spec.schedule import SHAPES, Schedule
from lhopt_dsl.tasks import compile_task, estimate_cost
from lhopt_dsl.tasks.models import use_batchable_forms
from lhopt_dsl.tasks.population import batchable, member_step_elements, plan, population_pays, run_population
from lhopt_dsl.tasks.training import run_schedule
from runners.baselines import GRID_EVALUATIONS_PER_T

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
#: Sample seeds of representative task_specs/default.yaml tasks (docs/PERFORMANCE.md, row (c)): an
#: MLP, two RNNs, four Transformers and three CNNs, on both sides of :func:`population_pays`.
DEFAULT_SEEDS = "1,2,11,10,4,13,8,207,60"


def capped(cfg: TaskConfig, max_inner: int) -> TaskConfig:
    """``cfg`` with at most ``max_inner`` inner steps."""
    t = cfg.task
    inner = min(t.inner_steps, max_inner)
    task = t.model_copy(update={"inner_steps": inner, "outer_steps": min(t.outer_steps, inner)})
    return TaskConfig.model_validate({**cfg.model_dump(), "task": task.model_dump()})


def tasks(spec, families: list[str], seeds: list[int]) -> list[tuple[int, TaskConfig]]:
    """(sample seed, task) of the spec's tasks of ``seeds``, or else of the first task of each of ``families``."""
    if seeds:
        return [(s, sample(spec, s)) for s in seeds]
    found: dict[str, tuple[int, TaskConfig]] = {}
    for seed in range(3000):
        cfg = sample(spec, seed)
        found.setdefault(cfg.family, (seed, cfg))
        if all(f in found for f in families):
            break
    return [found[f] for f in families if f in found]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/default.yaml")
    ap.add_argument("--families", default="mlp,cnn,rnn,transformer,nqm")
    ap.add_argument("--seeds", default="", help="sample seeds of the tasks to time (instead of --families)")
    ap.add_argument("--horizon", type=int, default=1, help="run length in units of T (default 1)")
    ap.add_argument("--max-inner", type=int, default=300)
    ap.add_argument("--evaluations-per-T", type=int, default=GRID_EVALUATIONS_PER_T,
                    help="validation and test measurements per T steps (default: the baseline grid's)")  # fmt: skip
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled population")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    schedules = [Schedule(lr=lr, shape=shape) for lr in LRS for shape in SHAPES]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"(c) 35 baselines of one task: torch={torch.__version__} threads={torch.get_num_threads()} "
          f"members={len(schedules)} spec={args.spec} evaluations per T={args.evaluations_per_T}\n")  # fmt: skip
    print("| seed | family | params | MFLOP/step | step elements | groups | evaluation | pays | T | sequential s "
          "| population s | speedup | compiled s | speedup | compile s | max rel. diff |")
    print("|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed, cfg in tasks(spec, args.families.split(","), seeds):
        cfg = capped(cfg, args.max_inner)
        cost = estimate_cost(cfg)
        steps = args.horizon * cfg.task.inner_steps
        evaluations = args.horizon * min(args.evaluations_per_T, cfg.task.inner_steps)
        head = f"| {seed} | {cfg.family} | {cost.params:,} | {cost.flops_per_step / 1e6:.3g} |"
        if not batchable(cfg):
            print(f"{head} | | | | {steps} | - | not batchable (runs sequentially) | | | | | |")
            continue
        elements = member_step_elements(cfg)
        fused = use_batchable_forms(compile_task(cfg).model)  # the model has fused kernels (see plan())
        p = plan(cfg, len(schedules), "cpu", fused_kernels=fused, params=cost.params)
        evaluation = "per member" if p.evaluate_members else f"chunks of {p.eval_chunk}" if p.eval_chunk else "batched"
        pays = "yes" if population_pays(cfg, len(schedules)) else "no"
        head += f" {elements / 1e6:.2f}M | {len(p.groups)} x {p.groups[0][1]} | {evaluation} | {pays} |"
        kwargs = {"steps": steps, "evaluations": evaluations}
        run_schedule(cfg, schedules[0], steps=2, evaluations=1)  # warm caches (datasets) for every contender
        t0 = time.process_time()
        if args.compile:
            run_population(cfg, schedules, compiled=True, **kwargs)
        compile_s = time.process_time() - t0
        contenders = {"seq": lambda: [run_schedule(cfg, s, **kwargs) for s in schedules],
                      "pop": lambda: run_population(cfg, schedules, **kwargs)}  # fmt: skip
        if args.compile:
            contenders["comp"] = lambda: run_population(cfg, schedules, compiled=True, **kwargs)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        curves: dict[str, list] = {}
        names = list(contenders)
        for r in range(args.reps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.process_time()
                curves[name] = contenders[name]()
                times[name].append(time.process_time() - t0)
        diff = 0.0
        for other in (k for k in curves if k != "seq"):
            for c, ref in zip(curves[other], curves["seq"]):
                for a, b in zip(c.valid_loss, ref.valid_loss):
                    if math.isfinite(a) and math.isfinite(b):
                        diff = max(diff, abs(a - b) / max(abs(b), 1e-12))
        s, pop = statistics.median(times["seq"]), statistics.median(times["pop"])
        row = f"{head} {steps} | {s:.1f} | {pop:.1f} | **{s / pop:.2f}x** |"
        if args.compile:
            c = statistics.median(times["comp"])
            row += f" {c:.1f} | **{s / c:.2f}x** | {compile_s - c:.1f} |"
        else:
            row += " - | - | - |"
        print(row + f" {diff:.1e} |", flush=True)
    print("\nGoal: 35 baselines as a population at least 2.5x faster than sequential on two CPU cores.")
    print("Relative differences come from chaotic high-learning-rate members, where any change of summation")
    print("order grows over the run; step by step the paths agree to rounding (tests/test_population.py).")


if __name__ == "__main__":
    main()
