"""bench/task_level.py: a tree ensemble on the task vector chooses each task's whole-run level."""

import sys
from pathlib import Path

import numpy as np
import pytest

from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.residual import Residual
from lhopt_dsl.spec.schedule import Schedule

from .test_residual_ppo import residual_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import task_level  # noqa: E402


def test_the_model_finds_a_planted_nonlinear_level_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 5))
    rewards = np.full((240, len(task_level.CHOICES)), 0.9)
    rewards[:, 0] = 1.0  # keep
    high = (x[:, 0] > 0) & (x[:, 1] > 0)  # an interaction: no linear rule on one feature finds it
    rewards[high, task_level.CHOICES.index(2.0)] = 1.3
    rewards[~high & (x[:, 0] < 0), task_level.CHOICES.index(0.5)] = 1.2
    one_for_all = rewards.mean(0).max()  # the best single choice (x0.5 here, about 1.05)
    assert task_level.held_out(x, rewards).mean() > one_for_all + 0.08  # per task: about 1.16
    # with outcomes shuffled against the tasks, nothing beyond the best single choice is left to find
    assert task_level.held_out(x, rewards[rng.permutation(240)]).mean() < one_for_all + 0.03


def test_a_table_of_levels_holds_each_tasks_own_factor_from_the_first_decision(tmp_path):
    space = residual_spec(tmp_path).hparams
    steer = task_level.TableSteer(space, (2.0, 0.25, 1.0))
    carry = steer.start([Run({"lr": 1e-3}, 5, seed) for seed in range(3)])
    for _ in range(4):
        _, carry = steer.act(carry, np.zeros((3, steer.policy_size)), [None] * 3, True)
    assert carry[1] == pytest.approx((2.0, 0.25, 1.0))
    carry = steer.guarded(carry, 0, 0.5)  # the guard's lowering holds: no climbing back to where it diverged
    _, carry = steer.act(carry, np.zeros((3, steer.policy_size)), [None] * 3, True)
    assert carry[1][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tasks 0..2"):
        steer.start([Run({"lr": 1e-3}, 5, 3)])
    levels = task_level.TaskLevels((2.0, 0.25, 1.0), space, "linear-lr0.03", "test")
    actor, got_space = levels.load()
    assert isinstance(actor, Residual) and actor.base == Schedule.from_name("linear-lr0.03") and got_space == space
    assert levels.stem.startswith("task-levels-") and levels.digest() != task_level.TaskLevels(
        (2.0, 0.5, 1.0), space, "linear-lr0.03", "test").digest()
