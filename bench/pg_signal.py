"""How much signal is in PPO's policy gradient? Signal-to-noise across tasks, per advantage scheme.

    LHOPT_DATA_DIR=../shared/data python bench/pg_signal.py [--spec task_specs/cpu_lite.yaml]
        [--tasks 16] [--init POLICY] [--iteration 0] [--threads 1]

Collects the rollouts of ``--tasks`` training tasks once (as ``lhopt train`` does: per task its
baseline and ``rollouts_per_task`` episodes of the policy, sampling actions), then computes, for
each way of normalising advantages (``meta_train.advantage_norm``), the policy-gradient of each
task: g_t = grad of -(1/n_t) sum over the task's steps of A * log pi(a | s), at the collected
policy (PPO's first step, where the ratio is 1). Across tasks, with mean m and per-task
covariance S:

* ``signal``: an unbiased estimate of |E g|^2, |m|^2 - tr(S)/N (it can come out negative: then
  the N tasks show no common direction at all);
* ``noise``: tr(S), the spread of one task's gradient around the mean;
* ``SNR(B)``: signal / (noise / B), for a PPO batch of B tasks (B = 1 and the spec's
  ``tasks_per_iteration``): above 1 a batch's gradient points mostly where the expected gradient
  does, far below 1 it is mostly noise;
* ``cos``: the mean cosine between a task's gradient and the mean of the others'.

Intervals are leave-one-task-out jackknife intervals (a bootstrap would repeat tasks, and a repeated
task looks like agreement); the difference between the schemes is paired on the same tasks.

Changes meant to make meta-training's signal easier to follow (advantage schemes now; later the
reward's reference run, common random numbers, rollouts per task) are kept only if they raise
these numbers; the same rollouts serve every scheme, so the comparison is paired.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint
from lhopt_dsl.agent.rollout import Episode, gae, task_rollouts
from lhopt_dsl.evaluation.metrics import gradient_signal
from lhopt_dsl.spec.sample import train_seed
from runners.meta_train import _pad, normalise_advantages, policy_shape


def task_gradient(model: ActorCritic, episodes: list[Episode], normalised: dict[int, np.ndarray]) -> torch.Tensor:
    """The flattened policy gradient of one task's episodes (actor parameters only)."""
    model.zero_grad()
    x, v = _pad(episodes, "policy_obs").float(), _pad(episodes, "value_obs").float()  # (T, B, F)
    acts = _pad(episodes, "actions").long()  # (T, B, D)
    mask = _pad(episodes, lambda e: np.ones(len(e), dtype=np.float32)).float()  # (T, B)
    adv = _pad(episodes, lambda e: normalised[id(e)]).float()  # (T, B)
    logp, _entropy, _values = model.evaluate(x, v, acts)
    loss = -(adv * logp * mask).sum() / mask.sum()
    loss.backward()
    grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()]
    return torch.cat(grads).detach().double()


def _snr(grads: np.ndarray, batch: int) -> float:
    """The signal-to-noise ratio of a mean over ``batch`` of these gradient samples (NaN if they
    are all one sample, as a bootstrap draw can make them)."""
    r = gradient_signal(grads)
    return r["signal"] / (r["noise"] / batch) if r["noise"] > 0 else float("nan")


def _jackknife_se(values: np.ndarray) -> float:
    """The jackknife standard error from leave-one-out estimates."""
    n = len(values)
    return float(np.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2)))


def _snr_of(episodes: list[Episode], by_task: dict[str, list[Episode]], model: ActorCritic, how: str,
            batch: int) -> float:  # fmt: skip
    normalised = normalise_advantages(episodes, how)
    grads = torch.stack([task_gradient(model, group, normalised) for group in by_task.values()]).numpy()
    return _snr(grads, batch)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/cpu_lite.yaml")
    ap.add_argument("--tasks", type=int, default=16, help="training tasks whose rollouts are collected (default: 16)")
    ap.add_argument("--init", help="a plain policy file to measure at (default: the spec's untrained policy)")
    ap.add_argument("--iteration", type=int, default=0, help="first training iteration whose tasks are drawn")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.tasks < 3:
        ap.error("--tasks must be at least 3 (a spread needs several tasks)")
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    mt = spec.meta_train
    torch.manual_seed(0)
    model = ActorCritic.from_checkpoint(load_checkpoint(args.init)) if args.init else ActorCritic(policy_shape(spec))
    ema = copy.deepcopy(model)
    per = mt.tasks_per_iteration
    cfgs = [sample(spec, train_seed(spec.seed, args.iteration + k // per, k % per)) for k in range(args.tasks)]
    by_task: dict[str, list[Episode]] = {}
    rewards: list[float] = []
    for i, cfg in enumerate(cfgs):
        result = task_rollouts(cfg, model, ema, spec.hparams, rollouts=mt.rollouts_per_task, seed=i,
                               max_valid=mt.max_valid, population=mt.population)  # fmt: skip
        for e in result.episodes:
            e.advantages, e.returns = gae(e.rewards, e.values, 1.0, mt.gae_lambda)
            e.task_id = e.task_id or cfg.task_id
            rewards.append(e.final_reward)
        by_task[cfg.task_id] = list(result.episodes)
    episodes = [e for group in by_task.values() for e in group]
    print(f"policy-gradient signal on {len(by_task)} tasks of {args.spec} x {mt.rollouts_per_task} rollouts "
          f"({len(episodes)} episodes; mean final reward {np.mean(rewards):.3f}), policy: {args.init or 'untrained'}\n")
    print(f"| advantage_norm | signal | noise | SNR (1 task) | SNR ({per} tasks) [95% jackknife interval] | "
          "cos to the others |")
    print("|---|---:|---:|---:|---:|---:|")
    # Leave-one-task-out: a bootstrap would repeat tasks, and repeats look like agreement.
    n = len(by_task)
    leave_out = [np.array([j for j in range(n) if j != i]) for i in range(n)]
    snrs: dict[str, np.ndarray] = {}
    for how in ("batch", "task"):
        normalised = normalise_advantages(episodes, how)
        grads = torch.stack([task_gradient(model, group, normalised) for group in by_task.values()]).numpy()
        r: dict[str, Any] = gradient_signal(grads)
        snrs[how] = np.array([_snr(grads[idx], per) for idx in leave_out])
        snr = r["signal"] / (r["noise"] / per)
        half = 1.96 * _jackknife_se(snrs[how])
        print(f"| {how} | {r['signal']:.3g} | {r['noise']:.3g} | {r['signal'] / r['noise']:.3f} | "
              f"{snr:.3f} [{snr - half:.3f}, {snr + half:.3f}] | {r['cos']:.3f} |")  # fmt: skip
    diff = snrs["task"] - snrs["batch"]
    full = _snr_of(episodes, by_task, model, "task", per) - _snr_of(episodes, by_task, model, "batch", per)
    half = 1.96 * _jackknife_se(diff)
    print(f"\nSNR ({per} tasks), task - batch, paired on the same tasks: {full:+.3f} "
          f"[{full - half:+.3f}, {full + half:+.3f}] (95% jackknife interval)")


if __name__ == "__main__":
    main()
