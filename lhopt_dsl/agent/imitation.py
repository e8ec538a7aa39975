"""Imitation warm-start: demonstrations from a grid of learning-rate schedules, and behaviour cloning.

PPO from scratch spends thousands of episodes discovering what a grid search finds in one: which
learning rate, and which decay, suits a task. Here each training task is run by a population of
*followers*, one per target schedule ``lr(p) = L * shape(p)`` (and one that keeps the initial
value). A follower plays the policy's part through the policy's own action space: at each decision
it takes the learning-rate action that brings the value nearest to its target, keeps every other
hyperparameter and never restarts. Its episode therefore holds exactly what a policy would have
seen and done, and the best follower of a task (lowest final validation loss, the reward's own
criterion) is a demonstration: observations and action labels. :func:`clone` fits the actor to the
demonstrations by maximum likelihood and the critic to their returns; PPO then starts from there
(``lhopt train --init``) instead of from a random walk.

Which schedule a task's demonstration shows, and in which actions, is a :class:`Labelling`: each
task's best (:class:`BestOfTask`), one schedule unless a task clearly prefers another
(:class:`Consensus`), and either one as a residual policy's offsets from a base schedule
(:class:`ResidualOffsets`, a wrapper).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from ..spec.experiment import DEFAULT_IMITATION_LRS, DEFAULT_IMITATION_SHAPES
from ..spec.hparams import HyperparameterSpace
from ..spec.sample import TaskConfig
from ..spec.schedule import KEEP, Schedule, shape_factor
from .actor import Actor
from .observation import FULL_CADENCE, Cadence
from .policy import ActorCritic
from .residual import Follow, Residual
from .rollout import Episode, task_rollouts

#: The default grid (declared with the spec's ``imitation`` section): CIAO learning rates from 1e-4
#: to the bound 0.1 in half-decades, times three decays.
DEFAULT_LRS: tuple[float, ...] = DEFAULT_IMITATION_LRS
DEFAULT_SHAPES: tuple[str, ...] = DEFAULT_IMITATION_SHAPES


def default_targets(lrs: Sequence[float] = DEFAULT_LRS, shapes: Sequence[str] = DEFAULT_SHAPES) -> list[Schedule]:
    """``keep`` first, then every learning rate with every shape."""
    for s in shapes:
        shape_factor(s, 0.0)  # unknown shapes fail here, with the known ones listed
    return [KEEP] + [Schedule(optimizer=None, lr=lr, shape=s) for lr in lrs for s in shapes]


@dataclass
class Demonstration:
    """The best follower's episode on one task, and how it compares with keeping the initial values."""

    task_id: str
    family: str
    target: str
    raw_policy: np.ndarray  # (T, Fp)
    raw_value: np.ndarray  # (T, Fv)
    actions: np.ndarray  # (T, D)
    rewards: np.ndarray  # (T,) shaped rewards against CIAO at the initial hyperparameters
    final_valid: float
    keep_valid: float  # final validation loss of keeping the initial hyperparameters
    reward_vs_initial: float
    seconds: float = math.nan  # what making it cost (all the followers' runs, or the relabelled run)
    #: every follower's final validation loss by target name (inf when it diverged); empty in a
    #: relabelled episode and in files written before it was recorded
    target_losses: dict[str, float] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "Demonstration":
        """A demonstration from :meth:`to_data`'s dict; files of the removed soft labels record
        ``soft: None`` where they hold none, which is dropped."""
        data = dict(data)
        if data.pop("soft", None) is not None:
            raise ValueError("this demonstration carries soft labels, an option of `lhopt imitate` since removed "
                             "(git history keeps it): collect the demonstrations again into a new --run-dir")  # fmt: skip
        arrays = {k: np.asarray(data[k]) for k in ("raw_policy", "raw_value", "actions", "rewards")}
        return cls(**{**data, **arrays})


def demonstrate(cfg: TaskConfig, learner: ActorCritic, space: HyperparameterSpace, targets: Sequence[Schedule], *,
                seed: int, device: str = "cpu", data_dir: str | None = None, max_valid: int = 512,
                population: bool = True, compiled: bool = False,
                cadence: Cadence = FULL_CADENCE) -> tuple[Demonstration, list[Episode]]:  # fmt: skip
    """Run every target on ``cfg`` (as one population where that pays) and return the best one's
    demonstration, with every follower's episode (in the order of ``targets``).

    The best is the lowest final validation loss; a non-finite one never wins. ``cadence``: which
    losses the runs report (the demonstrations then hold the observations a policy has under it).
    """
    t0 = time.perf_counter()
    follower = Follow(targets, space, learner.policy_norm)  # the learner's normalisers and critic
    result = task_rollouts(cfg, follower, None, space, rollouts=len(targets), seed=seed, device=device,
                           data_dir=data_dir, max_valid=max_valid, population=population, compiled=compiled,
                           cadence=cadence, critic=learner)  # fmt: skip
    finals = [e.valid_curve[-1] if math.isfinite(e.valid_curve[-1]) else math.inf for e in result.episodes]
    best = int(np.argmin(finals))
    ep = result.episodes[best]
    demo = Demonstration(cfg.task_id, cfg.family, targets[best].name, ep.raw_policy, ep.raw_value, ep.actions,
                         ep.rewards, ep.valid_curve[-1], result.initial_curve[-1], ep.reward_vs_initial,
                         time.perf_counter() - t0, {t.name: f for t, f in zip(targets, finals)})  # fmt: skip
    return demo, result.episodes


def relabel(cfg: TaskConfig, policy: ActorCritic, space: HyperparameterSpace, target: Schedule, *, device: str = "cpu",
            data_dir: str | None = None, max_valid: int = 512, cadence: Cadence = FULL_CADENCE,
            follow: Schedule | None = None, residual: Residual | None = None) -> Demonstration:  # fmt: skip
    """A DAgger demonstration: ``policy``'s own greedy episode on ``cfg``, each decision labelled
    with the action the follower of ``target`` (the task's best schedule) takes from the learning
    rate the policy had reached there. Cloning these teaches the way back from the states the
    policy itself gets into, which the followers' episodes never visit. The episode's rewards are
    not the demonstrations' (there is no baseline run here), so they are NaN and the critic does
    not fit them.

    ``follow``: the episode is run by the follower of this schedule instead (``policy`` lends it
    only its normalisers): how a task gets a demonstration of a schedule other than its best.
    ``residual``: ``policy`` wrapped around a base schedule (:class:`~lhopt_dsl.agent.residual.Residual`);
    the episode is then its own, and the learning-rate labels are the offset actions from the
    offsets it had reached towards those that follow ``target``."""
    from .env import InnerTrainingEnv, log_improvement_reward
    from .rollout import run_episode

    t0 = time.perf_counter()
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    follower = Follow([target], space, policy.policy_norm)
    if residual is not None and follow is not None:
        raise ValueError("a residual policy's episodes are its own: relabel them with their task's schedule, "
                         "without a schedule to follow")  # fmt: skip
    actor: Actor[Any] = policy if follow is None else Follow([follow], space, policy.policy_norm)
    if residual is not None:
        actor = residual
    ep = run_episode(env, cfg, actor, log_improvement_reward, deterministic=True, critic=policy, cadence=cadence)
    outer = cfg.task.outer_steps
    befores = [cfg.hparams.lr] + [ep.hparams[t]["lr"] for t in range(len(ep) - 1)]
    if residual is None:
        labels = np.stack([follower.choose(target, before, t, outer)[0] for t, before in enumerate(befores)])
    else:
        labels = np.tile(follower.keep, (len(ep), 1))
        wanted = residual.offsets(target, cfg.hparams.lr, len(ep))
        assert ep.proposed is not None
        labels[:, residual.lr_dim] = residual.labels(wanted, residual.offsets_before(ep.proposed[:, residual.lr_dim]))
    return Demonstration(cfg.task_id, cfg.family, target.name, ep.raw_policy, ep.raw_value, labels,
                         np.full(len(ep), np.nan), ep.valid_curve[-1], math.nan, math.nan,
                         time.perf_counter() - t0)  # fmt: skip


def residual_demo(demo: Demonstration, residual: Residual, target: Schedule, initial_lr: float) -> Demonstration:
    """``demo`` (a follower's episode of ``target``, from ``initial_lr``) labelled for a residual
    policy: its learning-rate labels become the offset actions from the base towards ``target``
    (:meth:`~lhopt_dsl.agent.residual.Residual.labels`), the rest stays. Where the target is the
    base itself every label keeps."""
    actions = np.array(demo.actions, copy=True)
    actions[:, residual.lr_dim] = residual.labels(residual.offsets(target, initial_lr, len(actions)))
    return replace(demo, actions=actions)


#: A diverged follower's regret (log of its loss over the task's best) in :func:`consensus`: as if
#: it had ended 10x worse than the best.
DIVERGED_REGRET = math.log(10.0)


def _regret(loss: float, best: float) -> float:
    if not math.isfinite(loss):
        return DIVERGED_REGRET
    return min(math.log(max(loss, 1e-12) / max(best, 1e-12)), DIVERGED_REGRET)


def consensus(demos: Sequence[Demonstration], margin: float) -> tuple[str, dict[str, str]]:
    """Labels that trust one schedule unless a task clearly prefers another.

    A task's best follower wins by a hair as often as by a mile: the final losses of neighbouring
    schedules differ by run-to-run noise, so cloning each task's argmin teaches a policy to tell
    apart what no observation can. Here the *consensus* schedule is the one with the least mean
    regret over the tasks (regret: log of its final loss over the task's best; a diverged run
    counts as :data:`DIVERGED_REGRET`), and a task keeps its own best only where that beats the
    consensus by more than ``margin`` (relative; 0.05: a final loss 5% lower). ``margin=0`` is the
    plain argmin (ties go to the consensus), ``inf`` clones the one schedule everywhere.

    Returns the consensus target's name and each task's label (by task id). Every demonstration
    must carry :attr:`Demonstration.target_losses` for the same targets.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not demos or any(not d.target_losses for d in demos):
        raise ValueError("consensus labels need every follower's final loss, which demonstrations written before "
                         "it was recorded lack: collect them again into a new --run-dir")  # fmt: skip
    names = list(demos[0].target_losses)
    if any(list(d.target_losses) != names for d in demos):
        raise ValueError("the demonstrations were made with different schedule grids; use one --lrs/--shapes per run-dir")
    bests = [min(d.target_losses.values()) for d in demos]
    regrets = {n: float(np.mean([_regret(d.target_losses[n], b) for d, b in zip(demos, bests)])) for n in names}
    agreed = min(names, key=lambda n: regrets[n])
    labels = {}
    for d, best in zip(demos, bests):
        mine = d.target_losses[agreed]
        clearly = math.isfinite(best) and (not math.isfinite(mine) or best < (1.0 - margin) * mine)
        labels[d.task_id] = d.target if clearly and d.target != agreed else agreed
    return agreed, labels


#: Runs, for each task of ``labels`` (task index to a target's name), the follower of that target,
#: and returns its episodes as demonstrations of it (by task index). The caller owns the runs
#: (worker processes, files); a labelling only says which it needs.
Follower = Callable[[Mapping[int, str]], dict[int, Demonstration]]


class Labelling(Protocol):
    """One way of labelling the demonstrations: which schedule each task's demonstration shows, and
    in which actions. `lhopt imitate` chooses one from its settings, once; a variant wraps an inner
    labelling (:class:`ResidualOffsets`) instead of adding a branch to the runner."""

    @property
    def tag(self) -> str:
        """What the labels add to the names of the run's directories and files (``""`` for each
        task's own best), so that runs labelled differently never mix and a killed one resumes."""
        ...

    def label(self, demos: Mapping[int, Demonstration]) -> dict[int, Demonstration]:
        """Each task's demonstration (by task index, in that order) as cloning should see it; its
        ``target`` is the task's label, which DAgger's rounds relabel towards."""
        ...

    def summary(self) -> dict[str, Any]:
        """What the labels add to the run's summary (after :meth:`label`)."""
        ...


class BestOfTask:
    """Each task's best follower is its label: the demonstrations as they are."""

    tag = ""

    def label(self, demos: Mapping[int, Demonstration]) -> dict[int, Demonstration]:
        return {j: demos[j] for j in sorted(demos)}

    def summary(self) -> dict[str, Any]:
        return {"consensus": None}


class Consensus:
    """:func:`consensus` labels with ``margin``: a task labelled with a schedule other than its best
    gets that schedule's follower's episode from ``follow`` (one run per such task)."""

    def __init__(self, margin: float, follow: Follower):
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.follow = margin, follow
        self.agreed: str | None = None  # the consensus schedule, once labelled

    @property
    def tag(self) -> str:
        return f"-m{self.margin:g}"

    def label(self, demos: Mapping[int, Demonstration]) -> dict[int, Demonstration]:
        self.agreed, by_task = consensus([demos[j] for j in sorted(demos)], self.margin)
        moved = {j: by_task[d.task_id] for j, d in sorted(demos.items()) if by_task[d.task_id] != d.target}
        switched = self.follow(moved)
        return {j: switched[j] if j in moved else demos[j] for j in sorted(demos)}

    def summary(self) -> dict[str, Any]:
        return {"consensus": self.agreed}


class ResidualOffsets:
    """``inner``'s labels for a residual policy around ``residual``'s base: each demonstration's
    learning-rate labels become the offsets from the base towards its target (:func:`residual_demo`),
    from its task's initial learning rate, ``initial_lr(task index)``."""

    def __init__(self, inner: Labelling, residual: Residual, initial_lr: Callable[[int], float]):
        self.inner, self.residual, self.initial_lr = inner, residual, initial_lr

    @property
    def tag(self) -> str:
        return f"{self.inner.tag}-b{self.residual.base.name}"

    def label(self, demos: Mapping[int, Demonstration]) -> dict[int, Demonstration]:
        return {j: residual_demo(d, self.residual, Schedule.from_name(d.target), self.initial_lr(j))
                for j, d in self.inner.label(demos).items()}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return self.inner.summary()


def _padded(rows: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    longest = max(len(r) for r in rows)
    out = np.zeros((longest, len(rows), *rows[0].shape[1:]), dtype=np.float64)
    for b, r in enumerate(rows):
        out[: len(r), b] = r
    return torch.as_tensor(out, dtype=dtype)


def returns_of(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted return from each step to the end of the episode."""
    return np.cumsum(np.asarray(rewards, dtype=np.float64)[::-1])[::-1].copy()


class _Batch(NamedTuple):
    """Demonstrations padded to the longest, time first: what one cloning step reads."""

    x: torch.Tensor  # (T, B, Fp) normalised policy features
    v: torch.Tensor  # (T, B, Fv) normalised value features
    a: torch.Tensor  # (T, B, D) action labels
    mask: torch.Tensor  # (T, B) 1 where the demonstration has a decision
    ret: torch.Tensor  # (T, B) returns, 0 where unknown
    known: torch.Tensor  # (T, B) 1 where the return is known (DAgger's relabelled episodes have none)


def _batch(model: ActorCritic, demos: Sequence[Demonstration]) -> _Batch:
    x = _padded([model.policy_norm(d.raw_policy, update=False) for d in demos], torch.float32)
    v = _padded([model.value_norm(d.raw_value, update=False) for d in demos], torch.float32)
    a = _padded([d.actions for d in demos], torch.float64).long()
    mask = _padded([np.ones(len(d.actions)) for d in demos], torch.float32)
    ret = _padded([returns_of(d.rewards) for d in demos], torch.float32)
    return _Batch(x, v, a, mask, torch.nan_to_num(ret), mask * torch.isfinite(ret))


def _losses(model: ActorCritic, b: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-decision negative log-likelihood of the labels, and the critic's squared error on known returns."""
    logprob, _, values = model.evaluate(b.x, b.v, b.a)
    nll = -(logprob * b.mask).sum() / b.mask.sum()
    v_loss = 0.5 * (((values - b.ret) ** 2) * b.known).sum() / b.known.sum().clamp(min=1)
    return nll, v_loss


@torch.no_grad()
def _accuracy(model: ActorCritic, b: _Batch, lr_dim: int, majority: int) -> tuple[float, float]:
    """The greedy learning-rate action's accuracy, and always taking ``majority``'s (a second actor
    pass, so only for the epochs that are kept)."""
    logits, _ = model.actor_forward(b.x)
    greedy = logits[..., : model.shape.nvec[lr_dim]].argmax(-1)
    n = b.mask.sum()
    return float(((greedy == b.a[..., lr_dim]).float() * b.mask).sum() / n), \
        float(((b.a[..., lr_dim] == majority).float() * b.mask).sum() / n)  # fmt: skip


def _split(demos: Sequence[Demonstration], holdout: float,
           seed: int) -> tuple[list[Demonstration], list[Demonstration], int, int]:  # fmt: skip
    """The demonstrations to fit and to hold out, and the number of tasks of each: a ``holdout``
    fraction of the tasks (none under 5 tasks), a task's demonstrations (first and relabelled) together."""
    tasks = sorted({d.task_id for d in demos})
    order = np.random.default_rng(seed).permutation(len(tasks))
    n_hold = int(round(holdout * len(tasks))) if len(tasks) >= 5 else 0
    held_ids = {tasks[i] for i in order[:n_hold]}
    fit, held = [d for d in demos if d.task_id not in held_ids], [d for d in demos if d.task_id in held_ids]
    return fit, held, len(tasks) - n_hold, n_hold


def clone(model: ActorCritic, demos: Sequence[Demonstration], *, epochs: int = 300, lr: float = 3e-3,
          holdout: float = 0.2, value_coef: float = 0.5, seed: int = 0, lr_dim: int = 0) -> dict[str, float]:  # fmt: skip
    """Behaviour cloning: fit ``model``'s actor to the demonstrations' actions (every action
    dimension's log-likelihood, over whole sequences from a zero state, as PPO evaluates them) and
    its critic to their returns; the normalisers first take every observation, as meta-training's
    do after each iteration.

    A ``holdout`` fraction of the tasks (with all their demonstrations) is kept out of the fit; the
    weights of the epoch with the lowest held-out loss are kept (early stopping), and the returned
    metrics are those of that epoch: per-step negative log-likelihood, the learning-rate
    dimension's accuracy (greedy action equals the label; ``lr_dim`` is its action dimension) on the
    fit and held-out tasks, and on the held-out tasks the accuracy of always taking the fit's most
    frequent learning-rate action.
    """
    if not demos:
        raise ValueError("no demonstrations to clone")
    fit, held, n_fit, n_hold = _split(demos, holdout, seed)
    model.policy_norm(np.concatenate([d.raw_policy for d in fit]), update=True)
    model.value_norm(np.concatenate([d.raw_value for d in fit]), update=True)
    if all(np.isnan(d.rewards).all() for d in fit):
        value_coef = 0.0  # nothing for the critic to fit
    majority = int(np.bincount(np.concatenate([d.actions[:, lr_dim] for d in fit])).argmax())
    fit_b, held_b = _batch(model, fit), _batch(model, held) if held else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best: tuple[float, dict[str, Any], dict[str, float]] | None = None
    for epoch in range(epochs):
        opt.zero_grad()
        nll, v_loss = _losses(model, fit_b)
        (nll + value_coef * v_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        nll, v_loss = nll.detach(), v_loss.detach()
        with torch.no_grad():
            h_nll, h_v = _losses(model, held_b) if held_b is not None else (nll, v_loss)
        if best is None or float(h_nll) < best[0]:
            acc, keep_acc = _accuracy(model, fit_b, lr_dim, majority)  # of the weights kept (the fit's losses are of those before the step)
            h_acc, h_keep = _accuracy(model, held_b, lr_dim, majority) if held_b is not None else (acc, keep_acc)
            metrics = {"bc/epoch": float(epoch + 1), "bc/nll": float(nll), "bc/value_loss": float(v_loss),
                       "bc/lr_accuracy": acc, "bc/holdout_nll": float(h_nll), "bc/holdout_value_loss": float(h_v),
                       "bc/holdout_lr_accuracy": h_acc, "bc/holdout_majority_accuracy": h_keep,
                       "bc/fit_tasks": float(n_fit), "bc/holdout_tasks": float(n_hold)}  # fmt: skip
            best = (float(h_nll), {k: t.detach().clone() for k, t in model.state_dict().items()}, metrics)
    assert best is not None
    model.load_state_dict(best[1])
    return best[2]
