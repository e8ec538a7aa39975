"""Training a compiled task with a fixed optimizer: segments of inner steps (with CIAO's statistics
where wanted), and whole fixed-schedule runs with validation and test losses measured along the way.

The policy's environment (:mod:`lhopt_dsl.agent.env`) trains its segments with :func:`train_segment`; the
baselines (:mod:`lhopt_dsl.tasks.baselines`) and the populations' reference runs use :func:`run_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..optim import CIAO
from ..optim.stats import mean_stats
from ..spec.hparams import InitialHParams
from ..spec.sample import TaskConfig
from ..spec.schedule import LearningCurve, Schedule, segment_bounds, shape_factor
from .compiler import compile_task
from .task import InnerTask


def ciao_kwargs(h: InitialHParams) -> dict[str, Any]:
    """CIAO's keyword arguments that start a run from a task's initial hyperparameters (in its space)."""
    return h.ciao_kwargs()


@dataclass
class SegmentResult:
    train_loss: float  # mean over the segment's steps (NaN if any was NaN)
    stats: dict[str, float]  # statistics averaged over the segment's statistics steps
    steps: int
    reported_loss: float | None = None  # mean over the steps whose loss is reported (None: none was)


def train_segment(
    task: InnerTask, optimizer: torch.optim.Optimizer, steps: int, first_step: int, stats_every: int,
    before_step: Callable[[int], None] | None = None, reports: Callable[[int], bool] | None = None,
) -> SegmentResult:  # fmt: skip
    """Take ``steps`` inner steps; CIAO computes statistics on every ``stats_every``-th step.

    ``reports(i)`` says whether step ``i``'s training loss is reported to a policy (default: every
    one): their mean is ``reported_loss``, and CIAO's statistics read the latest one reported in
    the segment, as the drop-in optimizer's do.
    """
    losses, reported = [], []
    seen: torch.Tensor | None = None  # the latest reported loss of the segment
    collected: list[dict[str, float]] = []
    is_ciao = isinstance(optimizer, CIAO)
    for i in range(first_step, first_step + steps):
        if before_step is not None:
            before_step(i)
        loss = task.train_loss(task.next_batch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reports is None or reports(i):
            seen = loss.detach()
            reported.append(seen)
        if is_ciao:
            want = stats_every > 0 and (i + 1) % stats_every == 0
            optimizer.step(stats=want, loss=float(seen) if want and seen is not None else None)
            if want and optimizer.stats is not None:
                collected.append(optimizer.stats)
        else:
            optimizer.step()
        losses.append(loss.detach())
    mean_loss = float(torch.stack(losses).double().mean()) if losses else float("nan")
    told = float(torch.stack(reported).double().mean()) if reported else None
    return SegmentResult(mean_loss, mean_stats(collected), steps, told)


def evaluation_count(task: InnerTask, total_steps: int) -> int:
    """Validation measurements of a fixed run: as many as the task's outer steps, scaled by length."""
    return max(1, round(task.outer_steps * total_steps / task.steps))


def train_and_measure(
    task: InnerTask, optimizer: torch.optim.Optimizer, total_steps: int, evaluations: int, *,
    before_step: Callable[[int], None] | None = None, before_train: Callable[[], None] | None = None,
    before_eval: Callable[[], None] | None = None,
) -> LearningCurve:  # fmt: skip
    """Train for ``total_steps`` with a fixed optimizer, measuring the validation and test losses at
    ``evaluations`` evenly spaced points (and the untrained model first).

    ``before_train`` / ``before_eval`` let optimizers with separate train and eval points
    (Schedule-Free) switch between them.
    """

    def measure(fn: Callable[[], float]) -> float:
        if before_eval is not None:
            before_eval()
        return fn()

    bounds = segment_bounds(total_steps, evaluations)
    curve = LearningCurve([0], [task.valid_loss()], test_curve=[task.test_loss()])
    for a, b in zip(bounds, bounds[1:]):
        if before_train is not None:
            before_train()
        seg = train_segment(task, optimizer, b - a, a, stats_every=0, before_step=before_step)
        curve.steps.append(b)
        curve.valid_loss.append(measure(task.valid_loss))
        curve.test_curve.append(measure(task.test_loss))
        curve.train_loss.append(seg.train_loss)
    curve.test_loss = curve.test_curve[-1]
    return curve


def run_schedule(
    cfg: TaskConfig, schedule: Schedule, *, steps: int | None = None, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None,
) -> LearningCurve:  # fmt: skip
    """Train ``cfg``'s task with a fixed schedule for ``steps`` (default T) and return its curve.

    The validation loss is measured at ``evaluations`` evenly spaced points (default: as many as
    the task's outer steps, scaled with ``steps / T``), on exactly the task (weights, data order)
    that a policy would see.
    """
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    total = steps or task.steps
    if schedule.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(task.params, lr=schedule.lr, betas=schedule.betas,
                                                       eps=schedule.eps, weight_decay=schedule.weight_decay)  # fmt: skip
    else:
        opt = CIAO(task.params, **ciao_kwargs(cfg.hparams))
    base_lr = opt.param_groups[0]["lr"]

    def set_lr(i: int) -> None:
        for g in opt.param_groups:
            g["lr"] = base_lr * shape_factor(schedule.shape, i / total)

    return train_and_measure(task, opt, total, evaluations or evaluation_count(task, total), before_step=set_lr)
