"""The baselines of paper Section 4.1: their names, and one run of each on a task.

Baselines: AdamW with 5 learning rates (1e-4 ... 1e-2) x the 7 schedule shapes of
:data:`lhopt_dsl.spec.schedule.SHAPES` (35, named by :attr:`Schedule.name`, e.g. ``adamw-cosine-lr0.001``),
plus two optimizers users pick to avoid tuning: Schedule-Free AdamW (``schedulefree``) and Prodigy
(``prodigy``). Each runs on exactly the task a policy sees (same initial weights, data order and
validation set) for ``horizon x T`` inner steps, horizon 1 and 2 (a schedule is stretched over its
run), with validation and test losses at evenly spaced points as in :func:`lhopt_dsl.tasks.training.run_schedule`.

Pure computation, like the rest of the library: the resumable grid of these runs over a shared
storage (Optuna) is :mod:`runners.baselines`.

Tuning-free settings (our choices): Schedule-Free AdamW with its documented defaults (lr 2.5e-3,
betas (0.9, 0.999)) plus the linear warmup its README recommends (5% of the run); Prodigy with
``lr=1.0`` as its README recommends, no schedule. Both use the AdamW baselines' weight decay 1e-2
(both libraries default to 0) so that the three optimizers differ only in step sizes.
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch
from torch import nn

from ..spec.sample import TaskConfig
from ..spec.schedule import SHAPES, LearningCurve, Schedule
from .compiler import compile_task
from .task import InnerTask
from .training import evaluation_count, run_schedule, train_and_measure

LEARNING_RATES: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
ADAMW_BASELINES: list[str] = [Schedule(lr=lr, shape=shape).name for lr in LEARNING_RATES for shape in SHAPES]
TUNING_FREE: tuple[str, ...] = ("schedulefree", "prodigy")
BASELINES: list[str] = [*ADAMW_BASELINES, *TUNING_FREE]
HORIZONS: tuple[int, ...] = (1, 2)  # run lengths in multiples of the task's T

WEIGHT_DECAY = 1e-2  # of the tuning-free optimizers, as Schedule's AdamW default
SCHEDULEFREE_LR = 2.5e-3
SCHEDULEFREE_WARMUP = 0.05  # fraction of the run
PRODIGY_LR = 1.0
BN_CALIBRATION_BATCHES = 8  # Schedule-Free: BatchNorm statistics recomputed at the evaluated weights

def schedule_of(name: str) -> Schedule:
    """The AdamW :class:`Schedule` of a baseline name such as ``adamw-cosine_0.1-lr0.0003``."""
    try:
        schedule = Schedule.from_name(name)
    except ValueError:
        schedule = None
    if schedule is None or schedule.optimizer != "adamw":
        raise ValueError(f"unknown baseline '{name}'; known: adamw-<shape>-lr<lr> with shape in "
                         f"{', '.join(SHAPES)}, or {', '.join(TUNING_FREE)}")  # fmt: skip
    return schedule


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _recalibrate_batchnorm(task: InnerTask, batches: int = BN_CALIBRATION_BATCHES) -> None:
    """Recompute BatchNorm running statistics at the current weights (Schedule-Free's README caveat).

    Uses a copy of the training sampler with its own fixed generator, so the training data order is
    untouched; the statistics are the plain average over ``batches`` training batches.
    """
    bns = _batchnorms(task.model)
    if not bns:
        return
    side = copy.copy(task.sampler)  # shares the data tensors; own random stream below
    side.generator = torch.Generator().manual_seed(0x5EED)
    if hasattr(side, "perm"):
        side.perm, side.pos = None, 0
    momenta = [m.momentum for m in bns]
    was_training = task.model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        task.model.train()
        for _ in range(batches):
            task.loss_fn(task.model, side())
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        task.model.train(was_training)


def tuning_free_optimizer(name: str, params: list[nn.Parameter], steps: int) -> torch.optim.Optimizer:
    """Schedule-Free AdamW or Prodigy over ``params`` for a run of ``steps``, set as described above.

    Shared with the out-of-distribution programs (:mod:`runners.ood_programs`), which train them in
    ordinary PyTorch loops: both suites compare against the same settings.
    """
    if name == "schedulefree":
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(params, lr=SCHEDULEFREE_LR, weight_decay=WEIGHT_DECAY,
                                 warmup_steps=round(SCHEDULEFREE_WARMUP * steps))  # fmt: skip
    if name == "prodigy":
        from prodigyopt import Prodigy

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
            return Prodigy(params, lr=PRODIGY_LR, weight_decay=WEIGHT_DECAY)
    raise ValueError(f"unknown tuning-free optimizer '{name}'; known: {', '.join(TUNING_FREE)}")


def run_tuning_free(
    cfg: TaskConfig, name: str, steps: int | None = None, *, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None,
) -> LearningCurve:  # fmt: skip
    """Train ``cfg``'s task with Schedule-Free AdamW or Prodigy, measured like ``run_schedule``.

    Schedule-Free trains at its interpolated point y and is evaluated at its averaged point x:
    ``optimizer.train()`` before each segment, ``optimizer.eval()`` (and BatchNorm recalibration)
    before each validation and the final test loss.
    """
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    total = steps or task.steps
    opt = tuning_free_optimizer(name, task.params, total)
    if not (hasattr(opt, "eval") and hasattr(opt, "train")):
        return train_and_measure(task, opt, total, evaluations or evaluation_count(task, total))

    def to_eval_point() -> None:
        opt.eval()
        _recalibrate_batchnorm(task)

    # The untrained model is measured as is (x = y, BatchNorm as initialised).
    return train_and_measure(task, opt, total, evaluations or evaluation_count(task, total),
                             before_train=opt.train, before_eval=to_eval_point)  # fmt: skip


def run_baseline(
    cfg: TaskConfig, name: str, steps: int | None = None, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None,
) -> LearningCurve:  # fmt: skip
    """One baseline run of ``steps`` inner steps (default T) on ``cfg``'s task.

    ``evaluations``: measurements of the validation and test losses (default: as many as the
    task's outer steps, scaled with ``steps / T``).
    """
    kwargs = {"device": device, "data_dir": data_dir, "max_valid": max_valid, "evaluations": evaluations}
    if name in TUNING_FREE:
        return run_tuning_free(cfg, name, steps, **kwargs)
    return run_schedule(cfg, schedule_of(name), steps=steps, **kwargs)
