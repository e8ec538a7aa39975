"""``lhopt fit-level``: a cautious observing level fitted to a level run's episodes acts where a
factor usually won, keeps where the outcome was a coin flip, and is a policy file like any other."""

import json

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES
from lhopt_dsl.agent.level import OBSERVED, CautiousLevel, TreeEnsemble, level_rule_from_data
from lhopt_dsl.agent.policy import PolicyFileError
from lhopt_dsl.agent.policy import load_checkpoint, save_checkpoint
from lhopt_dsl.controller import load_policy
from runners import level_offline as lo
from runners.cli import main
from runners.level_train import FACTORS

from .test_level_train import _start_policy
from .test_observing_level import watching
from .test_residual_ppo import residual_spec

D, O = len(DESCRIPTOR_NAMES), len(OBSERVED)
SURE, FLIP = 0, D + 1  # the inputs the planted outcomes depend on


def planted(n: int, seed: int = 0) -> list[dict]:
    """Episodes where x2 wins 95% of the time where input SURE > 0 and loses 95% below; x1/2 wins
    half the time wherever (a coin flip, larger on average where FLIP > 0); keep is drawn too."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x = rng.normal(size=D + O)
        k = rng.choice([0, 3, 4], p=[0.2, 0.4, 0.4])  # keep, x0.5, x2 (indices of FACTORS)
        f = FACTORS[k]
        if f == 2.0:
            won = rng.random() < (0.95 if x[SURE] > 0 else 0.05)
            reward = 1.1 if won else 0.9
        elif f == 0.5:
            reward = 1.0 + rng.choice([-0.2, 0.25]) + (0.05 if x[FLIP] > 0 else 0.0)
        else:
            reward = 1.0
        rows.append({"iteration": 3_000_000 + i // 64, "slot": i % 64, "task_id": f"t{i}", "family": "mlp",
                     "factor": f, "reward": float(reward), "input": x.tolist(), "observed": x[D:].tolist(),
                     "pick": int(k), "logp": float(np.log({0: 0.2, 3: 0.4, 4: 0.4}[k])), "value": 1.0,
                     "cpu_seconds": 1.0})  # fmt: skip
    return rows


def _files(tmp_path, rows):
    spec = residual_spec(tmp_path)
    state = load_checkpoint(_start_policy(tmp_path, spec))
    state["level"] = watching().to_data()
    save_checkpoint(state, tmp_path / "observing.pt")
    episodes = tmp_path / "episodes.jsonl"
    episodes.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 3, "cut by a ki')
    return tmp_path / "observing.pt", episodes


def test_the_cautious_level_takes_the_sure_factor_and_leaves_the_coin_flip(tmp_path):
    start, episodes = _files(tmp_path, planted(1500))
    report = lo.fit_level([episodes], start, tmp_path / "out", min_episodes=100)
    assert report["acting"] == [0.5, 2.0] and report["count"] == 1500  # the cut last line is left out
    assert report["chosen_by"] == "held-out value" and report["threshold"] in lo.THRESHOLDS
    assert report["tasks"] == 1500 and report["nodes"] > 100
    by = {r["threshold"]: r for r in report["table"]}
    assert by[0.6]["acted_reward"] > 1.05 and by[0.6]["acted_losses"] < 0.2  # where it acts, it mostly wins
    policy, _ = load_policy(tmp_path / "out" / "policy.pt")
    rule = policy.inner.rule
    assert isinstance(rule, CautiousLevel) and rule.observe == OBSERVED and rule.factors == (1.0, 0.5, 2.0)
    assert rule.threshold == report["threshold"] == rule.fitted["threshold"]
    rng = np.random.default_rng(9)
    x = rng.normal(size=(400, D + O))
    chosen = np.array(rule.choose_observed(x[:, :D].tolist(), x[:, D:]))
    sure = np.abs(x[:, SURE]) > 0.3  # away from the boundary the trees place somewhere near 0
    assert (chosen[sure & (x[:, SURE] > 0)] == 2.0).mean() > 0.9
    assert (chosen[sure & (x[:, SURE] < 0)] == 1.0).mean() > 0.9
    assert (chosen == 0.5).mean() < 0.05  # a coin flip is not taken, even where it pays a little more
    assert "(chosen)" in (tmp_path / "out" / "fit.md").read_text()
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["episodes_sha256"][0] == lo._sha256(episodes)


def test_held_out_scores_count_the_reward_only_where_the_rule_chose_the_factor_drawn():
    ep = lo.Episodes(x=np.zeros((4, 1)), factor=np.array([2.0, 2.0, 0.5, 1.0]), reward=np.array([1.2, 0.8, 1.5, 1.0]),
                     prob=np.array([0.5, 0.5, 0.25, 0.25]), family=np.array(["a"] * 4), task=np.arange(4))  # fmt: skip
    s = lo.scores(np.array([2.0, 1.0, 2.0, 1.0]), ep)
    # IPS: 1.2 / 0.5 where it took the drawn x2, 1 where it keeps, 0 where it chose what was not drawn
    assert s["value"] == pytest.approx((2.4 + 1 + 0 + 1) / 4)
    assert s["value_se"] == pytest.approx(np.std([2.4, 1, 0, 1], ddof=1) / 2)
    assert s["acts"] == 0.5 and s["acted_episodes"] == 1 and s["acted_reward"] == pytest.approx(1.2)
    assert s["declined_episodes"] == 1 and s["declined_reward"] == pytest.approx(0.8) and s["acted_losses"] == 0.0
    assert s["effective_episodes"] == pytest.approx(1.0) and s["largest_weight"] == pytest.approx(2.0)
    both = lo.scores(np.array([2.0, 2.0, 1.0, 1.0]), ep)  # two acted episodes of weight 2: 2 effective
    assert both["effective_episodes"] == pytest.approx(2.0) and both["acted_losses"] == 0.5
    assert list(lo.wins(np.array([0.9, 1.0, 1.1]))) == [False, False, True]  # a tie is not a win
    table = [{"threshold": 0.6, "value": 1.01}, {"threshold": 0.7, "value": 1.01}, {"threshold": 0.8, "value": 1.0}]
    assert lo.chosen_threshold(table) == 0.7  # the more cautious of equals
    assert lo.chosen_threshold([{"threshold": 0.6, "value": float("nan")}, *table]) == 0.7


def test_held_out_folds_keep_each_task_on_one_side_and_count_a_twice_recorded_episode_once(tmp_path, monkeypatch):
    rows = planted(600, seed=2)
    for r in rows:
        r["task_id"] = f"t{r['slot'] % 40}"  # 40 tasks, several episodes each
    start, episodes = _files(tmp_path, rows)
    again = tmp_path / "again.jsonl"  # another run that drew some of the same tasks alike
    again.write_text("".join(json.dumps({**r, "iteration": 9}) + "\n" for r in rows[:50]))
    ep, digests = lo.read_episodes([episodes, again], D + O, FACTORS)
    assert len(ep) == 600 and len(digests) == 2 and digests[1] == lo._sha256(again)
    fitted_on = []
    original = lo.win_models

    def spying(part, acting, seed):
        fitted_on.append(set(part.task))
        return original(part, acting, seed)

    monkeypatch.setattr(lo, "win_models", spying)
    lo.cross_validate(ep, [0.5, 2.0], [0.7], 4, 0)
    held = [set(ep.task) - tasks for tasks in fitted_on]
    assert len(held) == 4 and all(h and not (h & tasks) for h, tasks in zip(held, fitted_on))
    assert set().union(*held) == set(ep.task)  # every task held out once


def test_fit_level_refuses_what_it_cannot_fit_with_what_to_do(tmp_path, capsys):
    start, episodes = _files(tmp_path, planted(300))
    with pytest.raises(ValueError, match="lower --min-episodes"):
        lo.fit_level([episodes], start, tmp_path / "out")  # 120 per factor, 200 needed
    for bad, expect in [({"threshold": 0.3}, r"in \[0.5, 1\)"), ({"threshold": 1.0}, r"in \[0.5, 1\)"),
                        ({"thresholds": []}, "no threshold"), ({"folds": 1}, "at least 2 folds")]:  # fmt: skip
        with pytest.raises(ValueError, match=expect):
            lo.fit_level([episodes], start, tmp_path / "out", min_episodes=50, **bad)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "policy.pt").write_bytes(start.read_bytes())
    with pytest.raises(ValueError, match="would overwrite the start policy"):
        lo.fit_level([episodes], tmp_path / "run" / "policy.pt", tmp_path / "run", min_episodes=50)
    good = json.dumps(planted(1)[0])
    for row, expect in [("{not json", r"bad\.jsonl:1: not a JSON line"),
                        (json.dumps({**planted(1)[0], "reward": None}), "'reward' is None"),
                        (json.dumps({**planted(1)[0], "reward": float("nan")}), "'reward' is nan"),
                        (json.dumps({**planted(1)[0], "logp": -1000.0}), "not the log of a probability"),
                        (json.dumps({**planted(1)[0], "factor": 3.0}), "factor 3 is not among"),
                        (json.dumps({k: v for k, v in planted(1)[0].items() if k != "factor"}), "'factor' is None"),
                        (json.dumps({**planted(1)[0], "input": [None] * (D + O)}), "not all numbers")]:  # fmt: skip
        (tmp_path / "bad.jsonl").write_text(row + "\n" + good + "\n")
        with pytest.raises(ValueError, match=expect):
            lo.read_episodes([tmp_path / "bad.jsonl"], D + O, FACTORS)
    with pytest.raises(FileNotFoundError, match="no such episodes file"):
        lo.fit_level([tmp_path / "none.jsonl"], start, tmp_path / "out")
    wide = tmp_path / "wide.jsonl"
    wide.write_text(json.dumps({**planted(1)[0], "input": [0.0] * 12}) + "\n")
    with pytest.raises(ValueError, match="with 12 inputs, but the start level reads 29"):
        lo.fit_level([wide], start, tmp_path / "out")
    described = tmp_path / "described.jsonl"
    described.write_text(json.dumps({"factor": 2.0, "reward": 1.0}) + "\n")
    with pytest.raises(ValueError, match="train-level --observe"):
        lo.fit_level([described], start, tmp_path / "out")
    state = load_checkpoint(start)
    state.pop("level")
    save_checkpoint(state, tmp_path / "plain.pt")
    assert main(["fit-level", "--episodes", str(episodes), "--start", str(tmp_path / "plain.pt"),
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "does not observe" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before a refusal


def test_fit_level_from_the_command_line_with_a_given_threshold(tmp_path, capsys):
    start, episodes = _files(tmp_path, planted(800, seed=1))
    assert main(["fit-level", "--episodes", str(episodes), "--start", str(start), "--out", str(tmp_path / "out"),
                 "--threshold", "0.8", "--thresholds", "0.7,0.9", "--min-episodes", "100", "--folds", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Threshold 0.8 (given)" in out and "policy:" in out
    report = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert [r["threshold"] for r in report["table"]] == [0.7, 0.8, 0.9] and report["folds"] == 3
    level = torch.load(tmp_path / "out" / "policy.pt", weights_only=True)["level"]
    assert level["kind"] == "cautious" and level["threshold"] == 0.8 and len(level["forests"]) == 2


def test_the_boosted_trees_read_as_a_forest_predict_the_classifiers_log_odds():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 6)) * [1, 10, 0.1, 1, 1, 1000]
    y = x[:, 0] + x[:, 1] / 10 + rng.normal(size=600) > 0.5
    model = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(x, y)
    forest = TreeEnsemble.from_boosting(model)
    fresh = rng.normal(size=(300, 6)) * [1, 10, 0.1, 1, 1, 1000]
    for z in (x, fresh):
        assert np.allclose(forest.predict(z, np.float64)[:, 0], model.decision_function(z), rtol=0, atol=1e-9)
    assert len(forest.roots) == 41  # 40 trees and the baseline's leaf
    with pytest.raises(ValueError, match="binary classifier"):
        TreeEnsemble.from_boosting(HistGradientBoostingClassifier(max_iter=3).fit(x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)))


def _cautious(threshold=0.7):
    """A cautious level whose x2 wins with probability sigmoid(2 * SURE input) and x1/2 never."""
    def stump(feature, split, low, high):
        return TreeEnsemble(np.array([0]), np.array([1, -1, -1]), np.array([2, -1, -1]), np.array([feature, -1, -1]),
                            np.array([split, 0.0, 0.0]), np.array([[0.0], [low], [high]]))  # fmt: skip
    return CautiousLevel((1.0, 0.5, 2.0), (stump(0, 0.0, -5.0, -5.0), stump(SURE, 0.5, -3.0, 2.0)), threshold,
                         np.zeros(D + O), tuple(DESCRIPTOR_NAMES), OBSERVED, 0.125, {"note": "planted"})  # fmt: skip


def test_a_cautious_level_acts_only_where_a_factor_is_likely_to_win_and_its_file_is_checked(tmp_path):
    level = level_rule_from_data(_cautious().to_data())
    x = np.zeros((3, D + O))
    x[:, SURE] = [0.0, 1.0, 1.0]
    x[2, :D] = np.nan  # a run without a description keeps
    assert level.choose_observed(x[:, :D].tolist(), x[:, D:]) == [1.0, 2.0, 1.0]
    expected = [[1 / (1 + np.exp(5)), 1 / (1 + np.exp(3))], [1 / (1 + np.exp(5)), 1 / (1 + np.exp(-2))]]
    assert np.allclose(level.win_probability(x[:2]), expected)
    assert level_rule_from_data(_cautious(threshold=0.9).to_data()).choose_observed(x[:2, :D].tolist(), x[:2, D:]) == [1.0, 1.0]
    spec = residual_spec(tmp_path)
    state = load_checkpoint(_start_policy(tmp_path, spec))
    for mend, expect in [(lambda lv: lv.__setitem__("threshold", 1.5), r"\['threshold'\] is 1.5"),
                         (lambda lv: lv["forests"].pop(), r"\['forests'\] must be a list of one forest per factor"),
                         (lambda lv: lv["forests"][1]["feature"].__setitem__(0, D + O), r"\['forests'\]\[1\] splits on an input beyond"),
                         (lambda lv: lv.__setitem__("mean", torch.zeros(3)), r"\['mean'\] has shape \[3\]"),
                         (lambda lv: lv.__setitem__("observe", []), r"\['at'\] is set"),
                         (lambda lv: lv.update(factors=[1.0], forests=[]), "at least one other factor"),
                         (lambda lv: lv.update(factors=[1.0, 1.0, 2.0]), "at least one other factor, each once"),
                         (lambda lv: lv["forests"][0].__setitem__("left", torch.tensor(1)), r"\['left'\] is a 0-dimensional"),
                         (lambda lv: lv["forests"][0].__setitem__("value", torch.zeros(3)), r"\['value'\] is a 1-dimensional")]:  # fmt: skip
        level = _cautious().to_data()
        mend(level)
        save_checkpoint({**state, "level": level}, tmp_path / "bad.pt")
        with pytest.raises(PolicyFileError, match=r"bad\.pt: .*" + expect):
            load_policy(tmp_path / "bad.pt")
    save_checkpoint({**state, "level": _cautious().to_data()}, tmp_path / "good.pt")
    assert isinstance(load_policy(tmp_path / "good.pt")[0].inner.rule, CautiousLevel)
