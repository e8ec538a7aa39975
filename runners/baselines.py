"""The baselines of paper Section 4.1 (:mod:`lhopt_dsl.tasks.baselines`), run as a resumable, shareable
Optuna grid per task.

The grid of one task is an Optuna study (``baselines-v<CURVE_VERSION>-<task_id>``) in an RDB storage:
a :class:`PairGridSampler` over categorical ``baseline`` x ``horizon``. Each trial stores its curve as
user attributes and returns its final validation loss (``inf`` when it diverged, so the trial is
COMPLETE and never re-run). The storage is therefore the cache keyed by (task id, baseline, steps)
that evaluation and meta-training reuse (:func:`cached_curve`): the one baseline cache
(:class:`BaselineStore`), which also holds ``lhopt eval-ood``'s runs and is exported and imported
as a whole (:func:`export_grids`, :func:`import_grids`).

Resuming and sharing: a pair is "done" when some trial of it is COMPLETE and "taken" while a trial
of it is RUNNING. The sampler hands out only pairs that are neither (it looks at parameter values
rather than grid ids, so interrupted or failed trials are re-run), and a trial that finds its pair
done or taken by an earlier trial (a race between workers) is PRUNED without running. RUNNING trials
of a killed worker are failed by Optuna's heartbeat after :data:`GRACE_PERIOD` seconds and then
re-run. :func:`run_grid` returns when every pair is COMPLETE (waiting for other workers' running
trials) and reads each pair from its earliest COMPLETE trial. AdamW pairs that train together as one
batched population are recorded at once as finished trials (``Study.add_trials``): one storage
transaction instead of a trial's dozen round trips each.

Optuna's public API only. What ``Study`` and ``Trial`` do not offer, the grid does through the
methods of the storage it opens itself (:class:`optuna.storages.RDBStorage`, addressed by trial id,
see :func:`_trial_id`): a system attribute written before a trial's parameters are suggested (the
pair the sampler handed out) and a RUNNING trial kept alive by heartbeats outside
``Study.optimize`` (a population's claim).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from lhopt_dsl.spec.sample import TaskConfig
from lhopt_dsl.spec.schedule import LearningCurve
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES, BASELINES, HORIZONS, run_baseline, schedule_of
from lhopt_dsl.tasks.population import population_pays, run_population

#: Measurements of the validation and test losses per T steps of a grid run (16 over a 2T run).
#: Final losses do not depend on it; speedups below 1x read the curve between these points.
#: Evaluation passes cost as much as training on small tasks, so the grid measures sparsely.
GRID_EVALUATIONS_PER_T = 8

HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats
GRACE_PERIOD = 120  # a RUNNING trial without a heartbeat for this long is failed (its worker died)
POLL_INTERVAL = 2.0  # seconds between checks while other workers finish the last pairs

_PAIR = "pair"  # trial system attribute: the (baseline, horizon) a trial was handed
_CLAIMS = "claims"  # system attribute of a population's claim: the pairs it reserves
Pair = tuple[str, int]
Progress = Callable[[int, int, Pair, LearningCurve], None]


# --- curves as trial attributes -------------------------------------------------------------------


def _json_floats(xs: Iterable[float]) -> list[float | None]:
    """Strict JSON: non-finite values are stored as null."""
    return [float(x) if math.isfinite(x) else None for x in xs]


def _floats(xs: Iterable[float | None]) -> list[float]:
    return [math.nan if x is None else float(x) for x in xs]


def curve_to_attrs(curve: LearningCurve) -> dict[str, Any]:
    return {
        "steps": [int(s) for s in curve.steps],
        "valid_loss": _json_floats(curve.valid_loss),
        "train_loss": _json_floats(curve.train_loss),
        "test_loss": _json_floats([curve.test_loss])[0],
        "test_curve": _json_floats(curve.test_curve),
    }


def curve_from_attrs(data: dict[str, Any]) -> LearningCurve:
    test = _floats([data.get("test_loss")])[0]
    return LearningCurve(list(data["steps"]), _floats(data["valid_loss"]), _floats(data["train_loss"]), test,
                         _floats(data.get("test_curve", [])))  # fmt: skip


# --- the study ------------------------------------------------------------------------------------


def default_storage(directory: str | os.PathLike[str] = "runs") -> str:
    """SQLite ``baselines.db`` in ``directory``: by default ``runs/``, where ``lhopt eval`` keeps it
    too (``<run_dir>/baselines.db``), so every command shares one cache unless told otherwise."""
    return f"sqlite:///{Path(directory).resolve() / 'baselines.db'}"


#: Version of what a trial stores; bumped when curves gain a field (v2: the test loss at every
#: measurement), so that a storage shared with older versions never serves an incomplete curve.
CURVE_VERSION = 2


def study_name(cfg: TaskConfig) -> str:
    return f"baselines-v{CURVE_VERSION}-{cfg.task_id}"


def _write_ahead_log(engine: Any) -> None:
    """SQLite in write-ahead-log mode with normal sync: a commit costs no disk flush.

    Optuna commits a dozen times per trial; with SQLite's default rollback journal and full sync
    each commit waits for the disk (about 15 ms here), which made the bookkeeping of a grid of
    tiny runs cost more than the runs. The log survives a killed process (a power loss may drop the
    last commits, never corrupt the file), and several processes on one machine share it.
    """
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener reconnect with it


@functools.lru_cache(maxsize=16)
def _storage(url: str, pid: int, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """One storage per URL and process (``pid`` keys the cache so forked children make their own)."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    hb = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD} if heartbeat else {}
    for attempt in range(5):  # concurrent first use of a new SQLite file can race on the schema
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **hb)
            if url.startswith("sqlite"):
                _write_ahead_log(storage.engine)
            return storage
        except Exception:  # noqa: BLE001
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _trial_id(storage: optuna.storages.BaseStorage, study_id: int, number: int) -> int:
    """The storage's id of trial ``number`` of the study ``study_id``, which the storage's methods
    take (public ``Study``, ``Trial`` and ``FrozenTrial`` objects expose only the number)."""
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def _pair(t: FrozenTrial) -> Pair | None:
    if "baseline" in t.params and "horizon" in t.params:
        return str(t.params["baseline"]), int(t.params["horizon"])
    p = t.system_attrs.get(_PAIR)
    return (str(p[0]), int(p[1])) if p else None


def _pairs_of(t: FrozenTrial) -> list[Pair]:
    """The pairs a trial runs: its own, or every pair of a population's claim (RUNNING only)."""
    if t.state == TrialState.RUNNING and _CLAIMS in t.system_attrs:
        return [(str(n), int(h)) for n, h in t.system_attrs[_CLAIMS]]
    p = _pair(t)
    return [p] if p is not None else []


def _status(study: optuna.Study) -> tuple[dict[Pair, FrozenTrial], dict[Pair, FrozenTrial]]:
    """Earliest COMPLETE and earliest RUNNING trial (or population claim) of every pair."""
    complete: dict[Pair, FrozenTrial] = {}
    running: dict[Pair, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.user_attrs.get("skipped"):
            continue
        target = complete if t.state == TrialState.COMPLETE else running
        for p in _pairs_of(t):
            if p not in target or t.number < target[p].number:
                target[p] = t
    return complete, running


class _Claim:
    """A RUNNING trial that reserves the pairs a worker trains as one population, kept alive by
    heartbeats: while it runs, other workers leave its pairs alone; if its worker dies, Optuna's
    stale-trial check fails it after :data:`GRACE_PERIOD` seconds and the pairs are free again.
    Where two claims overlap, the earlier trial keeps the pairs they share.
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, pairs: list[Pair]):
        self.study, self.storage = study, storage
        template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={_CLAIMS: [list(p) for p in pairs]},
                                             user_attrs={"worker": _worker_id()})  # fmt: skip
        study_id = storage.get_study_id_from_name(study.study_name)
        self.trial_id = storage.create_new_trial(study_id, template_trial=template)
        self.number = storage.get_trial_number_from_id(self.trial_id)
        storage.record_heartbeat(self.trial_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            self.storage.record_heartbeat(self.trial_id)

    def kept(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs no other trial has completed and no earlier trial is running."""
        out = []
        for pair in pairs:
            taken = False
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
                if t.number == self.number or t.user_attrs.get("skipped") or pair not in _pairs_of(t):
                    continue
                taken = taken or t.state == TrialState.COMPLETE or t.number < self.number
            if not taken:
                out.append(pair)
        return out

    def release(self) -> None:
        """End the claim (PRUNED: it holds no result; the population's trials are added apart)."""
        self._stop.set()
        self._thread.join()
        self.storage.set_trial_user_attr(self.trial_id, "skipped", "claim")
        self.storage.set_trial_state_values(self.trial_id, TrialState.PRUNED)


class PairGridSampler(optuna.samplers.BaseSampler):
    """Sampler over ``baseline`` x ``horizon`` that hands each trial a pair neither COMPLETE nor RUNNING.

    Optuna's GridSampler counts a grid point as visited once any trial of it finished (failed ones
    included) and matches trials by grid id of one search space; this sampler matches by parameter
    values, so failed or interrupted pairs are handed out again and studies run with different
    subsets of baselines share their work. A trial whose number is a free grid position gets that
    position's pair, which keeps concurrent workers collision-free while the grid is fresh.

    The pair is written to the trial (system attribute ``pair``) before the objective runs, so other
    workers see it as taken before its parameters are suggested, and :meth:`sample_independent`
    reads it back. A sampler of its own on the public :class:`~optuna.samplers.BaseSampler`
    interface: a GridSampler subclass could only change the hand-out through GridSampler's private
    state.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, names: Sequence[str], horizons: Sequence[int]):
        self.storage = storage  # the study's storage (Study offers no public handle on it)
        pairs = [(str(n), int(h)) for n in names for h in horizons]
        # The grid order of GridSampler(seed=0), which earlier versions used: workers of either
        # version that share a study hand out the same pair for the same trial number.
        np.random.RandomState(0).shuffle(pairs)
        self.pairs: list[Pair] = pairs
        self._choice = np.random.default_rng()  # per worker, so concurrent workers rarely collide
        self._study_ids: dict[str, int] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if _PAIR in trial.system_attrs or "fixed_params" in trial.system_attrs:  # enqueued: params given
            return
        complete, running = _status(study)
        running = {p: t for p, t in running.items() if t.number != trial.number}
        ids = range(len(self.pairs))
        free = [i for i in ids if self.pairs[i] not in complete and self.pairs[i] not in running]
        # Nothing free: take an unfinished pair; the objective skips it if an earlier trial runs it.
        candidates = free or [i for i in ids if self.pairs[i] not in complete] or list(ids)
        grid_id = trial.number if trial.number in candidates else int(self._choice.choice(candidates))
        name = study.study_name
        if name not in self._study_ids:  # a study's id never changes: ask the storage once
            self._study_ids[name] = self.storage.get_study_id_from_name(name)
        trial_id = _trial_id(self.storage, self._study_ids[name], trial.number)
        self.storage.set_trial_system_attr(trial_id, _PAIR, list(self.pairs[grid_id]))

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """The handed-out pair's value (``trial.system_attrs`` is read from the storage when asked)."""
        pair = trial.system_attrs.get(_PAIR)
        if pair is None or param_name not in ("baseline", "horizon"):
            raise ValueError(f"trial {trial.number} has no '{param_name}' from the baseline grid; "
                             "only 'baseline' and 'horizon' are sampled, and enqueued trials give both")  # fmt: skip
        return str(pair[0]) if param_name == "baseline" else int(pair[1])

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        """No ``study.stop()`` here: :func:`run_grid` decides when the grid is done."""


def _taken(study: optuna.Study, trial: optuna.Trial, pair: Pair) -> bool:
    """Whether another trial has completed ``pair``, or an earlier trial is running it."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == trial.number or pair not in _pairs_of(t) or t.user_attrs.get("skipped"):
            continue
        if t.state == TrialState.COMPLETE or t.number < trial.number:
            return True
    return False


def _open_study(
    storage_url: str, cfg: TaskConfig, names: Sequence[str], horizons: Sequence[int]
) -> tuple[optuna.Study, dict[str, list]]:
    """Load or create the task's study; returns it with the categorical choices fixed for it.

    Optuna requires a categorical parameter's choices to be the same in every trial of a study, so
    they are fixed when the study is created (all of :data:`~lhopt_dsl.tasks.baselines.BASELINES` and
    horizons 1, 2, plus any others asked for then) and kept as a study user attribute; later runs may
    use any subset.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(storage_url, os.getpid())
    study = optuna.create_study(storage=storage, study_name=study_name(cfg), direction="minimize",
                                sampler=PairGridSampler(storage, names, horizons), load_if_exists=True)  # fmt: skip
    choices = study.user_attrs.get("choices")
    if choices is None:
        choices = {"baseline": list(dict.fromkeys([*BASELINES, *names])),
                   "horizon": sorted({*HORIZONS, *(int(h) for h in horizons)})}  # fmt: skip
        study.set_user_attr("choices", choices)
        study.set_user_attr("task_id", cfg.task_id)
        study.set_user_attr("inner_steps", int(cfg.task.inner_steps))
        study.set_user_attr("config", cfg.to_yaml() if hasattr(cfg, "to_yaml") else str(cfg))
    extra = sorted(set(names) - set(choices["baseline"])) + sorted({int(h) for h in horizons} - set(choices["horizon"]))
    if extra:
        raise ValueError(f"study {study.study_name} in {storage_url} was created for other baselines/horizons; "
                         f"{extra} are not among its choices: use another storage")  # fmt: skip
    return study, choices


def prepare_studies(
    storage_url: str, cfgs: Sequence[TaskConfig], names: Sequence[str] = BASELINES, horizons: Sequence[int] = HORIZONS
) -> None:  # fmt: skip
    """Create the storage's schema and every task's study, before workers start: concurrent
    first-time creation races in Optuna's RDB storage (two workers creating the tables at once)."""
    for cfg in cfgs:
        _open_study(storage_url, cfg, names, horizons)


def _value(curve: LearningCurve) -> float:
    """A trial's objective: the final validation loss (``inf`` for a diverged run, still COMPLETE)."""
    final = curve.valid_loss[-1]
    return float(final) if math.isfinite(final) else math.inf


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_grid(
    cfg: TaskConfig,
    storage_url: str,
    names: Sequence[str] = BASELINES,
    horizons: Sequence[int] = HORIZONS,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    max_valid: int = 512,
    n_jobs: int = 1,
    progress: Progress | None = None,
    wait: bool = True,
    population: bool | None = None,
    compiled: bool = False,
    evaluations_per_T: int = GRID_EVALUATIONS_PER_T,
) -> dict[Pair, LearningCurve]:
    """Run (or resume, or help finish) the baseline grid of one task; return every pair's curve.

    Pairs already COMPLETE in the storage are read back, not re-run. ``progress(done, total, pair,
    curve)`` is called after each pair this worker completes (an exception it raises stops the run;
    the pair stays recorded). With ``wait`` (default) the call returns only when every pair is
    complete, waiting for other workers' running trials; otherwise it returns the pairs done so far.
    Each run measures its validation and test losses ``evaluations_per_T`` times per T steps.
    """
    horizons = [int(h) for h in dict.fromkeys(horizons)]
    grid = _GridRun(cfg, storage_url, list(dict.fromkeys(names)), horizons, device, data_dir, max_valid, progress,
                    compiled, evaluations_per_T)  # fmt: skip
    # AdamW pairs of one horizon share the task: train them together as one batched population
    # where that pays (``population=None``: lhopt_dsl.tasks.population.population_pays; PERFORMANCE.md).
    if population is None:
        population = population_pays(cfg, len(ADAMW_BASELINES), device, compiled)
    for horizon in horizons if population else ():
        if not grid.population_pass(horizon):
            break  # the task's model cannot be batched: sequential runs below
    return grid.finish(n_jobs, wait)


class _GridRun:
    """One worker's share of one task's grid: batched AdamW populations first where they pay, then
    the remaining pairs one trial at a time through Optuna, resumable and shared between workers."""

    def __init__(self, cfg: TaskConfig, storage_url: str, names: list[str], horizons: list[int],
                 device: str | torch.device, data_dir: str | None, max_valid: int, progress: Progress | None,
                 compiled: bool, evaluations_per_T: int):  # fmt: skip
        self.cfg, self.storage_url, self.names = cfg, storage_url, names
        self.device, self.data_dir, self.max_valid, self.progress = device, data_dir, max_valid, progress
        self.compiled, self.evaluations_per_T = compiled, evaluations_per_T
        self.study, self.choices = _open_study(storage_url, cfg, names, horizons)
        sampler = self.study.sampler
        assert isinstance(sampler, PairGridSampler)
        self.grid = sampler.pairs
        self.wanted = set(self.grid)
        self.T = int(cfg.task.inner_steps)

    def _evaluations(self, horizon: int) -> int:
        return horizon * min(self.evaluations_per_T, self.T)

    def _attrs(self, curve: LearningCurve, steps: int, seconds: float, from_population: bool) -> dict[str, Any]:
        run = {"steps": steps, "seconds": round(seconds, 3), "device": str(self.device), "max_valid": self.max_valid,
               "population": from_population}  # fmt: skip
        return {"worker": _worker_id(), "curve": curve_to_attrs(curve), "run": run, "steps": steps}

    def objective(self, trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("baseline", self.choices["baseline"])
        horizon = int(trial.suggest_categorical("horizon", self.choices["horizon"]))
        trial.set_user_attr("worker", _worker_id())
        if _taken(self.study, trial, (name, horizon)):
            trial.set_user_attr("skipped", "duplicate")
            raise optuna.TrialPruned(f"({name}, {horizon}) is done or running elsewhere")
        t0 = time.time()
        curve = run_baseline(self.cfg, name, horizon * self.T, device=self.device, data_dir=self.data_dir,
                             max_valid=self.max_valid, evaluations=self._evaluations(horizon))  # fmt: skip
        for key, value in self._attrs(curve, horizon * self.T, time.time() - t0, False).items():
            trial.set_user_attr(key, value)
        if _taken(self.study, trial, (name, horizon)):  # another worker finished it meanwhile (a race)
            trial.set_user_attr("skipped", "duplicate")
            raise optuna.TrialPruned(f"({name}, {horizon}) was completed elsewhere meanwhile")
        return _value(curve)

    def population_pass(self, horizon: int) -> bool:
        """Run this horizon's free AdamW pairs as one batched population; False if the task's model
        cannot be batched (the caller then runs every pair on its own)."""
        complete, running = _status(self.study)
        todo = [(n, horizon) for n in self.names if n in ADAMW_BASELINES and (n, horizon) not in complete
                and (n, horizon) not in running]  # fmt: skip
        if len(todo) < 2:
            return True
        dists = {"baseline": CategoricalDistribution(self.choices["baseline"]),
                 "horizon": CategoricalDistribution(self.choices["horizon"])}  # fmt: skip
        claim = _Claim(self.study, _storage(self.storage_url, os.getpid()), todo)
        try:
            todo = claim.kept(todo)
            t0 = time.time()
            curves = run_population(self.cfg, [schedule_of(n) for n, _ in todo], steps=horizon * self.T,
                                    device=self.device, data_dir=self.data_dir, max_valid=self.max_valid,
                                    compiled=self.compiled, evaluations=self._evaluations(horizon)) if len(todo) >= 2 else []  # fmt: skip
            if curves is None:
                return False
            share = (time.time() - t0) / max(len(todo), 1)  # each member's share of the population's time
            # The runs become finished trials in one transaction (public API; a trial per pair
            # through ``optimize`` would cost a dozen round trips to the storage each).
            self.study.add_trials([_finished((name, h), _value(curve), self._attrs(curve, h * self.T, share, True), dists)
                                   for (name, h), curve in zip(todo, curves)])  # fmt: skip
        finally:
            claim.release()
        if self.progress is not None and curves:
            complete, _ = _status(self.study)
            done = sum(p in complete for p in self.grid)
            for pair, curve in zip(todo, curves):
                if pair in self.wanted:
                    self.progress(done, len(self.grid), pair, curve)
        return True

    def after(self, study: optuna.Study, trial: FrozenTrial) -> None:
        complete, running = _status(study)
        if self.progress is not None and trial.state == TrialState.COMPLETE and _pair(trial) in self.wanted:
            done = sum(p in complete for p in self.grid)
            self.progress(done, len(self.grid), _pair(trial), curve_from_attrs(trial.user_attrs["curve"]))
        if all(p in complete or p in running for p in self.grid):
            study.stop()  # nothing left to hand out

    def finish(self, n_jobs: int, wait: bool) -> dict[Pair, LearningCurve]:
        """Run the pairs still free one trial at a time; with ``wait``, until every pair is complete."""
        study = self.study
        while True:
            complete, running = _status(study)
            missing = [p for p in self.grid if p not in complete]
            if not missing:
                break
            free = [p for p in missing if p not in running]
            if free:
                study.optimize(self.objective, n_trials=len(free), n_jobs=n_jobs, callbacks=[self.after],
                               gc_after_trial=False)  # fmt: skip
            elif not wait:
                break
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)  # a dead worker's trials become free again
                time.sleep(POLL_INTERVAL)
        complete, _ = _status(study)
        return {p: curve_from_attrs(complete[p].user_attrs["curve"]) for p in self.grid if p in complete}


def cached_curve(storage_url: str, cfg: TaskConfig, name: str, steps: int) -> LearningCurve | None:
    """The stored curve of baseline ``name`` run for ``steps`` inner steps on ``cfg``'s task, if any."""
    T = int(cfg.task.inner_steps)
    if steps % T:
        return None  # the grid runs whole multiples of T

    def usable(attrs: dict[str, Any]) -> bool:
        return attrs.get("steps") == steps and "curve" in attrs

    attrs = BaselineStore(storage_url).get(study_name(cfg), (name, steps // T), usable)
    return None if attrs is None else curve_from_attrs(attrs["curve"])


# --- the one baseline cache -----------------------------------------------------------------------

#: Version of the eval-ood runs the store holds (:mod:`runners.ood`); bump it when a program, the
#: loop or a baseline changes. Scopes of another version are neither read nor exported.
OOD_VERSION = 1

#: The kinds of scope the store holds: study name prefix, and the user attribute an entry's run is under.
SCOPES: dict[str, tuple[str, str]] = {
    "grid": (f"baselines-v{CURVE_VERSION}-", "curve"),  # a task's grid (lhopt eval, meta-training, transfer)
    "ood": (f"ood-v{OOD_VERSION}-", "run"),  # one program setting of lhopt eval-ood
}


def scope_kind(scope: str) -> str | None:
    return next((kind for kind, (prefix, _) in SCOPES.items() if scope.startswith(prefix)), None)


def _finished(pair: Pair, value: float, attrs: dict[str, Any],
              distributions: dict[str, BaseDistribution] | None) -> FrozenTrial:  # fmt: skip
    """A finished trial of ``pair``: with the grid's parameters where ``distributions`` are given
    (a task's grid), else with the pair as a system attribute alone (eval-ood's runs, whose
    baselines vary from one invocation to the next, which Optuna's fixed categorical choices do not allow)."""
    params = {"baseline": pair[0], "horizon": int(pair[1])} if distributions else {}
    value = float(value) if value is not None and math.isfinite(value) else math.inf
    return optuna.trial.create_trial(params=params, distributions=distributions or {}, value=value,
                                     user_attrs=attrs, system_attrs={_PAIR: [pair[0], int(pair[1])]})  # fmt: skip


class BaselineStore:
    """The one cache of finished baseline runs, in one place: the Optuna RDB storage at ``url`` (the
    ``--storage`` of every command that runs baselines; SQLite ``baselines.db`` by default, PostgreSQL
    to share it between machines), exported to and imported from plain files as one.

    An entry is keyed by (scope, baseline name, horizon). A scope is an Optuna study of one kind of
    :data:`SCOPES`: a task's grid (:func:`study_name`, run by :func:`run_grid`) or one program setting
    of ``lhopt eval-ood`` (:func:`runners.ood.scope_of`). An entry is a COMPLETE trial whose system
    attribute ``pair`` (or, in a grid, its parameters) names its (baseline, horizon), whose user
    attributes hold the run (a grid's ``curve``, an eval-ood ``run``) and whose value is its final
    validation loss (inf when it diverged). A pair's entry is its earliest usable COMPLETE trial, so
    two writers racing leave a duplicate, never a conflict.

    Each entry is stored in its own transaction: a killed process loses none already stored, and
    writers in several processes share the storage (SQLite in write-ahead-log mode on one machine).
    The grid adds its own protocol on top (:class:`PairGridSampler`, claims, heartbeats), so that
    workers share the running of a grid too.
    """

    def __init__(self, url: str):
        self.url = url

    def exists(self) -> bool:
        """False where the storage is an SQLite file not yet created (looking never creates it)."""
        return not self.url.startswith("sqlite:///") or Path(self.url[len("sqlite:///"):]).exists()

    def _storage(self) -> optuna.storages.RDBStorage:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return _storage(self.url, os.getpid(), False)

    def _load(self, scope: str) -> optuna.Study | None:
        if not self.exists():
            return None
        try:
            return optuna.load_study(study_name=scope, storage=self._storage())
        except KeyError:
            return None

    def entries(self, scope: str, usable: Callable[[dict[str, Any]], bool] | None = None) -> dict[Pair, dict[str, Any]]:
        """Every pair's entry in ``scope`` (its user attributes): the earliest COMPLETE trial of the
        pair whose attributes are ``usable`` (default: any); {} for a scope the store lacks."""
        study = self._load(scope)
        if study is None:
            return {}
        found: dict[Pair, dict[str, Any]] = {}
        for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
            pair = _pair(t)
            if pair is None or pair in found or t.user_attrs.get("skipped"):
                continue
            if usable is None or usable(t.user_attrs):
                found[pair] = t.user_attrs
        return found

    def get(self, scope: str, pair: Pair, usable: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The entry of ``pair`` in ``scope`` (see :meth:`entries`), or None."""
        return self.entries(scope, usable).get((str(pair[0]), int(pair[1])))

    def put(self, scope: str, pair: Pair, value: float, attrs: dict[str, Any],
            scope_attrs: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Store a finished run as the entry of ``pair`` in ``scope`` (created, with ``scope_attrs``
        describing it, if new); ``attrs`` must be strict JSON data. For eval-ood's scopes: a grid's
        trials are written by :func:`run_grid`."""
        if scope_kind(scope) != "ood":
            raise ValueError(f"{scope}: only eval-ood's scopes are written one entry at a time; run_grid writes grids")
        if self.url.startswith("sqlite:///"):
            Path(self.url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(storage=self._storage(), study_name=scope, direction="minimize", load_if_exists=True)
        if scope_attrs and not study.user_attrs:
            for k, v in scope_attrs.items():
                study.set_user_attr(k, v)
        study.add_trial(_finished(pair, value, attrs, None))

    def scopes(self) -> list[str]:
        """The scopes of every kind of :data:`SCOPES` the store holds, by name."""
        if not self.exists():
            return []
        summaries = optuna.get_all_study_summaries(self._storage(), include_best_trial=False)
        return sorted(s.study_name for s in summaries if scope_kind(s.study_name) is not None)

    def export(self, directory: str | os.PathLike[str]) -> dict[str, int]:
        """See :func:`export_grids`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        counts = {"written": 0, "unchanged": 0, "runs": 0}
        for scope in self.scopes():
            data = self._exported(scope)
            if data is None:
                continue
            text = json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()
            blob = gzip.compress(text, mtime=0)  # no timestamp: the same runs give the same bytes
            path = out / f"{scope}.json.gz"
            if path.exists() and path.read_bytes() == blob:
                counts["unchanged"] += 1
            else:
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(blob)
                tmp.replace(path)  # never a half-written file under the final name
                counts["written"] += 1
            counts["runs"] += len(data["runs"])
        return counts

    def _exported(self, scope: str) -> dict[str, Any] | None:
        """One scope as plain data (None if it holds no entry). A grid's file is as it has always
        been; an eval-ood scope's says its kind and version."""
        study = self._load(scope)
        assert study is not None
        kind = scope_kind(scope)
        if kind == "grid":
            complete, _ = _status(study)
            entries = {p: t.user_attrs for p, t in complete.items() if "curve" in t.user_attrs}
            values = {p: t.value for p, t in complete.items()}
            head = {"format": EXPORT_FORMAT, "curve_version": CURVE_VERSION}
        else:
            entries = self.entries(scope, lambda a: isinstance(a.get("run"), dict))
            values = {p: _value_of_run(a["run"]) for p, a in entries.items()}
            head = {"format": EXPORT_FORMAT, "kind": "ood", "ood_version": OOD_VERSION}
        runs = [{"baseline": name, "horizon": h, "value": _strict(values[(name, h)]), "user_attrs": _strict(attrs)}
                for (name, h), attrs in sorted(entries.items())]  # fmt: skip
        if not runs:
            return None
        return {**head, "study": scope, "user_attrs": _strict(study.user_attrs), "runs": runs}

    def import_(self, directory: str | os.PathLike[str]) -> dict[str, int]:
        """See :func:`import_grids`."""
        files = sorted(Path(directory).glob("*.json.gz"))
        if not files:
            raise ValueError(f"no exported baseline grids (*.json.gz) in {directory}")
        scopes = [_read_export(p) for p in files]
        if self.url.startswith("sqlite:///"):
            Path(self.url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        counts = {"tasks": 0, "runs": 0, "present": 0}
        for data in tqdm(scopes, desc="import", unit="grid", disable=None):  # None: a bar on a terminal only
            added = self._merge(data)
            counts["present"] += len(data["runs"]) - added
            counts["tasks"] += bool(added)
            counts["runs"] += added
        return counts

    def _merge(self, data: dict[str, Any]) -> int:
        """Add the runs of one exported scope that the store lacks; returns how many were added."""
        attrs, grid = data["user_attrs"], "kind" not in data
        study = optuna.create_study(storage=self._storage(), study_name=data["study"], direction="minimize",
                                    load_if_exists=True)  # fmt: skip
        dists = None
        if grid:
            mine = study.user_attrs.get("choices")
            if mine is None:
                for k, v in attrs.items():
                    study.set_user_attr(k, v)
                mine = attrs["choices"]
            elif mine != attrs["choices"]:
                raise ValueError(f"study {data['study']} in {self.url} was created for other baselines/horizons than "
                                 "the exported one; import into another storage")  # fmt: skip
            dists = {"baseline": CategoricalDistribution(mine["baseline"]),
                     "horizon": CategoricalDistribution(mine["horizon"])}  # fmt: skip
            present = set(_status(study)[0])
        else:
            if not study.user_attrs:
                for k, v in attrs.items():
                    study.set_user_attr(k, v)
            present = set(self.entries(data["study"], lambda a: isinstance(a.get("run"), dict)))
        new = [run for run in data["runs"] if (run["baseline"], int(run["horizon"])) not in present]
        if new:
            study.add_trials([_finished((run["baseline"], int(run["horizon"])), math.inf if run["value"] is None
                              else float(run["value"]), run["user_attrs"], dists) for run in new])  # fmt: skip
        return len(new)


def _value_of_run(run: dict[str, Any]) -> float:
    """An eval-ood run's value: its final validation loss (inf when it diverged or holds none)."""
    valid = run.get("valid_loss") or [None]
    return float(valid[-1]) if isinstance(valid[-1], (int, float)) and math.isfinite(valid[-1]) else math.inf


# --- a portable copy of the cache -----------------------------------------------------------------

#: The ``format`` field of an exported scope; files of any other format or version are refused.
EXPORT_FORMAT = "lhopt-baseline-grid"


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float as null (strict JSON; :func:`curve_from_attrs` reads them back)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def export_grids(storage_url: str, directory: str | os.PathLike[str]) -> dict[str, int]:
    """Write every scope of the baseline cache at ``storage_url`` (each task's grid, each eval-ood
    program setting) to ``directory``, one gzipped JSON file per scope (``<study name>.json.gz``),
    and return how many files were written, kept unchanged and how many runs they hold.

    The files are plain data (no pickles), byte-identical for the same runs (so a directory under
    version control changes only where runs were added), and :func:`import_grids` merges them into
    any storage: the way to share a cache between machines, or to keep it across them.
    """
    return BaselineStore(storage_url).export(directory)


def _check_ood_run(run: Any) -> None:
    """An exported eval-ood entry's run: the measured curves as lists (TypeError/KeyError otherwise)."""
    data = run["user_attrs"]["run"]
    if not all(isinstance(data[k], list) for k in ("steps", "valid_loss", "test_loss", "train_loss")):
        raise TypeError("an eval-ood run's curves are lists")


def _read_export(path: Path) -> dict[str, Any]:
    """One exported scope, checked; a file that is not one says so with its name."""
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a gzipped JSON baseline grid ({e})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: not an exported baseline grid (format {data.get('format') if isinstance(data, dict) else None!r})")
    if "kind" in data:
        return _read_ood_export(path, data)
    if data.get("curve_version") != CURVE_VERSION:
        raise ValueError(f"{path}: baseline curves of version {data.get('curve_version')}, this lhopt reads version "
                         f"{CURVE_VERSION}; run the baselines again (lhopt eval does) instead of importing them")  # fmt: skip
    choices = (data.get("user_attrs") or {}).get("choices") or {}
    if scope_kind(str(data.get("study", ""))) != "grid" or not choices.get("baseline"):
        raise ValueError(f"{path}: the grid has no study name or baseline choices")
    for run in data.get("runs", []):
        try:
            ok = run["baseline"] in choices["baseline"] and int(run["horizon"]) in choices["horizon"]
            curve_from_attrs(run["user_attrs"]["curve"])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: a malformed run ({str(run)[:120]})")
    return data


def _read_ood_export(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    if data.get("kind") != "ood" or data.get("ood_version") != OOD_VERSION:
        raise ValueError(f"{path}: eval-ood runs of kind {data.get('kind')!r}, version {data.get('ood_version')}; this "
                         f"lhopt reads version {OOD_VERSION}: run lhopt eval-ood again instead of importing them")  # fmt: skip
    if scope_kind(str(data.get("study", ""))) != "ood" or not isinstance(data.get("user_attrs"), dict):
        raise ValueError(f"{path}: the eval-ood runs have no study name")
    for run in data.get("runs", []):
        try:
            ok = isinstance(run["baseline"], str) and int(run["horizon"]) >= 1
            _check_ood_run(run)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: a malformed run ({str(run)[:120]})")
    data.setdefault("runs", [])
    return data


def import_grids(directory: str | os.PathLike[str], storage_url: str) -> dict[str, int]:
    """Merge the scopes exported by :func:`export_grids` into ``storage_url``: every run of a pair the
    storage has no entry of is added as a finished trial; pairs it has are left alone. Every file is
    checked before anything is written (a malformed one is a ``ValueError`` naming it). Returns how
    many scopes ("tasks") and runs were added and how many runs were already there."""
    return BaselineStore(storage_url).import_(directory)
