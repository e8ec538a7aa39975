"""bench/level_attribution.py: an observing level's decision read where it is made, and what it rests on."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES
from lhopt_dsl.agent.level import OBSERVE_AT, OBSERVED, observing_decision
from lhopt_dsl.agent.policy import load_checkpoint, save_checkpoint
from lhopt_dsl.controller import LHOPT

from .test_level_train import _start_policy
from .test_observing_level import WATCHED, watching
from .test_residual_ppo import residual_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from level_attribution import envelope, explain, main, recording  # noqa: E402

D, O = len(DESCRIPTOR_NAMES), len(OBSERVED)
AT = D + OBSERVED.index(WATCHED)


def test_explain_names_the_inputs_a_choice_rests_on_and_those_outside_training():
    level = watching(below=0.5, above=2.0)  # reads only the loss ratio: above 0.1 -> x2, below -> x1/2
    x = np.zeros(D + O)
    x[AT] = 0.3
    lo, hi = np.full(D + O, -1.0), np.full(D + O, 1.0)
    hi[AT] = 0.2
    why = explain(level, x, (lo, hi))
    assert why["factor"] == 2.0 and why["p_factor"] > 0.99 and why["p_keep"] < 0.01
    # at the training mean (0.1) the planted level has no preference: the first factor, keep
    assert why["flips_at_mean"] == {WATCHED: 1.0}
    assert why["outside_training"] == {WATCHED: [pytest.approx(0.3), -1.0, 0.2]}
    x[AT] = -0.3
    assert explain(level, x)["factor"] == 0.5 and "outside_training" not in explain(level, x)


def _observing_file(tmp_path):
    spec = residual_spec(tmp_path)
    state = load_checkpoint(_start_policy(tmp_path, spec))
    state["level"] = watching(below=0.25, above=0.5).to_data()
    save_checkpoint(state, tmp_path / "observing.pt")
    return tmp_path / "observing.pt"


def test_recording_reads_each_runs_decision_through_lhopt_and_changes_nothing(tmp_path):
    path = _observing_file(tmp_path)

    def run(train_over_valid):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 8)
        opt = LHOPT(model.parameters(), path, total_steps=160, outer_steps=16, guard=False)
        for _ in range(160):
            model.weight.grad = torch.full_like(model.weight, 1e-2)
            model.bias.grad = torch.full_like(model.bias, 1e-2)
            if train_over_valid is not None:
                opt.observe(train_loss=train_over_valid, valid_loss=1.0)
            opt.step()
        return [h["lr"] for h in opt.history]

    with recording() as seen:
        underfit, silent = run(2.0), run(None)
    assert [d.t for d in seen] == [observing_decision(OBSERVE_AT, 16)] * 2
    assert [d.offset for d in seen] == [1.0, 1.0]  # the keeping network moved nothing before the level chose
    assert [d.chosen for d in seen] == [0.5, 1.0]  # an unreported ratio: the mean, keep
    assert [explain(d.level, d.inputs)["factor"] for d in seen] == [0.5, 1.0]
    assert underfit[-1] / silent[-1] == pytest.approx(0.5)  # what the runs did
    assert run(2.0) == underfit and run(None) == silent  # outside the block, the same runs


def test_the_bench_refuses_a_level_that_does_not_observe_and_episodes_of_another_width(tmp_path):
    plain = _start_policy(tmp_path, residual_spec(tmp_path))
    with pytest.raises(SystemExit, match="does not observe"):
        main(["--policy", str(plain)])
    episodes = tmp_path / "episodes.jsonl"
    episodes.write_text(json.dumps({"input": [1.0, 2.0]}) + "\n")
    with pytest.raises(ValueError, match="episodes with 2 inputs, but the level reads 29"):
        envelope(episodes, D + O)
    episodes.write_text("".join(json.dumps({"input": [float(i)] * (D + O)}) + "\n" for i in range(201)))
    lo, hi = envelope(episodes, D + O)
    assert lo == pytest.approx(np.full(D + O, 1.0)) and hi == pytest.approx(np.full(D + O, 199.0))
    # recorded raw observations replace the inputs the network was given: an unobserved one (null)
    # is left out, not read as the mean (here 1000) it was filled with
    rows = [{"input": [float(i)] * D + [1000.0] * O, "observed": [None] * O if i % 2 else [float(i)] * O}
            for i in range(201)]  # fmt: skip
    episodes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lo, hi = envelope(episodes, D + O)
    assert hi[D:].max() < 200 and hi[:D] == pytest.approx(np.full(D, 199.0))
