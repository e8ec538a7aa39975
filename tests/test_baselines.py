"""The Section 4.1 baselines: names and runs (lhopt_dsl.tasks.baselines), and the resumable, shareable Optuna grid
(runners.baselines)."""

import functools
import math
import multiprocessing as mp
import os
from collections import Counter

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

import lhopt_dsl.tasks.baselines as lb
import runners.baselines as bl
from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.spec.schedule import SHAPES, Schedule, segment_bounds
from lhopt_dsl.tasks import compile_task
from lhopt_dsl.tasks.baselines import BASELINES, run_baseline
from lhopt_dsl.tasks.training import run_schedule
from runners.baselines import cached_curve, run_grid, study_name

from .conftest import SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
NAMES = ["adamw-constant-lr0.01", "schedulefree", "prodigy"]


def smoke_cfg(family: str, inner_steps: int = 60, outer_steps: int = 4, **fields) -> TaskConfig:
    for s in range(500):
        cfg = sample(SMOKE, s)
        t = cfg.task
        if cfg.family == family and (t.inner_steps, t.outer_steps) == (inner_steps, outer_steps) and all(
            getattr(t, k) == v for k, v in fields.items()
        ):
            return cfg
    raise AssertionError(family)


NQM = smoke_cfg("nqm", dim=10)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a loaded machine: one intra-op thread is many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CountingRuns:
    """Wraps run_baseline: counts the runs and can fail on the n-th one."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail_on = fail_on

    def __call__(self, cfg, name, steps, **kwargs):
        self.calls.append((name, steps))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated crash")
        return run_baseline(cfg, name, steps, **kwargs)


def complete_pairs(url: str, cfg: TaskConfig) -> Counter:
    study = optuna.load_study(study_name=study_name(cfg), storage=url)
    return Counter((t.params["baseline"], t.params["horizon"]) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def same_curve(a, b) -> bool:
    """Equal curves (a NaN, a diverged run's, equals a NaN)."""
    same = functools.partial(np.array_equal, equal_nan=True)
    return a.steps == b.steps and same(a.valid_loss, b.valid_loss) and same(a.train_loss, b.train_loss) and \
        same([a.test_loss], [b.test_loss]) and same(a.test_curve, b.test_curve)  # fmt: skip


# --- names and single runs ------------------------------------------------------------------------


def test_the_35_adamw_baselines_and_two_tuning_free_ones():
    assert len(BASELINES) == 37 and len(set(BASELINES)) == 37
    adamw = [n for n in BASELINES if n.startswith("adamw-")]
    assert len(adamw) == 35 and set(BASELINES) - set(adamw) == {"schedulefree", "prodigy"}
    schedules = [lb.schedule_of(n) for n in adamw]
    assert {s.lr for s in schedules} == {1e-4, 3e-4, 1e-3, 3e-3, 1e-2}
    assert {s.shape for s in schedules} == set(SHAPES)
    assert all(s.name == n for s, n in zip(schedules, adamw))
    assert lb.schedule_of("adamw-cosine_0.1-lr0.0003") == Schedule(lr=3e-4, shape="cosine_0.1")
    with pytest.raises(ValueError, match="unknown baseline"):
        lb.schedule_of("adamw-sawtooth-lr0.1")
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baseline(NQM, "sgd", 10)


def test_adamw_baseline_is_run_schedule_on_the_same_task():
    T = NQM.task.inner_steps
    curve = run_baseline(NQM, "adamw-cosine-lr0.003", 2 * T)
    direct = run_schedule(NQM, Schedule(lr=3e-3, shape="cosine"), steps=2 * T)
    assert same_curve(curve, direct)
    assert curve.steps == segment_bounds(2 * T, 2 * NQM.task.outer_steps)


@pytest.mark.parametrize("name", ["schedulefree", "prodigy"])
@pytest.mark.parametrize("family", ["nqm", "mlp"])
def test_tuning_free_curves_are_finite_and_improve(name, family):
    cfg = NQM if family == "nqm" else smoke_cfg("mlp", norm="none")
    T = cfg.task.inner_steps
    curve = run_baseline(cfg, name, T)
    assert curve.steps == segment_bounds(T, cfg.task.outer_steps)
    assert np.all(np.isfinite(curve.valid_loss)) and np.all(np.isfinite(curve.train_loss))
    assert math.isfinite(curve.test_loss)
    assert curve.valid_loss[-1] < curve.valid_loss[0]
    again = run_baseline(cfg, name, T)
    assert same_curve(curve, again)  # deterministic on the same task


def test_schedulefree_recalibrates_batchnorm_without_touching_the_data_order():
    base = smoke_cfg("mlp", norm="none")
    cfg = base.model_copy(update={"task": base.task.model_copy(update={"norm": "batch"})})
    curve = run_baseline(cfg, "schedulefree", cfg.task.inner_steps)
    assert np.all(np.isfinite(curve.valid_loss)) and curve.valid_loss[-1] < curve.valid_loss[0]
    assert curve.valid_loss[0] == run_baseline(cfg, "adamw-constant-lr0.001", 8).valid_loss[0]  # same start
    a, b = compile_task(cfg), compile_task(cfg)
    a.next_batch()
    b.next_batch()
    lb._recalibrate_batchnorm(b)
    assert all(torch.equal(x, y) for x, y in zip(a.next_batch(), b.next_batch()))
    bn = lb._batchnorms(b.model)[0]
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == lb.BN_CALIBRATION_BATCHES


# --- the grid ---------------------------------------------------------------------------------------


def test_grid_resumes_without_repeating_finished_or_failed_work(tmp_path, monkeypatch):
    url = bl.default_storage(tmp_path)
    grid = {(n, h) for n in NAMES for h in (1, 2)}

    def stop_after_two(done, total, pair, curve):
        assert total == 6
        if done == 2:
            raise KeyboardInterrupt  # the run is interrupted; both pairs stay recorded

    first = CountingRuns()
    monkeypatch.setattr(bl, "run_baseline", first)
    with pytest.raises(KeyboardInterrupt):
        run_grid(NQM, url, names=NAMES, progress=stop_after_two)
    assert len(first.calls) == 2 and sum(complete_pairs(url, NQM).values()) == 2

    crashing = CountingRuns(fail_on=2)  # a crash inside a run: that trial is FAIL, not done
    monkeypatch.setattr(bl, "run_baseline", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_grid(NQM, url, names=NAMES)
    assert sum(complete_pairs(url, NQM).values()) == 3

    resumed = CountingRuns()
    monkeypatch.setattr(bl, "run_baseline", resumed)
    seen = []
    result = run_grid(NQM, url, names=NAMES, progress=lambda d, t, p, c: seen.append(d))
    assert len(resumed.calls) == 3 and seen == [4, 5, 6]  # the failed pair is run again, the rest not
    assert set(result) == grid and complete_pairs(url, NQM) == Counter(dict.fromkeys(grid, 1))
    T = NQM.task.inner_steps
    for (name, h), curve in result.items():
        assert curve.steps[-1] == h * T

    done = CountingRuns()
    monkeypatch.setattr(bl, "run_baseline", done)
    again = run_grid(NQM, url, names=NAMES)
    assert done.calls == [] and set(again) == grid
    assert all(same_curve(again[p], result[p]) for p in grid)

    # A different subset of baselines shares the study: only the new pairs run.
    more = CountingRuns()
    monkeypatch.setattr(bl, "run_baseline", more)
    other = run_grid(NQM, url, names=["prodigy", "adamw-linear-lr0.001"], horizons=(1,))
    assert more.calls == [("adamw-linear-lr0.001", T)] and set(other) == {("prodigy", 1), ("adamw-linear-lr0.001", 1)}
    with pytest.raises(ValueError, match="not among its choices"):
        run_grid(NQM, url, names=["adamw-constant-lr0.5"])


def test_cached_curve_returns_the_runs_curve(tmp_path):
    url = bl.default_storage(tmp_path)
    T = NQM.task.inner_steps
    assert cached_curve(url, NQM, "prodigy", T) is None
    assert not (tmp_path / "baselines.db").exists()  # looking does not create a database
    names = ["adamw-cosine-lr0.003", "prodigy"]
    result = run_grid(NQM, url, names=names, horizons=(1, 2))
    for name in names:
        for h in (1, 2):
            cached = cached_curve(url, NQM, name, h * T)
            assert cached is not None and same_curve(cached, result[(name, h)])
    # the grid measures each run GRID_EVALUATIONS_PER_T times per T steps, validation and test
    direct = run_schedule(NQM, Schedule(lr=3e-3, shape="cosine"), steps=2 * T,
                          evaluations=2 * bl.GRID_EVALUATIONS_PER_T)  # fmt: skip
    stored = cached_curve(url, NQM, "adamw-cosine-lr0.003", 2 * T)
    assert same_curve(stored, direct) and len(stored.steps) == 2 * bl.GRID_EVALUATIONS_PER_T + 1
    assert stored.test_loss == stored.test_curve[-1]
    assert cached_curve(url, NQM, "prodigy", 3 * T) is None
    assert cached_curve(url, NQM, "schedulefree", T) is None
    assert cached_curve(url, smoke_cfg("nqm", dim=100), "prodigy", T) is None  # another task


def test_diverged_run_is_recorded_and_not_rerun(tmp_path, monkeypatch):
    url = bl.default_storage(tmp_path)

    def diverging(cfg, name, steps, **kwargs):
        curve = run_baseline(cfg, name, steps, **kwargs)
        curve.valid_loss[-1] = math.nan
        return curve

    monkeypatch.setattr(bl, "run_baseline", diverging)
    result = run_grid(NQM, url, names=["adamw-constant-lr0.01"], horizons=(1,))
    assert math.isnan(result[("adamw-constant-lr0.01", 1)].valid_loss[-1])
    study = optuna.load_study(study_name=study_name(NQM), storage=url)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == math.inf
    monkeypatch.setattr(bl, "run_baseline", CountingRuns(fail_on=1))
    run_grid(NQM, url, names=["adamw-constant-lr0.01"], horizons=(1,))  # would raise if it re-ran


def test_exported_grids_import_into_another_storage_as_the_same_cache(tmp_path, monkeypatch, capsys):
    import gzip
    import json

    from runners.cli import main

    (tmp_path / "a").mkdir()
    a, b = bl.default_storage(tmp_path / "a"), bl.default_storage(tmp_path / "b")  # b's directory is made by import
    names = ["adamw-constant-lr0.01", "prodigy"]

    def diverging_prodigy(cfg, name, steps, **kwargs):
        curve = run_baseline(cfg, name, steps, **kwargs)
        if name == "prodigy":
            curve.valid_loss[-1] = math.nan
        return curve

    monkeypatch.setattr(bl, "run_baseline", diverging_prodigy)
    result = run_grid(NQM, a, names=names, horizons=(1, 2))
    monkeypatch.setattr(bl, "run_baseline", CountingRuns(fail_on=1))  # nothing below may run a baseline
    out = tmp_path / "grids"
    assert main(["baselines", "export", str(out), "--storage", a]) == 0
    (path,) = out.iterdir()
    assert path.name == f"{study_name(NQM)}.json.gz"
    first = path.read_bytes()
    assert main(["baselines", "export", str(out), "--storage", a]) == 0  # same runs, same bytes
    assert path.read_bytes() == first and "0 task grids written, 1 unchanged" in capsys.readouterr().out
    assert main(["baselines", "import", str(out), "--storage", b]) == 0
    assert "4 runs added to 1 task grids" in capsys.readouterr().out
    for name in names:
        for h in (1, 2):
            assert same_curve(cached_curve(b, NQM, name, h * NQM.task.inner_steps), result[(name, h)])
    assert run_grid(NQM, b, names=names, horizons=(1, 2)).keys() == result.keys()  # served, never re-run
    diverged = optuna.load_study(study_name=study_name(NQM), storage=b).get_trials()
    assert sorted(t.value for t in diverged)[-1] == math.inf  # a diverged run stays diverged
    assert main(["baselines", "import", str(out), "--storage", b]) == 0  # importing again adds nothing
    assert "0 runs added" in capsys.readouterr().out and complete_pairs(b, NQM) == complete_pairs(a, NQM)

    # Files that are not exported grids are refused, naming the file, before anything is written.
    c = bl.default_storage(tmp_path / "c")
    data = json.loads(gzip.decompress(first))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "z.json.gz").write_bytes(gzip.compress(json.dumps({**data, "curve_version": 1}).encode()))
    (bad / "a.json.gz").write_bytes(first)
    assert main(["baselines", "import", str(bad), "--storage", c]) == 2
    assert "z.json.gz: baseline curves of version 1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    (bad / "z.json.gz").write_bytes(b"import os; os.system('echo owned')")
    assert main(["baselines", "import", str(bad), "--storage", c]) == 2
    assert "z.json.gz: not a gzipped JSON baseline grid" in capsys.readouterr().err
    runs = [{**data["runs"][0], "baseline": "sgd-lr1"}]
    (bad / "z.json.gz").write_bytes(gzip.compress(json.dumps({**data, "runs": runs}).encode()))
    assert main(["baselines", "import", str(bad), "--storage", c]) == 2
    assert "z.json.gz: a malformed run" in capsys.readouterr().err
    assert main(["baselines", "import", str(tmp_path / "nothing"), "--storage", c]) == 2
    assert main(["baselines", "export", str(out), "--storage", bl.default_storage(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path):
    """A fresh baseline storage: SQLite (one machine's workers) or PostgreSQL (several machines')."""
    if request.param == "sqlite":
        return bl.default_storage(tmp_path)
    return request.getfixturevalue("postgres_url")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_dead_workers_running_trial_is_failed_by_heartbeat_and_rerun(storage_url, monkeypatch):
    monkeypatch.setattr(bl, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(bl, "GRACE_PERIOD", 1)
    monkeypatch.setattr(bl, "POLL_INTERVAL", 0.2)
    bl._storage.cache_clear()
    url = storage_url
    names = ["adamw-constant-lr0.01"]
    study, choices = bl._open_study(url, NQM, names, (1, 2))
    dead = study.ask()  # a worker took a pair, sent one heartbeat and died
    dead.suggest_categorical("baseline", choices["baseline"])
    dead.suggest_categorical("horizon", choices["horizon"])
    storage = bl._storage(url, os.getpid())
    storage.record_heartbeat(bl._trial_id(storage, storage.get_study_id_from_name(study.study_name), dead.number))
    dead_pair = (dead.params["baseline"], dead.params["horizon"])
    runs = CountingRuns()
    monkeypatch.setattr(bl, "run_baseline", runs)
    result = run_grid(NQM, url, names=names)
    bl._storage.cache_clear()
    assert sorted(runs.calls) == sorted((n, h * NQM.task.inner_steps) for n in names for h in (1, 2))
    assert runs.calls[-1][1] == dead_pair[1] * NQM.task.inner_steps  # the free pair first, then the dead one
    assert len(result) == 2 and study.get_trials()[dead.number].state == TrialState.FAIL


def _grid_worker(url: str, cfg_yaml: str, names: list[str], queue) -> None:
    cfg = TaskConfig.from_yaml(cfg_yaml)
    result = run_grid(cfg, url, names=names)
    queue.put(sorted((name, h, curve.valid_loss[-1]) for (name, h), curve in result.items()))


def test_two_processes_share_one_study_without_duplicates(storage_url, monkeypatch):
    """Two workers (processes; on PostgreSQL they could be on two machines) finish one grid: each
    pair runs to completion once. The storage's schema and the study exist before they start."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    url = storage_url
    names = ["adamw-constant-lr0.01", "adamw-cosine-lr0.001", "schedulefree", "prodigy"]
    grid = {(n, h) for n in names for h in (1, 2)}
    bl.prepare_studies(url, [NQM], names)
    bl._storage.cache_clear()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_grid_worker, args=(url, NQM.to_yaml(), names, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert complete_pairs(url, NQM) == Counter(dict.fromkeys(grid, 1))  # each pair once, all covered
    assert results[0] == results[1] and {(n, h) for n, h, _ in results[0]} == grid
