"""Evaluation metrics on synthetic curves and losses with answers known by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lhopt_dsl.metrics import (
    best_baseline,
    format_table1,
    loss_at,
    performance_profile,
    plot_performance_profile,
    speedup,
    steps_to_reach,
    table1,
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


# --- Table 1 ---------------------------------------------------------------------------------------


def test_table1_counts_pairs_at_t_and_2t():
    policy = {"a": 1.0}
    at_t = {"a": {"b1": 2.0, "b2": 1.5, "b3": 1.0, "b4": 0.5}}  # beats b1, b2, b3 (a tie counts)
    at_2t = {"a": {"b1": 1.0, "b2": 0.9, "b3": 0.8, "b4": 0.4}}  # ties b1 only
    res = table1(policy, at_t, at_2t, {"a": "mlp"})
    assert res["overall"] == {"ge_1x": 0.75, "ge_2x": 0.25, "tasks": 1, "pairs": 4}
    assert res["families"]["mlp"]["ge_1x"] == 0.75


def test_table1_splits_by_family_and_handles_nan():
    policy = {"a": 1.0, "b": 1.0, "c": NAN}
    at_t = {"a": {"x": 2.0, "y": 2.0}, "b": {"x": 0.5, "y": NAN}, "c": {"x": NAN, "y": 9.0}}
    at_2t = {"a": {"x": 0.5, "y": 2.0}, "b": {"x": 0.5, "y": 0.5}, "c": {"x": NAN, "y": 9.0}}
    fam = {"a": "mlp", "b": "nqm", "c": "nqm"}
    res = table1(policy, at_t, at_2t, fam)
    assert res["families"]["mlp"] == {"ge_1x": 1.0, "ge_2x": 0.5, "tasks": 1, "pairs": 2}
    # b: beats x? no; beats NaN y: yes. c: NaN policy never wins, even against a NaN baseline.
    assert res["families"]["nqm"] == {"ge_1x": 0.25, "ge_2x": 0.0, "tasks": 2, "pairs": 4}
    assert res["overall"]["ge_1x"] == pytest.approx(3 / 6) and res["overall"]["ge_2x"] == pytest.approx(1 / 6)
    assert res["overall"]["tasks"] == 3
    assert list(res["families"]) == ["mlp", "nqm"]


def test_table1_rejects_missing_or_mismatched_baselines():
    with pytest.raises(KeyError):
        table1({"a": 1.0}, {}, {}, {"a": "f"})
    with pytest.raises(ValueError, match="differ"):
        table1({"a": 1.0}, {"a": {"x": 1.0}}, {"a": {"y": 1.0}}, {"a": "f"})


def test_format_table1_plain_and_markdown():
    res = table1({"a": 1.0, "b": 2.0}, {"a": {"x": 2.0}, "b": {"x": 1.0}}, {"a": {"x": 0.5}, "b": {"x": 0.5}},
                 {"a": "MNISTs + MLP", "b": "Text + RNN"})  # fmt: skip
    text = format_table1(res)
    lines = text.splitlines()
    assert lines[0].split() == [">=1x", ">=2x", "tasks"]
    assert lines[1].split() == ["Overall", "0.500", "0.000", "2"]
    assert lines[2].split() == ["MNISTs", "+", "MLP", "1.000", "0.000", "1"]
    assert lines[3].startswith("Text + RNN")
    md = format_table1(res, markdown=True).splitlines()
    assert md[0] == "|  | >=1x | >=2x | tasks |" and md[1] == "|---|---:|---:|---:|"
    assert md[2] == "| Overall | 0.500 | 0.000 | 2 |"
    assert len(md) == 5


# --- speedup ---------------------------------------------------------------------------------------


def test_speedup_reads_the_best_baselines_2t_curve():
    T = 100
    target = 10.0 * math.exp(-1.5)  # the baseline needs 75 steps
    assert speedup(target, T, STEPS, LOSSES) == (pytest.approx(0.75), False)
    assert speedup(LOSSES[-1], T, STEPS, LOSSES) == (pytest.approx(2.0), False)  # reached exactly at 2T


def test_speedup_is_capped_and_flagged():
    T = 100
    assert speedup(LOSSES[-1] / 2, T, STEPS, LOSSES) == (2.0, True)  # never reached in the 2T run
    assert speedup(LOSSES[-1] / 2, T, STEPS, LOSSES, cap=3.0) == (3.0, True)
    assert speedup(10.0 * math.exp(-3.0), T, STEPS, LOSSES, cap=1.0) == (1.0, True)  # 150 steps > cap
    assert speedup(NAN, T, STEPS, LOSSES) == (0.0, False)
    assert speedup(20.0, T, STEPS, LOSSES) == (0.0, False)  # worse than the baseline's start
    nan_curve = np.full(len(STEPS), NAN)
    assert speedup(1.0, T, STEPS, nan_curve) == (2.0, True)


def test_best_baseline_and_loss_at():
    curves = {
        "slow": ([0, 50, 100], [5.0, 3.0, 2.0]),
        "fast": ([0, 50, 100], [5.0, 1.0, 1.5]),
        "nan": ([0, 50, 100], [5.0, NAN, NAN]),
        "long": ([0, 100, 200], [5.0, 1.2, 0.1]),  # a 2T run: judged at step 100
    }
    assert best_baseline(curves, 100) == "long"
    del curves["long"]
    assert best_baseline(curves, 100) == "fast"
    assert best_baseline(curves, 50) == "fast"
    assert loss_at([0, 50, 100], [5.0, 1.0, 1.5], 75) == 1.0
    assert math.isnan(loss_at([10], [1.0], 5))
    with pytest.raises(ValueError):
        best_baseline({}, 10)


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
