"""Fixed schedules: the outer-step grid of a run, the paper's seven learning-rate shapes, the
AdamW baselines built from them, and the learning curves fixed runs record.

Pure arithmetic and plain data: the drop-in optimizer (:mod:`lhopt_dsl.controller`) imports this
module without pulling in the task compiler or gymnasium. Runs of fixed schedules on compiled tasks
are in :mod:`lhopt_dsl.training`.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class Schedule:
    """A fixed baseline: AdamW with a learning-rate shape, or CIAO at fixed hyperparameters.

    ``optimizer="ciao"`` uses the task's initial hyperparameters (scaled by the shape over time).
    """

    optimizer: Literal["adamw", "ciao"] = "adamw"
    lr: float = 1e-3
    shape: str = "constant"
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.shape}-lr{self.lr:g}" if self.optimizer == "adamw" else f"ciao-{self.shape}"


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
