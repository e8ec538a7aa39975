"""How much signal is in PPO's policy gradient? Signal-to-noise across tasks, per advantage scheme
and reward cap.

    LHOPT_DATA_DIR=../shared/data python bench/pg_signal.py [--spec task_specs/cpu_lite.yaml]
        [--tasks 16] [--init POLICY] [--iteration 0] [--threads 1] [--caps 100 2] [--rollouts N]
        [--init-temperature T] [--references best final]

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

With 4 or more rollouts per task, every row is also measured on the first half of each task's
rollouts (the same tasks and episodes, fewer rollouts: what more rollouts per task buy). Every
scheme is measured with each reward cap of ``--caps`` (``meta_train.reward_cap``: the speedup
over the baseline at which the reward saturates) and each reference of ``--references``
(``meta_train.reward_reference``: the baseline's best loss, or its own final loss): the episodes'
shaped rewards are recomputed from their validation curves against the same baseline curve, so
caps and references too are compared on the same rollouts. The policy acts as ``lhopt train`` would make it act (around the spec's residual base,
against the spec's reward baseline), and the gradient is that of the actions PPO scores (a residual
policy's own offsets).

Changes meant to make meta-training's signal easier to follow (advantage schemes now; later the
reward's reference run, common random numbers, rollouts per task) are kept only if they raise
these numbers; the same rollouts serve every scheme, so the comparison is paired.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from typing import Any

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint
from lhopt_dsl.agent.reward import reference_reward
from lhopt_dsl.agent.rollout import Episode, TaskResult, gae, task_rollouts
from lhopt_dsl.spec.schedule import segment_bounds
from lhopt_dsl.evaluation.metrics import gradient_signal
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.agent.policy_file import load_policy_file
from runners.meta_train import _chosen, _pad, actors, initial_policy, normalise_advantages


def task_gradient(model: ActorCritic, episodes: list[Episode], normalised: dict[int, np.ndarray]) -> torch.Tensor:
    """The flattened policy gradient of one task's episodes (actor parameters only)."""
    model.zero_grad()
    x, v = _pad(episodes, "policy_obs").float(), _pad(episodes, "value_obs").float()  # (T, B, F)
    acts = _pad(episodes, _chosen).long()  # (T, B, D): the actions PPO scores
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


def recapped(result: TaskResult, steps: list[int], cap: float, lam: float, reference: str = "best") -> list[Episode]:
    """Copies of a task's episodes with the shaped rewards a ``cap`` and a ``reference`` would have
    paid (the potential R(L_k) of each outer step's validation loss, against the same baseline
    curve), and their GAE advantages."""
    reward = reference_reward(steps, result.baseline_curve, cap, reference)
    out = []
    for e in result.episodes:
        phi = np.array([0.0] + [reward(v) for v in e.valid_curve[1 : len(e) + 1]])
        copy_ = dataclasses.replace(e, rewards=np.diff(phi), final_reward=reward(e.valid_curve[-1]))
        copy_.advantages, copy_.returns = gae(copy_.rewards, copy_.values, 1.0, lam)
        out.append(copy_)
    return out


def task_gradients(by_task: dict[str, list[Episode]], model: ActorCritic, how: str) -> np.ndarray:
    """(tasks, parameters): each task's policy gradient under the advantage scheme ``how``."""
    episodes = [e for group in by_task.values() for e in group]
    normalised = normalise_advantages(episodes, how)
    return torch.stack([task_gradient(model, group, normalised) for group in by_task.values()]).numpy()


def collect(spec: Any, model: ActorCritic, tasks: int, iteration: int) -> list[tuple[TaskResult, list[int]]]:
    """Every task's rollouts as ``lhopt train`` collects them at ``model``, with its segment bounds."""
    mt = spec.meta_train
    per = mt.tasks_per_iteration
    actor, baseline = actors(spec, model, copy.deepcopy(model))
    out = []
    for k in range(tasks):
        cfg = sample(spec, train_seed(spec.seed, iteration + k // per, k % per))
        result = task_rollouts(cfg, actor, baseline, spec.hparams, rollouts=mt.rollouts_per_task, seed=k,
                               max_valid=mt.max_valid, population=mt.population, critic=model)  # fmt: skip
        for e in result.episodes:
            e.task_id = e.task_id or cfg.task_id
        out.append((result, segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps)))
        print(f"  task {k + 1}/{tasks}: {cfg.family}, {len(result.episodes)} episodes", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/cpu_lite.yaml")
    ap.add_argument("--tasks", type=int, default=16, help="training tasks whose rollouts are collected (default: 16)")
    ap.add_argument("--init", help="a policy file to measure at, as `lhopt train --init` takes (default: untrained)")
    ap.add_argument("--iteration", type=int, default=0, help="first training iteration whose tasks are drawn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rollouts", type=int, help="policy rollouts per task (default: the spec's rollouts_per_task)")
    ap.add_argument("--caps", type=float, nargs="+", default=[100.0, 2.0], help="reward caps to compare (first: reference)")
    ap.add_argument("--references", nargs="+", default=["best"], choices=["best", "final"],
                    help="reward references to compare (meta_train.reward_reference; first: reference)")
    ap.add_argument("--init-temperature", type=float,
                    help="divide the --init policy's logits by this (meta_train.init_temperature; default: the spec's)")
    args = ap.parse_args(argv)
    if args.tasks < 3:
        ap.error("--tasks must be at least 3 (a spread needs several tasks)")
    if any(not c > 1 for c in args.caps):
        ap.error("--caps are speedup factors above 1")
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    if args.rollouts is not None:
        if args.rollouts < 2:
            ap.error("--rollouts must be at least 2 (advantages compare a task's rollouts)")
        spec = spec.model_copy(update={"meta_train": spec.meta_train.model_copy(update={"rollouts_per_task": args.rollouts})})
    if args.init_temperature is not None:  # validated by the spec's own bounds
        mt = spec.meta_train
        try:
            mt = type(mt).model_validate({**mt.model_dump(), "init_temperature": args.init_temperature})
        except ValueError as e:
            ap.error(f"--init-temperature: {e}")
        spec = spec.model_copy(update={"meta_train": mt})
    per = spec.meta_train.tasks_per_iteration
    torch.manual_seed(0)
    model = initial_policy(spec, load_policy_file(args.init) if args.init else None, args.init or "")
    collected = collect(spec, model, args.tasks, args.iteration)
    rollouts = spec.meta_train.rollouts_per_task
    print(f"\npolicy-gradient signal on {args.tasks} tasks of {args.spec} x {rollouts} rollouts, "
          f"policy: {args.init or 'untrained'}, logit temperature {spec.meta_train.init_temperature:g}\n")
    # With 4 or more rollouts, the first half of each task's rollouts too: the same tasks, fewer rollouts.
    counts = sorted({rollouts, rollouts // 2} if rollouts >= 4 else {rollouts}, reverse=True)
    snrs = measure(collected, model, spec, args.caps, counts, args.references)
    ref = (counts[0], args.caps[0], args.references[0], "batch")
    print()
    for key in snrs:
        if key != ref:
            diff = snrs[key][0] - snrs[ref][0]
            half = 1.96 * _jackknife_se(snrs[key][1] - snrs[ref][1])
            print(f"SNR ({per} tasks), {_label(key)} - {_label(ref)}, paired on the same tasks: "
                  f"{diff:+.3f} [{diff - half:+.3f}, {diff + half:+.3f}] (95% jackknife interval)")


def _label(key: tuple[int, float, str, str]) -> str:
    return f"{key[0]} rollouts cap {key[1]:g} reference {key[2]} {key[3]}"


def measure(collected: list[tuple[TaskResult, list[int]]], model: ActorCritic, spec: Any, caps: list[float],
            counts: list[int], references: list[str] = ("best",),
            ) -> dict[tuple[int, float, str, str], tuple[float, np.ndarray]]:  # fmt: skip
    """Print the table of every (rollouts used, cap, reference, advantage scheme); return each one's
    SNR for a PPO batch and its leave-one-task-out values."""
    per, n = spec.meta_train.tasks_per_iteration, len(collected)
    print(f"| rollouts | reward_cap | reward_reference | advantage_norm | mean final reward | signal | noise | "
          f"SNR (1 task) | SNR ({per} tasks) [95% jackknife interval] | cos to the others |")
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    # Leave-one-task-out: a bootstrap would repeat tasks, and repeats look like agreement.
    leave_out = [np.array([j for j in range(n) if j != i]) for i in range(n)]
    snrs: dict[tuple[int, float, str, str], tuple[float, np.ndarray]] = {}
    lam = spec.meta_train.gae_lambda
    for k in counts:
        for cap in caps:
            for ref in references:
                by_task = {r.task_id: recapped(r, steps, cap, lam, ref)[:k] for r, steps in collected}
                mean_reward = np.mean([e.final_reward for group in by_task.values() for e in group])
                for how in ("batch", "task"):
                    grads = task_gradients(by_task, model, how)
                    r: dict[str, Any] = gradient_signal(grads)
                    snr = r["signal"] / (r["noise"] / per)
                    snrs[k, cap, ref, how] = snr, np.array([_snr(grads[idx], per) for idx in leave_out])
                    half = 1.96 * _jackknife_se(snrs[k, cap, ref, how][1])
                    print(f"| {k} | {cap:g} | {ref} | {how} | {mean_reward:.3f} | {r['signal']:.3g} | {r['noise']:.3g} | "
                          f"{r['signal'] / r['noise']:.3f} | {snr:.3f} [{snr - half:.3f}, {snr + half:.3f}] | "
                          f"{r['cos']:.3f} |")  # fmt: skip
    return snrs


if __name__ == "__main__":
    main()
