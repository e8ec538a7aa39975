"""Imitation warm-start of a policy (``lhopt imitate``): demonstrations on training tasks, then cloning.

    lhopt imitate SPEC --tasks N [--workers W] [--run-dir DIR] [--epochs E]

Samples ``N`` tasks from the spec's training distribution (training seeds, in a namespace of their
own: PPO's iterations never draw the same ones), runs the grid of learning-rate schedules of
:mod:`lhopt_dsl.imitation` on each through the policy's actions, and keeps the best follower's
episode as the task's demonstration (one file per task under ``DIR/demos``, written as it
finishes, so a killed run resumes where it stopped). It then fits a fresh policy of the spec's
shape to all of them and writes ``DIR/imitation.pt``, which ``lhopt train SPEC --init
DIR/imitation.pt`` starts PPO from.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lhopt_dsl import ExperimentSpec, sample
from lhopt_dsl.imitation import (
    DEFAULT_LRS,
    DEFAULT_SHAPES,
    Demonstration,
    bolder,
    clone,
    consensus,
    default_targets,
    demonstrate,
    lr_trajectory,
    relabel,
    residual_demo,
    soft_labels,
    target_weights,
)
from lhopt_dsl.observation import draw_cadence
from lhopt_dsl.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.residual import Follow, Residual
from lhopt_dsl.schedule import Schedule
from lhopt_dsl.sample import INITIAL_CHOICES, train_seed

from .lifeline import worker_pool
from .meta_train import policy_shape, terminate_as_interrupt
from .tracking import Tracker

#: Key of imitation's task seeds: ``train_seed(spec.seed, IMITATION_KEY, j)``; PPO's are
#: ``train_seed(spec.seed, iteration, j)`` with iterations far below it.
IMITATION_KEY = 2**31 - 1


@dataclass
class ImitationSettings:
    tasks: int
    workers: int = 1
    run_dir: Path | None = None
    epochs: int = 300
    lrs: Sequence[float] = DEFAULT_LRS
    shapes: Sequence[str] = DEFAULT_SHAPES
    tracking_uri: str | None = None
    quiet: bool = False
    dagger: int = 0  # rounds of DAgger after the first cloning
    initial: str = "noisy"  # the tasks' initial hyperparameters: meta-training's noise, or the defaults
    #: None: each task's best schedule is its label; a number: :func:`~lhopt_dsl.imitation.consensus`'s labels
    margin: float | None = None
    #: None: as ``margin`` says; a number: :func:`~lhopt_dsl.imitation.bolder`'s labels (near-ties go to the larger lr)
    tie: float | None = None
    #: None: hard labels; a temperature: :func:`~lhopt_dsl.imitation.soft_labels` weighted by each schedule's regret
    soft: float | None = None
    #: the cloning's seed (initial weights, held-out tasks); None: the spec's
    clone_seed: int | None = None
    #: None: a plain policy; a schedule's name: a residual policy around it (:mod:`lhopt_dsl.residual`)
    base: str | None = None


def _task(seed: int, spec_json: str, initial: str) -> tuple[ExperimentSpec, Any, Any]:
    """In a worker: the spec, the task of ``seed`` and the reporting cadence its runs use (as PPO's)."""
    torch.set_num_threads(1)
    spec = ExperimentSpec.model_validate_json(spec_json)
    cfg = sample(spec, seed, initial=initial)
    return spec, cfg, draw_cadence(spec.meta_train.reporting, seed, cfg.task.inner_steps)


def _demo_job(args: tuple) -> tuple[int, dict[str, Any]]:
    j, seed, spec_json, lrs, shapes, initial = args
    spec, cfg, cadence = _task(seed, spec_json, initial)
    learner = ActorCritic(policy_shape(spec))  # only its (empty) normalisers and critic are read
    demo, _ = demonstrate(cfg, learner, spec.hparams, default_targets(lrs, shapes), seed=seed, device=spec.device,
                          data_dir=spec.data_dir, max_valid=spec.meta_train.max_valid,
                          population=spec.meta_train.population, cadence=cadence)  # fmt: skip
    return j, {"seed": seed, "demo": demo.to_data()}


def _relabel_job(args: tuple) -> tuple[int, dict[str, Any]]:
    j, seed, spec_json, policy_ckpt, target, initial, follow, weights, base = args
    spec, cfg, cadence = _task(seed, spec_json, initial)
    policy = ActorCritic(policy_shape(spec)) if policy_ckpt is None else ActorCritic.from_checkpoint(policy_ckpt)
    residual = None if base is None else Residual(policy, spec.hparams, Schedule.from_name(base))
    demo = relabel(cfg, policy, spec.hparams, Schedule.from_name(target), device=spec.device, data_dir=spec.data_dir,
                   max_valid=spec.meta_train.max_valid, cadence=cadence,
                   follow=None if follow is None else Schedule.from_name(follow), weights=weights,
                   residual=residual)  # fmt: skip
    return j, {"seed": seed, "demo": demo.to_data()}


def _run_jobs(fn: Any, jobs: list[tuple], directory: Path, workers: int, desc: str, quiet: bool,
              found: dict[int, Demonstration]) -> None:  # fmt: skip
    """Run ``fn`` over ``jobs`` (``(j, ...)`` tuples), saving each result as ``directory/j.pt`` as it
    finishes (a kill loses only the running ones) and adding it to ``found``."""
    directory.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc=desc, unit="task", disable=quiet)
    pool = worker_pool(workers) if workers > 1 and len(jobs) > 1 else None  # spawned; they die with this process
    try:
        for j, data in pool.imap_unordered(fn, jobs) if pool else map(fn, jobs):
            save_checkpoint(data, directory / f"{j:05d}.pt")
            found[j] = Demonstration.from_data(data["demo"])
            bar.set_postfix_str(f"{found[j].family} {found[j].target}")
            bar.update()
    finally:
        bar.close()
        if pool:
            pool.terminate()


def _load_demos(directory: Path, seeds: dict[int, int]) -> dict[int, Demonstration]:
    """The finished demonstrations of this run's tasks; a file made for another seed is an error."""
    found = {}
    for j, seed in seeds.items():
        path = directory / f"{j:05d}.pt"
        if not path.exists():
            continue
        data = load_checkpoint(path, "demonstration")
        if data.get("seed") != seed:
            raise ValueError(f"{path} holds task seed {data.get('seed')}, not {seed}: it belongs to another spec "
                             "or seed; use another --run-dir")  # fmt: skip
        found[j] = Demonstration.from_data(data["demo"])
    return found


def imitate(spec: ExperimentSpec, settings: ImitationSettings, spec_path: str | None = None) -> Path:
    """Collect the demonstrations still missing, clone them into a new policy, return its path.

    SIGTERM unwinds like Ctrl-C (the worker pool is terminated with it); finished demonstrations stay."""
    with terminate_as_interrupt():
        return _imitate(spec, settings, spec_path)


def _imitate(spec: ExperimentSpec, settings: ImitationSettings, spec_path: str | None) -> Path:
    Follow(default_targets(settings.lrs, settings.shapes), spec.hparams)  # fails now, not in a worker
    run_dir = settings.run_dir or Path(spec.meta_train.run_dir) / f"{spec.name}-imitation"
    if sum(x is not None for x in (settings.margin, settings.tie, settings.soft)) > 1:
        raise ValueError("--margin, --tie and --soft are three ways of labelling the tasks; pass one of them")
    residual = None
    if settings.base is not None:
        if settings.soft is not None:
            raise ValueError("--soft and --base are two kinds of labels; pass one of them")
        residual = Residual(ActorCritic(policy_shape(spec)), spec.hparams, Schedule.from_name(settings.base))
    if settings.soft is not None and not settings.soft > 0:
        raise ValueError(f"--soft is a temperature and must be > 0, got {settings.soft}")
    if settings.initial not in INITIAL_CHOICES:
        raise ValueError(f"initial must be one of {', '.join(INITIAL_CHOICES)}, got {settings.initial!r}")
    suffix = "" if settings.initial == "noisy" else f"-{settings.initial}"  # the two kinds are never mixed
    demo_dir = run_dir / f"demos{suffix}"
    demo_dir.mkdir(parents=True, exist_ok=True)
    seeds = {j: train_seed(spec.seed, IMITATION_KEY, j) for j in range(settings.tasks)}
    demos = _load_demos(demo_dir, seeds)
    todo = [j for j in seeds if j not in demos]
    if demos:
        print(f"{len(demos)} demonstrations already in {demo_dir}; {len(todo)} to run")
    spec_json = spec.model_dump_json()
    jobs = [(j, seeds[j], spec_json, tuple(settings.lrs), tuple(settings.shapes), settings.initial) for j in todo]
    _run_jobs(_demo_job, jobs, demo_dir, settings.workers, "demonstrations", settings.quiet, demos)
    first = dict(demos)  # the best followers' episodes, which the summary describes

    labels = {j: d.target for j, d in demos.items()}
    agreed = None
    # DAgger's rounds are keyed by the number of tasks and the labels, which decide every round's policy.
    labelling = f"-m{settings.margin:g}" if settings.margin is not None else \
        f"-t{settings.tie:g}" if settings.tie is not None else \
        f"-s{settings.soft:g}" if settings.soft is not None else ""  # fmt: skip
    key = f"{suffix}-{settings.tasks}{labelling}"  # the switched followers' runs depend on the labels alone
    if residual is not None:  # the labels, DAgger's rounds and the policy are a residual policy's
        labelling += f"-b{residual.base.name}"
    if settings.clone_seed is not None:  # DAgger's rounds and the policy depend on the cloning's seed too
        labelling += f"-c{settings.clone_seed}"
    if settings.margin is not None or settings.tie is not None:
        if settings.margin is not None:
            agreed, by_task = consensus([demos[j] for j in sorted(demos)], settings.margin)
            switch_dir = run_dir / f"consensus{key}"
        else:
            by_task = bolder([demos[j] for j in sorted(demos)], settings.tie)
            switch_dir = run_dir / f"bolder{key}"
        labels = {j: by_task[d.task_id] for j, d in demos.items()}
        # a task labelled with another schedule needs that follower's episode in place of its best one's
        switched = _load_demos(switch_dir, seeds) if switch_dir.exists() else {}
        jobs = [(j, seeds[j], spec_json, None, labels[j], settings.initial, labels[j], None, None) for j in sorted(demos)
                if labels[j] != demos[j].target and j not in switched]  # fmt: skip
        _run_jobs(_relabel_job, jobs, switch_dir, settings.workers, "following the new labels", settings.quiet, switched)
        demos = {**demos, **{j: d for j, d in switched.items() if labels[j] != demos[j].target}}
    weights: dict[int, dict[str, float] | None] = {j: None for j in demos}
    if settings.soft is not None:
        weights = {j: target_weights(d.target_losses, settings.soft) for j, d in demos.items()}
        demos = {j: _with_soft_labels(spec, seeds[j], settings.initial, d, weights[j]) for j, d in demos.items()}
    if residual is not None:  # each task's schedule, as offsets from the base
        demos = {j: residual_demo(d, residual, Schedule.from_name(labels[j]), sample(spec, seeds[j], initial=settings.initial).hparams.lr)
                 for j, d in demos.items()}  # fmt: skip
    ordered = [demos[j] for j in sorted(demos)]
    clone_seed = spec.seed if settings.clone_seed is None else settings.clone_seed
    model, metrics = _clone(ordered, spec, clone_seed, settings.epochs)
    rounds = [metrics]
    relabelled: list[Demonstration] = []
    for r in range(1, settings.dagger + 1):
        # DAgger: the policy's own episodes on the same tasks, labelled by each task's schedule.
        round_dir = run_dir / f"dagger{suffix}-{settings.tasks}{labelling}" / f"round{r}"
        done = _load_demos(round_dir, seeds) if round_dir.exists() else {}
        ckpt = model.to_checkpoint()
        jobs = [(j, seeds[j], spec_json, ckpt, labels[j], settings.initial, None, weights[j], settings.base)
                for j in sorted(demos) if j not in done]  # fmt: skip
        _run_jobs(_relabel_job, jobs, round_dir, settings.workers, f"DAgger round {r}", settings.quiet, done)
        relabelled += [done[j] for j in sorted(done)]
        model, metrics = _clone(ordered + relabelled, spec, clone_seed, settings.epochs)
        rounds.append(metrics)
    summary = summarise([first[j] for j in sorted(first)])
    summary["consensus"] = agreed
    summary["labels"] = dict(Counter(labels.values()).most_common())
    summary["dagger_seconds"] = float(sum(d.seconds for d in relabelled if math.isfinite(d.seconds)))
    record = {"metrics": metrics, "rounds": rounds, "summary": summary, "tasks": settings.tasks,
              "lrs": list(settings.lrs), "shapes": list(settings.shapes), "epochs": settings.epochs,
              "dagger": settings.dagger, "initial": settings.initial, "margin": settings.margin,
              "tie": settings.tie, "soft": settings.soft, "clone_seed": clone_seed, "base": settings.base}  # fmt: skip
    path = run_dir / f"imitation{suffix}{labelling}.pt"
    data = {"policy": model.to_checkpoint(), "spec": spec.model_dump(mode="json"), "imitation": record}
    if residual is not None:
        data["residual"] = residual.to_data()
    save_checkpoint(data, path)
    tracker = Tracker(settings.tracking_uri or spec.tracking.uri, spec.tracking.experiment, f"{spec.name}-imitation",
                      run_dir)  # fmt: skip
    tracker.log_params({"spec": spec.model_dump(mode="json"), "imitation": {k: v for k, v in record.items()
                                                                             if k in ("tasks", "lrs", "shapes", "epochs", "dagger", "initial", "margin", "tie", "soft", "clone_seed", "base")}})  # fmt: skip
    for r, m in enumerate(rounds):  # step r: after r rounds of DAgger
        tracker.log_metrics(m, step=r)
    tracker.log_metrics({f"demos/{k}": v for k, v in summary.items() if isinstance(v, float)}, step=0)
    if spec_path:
        tracker.log_artifact(spec_path, "spec")
    tracker.log_policy(path, spec.tracking.registered_model)  # registered like meta-training's policies
    tracker.end()
    if not settings.quiet:
        print(report(summary, metrics))
    return path


def _with_soft_labels(spec: ExperimentSpec, seed: int, initial: str, demo: Demonstration,
                      weights: dict[str, float]) -> Demonstration:  # fmt: skip
    """``demo`` (a follower's episode, which never restarts) with soft labels along the learning
    rates it went through from its task's initial value."""
    if not demo.target_losses:
        raise ValueError("soft labels need every follower's final loss, which demonstrations written before it was "
                         "recorded lack: collect them again into a new --run-dir")  # fmt: skip
    cfg = sample(spec, seed, initial=initial)
    follower = Follow([], spec.hparams)
    lrs = lr_trajectory(follower, demo.actions, cfg.hparams.lr)
    return replace(demo, soft=soft_labels(follower, weights, lrs, cfg.task.outer_steps))


def _clone(demos: list[Demonstration], spec: ExperimentSpec, seed: int, epochs: int) -> tuple[ActorCritic, dict[str, float]]:
    """A fresh policy of the spec's shape (initialised from ``seed``) fitted to ``demos``."""
    torch.manual_seed(seed)
    model = ActorCritic(policy_shape(spec))
    return model, clone(model, demos, epochs=epochs, seed=seed)


def summarise(demos: Sequence[Demonstration]) -> dict[str, Any]:
    """What the demonstrations show: how much the best schedule gains over keeping the initial
    values (the reward against CIAO at the initial hyperparameters: 1 equal, above 1 better), and
    which schedules won."""
    rewards = np.asarray([d.reward_vs_initial for d in demos], dtype=np.float64)
    finite = rewards[np.isfinite(rewards)]
    wins = Counter(d.target for d in demos)
    return {
        "tasks": float(len(demos)),
        "reward_vs_initial_median": float(np.median(finite)) if len(finite) else math.nan,
        "reward_vs_initial_mean": float(np.mean(finite)) if len(finite) else math.nan,
        "keep_wins": float(wins.get("keep", 0) / len(demos)),
        # CPU time of the demonstrations that recorded it (one process each, one thread)
        "demo_seconds": float(sum(d.seconds for d in demos if math.isfinite(d.seconds))),
        "winners": dict(wins.most_common()),
        "families": dict(Counter(d.family for d in demos)),
    }


def report(summary: dict[str, Any], metrics: dict[str, float]) -> str:
    lines = [
        f"demonstrations: {int(summary['tasks'])} tasks; best schedule against keeping the initial values: "
        f"reward median {summary['reward_vs_initial_median']:.3f}, mean {summary['reward_vs_initial_mean']:.3f} "
        f"(1 = equal); keeping won on {summary['keep_wins']:.0%}",
        "winning schedules: " + ", ".join(f"{k} {v}" for k, v in list(summary["winners"].items())[:8]),
        f"cloning (epoch {int(metrics['bc/epoch'])}): learning-rate action accuracy {metrics['bc/lr_accuracy']:.1%} fit, "
        f"{metrics['bc/holdout_lr_accuracy']:.1%} held out on {int(metrics['bc/holdout_tasks'])} tasks "
        f"(most frequent action: {metrics['bc/holdout_majority_accuracy']:.1%}); held-out NLL {metrics['bc/holdout_nll']:.3f}",
    ]
    return "\n".join(lines)
