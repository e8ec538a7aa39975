"""The regression family: MLPs on synthetic regression targets, sampled, compiled, costed and
described like every other family."""

import numpy as np
import pytest
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.observation import TASK_VECTOR_SIZE, task_vector
from lhopt_dsl.evaluation.rows import table1_row
from lhopt_dsl.spec import RegressionTask
from lhopt_dsl.spec.sample import space_size
from lhopt_dsl.tasks import compile_task, estimate_cost
from lhopt_dsl.tasks.compiler import count_flops

from .conftest import SPECS
from .test_compile import make_cfg, train

FAMILY = (SPECS / "families" / "regression.yaml").read_text()


def _spec(write, budget=""):
    text = f"name: r\ntasks:\n{budget}  families:\n    - " + FAMILY.replace("\n", "\n      ")
    return load_spec(write("r.yaml", text))


def test_the_family_samples_compiles_and_costs_what_the_flop_counter_counts(write):
    spec = _spec(write)
    seen = set()
    for seed in range(24):
        cfg = sample(spec, seed)
        assert isinstance(cfg.task, RegressionTask)
        task = compile_task(cfg, max_valid=64, max_test=64)
        loss = task.train_loss(task.next_batch())
        loss.backward()
        assert torch.isfinite(loss) and np.isfinite(task.valid_loss()), cfg.to_yaml()
        cost = estimate_cost(cfg)
        params, flops = count_flops(cfg.task)
        assert cost.params == params == task.num_params
        assert 0.99 < cost.flops_per_step / flops < 1.01, cost.flops_per_step / flops
        seen |= {cfg.task.target, cfg.task.activation, cfg.task.loss}
    assert {"linear", "sine", "teacher", "mse", "mae", "huber"} <= seen


def test_the_family_adds_settings_and_fits_a_budget(write):
    assert space_size(_spec(write)).families["regression"] > 10**6
    small = _spec(write, "  budget: {max_params: 3000}\n")
    for seed in range(10):
        assert estimate_cost(sample(small, seed)).params <= 3000


def test_a_task_learns_its_target_and_its_splits_share_it():
    """Every split is the same function plus noise: a model fitted on the training set generalises,
    and a target of another seed is another function."""
    cfg = make_cfg("regression", target="teacher", inner_steps=400, outer_steps=4, batch_size=64)
    task = compile_task(cfg)
    before = task.valid_loss()
    train(task, 400)
    after, test = task.valid_loss(), task.test_loss()
    assert after < 0.5 * before and test < 0.5 * before
    x0, y0 = task.valid_batches[0]
    other = compile_task(make_cfg("regression", target="teacher", seed=1))
    assert not torch.equal(other.valid_batches[0][1], y0)
    assert torch.equal(compile_task(cfg).valid_batches[0][1], y0)  # the same seed, the same target and data


def test_noise_sets_the_floor_of_the_loss():
    """With an exact target (linear, no noise) the best loss is 0; with noise s it is s^2 (MSE)."""
    def fitted(noise):
        cfg = make_cfg("regression", target="linear", noise=noise, hidden=[], examples=4096, inner_steps=300)
        task = compile_task(cfg)
        train(task, 300, lr=3e-2)
        return task.test_loss()

    assert fitted(0.0) < 1e-3
    assert fitted(0.3) == pytest.approx(0.09, rel=0.25)


def test_the_critics_task_encoding_keeps_its_size_and_reads_the_family_as_none_it_knows():
    task = make_cfg("regression").task
    vec = task_vector(task)
    assert vec.shape == (TASK_VECTOR_SIZE,) and not vec.any()
    assert table1_row(task) == "Regression+MLP"


@pytest.mark.parametrize("bad, match", [
    ({"inputs": 0}, "greater than or equal to 1"),
    ({"examples": 1}, "greater than or equal to 2"),
    ({"target": "cosine"}, "linear"),
    ({"noise": -0.1}, "greater than or equal to 0"),
    ({"loss": "cross_entropy"}, "mse"),
    ({"activation": "prelu"}, "tanh"),
])  # fmt: skip
def test_bad_regression_tasks_are_refused_by_field(bad, match):
    with pytest.raises(ValueError, match=match):
        make_cfg("regression", **bad)


@pytest.mark.parametrize("name", ["regression", "regression_teacher"])
def test_a_population_of_schedules_equals_the_runs_one_at_a_time(name):
    from lhopt_dsl.spec.schedule import SHAPES, Schedule
    from lhopt_dsl.tasks.population import run_population
    from lhopt_dsl.tasks.training import run_schedule

    from .test_population import close

    cfg = make_cfg(name, inner_steps=64, outer_steps=4)
    schedules = [Schedule(lr=lr, shape=shape) for lr in (1e-3, 3e-2) for shape in SHAPES[:2]]
    curves = run_population(cfg, schedules)
    assert curves is not None and len(curves) == len(schedules)
    for schedule, curve in zip(schedules, curves):
        ref = run_schedule(cfg, schedule)
        assert all(close(a, b) for a, b in zip(curve.valid_loss, ref.valid_loss)), schedule.name
        assert close(curve.test_loss, ref.test_loss)
