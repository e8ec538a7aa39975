"""Learning-rate schedules as targets, and policies that act *around* one (residual policies).

A followed :class:`~lhopt_dsl.spec.schedule.Schedule` (one without an optimizer of its own, named like
``linear-lr0.03`` or ``keep``) sets the learning rate ``lr * shape(progress)``. The policy's learning-rate
actions are relative (x0.5 ... x2 of the current value, clamped to the space's bounds), so a
schedule is followed through them: at each decision the action whose result lies nearest the
target's value (:func:`nearest_lr_action`). That is how the imitation grid's followers run
(:mod:`lhopt_dsl.agent.imitation`) and how ``lhopt eval --schedule`` evaluates a fixed schedule.

A :class:`Residual` makes a learned policy a correction of such a schedule instead of a
replacement for it. Its learning-rate action no longer scales the learning rate: it scales an
*offset* ``m`` (1 at the start, kept within :data:`OFFSET_BOUNDS`), and the learning rate then
follows ``base(progress) * m`` as a follower would. "Keep" therefore means "follow the base
schedule", so a policy that has learned nothing runs the schedule, and one that is unsure keeps
to it; every other action dimension (the other hyperparameters, the restarts) is the policy's
own. It motivates itself by a measurement (docs/RESULTS.md): on 300 held-out tasks CIAO following
linear-lr0.03 blindly beats every cloned policy, and a policy cloned to that one schedule alone
reproduces it poorly (median speedup 0.79x against the schedule's own 0.87x).

Both are :class:`~lhopt_dsl.agent.actor.Actor` s: :class:`Follow` acts alone, :class:`Residual` wraps an
inner actor; each keeps its runs' learning rates (and offsets) in its carry, from the initial
values the runs start with. This module imports no task compiler, so the drop-in can use it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..spec.hparams import HyperparameterSpace
from ..spec.schedule import Schedule
from .actions import ActionSpace
from .actor import Actor, Run, Step
from .observation import FeatureBuilder

#: Range of a residual policy's offset from its base schedule: a hundredth to ten times it.
OFFSET_BOUNDS: tuple[float, float] = (1e-2, 1e1)


def nearest_lr_action(lr_param: Any, current: float, goal: float, keep: int) -> tuple[int, float]:
    """The learning-rate action (index into ``lr_param``'s action values) whose result from
    ``current`` lies nearest ``goal`` in log space (ties: the one that keeps, index ``keep``, then
    the first), and the learning rate it sets."""
    applied = [lr_param.apply(current, v) for v in lr_param.action.values]
    goal = max(goal, 1e-300)
    miss = [abs(math.log(a) - math.log(goal)) for a in applied]
    best = min(range(len(miss)), key=lambda i: (round(miss[i], 9), i != keep))
    return best, applied[best]


def nearest_scale(values: Sequence[float], offset: float, wanted: float, keep: int) -> int:
    """The scale among ``values`` that brings ``offset`` nearest ``wanted`` (within the bounds)."""
    lo, hi = OFFSET_BOUNDS
    wanted = min(max(wanted, lo), hi)
    miss = [abs(math.log(min(max(offset * v, lo), hi)) - math.log(wanted)) for v in values]
    return min(range(len(values)), key=lambda i: (round(miss[i], 9), i != keep))


def clamp_offset(m: float) -> float:
    lo, hi = OFFSET_BOUNDS
    return min(max(m, lo), hi)


def offset_actions(space: HyperparameterSpace, who: str) -> tuple[ActionSpace, int, list[float], int]:
    """What an actor that moves a residual offset needs of ``space``'s actions: the action space, the
    learning rate's dimension, its action values (scales) and the index of x1 (keep the offset).
    ``who`` names the actor in the errors."""
    actions = ActionSpace(space)
    if "lr" not in actions.names:
        raise ValueError(f"{who} needs a space whose policy controls the learning rate")
    values = list(actions.hparams["lr"].action.values)
    if 1.0 not in values:
        raise ValueError(f"{who}'s learning-rate actions need x1 (keep the offset as it is)")
    return actions, actions.names.index("lr"), values, values.index(1.0)


class FollowCarry(NamedTuple):
    """Per run (row): which target it follows, the learning rate it has set; the decisions made."""

    member: tuple[int, ...]
    lr: tuple[float, ...]
    t: int
    outer: int


class Follow:
    """Follows learning-rate schedules through a space's actions (an :class:`~lhopt_dsl.agent.actor.Actor`):
    a run that starts as member ``r`` of its task's rollouts follows ``targets[r]`` (one target:
    every run follows it). At each decision it takes the learning-rate action that brings the value
    nearest the target's, keeps every other hyperparameter and never restarts.

    It reads nothing from the run: actions change the learning rate deterministically (a scale,
    then the bounds' clamp), so it tracks the value it has set. ``normaliser``: the features it
    reports as seen (a learner's policy normaliser, so that its episodes look as the learner's own
    would); None reports them raw."""

    kind = "schedule"

    def __init__(self, targets: Sequence[Schedule], space: HyperparameterSpace,
                 normaliser: Callable[..., np.ndarray] | None = None):  # fmt: skip
        for target in targets:
            check_followable(target)
        self.actions = ActionSpace(space)  # every space's policy controls lr
        if not self.actions.keeps().all():
            lacking = [n for n, k in zip(self.actions.names, self.actions.keeps()) if not k]
            raise ValueError(
                f"a schedule follower keeps every hyperparameter but the learning rate, but this space has no action "
                f"that keeps {', '.join(lacking)} (only scales away from 1 or shifts away from 0); add one (x1 for a "
                "scale, +0 for a logit shift) to their action values, as task_specs/cpu.yaml does"
            )
        self.targets, self.normaliser = list(targets), normaliser
        self.policy_size = FeatureBuilder(self.actions, space).policy_size
        self.nvec = tuple(self.actions.nvec)
        self.lr_dim = self.actions.names.index("lr")
        self.lr_param = self.actions.hparams["lr"]
        self.keep = self.actions.identity()

    def choose(self, target: Schedule, current: float, t: int, outer: int) -> tuple[np.ndarray, float]:
        """The action at decision ``t`` of ``outer`` for a run whose learning rate is ``current``,
        and the learning rate it sets."""
        action = self.keep.copy()
        goal = target.at(t / outer)
        if goal is None:
            return action, current
        action[self.lr_dim], lr = nearest_lr_action(self.lr_param, current, goal, int(self.keep[self.lr_dim]))
        return action, lr

    def start(self, runs: Sequence[Run]) -> FollowCarry:
        if any(r.member >= len(self.targets) and len(self.targets) != 1 for r in runs):
            raise ValueError(f"member {max(r.member for r in runs)} of a follower of {len(self.targets)} targets")
        return FollowCarry(tuple(r.member if len(self.targets) > 1 else 0 for r in runs),
                           tuple(float(r.initial["lr"]) for r in runs), 0, _outer(runs))  # fmt: skip

    def act(self, carry: FollowCarry, features: np.ndarray, generators: Sequence[torch.Generator | None],
            greedy: bool) -> tuple[Step, FollowCarry]:  # fmt: skip
        rows = np.asarray(features).reshape(len(carry.lr), -1)
        seen = np.asarray(rows, dtype=np.float32) if self.normaliser is None else self.normaliser(rows, update=False)
        chosen = [self.choose(self.targets[m], lr, carry.t, carry.outer) for m, lr in zip(carry.member, carry.lr)]
        actions = np.stack([a for a, _ in chosen])
        lrs = tuple(lr for _, lr in chosen)
        return Step(actions, np.zeros(len(actions)), seen, actions), carry._replace(lr=lrs, t=carry.t + 1)

    def guarded(self, carry: FollowCarry, row: int, lr_factor: float) -> FollowCarry:
        lr = list(carry.lr)
        lr[row] *= lr_factor
        return carry._replace(lr=tuple(lr))


@dataclass(frozen=True)
class FixedSchedule:
    """One learning-rate schedule followed through a space's actions from each task's initial values,
    evaluated as if it were a policy (``lhopt eval --schedule``): the baseline a learned policy has
    to beat to show that it learned more than a good schedule. Plain data, so it travels to worker
    processes; :meth:`load` gives its actor as a policy file's loader does."""

    target: Schedule
    space: HyperparameterSpace

    def __post_init__(self) -> None:
        Follow([self.target], self.space)  # a space it cannot follow in fails here

    @property
    def name(self) -> str:
        return f"schedule:{self.target.name}"

    @property
    def stem(self) -> str:
        """How output directories name it: ``schedule-<its name>``."""
        return f"schedule-{self.target.name}"

    def digest(self) -> str:
        """What stands for a file's sha256 in records: the sha256 of :attr:`name`."""
        return hashlib.sha256(self.name.encode()).hexdigest()

    def load(self) -> tuple[Follow, HyperparameterSpace]:
        return Follow([self.target], self.space), self.space


def check_followable(schedule: Schedule) -> None:
    """Refuse a schedule that runs an optimizer of its own (a baseline's), which no policy's actions follow."""
    if schedule.optimizer is not None:
        bare = Schedule(optimizer=None, lr=schedule.lr, shape=schedule.shape).name if schedule.lr else "keep"
        raise ValueError(f"'{schedule.name}' is a baseline on {schedule.optimizer}; a policy's actions follow a schedule's "
                         f"learning rate alone: name it '{bare}'")  # fmt: skip


def _outer(runs: Sequence[Run]) -> int:
    """The number of decisions of ``runs``, which start together and so must share it."""
    outer = {int(r.outer_steps) for r in runs}
    if len(outer) != 1 or min(outer) < 1:
        raise ValueError(f"runs that start together need one number of decisions >= 1, got {sorted(outer)}")
    return outer.pop()


class ResidualCarry(NamedTuple):
    """Per run (row): its offset from the base and the learning rate it has; the inner actor's carry."""

    inner: Any
    offset: tuple[float, ...]
    lr: tuple[float, ...]
    t: int
    outer: int


class Residual:
    """``inner`` acting around the learning-rate schedule ``base`` (see the module's docstring); an
    :class:`~lhopt_dsl.agent.actor.Actor`. ``space``: the hyperparameter space the policy was made for."""

    kind = "residual"

    def __init__(self, inner: Actor[Any], space: HyperparameterSpace, base: Schedule):
        if base.lr is None:
            raise ValueError("a residual policy's base must be a schedule with a learning rate, not 'keep'")
        check_followable(base)
        self.inner, self.space, self.base = inner, space, base
        self.actions, self.lr_dim, _, self.keep = offset_actions(space, "a residual policy")
        self.lr_param = self.actions.hparams["lr"]

    @property
    def policy_size(self) -> int:
        return self.inner.policy_size

    @property
    def nvec(self) -> tuple[int, ...]:
        return self.inner.nvec

    def start(self, runs: Sequence[Run]) -> ResidualCarry:
        return ResidualCarry(self.inner.start(runs), (1.0,) * len(runs), tuple(float(r.initial["lr"]) for r in runs),
                             0, _outer(runs))  # fmt: skip

    def act(self, carry: ResidualCarry, features: np.ndarray, generators: Sequence[torch.Generator | None],
            greedy: bool) -> tuple[Step, ResidualCarry]:  # fmt: skip
        """The inner actor's step; the learning-rate entry of the actions carried out moves towards
        ``base * offset``, the log-probabilities and proposals stay the inner actor's own."""
        step, inner = self.inner.act(carry.inner, features, generators, greedy)
        values = self.lr_param.action.values
        executed, offsets, lrs = np.array(step.actions, copy=True), [], []
        goal_at = self.base.at(min(carry.t, carry.outer - 1) / carry.outer)
        for b, (m, lr) in enumerate(zip(carry.offset, carry.lr)):
            m = clamp_offset(m * values[int(step.actions[b, self.lr_dim])])
            executed[b, self.lr_dim], lr = nearest_lr_action(self.lr_param, lr, goal_at * m, self.keep)
            offsets.append(m)
            lrs.append(lr)
        return step._replace(actions=executed), ResidualCarry(inner, tuple(offsets), tuple(lrs), carry.t + 1, carry.outer)

    def guarded(self, carry: ResidualCarry, row: int, lr_factor: float) -> ResidualCarry:
        """The offset follows a learning rate lowered from outside, so the lower value holds at the next decision."""
        offset, lr = list(carry.offset), list(carry.lr)
        offset[row], lr[row] = clamp_offset(offset[row] * lr_factor), lr[row] * lr_factor
        return carry._replace(inner=self.inner.guarded(carry.inner, row, lr_factor), offset=tuple(offset), lr=tuple(lr))

    def to_data(self) -> dict[str, Any]:
        """What a policy file records about it (the ``residual`` entry)."""
        return {"base": self.base.name, "offset_bounds": list(OFFSET_BOUNDS)}

    def offsets(self, target: Schedule, initial_lr: float, outer_steps: int) -> list[float]:
        """The offset from the base that follows ``target`` at each decision: ``target / base``
        (``keep``: the initial value over the base), within :data:`OFFSET_BOUNDS`."""
        out = []
        for t in range(outer_steps):
            p = t / outer_steps
            want = initial_lr if target.lr is None else target.at(p)
            out.append(clamp_offset(want / max(self.base.at(p), 1e-300)))
        return out

    def offsets_before(self, proposed_lr: Sequence[int]) -> list[float]:
        """The offset in force before each decision of a run whose inner actor proposed the
        learning-rate actions ``proposed_lr`` (indices), from 1."""
        values, out, m = self.lr_param.action.values, [], 1.0
        for a in proposed_lr:
            out.append(m)
            m = clamp_offset(m * values[int(a)])
        return out

    def labels(self, wanted: Sequence[float], before: Sequence[float] | None = None) -> np.ndarray:
        """The offset actions (indices) towards the offsets ``wanted`` at each decision.

        ``before``: the offset in force before each decision (a residual policy's own run,
        :meth:`offsets_before`); None: the labels' own path from 1, which is what a policy that
        took every label would have (a follower's demonstration)."""
        values = self.lr_param.action.values
        out, m = [], 1.0
        for t, w in enumerate(wanted):
            if before is not None:
                m = before[t]
            a = nearest_scale(values, m, w, self.keep)
            out.append(a)
            m = clamp_offset(m * values[a])
        return np.asarray(out, dtype=np.int64)
