"""The compiled inner task: a model, its training batches, its loss, and fixed evaluation sets.

Data live as tensors on the task's device and are batched by index; batch order comes from a
CPU ``torch.Generator`` seeded from the task's seed, so the same config gives the same batches on
every device (generated data is drawn on the CPU and moved, for the same reason).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

Batch = tuple[torch.Tensor, ...]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


class IndexSampler:
    """Mini-batches drawn without replacement from tensors on the device; each epoch reshuffles."""

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, seed: int):
        self.tensors = tuple(tensors)
        self.n = len(self.tensors[0])
        self.batch_size = min(batch_size, self.n)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def __call__(self) -> Batch:
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.tensors[0].device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return tuple(t[idx] for t in self.tensors)


class GeneratedSampler:
    """Fresh examples every step from ``make(generator, batch_size)``, drawn on the CPU."""

    def __init__(self, make: Callable[[torch.Generator, int], Batch], batch_size: int, seed: int, device: torch.device):
        self.make, self.batch_size, self.device = make, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> Batch:
        return tuple(t.to(self.device, non_blocking=True) for t in self.make(self.generator, self.batch_size))


def chunks(tensors: Sequence[torch.Tensor], size: int) -> list[Batch]:
    """Split evaluation tensors into batches of at most ``size`` examples."""
    n = len(tensors[0])
    return [tuple(t[i : i + size] for t in tensors) for i in range(0, n, size)]


class InnerTask:
    """One inner training problem, everything on ``device``.

    ``steps`` is the number of inner steps T and ``outer_steps`` the number of policy decisions.
    ``train_loss(batch)`` returns a differentiable scalar in training mode; ``valid_loss()`` and
    ``test_loss()`` return floats over fixed held-out sets in evaluation mode.
    """

    def __init__(
        self,
        config,  # TaskConfig (not imported, to keep this module free of the DSL)
        device: torch.device,
        model: nn.Module,
        loss_fn: LossFn,
        sampler: Callable[[], Batch],
        valid: list[Batch],
        test: list[Batch],
    ):
        self.config, self.device, self.model = config, device, model
        self.loss_fn, self.sampler = loss_fn, sampler
        self.valid_batches, self.test_batches = valid, test

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def steps(self) -> int:
        return self.config.task.inner_steps

    @property
    def outer_steps(self) -> int:
        return self.config.task.outer_steps

    def next_batch(self) -> Batch:
        return self.sampler()

    def train_loss(self, batch: Batch) -> torch.Tensor:
        self.model.train()
        return self.loss_fn(self.model, batch)

    @torch.no_grad()
    def evaluate(self, batches: list[Batch]) -> float:
        """Mean loss over ``batches`` (weighted by batch size) in evaluation mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            total = torch.zeros((), device=self.device, dtype=torch.float64)
            count = 0
            for batch in batches:
                n = len(batch[0])
                total += self.loss_fn(self.model, batch).double() * n
                count += n
            return float(total / max(count, 1))
        finally:
            self.model.train(was_training)

    def valid_loss(self) -> float:
        return self.evaluate(self.valid_batches)

    def test_loss(self) -> float:
        return self.evaluate(self.test_batches)

    def __repr__(self) -> str:
        return f"InnerTask({self.config.family}, {self.num_params:,} params, T={self.steps}, device={self.device})"
