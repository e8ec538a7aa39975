"""Schedule transfer (paper Section 4.5): a fixed schedule from an AdamW-space policy, replayed larger.

    lhopt schedule transfer --policy P --small small.yaml --large large.yaml [--storage URL]

The policy runs once on the small task (as ``lhopt schedule export`` does); the hyperparameters it
chose become a schedule over the run's progress, and :class:`~lhopt_dsl.controller.ScheduleReplay`
replays them on plain ``torch.optim.AdamW`` for the large task: a model of the same kind with at
least 4x the parameters, trained for at least 4x the steps. The large task's tuned AdamW grid (5
learning rates x 7 schedules at its own T, cached in the baselines' Optuna storage like
``lhopt eval``'s) is what the replay is measured against, on the test split no run observes. The
policy also acts live on the large task, for comparison.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lhopt_dsl import TaskConfig
from lhopt_dsl.agent.actor import Actor
from lhopt_dsl.agent.rollout import Episode
from lhopt_dsl.controller import ScheduleReplay, require_adamw_space, schedule_from_history
from lhopt_dsl.evaluation.metrics import speedup
from lhopt_dsl.spec.hparams import HyperparameterSpace
from lhopt_dsl.spec.schedule import LearningCurve, Schedule, schedule_document, segment_bounds
from lhopt_dsl.tasks import compile_task
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES
from lhopt_dsl.tasks.training import train_and_measure

from .baselines import GRID_EVALUATIONS_PER_T, run_grid
from .evaluate import policy_run
from .jobs import write_json

MIN_SCALE = 4.0  # the large task has at least this many times the parameters and the steps


def export_schedule(episode: Episode, cfg: TaskConfig, space: HyperparameterSpace) -> Schedule:
    """The tabulated schedule of a policy's episode on ``cfg``: each decision's values from the
    inner step where they took effect, as a fraction of the run."""
    bounds = segment_bounds(cfg.task.inner_steps, len(episode))
    history = [{"progress": bounds[i] / cfg.task.inner_steps, **h} for i, h in enumerate(episode.hparams)]
    return schedule_from_history(history, space.space)


def parameter_count(cfg: TaskConfig, data_dir: str | None = None) -> int:
    return sum(p.numel() for p in compile_task(cfg, "cpu", data_dir).params)


def replay(cfg: TaskConfig, schedule: Schedule | dict[str, Any], device: str = "cpu", data_dir: str | None = None,
           evaluations_per_T: int = GRID_EVALUATIONS_PER_T) -> LearningCurve:  # fmt: skip
    """``torch.optim.AdamW`` driven by ``ScheduleReplay`` for ``cfg``'s T steps, measured as the grid's runs are."""
    task = compile_task(cfg, device, data_dir)
    opt = torch.optim.AdamW(task.params)  # the replay sets lr, eps, beta2 and weight decay before the first step
    sched = ScheduleReplay(opt, schedule, task.steps)
    return train_and_measure(task, opt, task.steps, min(evaluations_per_T, task.steps),
                             before_step=lambda i: sched.load_state_dict({"last_step": i}))  # fmt: skip


def check_pair(small: TaskConfig, large: TaskConfig, params: tuple[int, int]) -> None:
    """The large task must be of the small one's family, with >= 4x its parameters and steps."""
    if small.family != large.family:
        raise ValueError(f"the large task is a {large.family}, the small one a {small.family}: use the same kind of model")
    steps = large.task.inner_steps / small.task.inner_steps
    size = params[1] / params[0]
    if steps < MIN_SCALE or size < MIN_SCALE:
        raise ValueError(f"the large task has {size:.2f}x the parameters ({params[1]:,} vs {params[0]:,}) and "
                         f"{steps:.2f}x the steps of the small one; transfer is measured at >= {MIN_SCALE:g}x both")  # fmt: skip


def transfer(policy: Actor[Any], space: HyperparameterSpace, small: TaskConfig, large: TaskConfig, storage: str, *,
             device: str = "cpu", data_dir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The transfer experiment on one (small, large) pair; returns its record (see :func:`format_record`)."""
    require_adamw_space(space.space, "the policy")
    params = (parameter_count(small, data_dir), parameter_count(large, data_dir))
    check_pair(small, large, params)
    source = policy_run(policy, space, small, device=device, data_dir=data_dir)
    schedule = export_schedule(source, small, space)
    replayed = replay(large, schedule, device, data_dir)
    live = policy_run(policy, space, large, device=device, data_dir=data_dir)
    grid = run_grid(large, storage, names=ADAMW_BASELINES, horizons=(1, 2), device=device, data_dir=data_dir)
    T = large.task.inner_steps
    finals = {n: grid[(n, 1)].test_loss for n in ADAMW_BASELINES}
    finite = {n: v for n, v in finals.items() if math.isfinite(v)}
    best = min(finite, key=finite.__getitem__) if finite else None

    def versus(loss: float) -> dict[str, Any]:
        beaten = sum(1 for v in finals.values() if not math.isfinite(v) or loss <= v) if math.isfinite(loss) else 0
        out: dict[str, Any] = {"test_loss": loss, "beats_fraction": beaten / len(finals)}
        if best is not None:
            c = grid[(best, 1)]
            s, censored = speedup(loss, T, c.test_loss, grid[(best, 2)].test_loss, c.steps, c.test_curve)
            out.update(beats_best=bool(math.isfinite(loss) and loss <= finite[best]), speedup_vs_best=s,
                       speedup_censored=censored)  # fmt: skip
        return out

    return {
        "small": {"task_id": small.task_id, "family": small.family, "params": params[0], "T": small.task.inner_steps,
                  "policy_test_loss": source.test_loss},
        "large": {"task_id": large.task_id, "family": large.family, "params": params[1], "T": T},
        "scale": {"params": params[1] / params[0], "steps": T / small.task.inner_steps},
        "schedule": schedule_document(schedule),  # the schedule file's form (lhopt schedule export)
        "replay": {**versus(replayed.test_loss), "curve": {"steps": replayed.steps, "test": replayed.test_curve}},
        "live_policy": versus(live.test_loss),
        "best_adamw": {"name": best, "test_loss": finite.get(best, math.nan) if best else math.nan},
        "median_adamw": float(np.median([v if math.isfinite(v) else math.inf for v in finals.values()])),
        "grid": finals,
    }


def format_record(r: dict[str, Any]) -> str:
    rp, lv, b = r["replay"], r["live_policy"], r["best_adamw"]

    def row(name: str, x: dict[str, Any]) -> str:
        return (f"| {name} | {x['test_loss']:.4g} | {x['beats_fraction']:.2f} | {'yes' if x.get('beats_best') else 'no'} "
                f"| {x.get('speedup_vs_best', math.nan):.2f}x{'+' if x.get('speedup_censored') else ''} |")  # fmt: skip

    return "\n".join([
        f"{r['small']['family']}: small task {r['small']['task_id']} ({r['small']['params']:,} parameters, T={r['small']['T']}) "
        f"-> large task {r['large']['task_id']} ({r['large']['params']:,} parameters, T={r['large']['T']}; "
        f"{r['scale']['params']:.1f}x the parameters, {r['scale']['steps']:.1f}x the steps)",
        "",
        "| run on the large task | test loss | AdamW grid beaten | <= best | speedup vs best |",
        "|---|---:|---:|:---:|---:|",
        row("AdamW + ScheduleReplay (the small task's schedule)", rp),
        row("the policy, live", lv),
        f"| best AdamW of 35 ({b['name']}) | {b['test_loss']:.4g} | | | 1.00x |",
        f"| median AdamW | {r['median_adamw']:.4g} | | | |",
    ])  # fmt: skip


def save_record(record: dict[str, Any], path: Path) -> None:
    write_json(path, record)  # strict JSON: a non-finite loss is null
