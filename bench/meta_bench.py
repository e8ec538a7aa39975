"""(d) Meta-training throughput with populations on and off.

    LHOPT_DATA_DIR=../shared/data python bench/meta_bench.py [--spec task_specs/smoke.yaml]
        [--iterations 6] [--rounds 2] [--no-compile] [--threads 1]

Replays what one meta-training iteration does, on the tasks meta-training would sample
(``train_seed(spec.seed, iteration, j)`` for the spec's ``tasks_per_iteration``): per task, the
initial-hyperparameter run, the self-play baseline and ``rollouts_per_task`` policy episodes
(:func:`lhopt_dsl.agent.rollout.task_rollouts`), then one PPO update on the episodes. Contenders, in
rotating order on the same tasks and the same (untrained) policy:

* ``one at a time``: every run of a task on its own (``population=False``);
* ``population``: a task's runs as one batched model (``population=True``);
* ``population + compile``: the same, ``torch.compile``d once per architecture. Its compile time
  is paid in a warm-up pass over all tasks first and reported separately, so the row shows the
  steady state of a long meta-training run, where architectures repeat.

With ``--specs A B ...`` it compares task *distributions* instead: for each spec, the tasks of
its first ``--iterations`` iterations run with populations on (the default of ``lhopt train``),
the specs in rotating order over ``--rounds``; printed are each spec's episodes per CPU-hour
(rollouts plus PPO updates) and the ratio to the first spec.

Printed: inner steps per second (all members' steps) and episodes per hour, each from this
process's CPU time (one torch thread by default), and the ratio to ``one at a time``. The PPO
update is timed once per iteration and added to every contender's time. Checkpoint writes and
MLflow logging (milliseconds per iteration) are left out. Goal: at least 3x the episodes per hour
of the one-at-a-time path on two cores (both paths use a second core the same way: a second worker
process).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.policy import ActorCritic
from lhopt_dsl.agent.rollout import task_rollouts
from lhopt_dsl.spec.sample import train_seed
from runners.meta_train import policy_shape, ppo_update

CONTENDERS = {"one at a time": dict(population=False), "population": dict(population=True),
              "population + compile": dict(population=True, compiled=True)}  # fmt: skip


def _rollouts(spec: Any, cfgs: list, policy: ActorCritic, ema: ActorCritic, **kw: Any) -> tuple[float, list, int]:
    mt = spec.meta_train
    t0 = time.process_time()
    results = [task_rollouts(cfg, policy, ema, spec.hparams, rollouts=mt.rollouts_per_task, seed=i,
                             max_valid=mt.max_valid, critic=policy, **kw) for i, cfg in enumerate(cfgs)]  # fmt: skip
    seconds = time.process_time() - t0
    episodes = [e for r in results for e in r.episodes]
    inner = sum(e.inner_steps for e in episodes) + sum(2 * r.inner_steps for r in results)
    return seconds, episodes, inner


def _ppo_seconds(spec: Any, policy: ActorCritic, episodes: list, iterations: int) -> float:
    """CPU time of the PPO updates of ``iterations`` iterations on their episodes."""
    mt = spec.meta_train
    model = copy.deepcopy(policy)
    opt = torch.optim.Adam(model.parameters(), lr=mt.learning_rate, eps=1e-5)
    per = mt.tasks_per_iteration * mt.rollouts_per_task
    t0 = time.process_time()
    for i in range(iterations):
        ppo_update(model, opt, episodes[i * per:][:per], mt, np.random.default_rng(i))
    return time.process_time() - t0


def compare_specs(paths: list[str], iterations: int, rounds: int) -> None:
    """Episodes per CPU-hour of each spec's own tasks, measured in rotating order in this process."""
    specs = [load_spec(p) for p in paths]
    torch.manual_seed(0)
    setups = []
    for spec in specs:
        mt = spec.meta_train
        policy = ActorCritic(policy_shape(spec))
        cfgs = [sample(spec, train_seed(spec.seed, i, j)) for i in range(iterations) for j in range(mt.tasks_per_iteration)]
        setups.append((spec, cfgs, policy, copy.deepcopy(policy)))
    print(f"(d') task distributions: the tasks of {iterations} iterations of each spec, populations on; "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")  # fmt: skip
    for spec, cfgs, policy, ema in setups:  # warm-up: dataset caches and batchability probes
        _rollouts(spec, cfgs[:2], policy, ema, population=True)
    times: list[list[float]] = [[] for _ in specs]
    counts = [0] * len(specs)
    ppo = [0.0] * len(specs)
    for r in range(rounds):
        for k in [(r + j) % len(specs) for j in range(len(specs))]:
            spec, cfgs, policy, ema = setups[k]
            seconds, eps, _ = _rollouts(spec, cfgs, policy, ema, population=True)
            times[k].append(seconds)
            counts[k] = len(eps)
            if r == 0:
                ppo[k] = _ppo_seconds(spec, policy, eps, iterations)
    print("\n| spec | tasks | episodes | rollouts s | + PPO s | episodes/CPU-hour | vs the first |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for k, path in enumerate(paths):
        seconds = statistics.median(times[k]) + ppo[k]
        rate = counts[k] / seconds * 3600
        base = base or rate
        print(f"| {path} | {len(setups[k][1])} | {counts[k]} | {statistics.median(times[k]):.1f} | {ppo[k]:.2f} | "
              f"{rate:,.0f} | **{rate / base:.2f}x** |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/smoke.yaml")
    ap.add_argument("--iterations", type=int, default=6, help="meta-training iterations whose tasks are replayed")
    ap.add_argument("--rounds", type=int, default=2, help="passes over those tasks per contender")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled contender")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--specs", nargs="+", metavar="SPEC",
                    help="compare these task distributions (populations on) instead of the contenders")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.specs:
        compare_specs(args.specs, args.iterations, args.rounds)
        return
    spec = load_spec(args.spec)
    mt = spec.meta_train
    torch.manual_seed(0)
    policy = ActorCritic(policy_shape(spec))
    ema = copy.deepcopy(policy)
    cfgs = [sample(spec, train_seed(spec.seed, i, j)) for i in range(args.iterations) for j in range(mt.tasks_per_iteration)]
    names = [n for n in CONTENDERS if args.compile or "compile" not in n]
    print(f"(d) meta-training throughput: {len(cfgs)} tasks of {args.spec} ({args.iterations} iterations x "
          f"{mt.tasks_per_iteration}), {mt.rollouts_per_task} rollouts + self-play baseline + initial run per task; "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")  # fmt: skip
    # Warm-up: dataset caches, batchability probes, and compilation (timed on its own).
    _rollouts(spec, cfgs[:2], policy, ema, population=False)
    compile_seconds = _rollouts(spec, cfgs, policy, ema, **CONTENDERS["population + compile"])[0] if args.compile else 0.0
    times: dict[str, list[float]] = {n: [] for n in names}
    episodes, inner = 0, 0
    ppo_seconds = 0.0
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, eps, inner = _rollouts(spec, cfgs, policy, ema, **CONTENDERS[name])
            times[name].append(seconds)
            episodes = len(eps)
            if r == 0 and name == "one at a time":
                model = copy.deepcopy(policy)
                opt = torch.optim.Adam(model.parameters(), lr=mt.learning_rate, eps=1e-5)
                t0 = time.process_time()
                for i in range(args.iterations):
                    batch = eps[i * mt.tasks_per_iteration * mt.rollouts_per_task:][: mt.tasks_per_iteration * mt.rollouts_per_task]
                    ppo_update(model, opt, batch, mt, np.random.default_rng(i))
                ppo_seconds = time.process_time() - t0
    print()
    print("| contender | rollouts s | + PPO s | inner steps/s | episodes/hour | vs one at a time |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for name in names:
        seconds = statistics.median(times[name]) + ppo_seconds
        rate = episodes / seconds * 3600
        base = base or rate
        print(f"| {name} | {statistics.median(times[name]):.2f} | {ppo_seconds:.2f} | {inner / seconds:,.0f} | "
              f"{rate:,.0f} | **{rate / base:.2f}x** |")  # fmt: skip
    if args.compile:
        print(f"\ncompiling ({len(set(c.task.model_copy(update={'inner_steps': 1, 'outer_steps': 1}) for c in cfgs))} "
              f"architectures) took {compile_seconds:.1f} s of CPU time in the warm-up pass (once per process).")  # fmt: skip
    print("Goal: at least 3x the episodes per hour of the one-at-a-time path on two CPU cores.")


if __name__ == "__main__":
    main()
