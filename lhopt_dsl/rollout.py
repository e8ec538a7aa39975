"""Rollouts for meta-training: a policy's episodes on one task, against a baseline on that task.

Pure computation (no files, no tracking): given a task, the current policy, its EMA copy and a
seed, :func:`task_rollouts` runs the baseline(s) and the policy's episodes and returns everything
PPO and the metrics need. Each sampled task is reused for several policy rollouts so that one
baseline run is amortised over them (paper Section 3.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .env import InnerTrainingEnv, RewardFn, Schedule, log_improvement_reward, run_schedule, segment_bounds
from .policy import ActorCritic
from .reward import PowerLawReward, ShapedReward
from .spec.hparams import HyperparameterSpace


@dataclass
class Episode:
    """One policy episode; observations are stored normalised (as the policy saw them) and raw."""

    policy_obs: np.ndarray  # (T, Fp)
    value_obs: np.ndarray  # (T, Fv)
    raw_policy: np.ndarray  # (T, Fp)
    raw_value: np.ndarray  # (T, Fv)
    actions: np.ndarray  # (T, D)
    logprobs: np.ndarray  # (T,)
    values: np.ndarray  # (T,)
    rewards: np.ndarray  # (T,)
    valid_curve: list[float]  # (T + 1,) validation loss at each outer step
    hparams: list[dict[str, float]]  # applied at each outer step
    restarts: list[tuple[str, int]]
    family: str = ""
    task_id: str = ""
    final_reward: float = math.nan  # against the episode's baseline
    reward_vs_initial: float = math.nan  # against CIAO at the initial hyperparameters
    inner_steps: int = 0

    def __len__(self) -> int:
        return len(self.rewards)


def run_episode(
    env: InnerTrainingEnv,
    cfg: Any,
    policy: ActorCritic,
    reward_fn: RewardFn,
    *,
    baseline: list[float] | None = None,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> Episode:
    """Run one episode with ``policy`` (normalisers frozen) and collect what PPO needs."""
    env.reward_fn = reward_fn
    obs, info = env.reset(options={"config": cfg, "baseline": baseline})
    state: tuple = (None, None)
    rows: dict[str, list] = {k: [] for k in ("p", "v", "rp", "rv", "a", "lp", "val", "r", "hp", "rs")}
    done = False
    while not done:
        p, v = policy.normalise(obs["policy"], obs["value"])
        action, logprob, value, state = policy.act(p, v, state, generator, deterministic)
        rows["p"].append(p)
        rows["v"].append(v)
        rows["rp"].append(obs["policy"])
        rows["rv"].append(obs["value"])
        obs, reward, done, _, info = env.step(action)
        for key, val in (("a", action), ("lp", logprob), ("val", value), ("r", reward)):
            rows[key].append(val)
        rows["hp"].append(info["hparams"])
        rows["rs"].append(info["restart"])
    return Episode(
        np.stack(rows["p"]), np.stack(rows["v"]), np.stack(rows["rp"]), np.stack(rows["rv"]),
        np.stack(rows["a"]), np.asarray(rows["lp"]), np.asarray(rows["val"]), np.asarray(rows["r"], dtype=np.float64),
        list(env.curve), rows["hp"], rows["rs"], cfg.family, cfg.task_id, inner_steps=cfg.task.inner_steps,
    )  # fmt: skip


@dataclass
class TaskResult:
    episodes: list[Episode]
    baseline_curve: list[float]
    initial_curve: list[float]
    family: str
    task_id: str
    inner_steps: int = 0
    notes: list[str] = field(default_factory=list)


def task_rollouts(
    cfg: Any,
    policy: ActorCritic,
    ema_policy: ActorCritic | None,
    space: HyperparameterSpace,
    *,
    rollouts: int,
    seed: int,
    device: str = "cpu",
    data_dir: str | None = None,
    max_valid: int = 512,
) -> TaskResult:
    """Baseline run(s) and ``rollouts`` policy episodes on one task.

    The reward baseline is ``ema_policy`` run greedily (self-play) or, when it is None, CIAO at
    the task's initial hyperparameters; the latter is always run too, for the
    ``reward/vs_initial_hparams`` metric.
    """
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    steps = segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps)
    initial = run_schedule(cfg, Schedule(optimizer="ciao"), device=device, data_dir=data_dir, max_valid=max_valid)
    if ema_policy is not None:
        base = run_episode(env, cfg, ema_policy, log_improvement_reward, deterministic=True).valid_curve
    else:
        base = initial.valid_loss
    reward = PowerLawReward(steps, base)
    vs_initial = PowerLawReward(steps, initial.valid_loss)
    episodes = []
    for r in range(rollouts):
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        ep = run_episode(env, cfg, policy, ShapedReward(reward), baseline=base, generator=gen)
        ep.final_reward = reward(ep.valid_curve[-1])
        ep.reward_vs_initial = vs_initial(ep.valid_curve[-1])
        episodes.append(ep)
    return TaskResult(episodes, base, initial.valid_loss, cfg.family, cfg.task_id, cfg.task.inner_steps)


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float = 1.0, lam: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over one finished episode; returns (advantages, returns).

    The value after the last step is 0 (the episode ends there).
    """
    adv = np.zeros(len(rewards), dtype=np.float64)
    last = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, adv + values
