"""bench/pg_signal.py: the policy gradient's signal and noise across tasks, per reward setting."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runners.meta_train import initial_policy

from .test_residual_ppo import keeper, residual_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import pg_signal  # noqa: E402


def test_rewards_are_recomputed_per_cap_and_reference_and_every_setting_is_measured(tmp_path, capsys):
    spec = residual_spec(tmp_path, rollouts_per_task=2, tasks_per_iteration=4)
    torch.manual_seed(0)
    model = initial_policy(spec, None)
    collected = pg_signal.collect(spec, model, 3, 0)
    result, steps = collected[0]
    best = pg_signal.recapped(result, steps, 100.0, 0.95)
    final = pg_signal.recapped(result, steps, 100.0, 0.95, "final")
    for b, f, e in zip(best, final, result.episodes):
        assert b.valid_curve == f.valid_curve == e.valid_curve  # the same runs, paid differently
        assert float(np.sum(f.rewards)) == pytest.approx(f.final_reward, abs=1e-9)
        shift = f.final_reward - b.final_reward
        assert shift == pytest.approx(1.0 - pg_signal.reference_reward(steps, result.baseline_curve)(result.baseline_curve[-1]))
    snrs = pg_signal.measure(collected, model, spec, [100.0, 2.0], [2], ["best", "final"])
    assert set(snrs) == {(2, c, r, h) for c in (100.0, 2.0) for r in ("best", "final") for h in ("batch", "task")}
    assert all(len(v[1]) == 3 for v in snrs.values())  # one leave-one-task-out value per task
    assert "| 2 | 2 | final | task |" in capsys.readouterr().out


def test_a_policy_that_keeps_is_paid_exactly_one_against_the_schedules_end(tmp_path):
    spec = residual_spec(tmp_path, rollouts_per_task=2)
    collected = pg_signal.collect(spec, keeper(spec), 3, 0)
    for result, steps in collected:
        for e in pg_signal.recapped(result, steps, 2.0, 0.95, "final"):
            assert e.valid_curve == result.baseline_curve and e.final_reward == pytest.approx(1.0)
