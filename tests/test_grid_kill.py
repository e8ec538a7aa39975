"""A baseline worker killed mid-grid on a shared PostgreSQL storage: another worker completes the grid."""

import multiprocessing as mp
import os
import signal
import time
from collections import Counter

import optuna
from optuna.trial import TrialState

import runners.baselines as bl
from lhopt_dsl.spec.sample import TaskConfig
from lhopt_dsl.tasks.baselines import run_baseline

from .test_baselines import NQM, complete_pairs

NAMES = ["adamw-constant-lr0.01", "adamw-cosine-lr0.001", "schedulefree", "prodigy"]


def _slow_run(cfg, name, steps, **kwargs):
    time.sleep(1.0)  # long enough to be killed in the middle of the grid
    return run_baseline(cfg, name, steps, **kwargs)


def _doomed_worker(url: str, cfg_yaml: str) -> None:
    import torch

    torch.set_num_threads(1)
    bl.HEARTBEAT_INTERVAL, bl.GRACE_PERIOD = 1, 3
    bl.run_baseline = _slow_run
    bl.population_pays = lambda *a, **k: False  # one trial per pair, so that one is mid-run when killed
    bl.run_grid(TaskConfig.from_yaml(cfg_yaml), url, names=NAMES)


def test_a_killed_worker_leaves_a_grid_that_another_completes(postgres_url, monkeypatch):
    url = postgres_url
    bl.prepare_studies(url, [NQM], NAMES)
    proc = mp.get_context("spawn").Process(target=_doomed_worker, args=(url, NQM.to_yaml()))
    proc.start()
    study = optuna.load_study(study_name=bl.study_name(NQM), storage=url)
    def holds_pair(trial) -> bool:  # a worker records itself on a trial once the trial has its pair
        return "worker" in trial.user_attrs

    deadline = time.monotonic() + 180
    while True:  # kill it with work done and work in progress
        trials = study.get_trials(deepcopy=False)
        states = Counter(t.state for t in trials)
        # a RUNNING trial that already holds its pair (killed before its suggestions, a trial has
        # no pair: nothing waits on it, and the stale check may not have come round to it yet)
        mid_run = [t for t in trials if t.state == TrialState.RUNNING and holds_pair(t)]
        if states[TrialState.COMPLETE] >= 1 and mid_run:
            break
        assert time.monotonic() < deadline and proc.is_alive(), f"the worker never got going: {states}"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    killed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if holds_pair(t)]
    assert killed and len(complete_pairs(url, NQM)) < len(NAMES) * 2

    monkeypatch.setattr(bl, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(bl, "GRACE_PERIOD", 3)
    monkeypatch.setattr(bl, "POLL_INTERVAL", 0.2)
    bl._storage.cache_clear()
    result = bl.run_grid(NQM, url, names=NAMES)
    bl._storage.cache_clear()
    grid = {(n, h) for n in NAMES for h in (1, 2)}
    assert set(result) == grid
    assert complete_pairs(url, NQM) == Counter(dict.fromkeys(grid, 1))  # every pair once, none twice
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert all(states[n] == TrialState.FAIL for n in killed)  # the dead worker's trial, failed by heartbeat
