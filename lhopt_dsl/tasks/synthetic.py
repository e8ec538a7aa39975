"""Data made on the fly: algorithmic bit-sequence tasks, the noisy quadratic model and synthetic
regression targets."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..spec.families import NQMTask, RegressionTask

# --- algorithmic tasks (Appendix H: "XOR and binary addition") ---------------------------------


def parity_batch(gen: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bits; the target at step t is the XOR (parity) of bits 1..t.

    Returns inputs (B, L, 1) float and targets (B, L) int64.
    """
    bits = torch.randint(0, 2, (batch, length), generator=gen)
    return bits[..., None].float(), bits.cumsum(1) % 2


def addition_batch(gen: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two binary numbers of L-1 bits, least significant bit first; the target is their L-bit sum.

    Returns inputs (B, L, 2) float (one bit of each number per step) and targets (B, L) int64.
    """
    a = torch.randint(0, 2, (batch, length), generator=gen)
    b = torch.randint(0, 2, (batch, length), generator=gen)
    a[:, -1] = 0
    b[:, -1] = 0  # the last step only carries
    carry = torch.zeros(batch, dtype=torch.int64)
    out = torch.empty_like(a)
    for t in range(length):
        s = a[:, t] + b[:, t] + carry
        out[:, t], carry = s % 2, s // 2
    return torch.stack([a, b], -1).float(), out


ALGO_TASKS = {"parity": (parity_batch, 1), "binary_addition": (addition_batch, 2)}


# --- noisy quadratic model (Zhang et al., 2019) ---------------------------------------------------


class NoisyQuadratic(nn.Module):
    """Loss ``0.5 * sum(h * theta^2) + noise . theta``: the gradient is ``h * theta + noise``.

    ``h_i = i^-decay``; a training batch is a noise vector with covariance
    ``noise_scale * diag(h) / batch_size``, and evaluation uses zero noise (the expected loss).
    """

    def __init__(self, task: NQMTask):
        super().__init__()
        i = torch.arange(1, task.dim + 1, dtype=torch.float32)
        self.register_buffer("h", i.pow(-task.spectrum_decay))
        self.theta = nn.Parameter(torch.randn(task.dim))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:  # (dim,) -> ()
        return 0.5 * (self.h * self.theta.square()).sum() + (noise * self.theta).sum()


def nqm_noise(task: NQMTask, h: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    std = (task.noise_scale * h / task.batch_size).sqrt()
    return torch.randn(task.dim, generator=gen) * std


# --- synthetic regression (beyond the paper: MLPs on regression targets) --------------------------

TEACHER_UNITS = 32  # hidden units of a "teacher" target
SINE_SPREAD = 3.0  # spread of a "sine" target's argument, whatever the inputs


def regression_target(task: RegressionTask, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """The task's target function (N, inputs) -> (N, 1), drawn from ``gen``: the same for every split.

    ``linear``: x @ w with w ~ N(0, 1 / inputs), unit spread; ``sine``: sin(x @ w) with w ~ N(0,
    SINE_SPREAD^2 / inputs), an argument of spread about 3 (a few periods across the data); ``teacher``: tanh(x @ W1 + b1) @ w2, a random one-hidden-layer
    network whose pre-activations have unit spread.
    """
    d = task.inputs
    if task.target == "linear":
        w = torch.randn(d, 1, generator=gen) / math.sqrt(d)
        return lambda x: x @ w
    if task.target == "sine":
        w = torch.randn(d, 1, generator=gen) * (SINE_SPREAD / math.sqrt(d))
        return lambda x: torch.sin(x @ w)
    if task.target == "teacher":
        w1 = torch.randn(d, TEACHER_UNITS, generator=gen) / math.sqrt(d)
        b1 = torch.randn(TEACHER_UNITS, generator=gen) * 0.5
        w2 = torch.randn(TEACHER_UNITS, 1, generator=gen) / math.sqrt(TEACHER_UNITS)
        return lambda x: torch.tanh(x @ w1 + b1) @ w2
    raise ValueError(f"unknown regression target '{task.target}'")


def regression_examples(task: RegressionTask, target: Callable[[torch.Tensor], torch.Tensor], gen: torch.Generator,
                        n: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``n`` examples: standard normal inputs (n, inputs) and noisy targets (n, 1)."""
    x = torch.randn(n, task.inputs, generator=gen)
    return x, target(x) + task.noise * torch.randn(n, 1, generator=gen)
