"""bench/branch_value.py: one deviation from a residual policy's base, measured against the base's own run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.observation import FeatureBuilder

from .test_residual_ppo import residual_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import branch_value  # noqa: E402


def test_decision_points_spread_over_the_run_without_repeats():
    assert branch_value.decision_points(32, 4) == [0, 8, 16, 24]
    assert branch_value.decision_points(3, 4) == [0, 1, 2]


def test_spearman_table_finds_a_planted_monotone_feature_above_the_chance_bar():
    rng = np.random.default_rng(0)
    target = rng.normal(size=60)
    features = np.stack([rng.normal(size=60), np.exp(target), np.zeros(60)], 1)
    rho, bar = branch_value.spearman_table(features, target)
    assert rho[1] == pytest.approx(1.0) and rho[2] == 0.0 and abs(rho[0]) < bar < 1.0
    rho, _ = branch_value.spearman_table(features, np.ones(60))  # a constant outcome correlates with nothing
    assert (rho == 0).all()


def test_branches_retrace_the_schedule_until_they_deviate_and_report_them(tmp_path):
    spec = residual_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    result = branch_value.task_branches((str(path), 0, 0, 2, ("lr", "eps")))
    lr_values, eps_values = spec.hparams.lr.action.values, spec.hparams.eps.action.values
    assert len(result["points"]) == 2 and result["points"][0]["at"] == 0
    for point in result["points"]:
        assert [b["action"] for b in point["branches"]] == [f"lr x{v:g}" for v in lr_values if v != 1.0] + [
            f"eps x{v:g}" for v in eps_values if v != 1.0]
        assert all(b["same_before"] for b in point["branches"])
        assert all(np.isfinite([b["reward"], b["test_ratio"]]).all() for b in point["branches"])
    assert branch_value.loss_ratio(0.0, 0.0) == 1.0 and branch_value.loss_ratio(1.0, 0.0) == pytest.approx(1e30)
    # a deviation at the first decision changes the run: not every branch ends where the schedule does
    assert any(b["test_ratio"] != 1.0 for b in result["points"][0]["branches"])
    names = FeatureBuilder(ActionSpace(spec.hparams), spec.hparams).policy_names()
    assert len(names) == len(result["points"][0]["features"])
    text = branch_value.report([result], names, spec.meta_train.reward_cap)
    assert "Oracle" in text and "WARNING" not in text and "one segment later: a branch" in text
    assert "0.25 of the run later: a branch" in text
    for point in result["points"]:
        for b in point["branches"]:
            assert len(b["valid_after"]) == result["outer_steps"] - point["at"] and b["valid_after"][0] == pytest.approx(b["valid_next"], rel=1e-6)
    assert all(np.isfinite(b["valid_next"]) for pt in result["points"] for b in pt["branches"])


def test_held_out_auc_sees_a_planted_signal_on_unseen_tasks_and_not_noise():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(24), 4)
    y = (rng.random(96) < 0.5).astype(float)
    signal = np.stack([y + 0.3 * rng.normal(size=96), rng.normal(size=96)], 1)
    noise = rng.normal(size=(96, 2))
    assert min(branch_value.held_out_auc(signal, y, groups)) > 0.9
    assert 0.25 < np.mean(branch_value.held_out_auc(noise, y, groups)) < 0.75
    assert branch_value.auc(np.array([0.1, 0.2, 0.3]), np.array([0.0, 1.0, 1.0])) == 1.0


def test_acting_on_takes_the_top_scored_points_of_each_fold_and_keeps_elsewhere():
    rows_a, rows_b = np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool)
    scored = [(rows_a, np.array([2.0, 1.0])), (rows_b, np.array([0.0, 5.0]))]
    rewards = np.array([1.5, 0.5, 0.1, 1.3])
    # half of each fold: point 0 (fold a's best) and point 3 (fold b's best), 1 elsewhere
    assert branch_value.acting_on(scored, rewards, 0.5) == pytest.approx((1.5 + 1 + 1 + 1.3) / 4)


def _fake_task(x):
    return {"family": "nqm", "cpu_seconds": 0.0, "x": x}


def test_run_tasks_appends_each_result_with_its_stamp_in_order(tmp_path, capsys):
    out = tmp_path / "deep" / "results.jsonl"
    got = list(branch_value.run_tasks(_fake_task, [3, 1, 2], 2, str(out), {"spec": "s.yaml"}, lambda r: f"x={r['x']}"))
    assert [r["x"] for r in got] == [3, 1, 2]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"spec": "s.yaml", **r} for r in got]
    assert "task 3/3: nqm, x=2, 0 CPU-s" in capsys.readouterr().out
    list(branch_value.run_tasks(_fake_task, [4], 1, str(out), {"spec": "s.yaml"}, str))  # appends, keeps the rest
    assert len(out.read_text().splitlines()) == 4


def test_read_rows_keeps_results_of_other_settings_apart(tmp_path):
    out = tmp_path / "rows.jsonl"
    assert branch_value.read_rows(str(out), {"spec": ("a.yaml", "--spec")}) == []  # no file yet
    out.write_text(json.dumps({"spec": "a.yaml", "rerun": 1}) + "\n" + json.dumps({"spec": "a.yaml"}) + "\n")
    wanted = {"spec": ("a.yaml", "--spec"), "rerun": (None, "--rerun")}
    assert len(branch_value.read_rows(str(out), wanted)) == 2  # None accepts any
    with pytest.raises(SystemExit, match=r"another --rerun \(0, here 1\)"):  # the row without it reads the default
        branch_value.read_rows(str(out), {"rerun": (1, "--rerun")}, defaults={"rerun": 0})
    with pytest.raises(SystemExit, match=r"another --spec .*give another --out"):
        branch_value.read_rows(str(out), {"spec": ("b.yaml", "--spec")})
