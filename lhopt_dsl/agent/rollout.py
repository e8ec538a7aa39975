"""Rollouts for meta-training: a policy's episodes on one task, against a baseline on that task.

Pure computation (no files, no tracking): given a task, the current policy, its EMA copy and a
seed, :func:`task_rollouts` runs the baseline(s) and the policy's episodes and returns everything
PPO and the metrics need. Each sampled task is reused for several policy rollouts so that one
baseline run is amortised over them (paper Section 3.4).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..spec.hparams import HPARAM_NAMES, HyperparameterSpace
from ..spec.sample import TaskConfig
from ..spec.schedule import Schedule, segment_bounds
from ..tasks import compile_task
from ..tasks.compiler import parameter_shapes
from ..tasks.population import CIAOPopulation, batchable, population_pays
from ..tasks.training import ciao_kwargs, run_schedule
from .actions import ActionSpace, Checkpoint, CheckpointBank, act_on_values
from .actor import Actor, Run, take
from .describe import model_descriptor
from .env import InnerTrainingEnv, OuterStep, RewardFn, log_improvement_reward
from .observation import FULL_CADENCE, Cadence, FeatureBuilder, Observer
from .policy import ActorCritic
from .reward import EXTRAPOLATION_CAP, FinalRelative, PowerLawReward, ShapedReward, reference_reward


@dataclass
class Episode:
    """One policy episode; observations are stored normalised (as the policy saw them) and raw.
    ``values`` are NaN (and ``value_obs`` zero) where no critic judged it (evaluation)."""

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
    #: (T, D) the innermost policy's own actions (``actions`` unless a wrapper such as a residual
    #: policy changed them; None in episodes recorded before they were kept)
    proposed: np.ndarray | None = None

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
    proposed: list[np.ndarray] = field(default_factory=list)
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

    def judge(self, critic: ActorCritic | None) -> None:
        """The value features as ``critic`` sees them and its values of the recorded steps (zero
        features and NaN values without one): the critic reads an episode once it is recorded."""
        raw = np.stack(self.raw_value)
        if critic is None:
            self.value_obs, self.values = list(np.zeros_like(raw, dtype=np.float32)), [math.nan] * len(raw)
            return
        value_obs = critic.value_norm(raw, update=False)
        self.value_obs, self.values = list(value_obs), critic.values(np.stack(self.policy_obs), value_obs).tolist()

    def episode(self, cfg: TaskConfig, curve: list[float], test_loss: float = math.nan) -> Episode:
        return Episode(
            np.stack(self.policy_obs), np.stack(self.value_obs), np.stack(self.raw_policy), np.stack(self.raw_value),
            np.stack(self.actions), np.asarray(self.logprobs), np.asarray(self.values),
            np.asarray(self.rewards, dtype=np.float64), list(curve), self.hparams, self.restarts, cfg.family,
            cfg.task_id, inner_steps=cfg.task.inner_steps, test_loss=test_loss, proposed=np.stack(self.proposed),
        )  # fmt: skip


def run_episode(
    env: InnerTrainingEnv,
    cfg: TaskConfig,
    actor: Actor[Any],
    reward_fn: RewardFn,
    *,
    baseline: list[float] | None = None,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    critic: ActorCritic | None = None,
    cadence: Cadence = FULL_CADENCE,
    seed: int = 0,
    member: int = 0,
) -> Episode:
    """Run one episode with ``actor`` (normalisers frozen) and collect what PPO needs.

    ``critic``: the network whose critic values the recorded episode (meta-training; normally the
    actor itself), once it is over; None records no values (evaluation and schedule export need
    only the actor, and so work with a policy whose value features were built with an older version
    of the DSL's vocabularies). ``cadence``: which losses the policy is told (default: every one, as
    evaluation does). ``seed``, ``member``: the run as the actor is told it (:class:`~lhopt_dsl.agent.actor.Run`).
    """
    env.reward_fn = reward_fn
    obs, info = env.reset(options={"config": cfg, "baseline": baseline, "cadence": cadence})
    carry = actor.start([Run(cfg.hparams.controlled(), cfg.task.outer_steps, seed, member, described(cfg))])
    record = _Record()
    done = False
    while not done:
        step, carry = actor.act(carry, obs["policy"][None], [generator], deterministic)
        record.add(policy_obs=step.seen[0], raw_policy=obs["policy"], raw_value=obs["value"])
        obs, reward, done, _, info = env.step(step.actions[0])
        record.add(actions=step.actions[0], proposed=step.proposed[0], logprobs=float(step.logprobs[0]),
                   rewards=reward, hparams=info["hparams"], restarts=info["restart"])  # fmt: skip
    record.judge(critic)
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
    cpu_seconds: float = 0.0  # CPU time its runs took (set by meta-training's worker)
    pid: int = 0  # the process that ran them


def task_rollouts(
    cfg: TaskConfig,
    policy: Actor[Any],
    baseline_actor: Actor[Any] | None,
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
    critic: ActorCritic | None = None,
    reward_cap: float = EXTRAPOLATION_CAP,
    reward_reference: str = "best",
) -> TaskResult:
    """Baseline run(s) and ``rollouts`` policy episodes on one task.

    The reward baseline is ``baseline_actor`` run greedily (the EMA policy for self-play, or a
    schedule's follower) or, when it is None, CIAO at the task's initial hyperparameters; the latter is always run too, for the
    ``reward/vs_initial_hparams`` metric. With ``population`` (the default) all of these runs
    train together as one batched model where the task allows it and that pays
    (:func:`population_rollouts`, :func:`~lhopt_dsl.tasks.population.population_pays`); otherwise one
    after another. ``compiled``: ``torch.compile`` the population's step (compiled once per
    architecture and process). ``cadence``: which losses every run of the task tells its policy
    (meta-training draws one per task, :func:`~lhopt_dsl.agent.observation.draw_cadence`). ``critic``:
    the network whose critic values the episodes (meta-training's policy itself; None: no values).
    ``reward_cap``: the speedup over the baseline at which the reward saturates (:class:`PowerLawReward`).
    ``reward_reference``: what the reward reads a loss against, the baseline's best loss (the paper's)
    or its final one (:class:`~lhopt_dsl.agent.reward.FinalRelative`: ending as the baseline ends is 1).
    """
    space.check_initial(cfg.hparams)
    members = rollouts + 1 + (baseline_actor is not None)
    if population and population_pays(cfg, members, device, compiled) and batchable(cfg, device, data_dir, max_valid):
        return population_rollouts(cfg, policy, baseline_actor, space, rollouts=rollouts, seed=seed, device=device,
                                   data_dir=data_dir, max_valid=max_valid, compiled=compiled, cadence=cadence,
                                   critic=critic, reward_cap=reward_cap, reward_reference=reward_reference)  # fmt: skip
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    steps = segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps)
    initial = run_schedule(cfg, Schedule(optimizer="ciao"), device=device, data_dir=data_dir, max_valid=max_valid)
    if baseline_actor is not None:
        base = run_episode(env, cfg, baseline_actor, log_improvement_reward, deterministic=True, cadence=cadence).valid_curve
    else:
        base = initial.valid_loss
    reward = reference_reward(steps, base, reward_cap, reward_reference)
    vs_initial = PowerLawReward(steps, initial.valid_loss)
    episodes = []
    for r in range(rollouts):
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        ep = run_episode(env, cfg, policy, ShapedReward(reward), baseline=base, generator=gen, cadence=cadence,
                         critic=critic, member=r)  # fmt: skip
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
class _Member:
    """One policy-controlled member of a population rollout and what it has seen and done."""

    k: int  # row in the population
    generator: torch.Generator | None
    observer: Observer
    bank: _MemberBank
    record: _Record = field(default_factory=_Record)
    prev_valid: list[float] = field(default_factory=list)  # the validation loss before each action, for its reward


@dataclass
class _Group:
    """Members that one actor drives together (the same actor, all greedy or all sampling): one
    batched decision per outer step."""

    actor: Actor[Any]
    greedy: bool
    members: list[_Member]
    carry: Any = None


def population_rollouts(
    cfg: TaskConfig,
    policy: Actor[Any],
    baseline_actor: Actor[Any] | None,
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
    critic: ActorCritic | None = None,
    reward_cap: float = EXTRAPOLATION_CAP,
    reward_reference: str = "best",
) -> TaskResult:
    """:func:`task_rollouts` with every run of the task in one :class:`CIAOPopulation`.

    Members: CIAO at the initial hyperparameters, the greedy EMA policy (self-play), and the
    ``rollouts`` policy episodes, stepping in lockstep through the same batches. Each outer step,
    each actor decides for its members as one batch (each member draws from its own generator, as
    in :func:`run_episode`), restarts and hyperparameter actions apply to their own rows, and the
    next segment trains all members at once. The actor reads only the policy features, so the
    rewards (which need the finished baseline curve), the value features and the critic's values
    are computed once the runs are done; the episodes equal :func:`run_episode`'s within float
    tolerance (a test).
    """
    actions = ActionSpace(space)
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    plan: list[tuple[Actor[Any], torch.Generator | None, bool, int]] = []
    if baseline_actor is not None:
        plan.append((baseline_actor, None, True, 0))
    plan += [(policy, torch.Generator().manual_seed(seed * 1000 + r), False, r) for r in range(rollouts)]
    pop = CIAOPopulation(task, [ciao_kwargs(cfg.hparams)] * (1 + len(plan)), compiled=compiled)  # row 0: initial hyperparameters
    groups = _groups(plan, pop, actions, space, cfg, task.outer_steps)
    members = [m for g in groups for m in g.members]
    by_row = {m.k: m for m in members}
    bounds = segment_bounds(task.steps, task.outer_steps)
    valid = pop.evaluate(task.valid_batches).tolist()
    curves = [[v] for v in valid]
    if cadence.valid_every is not None:
        for m in members:
            m.observer.report(valid_loss=valid[m.k])
    for t in range(task.outer_steps + 1):
        flat = pop.flat.clone()  # the parameters now (the observers keep them for the next norm ratios)
        raw = {m.k: m.observer.policy(pop.hparams(m.k), m.bank.slots, flat[m.k]) for m in members}
        if t == task.outer_steps:  # as the environment's last observation: its losses pay the last rewards
            break
        for group in groups:
            _decide(group, raw, valid, pop, actions)
        valid = _train_segment(pop, task, bounds[t], bounds[t + 1], stats_every, cadence, by_row)
        for curve, v in zip(curves, valid):
            curve.append(v)
    initial_curve = curves[0]
    base = curves[members[0].k] if baseline_actor is not None else initial_curve
    reward = reference_reward(bounds, base, reward_cap, reward_reference)
    vs_initial = PowerLawReward(bounds, initial_curve)
    episodes = [_finish(m, curves[m.k], cfg, reward, base, critic) for g in groups if not g.greedy for m in g.members]
    for ep in episodes:
        ep.final_reward = reward(ep.valid_curve[-1])
        ep.reward_vs_initial = vs_initial(ep.valid_curve[-1])
    return TaskResult(episodes, base, initial_curve, cfg.family, cfg.task_id, cfg.task.inner_steps, population=True, cadence=cadence)


def described(cfg: TaskConfig) -> tuple[float, ...]:
    """What a policy can see of ``cfg``'s model before the first step (its parameters' shapes and the
    run's length: :func:`~lhopt_dsl.agent.describe.model_descriptor`), as the drop-in sees a user's."""
    return tuple(model_descriptor(parameter_shapes(cfg.task), cfg.task.inner_steps, cfg.task.outer_steps))


def _groups(plan: list[tuple[Actor[Any], torch.Generator | None, bool, int]], pop: CIAOPopulation,
            actions: ActionSpace, space: HyperparameterSpace, cfg: TaskConfig, outer: int) -> list[_Group]:  # fmt: skip
    """The plan's members (rows 1, 2, ... of ``pop``) grouped by who drives them, each group started."""
    initial = cfg.hparams.controlled()
    groups: dict[tuple[int, bool], _Group] = {}
    runs: dict[tuple[int, bool], list[Run]] = {}
    for i, (actor, gen, greedy, member) in enumerate(plan):
        features = FeatureBuilder(actions, space)
        m = _Member(i + 1, gen, Observer(features, outer, initial), _MemberBank(features.slots, pop, i + 1))
        key = (id(actor), greedy)
        groups.setdefault(key, _Group(actor, greedy, [])).members.append(m)
        runs.setdefault(key, []).append(Run(initial, outer, 0, member, described(cfg)))
    for key, group in groups.items():
        group.carry = group.actor.start(runs[key])
    return list(groups.values())


def _decide(group: _Group, raw: dict[int, np.ndarray], valid: list[float], pop: CIAOPopulation,
            actions: ActionSpace) -> None:  # fmt: skip
    """One decision of a group's members: the actor acts for all of them, each carries its action out."""
    features = np.stack([raw[m.k] for m in group.members])
    step, group.carry = group.actor.act(group.carry, features, [m.generator for m in group.members], group.greedy)
    for b, m in enumerate(group.members):
        m.prev_valid.append(valid[m.k])  # the reward compares with the loss before any restart
        set_hparams = functools.partial(_set_member_hparams, pop, m.k, actions)
        taken = take(step.actions[b], actions=actions, observer=m.observer, bank=m.bank, model=None, optimizer=None,
                     set_hparams=set_hparams)  # fmt: skip
        m.record.add(raw_policy=raw[m.k], policy_obs=step.seen[b], actions=step.actions[b], proposed=step.proposed[b],
                     logprobs=step.logprobs[b], hparams=taken.applied, restarts=taken.restart)  # fmt: skip


def _set_member_hparams(pop: CIAOPopulation, k: int, actions: ActionSpace, action: np.ndarray) -> dict[str, float]:
    applied = act_on_values(actions, action, pop.hparams(k))
    pop.set_hparams(k, applied)
    return applied


def _train_segment(pop: CIAOPopulation, task: Any, start: int, stop: int, stats_every: int, cadence: Cadence,
                   by_row: dict[int, _Member]) -> list[float]:  # fmt: skip
    """Train every member through inner steps ``[start, stop)``; the observers hear what their
    cadence reports. Returns every row's validation loss after it."""
    told = []  # the losses reported to the policies (all of them under the full cadence)
    seen: torch.Tensor | None = None  # the latest reported, which the statistics read (see train_segment)
    for i in range(start, stop):
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
    validates = cadence.validates(start, stop)
    for m in by_row.values():
        m.observer.report(train_loss=train[m.k], valid_loss=valid[m.k] if validates else None)
    return valid


def _finish(m: _Member, curve: list[float], cfg: TaskConfig, reward: PowerLawReward | FinalRelative, base: list[float],
            critic: ActorCritic | None) -> Episode:  # fmt: skip
    """Rewards, value features and the critic's values of a finished population member."""
    shaped = ShapedReward(reward)
    rec, seen = m.record, m.observer.seen  # seen: one more than the steps, the observation at the end
    outer, so_far = len(rec.actions), 0.0
    for t in range(outer):
        rec.raw_value.append(m.observer.value(rec.raw_policy[t], cfg.task, so_far, base, at=t))
        r = float(shaped(OuterStep(t + 1, (t + 1) / outer, seen[t + 1].train_loss, curve[t + 1], m.prev_valid[t],
                                   t + 1 == outer, cfg)))  # fmt: skip
        rec.rewards.append(r)
        so_far += r
    _judge_sequences(rec, critic)
    return rec.episode(cfg, curve)


def _judge_sequences(rec: _Record, critic: ActorCritic | None) -> None:
    """The critic's values of a recorded episode over its whole sequence at once (the population's
    way; :meth:`_Record.judge` steps through it)."""
    if critic is None:
        rec.judge(None)
        return
    policy_obs = np.stack(rec.policy_obs)
    value_obs = critic.value_norm(np.stack(rec.raw_value), update=False)
    with torch.no_grad():
        values, _ = critic.critic_forward(torch.as_tensor(policy_obs, dtype=torch.float32).unsqueeze(1),
                                          torch.as_tensor(value_obs, dtype=torch.float32).unsqueeze(1))  # fmt: skip
    rec.value_obs, rec.values = list(value_obs), values[:, 0].double().tolist()


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
