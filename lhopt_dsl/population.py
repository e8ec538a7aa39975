"""Populations: K AdamW baselines of one task trained as ONE batched model with ``torch.func``.

The 35 baselines of an evaluation task share the architecture, the initial weights and the data
order; they differ only in their learning-rate schedules. Instead of K sequential runs, the
parameters are stacked along a leading member axis, gradients come from ``vmap(grad(loss))`` over
that axis with the same batch for every member, and AdamW is applied to the stacked tensors with
one learning rate per member. The curves equal the one-at-a-time path (``run_schedule``) within
float tolerance (a test).

Tasks whose modules cannot be batched this way (BatchNorm's in-place running statistics, the
packed sequences of text RNNs, recurrent kernels without a vmap rule) are detected with a
one-step probe and reported as ``None``, so callers fall back to sequential runs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .compile import compile_task
from .compile.task import InnerTask
from .env import LearningCurve, Schedule, evaluation_count, segment_bounds, shape_factor


class _Member(nn.Module):
    """Calls the task's model with one member's parameters (duck-types the module for loss_fn)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self._model, self._params = model, params

    def forward(self, *args: Any) -> torch.Tensor:
        return functional_call(self._model, self._params, args)


def _eligible(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class AdamWPopulation:
    """K AdamW runs of one task (same betas, eps, weight decay; per-member lr schedules)."""

    def __init__(self, task: InnerTask, schedules: Sequence[Schedule], total_steps: int):
        if not schedules or any(s.optimizer != "adamw" for s in schedules):
            raise ValueError("a population needs AdamW schedules")
        first = schedules[0]
        if any((s.betas, s.eps, s.weight_decay) != (first.betas, first.eps, first.weight_decay) for s in schedules):
            raise ValueError("population members must share betas, eps and weight decay")
        self.task, self.schedules, self.total = task, list(schedules), total_steps
        self.k = len(schedules)
        model = task.model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        base = dict(model.named_parameters())
        self.params = {n: base[n].detach().unsqueeze(0).repeat(self.k, *[1] * base[n].dim()) for n in self.names}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.step_count = 0
        self.base_lr = torch.tensor([s.lr for s in schedules], dtype=torch.float64)
        model.train()

        def loss(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return task.loss_fn(_Member(model, params), batch)

        self._grad = vmap(grad_and_value(loss), in_dims=(0, None))
        self._loss = vmap(loss, in_dims=(0, None))

    def lrs(self, step: int) -> torch.Tensor:
        """(K,) learning rates at inner step ``step``."""
        factors = torch.tensor([shape_factor(s.shape, step / self.total) for s in self.schedules], dtype=torch.float64)
        return self.base_lr * factors

    @torch.no_grad()
    def _adamw(self, grads: dict[str, torch.Tensor], lrs: torch.Tensor) -> None:
        s = self.schedules[0]
        b1, b2 = s.betas
        self.step_count += 1
        bc1, bc2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        for n, p in self.params.items():
            shape = (self.k,) + (1,) * (p.dim() - 1)
            lr = lrs.to(p.dtype).to(p.device).view(shape)
            g = grads[n]
            p.mul_(1 - lr * s.weight_decay)
            self.exp_avg[n].lerp_(g, 1 - b1)
            self.exp_avg_sq[n].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.exp_avg_sq[n].sqrt() / math.sqrt(bc2)).add_(s.eps)
            p.addcdiv_(self.exp_avg[n] * (lr / bc1), denom, value=-1.0)

    def train_step(self, step: int) -> torch.Tensor:
        """One inner step of every member on the same batch; returns the (K,) training losses."""
        batch = self.task.next_batch()
        grads, losses = self._grad(self.params, batch)
        self._adamw(grads, self.lrs(step))
        return losses.detach()

    @torch.no_grad()
    def evaluate(self, batches: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """(K,) mean losses over ``batches`` in evaluation mode."""
        self.task.model.eval()
        try:
            total = torch.zeros(self.k, dtype=torch.float64, device=self.task.device)
            count = 0
            for batch in batches:
                n = len(batch[0])
                total += self._loss(self.params, batch).double() * n
                count += n
            return total / max(count, 1)
        finally:
            self.task.model.train()


def run_population(
    cfg: Any, schedules: Sequence[Schedule], *, steps: int | None = None, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None,
) -> list[LearningCurve] | None:  # fmt: skip
    """Curves of ``schedules`` on ``cfg``'s task, trained together; None if the task can't be batched."""
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    if not _eligible(task.model):
        return None
    total = steps or task.steps
    try:  # probe on a throwaway copy: some ops (e.g. recurrent kernels) have no vmap rule
        probe = AdamWPopulation(compile_task(cfg, device, data_dir, max_valid=max_valid), schedules[:2], total)
        probe.train_step(0)
        probe.evaluate(probe.task.valid_batches[:1])
    except (RuntimeError, NotImplementedError):
        return None
    pop = AdamWPopulation(task, schedules, total)
    k = evaluations or evaluation_count(task, total)
    bounds = segment_bounds(total, k)
    first = pop.evaluate(task.valid_batches)
    curves = [LearningCurve([0], [float(v)]) for v in first]
    for a, b in zip(bounds, bounds[1:]):
        losses = torch.stack([pop.train_step(i) for i in range(a, b)]).double().mean(0)
        valid = pop.evaluate(task.valid_batches)
        for c, v, t in zip(curves, valid.tolist(), losses.tolist()):
            c.steps.append(b)
            c.valid_loss.append(v)
            c.train_loss.append(t)
    for c, t in zip(curves, pop.evaluate(task.test_batches).tolist()):
        c.test_loss = t
    return curves
