"""Populations: K AdamW baselines as one batched model equal the one-at-a-time runs."""

import math

import pytest

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.env import SHAPES, Schedule, run_schedule
from lhopt_dsl.population import run_population

from .conftest import SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
SCHEDULES = [Schedule(lr=lr, shape=shape) for lr in (1e-3, 1e-2) for shape in SHAPES[:4]]


def smoke(family: str) -> TaskConfig:
    return next(c for c in (sample(SMOKE, s) for s in range(200)) if c.family == family)


@pytest.mark.parametrize("family", ["mlp", "nqm", "transformer"])
def test_population_equals_sequential_runs(family):
    cfg = smoke(family)
    curves = run_population(cfg, SCHEDULES)
    assert curves is not None and len(curves) == len(SCHEDULES)
    for schedule, curve in zip(SCHEDULES, curves):
        ref = run_schedule(cfg, schedule)
        assert curve.steps == ref.steps
        for a, b in zip(curve.valid_loss, ref.valid_loss):
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (schedule.name, a, b)
        assert math.isclose(curve.test_loss, ref.test_loss, rel_tol=1e-4, abs_tol=1e-6)
        for a, b in zip(curve.train_loss, ref.train_loss):
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def test_longer_horizon_and_schedules_differ():
    cfg = smoke("nqm")
    curves = run_population(cfg, SCHEDULES, steps=2 * cfg.task.inner_steps)
    assert curves[0].steps[-1] == 2 * cfg.task.inner_steps
    assert len({c.valid_loss[-1] for c in curves}) == len(SCHEDULES)


def test_unbatchable_tasks_fall_back():
    assert run_population(smoke("rnn"), SCHEDULES) is None  # recurrent kernels have no vmap rule
    bn = TaskConfig.model_validate(
        {**smoke("mlp").model_dump(), "task": {**smoke("mlp").task.model_dump(), "norm": "batch"}}
    )
    assert run_population(bn, SCHEDULES) is None  # BatchNorm's running statistics update in place
    with pytest.raises(ValueError, match="AdamW"):
        run_population(smoke("nqm"), [Schedule(optimizer="ciao")])


def test_baseline_grid_uses_the_population_and_records_every_member(tmp_path):
    import optuna

    from runners.baselines import run_grid, study_name

    cfg = smoke("nqm")
    names = [f"adamw-{shape}-lr0.001" for shape in SHAPES[:3]]
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    curves = run_grid(cfg, storage, names=names, horizons=(1,), population=True)
    study = optuna.load_study(study_name=study_name(cfg), storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs["run"]["population"] for t in done)
    for name in names:
        ref = run_schedule(cfg, Schedule(lr=1e-3, shape=name.split("-")[1]))
        assert curves[(name, 1)].valid_loss == pytest.approx(ref.valid_loss, rel=1e-4, abs=1e-6)
