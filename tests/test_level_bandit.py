"""bench/level_bandit.py: PPO on a measured level table, before any inner run."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import level_bandit  # noqa: E402


def test_ppo_on_a_planted_table_earns_its_choice_on_held_out_tasks_and_nothing_on_a_shuffled_one():
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 4))
    rewards = np.full((n, 3), 0.9)
    rewards[:, 0] = 1.0  # keep
    rewards[:, 1] += 0.3 * (x[:, 0] > 0)  # pays where the first input is positive
    rewards[:, 2] += 0.3 * (x[:, 0] <= 0)
    spans, cap = np.full(n, 4.0), 2.0
    got = level_bandit.speedup(level_bandit.ppo_held_out(x, rewards, 2048, 0.1, 0), spans, cap)
    oracle = level_bandit.speedup(rewards.max(1), spans, cap)
    assert got > 1.0 + 0.8 * (oracle - 1.0)
    shuffled = rewards[rng.permutation(n)]
    null = level_bandit.speedup(level_bandit.ppo_held_out(x, shuffled, 2048, 0.1, 0), spans, cap)
    assert null < 1.0 + 0.5 * (oracle - 1.0)


def test_the_observing_table_reads_each_tasks_features_at_its_decision_and_writes_a_policy_that_observes(tmp_path, capsys):
    import argparse

    import pytest

    from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES
    from lhopt_dsl.agent.level import OBSERVED, ObservedReader
    from lhopt_dsl.controller import load_policy
    from runners.level_train import FACTORS

    from .test_level_train import _start_policy
    from .test_residual_ppo import residual_spec

    spec = residual_spec(tmp_path)
    reader = ObservedReader(OBSERVED, spec.hparams)
    index = reader.index
    size = reader.size
    values = np.arange(size, dtype=float)
    values[reader.flag[reader.flag >= 0]] = 0.0  # everything observed
    unobserved = -values
    unobserved[reader.flag[0]] = 1.0  # but the loss ratio (its flag set): read as the tasks' mean
    rows = [{"task_id": "a", "outer_steps": 50, "features": {"6": list(values), "1": [0.0] * size}},
            {"task_id": "b", "outer_steps": 16, "features": {"2": list(-values)}},
            {"task_id": "c", "outer_steps": 16, "features": {"2": list(unobserved)}}]  # fmt: skip
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(__import__("yaml").safe_dump(spec.model_dump(mode="json")))
    seen = level_bandit.observed(str(spec_path), rows)  # at 1/8: decision 6 of 50, decision 2 of 16
    assert seen.shape == (3, len(OBSERVED)) and list(seen[0]) == index and list(seen[1]) == [-i for i in index]
    assert seen[2, 0] == 0.0 and list(seen[2, 1:]) == list(seen[1, 1:])  # unreported: the other two tasks' mean
    with pytest.raises(SystemExit, match="no features at decision 2"):
        level_bandit.observed(str(spec_path), [{**rows[1], "features": {"1": [0.0] * size}}])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, len(DESCRIPTOR_NAMES) + len(OBSERVED)))
    rewards = np.ones((64, len(FACTORS)))
    args = argparse.Namespace(policy=_start_policy(tmp_path, spec), out=tmp_path / "observing.pt", spec=str(spec_path),
                              final_episodes=256, batch=128, observe=True)  # fmt: skip
    level_bandit.write_policy(args, x, rewards, 0.1, ["mlp"] * 32 + ["rnn"] * 32)
    assert "its choice changes with what the runs showed replaced by its mean on" in capsys.readouterr().out
    policy, _ = load_policy(args.out)
    assert policy.inner.rule.observe == OBSERVED and policy.inner.rule.fitted["tasks"] == 64
