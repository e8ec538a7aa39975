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
