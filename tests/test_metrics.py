"""Evaluation metrics on synthetic curves and losses with answers known by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lhopt_dsl.evaluation.metrics import (
    SPEEDUP_FLOOR,
    TaskScores,
    bootstrap_interval,
    compare_task,
    evaluation_summary,
    format_summary,
    geometric_mean,
    head_to_head,
    paired_comparison,
    performance_profile,
    plot_performance_profile,
    sign_test,
    speedup,
    steps_to_reach,
)

NAN = math.nan

# A curve that is linear in (step, log loss): L(s) = 10 * exp(-s / 50), measured every 20 steps.
STEPS = np.arange(0, 201, 20)
LOSSES = 10.0 * np.exp(-STEPS / 50.0)


def exact_steps(target: float) -> float:
    return -50.0 * math.log(target / 10.0)


# --- steps_to_reach -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [9.0, 5.0, 1.0, 0.5, 10.0 * math.exp(-4.0)])
def test_steps_to_reach_is_exact_on_a_linear_in_log_curve(target):
    assert steps_to_reach(STEPS, LOSSES, target) == pytest.approx(exact_steps(target))


def test_steps_to_reach_edges():
    assert steps_to_reach(STEPS, LOSSES, 10.0) == 0.0  # the first point reaches it
    assert steps_to_reach(STEPS, LOSSES, 100.0) == 0.0
    assert steps_to_reach(STEPS, LOSSES, LOSSES[-1] * 0.99) == math.inf  # never reached
    assert steps_to_reach(STEPS, LOSSES, LOSSES[-1]) == pytest.approx(200.0)
    assert steps_to_reach(STEPS, LOSSES, NAN) == math.inf
    assert steps_to_reach([], [], 1.0) == math.inf


def test_steps_to_reach_uses_the_best_so_far_envelope():
    # Goes down to 1, back up to 5, then down to 0.5: 2 is first reached between steps 0 and 10.
    s, y = [0, 10, 20, 30], [4.0, 1.0, 5.0, 0.5]
    assert steps_to_reach(s, y, 2.0) == pytest.approx(10 * math.log(4 / 2) / math.log(4 / 1))
    # 0.8 is below the envelope's 1.0 until the last point: interpolate from (20, 1.0) to (30, 0.5).
    assert steps_to_reach(s, y, 0.8) == pytest.approx(20 + 10 * math.log(1 / 0.8) / math.log(1 / 0.5))


def test_steps_to_reach_ignores_non_finite_points():
    s, y = [0, 10, 20, 30], [4.0, NAN, math.inf, 1.0]
    assert steps_to_reach(s, y, 2.0) == pytest.approx(30 * math.log(2) / math.log(4))
    assert steps_to_reach([0, 10], [NAN, NAN], 1.0) == math.inf
    assert steps_to_reach([0, 10, 20], [NAN, 3.0, 1.0], 5.0) == 10.0  # first finite point reaches it


def test_steps_to_reach_falls_back_to_linear_for_non_positive_losses():
    assert steps_to_reach([0, 10], [1.0, 0.0], 0.25) == pytest.approx(7.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=2, max_size=12), st.floats(0.01, 100.0))
def test_steps_to_reach_is_consistent_with_the_envelope(losses, target):
    steps = np.arange(len(losses)) * 10.0
    s = steps_to_reach(steps, losses, target)
    best = np.minimum.accumulate(losses)
    if best[-1] > target:
        assert s == math.inf
    else:
        assert 0.0 <= s <= steps[-1]
        first = int(np.argmax(best <= target))
        assert steps[max(first - 1, 0)] <= s <= steps[first]


# --- speedup ---------------------------------------------------------------------------------------


def test_speedup_below_one_reads_the_t_run_curve():
    T = 200  # the T run is STEPS/LOSSES: its final loss is LOSSES[-1]
    target = 10.0 * math.exp(-1.5)  # the T run reaches it after 75 steps
    assert speedup(target, T, LOSSES[-1], LOSSES[-1] / 4, STEPS, LOSSES) == (pytest.approx(75 / 200), False)
    assert speedup(20.0, T, LOSSES[-1], LOSSES[-1], STEPS, LOSSES) == (0.0, False)  # worse than the start


def test_speedup_between_one_and_two_interpolates_the_run_ends():
    T, l1, l2 = 100, 1.0, 0.25
    assert speedup(l1, T, l1, l2, STEPS, LOSSES) == (1.0, False)  # tie at T: exactly 1x
    # log loss halfway between the two run ends: halfway in log steps, 2 ** 0.5
    assert speedup(0.5, T, l1, l2, STEPS, LOSSES) == (pytest.approx(math.sqrt(2)), False)
    assert speedup(0.25, T, l1, l2, STEPS, LOSSES) == (2.0, True)  # reached only at 2T: censored
    assert speedup(0.1, T, l1, l2, STEPS, LOSSES) == (2.0, True)
    # losses of zero fall back to interpolation in the loss itself
    assert speedup(0.5, T, 1.0, 0.0, STEPS, LOSSES) == (pytest.approx(2**0.5), False)


def test_speedup_with_failed_runs():
    T = 100
    assert speedup(NAN, T, 1.0, 0.5, STEPS, LOSSES) == (0.0, False)  # the policy diverged
    assert speedup(5.0, T, NAN, NAN, STEPS, LOSSES) == (2.0, True)  # the baseline diverged at both lengths
    # diverged over 2T but not over T: a user with 2T steps can still stop at T
    assert speedup(1.0, T, 1.0, NAN, STEPS, LOSSES) == (2.0, True)
    assert speedup(0.9, T, 1.0, 2.0, STEPS, LOSSES) == (2.0, True)


# --- summary statistics ----------------------------------------------------------------------------


def test_geometric_mean_and_floor():
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert geometric_mean([0.0, 1.0], floor=0.01) == pytest.approx(0.1)
    np.testing.assert_allclose(geometric_mean(np.array([[1.0, 4.0], [2.0, 8.0]]), axis=1), [2.0, 4.0])


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    mean = lambda v: v.mean(axis=1)  # noqa: E731
    lo_s, hi_s = bootstrap_interval(small, mean)
    lo_l, hi_l = bootstrap_interval(large, mean)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5  # ~ 1 / sqrt(100)
    assert bootstrap_interval(small, mean, seed=3) == bootstrap_interval(small, mean, seed=3)  # reproducible
    assert bootstrap_interval(small, mean, seed=3) != bootstrap_interval(small, mean, seed=4)  # from its seed
    assert bootstrap_interval(np.ones(7), mean) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_interval([], mean))


# --- per-task comparisons and the summary ----------------------------------------------------------

ADAMW = ["b1", "b2", "b3", "b4"]
CURVE = ([0, 50, 100], [4.0, 2.0, 1.0])


def task(tid, row, policy, at_t, at_2t, sf=(1.0, 1.0)):
    names = [*ADAMW, "sf"]
    at_T = dict(zip(ADAMW, at_t)) | {"sf": sf[0]}
    at_2T = dict(zip(ADAMW, at_2t)) | {"sf": sf[1]}
    return TaskScores(tid, row, 100, policy, at_T, at_2T, {n: CURVE for n in names})


def test_compare_task_by_hand():
    # policy 1.0; at T: beats b1, b2, ties b3, loses to b4 (0.5, the best at T)
    t = task("a", "MNISTs+MLP", 1.0, [2.0, 1.5, 1.0, 0.5], [1.0, 0.9, 0.8, 0.4], sf=(3.0, 0.9))
    c = compare_task(t, ADAMW, ["sf"])
    assert (c["pair_wins_1x"], c["pair_wins_2x"], c["pairs"]) == (3, 1, 4)
    assert c["best_baseline"] == "b4" and (c["best_T"], c["best_2T"]) == (0.5, 0.4)
    assert not c["beats_best_1x"] and not c["beats_best_2x"]
    # the policy's 1.0 is reached by b4's T curve (4, 2, 1 at 0, 50, 100) at step 100: speedup 1.0
    assert c["speedup"] == pytest.approx(1.0) and not c["capped"]
    assert c["vs"]["sf"] == {"T": 3.0, "2T": 0.9, "beats_1x": True, "beats_2x": False,
                             "speedup": pytest.approx(2 ** (math.log(3.0) / math.log(3.0 / 0.9))), "capped": False}


def test_per_task_two_x_can_exceed_one_x_when_baselines_diverge_over_2t():
    t = task("a", "NQM", 1.0, [0.5, 0.9, 2.0, 3.0], [NAN, NAN, NAN, NAN])
    c = compare_task(t, ADAMW)
    assert not c["beats_best_1x"] and c["beats_best_2x"]
    assert c["pair_wins_2x"] == 4 > c["pair_wins_1x"] == 2


def test_compare_task_requires_every_method():
    t = task("a", "NQM", 1.0, [1, 1, 1, 1], [1, 1, 1, 1])
    with pytest.raises(KeyError, match="prodigy"):
        compare_task(t, ADAMW, ["prodigy"])


def test_evaluation_summary_rows_and_overall_by_hand():
    tasks = [
        task("a", "MNISTs+MLP", 1.0, [2.0, 1.5, 1.0, 0.5], [1.0, 0.9, 0.8, 0.4]),  # 3/4, 1/4; not best
        task("b", "NQM", 0.1, [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.05]),  # 4/4, 3/4; best at T only
        task("c", "NQM", NAN, [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),  # a failed policy run: 0/4
    ]
    s = evaluation_summary(tasks, ADAMW, ["sf"], rows=["Algo+RNN", "NQM", "MNISTs+MLP"], resamples=500)
    assert list(s["rows"]) == ["NQM", "MNISTs+MLP"]  # the given order; rows without tasks left out
    o = s["overall"]
    assert o["tasks"] == 3 and o["pairs"] == 12 and o["policy_failed"] == 1
    assert o["pairs_ge_1x"]["value"] == pytest.approx(7 / 12) and o["pairs_ge_2x"]["value"] == pytest.approx(4 / 12)
    assert o["best_ge_1x"]["value"] == pytest.approx(1 / 3) and o["best_ge_2x"]["value"] == pytest.approx(0.0)
    speedups = sorted(t["speedup"] for t in s["tasks"])
    # a: 1.0 (see above); b: between 1.0 and 0.05 at 0.1 -> 2 ** (log 10 / log 20); c: 0
    assert speedups == pytest.approx([0.0, 1.0, 2 ** (math.log(10) / math.log(20))])
    assert o["speedup_median"]["value"] == pytest.approx(1.0)
    expected_geo = math.exp((math.log(SPEEDUP_FLOOR) + 0 + math.log(speedups[2])) / 3)
    assert o["speedup_geomean"]["value"] == pytest.approx(expected_geo)
    for key in ("pairs_ge_1x", "best_ge_1x", "speedup_median", "speedup_geomean"):
        lo, hi = o[key]["ci"]
        assert lo <= o[key]["value"] <= hi
    nqm = s["rows"]["NQM"]
    assert nqm["tasks"] == 2 and nqm["pairs_ge_1x"]["value"] == pytest.approx(4 / 8)
    assert o["vs"]["sf"]["ge_1x"]["value"] == pytest.approx(2 / 3)  # a ties sf (1.0), b beats it, c fails


def test_format_summary_plain_and_markdown():
    tasks = [task("a", "NQM", 1.0, [2.0, 1.5, 1.0, 0.5], [1.0, 0.9, 0.8, 0.4])]
    s = evaluation_summary(tasks, ADAMW, ["sf"], resamples=100)
    text = format_summary(s)
    assert "NQM" in text and "Overall" in text and "speedup median" in text and "<=sf@T" in text
    overall = [line for line in text.splitlines() if line.startswith("Overall")][0]
    assert "0.75 [0.75, 0.75]" in overall and "1.00x [1.00, 1.00]" in overall
    assert "non-finite" not in text
    failed = evaluation_summary([*tasks, task("b", "NQM", NAN, [1] * 4, [1] * 4)], ADAMW, ["sf"], resamples=10)
    assert "1 of 2 policy runs ended with a non-finite loss" in format_summary(failed)
    md = format_summary(s, markdown=True).splitlines()
    assert md[0].startswith("| row | tasks | pairs >=1x") and md[1].startswith("|---|---:")


# --- performance profiles -------------------------------------------------------------------------


def test_profile_of_a_method_best_everywhere_is_one_at_tau_one():
    taus = np.array([1.0, 1.5, 2.0, 4.0])
    losses = {
        "best": {"t1": 1.0, "t2": 2.0, "t3": 0.5},
        "half": {"t1": 1.5, "t2": 4.0, "t3": NAN},
        "worse": {"t1": 3.0, "t2": 2.5},  # t3 missing: ratio inf
    }
    prof = performance_profile(losses, taus)
    np.testing.assert_allclose(prof["best"], [1, 1, 1, 1])
    np.testing.assert_allclose(prof["half"], [0, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prof["worse"], [0, 1 / 3, 1 / 3, 2 / 3])


def test_profile_handles_zero_and_all_nan_tasks():
    prof = performance_profile({"a": {"t": 0.0, "u": NAN}, "b": {"t": 0.0, "u": NAN}}, np.array([1.0, 10.0]))
    np.testing.assert_allclose(prof["a"], [0.5, 0.5])
    with pytest.raises(ValueError):
        performance_profile({"a": {"t": -1.0}}, np.array([1.0]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(0.0, 10.0), st.just(NAN)), min_size=4, max_size=4),
                min_size=1, max_size=4))  # fmt: skip
def test_profiles_are_monotone_fractions(rows):
    losses = {f"m{i}": {f"t{j}": v for j, v in enumerate(row)} for i, row in enumerate(rows)}
    taus = np.geomspace(1.0, 100.0, 17)
    for prof in performance_profile(losses, taus).values():
        assert np.all(np.diff(prof) >= 0) and np.all((0 <= prof) & (prof <= 1))


def test_plot_performance_profile(tmp_path):
    taus = np.geomspace(1, 10, 5)
    prof = performance_profile({"a": {"t": 1.0}, "b": {"t": 2.0}}, taus)
    fig = plot_performance_profile(prof, taus)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 2
    fig.savefig(tmp_path / "profile.png")
    assert (tmp_path / "profile.png").stat().st_size > 0


# --- two policies on the same tasks ---------------------------------------------------------------


def test_sign_test_by_hand():
    assert sign_test(5, 0) == pytest.approx(2 / 32)  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert sign_test(0, 5) == sign_test(5, 0)
    assert sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(60, 40) == pytest.approx(0.0569, abs=1e-4)  # the normal approximation's 0.057


def test_head_to_head_counts_failures_as_higher():
    h = head_to_head([1.0, 1.0, 1.0, NAN, NAN, 2.0], [0.5, 1.0, 2.0, 1.0, NAN, NAN])
    assert (h["wins"], h["ties"], h["losses"]) == (2, 2, 2)  # 0.5<1, 1.0<NaN | 1=1, NaN~NaN | 2>1, NaN>2


def test_paired_comparison_by_hand():
    # Three tasks; the candidate ends lower on a and b, higher on c.
    ref = [task("a", "NQM", 1.0, [2.0, 1.5, 1.0, 0.5], [1.0, 0.9, 0.8, 0.4]),
           task("b", "NQM", 1.0, [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]),
           task("c", "MNISTs+MLP", 0.5, [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])]
    cand = [task("a", "NQM", 0.5, [2.0, 1.5, 1.0, 0.5], [1.0, 0.9, 0.8, 0.4]),
            task("b", "NQM", 0.25, [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]),
            task("c", "MNISTs+MLP", 1.0, [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])]
    c = paired_comparison(ref, cand, ADAMW, resamples=500)
    assert c["tasks"] == 3
    assert c["head_to_head"] == {"wins": 2, "ties": 0, "losses": 1, "sign_test_p": 1.0}
    # log(0.5/1), log(0.25/1), log(1/0.5): median log 0.5
    assert c["log_loss_ratio"]["value"] == pytest.approx(math.log(0.5)) and c["log_loss_ratio"]["tasks"] == 3
    # pairs at 2x: ref a 1/4 (only the tie with 1.0), b 4/4, c 4/4; cand a 3/4 (0.5 <= 0.8, 0.9, 1.0), b and c 4/4
    ref_frac = (1 / 4 + 1 + 1) / 3
    cand_frac = (3 / 4 + 1 + 1) / 3
    p2 = c["pairs_ge_2x"]
    assert p2["reference"] == pytest.approx(ref_frac) and p2["candidate"] == pytest.approx(cand_frac)
    assert p2["difference"]["value"] == pytest.approx(cand_frac - ref_frac)
    # best at T: ref a no, b yes (tie), c yes; cand a yes (0.5 ties b4), b yes, c yes (tie)
    b = c["best_ge_1x"]
    assert (b["reference"], b["candidate"]) == (pytest.approx(2 / 3), pytest.approx(1.0))
    lo, hi = b["difference"]["ci"]
    assert lo <= b["difference"]["value"] <= hi
    with pytest.raises(ValueError, match="same tasks"):
        paired_comparison(ref, cand[::-1], ADAMW)


def test_paired_intervals_are_narrower_than_unpaired_ones():
    """A candidate 10% better on every task of widely varying difficulty: the paired difference
    is certain, though each method's own interval is wide."""
    rng = np.random.default_rng(0)
    scale = np.exp(rng.normal(0, 2, size=40))
    ref = [task(str(i), "NQM", s, [s * 0.9] * 4, [s * 0.8] * 4) for i, s in enumerate(scale)]
    cand = [task(str(i), "NQM", s * 0.9, [s * 0.9] * 4, [s * 0.8] * 4) for i, s in enumerate(scale)]
    c = paired_comparison(ref, cand, ADAMW, resamples=500)
    assert c["head_to_head"]["wins"] == 40 and c["head_to_head"]["sign_test_p"] < 1e-10
    assert c["log_loss_ratio"]["value"] == pytest.approx(math.log(0.9))
    assert c["log_loss_ratio"]["ci"] == pytest.approx([math.log(0.9)] * 2)
    assert c["best_ge_1x"]["difference"]["value"] == 1.0  # ref never ties the best; cand always does


def test_gradient_signal_by_hand_and_by_simulation():
    from lhopt_dsl.evaluation.metrics import gradient_signal

    # by hand: samples (1, 0) and (3, 0): mean (2, 0), tr(S) = ((1-2)^2 + (3-2)^2) / 1 = 2,
    # signal = 4 - 2/2 = 3; each sample points along the other: cosine 1
    r = gradient_signal(np.array([[1.0, 0.0], [3.0, 0.0]]))
    assert r == {"signal": 3.0, "noise": 2.0, "cos": 1.0}
    # opposite samples: no common direction
    r = gradient_signal(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    assert r["signal"] < 0 and r["cos"] == -1.0
    # simulation: mean mu, isotropic noise sigma in P dims: signal ~ |mu|^2, noise ~ P sigma^2
    rng = np.random.default_rng(0)
    mu, sigma, p = np.full(50, 0.2), 0.5, 50
    estimates = [gradient_signal(mu + sigma * rng.standard_normal((20, p))) for _ in range(400)]
    assert abs(np.mean([e["signal"] for e in estimates]) - mu @ mu) < 0.1 * mu @ mu
    assert abs(np.mean([e["noise"] for e in estimates]) - p * sigma**2) < 0.05 * p * sigma**2
    with pytest.raises(ValueError, match="two gradient samples"):
        gradient_signal(np.ones((1, 3)))
