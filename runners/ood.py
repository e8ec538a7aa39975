"""The out-of-distribution suite: a policy in ordinary PyTorch programs against tuned baselines.

    lhopt eval-ood [--policy P] [--programs NAME ...] [--steps-scale F] [--out DIR] [--seed S] [--workers W]
                   [--storage URL]

Every program of :data:`runners.ood_programs.PROGRAMS` is built from the seed and trained through
the one plain loop of :func:`runners.ood_programs.train` (the same initial weights and batch order
for every optimizer):

* the policy, through the public drop-in :class:`~lhopt_dsl.controller.LHOPT`, for T steps (its
  training loss reported every step, the validation loss every T/16 steps);
* AdamW with each of the 5 learning rates of :data:`lhopt_dsl.tasks.baselines.LEARNING_RATES` x the 7
  schedule shapes of :data:`lhopt_dsl.spec.schedule.SHAPES` (a ``LambdaLR`` stretched over the run), and
  Schedule-Free AdamW and Prodigy set as in ``lhopt_dsl/tasks/baselines.py``, each for T and for 2T steps.

Scoring (our choices; the comparisons are :func:`lhopt_dsl.evaluation.metrics.compare_task`'s, as in
``lhopt eval``):

* Everything is scored on the **test** split, which no run observes (every optimizer sees its
  training losses; the policy also sees the validation losses, through ``observe``).
* *Best AdamW*: the lowest test loss among the 35 AdamW runs of T steps (of 2T steps for the 2T
  comparison): the strongest baseline any tuning could find, so a win against it is unambiguous.
  Beside it, the AdamW run a user would pick by tuning on validation data (the lowest
  **validation** loss; :data:`PICKED`), compared on its test loss like the tuning-free optimizers.
* The policy *beats* a baseline when its test loss at T is at most the baseline's (ties count for
  the policy; a non-finite policy loss beats nothing; a non-finite baseline loss is beaten by any
  finite one).
* *Speedup*: the steps the best AdamW needs to reach the policy's test loss, over T
  (:func:`lhopt_dsl.evaluation.metrics.speedup`: from the ends of its T and 2T runs, or its T run's test
  curve, measured every T/16 steps, below T); censored at 2 when not even its 2T run gets there.
* A run whose training loss becomes non-finite stops there and counts as non-finite.

Outputs in ``--out`` (default ``runs/ood``): ``results.json`` (settings, per-program summaries, every
curve and the policy's hyperparameter trace), ``table.md``, one ``<program>.png`` per program, and
one MLflow run per invocation with the same numbers, curves and files. The baseline runs are kept in
the one baseline cache (``--storage``, as for ``lhopt eval``; :class:`OodCache`), so evaluating
another policy reruns only the policy, and ``lhopt baselines export|import`` carries them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lhopt_dsl.controller import LHOPT
from lhopt_dsl.evaluation.metrics import TaskScores, compare_task
from lhopt_dsl.spec.schedule import REFERENCE_SCHEDULE, SHAPES, Schedule, shape_factor
from lhopt_dsl.tasks.baselines import LEARNING_RATES, TUNING_FREE, schedule_of

from . import ood_programs
from .baselines import OOD_VERSION, SCOPES, BaselineStore
from .jobs import each_finished, strict_json, write_json
from .ood_programs import PROGRAMS, DataDir, OptimizerFactory, Run
from .tracking import Tracker

HORIZONS: tuple[int, ...] = (1, 2)
EXPERIMENT = "lhopt"  # the MLflow experiment (as the specs' default)
HPARAMS_SHOWN = ("lr", "weight_decay", "eps", "one_minus_beta1", "one_minus_beta2")
RESTARTS = ("load", "swap")  # the restart actions that change the weights ("save" only checkpoints)


def baseline_names(learning_rates: Sequence[float] = LEARNING_RATES, shapes: Sequence[str] = SHAPES,
                   tuning_free: Sequence[str] = TUNING_FREE, schedule: str | None = REFERENCE_SCHEDULE) -> list[str]:  # fmt: skip
    """Baseline names as in lhopt_dsl/tasks/baselines.py: ``adamw-<shape>-lr<lr>``, then the tuning-free
    ones, then ``schedule`` (a followed schedule's name: CIAO following it through ``LHOPT``)."""
    for shape in shapes:
        shape_factor(shape, 0.0)  # an unknown shape fails here, before anything runs
    unknown = [n for n in tuning_free if n not in TUNING_FREE]
    if unknown:
        raise ValueError(f"unknown tuning-free optimizer(s) {', '.join(unknown)}; known: {', '.join(TUNING_FREE)}")
    followed = [] if schedule is None else [Schedule.from_name(schedule).name]
    if followed and Schedule.from_name(schedule).optimizer is not None:
        raise ValueError(f"the reference schedule is one CIAO follows (e.g. {REFERENCE_SCHEDULE}), not {schedule}")
    return [Schedule(lr=lr, shape=shape).name for lr in learning_rates for shape in shapes] + list(tuning_free) + followed


def is_adamw(name: str) -> bool:
    return name.startswith("adamw-")


def optimizer_factory(name: str, policy: str | Path | None, seed: int) -> OptimizerFactory:
    """The optimizer of a run: ``policy`` (the drop-in LHOPT), an AdamW baseline or a tuning-free one."""
    if name == "policy":
        return ood_programs.policy(policy, seed)
    if name in TUNING_FREE:
        return ood_programs.tuning_free(name)
    if not is_adamw(name):  # a followed schedule: the drop-in LHOPT driven by it
        return ood_programs.policy(Schedule.from_name(name), seed)
    schedule = schedule_of(name)
    return ood_programs.adamw(schedule.lr, schedule.shape)


# --- running --------------------------------------------------------------------------------------


class Job(NamedTuple):
    """One training run, as plain data (it travels to worker processes)."""

    program: str
    optimizer: str  # "policy" or a baseline name
    horizon: int  # the run takes horizon x T steps
    sizes: Any
    seed: int
    policy: str | None
    data_dir: str | None


def run_job(job: Job) -> Run:
    """Build the job's program from its seed and train it once."""
    return ood_programs.run_program(job.program, optimizer_factory(job.optimizer, job.policy, job.seed), seed=job.seed,
                                    sizes=job.sizes, steps=job.horizon * job.sizes.steps, data_dir=job.data_dir)


def check_policy(policy: str | Path | None) -> None:
    """Raise (FileNotFoundError, ValueError) unless the checkpoint can drive :class:`LHOPT`."""
    LHOPT([torch.nn.Parameter(torch.zeros(1))], policy, total_steps=1)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


#: Version of the cached baseline runs (:data:`runners.baselines.OOD_VERSION`); bump it there when a
#: program, the loop or a baseline changes.
CACHE_VERSION = OOD_VERSION


def scope_of(job: Job) -> str:
    """The baseline cache's scope of a job's program setting: everything that decides a baseline run
    but the baseline itself (program, sizes, seed, data directory, torch version, :data:`CACHE_VERSION`),
    digested; a scope's entries are its (baseline, horizon) pairs."""
    key = json.dumps([job.program, asdict(job.sizes), job.seed, _data_key(job), torch.__version__])
    return f"{SCOPES['ood'][0]}{job.program}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _data_key(job: Job) -> str | None:
    return str(Path(job.data_dir).resolve()) if job.data_dir else None


def _scope_attrs(job: Job) -> dict[str, Any]:
    """What a scope was made for, stored beside its entries (plain data, for people and exports)."""
    return {"kind": "ood", "program": job.program, "sizes": asdict(job.sizes), "seed": job.seed,
            "data_dir": _data_key(job), "torch": torch.__version__, "version": CACHE_VERSION}  # fmt: skip


def _run_from(data: Any) -> Run | None:
    """A stored run, or None for data that is not one (an entry that cannot be read is run again)."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("steps", *_CURVES)):
        return None
    try:
        return Run(**{k: [math.nan if v is None else v for v in x] if k in _CURVES else x for k, x in data.items()})
    except (AttributeError, TypeError, ValueError):
        return None


def _usable(attrs: dict[str, Any]) -> bool:
    return _run_from(attrs.get("run")) is not None


class OodCache:
    """eval-ood's baseline runs in the one baseline cache (:class:`runners.baselines.BaselineStore`
    at ``storage``, the ``--storage`` of ``lhopt eval`` and ``lhopt baselines``): a run is the entry
    of its (baseline, horizon) in its program setting's scope (:func:`scope_of`), so that evaluating
    another policy reruns only the policy (the baselines do not depend on it and every run is
    deterministic). The policy's runs are never cached. ``storage=None`` caches nothing.

    ``old``: a directory of eval-ood's earlier cache (one JSON file per run; ``lhopt eval-ood
    --cache``, by default ``runs/ood-baselines``); a run the store lacks but finds there is copied
    into the store (:attr:`migrated` counts them), so old caches keep working and move over as they
    are used.
    """

    def __init__(self, storage: str | None, old: str | os.PathLike[str] | None = None):
        self.store = BaselineStore(storage) if storage else None
        self.old = Path(old) if old and storage else None
        self.migrated = 0

    def lookup(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Run | None]]:
        """Each job with its stored run, or None (the policy's, and runs the cache lacks)."""
        found: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
        for job in jobs:
            if self.store is None or job.optimizer == "policy":
                yield job, None
                continue
            scope = scope_of(job)
            if scope not in found:  # one read per program setting
                found[scope] = self.store.entries(scope, _usable)
            entry = found[scope].get((job.optimizer, job.horizon))
            yield job, _run_from(entry["run"]) if entry is not None else self._migrate(job)

    def put(self, job: Job, run: Run) -> None:
        if self.store is None or job.optimizer == "policy":
            return
        valid = run.final_valid
        self.store.put(scope_of(job), (job.optimizer, job.horizon), valid if math.isfinite(valid) else math.inf,
                       {"run": strict_json(asdict(run)), "worker": f"{socket.gethostname()}:{os.getpid()}"},
                       _scope_attrs(job))  # fmt: skip

    def _migrate(self, job: Job) -> Run | None:
        """The job's run from the old cache directory, copied into the store; None if not there."""
        if self.old is None:
            return None
        # The old files' name and key, as they were written.
        key = json.dumps([CACHE_VERSION, job.program, asdict(job.sizes), job.optimizer, job.horizon, job.seed,
                          _data_key(job), torch.__version__])  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        path = self.old / f"{job.program}-{job.optimizer}-{job.horizon}T-{digest}.json"
        try:
            run = _run_from(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None
        if run is not None:
            self.put(job, run)
            self.migrated += 1
        return run

    def report(self) -> None:
        """Say on stderr what was copied from the old cache directory, and what to do about it."""
        if self.migrated and self.store is not None:
            print(f"eval-ood: {self.migrated} baseline run(s) copied from the old cache directory {self.old} into the "
                  f"baseline cache {self.store.url}, where they are read from now on (`lhopt baselines export` "
                  f"carries them). {self.old} is no longer written: delete it once the programs you evaluate have "
                  "been run once with this version.", file=sys.stderr)  # fmt: skip


_CURVES = ("valid_loss", "test_loss", "train_loss")


def run_jobs(jobs: Sequence[Job], workers: int, threads: int, quiet: bool,
             cache: OodCache | None = None) -> Iterator[tuple[Job, Run]]:  # fmt: skip
    """Yield ``(job, run)`` as runs finish: cached baselines first, then the rest in order in this
    process, or spread over ``workers`` processes (each finished baseline is stored in ``cache`` at
    once, so a killed run loses only the runs in progress)."""
    cache = cache or OodCache(None)
    with tqdm(total=len(jobs), desc="eval-ood", unit="run", disable=quiet, dynamic_ncols=True) as bar:
        todo = []
        for job, hit in cache.lookup(jobs):
            if hit is not None:
                bar.update()
                yield job, hit
            else:
                todo.append(job)
        cache.report()
        for job, run in _run_fresh(todo, workers, threads, bar):
            cache.put(job, run)
            yield job, run


def _run_fresh(jobs: Sequence[Job], workers: int, threads: int, bar: Any) -> Iterator[tuple[Job, Run]]:
    """Run ``jobs`` as :func:`run_jobs` does, advancing ``bar``."""
    for job, run in each_finished(run_job, jobs, workers, _init_worker, (threads,)):
        bar.set_postfix_str(f"{job.program} {job.optimizer} {job.horizon}T")
        bar.update()
        yield job, run


@dataclass
class ProgramResult:
    program: str
    T: int  # noqa: N815 (the paper's name)
    sizes: dict[str, Any]
    policy: Run
    baselines: dict[tuple[str, int], Run]  # (name, horizon) -> run of horizon x T steps
    seconds: float  # summed over the program's runs


# --- scoring --------------------------------------------------------------------------------------

#: The AdamW run a user tuning on validation data would pick, compared with like the tuning-free ones.
PICKED = "adamw-picked-by-validation"


def picked_by_validation(runs: Mapping[tuple[str, int], Run], names: Sequence[str], horizon: int) -> str:
    """The run of ``names`` (of ``horizon`` x T steps) with the lowest final validation loss
    (non-finite ones last; ties: the alphabetically first name)."""
    def key(n: str) -> tuple[float, str]:
        v = runs[(n, horizon)].final_valid
        return (v if math.isfinite(v) else math.inf), n

    return min(names, key=key)


def summarise(program: str, policy: Run, runs: Mapping[tuple[str, int], Run], T: int) -> dict[str, Any]:
    """Scores of one program (see the module docstring); a pure function of the runs' curves.

    The comparisons are :func:`lhopt_dsl.evaluation.metrics.compare_task`'s, on test losses: against the AdamW
    grid (pairs, and its best run at T and at 2T) and against each other method, among them the
    AdamW runs picked by validation loss (:data:`PICKED`).
    """
    names = sorted({n for n, _ in runs})
    adamw = [n for n in names if is_adamw(n)]
    others = [n for n in names if not is_adamw(n)]
    if not adamw:
        raise ValueError(f"{program}: no AdamW baseline runs")
    at = {h: {n: runs[(n, h)].final_test for n in names if (n, h) in runs} for h in HORIZONS}
    curves = {n: (runs[(n, 1)].steps, runs[(n, 1)].test_loss) for n in names}
    picked = {h: picked_by_validation(runs, adamw, h) for h in HORIZONS}
    for h in HORIZONS:
        at[h][PICKED] = at[h][picked[h]]
    curves[PICKED] = curves[picked[1]]
    task = TaskScores(program, "ood", T, policy.final_test, at[1], at[2], curves)
    compared = compare_task(task, adamw, [*others, PICKED])
    finals = np.asarray([at[1][n] for n in adamw])
    return {
        **compared,
        "policy_valid": policy.final_valid,
        "policy_restarts": sum(h.get("restart") in RESTARTS for h in policy.history),
        "best_baseline_2T": min(adamw, key=lambda n: (at[2][n] if math.isfinite(at[2][n]) else math.inf, n)),
        "picked_T": picked[1],
        "picked_2T": picked[2],
        "median_adamw_T": float(np.median(np.where(np.isfinite(finals), finals, np.inf))),
        "nonfinite": {
            "policy": not policy.finite,
            "baselines": [f"{n}@{h}T" for (n, h), r in sorted(runs.items()) if not r.finite],
            "runs": len(runs),
        },
    }


# --- reporting ------------------------------------------------------------------------------------


def _loss(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "non-finite"


def _short(name: str) -> str:
    """``adamw-cosine_0.1-lr0.003`` -> ``cosine_0.1 3e-3``."""
    if not is_adamw(name):
        return name
    shape, _, lr = name[len("adamw-") :].rpartition("-lr")
    mantissa, _, exponent = f"{float(lr):.0e}".partition("e")
    return f"{shape} {mantissa}e{int(exponent)}"


def _pair(loss_T: float, name_T: str, loss_2T: float, name_2T: str) -> str:  # noqa: N803
    return f"{_loss(loss_T)} ({_short(name_T)}) / {_loss(loss_2T)} ({_short(name_2T)})"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


TABLE_HEADER = (
    "| program | T | policy | best AdamW, T / 2T | policy <= best, T / 2T | speedup vs best "
    "| AdamW picked by valid, T / 2T | policy <= picked, T / 2T | pairs >=1x / >=2x "
    f"| median AdamW, T | Schedule-Free, T | Prodigy, T | CIAO + {REFERENCE_SCHEDULE}, T | policy <= it, T "
    "| non-finite runs |"
)
TABLE_NOTE = (
    "Test losses (lower is better); the policy runs T steps, each baseline T and 2T steps. Best AdamW: the "
    "lowest test loss of the 35 AdamW runs of T (2T) steps, the strongest baseline tuning could find (as in "
    "`lhopt eval`). Picked by valid: the AdamW run with the lowest validation loss, what a user tuning on "
    "validation data would pick. Speedup: steps the best AdamW needs to reach the policy's test loss, over T "
    "(lhopt_dsl.evaluation.metrics.speedup; >=2.00x: not within 2T). Pairs: fraction of the 35 AdamW runs the policy "
    "matches at T / at 2T (the paper's Table 1 measure). "
    f"CIAO + {REFERENCE_SCHEDULE}: the fixed schedule a learned policy has to beat, through the same LHOPT."
)


def _speedup(value: float, capped: bool) -> str:
    return f"{'>=' if capped else ''}{value:.2f}x"


def format_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table of one suite run (see :data:`TABLE_NOTE`)."""
    lines = [TABLE_HEADER, "|---|---:|---:|---|:---:|---:|---|:---:|:---:|---:|---:|---:|---:|:---:|---|"]
    for program, s in summaries.items():
        vs, nf = s["vs"], s["nonfinite"]
        failed = (["policy"] if nf["policy"] else []) + (
            [f"{len(nf['baselines'])}/{nf['runs']} baselines"] if nf["baselines"] else [])  # fmt: skip
        cells = [
            program,
            str(s["T"]),
            _loss(s["policy"]),
            _pair(s["best_T"], s["best_baseline"], s["best_2T"], s["best_baseline_2T"]),
            f"{_yes(s['beats_best_1x'])} / {_yes(s['beats_best_2x'])}",
            _speedup(s["speedup"], s["capped"]),
            _pair(vs[PICKED]["T"], s["picked_T"], vs[PICKED]["2T"], s["picked_2T"]),
            f"{_yes(vs[PICKED]['beats_1x'])} / {_yes(vs[PICKED]['beats_2x'])}",
            f"{s['pair_wins_1x'] / s['pairs']:.2f} / {s['pair_wins_2x'] / s['pairs']:.2f}",
            _loss(s["median_adamw_T"]),
            _loss(vs["schedulefree"]["T"]) if "schedulefree" in vs else "-",
            _loss(vs["prodigy"]["T"]) if "prodigy" in vs else "-",
            _loss(vs[REFERENCE_SCHEDULE]["T"]) if REFERENCE_SCHEDULE in vs else "-",
            _yes(vs[REFERENCE_SCHEDULE]["beats_1x"]) if REFERENCE_SCHEDULE in vs else "-",
            ", ".join(failed) or "none",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_record(run: Run) -> dict[str, Any]:
    return asdict(run)


def program_record(result: ProgramResult, summary: Mapping[str, Any]) -> dict[str, Any]:
    baselines: dict[str, dict[str, Any]] = {}
    for (name, h), run in result.baselines.items():
        baselines.setdefault(name, {})[f"{h}T"] = _run_record(run)
    return {
        "sizes": result.sizes,
        "seconds": round(result.seconds, 1),
        "summary": dict(summary),
        "policy": _run_record(result.policy),
        "baselines": baselines,
    }


def plot_program(result: ProgramResult, summary: Mapping[str, Any], path: Path) -> Path:
    """Test-loss curves (policy, best and median AdamW, tuning-free) and the policy's hyperparameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, runs = result.T, result.baselines
    adamw = sorted(n for n, h in runs if h == 1 and is_adamw(n))
    ranked = sorted(adamw, key=lambda n: (runs[(n, 1)].final_test if runs[(n, 1)].finite else math.inf))
    median = ranked[(len(ranked) - 1) // 2] if ranked else None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5))
    best, best2, picked = summary["best_baseline"], summary["best_baseline_2T"], summary["picked_T"]
    for (name, h), style in (((best2, 2), "--"), ((best, 1), "-")):
        ax.plot(runs[(name, h)].steps, runs[(name, h)].test_loss, style, color="tab:blue",
                label=f"best AdamW, {'2T' if h == 2 else 'T'} ({_short(name)})")  # fmt: skip
    if picked != best:
        ax.plot(runs[(picked, 1)].steps, runs[(picked, 1)].test_loss, "-", color="tab:purple",
                label=f"AdamW picked by valid, T ({_short(picked)})")  # fmt: skip
    if median is not None:
        ax.plot(runs[(median, 1)].steps, runs[(median, 1)].test_loss, ":", color="tab:gray",
                label=f"median AdamW, T ({_short(median)})")  # fmt: skip
    for name, color in (("schedulefree", "tab:green"), ("prodigy", "tab:orange")):
        if (name, 1) in runs:
            ax.plot(runs[(name, 1)].steps, runs[(name, 1)].test_loss, "-", lw=0.8, color=color, label=f"{name}, T")
    ax.plot(result.policy.steps, result.policy.test_loss, "k-", lw=2, label="policy (LHOPT)")
    ax.axvline(T, color="k", lw=0.5, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("test loss")
    ax.set_title(f"{result.program}: test loss")
    ax.legend(fontsize=7)

    history = result.policy.history
    for name in HPARAMS_SHOWN:
        if history and name in history[0]:
            steps = [h["progress"] * T for h in history] + [T]
            values = [h[name] for h in history]
            bx.step(steps, values + values[-1:], where="post", label=name)
    for h in history:
        if h.get("restart") in RESTARTS:
            bx.axvline(h["progress"] * T, color="tab:red", lw=0.6, ls="--")
    bx.set_yscale("log")
    bx.set_xlabel("step")
    bx.set_title("hyperparameters chosen by the policy (red: restarts)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_program(tracker: Tracker, result: ProgramResult, summary: Mapping[str, Any]) -> None:
    key = f"ood/{result.program}"
    picked = summary["vs"][PICKED]
    tracker.log_metrics({
        f"{key}/policy_test": summary["policy"],
        f"{key}/best_test_T": summary["best_T"],
        f"{key}/best_test_2T": summary["best_2T"],
        f"{key}/beats_best_T": float(summary["beats_best_1x"]),
        f"{key}/beats_best_2T": float(summary["beats_best_2x"]),
        f"{key}/speedup": summary["speedup"],
        f"{key}/picked_test_T": picked["T"],
        f"{key}/picked_test_2T": picked["2T"],
        f"{key}/beats_picked_T": float(picked["beats_1x"]),
        f"{key}/beats_picked_2T": float(picked["beats_2x"]),
        f"{key}/pairs_ge_1x": summary["pair_wins_1x"] / summary["pairs"],
        f"{key}/pairs_ge_2x": summary["pair_wins_2x"] / summary["pairs"],
        f"{key}/median_test_T": summary["median_adamw_T"],
        f"{key}/nonfinite_runs": float(len(summary["nonfinite"]["baselines"]) + summary["nonfinite"]["policy"]),
        f"{key}/policy_restarts": float(summary["policy_restarts"]),
        **({f"{key}/schedule_test_T": summary["vs"][REFERENCE_SCHEDULE]["T"]} if REFERENCE_SCHEDULE in summary["vs"] else {}),
        f"{key}/seconds": result.seconds,
    }, step=0)  # fmt: skip
    policy = result.policy
    best = result.baselines[(summary["best_baseline"], 1)]
    for i, step in enumerate(policy.steps):
        tracker.log_metrics({f"{key}/policy/valid_loss": policy.valid_loss[i],
                             f"{key}/policy/test_loss": policy.test_loss[i],
                             f"{key}/best_adamw/test_loss": best.test_loss[i]}, step=step)  # fmt: skip
    for h in policy.history:
        values = {f"{key}/hparams/{n}": float(h[n]) for n in HPARAMS_SHOWN if n in h}
        tracker.log_metrics(values, step=round(h["progress"] * result.T))


# --- the suite ------------------------------------------------------------------------------------


def run_suite(
    programs: Sequence[str] = (),
    *,
    policy: str | Path | None = None,
    seed: int = 0,
    steps_scale: float = 1.0,
    sizes: Mapping[str, Any] | None = None,
    learning_rates: Sequence[float] = LEARNING_RATES,
    shapes: Sequence[str] = SHAPES,
    tuning_free: Sequence[str] = TUNING_FREE,
    schedule: str | None = REFERENCE_SCHEDULE,
    data_dir: DataDir = None,
    out: str | Path = "runs/ood",
    tracking_uri: str | None = None,
    workers: int = 1,
    quiet: bool = False,
    storage: str | None = None,
    old_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run the suite and write its reports; returns what ``results.json`` holds.

    ``programs`` (default: all) name entries of :data:`PROGRAMS`; ``sizes`` overrides a program's
    sizes (``steps_scale`` then does not apply to it); ``learning_rates``, ``shapes`` and
    ``tuning_free`` choose the baselines (default: the full grid of lhopt_dsl/tasks/baselines.py);
    ``schedule``, a followed schedule run beside them (None: none). The runs
    are spread over ``workers`` processes, each with this process's torch thread count; they are
    deterministic, so the results do not depend on ``workers``. ``storage``: the baseline cache's
    storage URL (:class:`OodCache`; the ``--storage`` of ``lhopt eval`` and ``lhopt baselines``), whose
    baseline runs later invocations reuse; None runs every baseline. ``old_cache``: a directory of
    eval-ood's earlier per-run cache, whose runs are copied into ``storage`` as they are needed.
    """
    if steps_scale <= 0:
        raise ValueError(f"steps_scale must be positive, got {steps_scale}")
    chosen = ood_programs.names(programs)
    baselines = baseline_names(learning_rates, shapes, tuning_free, schedule)
    if not any(is_adamw(n) for n in baselines):
        raise ValueError("the suite needs at least one AdamW baseline (a learning rate and a shape)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = {name: (sizes or {}).get(name) or PROGRAMS[name].scaled(steps_scale) for name in chosen}
    policy_path = str(policy) if policy is not None else None
    data = str(data_dir) if data_dir else None
    threads = torch.get_num_threads()
    settings = _settings(policy_path, seed, steps_scale, plan, learning_rates, shapes, tuning_free, workers, threads)
    settings["reference_schedule"] = schedule
    check_policy(policy_path)  # a checkpoint that cannot drive LHOPT fails now, not after the baselines
    for name in chosen:  # so does a missing data file
        PROGRAMS[name].build(seed, plan[name], data)
    # Program by program: the policy, then the 2T runs (the longest first, so that a pool's workers
    # finish a program together), then the T runs.
    runs_of = [("policy", 1)] + [(b, h) for h in sorted(HORIZONS, reverse=True) for b in baselines]
    jobs = [Job(name, b, h, plan[name], seed, policy_path, data) for name in chosen for b, h in runs_of]
    pending = {name: sum(j.program == name for j in jobs) for name in chosen}
    runs: dict[str, dict[tuple[str, int], Run]] = {name: {} for name in chosen}

    tracker = Tracker(tracking_uri, EXPERIMENT, "eval-ood", out)
    tracker.log_params(settings)
    report: dict[str, Any] = {"settings": settings, "programs": {}}
    summaries: dict[str, dict[str, Any]] = {}
    status = "FAILED"
    try:
        for job, run in run_jobs(jobs, workers, threads, quiet, OodCache(storage, old_cache)):
            runs[job.program][(job.optimizer, job.horizon)] = run
            pending[job.program] -= 1
            if pending[job.program]:
                continue
            _program_done(job.program, runs.pop(job.program), plan[job.program], out, report, summaries, tracker)
        for path in ("results.json", "table.md"):
            tracker.log_artifact(out / path)
        status = "FINISHED"
    finally:
        tracker.end(status)
    if not quiet:
        print(format_table(summaries))
    return report



def _settings(policy_path: str | None, seed: int, steps_scale: float, plan: Mapping[str, Any],
              learning_rates: Sequence[float], shapes: Sequence[str], tuning_free: Sequence[str], workers: int,
              threads: int) -> dict[str, Any]:  # fmt: skip
    """What a suite run was asked to do, recorded in ``results.json`` and MLflow's parameters."""
    return {
        "policy": policy_path or "default (shipped with lhopt)",
        "seed": seed,
        "steps_scale": steps_scale,
        "programs": {name: {"description": PROGRAMS[name].description, **asdict(s)} for name, s in plan.items()},
        "learning_rates": list(learning_rates),
        "shapes": list(shapes),
        "tuning_free": list(tuning_free),
        "baseline_horizons": list(HORIZONS),
        "evaluations_per_T": ood_programs.EVALUATIONS,
        "best_adamw": "lowest test loss of the AdamW runs (as lhopt eval); the run picked by validation loss beside it",
        "scored_on": "test loss",
        "workers": workers,
        "threads": threads,
        "torch": torch.__version__,
    }


def _program_done(name: str, done: dict[tuple[str, int], Run], sizes: Any, out: Path, report: dict[str, Any],
                  summaries: dict[str, dict[str, Any]], tracker: Tracker) -> None:  # fmt: skip
    """A program's runs are all in: summarise it, write the reports so far (they survive an
    interruption), plot it and log it."""
    seconds = sum(r.seconds for r in done.values())
    result = ProgramResult(name, sizes.steps, asdict(sizes), done.pop(("policy", 1)), done, seconds)
    summaries[name] = summarise(name, result.policy, result.baselines, result.T)
    report["programs"][name] = program_record(result, summaries[name])
    _write(out, report, summaries)
    tracker.log_artifact(plot_program(result, summaries[name], out / f"{name}.png"), "plots")
    _log_program(tracker, result, summaries[name])

def _write(out: Path, report: Mapping[str, Any], summaries: Mapping[str, Mapping[str, Any]]) -> None:
    write_json(out / "results.json", report)
    (out / "table.md").write_text(format_table(summaries) + "\n\n" + TABLE_NOTE + "\n")
