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

from .actions import ActionSpace, Checkpoint, CheckpointBank, act_on_values
from .compile import compile_task
from .env import InnerTrainingEnv, OuterStep, RewardFn, log_improvement_reward
from .observation import FeatureBuilder, norm_ratios
from .optim.stats import mean_stats
from .policy import ActorCritic
from .population import CIAOPopulation, batchable, population_pays
from .reward import PowerLawReward, ShapedReward
from .sample import TaskConfig
from .schedule import Schedule, segment_bounds
from .spec.hparams import HPARAM_NAMES, HyperparameterSpace
from .training import ciao_kwargs, run_schedule


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
    test_loss: float = math.nan  # final test loss (measured by run_episode; the score of evaluations)

    def __len__(self) -> int:
        return len(self.rewards)


def run_episode(
    env: InnerTrainingEnv,
    cfg: TaskConfig,
    policy: ActorCritic,
    reward_fn: RewardFn,
    *,
    baseline: list[float] | None = None,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    critic: bool = True,
) -> Episode:
    """Run one episode with ``policy`` (normalisers frozen) and collect what PPO needs.

    ``critic=False`` acts without the value features (zeros go to the critic, whose values are
    then meaningless): evaluation and schedule export need only the actor, and so work with a
    policy whose value features were built with an older version of the DSL's vocabularies.
    """
    env.reward_fn = reward_fn
    obs, info = env.reset(options={"config": cfg, "baseline": baseline})
    state: tuple = (None, None)
    rows: dict[str, list] = {k: [] for k in ("p", "v", "rp", "rv", "a", "lp", "val", "r", "hp", "rs")}
    done = False
    blank = np.zeros(policy.shape.value_size, dtype=np.float32)
    while not done:
        if critic:
            p, v = policy.normalise(obs["policy"], obs["value"])
        else:
            p, v = policy.policy_norm(obs["policy"], update=False), blank
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
        test_loss=env.test_loss,
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
    population: bool = False  # whether the task's runs trained as one batched population


def task_rollouts(
    cfg: TaskConfig,
    policy: ActorCritic,
    ema_policy: ActorCritic | None,
    space: HyperparameterSpace,
    *,
    rollouts: int,
    seed: int,
    device: str = "cpu",
    data_dir: str | None = None,
    max_valid: int = 512,
    population: bool = True,
    compiled: bool = False,
) -> TaskResult:
    """Baseline run(s) and ``rollouts`` policy episodes on one task.

    The reward baseline is ``ema_policy`` run greedily (self-play) or, when it is None, CIAO at
    the task's initial hyperparameters; the latter is always run too, for the
    ``reward/vs_initial_hparams`` metric. With ``population`` (the default) all of these runs
    train together as one batched model where the task allows it and that pays
    (:func:`population_rollouts`, :func:`~lhopt_dsl.population.population_pays`); otherwise one
    after another. ``compiled``: ``torch.compile`` the population's step (compiled once per
    architecture and process).
    """
    space.check_initial(cfg.hparams)
    members = rollouts + 1 + (ema_policy is not None)
    if population and population_pays(cfg, members, device, compiled) and batchable(cfg, device, data_dir, max_valid):
        return population_rollouts(cfg, policy, ema_policy, space, rollouts=rollouts, seed=seed, device=device,
                                   data_dir=data_dir, max_valid=max_valid, compiled=compiled)  # fmt: skip
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


class _MemberBank(CheckpointBank):
    """Checkpoint slots of one population member: a checkpoint is a copy of its row of state."""

    def __init__(self, slots: int, pop: CIAOPopulation, k: int):
        super().__init__(slots, HPARAM_NAMES)
        self.pop, self.k = pop, k

    def snapshot(self, model: Any, optimizer: Any, progress: float, valid: float) -> Checkpoint:
        return Checkpoint(self.pop.member_state(self.k), {}, progress, valid)

    def restore(self, ckpt: Checkpoint, model: Any, optimizer: Any) -> None:
        self.pop.load_member_state(self.k, ckpt.model)  # hyperparameters stay as they are


@dataclass
class _Actor:
    """One policy-controlled member of a population rollout and what it has seen and done."""

    k: int  # row in the population
    policy: ActorCritic
    generator: torch.Generator | None
    deterministic: bool
    features: FeatureBuilder
    bank: _MemberBank
    rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in ("rp", "p", "a", "lp", "hp", "rs", "prev")})
    obs_losses: list[tuple[float, float]] = field(default_factory=list)  # (train, valid) when each obs was made
    prev_action: np.ndarray | None = None
    stats: dict[str, float] = field(default_factory=dict)


def population_rollouts(
    cfg: TaskConfig,
    policy: ActorCritic,
    ema_policy: ActorCritic | None,
    space: HyperparameterSpace,
    *,
    rollouts: int,
    seed: int,
    device: str = "cpu",
    data_dir: str | None = None,
    max_valid: int = 512,
    stats_every: int = 4,
    compiled: bool = False,
) -> TaskResult:
    """:func:`task_rollouts` with every run of the task in one :class:`CIAOPopulation`.

    Members: CIAO at the initial hyperparameters, the greedy EMA policy (self-play), and the
    ``rollouts`` policy episodes, stepping in lockstep through the same batches. Each outer step,
    the actors of each policy act as one batch (each member draws from its own generator, as in
    :func:`run_episode`), restarts and hyperparameter actions apply to their own rows, and the
    next segment trains all members at once. The actor reads only the policy features, so the
    rewards (which need the finished baseline curve), the value features and the critic's values
    are computed once the runs are done; the episodes equal :func:`run_episode`'s within float
    tolerance (a test).
    """
    actions = ActionSpace(space)
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    plan: list[tuple[ActorCritic, torch.Generator | None, bool]] = []
    if ema_policy is not None:
        plan.append((ema_policy, None, True))
    plan += [(policy, torch.Generator().manual_seed(seed * 1000 + r), False) for r in range(rollouts)]
    pop = CIAOPopulation(task, [ciao_kwargs(cfg.hparams)] * (1 + len(plan)), compiled=compiled)  # row 0: initial hyperparameters
    initial = cfg.hparams.controlled()
    actors = []
    for i, (pol, gen, greedy) in enumerate(plan):
        features = FeatureBuilder(actions, space)
        actors.append(_Actor(i + 1, pol, gen, greedy, features, _MemberBank(features.slots, pop, i + 1)))
    bounds = segment_bounds(task.steps, task.outer_steps)
    outer = task.outer_steps
    valid = pop.evaluate(task.valid_batches).tolist()
    curves = [[v] for v in valid]
    train = [math.nan] * pop.k
    prev_flat = pop.flat.clone()
    ratios = [(1.0, math.nan)] * pop.k
    states: dict[tuple[int, bool], Any] = {}  # actor LSTM state of each batch
    groups: dict[tuple[int, bool], list[_Actor]] = {}
    for a in actors:  # members that act alike (same policy, both greedy or both sampling) form a batch
        groups.setdefault((id(a.policy), a.deterministic), []).append(a)
        a.obs_losses.append((math.nan, valid[a.k]))
    for t in range(outer):
        progress = t / outer
        for key, group in groups.items():
            pol = group[0].policy
            raw = []
            for a in group:
                raw.append(a.features.policy(progress, a.prev_action, train[a.k], valid[a.k], a.bank.slots,
                                             pop.hparams(a.k), initial, *ratios[a.k], a.stats))  # fmt: skip
            norm = pol.policy_norm(np.stack(raw), update=False)
            chosen, logprobs, states[key] = pol.act_batch(
                norm, states.get(key), [a.generator for a in group], group[0].deterministic
            )
            for a, r, x, act, lp in zip(group, raw, norm, chosen, logprobs):
                kind, slot = actions.restart(act) if a.features.slots else ("none", -1)
                a.rows["prev"].append(valid[a.k])  # the reward compares with the loss before any restart
                valid[a.k] = a.bank.apply(kind, slot, None, None, progress, valid[a.k])
                applied = act_on_values(actions, act, pop.hparams(a.k))
                pop.set_hparams(a.k, applied)
                for name, val in (("rp", r), ("p", x), ("a", act), ("lp", lp), ("hp", applied), ("rs", (kind, slot))):
                    a.rows[name].append(val)
                a.prev_action = act
        losses, collected = [], [[] for _ in range(pop.k)]
        for i in range(bounds[t], bounds[t + 1]):
            want = stats_every > 0 and (i + 1) % stats_every == 0
            loss, stats = pop.train_step(stats=want)
            losses.append(loss)
            for k, st in enumerate(stats or []):
                collected[k].append(st)
        train = torch.stack(losses).double().mean(0).tolist() if losses else [math.nan] * pop.k
        for a in actors:
            a.stats = mean_stats(collected[a.k]) or a.stats
        valid = pop.evaluate(task.valid_batches).tolist()
        for curve, v in zip(curves, valid):
            curve.append(v)
        ratios = [norm_ratios(prev_flat[k], pop.flat[k]) for k in range(pop.k)]
        prev_flat = pop.flat.clone()
        for a in actors:
            a.obs_losses.append((train[a.k], valid[a.k]))

    initial_curve = curves[0]
    base = curves[actors[0].k] if ema_policy is not None else initial_curve
    reward = PowerLawReward(bounds, base)
    vs_initial = PowerLawReward(bounds, initial_curve)
    episodes = [_finish(a, curves[a.k], cfg, initial, reward, base) for a in actors if not a.deterministic]
    for ep in episodes:
        ep.final_reward = reward(ep.valid_curve[-1])
        ep.reward_vs_initial = vs_initial(ep.valid_curve[-1])
    return TaskResult(episodes, base, initial_curve, cfg.family, cfg.task_id, cfg.task.inner_steps, population=True)


def _finish(a: _Actor, curve: list[float], cfg: TaskConfig, initial: dict[str, float], reward: PowerLawReward,
            base: list[float]) -> Episode:  # fmt: skip
    """Rewards, value features and the critic's values of a finished population member."""
    shaped = ShapedReward(reward)
    outer = len(a.rows["a"])
    rewards, raw_value, so_far = [], [], 0.0
    for t in range(outer):
        idx = min(int(round(t / outer * (len(base) - 1))), len(base) - 1)
        tr, va = a.obs_losses[t]
        raw_value.append(a.features.value(a.rows["rp"][t], cfg.task, initial, so_far, tr, va, float(base[idx]),
                                          float(base[-1])))  # fmt: skip
        tr_next, _ = a.obs_losses[t + 1]
        r = float(shaped(OuterStep(t + 1, (t + 1) / outer, tr_next, curve[t + 1], a.rows["prev"][t], t + 1 == outer, cfg)))
        rewards.append(r)
        so_far += r
    policy_obs = np.stack(a.rows["p"])
    value_obs = a.policy.value_norm(np.stack(raw_value), update=False)
    with torch.no_grad():
        values, _ = a.policy.critic_forward(torch.as_tensor(policy_obs, dtype=torch.float32).unsqueeze(1),
                                            torch.as_tensor(value_obs, dtype=torch.float32).unsqueeze(1))  # fmt: skip
    return Episode(
        policy_obs, value_obs, np.stack(a.rows["rp"]), np.stack(raw_value), np.stack(a.rows["a"]),
        np.asarray(a.rows["lp"]), values[:, 0].double().numpy(), np.asarray(rewards, dtype=np.float64), list(curve),
        a.rows["hp"], a.rows["rs"], cfg.family, cfg.task_id, inner_steps=cfg.task.inner_steps,
    )  # fmt: skip


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
