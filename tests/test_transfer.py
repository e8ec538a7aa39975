"""Schedule transfer (paper 4.5): export on a small task, replay on AdamW for a >= 4x larger, longer one."""

import math

import pytest

from lhopt_dsl import TaskConfig, load_spec
from lhopt_dsl.agent.policy import ActorCritic
from runners.baselines import run_grid
from runners.meta_train import policy_shape
from runners.transfer import check_pair, format_record, parameter_count, replay, transfer

from .conftest import SPECS

SPEC = load_spec(SPECS / "smoke_adamw.yaml")


def digits_mlp(hidden: list[int], steps: int, outer: int) -> TaskConfig:
    return TaskConfig.model_validate({
        "seed": 3,
        "task": {"family": "mlp", "dataset": "digits", "hidden": hidden, "activation": "relu", "norm": "layer",
                 "loss": "cross_entropy", "batch_size": 32, "inner_steps": steps, "outer_steps": outer},
        "hparams": {"space": "adamw", "lr": 1e-3, "weight_decay": 0.01, "eps": 1e-8, "one_minus_beta2": 1e-3},
    })  # fmt: skip


SMALL, LARGE = digits_mlp([8], 24, 6), digits_mlp([48], 96, 24)


def test_replay_is_measured_exactly_as_the_grid_runs(tmp_path):
    """A schedule that holds AdamW's defaults replayed on the large task gives the grid's constant
    1e-3 run, loss for loss: same weights, data order and measurement points."""
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    grid = run_grid(LARGE, storage, names=["adamw-constant-lr0.001"], horizons=(1,))
    held = {"meta": {"space": "adamw"},
            "schedule": {"progress": [0.0], "lr": [1e-3], "weight_decay": [0.01], "eps": [1e-8],
                         "one_minus_beta2": [1e-3]}}  # fmt: skip
    got = replay(LARGE, held)
    ref = grid[("adamw-constant-lr0.001", 1)]
    assert got.steps == ref.steps
    assert got.test_curve == pytest.approx(ref.test_curve, rel=1e-6)
    halved = {**held, "schedule": {**held["schedule"], "progress": [0.0, 0.5], "lr": [1e-3, 1e-4],
                                   **{k: v * 2 for k, v in held["schedule"].items() if k not in ("progress", "lr")}}}
    assert replay(LARGE, halved).test_curve[-1] != pytest.approx(ref.test_curve[-1], rel=1e-6)


def test_transfer_record_and_pair_checks(tmp_path):
    policy = ActorCritic(policy_shape(SPEC))
    record = transfer(policy, SPEC.hparams, SMALL, LARGE, f"sqlite:///{tmp_path / 'b.db'}")
    assert record["scale"]["params"] >= 4 and record["scale"]["steps"] == 4
    assert len(record["schedule"]["schedule"]["progress"]) == SMALL.task.outer_steps
    assert len(record["grid"]) == 35 and record["best_adamw"]["test_loss"] == min(
        v for v in record["grid"].values() if math.isfinite(v))
    for run in ("replay", "live_policy"):
        r = record[run]
        assert math.isfinite(r["test_loss"]) and 0 <= r["beats_fraction"] <= 1
        assert r["beats_best"] == (r["test_loss"] <= record["best_adamw"]["test_loss"])
        assert r["speedup_vs_best"] >= 0
    assert "ScheduleReplay" in format_record(record)
    with pytest.raises(ValueError, match="parameters"):
        check_pair(SMALL, digits_mlp([16], 96, 24), (parameter_count(SMALL), parameter_count(digits_mlp([16], 96, 24))))
    with pytest.raises(ValueError, match="steps"):
        check_pair(SMALL, digits_mlp([48], 48, 6), (parameter_count(SMALL), parameter_count(LARGE)))
    ciao = load_spec(SPECS / "smoke.yaml")
    with pytest.raises(ValueError, match="AdamW"):
        transfer(ActorCritic(policy_shape(ciao)), ciao.hparams, SMALL, LARGE, f"sqlite:///{tmp_path / 'c.db'}")
