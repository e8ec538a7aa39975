"""Decodings of a policy's action distributions (lhopt_dsl.decoding), on an actor whose
distributions are set by hand: the LSTM's output is zeroed, so the head's bias is the logits."""

import math

import numpy as np
import pytest
import torch

from lhopt_dsl import load_spec
from lhopt_dsl.actions import ActionSpace
from lhopt_dsl.actor import Run
from lhopt_dsl.decoding import Decoded, decoded
from lhopt_dsl.policy import ActorCritic, PolicyShape
from lhopt_dsl.residual import FixedSchedule
from lhopt_dsl.schedule import Schedule
from lhopt_dsl.spec.hparams import CIAOSpace

from .conftest import SPECS

SPACE = CIAOSpace()  # lr's scales: 0.5, 0.707, 0.9, 1.0, 1.1, 1.414, 2.0
ACTIONS = ActionSpace(SPACE)
LR_VALUES = list(SPACE.lr.action.values)
KEEPING = load_spec(SPECS / "cpu.yaml").hparams  # a space a schedule can be followed in


def policy_with(lr_probs: dict[float, float], restart_probs: dict[int, float] | None = None) -> ActorCritic:
    """An actor whose learning-rate dimension draws from ``lr_probs`` (scale -> probability), whatever
    it observes; the other dimensions are uniform unless given."""
    model = ActorCritic(PolicyShape(4, 2, tuple(ACTIONS.nvec), hidden_size=8))
    with torch.no_grad():
        model.actor.head.weight.zero_()
        bias = torch.zeros(sum(ACTIONS.nvec))
        for i, v in enumerate(LR_VALUES):
            bias[i] = math.log(lr_probs[v]) if v in lr_probs else -1e9
        if restart_probs:
            start = sum(ACTIONS.nvec[:-1])
            for k in range(ACTIONS.nvec[-1]):
                bias[start + k] = math.log(restart_probs[k]) if k in restart_probs else -1e9
        model.actor.head.bias.copy_(bias)
    return model


def run(actor, steps: int, seed: int = 0) -> np.ndarray:
    """The actions of one run of ``steps`` decisions (``seed``: the run's own, as a task's index)."""
    carry = actor.start([Run({"lr": 1e-3}, steps, seed)])
    out = []
    for _ in range(steps):
        step, carry = actor.act(carry, np.zeros((1, 4), np.float32), [None], True)
        out.append(step.actions[0])
    return np.stack(out)


def lr_scales(actions: np.ndarray) -> list[float]:
    return [LR_VALUES[a] for a in actions[:, ACTIONS.names.index("lr")]]


def test_greedy_takes_the_most_probable_value_every_time():
    model = policy_with({0.9: 0.3, 1.0: 0.7})
    assert lr_scales(run(Decoded(model, SPACE, "greedy"), 20)) == [1.0] * 20
    assert (run(Decoded(model, SPACE, "greedy"), 5) == run(model, 5)).all()  # the policy's own greedy acting
    assert decoded(model, SPACE, "greedy") is model


def test_mean_carries_out_the_expected_change_by_error_diffusion():
    """x0.9 with probability 0.3: the expected log change per decision is 0.3 log 0.9, so 100
    decisions take x0.9 on 30 of them (error diffusion keeps the total within half a step)."""
    scales = lr_scales(run(Decoded(policy_with({0.9: 0.3, 1.0: 0.7}), SPACE, "mean"), 100))
    assert set(scales) <= {0.9, 1.0}
    assert abs(scales.count(0.9) - 30) <= 1
    # spread over the run, not bunched: every window of 10 decisions holds 2 to 4 of them
    assert all(2 <= scales[i:i + 10].count(0.9) <= 4 for i in range(0, 91, 10))
    # an even split between x0.5 and x2 expects no change: the lr ends where it started, give or take one step
    scales = lr_scales(run(Decoded(policy_with({0.5: 0.5, 2.0: 0.5}), SPACE, "mean"), 40))
    assert abs(sum(math.log(s) for s in scales)) <= math.log(2.0) + 1e-9


def test_mean_keeps_the_restart_dimension_greedy():
    model = policy_with({1.0: 1.0}, restart_probs={0: 0.4, 1: 0.3, 2: 0.3})
    assert (run(Decoded(model, SPACE, "mean"), 10)[:, -1] == 0).all()


def test_sample_draws_with_the_policys_probabilities_reproducibly_per_task():
    model = policy_with({0.9: 0.3, 1.0: 0.7})
    sampler = Decoded(model, SPACE, "sample")
    scales = lr_scales(run(sampler, 400, seed=1))
    assert 0.22 <= scales.count(0.9) / 400 <= 0.38
    assert scales == lr_scales(run(sampler, 400, seed=1))  # the same task draws the same
    assert scales != lr_scales(run(sampler, 400, seed=2))


def test_bad_decodings_and_mismatched_spaces_are_refused():
    model = policy_with({1.0: 1.0})
    with pytest.raises(ValueError, match="greedy, mean, sample"):
        decoded(model, SPACE, "beam")
    with pytest.raises(ValueError, match="no action distribution to decode"):
        decoded(FixedSchedule(Schedule.from_name("linear-lr0.03"), KEEPING).load()[0], KEEPING, "mean")
    other = CIAOSpace.model_validate({"lr": {**SPACE.lr.model_dump(), "action": {"type": "scale", "values": [0.5, 2.0]}}})
    with pytest.raises(ValueError, match="action sizes"):
        Decoded(model, other, "mean")
