"""Evaluation of a policy against tuned baselines on held-out tasks (paper Section 4.1): running it.

    lhopt eval SPEC --policy P [--tasks N] [--workers W] [--score test|valid] [--initial default|noisy]

Held-out tasks are sampled from the spec's evaluation distribution (``evaluation.tasks``, else the
training one) with seeds from the evaluation namespace, which is disjoint from every training
seed, and start from the space's default initial hyperparameters (``--initial noisy``: Table 8's
noise, as in meta-training). On each task the policy runs for T steps (greedy actions), and the 35
AdamW baselines run at T and 2T steps on exactly the same task, weights and data order, plus
Schedule-Free AdamW and Prodigy at their defaults.

Every run is *scored* on the task's test split, which nothing in a run observes (the policy sees
training and validation losses and may restart from checkpoints chosen on them); validation scores
are stored too (``--score valid`` reports them).

Cost and resuming: the baselines do not depend on the policy, so they live in a cache that
survives between evaluations (an Optuna RDB storage, by default ``<run_dir>/baselines.db``; see
``runners/baselines.py``): evaluating a second policy on the same tasks runs only the policy. Each
finished task is written to ``<out>/tasks/`` at once, so a killed evaluation resumes where it
stopped; ``--workers N`` spreads the tasks over N processes.

The other parts of an evaluation live beside this one: the task record (:mod:`runners.records`),
the tables and summaries (:mod:`runners.report`), the plots (:mod:`runners.plots`) and comparing
finished evaluations (:mod:`runners.compare`). Their public names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from lhopt_dsl import ExperimentSpec, TaskConfig, table1_row
from lhopt_dsl.agent.actor import Actor
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.residual import FixedSchedule
from lhopt_dsl.agent.rollout import Episode, run_episode
from lhopt_dsl.controller import load_policy
from lhopt_dsl.spec.hparams import HyperparameterSpace
from lhopt_dsl.spec.sample import EVAL_SEEDS, INITIAL_CHOICES, TASK_SETS, sample
from lhopt_dsl.spec.schedule import LearningCurve
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES, BASELINES, HORIZONS, TUNING_FREE

from .baselines import prepare_studies, run_grid
from .jobs import each_finished, write_json
from .records import RECORD_VERSION, SCORES, EvaluationError
from .report import report
from .tracking import Tracker

# importable from here, as before reporting and comparing had modules of their own
from .compare import best_of, compare_outputs, first_difference, format_comparison, load_output  # noqa: F401
from .compare import where_it_acts_differently  # noqa: F401
from .records import task_scores  # noqa: F401
from .report import summarise  # noqa: F401


def eval_config(spec: ExperimentSpec, index: int, initial: str = "default", task_set: str = "dev") -> TaskConfig:
    """The ``index``-th held-out task of ``task_set`` (``dev`` or ``test``); its seed is checked to
    lie in the evaluation namespace."""
    if task_set not in TASK_SETS:
        raise EvaluationError(f"the task set must be one of {', '.join(TASK_SETS)}; got '{task_set}'")
    seed = TASK_SETS[task_set](spec.seed, index)
    if seed not in EVAL_SEEDS:
        raise AssertionError(f"evaluation seed {seed} outside the evaluation namespace")
    return sample(spec, seed, spec.evaluation.tasks, initial=initial)


# --- one task ---------------------------------------------------------------------------------------


def _curve(c: LearningCurve) -> dict[str, Any]:
    return {"steps": [int(s) for s in c.steps], "valid": list(c.valid_loss), "test": list(c.test_curve)}


def _final(c: LearningCurve, score: str) -> float:
    losses = c.losses(score)
    return float(losses[-1]) if losses else math.nan


def _best_adamw(curves: dict[tuple[str, int], LearningCurve], score: str) -> str:
    finals = {n: _final(curves[(n, 1)], score) for n in ADAMW_BASELINES}
    return min(finals, key=lambda n: (finals[n] if math.isfinite(finals[n]) else math.inf, n))


def policy_run(policy: Actor[Any], space: HyperparameterSpace, cfg: TaskConfig, *, device: str = "cpu",
               data_dir: str | None = None, max_valid: int = 512, seed: int = 0) -> Episode:  # fmt: skip
    """The policy (any :class:`~lhopt_dsl.agent.actor.Actor`) acting greedily on ``cfg``, as evaluation
    runs it; the critic is not run. ``seed``: the run's seed as the actor is told it
    (:class:`~lhopt_dsl.agent.actor.Run`; evaluation passes the task's index). A task from another
    hyperparameter space than the policy's is a ValueError."""
    space.check_initial(cfg.hparams)
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    return run_episode(env, cfg, policy, log_improvement_reward, deterministic=True, seed=seed)


def evaluate_task(
    cfg: TaskConfig, index: int, policy: Actor[Any], space: HyperparameterSpace, *, storage: str, device: str, data_dir: str | None,
    max_valid: int, compiled: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run the policy and the baseline grid on one task; return the task's record (plain JSON data).

    The record holds every method's final validation and test losses at T and 2T, the T-run curves
    that speedups read (the best AdamW baseline by each score, and the tuning-free optimizers),
    the policy's validation curve and chosen hyperparameters, and what the task cost.
    """
    t0 = time.perf_counter()
    episode = policy_run(policy, space, cfg, device=device, data_dir=data_dir, max_valid=max_valid, seed=index)
    t1 = time.perf_counter()
    ran: list[tuple[str, int]] = []
    curves = run_grid(cfg, storage, names=BASELINES, horizons=HORIZONS, device=device, data_dir=data_dir,
                      max_valid=max_valid, compiled=compiled, progress=lambda d, n, pair, c: ran.append(pair))  # fmt: skip
    t2 = time.perf_counter()
    keep = dict.fromkeys([*(_best_adamw(curves, s) for s in SCORES), *TUNING_FREE])
    return {
        "version": RECORD_VERSION,
        "index": index,
        "task_id": cfg.task_id,
        "row": table1_row(cfg),
        "family": cfg.family,
        "T": int(cfg.task.inner_steps),
        "outer_steps": int(cfg.task.outer_steps),
        "config": cfg.to_yaml(),
        "policy": {
            "valid": float(episode.valid_curve[-1]),
            "test": episode.test_loss,
            "valid_curve": list(episode.valid_curve),
            "hparams": episode.hparams,
            "restarts": [list(r) for r in episode.restarts],
        },
        "finals": {n: {str(h): {s: _final(curves[(n, h)], s) for s in SCORES} for h in HORIZONS} for n in BASELINES},
        "curves_T": {n: _curve(curves[(n, 1)]) for n in keep},
        "seconds": {"policy": round(t1 - t0, 3), "baselines": round(t2 - t1, 3)},
        "pairs": {"run": len(ran), "cached": len(curves) - len(ran)},
    }


# --- many tasks, resumably, over processes -------------------------------------------------------------

_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class PolicyFile:
    """A policy file to evaluate, as :class:`~lhopt_dsl.agent.residual.FixedSchedule` is a schedule to
    evaluate: plain data that travels to worker processes, each of which loads its actor."""

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def stem(self) -> str:
        """How output directories name it: the first 8 hex digits of its sha256."""
        return self.digest()[:8]

    def digest(self) -> str:
        return _sha256(self.path)

    def load(self) -> tuple[Actor[Any], HyperparameterSpace]:
        return load_policy(self.path)


Source = PolicyFile | FixedSchedule  # what an evaluation evaluates


def _init_worker(source: Source, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["policy"] = source.load()


def _work(job: dict[str, Any]) -> dict[str, Any]:
    policy, space = _WORKER["policy"]
    cfg = TaskConfig.from_yaml(job.pop("config"))
    return evaluate_task(cfg, job.pop("index"), policy, space, **job)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("set", "dev")  # written before the test set existed: dev tasks
        changed = [k for k in ("policy_sha256", "spec", "initial", "max_valid", "set") if old.get(k) != manifest[k]]
        # written when `lhopt eval --decode mean|sample` existed: only greedy acting resumes
        if old.get("decode", "greedy") != "greedy":
            changed.append("decode")
            manifest = {**manifest, "decode": "greedy"}
        if changed:
            raise EvaluationError(
                f"{out} holds an evaluation with another {', '.join(changed)} "
                f"({', '.join(f'{k}: {old.get(k)!r} -> {manifest[k]!r}' for k in changed)}); "
                "pass another --out, or --fresh to discard those results (cached baselines are kept)"
            )
    write_json(path, manifest)


def load_records(out: Path, configs: list[TaskConfig]) -> dict[int, dict[str, Any]]:
    """The finished tasks under ``out/tasks`` that match ``configs`` (by index and task id)."""
    done: dict[int, dict[str, Any]] = {}
    for i, cfg in enumerate(configs):
        path = out / "tasks" / f"{i:05d}.json"
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # a torn write of an older version: redo the task
        if record.get("version") != RECORD_VERSION:
            continue
        if record.get("task_id") != cfg.task_id:
            raise EvaluationError(f"{path} is task {record.get('task_id')}, but the spec's task {i} is {cfg.task_id}: "
                                  "the evaluation distribution changed; pass another --out or --fresh")  # fmt: skip
        done[i] = record
    return done


def evaluate_tasks(
    configs: list[TaskConfig], policy_path: Path | Source, out: Path, *, storage: str, device: str, data_dir: str | None,
    max_valid: int, compiled: bool, workers: int, threads: int, quiet: bool,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Evaluate every task not yet under ``out/tasks``; return all records in task order."""
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    records = load_records(out, configs)
    todo = [i for i in range(len(configs)) if i not in records]
    jobs = [{"config": configs[i].to_yaml(), "index": i, "storage": storage, "device": device, "data_dir": data_dir,
             "max_valid": max_valid, "compiled": compiled} for i in todo]  # fmt: skip
    bar = tqdm(total=len(configs), initial=len(records), desc="evaluate", unit="task", disable=quiet)

    def finished(record: dict[str, Any]) -> None:
        write_json(out / "tasks" / f"{record['index']:05d}.json", record)
        records[record["index"]] = record
        bar.set_postfix_str(f"{record['row']} {record['seconds']['policy'] + record['seconds']['baselines']:.0f}s")
        bar.update()
        if on_record is not None:
            on_record(record)

    try:
        if workers > 1 and len(jobs) > 1:  # the schema and the studies first: workers creating them at once would race
            prepare_studies(storage, [configs[i] for i in todo])
        for _job, record in each_finished(_work, jobs, workers, _init_worker, (_source(policy_path), threads)):
            finished(record)
    finally:
        bar.close()
    return [records[i] for i in range(len(configs))]


# --- lhopt eval ---------------------------------------------------------------------------------------


def _source(policy: Path | str | Source) -> Source:
    """A policy file's path as the :class:`PolicyFile` to evaluate; a source as it is."""
    return PolicyFile(Path(policy)) if isinstance(policy, (str, os.PathLike)) else policy


def manifest_of(spec: ExperimentSpec, policy: Path | Source, *, initial: str, task_set: str, storage: str,
                out: Path) -> dict[str, Any]:  # fmt: skip
    """What an evaluation directory's ``manifest.json`` says: what was evaluated (and its digest), on
    which tasks, from which initial values, against which baseline cache."""
    name, digest = _identity(_source(policy))
    return {"policy": name, "policy_sha256": digest, "spec": spec.name, "initial": initial, "set": task_set,
            "max_valid": spec.meta_train.max_valid, "device": spec.device, "storage": storage, "out": str(out)}


def _identity(source: Source) -> tuple[str, str]:
    """What was evaluated and its digest: a policy file's sha256, or the sha256 of a fixed schedule's name."""
    return source.name, source.digest()


def default_out(spec: ExperimentSpec, policy_path: Path | Source, task_set: str = "dev") -> Path:
    """``<run_dir>/eval-<spec name>-<first 8 hex digits of the policy file's sha256>``, or
    ``eval-<spec name>-schedule-<name>`` for a fixed schedule; then ``-test`` on the test set."""
    suffix = "" if task_set == "dev" else f"-{task_set}"
    return Path(spec.meta_train.run_dir) / f"eval-{spec.name}-{_source(policy_path).stem}{suffix}"


def default_storage(spec: ExperimentSpec) -> str:
    """The baseline cache shared by every evaluation from this working directory (created if needed)."""
    run_dir = Path(spec.meta_train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(run_dir / 'baselines.db').resolve()}"


def _check_choices(score: str, initial: str, task_set: str) -> None:
    for option, value, choices in (("--score", score, SCORES), ("--initial", initial, INITIAL_CHOICES),
                                   ("--set", task_set, tuple(TASK_SETS))):  # fmt: skip
        if value not in choices:
            raise EvaluationError(f"{option} must be one of {', '.join(choices)}; got '{value}'")


def _prepare_out(out: Path, manifest: dict[str, Any], fresh: bool) -> None:
    """Create ``out`` and write its manifest, having checked that it holds the same evaluation if any;
    ``fresh``: discard the finished tasks there instead, whatever evaluation they belong to."""
    if fresh and (out / "tasks").exists():
        for f in (out / "tasks").glob("*.json"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        write_json(out / "manifest.json", manifest)
    else:
        _check_manifest(out, manifest)


def run(spec: ExperimentSpec, policy_path: Path | Source, *, num_tasks: int, storage: str | None, out: Path | None,
        tracking_uri: str | None, score: str = "test", initial: str = "default", workers: int = 1, threads: int = 1,
        fresh: bool = False, quiet: bool = False, task_set: str = "dev") -> dict[str, Any]:  # fmt: skip
    """Evaluate (or resume) and report; returns the summary (also written to ``out/results.json``).

    ``task_set``: ``dev`` (the held-out tasks that choose designs and checkpoints) or ``test`` (the
    frozen tasks drawn under a key of their own, run once per final candidate; they choose nothing).

    ``policy_path``: a policy file, or a :class:`~lhopt_dsl.agent.residual.FixedSchedule` evaluated in
    its place (the baseline a learned policy must beat). Either acts greedily."""
    _check_choices(score, initial, task_set)
    source = _source(policy_path)
    try:  # fail here, not in a worker, on a missing or broken file
        source.load()
    except ValueError as e:
        raise EvaluationError(str(e)) from e
    out = Path(out or default_out(spec, source, task_set))
    storage = storage or default_storage(spec)
    manifest = manifest_of(spec, source, initial=initial, task_set=task_set, storage=storage, out=out)
    _prepare_out(out, manifest, fresh)
    configs = [eval_config(spec, i, initial, task_set) for i in range(num_tasks)]

    tracker = Tracker(tracking_uri or spec.tracking.uri, spec.tracking.experiment, f"eval-{spec.name}", out)
    tracker.log_params({"policy": manifest["policy"], "policy_sha256": manifest["policy_sha256"][:12], "num_tasks": num_tasks, "spec": spec.name,
                        "storage": storage, "score": score, "initial": initial, "set": task_set,
                        "workers": workers})  # fmt: skip
    t0 = time.perf_counter()
    records = evaluate_tasks(configs, source, out, storage=storage, device=spec.device, data_dir=spec.data_dir,
                             max_valid=spec.meta_train.max_valid, compiled=spec.evaluation.compile, workers=workers,
                             threads=threads, quiet=quiet)  # fmt: skip
    return report(records, out, tracker, manifest=manifest, score=score, wall=time.perf_counter() - t0,
                  workers=workers)  # fmt: skip
