"""Where one meta-training iteration's time goes (profiled, by category).

    LHOPT_DATA_DIR=../shared/data python bench/meta_profile.py [--spec task_specs/cpu.yaml]
        [--iteration 0] [--tasks N] [--no-population] [--threads 1] [--top 25]

Replays the rollouts of one meta-training iteration (the spec's ``tasks_per_iteration`` tasks of
``train_seed(spec.seed, iteration, j)``: per task the initial-hyperparameter run, the self-play
baseline and ``rollouts_per_task`` episodes of an untrained policy) under ``cProfile``, then
prints the CPU time per task and each category's share of the profiled time. Categories are
the cumulative time of the functions that own each kind of work, so they may overlap a little
(a validation pass inside a policy step counts once, under validation); what none of them
covers is reported as "other". The PPO update is timed separately (it is not profiled).

The shares say which lever can raise episodes per CPU-hour: a cheaper task distribution shrinks
the model's forward and backward passes, a cheaper CIAO step the optimizer's share, fewer or
smaller validation passes the evaluation share.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import time
from typing import Any

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.policy import ActorCritic
from lhopt_dsl.agent.rollout import task_rollouts
from lhopt_dsl.spec.sample import train_seed
from runners.meta_train import policy_shape, ppo_update

#: category -> functions (file suffix, function name) whose cumulative time is that category's
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "model forward + backward (training steps)": [("tasks/task.py", "train_loss"), ("tasks/population.py", "gradients"),
                                                  ("torch/_tensor.py", "backward")],
    "CIAO update and its statistics": [("optim/functional.py", "ciao_step_")],
    "validation and test passes": [("tasks/task.py", "evaluate"), ("tasks/population.py", "evaluate")],
    "building tasks (models, data)": [("tasks/compiler.py", "compile_task")],
    "policy, critic and features": [("agent/policy.py", "act"), ("agent/policy.py", "act_batch"),
                                    ("agent/policy.py", "critic_forward"), ("agent/observation.py", "policy"),
                                    ("agent/observation.py", "value"), ("agent/observation.py", "_summarise")],
}  # fmt: skip
#: the part of a category that is reported on a line of its own below it
STATISTICS = [("optim/stats.py", "stat_sums")]


def _cumulative(stats: pstats.Stats, owners: list[tuple[str, str]]) -> float:
    total = 0.0
    for (path, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if any(path.endswith(p) and name == n for p, n in owners):
            total += row[3]  # cumulative time
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/cpu.yaml")
    ap.add_argument("--iteration", type=int, default=0, help="which iteration's tasks (default: 0)")
    ap.add_argument("--tasks", type=int, help="tasks of that iteration (default: the spec's tasks_per_iteration)")
    ap.add_argument("--no-population", dest="population", action="store_false",
                    help="run every member on its own instead of as one batched model")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=0, help="also print the N functions of largest cumulative time")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    mt = spec.meta_train
    torch.manual_seed(0)
    policy = ActorCritic(policy_shape(spec))
    ema = copy.deepcopy(policy)
    n = args.tasks or mt.tasks_per_iteration
    cfgs = [sample(spec, train_seed(spec.seed, args.iteration, j)) for j in range(n)]
    print(f"one iteration of {args.spec}: {n} tasks x ({mt.rollouts_per_task} rollouts + self-play baseline + "
          f"initial run), population={args.population}, torch={torch.__version__}, threads={torch.get_num_threads()}")
    prof = cProfile.Profile()
    rows: list[tuple[str, int, int, float]] = []
    episodes: list[Any] = []
    t_all = time.process_time()
    for i, cfg in enumerate(cfgs):
        t0 = time.process_time()
        prof.enable()
        result = task_rollouts(cfg, policy, ema, spec.hparams, rollouts=mt.rollouts_per_task, seed=i,
                               max_valid=mt.max_valid, population=args.population)  # fmt: skip
        prof.disable()
        episodes += result.episodes
        rows.append((cfg.family, cfg.task.inner_steps, cfg.task.outer_steps, time.process_time() - t0))
    rollout_cpu = time.process_time() - t_all
    t0 = time.process_time()
    opt = torch.optim.Adam(policy.parameters(), lr=mt.learning_rate, eps=1e-5)
    ppo_update(policy, opt, episodes, mt, np.random.default_rng(0))
    ppo_cpu = time.process_time() - t0

    print("\n| task | family | T | decisions | CPU s (profiled) |\n|---:|---|---:|---:|---:|")
    for j, (family, steps, outer, sec) in enumerate(rows):
        print(f"| {j} | {family} | {steps} | {outer} | {sec:.1f} |")
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\nrollouts: {rollout_cpu:.1f} CPU s for {len(episodes)} episodes (profiled); PPO update: {ppo_cpu:.2f} CPU s "
          f"(not profiled); about {len(episodes) / (rollout_cpu + ppo_cpu) * 3600:,.0f} episodes per CPU-hour under the "
          "profiler\n")  # fmt: skip
    print("| category | CPU s | share |\n|---|---:|---:|")
    covered = 0.0
    for name, owners in CATEGORIES.items():
        sec = _cumulative(stats, owners)
        covered += sec
        print(f"| {name} | {sec:.1f} | {sec / total:.0%} |")
        if owners == CATEGORIES["CIAO update and its statistics"]:
            part = _cumulative(stats, STATISTICS)
            print(f"| ... of which the statistics for the features | {part:.1f} | {part / total:.0%} |")
    print(f"| other (rollout bookkeeping, rewards, copies) | {max(total - covered, 0.0):.1f} | "
          f"{max(total - covered, 0.0) / total:.0%} |")  # fmt: skip
    if args.top:
        print()
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
