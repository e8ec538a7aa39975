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
from .observation import FULL_CADENCE, Cadence, FeatureBuilder, Observer
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


@dataclass
class _Record:
    """An episode's rows as it is played, one per outer step (the fields of :class:`Episode`):
    :func:`run_episode` adds the critic's rows as it goes, the population rollouts once their runs
    are done (they need the finished baseline curve)."""

    raw_policy: list[np.ndarray] = field(default_factory=list)
    policy_obs: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    hparams: list[dict[str, float]] = field(default_factory=list)
    restarts: list[tuple[str, int]] = field(default_factory=list)
    raw_value: list[np.ndarray] = field(default_factory=list)
    value_obs: list[np.ndarray] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        for name, value in row.items():
            getattr(self, name).append(value)

    def episode(self, cfg: TaskConfig, curve: list[float], test_loss: float = math.nan) -> Episode:
        return Episode(
            np.stack(self.policy_obs), np.stack(self.value_obs), np.stack(self.raw_policy), np.stack(self.raw_value),
            np.stack(self.actions), np.asarray(self.logprobs), np.asarray(self.values),
            np.asarray(self.rewards, dtype=np.float64), list(curve), self.hparams, self.restarts, cfg.family,
            cfg.task_id, inner_steps=cfg.task.inner_steps, test_loss=test_loss,
        )  # fmt: skip


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
    cadence: Cadence = FULL_CADENCE,
) -> Episode:
    """Run one episode with ``policy`` (normalisers frozen) and collect what PPO needs.

    ``critic=False`` acts without the value features (zeros go to the critic, whose values are
    then meaningless): evaluation and schedule export need only the actor, and so work with a
    policy whose value features were built with an older version of the DSL's vocabularies.
    ``cadence``: which losses the policy is told (default: every one, as evaluation does).
    """
    env.reward_fn = reward_fn
    obs, info = env.reset(options={"config": cfg, "baseline": baseline, "cadence": cadence})
    state: tuple = (None, None)
    record = _Record()
    done = False
    blank = np.zeros(policy.shape.value_size, dtype=np.float32)
    while not done:
        if critic:
            p, v = policy.normalise(obs["policy"], obs["value"])
        else:
            p, v = policy.policy_norm(obs["policy"], update=False), blank
        action, logprob, value, state = policy.act(p, v, state, generator, deterministic)
        record.add(policy_obs=p, value_obs=v, raw_policy=obs["policy"], raw_value=obs["value"])
        obs, reward, done, _, info = env.step(action)
        record.add(actions=action, logprobs=logprob, values=value, rewards=reward, hparams=info["hparams"],
                   restarts=info["restart"])  # fmt: skip
    return record.episode(cfg, env.curve, env.test_loss)


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
    cadence: Cadence = FULL_CADENCE  # which losses the task's runs told their policies


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
    cadence: Cadence = FULL_CADENCE,
) -> TaskResult:
    """Baseline run(s) and ``rollouts`` policy episodes on one task.

    The reward baseline is ``ema_policy`` run greedily (self-play) or, when it is None, CIAO at
    the task's initial hyperparameters; the latter is always run too, for the
    ``reward/vs_initial_hparams`` metric. With ``population`` (the default) all of these runs
    train together as one batched model where the task allows it and that pays
    (:func:`population_rollouts`, :func:`~lhopt_dsl.population.population_pays`); otherwise one
    after another. ``compiled``: ``torch.compile`` the population's step (compiled once per
    architecture and process). ``cadence``: which losses every run of the task tells its policy
    (meta-training draws one per task, :func:`~lhopt_dsl.observation.draw_cadence`).
    """
    space.check_initial(cfg.hparams)
    members = rollouts + 1 + (ema_policy is not None)
    if population and population_pays(cfg, members, device, compiled) and batchable(cfg, device, data_dir, max_valid):
        return population_rollouts(cfg, policy, ema_policy, space, rollouts=rollouts, seed=seed, device=device,
                                   data_dir=data_dir, max_valid=max_valid, compiled=compiled, cadence=cadence)  # fmt: skip
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    steps = segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps)
    initial = run_schedule(cfg, Schedule(optimizer="ciao"), device=device, data_dir=data_dir, max_valid=max_valid)
    if ema_policy is not None:
        base = run_episode(env, cfg, ema_policy, log_improvement_reward, deterministic=True, cadence=cadence).valid_curve
    else:
        base = initial.valid_loss
    reward = PowerLawReward(steps, base)
    vs_initial = PowerLawReward(steps, initial.valid_loss)
    episodes = []
    for r in range(rollouts):
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        ep = run_episode(env, cfg, policy, ShapedReward(reward), baseline=base, generator=gen, cadence=cadence)
        ep.final_reward = reward(ep.valid_curve[-1])
        ep.reward_vs_initial = vs_initial(ep.valid_curve[-1])
        episodes.append(ep)
    return TaskResult(episodes, base, initial.valid_loss, cfg.family, cfg.task_id, cfg.task.inner_steps, cadence=cadence)


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
    observer: Observer
    bank: _MemberBank
    record: _Record = field(default_factory=_Record)
    prev_valid: list[float] = field(default_factory=list)  # the validation loss before each action, for its reward


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
    cadence: Cadence = FULL_CADENCE,
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
    outer = task.outer_steps
    actors = []
    for i, (pol, gen, greedy) in enumerate(plan):
        features = FeatureBuilder(actions, space)
        actors.append(_Actor(i + 1, pol, gen, greedy, Observer(features, outer, initial),
                             _MemberBank(features.slots, pop, i + 1)))  # fmt: skip
    by_row = {a.k: a for a in actors}
    bounds = segment_bounds(task.steps, task.outer_steps)
    valid = pop.evaluate(task.valid_batches).tolist()
    curves = [[v] for v in valid]
    states: dict[tuple[int, bool], Any] = {}  # actor LSTM state of each batch
    groups: dict[tuple[int, bool], list[_Actor]] = {}
    for a in actors:  # members that act alike (same policy, both greedy or both sampling) form a batch
        groups.setdefault((id(a.policy), a.deterministic), []).append(a)
        if cadence.valid_every is not None:
            a.observer.report(valid_loss=valid[a.k])
    for t in range(outer + 1):
        flat = pop.flat.clone()  # the parameters now (the observers keep them for the next norm ratios)
        raw = {a.k: a.observer.policy(pop.hparams(a.k), a.bank.slots, flat[a.k]) for a in actors}
        if t == outer:  # as the environment's last observation: its losses pay the last rewards
            break
        for key, group in groups.items():
            pol = group[0].policy
            norm = pol.policy_norm(np.stack([raw[a.k] for a in group]), update=False)
            chosen, logprobs, states[key] = pol.act_batch(
                norm, states.get(key), [a.generator for a in group], group[0].deterministic
            )
            for a, x, act, lp in zip(group, norm, chosen, logprobs):
                kind, slot = actions.restart(act) if a.observer.features.slots else ("none", -1)
                a.prev_valid.append(valid[a.k])  # the reward compares with the loss before any restart
                # Checkpoints keep the validation loss the policy was told, as the environment's do.
                a.observer.restarted(a.bank.apply(kind, slot, None, None, a.observer.progress, a.observer.valid_loss))
                applied = act_on_values(actions, act, pop.hparams(a.k))
                pop.set_hparams(a.k, applied)
                a.observer.acted(act)
                a.record.add(raw_policy=raw[a.k], policy_obs=x, actions=act, logprobs=lp, hparams=applied,
                             restarts=(kind, slot))  # fmt: skip
        told = []  # the losses reported to the policies (all of them under the full cadence)
        seen: torch.Tensor | None = None  # the latest reported, which the statistics read (see train_segment)
        for i in range(bounds[t], bounds[t + 1]):
            want = stats_every > 0 and (i + 1) % stats_every == 0
            grads, loss = pop.gradients()
            if cadence.trains(i):
                seen = loss
                told.append(loss)
            stats = pop.step(grads, stats=want, losses=seen)
            for k, st in enumerate(stats or []):
                if k in by_row:
                    by_row[k].observer.report(stats=st)
        train = torch.stack(told).double().mean(0).tolist() if told else [None] * pop.k
        valid = pop.evaluate(task.valid_batches).tolist()
        for curve, v in zip(curves, valid):
            curve.append(v)
        validates = cadence.validates(bounds[t], bounds[t + 1])
        for a in actors:
            a.observer.report(train_loss=train[a.k], valid_loss=valid[a.k] if validates else None)

    initial_curve = curves[0]
    base = curves[actors[0].k] if ema_policy is not None else initial_curve
    reward = PowerLawReward(bounds, base)
    vs_initial = PowerLawReward(bounds, initial_curve)
    episodes = [_finish(a, curves[a.k], cfg, reward, base) for a in actors if not a.deterministic]
    for ep in episodes:
        ep.final_reward = reward(ep.valid_curve[-1])
        ep.reward_vs_initial = vs_initial(ep.valid_curve[-1])
    return TaskResult(episodes, base, initial_curve, cfg.family, cfg.task_id, cfg.task.inner_steps, population=True, cadence=cadence)


def _finish(a: _Actor, curve: list[float], cfg: TaskConfig, reward: PowerLawReward, base: list[float]) -> Episode:
    """Rewards, value features and the critic's values of a finished population member."""
    shaped = ShapedReward(reward)
    rec, seen = a.record, a.observer.seen  # seen: one more than the steps, the observation at the end
    outer, so_far = len(rec.actions), 0.0
    for t in range(outer):
        rec.raw_value.append(a.observer.value(rec.raw_policy[t], cfg.task, so_far, base, at=t))
        r = float(shaped(OuterStep(t + 1, (t + 1) / outer, seen[t + 1].train_loss, curve[t + 1], a.prev_valid[t],
                                   t + 1 == outer, cfg)))  # fmt: skip
        rec.rewards.append(r)
        so_far += r
    policy_obs = np.stack(rec.policy_obs)
    value_obs = a.policy.value_norm(np.stack(rec.raw_value), update=False)
    with torch.no_grad():
        values, _ = a.policy.critic_forward(torch.as_tensor(policy_obs, dtype=torch.float32).unsqueeze(1),
                                            torch.as_tensor(value_obs, dtype=torch.float32).unsqueeze(1))  # fmt: skip
    rec.value_obs, rec.values = list(value_obs), values[:, 0].double().tolist()
    return rec.episode(cfg, curve)


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
