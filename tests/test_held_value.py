"""bench/held_value.py: learning-rate offsets from a residual policy's base, held or windowed, measured."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lhopt_dsl.agent.residual import OFFSET_BOUNDS

from .test_residual_ppo import residual_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import held_value  # noqa: E402


def _offsets(steer, decisions, guard_at=None):
    """The offset from the base after each of ``decisions`` decisions of ``steer`` (one run)."""
    carry, out = steer.start([None]), []
    for t in range(decisions):
        step, carry = steer.act(carry, np.zeros(steer.policy_size), [None], True)
        assert (np.delete(step.actions[0], steer.lr_dim) == np.delete(steer.identity, steer.lr_dim)).all()
        if t == guard_at:
            carry = steer.guarded(carry, 0, 0.5)
        out.append(carry[1][0])
    return out


def test_steer_reaches_its_factor_as_fast_as_the_actions_allow_holds_it_and_comes_back(tmp_path):
    space = residual_spec(tmp_path).hparams  # learning-rate actions x0.5 ... x2
    keep = held_value.Steer(space)
    assert _offsets(keep, 6) == [1.0] * 6
    assert _offsets(keep.with_plan(2, None, 8.0), 7) == pytest.approx([1, 1, 2, 4, 8, 8, 8])
    assert _offsets(keep.with_plan(1, 3, 0.25), 7) == pytest.approx([1, 0.5, 0.25, 0.5, 1, 1, 1])
    # the guard's lowering is tracked as Residual tracks it, and the steer then climbs back
    assert _offsets(keep.with_plan(0, None, 2.0), 4, guard_at=1) == pytest.approx([2, 1, 2, 2])
    assert keep.plan is None  # with_plan copies
    far = keep.with_plan(0, None, 1e9)
    assert _offsets(far, 20)[-1] == OFFSET_BOUNDS[1]


def test_plans_hold_from_each_distinct_point_and_window_two_quarters():
    labels = [p[1] for p in held_value.plans(32)]
    assert len(labels) == 4 * len(held_value.FACTORS) + 2 * len(held_value.WINDOW_FACTORS)
    assert "x8 from 1/4" in labels and "x4 for the second quarter" in labels
    assert [p[2:4] for p in held_value.plans(32) if p[0] == "window"] == [(0, 8), (0, 8), (8, 16), (8, 16)]
    # two decisions: the start and 1/8 (and segment 1 and 1/4) coincide, and each hold is run once
    short = held_value.plans(2)
    assert sorted({p[2] for p in short if p[0] == "hold"}) == [0, 1]
    assert len([p for p in short if p[0] == "hold"]) == 2 * len(held_value.FACTORS)


def test_task_holds_retrace_the_schedule_until_they_leave_it_and_the_report_reads_them(tmp_path):
    spec = residual_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    result = held_value.task_holds((str(path), 0, 0))
    outer = result["outer_steps"]
    assert [b["label"] for b in result["branches"]] == [p[1] for p in held_value.plans(outer)]
    assert all(b["same_before"] for b in result["branches"])
    assert all(np.isfinite([b["reward"], b["test_ratio"]]).all() for b in result["branches"])
    assert all(len(b["valid_curve"]) == outer + 1 for b in result["branches"])
    # holding x1/8 from the start changes the run
    assert any(b["test_ratio"] != 1.0 for b in result["branches"] if b["start"] == 0)
    assert set(result["features"]) == {str(at) for at in result["points"].values()}
    text = held_value.report([result] * 8, None, spec.meta_train.reward_cap, permutations=3)
    assert "Oracle" in text and "WARNING" not in text and "from segment 1: oracle" in text


def test_acting_on_held_out_predictions_earns_a_planted_choice_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    n = 80
    x = rng.normal(size=(n, 3))
    rewards = np.full((n, 2), 0.8)
    rewards[:, 0] = 1.0 + 0.3 * x[:, 0]  # choice 0 pays where the first feature is positive, loses elsewhere
    got = held_value.earned(held_value.predicted(x, rewards, l2=1.0), rewards)
    oracle = np.maximum(rewards.max(1), 1.0).mean()  # about 1.12
    assert got.mean() > oracle - 0.01 and np.mean(got[x[:, 0] < -0.1] == 1.0) > 0.9  # keeps where nothing pays
    noise = rng.normal(size=(n, 3))
    assert held_value.earned(held_value.predicted(noise, rewards, l2=1.0), rewards).mean() < 1.0 < got.mean() - 0.1
    assert held_value.earned(np.array([[0.9, 0.95]]), np.array([[2.0, 2.0]])).tolist() == [1.0]


def test_the_best_factor_rules_choose_on_other_folds_and_within_a_group():
    rewards = np.array([[2.0, 0.5], [1.8, 0.5], [0.9, 1.2], [0.95, 1.1],
                        [2.0, 0.5], [1.8, 0.5], [0.9, 1.2], [0.95, 1.1]])  # fmt: skip
    groups = ["a", "a", "b", "b"] * 2
    # per group: each task takes its group's best choice over the other folds' tasks
    assert held_value.rule_best_factor(rewards, groups).tolist() == [2.0, 1.8, 1.2, 1.1] * 2
    # one choice for all: choice 0 has the best mean on the other folds
    assert held_value.rule_best_factor(rewards).tolist() == rewards[:, 0].tolist()
    # a choice that loses on average over the other folds is not taken: keep (1)
    assert held_value.rule_best_factor(np.full((8, 2), 0.5)).tolist() == [1.0] * 8


def test_speedups_read_rewards_in_the_rewards_own_units():
    spans = np.array([2.0, 4.0, np.nan, np.nan])
    rewards = np.array([1.0 + np.log(1.5) / 2.0, 1.0 + np.log(8.0) / 4.0, 1.0, 0.3])
    # 1 + log(s) / span is s; above the cap, the cap; a schedule's run with no span: 1 if not worse, else 1/cap
    assert held_value.speedups(rewards, spans, 2.0).tolist() == pytest.approx([1.5, 2.0, 1.0, 0.5])
    assert held_value.speedups(np.array([[1.0, -1.0]]), np.array([3.0]), 2.0).tolist() == [[1.0, 0.5]]
    assert held_value.Score(spans[:2], 2.0)(rewards[:2]) == f"{rewards[:2].mean():.3f} ({np.sqrt(3.0):.3f}x)"


def test_a_rerun_is_the_same_task_under_another_seed_with_whole_run_holds_only(tmp_path):
    spec = residual_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    first, again = held_value.task_holds((str(path), 0, 0)), held_value.task_holds((str(path), 0, 0, 1))
    assert again["rerun"] == 1 and again["seed"] == held_value.rerun_seed(first["seed"], 1) != first["seed"]
    assert [b["label"] for b in again["branches"]] == [f"x{f:g} from start" for f in held_value.FACTORS]
    assert again["schedule_valid_curve"] != first["schedule_valid_curve"]  # other weights and data
    assert again["outer_steps"] == first["outer_steps"]
    assert "2 tasks, each run" in held_value.seed_transfer([first] * 2, [again] * 2, 2.0)


def test_seed_transfer_earns_the_oracle_when_seeds_agree_and_keeps_score_when_they_do_not():
    def task(rewards):
        return {"points": {"start": 0}, "branches": [
            {"kind": "hold", "start": 0, "factor": f, "reward": r} for f, r in zip(held_value.FACTORS, rewards)]}

    a = [task([0.5, 0.9, 1.2, 0.8, 0.7, 0.6]), task([0.9, 0.95, 0.97, 1.3, 0.9, 0.5])]
    same = held_value.seed_transfer(a, a, 2.0)
    assert "taken on the rerun: 1.250" in same and "same choice on 1.00 of tasks" in same
    b = [task([1.4, 0.9, 0.8, 0.8, 0.7, 0.6]), task([0.9, 0.95, 0.97, 0.9, 0.9, 0.5])]  # the rerun disagrees
    other = held_value.seed_transfer(a, b, 2.0)
    # task 1: the first seed's x0.5 earns 0.8 on the rerun; task 2: its x2 earns 0.9 there
    assert "taken on the rerun: 0.850, better / equal / worse than the schedule on 0 / 0 / 2 tasks" in other and "same choice on 0.00 of tasks" in other
    assert "The rerun's own oracle (its best factor, or keep): 1.200" in other


def test_whole_run_only_runs_the_tasks_own_seed_and_its_file_is_kept_apart(tmp_path):
    spec = residual_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    full, whole = held_value.task_holds((str(path), 0, 0)), held_value.task_holds((str(path), 0, 0, 0, True))
    assert whole["seed"] == full["seed"] and whole["schedule_valid_curve"] == full["schedule_valid_curve"]
    assert whole["branches"] == [b for b in full["branches"] if b["kind"] == "hold" and b["start"] == 0]
    text = held_value.report([whole] * 8, None, spec.meta_train.reward_cap, permutations=2)
    assert "- from start: oracle" in text and "from segment 1" not in text
    out = tmp_path / "whole.jsonl"
    out.write_text(json.dumps({"spec": str(path), "whole_run": True, **whole}) + "\n")
    assert len(held_value._read(str(out), str(path), 0, True)) == 1
    with pytest.raises(SystemExit, match="another --whole-run"):
        held_value._read(str(out), str(path), 0, False)


def test_rewards_relative_to_the_schedule_make_an_equal_ending_a_tie(tmp_path):
    spec = residual_spec(tmp_path)
    cfg = SimpleNamespace(task=SimpleNamespace(inner_steps=40, outer_steps=4))
    falling, rising = [2.0, 1.0, 0.7, 0.5, 0.4], [2.0, 1.0, 0.7, 0.5, 0.6]  # the second ends above its best
    span, keep = held_value.schedule_reward(spec, cfg, falling)
    assert keep == pytest.approx(1.0) and span > 0
    span, keep = held_value.schedule_reward(spec, cfg, rising)
    assert keep < 1.0
    task = {"task_id": "t", "branches": [{"reward": keep}, {"reward": 1.0}]}
    out = held_value.relative_to_schedule([task], [keep])[0]
    assert [b["reward"] for b in out["branches"]] == pytest.approx([1.0, 2.0 - keep])
    assert out["schedule_reward"] == keep and task["branches"][0]["reward"] == keep  # a copy
    # in speedup terms: exp((reward - keep) * span), the branch against the schedule's final loss
    assert held_value.speedups(np.array([out["branches"][1]["reward"]]), np.array([span]), 100.0)[0] == pytest.approx(
        np.exp((1.0 - keep) * span))


def test_early_picks_choose_the_factor_lowest_early_and_earn_its_final_reward():
    factors = (1.0, *held_value.FACTORS)
    # x2 leads early and loses in the end; x0.5 is slow early and best in the end
    curves = {f: [1.0] + [0.9] * 4 + [0.5] * 12 for f in factors}
    curves[2.0] = [1.0] + [0.6] * 4 + [0.8] * 12
    curves[0.5] = [1.0] + [0.95] * 8 + [0.3] * 8
    curves[8.0] = [1.0, 0.1, float("nan")] + [float("nan")] * 14  # lowest of all, then diverged
    final = {1.0: 1.0, 2.0: 0.7, 0.5: 1.3, 8.0: 0.2}
    row = {"outer_steps": 16, "points": {"start": 0}, "schedule_valid_curve": curves[1.0],
           "branches": [{"kind": "hold", "start": 0, "factor": f, "reward": final.get(f, 0.9), "valid_curve": curves[f]}
                        for f in held_value.FACTORS]}
    got = held_value.early_picks([row])
    assert got[("x1/2, x1, x2", 1 / 8)][0] == 0.7  # x2's run leads at 1/8 of the run
    assert got[("x1/2, x1, x2", 1 / 2)][0] == 1.0  # at 1/2 the schedule's run (0.5) has passed it; x0.5's 0.3 comes later
    assert got[("x1/8 ... x8", 1 / 16)][0] == 0.2  # x8's run is the lowest at the first decision
    assert got[("x1/8 ... x8", 1 / 8)][0] == 0.7  # and has diverged by the second: never picked there
    losses = held_value.early_losses([row], 1 / 8)[0]  # decision 2: log(loss / the schedule's)
    assert losses[held_value.FACTORS.index(2.0)] == pytest.approx(np.log(0.6 / 0.9))
    assert losses[held_value.FACTORS.index(0.5)] == pytest.approx(np.log(0.95 / 0.9))
    assert losses[held_value.FACTORS.index(8.0)] == 5.0  # diverged: the worst a probe can show
    row["branches"][0]["valid_curve"] = None  # a committed held file: no curves, nothing to pick from
    assert held_value.early_picks([row]) == {} and held_value.early_losses([row], 0.5) is None
