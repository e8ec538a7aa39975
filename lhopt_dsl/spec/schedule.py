"""Fixed schedules: the outer-step grid of a run, the paper's seven learning-rate shapes, the one
:class:`Schedule` type built from them (baselines, followed schedules, a residual policy's base),
and the learning curves fixed runs record.

Pure arithmetic and plain data: the drop-in optimizer (:mod:`lhopt_dsl.controller`) imports this
module without pulling in the task compiler or gymnasium. Runs of fixed schedules on compiled tasks
are in :mod:`lhopt_dsl.tasks.training`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


def segment_bounds(inner_steps: int, outer_steps: int) -> list[int]:
    """Inner-step indices where outer steps happen: ``outer_steps + 1`` values from 0 to T."""
    return [round(k * inner_steps / outer_steps) for k in range(outer_steps + 1)]


ScheduleShape = Literal["constant", "multi_step", "linear", "quadratic", "exponential", "cosine", "cosine_0.1"]
SHAPES: tuple[str, ...] = ("constant", "multi_step", "linear", "quadratic", "exponential", "cosine", "cosine_0.1")


def shape_factor(shape: str, p: float) -> float:
    """Learning-rate multiplier at progress ``p`` in [0, 1] for the paper's seven schedules (4.1).

    multi_step: x0.1 at 50% and x0.01 at 75% of the run; exponential: decays to 1% at the end.
    """
    if shape == "constant":
        return 1.0
    if shape == "multi_step":
        return 1.0 if p < 0.5 else (0.1 if p < 0.75 else 0.01)
    if shape == "linear":
        return 1.0 - p
    if shape == "quadratic":
        return (1.0 - p) ** 2
    if shape == "exponential":
        return 0.01**p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "cosine_0.1":
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule shape '{shape}'; known: {', '.join(SHAPES)}")


_NAME = re.compile(r"(?:(?P<optimizer>adamw|ciao)-)?(?P<shape>.+?)(?:-lr(?P<lr>[0-9.eE+-]+))?")


@dataclass(frozen=True)
class Schedule:
    """The one schedule type: a run's progress in [0, 1] to hyperparameter values, named in one grammar.

    The learning rate at progress ``p`` is ``lr * shape(p)`` (:meth:`at`); ``lr=None`` is the
    run's own initial value. ``optimizer`` says what runs it on its own: ``adamw`` (AdamW with
    constant ``betas``, ``eps`` and ``weight_decay``: the baselines), ``ciao`` (CIAO at the task's
    initial hyperparameters, the learning rate scaled by the shape), or None: a schedule a policy
    follows through its own actions (``lhopt eval --schedule``, imitation's targets, a residual
    policy's base), keeping its other hyperparameters.

    Names (:attr:`name`, :meth:`from_name`): ``adamw-<shape>-lr<lr>``, ``ciao-<shape>``,
    ``<shape>-lr<lr>``, and ``keep`` (followed, the initial learning rate kept), with ``<shape>``
    one of :data:`SHAPES`; e.g. ``adamw-cosine-lr0.001``, ``linear-lr0.03``.
    """

    optimizer: Literal["adamw", "ciao"] | None = "adamw"
    lr: float | None = 1e-3
    shape: str = "constant"
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        shape_factor(self.shape, 0.0)  # an unknown shape fails here, naming the known ones
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"a schedule's learning rate must be positive, got {self.lr}")
        if self.optimizer == "adamw" and self.lr is None:
            raise ValueError("an AdamW schedule needs a learning rate")
        if self.optimizer is None and self.lr is None and self.shape != "constant":
            raise ValueError(f"a followed schedule without a learning rate keeps the initial one: 'keep', not {self.shape}")

    def at(self, progress: float) -> float | None:
        """The learning rate at ``progress``; None where it is the run's own (``lr=None``)."""
        return None if self.lr is None else self.lr * shape_factor(self.shape, progress)

    @property
    def name(self) -> str:
        if self.optimizer == "ciao":
            return f"ciao-{self.shape}"
        if self.lr is None:
            return "keep"
        prefix = "" if self.optimizer is None else f"{self.optimizer}-"
        return f"{prefix}{self.shape}-lr{self.lr:g}"

    @classmethod
    def from_name(cls, name: str) -> "Schedule":
        """The schedule of :attr:`name` (see the class docstring for the grammar)."""
        if name == "keep":
            return cls(optimizer=None, lr=None)
        m = _NAME.fullmatch(name)
        if m is None or m["shape"] not in SHAPES:
            raise ValueError(f"unknown schedule '{name}': names look like linear-lr0.03, adamw-cosine-lr0.001, "
                             f"ciao-constant or keep, with a shape in {', '.join(SHAPES)}")  # fmt: skip
        optimizer, lr = m["optimizer"], m["lr"]
        if (optimizer == "ciao") != (lr is None):
            raise ValueError(f"schedule '{name}': " + ("a CIAO schedule runs at the task's initial learning rate "
                             "and takes no -lr" if optimizer == "ciao" else "needs a learning rate (-lr<value>)"))
        try:
            value = None if lr is None else float(lr)
        except ValueError:
            raise ValueError(f"schedule '{name}': '{lr}' is not a learning rate") from None
        return cls(optimizer=optimizer, lr=value, shape=m["shape"])


#: The followed schedule that keeps the run's initial learning rate.
KEEP = Schedule(optimizer=None, lr=None)


@dataclass
class LearningCurve:
    """Losses of a fixed run, measured at ``steps``; the test split is measured at the same points.

    The test loss is the score of evaluations (no run sees it: nothing decides on it), and its
    curve is what speedups are read from; ``test_loss`` is its last value.
    """

    steps: list[int]  # inner steps at which the losses were measured (0 first)
    valid_loss: list[float]
    train_loss: list[float] = field(default_factory=list)  # mean training loss of each segment
    test_loss: float = float("nan")
    test_curve: list[float] = field(default_factory=list)  # test loss at each of ``steps``

    def losses(self, score: str) -> list[float]:
        """The curve used to score: ``"test"`` (the test curve) or ``"valid"``."""
        if score == "test":
            return self.test_curve
        if score == "valid":
            return self.valid_loss
        raise ValueError(f"unknown score '{score}'; use 'test' or 'valid'")

    @property
    def progress(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.float64) / max(self.steps[-1], 1)
