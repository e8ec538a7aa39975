"""Learning-rate schedules as targets, and policies that act *around* one (residual policies).

A :class:`Target` is a learning-rate schedule ``lr * shape(progress)``. The policy's learning-rate
actions are relative (x0.5 ... x2 of the current value, clamped to the space's bounds), so a
schedule is followed through them: at each decision the action whose result lies nearest the
target's value (:func:`nearest_lr_action`). That is how the imitation grid's followers run
(:mod:`lhopt_dsl.imitation`) and how ``lhopt eval --schedule`` evaluates a fixed schedule.

A :class:`ResidualPolicy` makes a learned policy a correction of such a schedule instead of a
replacement for it. Its learning-rate action no longer scales the learning rate: it scales an
*offset* ``m`` (1 at the start, kept within :data:`OFFSET_BOUNDS`), and the learning rate then
follows ``base(progress) * m`` as a follower would. "Keep" therefore means "follow the base
schedule", so a policy that has learned nothing runs the schedule, and one that is unsure keeps
to it; every other action dimension (the other hyperparameters, the restarts) is the policy's
own. It motivates itself by a measurement (docs/RESULTS.md): on 300 held-out tasks CIAO following
linear-lr0.03 blindly beats every cloned policy, and a policy cloned to that one schedule alone
reproduces it poorly (median speedup 0.79x against the schedule's own 0.87x).

A residual policy acts on one run at a time: :meth:`ResidualPolicy.bind` gives the actor for one
run, from the run's initial learning rate and number of decisions (evaluation and the drop-in
optimizer bind it per task). This module imports no task compiler, so the drop-in can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .actions import ActionSpace
from .schedule import shape_factor
from .spec.hparams import HyperparameterSpace

#: Range of a residual policy's offset from its base schedule: a hundredth to ten times it.
OFFSET_BOUNDS: tuple[float, float] = (1e-2, 1e1)


@dataclass(frozen=True)
class Target:
    """A learning-rate schedule to follow: ``lr * shape(progress)``; ``lr=None`` keeps the initial value."""

    lr: float | None
    shape: str = "constant"

    def at(self, progress: float) -> float | None:
        return None if self.lr is None else self.lr * shape_factor(self.shape, progress)

    @property
    def name(self) -> str:
        return "keep" if self.lr is None else f"{self.shape}-lr{self.lr:g}"

    @classmethod
    def from_name(cls, name: str) -> "Target":
        """The target of :attr:`name`."""
        if name == "keep":
            return cls(None)
        shape, _, lr = name.rpartition("-lr")
        shape_factor(shape, 0.0)  # an unknown shape fails here
        if not float(lr) > 0:
            raise ValueError(f"a target's learning rate must be positive, got {lr}")
        return cls(float(lr), shape)


def nearest_lr_action(lr_param: Any, current: float, goal: float, keep: int) -> tuple[int, float]:
    """The learning-rate action (index into ``lr_param``'s action values) whose result from
    ``current`` lies nearest ``goal`` in log space (ties: the one that keeps, index ``keep``, then
    the first), and the learning rate it sets."""
    applied = [lr_param.apply(current, v) for v in lr_param.action.values]
    goal = max(goal, 1e-300)
    miss = [abs(math.log(a) - math.log(goal)) for a in applied]
    best = min(range(len(miss)), key=lambda i: (round(miss[i], 9), i != keep))
    return best, applied[best]


def _nearest_scale(values: Sequence[float], offset: float, wanted: float, keep: int) -> int:
    """The scale among ``values`` that brings ``offset`` nearest ``wanted`` (within the bounds)."""
    lo, hi = OFFSET_BOUNDS
    wanted = min(max(wanted, lo), hi)
    miss = [abs(math.log(min(max(offset * v, lo), hi)) - math.log(wanted)) for v in values]
    return min(range(len(values)), key=lambda i: (round(miss[i], 9), i != keep))


class ResidualPolicy:
    """``policy`` acting around the learning-rate schedule ``base`` (see the module's docstring).

    It stands where a policy stands when loaded (:func:`~lhopt_dsl.controller.load_policy` returns
    one for a file that records a base schedule), but acts only once bound to a run
    (:meth:`bind`). ``space``: the hyperparameter space the policy was made for."""

    def __init__(self, policy: Any, space: HyperparameterSpace, base: Target):
        if base.lr is None:
            raise ValueError("a residual policy's base must be a schedule with a learning rate, not 'keep'")
        self.policy, self.space, self.base = policy, space, base
        self.actions = ActionSpace(space)
        if "lr" not in self.actions.names:
            raise ValueError("a residual policy needs a space whose policy controls the learning rate")
        self.lr_dim = self.actions.names.index("lr")
        self.lr_param = self.actions.hparams["lr"]
        if 1.0 not in self.lr_param.action.values:
            raise ValueError("a residual policy's learning-rate actions need x1 (follow the base schedule as it is)")
        self.keep = list(self.lr_param.action.values).index(1.0)
        self.shape, self.policy_norm, self.normalise = policy.shape, policy.policy_norm, policy.normalise
        self.check_compatible = policy.check_compatible

    def bind(self, initial_lr: float, outer_steps: int) -> "BoundResidual":
        """The actor for one run that starts at ``initial_lr`` and decides ``outer_steps`` times."""
        return BoundResidual(self, float(initial_lr), int(outer_steps))

    def act(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a residual policy acts on one run at a time: bind(initial_lr, outer_steps) it to the run first")

    def to_data(self) -> dict[str, Any]:
        """What a policy file records about it (the ``residual`` entry)."""
        return {"base": self.base.name, "offset_bounds": list(OFFSET_BOUNDS)}

    def offsets(self, target: Target, initial_lr: float, outer_steps: int) -> list[float]:
        """The offset from the base that follows ``target`` at each decision: ``target / base``
        (``keep``: the initial value over the base), within :data:`OFFSET_BOUNDS`."""
        lo, hi = OFFSET_BOUNDS
        out = []
        for t in range(outer_steps):
            p = t / outer_steps
            want = initial_lr if target.lr is None else target.at(p)
            out.append(min(max(want / max(self.base.at(p), 1e-300), lo), hi))
        return out

    def labels(self, wanted: Sequence[float], before: Sequence[float] | None = None) -> np.ndarray:
        """The offset actions (indices) towards the offsets ``wanted`` at each decision.

        ``before``: the offset in force before each decision (a residual policy's own run, as
        :attr:`BoundResidual.trace` records it); None: the labels' own path from 1, which is what
        a policy that took every label would have (a follower's demonstration)."""
        values = self.lr_param.action.values
        lo, hi = OFFSET_BOUNDS
        out, m = [], 1.0
        for t, w in enumerate(wanted):
            if before is not None:
                m = before[t]
            a = _nearest_scale(values, m, w, self.keep)
            out.append(a)
            m = min(max(m * values[a], lo), hi)
        return np.asarray(out, dtype=np.int64)


class BoundResidual:
    """A :class:`ResidualPolicy` acting on one run (one episode of :func:`~lhopt_dsl.rollout.run_episode`,
    or one drop-in optimizer): it keeps the run's offset and learning rate, and records in
    :attr:`trace` the offset in force before each decision and the policy's own learning-rate action."""

    def __init__(self, residual: ResidualPolicy, initial_lr: float, outer_steps: int):
        if outer_steps < 1:
            raise ValueError(f"outer_steps must be >= 1, got {outer_steps}")
        self.residual, self.outer = residual, outer_steps
        self.shape, self.policy_norm, self.normalise = residual.shape, residual.policy_norm, residual.normalise
        self.check_compatible = residual.check_compatible
        self.offset, self.lr, self.t = 1.0, initial_lr, 0
        self.trace: list[tuple[float, int]] = []

    def lowered(self, factor: float) -> None:
        """The learning rate was scaled by ``factor`` from outside (the drop-in's guard after a
        divergence): the offset follows, so the lower value holds at the next decision."""
        lo, hi = OFFSET_BOUNDS
        self.offset = min(max(self.offset * factor, lo), hi)
        self.lr *= factor

    def act(self, x: np.ndarray, v: np.ndarray, state: tuple, generator: Any = None,
            deterministic: bool = False) -> tuple[np.ndarray, float, float, tuple]:  # fmt: skip
        """As :meth:`~lhopt_dsl.policy.ActorCritic.act`; the learning-rate entry of the action
        returned is the one carried out (towards ``base * offset``), the log-probability is the policy's own."""
        r = self.residual
        action, logprob, value, state = r.policy.act(x, v, state, generator, deterministic)
        own = int(action[r.lr_dim])
        self.trace.append((self.offset, own))
        lo, hi = OFFSET_BOUNDS
        self.offset = min(max(self.offset * r.lr_param.action.values[own], lo), hi)
        goal = r.base.at(min(self.t, self.outer - 1) / self.outer) * self.offset
        executed = np.array(action, copy=True)
        executed[r.lr_dim], self.lr = nearest_lr_action(r.lr_param, self.lr, goal, r.keep)
        self.t += 1
        return executed, logprob, value, state
