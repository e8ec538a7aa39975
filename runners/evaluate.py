"""Evaluation of a policy against tuned baselines on held-out tasks (paper Section 4.1).

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
"""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from lhopt_dsl import TABLE1_ROWS, ExperimentSpec, TaskConfig, table1_row
from lhopt_dsl.baselines import ADAMW_BASELINES, BASELINES, HORIZONS, TUNING_FREE
from lhopt_dsl.controller import load_policy
from lhopt_dsl.actor import Actor
from lhopt_dsl.decoding import DECODINGS, decoded
from lhopt_dsl.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.residual import FixedSchedule
from lhopt_dsl.spec.hparams import HyperparameterSpace
from lhopt_dsl.schedule import LearningCurve, segment_bounds
from lhopt_dsl.metrics import (
    TaskScores, evaluation_summary, format_estimate, format_summary, head_to_head, paired_comparison,
    performance_profile, plot_performance_profile, render_table,
)  # fmt: skip
from lhopt_dsl.rollout import Episode, run_episode
from lhopt_dsl.sample import EVAL_SEEDS, INITIAL_CHOICES, TASK_SETS, sample

from .baselines import prepare_studies, run_grid
from .lifeline import process_pool
from .tracking import Tracker

SCORES: tuple[str, ...] = ("test", "valid")
RECORD_VERSION = 1  # of the per-task files under <out>/tasks/


class EvaluationError(ValueError):
    """An evaluation that cannot go on as asked (the message says what to do)."""


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


def _unfloat(x: float | None) -> float:
    """A float read back from strict JSON, where non-finite values were stored as null."""
    return math.nan if x is None else float(x)


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
    """The policy (any :class:`~lhopt_dsl.actor.Actor`) acting greedily on ``cfg``, as evaluation
    runs it; the critic is not run. ``seed``: the run's own seed (a sampling decoding draws from
    it; evaluation passes the task's index). A task from another hyperparameter space than the
    policy's is a ValueError."""
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


def task_scores(record: dict[str, Any], score: str) -> TaskScores:
    """The metrics' view of a task record on one scoring split."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got '{score}'")
    finals = record["finals"]
    at = lambda h: {n: _unfloat(finals[n][h][score]) for n in finals}  # noqa: E731
    curves = {n: (c["steps"], [_unfloat(x) for x in c[score]]) for n, c in record["curves_T"].items()}
    return TaskScores(record["task_id"], record["row"], record["T"], _unfloat(record["policy"][score]),
                      at("1"), at("2"), curves)  # fmt: skip


def summarise(records: list[dict[str, Any]], score: str = "test", *, resamples: int = 2000) -> dict[str, Any]:
    """Table 1 rows and per-task comparisons with intervals, plus the final losses of every method."""
    scores = [task_scores(r, score) for r in records]
    summary = evaluation_summary(scores, ADAMW_BASELINES, TUNING_FREE, TABLE1_ROWS, resamples=resamples)
    methods: dict[str, dict[str, float]] = {"policy": {}, "best AdamW": {}, "median AdamW": {}}
    methods.update({m: {} for m in TUNING_FREE})
    for t in scores:
        grid = np.asarray([t.at_T[n] if math.isfinite(t.at_T[n]) else np.inf for n in ADAMW_BASELINES])
        methods["policy"][t.task_id] = t.policy
        methods["best AdamW"][t.task_id] = float(grid.min())
        methods["median AdamW"][t.task_id] = float(np.median(grid))
        for m in TUNING_FREE:
            methods[m][t.task_id] = t.at_T[m]
    summary["final_losses"] = methods
    summary["score"] = score
    return summary


# --- many tasks, resumably, over processes -------------------------------------------------------------

_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class PolicyFile:
    """A policy file to evaluate, as :class:`~lhopt_dsl.residual.FixedSchedule` is a schedule to
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


def _init_worker(source: Source, threads: int, decode: str = "greedy") -> None:
    import torch

    torch.set_num_threads(threads)
    actor, space = source.load()
    _WORKER["policy"] = (decoded(actor, space, decode), space)


def _work(job: dict[str, Any]) -> dict[str, Any]:
    policy, space = _WORKER["policy"]
    cfg = TaskConfig.from_yaml(job.pop("config"))
    return evaluate_task(cfg, job.pop("index"), policy, space, **job)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _strict(obj: Any) -> Any:
    """Plain JSON: non-finite floats become null (NaN is not JSON; other tools reject it)."""
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically: a reader (or a killed run) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_strict(data), indent=1))
    os.replace(tmp, path)


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("decode", "greedy")  # written before decodings were recorded: greedy
        old.setdefault("set", "dev")  # written before the test set existed: dev tasks
        changed = [k for k in ("policy_sha256", "spec", "initial", "max_valid", "decode", "set")
                   if old.get(k) != manifest[k]]
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
    on_record: Callable[[dict[str, Any]], None] | None = None, decode: str = "greedy",
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
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(_source(policy_path), threads, decode)
            for job in jobs:
                finished(_work(job))
        else:
            # The schema and the studies first: workers creating them at once would race.
            prepare_studies(storage, [configs[i] for i in todo])
            # spawned workers that die with this process, however it ends
            with process_pool(workers, _init_worker, (_source(policy_path), threads, decode)) as pool:
                futures = [pool.submit(_work, job) for job in jobs]
                try:
                    for fut in cf.as_completed(futures):
                        finished(fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return [records[i] for i in range(len(configs))]


# --- comparing finished evaluations ---------------------------------------------------------------------


def load_output(out: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """An evaluation directory's manifest and its finished task records, by task index."""
    out = Path(out)
    if not (out / "manifest.json").exists():
        raise EvaluationError(f"{out} is not an evaluation directory (no manifest.json): "
                              "pass an output directory of lhopt eval (its --out)")
    manifest = json.loads((out / "manifest.json").read_text())
    records: dict[int, dict[str, Any]] = {}
    # *.json as lhopt eval writes them; *.json.gz as published under results/evaluations/
    for path in sorted([*(out / "tasks").glob("*.json"), *(out / "tasks").glob("*.json.gz")]):
        try:
            text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            record = json.loads(text)
        except (json.JSONDecodeError, gzip.BadGzipFile, EOFError, UnicodeDecodeError):
            continue  # a torn write: that task is unfinished
        if not (isinstance(record, dict) and record.get("version") == RECORD_VERSION):
            continue  # another version's record: not comparable
        try:
            task_scores(record, "test"), task_scores(record, "valid")
            records[int(record["index"])] = record
        except (KeyError, TypeError, ValueError) as e:
            raise EvaluationError(f"{path} is not a task record of lhopt eval ({type(e).__name__}: {e})") from None
    return manifest, records


def _load_common(outs: list[Path]) -> tuple[list[tuple[dict[str, Any], dict[int, dict[str, Any]]]], list[int], list[str]]:
    """Finished evaluations, the indices of the tasks all of them finished (checked to be the same
    tasks, from the same initial hyperparameters), and a distinct label for each."""
    loaded = [load_output(o) for o in outs]
    sets = {m.get("set", "dev") for m, _ in loaded}
    if len(sets) > 1:
        raise EvaluationError(f"the evaluations ran on different task sets ({', '.join(sorted(sets))}): "
                              "compare dev with dev and test with test (lhopt eval --set)")  # fmt: skip
    initial = {m.get("initial") for m, _ in loaded}
    if len(initial) > 1:
        raise EvaluationError(f"the evaluations started from different initial hyperparameters "
                              f"({', '.join(sorted(map(str, initial)))}): "
                              "compare evaluations run with the same --initial")  # fmt: skip
    common = sorted(set.intersection(*(set(r) for _, r in loaded)))
    for i in common:
        ids = {r[i]["task_id"] for _, r in loaded}
        if len(ids) > 1:
            raise EvaluationError(f"task {i} is not the same task in every directory ({', '.join(sorted(ids))}): "
                                  "these evaluations sampled different distributions")  # fmt: skip
    if not common:
        raise EvaluationError("the evaluations have no finished task in common")
    labels = [Path(o).name or str(o) for o in outs]
    if len(set(labels)) < len(labels):
        labels = [str(o) for o in outs]
    return loaded, common, labels


def best_of(outs: list[Path], out: Path, *, by: str = "valid", score: str = "test", resamples: int = 2000,
            quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Per task, the record of whichever evaluation in ``outs`` ends with the lowest final ``by``
    loss, written to ``out`` as an evaluation of its own (``lhopt compare`` and the tables read it).

    With ``by="valid"`` this is the method chosen per task on its validation split, as the best
    AdamW run is: run with ``lhopt eval --schedule NAME`` for each of a set of schedules, it is that
    set tuned per task, the ceiling of a policy that imitates the set perfectly. ``by="test"``
    chooses on the split it is scored on (an optimistic bound, not a result). Only the tasks every
    evaluation finished are kept; ``out`` may hold only an earlier result of this function."""
    if by not in SCORES or score not in SCORES:
        raise EvaluationError(f"--by and --score must be one of {', '.join(SCORES)}; got '{by}', '{score}'")
    if len(outs) < 2:
        raise EvaluationError("best-of needs at least two evaluation directories")
    out = Path(out)
    if (out / "manifest.json").exists() and "best_of" not in json.loads((out / "manifest.json").read_text()):
        raise EvaluationError(f"{out} holds an evaluation of lhopt eval; pass another --out")
    loaded, common, labels = _load_common(outs)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for f in (out / "tasks").glob("*.json"):  # an earlier selection's, perhaps from other directories
        f.unlink()
    chosen = dict.fromkeys(labels, 0)
    records = []
    for i in common:
        options = [r[i] for _, r in loaded]
        finals = [_unfloat(o["policy"][by]) for o in options]
        k = min(range(len(options)), key=lambda j: (finals[j] if math.isfinite(finals[j]) else math.inf, j))
        record = {**options[k], "selected_from": labels[k]}
        chosen[labels[k]] += 1
        write_json(out / "tasks" / f"{i:05d}.json", record)
        records.append(record)
    first = loaded[0][0]
    digest = hashlib.sha256(" ".join(sorted(str(m.get("policy_sha256")) for m, _ in loaded)).encode()).hexdigest()
    manifest = {"policy": f"best of {len(outs)} by {by} loss", "policy_sha256": digest, "spec": first.get("spec"),
                "initial": first.get("initial"), "decode": "greedy", "set": first.get("set", "dev"),
                "max_valid": first.get("max_valid"),
                "out": str(out), "best_of": {"by": by, "evaluations": [
                    {"dir": str(o), "policy": m.get("policy"), "chosen": chosen[label]}
                    for o, (m, _), label in zip(outs, loaded, labels)]}}  # fmt: skip
    write_json(out / "manifest.json", manifest)
    summary = summarise(records, score, resamples=resamples)
    summary["manifest"] = manifest
    (out / "table1.md").write_text(f"Per task the evaluation with the lowest final {by} loss, of {len(outs)}; "
                                   f"scored on the {score} split.\n\n{format_summary(summary, markdown=True)}\n")
    write_json(out / "results.json", summary)
    if not quiet:
        print(f"\n{len(records)} tasks finished in every evaluation; per task the one with the lowest final {by} loss, "
              f"scored on the {score} split\n")
        print(format_summary(summary))
        top = sorted(chosen.items(), key=lambda kv: -kv[1])
        print("\nchosen: " + ", ".join(f"{label} {n}" for label, n in top if n))
    return summary


def compare_outputs(outs: list[Path], score: str = "test", *, resamples: int = 2000) -> dict[str, Any]:
    """Every evaluation in ``outs`` against the first, on the tasks all of them finished.

    The tasks must be the same ones (same index, same task id, same initial hyperparameters):
    evaluations of one spec's evaluation distribution, or of specs that share it."""
    if len(outs) < 2:
        raise EvaluationError("compare needs at least two evaluation directories (the first is the reference)")
    if score not in SCORES:
        raise EvaluationError(f"--score must be one of {', '.join(SCORES)}; got '{score}'")
    loaded, common, labels = _load_common(outs)
    scores = [[task_scores(r[i], score) for i in common] for _, r in loaded]
    methods = {}
    for label, (manifest, _), ts in zip(labels, loaded, scores):
        o = evaluation_summary(ts, ADAMW_BASELINES, resamples=resamples)["overall"]
        methods[label] = {"policy": manifest.get("policy"), "policy_sha256": manifest.get("policy_sha256"),
                          **{k: o[k] for k in ("pairs_ge_2x", "best_ge_1x", "speedup_median", "speedup_geomean")},
                          "failed": o["policy_failed"]}  # fmt: skip
    comparisons, by_row = {}, {}
    for label, ts in zip(labels[1:], scores[1:]):
        comparisons[label] = paired_comparison(scores[0], ts, ADAMW_BASELINES, resamples=resamples)
        rows = list(dict.fromkeys([*(r for r in TABLE1_ROWS if any(t.row == r for t in ts)), *(t.row for t in ts)]))
        by_row[label] = {r: head_to_head([x.policy for x in scores[0] if x.row == r],
                                         [y.policy for y in ts if y.row == r]) for r in rows}  # fmt: skip
    deviations = {label: where_it_acts_differently([loaded[0][1][i] for i in common], [r[i] for i in common], score)
                  for label, (_, r) in zip(labels[1:], loaded[1:])}  # fmt: skip
    return {"reference": labels[0], "score": score, "tasks": len(common), "task_indices": common,
            "finished": {label: len(r) for label, (_, r) in zip(labels, loaded)},
            "methods": methods, "comparisons": comparisons, "by_row": by_row, "deviations": deviations}  # fmt: skip


def _same_values(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal plain data, floats equal to ``rel`` (records pass through JSON)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_values(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_values(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        fa, fb = _unfloat(a), _unfloat(b)
        return (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=rel, abs_tol=0.0)
    return a == b


def first_difference(reference: dict[str, Any], candidate: dict[str, Any]) -> int | None:
    """The first decision at which ``candidate``'s run chose other hyperparameters (or another
    restart) than ``reference``'s on the same task, or None where it did exactly the same."""
    ref, cand = reference["policy"], candidate["policy"]
    steps = zip(ref["hparams"], cand["hparams"], ref.get("restarts", []), cand.get("restarts", []))
    for k, (h0, h1, r0, r1) in enumerate(steps):
        if not (_same_values(h0, h1) and _same_values(r0, r1)):
            return k
    if len(ref["hparams"]) != len(cand["hparams"]):
        return min(len(ref["hparams"]), len(cand["hparams"]))
    return None


def where_it_acts_differently(reference: list[dict[str, Any]], candidate: list[dict[str, Any]],
                              score: str = "test") -> dict[str, Any]:  # fmt: skip
    """By Table 1 row: on how many tasks the candidate's hyperparameters ever differ from the
    reference's, and the head-to-head of final losses where they differ and where they do not.

    With a fixed schedule as the reference this says whether a policy's wins come from where it
    leaves the schedule (they must: where it acts the same, the runs are the same runs)."""
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any], int | None]]] = {}
    for ref, cand in zip(reference, candidate):
        groups.setdefault(ref["row"], []).append((ref, cand, first_difference(ref, cand)))
    order = [r for r in TABLE1_ROWS if r in groups] + [r for r in groups if r not in TABLE1_ROWS]
    for row in [*order, "Overall"]:
        items = [x for r in order for x in groups[r]] if row == "Overall" else groups[row]
        loss = lambda rec: _unfloat(rec["policy"][score])  # noqa: E731
        differ = [(a, b) for a, b, k in items if k is not None]
        same = [(a, b) for a, b, k in items if k is None]
        firsts = sorted(k / max(a["outer_steps"], 1) for a, _, k in items if k is not None)
        rows[row] = {
            "tasks": len(items), "differ": len(differ),
            "first_difference_progress_median": float(np.median(firsts)) if firsts else math.nan,
            "where_different": head_to_head([loss(a) for a, _ in differ], [loss(b) for _, b in differ]),
            "where_same": head_to_head([loss(a) for a, _ in same], [loss(b) for _, b in same]),
        }  # fmt: skip
    return rows


def format_comparison(result: dict[str, Any], markdown: bool = False) -> str:
    """The comparison as three tables: each evaluation on the common tasks, each against the
    reference (paired), and the head-to-head by Table 1 row."""
    head1 = ["evaluation", "pairs >=2x", "<=best@T", "speedup median", "speedup geomean", "non-finite"]
    est = format_estimate
    body1 = [[label, est(m["pairs_ge_2x"]), est(m["best_ge_1x"]), est(m["speedup_median"], suffix="x"),
              est(m["speedup_geomean"], suffix="x"), str(m["failed"])]
             for label, m in result["methods"].items()]  # fmt: skip
    head2 = ["vs " + result["reference"], "lower / tie / higher loss", "sign test p", "median log loss ratio",
             "pairs >=2x diff", "<=best@T diff", "speedup geomean ratio"]  # fmt: skip
    body2 = []
    for label, c in result["comparisons"].items():
        h, sp = c["head_to_head"], c["speedup_log_ratio"]["difference"]
        ratio = "-" if not math.isfinite(sp["value"]) else est(
            {"value": math.exp(sp["value"]), "ci": [math.exp(x) for x in sp["ci"]]}, suffix="x")
        body2.append([label, f"{h['wins']} / {h['ties']} / {h['losses']}", f"{h['sign_test_p']:.3g}",
                      est(c["log_loss_ratio"], 3, signed=True), est(c["pairs_ge_2x"]["difference"], signed=True),
                      est(c["best_ge_1x"]["difference"], signed=True),
                      ratio])  # fmt: skip
    rows = list(dict.fromkeys(r for b in result["by_row"].values() for r in b))
    head3 = ["row: lower / tie / higher", *result["by_row"]]
    body3 = [[r, *(("{wins}/{ties}/{losses}".format(**b[r]) if r in b else "-") for b in result["by_row"].values())]
             for r in rows]  # fmt: skip
    tables = [(head1, body1), (head2, body2), (head3, body3)]
    for label, dev in result.get("deviations", {}).items():
        head4 = [f"{label} vs {result['reference']}: row", "tasks", "acts differently", "first difference (progress)",
                 "lower / tie / higher where different", "where the same"]  # fmt: skip
        h2h = "{wins} / {ties} / {losses}".format
        body4 = [[row, str(d["tasks"]), str(d["differ"]),
                  "-" if not math.isfinite(d["first_difference_progress_median"]) else
                  f"{d['first_difference_progress_median']:.2f}",
                  h2h(**d["where_different"]), h2h(**d["where_same"])] for row, d in dev.items()]  # fmt: skip
        tables.append((head4, body4))
    out = [render_table(h, b, markdown) for h, b in tables]
    finished = ", ".join(f"{k} {v}" for k, v in result["finished"].items())
    note = (f"{result['tasks']} tasks finished in every evaluation (finished: {finished}), scored on the "
            f"{result['score']} split. Lower / tie / higher: tasks where the evaluation's final loss is below, equal "
            f"to or above {result['reference']}'s; sign test: the chance of so uneven a split if neither were better. "
            "Differences (evaluation - reference) and ratios with 95% paired bootstrap intervals over tasks. "
            "Acts differently: tasks where its hyperparameters or restarts differ from the reference's at some "
            "decision (first difference: the median fraction of the run before it).")
    return "\n\n".join(out) + "\n\n" + note


# --- reporting ------------------------------------------------------------------------------------------


def _plots(records: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    score = summary["score"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for ax, r in zip(axes.flat, records[:6]):
        finals = {n: _unfloat(r["finals"][n]["1"][score]) for n in r["curves_T"] if n in ADAMW_BASELINES}
        best = min(finals, key=lambda n: finals[n] if math.isfinite(finals[n]) else math.inf)
        c = r["curves_T"][best]
        ax.plot(c["steps"], [_unfloat(x) for x in c["valid"]], "-", color="tab:blue", label=f"{best} (valid)")
        ax.plot(c["steps"], [_unfloat(x) for x in c["test"]], ":", color="tab:blue", label=f"{best} (test)")
        steps = segment_bounds(r["T"], len(r["policy"]["valid_curve"]) - 1)
        ax.plot(steps, [_unfloat(x) for x in r["policy"]["valid_curve"]], "k-", lw=2, label="policy (valid)")
        ax.plot([r["T"]], [_unfloat(r["policy"]["test"])], "k*", ms=12, label="policy (final test)")
        ax.set_yscale("log")
        ax.set_title(f"{r['row']} {r['task_id'][:8]}")
        ax.set_xlabel("inner step")
        ax.legend(fontsize=7)
    fig.suptitle(f"Policy vs the best AdamW baseline at T (best by {score} loss)")
    fig.tight_layout()
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=100)

    hps = [r["policy"]["hparams"] for r in records if r["policy"]["hparams"]]
    names = list(hps[0][0]) if hps else []
    fig, axes = plt.subplots(2, 4, figsize=(15, 7), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for h in hps:
            ax.plot(np.arange(len(h)) / len(h), [x[name] for x in h], alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("progress")
    fig.suptitle("Hyperparameters chosen by the policy")
    fig.tight_layout()
    paths.append(out / "hparams.png")
    fig.savefig(paths[-1], dpi=100)

    rows = [*summary["rows"].items(), ("Overall", summary["overall"])]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2), sharey=True)
    ys = np.arange(len(rows))[::-1]
    for ax, keys, xlabel in ((ax1, [("best_ge_1x", "<= best AdamW at T"), ("best_ge_2x", "<= best AdamW at 2T"),
                                    ("pairs_ge_1x", "pairs >=1x"), ("pairs_ge_2x", "pairs >=2x")], "fraction"),
                             (ax2, [("speedup_median", "median"), ("speedup_geomean", "geometric mean")],
                              "speedup vs the best AdamW baseline")):  # fmt: skip
        for j, (key, label) in enumerate(keys):
            v = np.asarray([r[key]["value"] for _, r in rows])
            lo = np.asarray([r[key]["ci"][0] for _, r in rows])
            hi = np.asarray([r[key]["ci"][1] for _, r in rows])
            off = (j - (len(keys) - 1) / 2) * 0.15
            ax.errorbar(v, ys + off, xerr=[v - lo, hi - v], fmt="o", capsize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax2.axvline(1.0, color="k", ls=":")
    ax1.set_yticks(ys, [f"{name} ({r['tasks']})" for name, r in rows])
    fig.suptitle(f"{summary['level']:.0%} bootstrap intervals over tasks ({score} loss)")
    fig.tight_layout()
    paths.append(out / "summary.png")
    fig.savefig(paths[-1], dpi=100)

    fig, ax = plt.subplots(figsize=(6, 4))
    values = [t["speedup"] for t in summary["tasks"]]
    ax.hist(values, bins=np.linspace(0, 2, 21), color="tab:blue", alpha=0.8)
    ax.axvline(1.0, color="k", ls=":")
    ax.set_xlabel("speedup vs the task's best AdamW baseline (censored at 2)")
    ax.set_ylabel("tasks")
    ax.set_title(f"median {summary['overall']['speedup_median']['value']:.2f}x over {len(values)} tasks")
    fig.tight_layout()
    paths.append(out / "speedups.png")
    fig.savefig(paths[-1], dpi=100)

    taus = np.logspace(0, 1, 60)
    fig = plot_performance_profile(performance_profile(summary["final_losses"], taus), taus)
    paths.append(out / "performance_profile.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close("all")
    return paths


def _source(policy: Path | str | Source) -> Source:
    """A policy file's path as the :class:`PolicyFile` to evaluate; a source as it is."""
    return PolicyFile(Path(policy)) if isinstance(policy, (str, os.PathLike)) else policy


def _identity(source: Source) -> tuple[str, str]:
    """What was evaluated and its digest: a policy file's sha256, or the sha256 of a fixed schedule's name."""
    return source.name, source.digest()


def default_out(spec: ExperimentSpec, policy_path: Path | Source, decode: str = "greedy",
                task_set: str = "dev") -> Path:  # fmt: skip
    """``<run_dir>/eval-<spec name>-<first 8 hex digits of the policy file's sha256>`` (then
    ``-<decode>`` unless greedy), or ``eval-<spec name>-schedule-<name>`` for a fixed schedule;
    then ``-test`` on the test set."""
    suffix = ("" if decode == "greedy" else f"-{decode}") + ("" if task_set == "dev" else f"-{task_set}")
    return Path(spec.meta_train.run_dir) / f"eval-{spec.name}-{_source(policy_path).stem}{suffix}"


def default_storage(spec: ExperimentSpec) -> str:
    """The baseline cache shared by every evaluation from this working directory (created if needed)."""
    run_dir = Path(spec.meta_train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(run_dir / 'baselines.db').resolve()}"


def run(spec: ExperimentSpec, policy_path: Path | Source, *, num_tasks: int, storage: str | None, out: Path | None,
        tracking_uri: str | None, score: str = "test", initial: str = "default", workers: int = 1,
        threads: int = 1, fresh: bool = False, quiet: bool = False, decode: str = "greedy",
        task_set: str = "dev") -> dict[str, Any]:  # fmt: skip
    """Evaluate (or resume) and report; returns the summary (also written to ``out/results.json``).

    ``task_set``: ``dev`` (the held-out tasks that choose designs and checkpoints) or ``test`` (the
    frozen tasks drawn under a key of their own, run once per final candidate; they choose nothing).

    ``policy_path``: a policy file, or a :class:`~lhopt_dsl.residual.FixedSchedule` evaluated in
    its place (the baseline a learned policy must beat). ``decode``: how the policy's action
    distributions become actions (:mod:`lhopt_dsl.decoding`; a fixed schedule has only greedy)."""
    if score not in SCORES:
        raise EvaluationError(f"--score must be one of {', '.join(SCORES)}; got '{score}'")
    if initial not in INITIAL_CHOICES:
        raise EvaluationError(f"--initial must be one of {', '.join(INITIAL_CHOICES)}; got '{initial}'")
    if task_set not in TASK_SETS:
        raise EvaluationError(f"--set must be one of {', '.join(TASK_SETS)}; got '{task_set}'")
    if decode not in DECODINGS:
        raise EvaluationError(f"--decode must be one of {', '.join(DECODINGS)}; got '{decode}'")
    source = _source(policy_path)
    try:  # fail here, not in a worker, on a missing or broken file or a decoding it cannot take
        decoded(*source.load(), decode)
    except ValueError as e:
        raise EvaluationError(str(e)) from e
    name, digest = _identity(source)
    out = Path(out or default_out(spec, source, decode, task_set))
    storage = storage or default_storage(spec)
    if fresh and (out / "tasks").exists():
        for f in (out / "tasks").glob("*.json"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"policy": name, "policy_sha256": digest, "spec": spec.name,
                "initial": initial, "decode": decode, "set": task_set, "max_valid": spec.meta_train.max_valid,
                "device": spec.device,
                "storage": storage, "out": str(out)}  # fmt: skip
    _check_manifest(out, manifest)
    configs = [eval_config(spec, i, initial, task_set) for i in range(num_tasks)]

    tracker = Tracker(tracking_uri or spec.tracking.uri, spec.tracking.experiment, f"eval-{spec.name}", out)
    tracker.log_params({"policy": name, "policy_sha256": manifest["policy_sha256"][:12],
                        "num_tasks": num_tasks, "spec": spec.name, "storage": storage, "score": score,
                        "initial": initial, "decode": decode, "set": task_set, "workers": workers})  # fmt: skip
    t0 = time.perf_counter()
    records = evaluate_tasks(configs, policy_path, out, storage=storage, device=spec.device, data_dir=spec.data_dir,
                             max_valid=spec.meta_train.max_valid, compiled=spec.evaluation.compile, workers=workers,
                             threads=threads, quiet=quiet, decode=decode)  # fmt: skip
    wall = time.perf_counter() - t0
    summary = summarise(records, score)
    summary["other_score"] = {k: v for k, v in summarise(records, SCORES[1 - SCORES.index(score)]).items()
                              if k in ("overall", "rows", "score")}  # fmt: skip
    cost = {
        "wall_seconds_this_session": round(wall, 1),
        "task_seconds": round(sum(r["seconds"]["policy"] + r["seconds"]["baselines"] for r in records), 1),
        "policy_seconds": round(sum(r["seconds"]["policy"] for r in records), 1),
        "baseline_seconds": round(sum(r["seconds"]["baselines"] for r in records), 1),
        "pairs_run": sum(r["pairs"]["run"] for r in records),
        "pairs_cached": sum(r["pairs"]["cached"] for r in records),
        "workers": workers,
    }
    summary["cost"] = cost
    summary["manifest"] = manifest
    text, markdown = format_summary(summary), format_summary(summary, markdown=True)
    (out / "table1.md").write_text(f"{len(records)} {task_set} tasks, scored on the {score} split; "
                                   f"initial hyperparameters: {initial}.\n\n{markdown}\n")
    write_json(out / "results.json", summary)
    o = summary["overall"]
    metrics = {f"eval/{k}": o[k]["value"] for k in ("pairs_ge_1x", "pairs_ge_2x", "best_ge_1x", "best_ge_2x",
                                                     "speedup_median", "speedup_geomean")}  # fmt: skip
    for row, r in summary["rows"].items():
        metrics.update({f"eval/{row}/{k}": r[k]["value"] for k in ("pairs_ge_2x", "best_ge_1x", "speedup_median")})
    tracker.log_metrics({k.replace("+", "_"): v for k, v in metrics.items() if math.isfinite(v)}, step=0)
    for path in [out / "table1.md", out / "results.json", *_plots(records, summary, out)]:
        tracker.log_artifact(path)
    tracker.end()
    print(f"\n{len(records)} held-out {task_set} tasks, scored on the {score} split, initial hyperparameters: {initial}\n")
    print(text)
    print(f"\ncost: {cost['task_seconds']:.0f} s of task time ({cost['policy_seconds']:.0f} s policy, "
          f"{cost['baseline_seconds']:.0f} s baselines: {cost['pairs_run']} runs, {cost['pairs_cached']} read from "
          f"the cache); {wall:.0f} s wall time this session with {workers} worker(s)")  # fmt: skip
    return summary
