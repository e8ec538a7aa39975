"""The power-law reward, its degenerate cases, shaping, and GAE."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lhopt_dsl.agent.env import OuterStep
from lhopt_dsl.agent.reward import R_MIN, FinalRelative, PowerLawReward, ShapedReward, envelope, fit_power_law, reference_reward
from lhopt_dsl.agent.rollout import gae

STEPS = np.arange(0, 1001, 25, dtype=np.float64)


@pytest.mark.parametrize("l_inf,a,alpha", [(0.3, 2.0, 0.7), (0.0, 5.0, 0.3), (1.5, 0.5, 1.5), (0.01, 1.0, 0.1)])
def test_fit_recovers_known_power_laws(l_inf, a, alpha):
    losses = l_inf + a * (STEPS + 1) ** -alpha
    law = fit_power_law(STEPS, losses)
    assert law is not None
    assert np.allclose(law(STEPS), losses, rtol=1e-4)
    assert law.alpha == pytest.approx(alpha, rel=0.05)


def test_reward_zero_at_worst_one_at_best_and_log_steps_beyond():
    losses = 0.3 + 2.0 * (STEPS + 1) ** -0.7
    r = PowerLawReward(STEPS, losses)
    assert r(losses[0]) == pytest.approx(0.0, abs=1e-6)
    assert r(losses[-1]) == pytest.approx(1.0, abs=1e-6)
    # The loss the same curve reaches at 2T is worth log(2T+1)/log(T+1) "log steps".
    at_2t = 0.3 + 2.0 * (2 * 1000 + 1) ** -0.7
    assert r(at_2t) == pytest.approx(math.log(2001) / math.log(1001), rel=1e-3)
    mid = 0.3 + 2.0 * (100 + 1) ** -0.7
    assert r(mid) == pytest.approx(math.log(101) / math.log(1001), rel=1e-3)
    assert r(0.3) == r.r_max and r(0.0) == r.r_max  # at or below the asymptote: capped
    assert R_MIN < r(50.0) < 0 and r(1e9) == R_MIN  # worse than the start: negative, floored at -1
    assert r(float("nan")) == R_MIN and r(float("inf")) == R_MIN
    # monotone: lower loss, higher reward
    grid = np.linspace(0.31, 2.5, 50)
    rewards = [r(x) for x in grid]
    assert all(b <= a for a, b in zip(rewards, rewards[1:]))


def test_non_monotone_curve_uses_its_best_so_far_envelope():
    rng = np.random.default_rng(0)
    clean = 0.2 + (STEPS + 1) ** -0.5
    noisy = clean * np.exp(rng.normal(0, 0.05, len(STEPS)))
    steps, env = envelope(STEPS, noisy)
    assert np.all(np.diff(env) <= 0)
    r = PowerLawReward(STEPS, noisy)
    assert r(env[-1]) == pytest.approx(1.0, abs=1e-6) and r(env[0]) == pytest.approx(0.0, abs=1e-6)


def test_flat_baseline():
    r = PowerLawReward(STEPS, np.full(len(STEPS), 0.7))
    assert r.flat
    assert r(0.5) == 1.0 and r(0.7) == 0.0 and r(0.9) == R_MIN and r(float("nan")) == R_MIN


def test_diverged_baseline_is_judged_by_its_finite_prefix():
    losses = 0.3 + 2.0 * (STEPS + 1) ** -0.7
    broken = losses.copy()
    broken[20:] = np.nan
    r = PowerLawReward(STEPS, broken)
    assert r(losses[19]) == pytest.approx(1.0, abs=1e-6)
    assert r(losses[-1]) > 1.0  # better than the baseline ever got
    assert PowerLawReward(STEPS[:2], [float("nan"), float("nan")])(0.1) == R_MIN  # nothing finite at all


def test_fallback_interpolation_when_the_fit_is_unusable(monkeypatch):
    import lhopt_dsl.agent.reward as reward_module

    monkeypatch.setattr(reward_module, "fit_power_law", lambda s, y: None)
    losses = 0.3 + 2.0 * (STEPS + 1) ** -0.7
    r = reward_module.PowerLawReward(STEPS, losses)
    assert r.law is None
    assert r(losses[0]) == pytest.approx(0.0, abs=1e-9) and r(losses[-1]) == pytest.approx(1.0, abs=1e-9)
    assert 0 < r(losses[10]) < 1 and r(losses[-1] * 0.99) > 1


@given(st.lists(st.floats(0.01, 10.0), min_size=2, max_size=40), st.integers(0, 10**6))
@settings(max_examples=60, deadline=None)
def test_shaped_rewards_telescope_to_the_final_reward(valid_losses, seed):
    losses = 0.3 + 2.0 * (STEPS + 1) ** -0.7
    reward = PowerLawReward(STEPS, losses)
    shaped = ShapedReward(reward)
    total = 0.0
    for k, v in enumerate(valid_losses, 1):
        total += shaped(OuterStep(k, k / len(valid_losses), v, v, 0.0, k == len(valid_losses), None))
    assert total == pytest.approx(reward(valid_losses[-1]), abs=1e-9)


def test_gae_by_hand():
    rewards = np.array([1.0, 0.0, 2.0])
    values = np.array([0.5, 1.0, 1.5])
    lam = 0.9
    # gamma = 1: delta_t = r_t + V_{t+1} - V_t with V_3 = 0
    d = [1.0 + 1.0 - 0.5, 0.0 + 1.5 - 1.0, 2.0 + 0.0 - 1.5]
    a2 = d[2]
    a1 = d[1] + lam * a2
    a0 = d[0] + lam * a1
    adv, ret = gae(rewards, values, 1.0, lam)
    assert np.allclose(adv, [a0, a1, a2])
    assert np.allclose(ret, adv + values)
    adv1, _ = gae(rewards, values, 1.0, 1.0)
    assert np.allclose(adv1 + values, [3.0, 2.0, 2.0])  # lambda 1: Monte-Carlo returns


def test_a_baseline_that_reaches_zero_loss():
    r = PowerLawReward(STEPS[:5], [2.0, 1.5, 0.0, 0.0, 0.0])
    assert r(2.0) == pytest.approx(0.0, abs=1e-6)
    assert r(0.0) >= 1.0  # matching the baseline's best
    assert 0.0 < r(0.5) < 1.0


def test_log_improvement_reward_treats_zero_loss_as_best_not_diverged():
    from lhopt_dsl.agent.env import DIVERGED_PENALTY, log_improvement_reward

    assert log_improvement_reward(OuterStep(1, 1.0, 0.0, 0.0, 1.0, True, None)) == DIVERGED_PENALTY


def test_a_cap_saturates_the_reward_at_that_speedup_and_leaves_smaller_ones_alone():
    losses = 0.3 + 2.0 * (STEPS + 1) ** -0.7
    wide, capped = PowerLawReward(STEPS, losses), PowerLawReward(STEPS, losses, cap=2.0)
    assert capped.r_max == pytest.approx(1.0 + math.log(2.0) / capped.span)
    assert wide.r_max == pytest.approx(1.0 + math.log(100.0) / wide.span)
    at = {f: 0.3 + 2.0 * (f * 1000 + 1) ** -0.7 for f in (0.1, 1.0, 1.5, 2.5, 10.0)}  # the loss at f x T steps
    for f in (0.1, 1.0, 1.5):  # below the cap (slowdowns included): the same reward
        assert capped(at[f]) == pytest.approx(wide(at[f]), abs=1e-12)
    for f in (2.5, 10.0):  # beyond it: saturated, where the wide reward goes on rising
        assert capped(at[f]) == capped.r_max < wide(at[f])
    assert capped(0.0) == capped.r_max and capped(float("nan")) == R_MIN
    with pytest.raises(ValueError, match="above 1"):
        PowerLawReward(STEPS, losses, cap=1.0)


@pytest.mark.parametrize("population", [False, True])
def test_rollouts_pay_the_capped_reward_on_the_same_runs(population):
    """``reward_cap`` changes what a task's episodes are paid, not what they do (the same runs)."""
    import torch

    from lhopt_dsl import load_spec, sample
    from lhopt_dsl.agent.policy import ActorCritic
    from lhopt_dsl.agent.rollout import task_rollouts
    from lhopt_dsl.spec.schedule import segment_bounds
    from runners.meta_train import policy_shape

    from .conftest import SPECS

    spec = load_spec(SPECS / "smoke.yaml")
    cfg = next(c for c in (sample(spec, s) for s in range(200)) if c.family == "mlp")
    torch.manual_seed(0)
    policy = ActorCritic(policy_shape(spec))
    runs = {cap: task_rollouts(cfg, policy, None, spec.hparams, rollouts=2, seed=6, population=population,
                               critic=policy, reward_cap=cap) for cap in (100.0, 1.05)}  # fmt: skip
    reward = PowerLawReward(segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps), runs[100.0].baseline_curve, 1.05)
    assert any(e.final_reward > reward.r_max for e in runs[100.0].episodes)  # the cap bites
    for wide, capped in zip(runs[100.0].episodes, runs[1.05].episodes):
        assert capped.valid_curve == wide.valid_curve
        assert capped.final_reward == pytest.approx(min(wide.final_reward, reward.r_max), abs=1e-9)
        assert capped.final_reward == pytest.approx(reward(capped.valid_curve[-1]), abs=1e-9)
        assert float(np.sum(capped.rewards)) == pytest.approx(capped.final_reward, abs=1e-6)  # shaping telescopes


def test_a_final_reference_reads_a_loss_against_the_baselines_own_end():
    best_then_worse = list(0.3 + 2.0 * (STEPS + 1) ** -0.7)
    best_then_worse[-5:] = [v * 1.2 for v in best_then_worse[-5:]]  # the baseline ends above its best
    paper = PowerLawReward(STEPS, best_then_worse)
    final = reference_reward(STEPS, best_then_worse, reference="final")
    assert isinstance(final, FinalRelative)
    assert paper(best_then_worse[-1]) < 0.95  # ending as the baseline ends is scored a loss against its best
    assert final(best_then_worse[-1]) == pytest.approx(1.0)  # and exactly 1 against its end
    for loss in (best_then_worse[-1] * 0.9, best_then_worse[3], best_then_worse[-1] * 1.5):
        assert final(loss) - paper(loss) == pytest.approx(1.0 - paper(best_then_worse[-1]))  # a shift below the cap
    assert final(0.0) == paper(0.0) == paper.r_max  # the cap's speedup is counted from the baseline's end
    assert reference_reward(STEPS, best_then_worse)(0.5) == paper(0.5)  # best: the paper's reading
    diverged = best_then_worse[:-1] + [math.nan]
    assert reference_reward(STEPS, diverged, reference="final")(0.5) == PowerLawReward(STEPS, diverged)(0.5)
    above_start = best_then_worse[:-1] + [best_then_worse[0] * 1e6]  # ends far above where it started: no place on the curve
    assert PowerLawReward(STEPS, above_start)(above_start[-1]) == R_MIN
    assert reference_reward(STEPS, above_start, reference="final")(0.5) == PowerLawReward(STEPS, above_start)(0.5)
    flat = [1.0] * len(STEPS)
    assert reference_reward(STEPS, flat, reference="final")(0.5) == PowerLawReward(STEPS, flat)(0.5) == 1.0
    with pytest.raises(ValueError, match="'best' or 'final'"):
        reference_reward(STEPS, best_then_worse, reference="last")


@pytest.mark.parametrize("population", [False, True])
def test_with_a_final_reference_a_policy_that_runs_as_its_baseline_earns_exactly_one(population):
    """A schedule's follower against itself: the same run, paid 1 whatever the run's shape; the
    episode's shaped rewards still sum to its final reward."""
    from lhopt_dsl.agent.residual import Follow
    from lhopt_dsl.agent.rollout import task_rollouts
    from lhopt_dsl.spec.schedule import Schedule

    from .test_imitation import SMOKE as spec
    from .test_population import smoke

    cfg = smoke("transformer", outer_steps=8)
    follower = Follow([Schedule.from_name("constant-lr1")], spec.hparams)  # its run ends well above its best
    paid = {}
    for reference in ("best", "final"):
        run = task_rollouts(cfg, follower, follower, spec.hparams, rollouts=1, seed=6, population=population,
                            reward_reference=reference)  # fmt: skip
        (episode,) = run.episodes
        assert episode.valid_curve == run.baseline_curve
        assert min(run.baseline_curve) < run.baseline_curve[-1]
        assert float(np.sum(episode.rewards)) == pytest.approx(episode.final_reward, abs=1e-6)
        paid[reference] = episode.final_reward
    assert paid["best"] < 0.5 and paid["final"] == pytest.approx(1.0, abs=1e-9)
