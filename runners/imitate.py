"""Imitation warm-start of a policy (``lhopt imitate``): demonstrations on training tasks, then cloning.

    lhopt imitate SPEC [--tasks N] [--workers W] [--run-dir DIR] [--epochs E] [--dagger R] ...

The settings are the spec's ``imitation`` section (:class:`~lhopt_dsl.spec.experiment.ImitationSpec`);
each option given overrides its value. Samples ``N`` tasks from the spec's training distribution
(training seeds, in a namespace of their own: PPO's iterations never draw the same ones), runs the
grid of learning-rate schedules of :mod:`lhopt_dsl.agent.imitation` on each through the policy's
actions, and keeps the best follower's episode as the task's demonstration (one file per task
under ``DIR/demos``, written as it finishes, so a killed run resumes where it stopped). A
:class:`~lhopt_dsl.agent.imitation.Labelling`, chosen once from the settings, says which schedule each
task's demonstration shows; a fresh policy of the spec's shape is fitted to them (and to DAgger's
relabelled episodes) and written to ``DIR/imitation.pt``, which ``lhopt train SPEC --init
DIR/imitation.pt`` starts PPO from.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from lhopt_dsl import ExperimentSpec, sample
from lhopt_dsl.agent.imitation import (
    DEFAULT_LRS,
    DEFAULT_SHAPES,
    BestOfTask,
    Consensus,
    Demonstration,
    Labelling,
    ResidualOffsets,
    clone,
    default_targets,
    demonstrate,
    relabel,
)
from lhopt_dsl.agent.observation import draw_cadence
from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.residual import Follow, Residual
from lhopt_dsl.spec.experiment import ImitationSpec
from lhopt_dsl.spec.sample import INITIAL_CHOICES, train_seed
from lhopt_dsl.spec.schedule import Schedule

from .jobs import each_finished
from .meta_train import policy_shape, terminate_as_interrupt
from .tracking import Tracker

#: Key of imitation's task seeds: ``train_seed(spec.seed, IMITATION_KEY, j)``; PPO's are
#: ``train_seed(spec.seed, iteration, j)`` with iterations far below it.
IMITATION_KEY = 2**31 - 1

#: The settings a policy file's ``imitation`` record holds (and MLflow logs), in this order. ``tie``
#: and ``soft`` named labelling options since removed (docs/RESULTS.md); they are always None, so
#: that a record has the keys of those of the policies already shipped.
RECORDED = ("tasks", "lrs", "shapes", "epochs", "dagger", "initial", "margin", "tie", "soft", "clone_seed", "base")

_DEFAULTS = ImitationSpec()


@dataclass
class ImitationSettings:
    """What one ``lhopt imitate`` run does: the spec's ``imitation`` section resolved
    (:meth:`from_spec`; its fields mean what the section's do), and where results go."""

    tasks: int
    workers: int = 1
    run_dir: Path | None = None
    epochs: int = _DEFAULTS.epochs
    lrs: Sequence[float] = DEFAULT_LRS
    shapes: Sequence[str] = DEFAULT_SHAPES
    tracking_uri: str | None = None
    quiet: bool = False
    dagger: int = _DEFAULTS.dagger
    initial: str = _DEFAULTS.initial
    margin: float | None = None  # None: each task's best schedule is its label
    clone_seed: int | None = None  # None: the spec's seed
    base: str | None = None  # None: a plain policy; a schedule's name: a residual policy around it

    @classmethod
    def from_spec(cls, spec: ExperimentSpec, tracking_uri: str | None = None, quiet: bool = False) -> ImitationSettings:
        s = spec.imitation
        return cls(tasks=s.tasks, workers=spec.meta_train.workers if s.workers is None else s.workers,
                   run_dir=None if s.run_dir is None else Path(s.run_dir), epochs=s.epochs, lrs=s.lrs,
                   shapes=s.shapes, tracking_uri=tracking_uri, quiet=quiet, dagger=s.dagger, initial=s.initial,
                   margin=s.margin, clone_seed=s.clone_seed, base=s.base)  # fmt: skip


def with_overrides(spec: ExperimentSpec, overrides: Mapping[str, Any]) -> ExperimentSpec:
    """``spec`` with the values of ``overrides`` that are not None (the command line's options, by
    field name) in place of its ``imitation`` section's, checked as the section's own are."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        section = ImitationSpec.model_validate({**spec.imitation.model_dump(), **given})
    except ValidationError as e:
        problems = [f"--{str(err['loc'][0]).replace('_', '-')} {given.get(str(err['loc'][0]))}: {err['msg']}"
                    for err in e.errors()]  # fmt: skip
        raise ValueError("; ".join(problems)) from None
    return spec.model_copy(update={"imitation": section})


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
    j, seed, spec_json, policy_ckpt, target, initial, follow, base = args
    spec, cfg, cadence = _task(seed, spec_json, initial)
    policy = ActorCritic(policy_shape(spec)) if policy_ckpt is None else ActorCritic.from_checkpoint(policy_ckpt)
    residual = None if base is None else Residual(policy, spec.hparams, Schedule.from_name(base))
    demo = relabel(cfg, policy, spec.hparams, Schedule.from_name(target), device=spec.device, data_dir=spec.data_dir,
                   max_valid=spec.meta_train.max_valid, cadence=cadence,
                   follow=None if follow is None else Schedule.from_name(follow), residual=residual)  # fmt: skip
    return j, {"seed": seed, "demo": demo.to_data()}


def _run_jobs(fn: Any, jobs: list[tuple], directory: Path, workers: int, desc: str, quiet: bool,
              found: dict[int, Demonstration]) -> None:  # fmt: skip
    """Run ``fn`` over ``jobs`` (``(j, ...)`` tuples), saving each result as ``directory/j.pt`` as it
    finishes (a kill loses only the running ones) and adding it to ``found``."""
    directory.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc=desc, unit="task", disable=quiet)
    try:
        for _job, (j, data) in each_finished(fn, jobs, workers):  # spawned workers die with this process
            save_checkpoint(data, directory / f"{j:05d}.pt")
            found[j] = Demonstration.from_data(data["demo"])
            bar.set_postfix_str(f"{found[j].family} {found[j].target}")
            bar.update()
    finally:
        bar.close()


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


@dataclass(frozen=True)
class _Run:
    """One run's fixed facts: its settings, where its files go and which tasks it demonstrates on."""

    spec: ExperimentSpec
    settings: ImitationSettings
    dir: Path
    suffix: str  # "" or "-default": demonstrations from the two kinds of initial values are never mixed
    seeds: dict[int, int]  # task index -> task seed
    spec_json: str  # what the workers rebuild the spec from

    @property
    def key(self) -> str:
        """The demonstrations' kind and number, on which every later file depends."""
        return f"{self.suffix}-{self.settings.tasks}"

    def jobs(self, fn: Any, jobs: list[tuple], directory: Path, desc: str, found: dict[int, Demonstration]) -> None:
        _run_jobs(fn, jobs, directory, self.settings.workers, desc, self.settings.quiet, found)

    def follow(self, directory: Path, labels: Mapping[int, str]) -> dict[int, Demonstration]:
        """Each task's follower of its label in ``labels`` (a :data:`~lhopt_dsl.agent.imitation.Follower`),
        run into ``directory`` unless a killed run already left it there."""
        done = _load_demos(directory, self.seeds) if directory.exists() else {}
        jobs = [(j, self.seeds[j], self.spec_json, None, t, self.settings.initial, t, None) for j, t in labels.items()
                if j not in done]  # fmt: skip
        self.jobs(_relabel_job, jobs, directory, "following the new labels", done)
        return {j: done[j] for j in labels}


def imitate(spec: ExperimentSpec, settings: ImitationSettings, spec_path: str | None = None) -> Path:
    """Collect the demonstrations still missing, clone them into a new policy, return its path.

    SIGTERM unwinds like Ctrl-C (the worker pool is terminated with it); finished demonstrations stay."""
    with terminate_as_interrupt():
        return _imitate(spec, settings, spec_path)


def _imitate(spec: ExperimentSpec, settings: ImitationSettings, spec_path: str | None) -> Path:
    run = _prepare(spec, settings)
    labelling, residual = _labelling(run)  # before the demonstrations: a bad setting fails now
    first = _collect(run)  # the best followers' episodes, which the summary describes
    demos = labelling.label(first)
    name = labelling.tag + ("" if settings.clone_seed is None else f"-c{settings.clone_seed}")
    clone_seed = spec.seed if settings.clone_seed is None else settings.clone_seed
    model, rounds, relabelled = _clone_rounds(run, demos, name, clone_seed)
    summary = summarise([first[j] for j in sorted(first)])
    summary.update(labelling.summary())
    summary["labels"] = dict(Counter(demos[j].target for j in sorted(demos)).most_common())
    summary["dagger_seconds"] = float(sum(d.seconds for d in relabelled if math.isfinite(d.seconds)))
    values = {"tasks": settings.tasks, "lrs": list(settings.lrs), "shapes": list(settings.shapes),
              "epochs": settings.epochs, "dagger": settings.dagger, "initial": settings.initial,
              "margin": settings.margin, "tie": None, "soft": None, "clone_seed": clone_seed, "base": settings.base}  # fmt: skip
    record = {"metrics": rounds[-1], "rounds": rounds, "summary": summary, **{k: values[k] for k in RECORDED}}
    path = run.dir / f"imitation{run.suffix}{name}.pt"
    data = {"policy": model.to_checkpoint(), "spec": spec.model_dump(mode="json"), "imitation": record}
    if residual is not None:
        data["residual"] = residual.to_data()
    save_checkpoint(data, path)
    _track(run, record, path, spec_path)
    if not settings.quiet:
        print(report(summary, rounds[-1]))
    return path


def _prepare(spec: ExperimentSpec, settings: ImitationSettings) -> _Run:
    """The run's directory and task seeds, after the checks that would otherwise fail in a worker."""
    Follow(default_targets(settings.lrs, settings.shapes), spec.hparams)  # fails now, not in a worker
    if settings.initial not in INITIAL_CHOICES:
        raise ValueError(f"initial must be one of {', '.join(INITIAL_CHOICES)}, got {settings.initial!r}")
    run_dir = settings.run_dir or Path(spec.meta_train.run_dir) / f"{spec.name}-imitation"
    suffix = "" if settings.initial == "noisy" else f"-{settings.initial}"
    seeds = {j: train_seed(spec.seed, IMITATION_KEY, j) for j in range(settings.tasks)}
    return _Run(spec, settings, run_dir, suffix, seeds, spec.model_dump_json())


def _labelling(run: _Run) -> tuple[Labelling, Residual | None]:
    """The settings' labelling, chosen once, and the residual wrapper of the policy where it is one."""
    s = run.settings
    labelling: Labelling = BestOfTask()
    if s.margin is not None:  # the switched followers' runs depend on the labels alone
        agreed = Consensus(s.margin, lambda labels: run.follow(run.dir / f"consensus{run.key}{agreed.tag}", labels))
        labelling = agreed
    if s.base is None:
        return labelling, None
    residual = Residual(ActorCritic(policy_shape(run.spec)), run.spec.hparams, Schedule.from_name(s.base))

    def initial_lr(j: int) -> float:
        return sample(run.spec, run.seeds[j], initial=s.initial).hparams.lr

    return ResidualOffsets(labelling, residual, initial_lr), residual


def _collect(run: _Run) -> dict[int, Demonstration]:
    """Every task's demonstration: those a killed run left, and the rest, run now."""
    demo_dir = run.dir / f"demos{run.suffix}"
    demo_dir.mkdir(parents=True, exist_ok=True)
    demos = _load_demos(demo_dir, run.seeds)
    todo = [j for j in run.seeds if j not in demos]
    if demos:
        print(f"{len(demos)} demonstrations already in {demo_dir}; {len(todo)} to run")
    s = run.settings
    jobs = [(j, run.seeds[j], run.spec_json, tuple(s.lrs), tuple(s.shapes), s.initial) for j in todo]
    run.jobs(_demo_job, jobs, demo_dir, "demonstrations", demos)
    return demos


def _clone_rounds(run: _Run, demos: dict[int, Demonstration], name: str,
                  seed: int) -> tuple[ActorCritic, list[dict[str, float]], list[Demonstration]]:  # fmt: skip
    """Clone ``demos``, then DAgger's rounds: the policy's own episodes on the same tasks, labelled
    by each task's label, and a cloning of everything so far. Returns the last policy, each
    cloning's metrics and the relabelled episodes."""
    s = run.settings
    ordered = [demos[j] for j in sorted(demos)]
    model, metrics = _clone(ordered, run.spec, seed, s.epochs)
    rounds, relabelled = [metrics], []
    for r in range(1, s.dagger + 1):  # keyed by what decides every round's policy: the labels and the seed
        round_dir = run.dir / f"dagger{run.key}{name}" / f"round{r}"
        done = _load_demos(round_dir, run.seeds) if round_dir.exists() else {}
        ckpt = model.to_checkpoint()
        jobs = [(j, run.seeds[j], run.spec_json, ckpt, demos[j].target, s.initial, None, s.base)
                for j in sorted(demos) if j not in done]  # fmt: skip
        run.jobs(_relabel_job, jobs, round_dir, f"DAgger round {r}", done)
        relabelled += [done[j] for j in sorted(done)]
        model, metrics = _clone(ordered + relabelled, run.spec, seed, s.epochs)
        rounds.append(metrics)
    return model, rounds, relabelled


def _track(run: _Run, record: dict[str, Any], path: Path, spec_path: str | None) -> None:
    """Log the run to MLflow and register its policy, as meta-training's are."""
    spec = run.spec
    tracker = Tracker(run.settings.tracking_uri or spec.tracking.uri, spec.tracking.experiment,
                      f"{spec.name}-imitation", run.dir)  # fmt: skip
    tracker.log_params({"spec": spec.model_dump(mode="json"), "imitation": {k: record[k] for k in RECORDED}})
    for r, m in enumerate(record["rounds"]):  # step r: after r rounds of DAgger
        tracker.log_metrics(m, step=r)
    tracker.log_metrics({f"demos/{k}": v for k, v in record["summary"].items() if isinstance(v, float)}, step=0)
    if spec_path:
        tracker.log_artifact(spec_path, "spec")
    tracker.log_policy(path, spec.tracking.registered_model)
    tracker.end()


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
