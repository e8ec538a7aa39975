"""An observing learned level: it chooses at a fraction of the run from the model's description and
what the run has shown by then, so different observations of one model lead to different actions."""

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES, model_descriptor
from lhopt_dsl.agent.level import (OBSERVE_AT, OBSERVED, ChosenLevel, HoldLevel, LearnedLevel, LevelNet, ObservedReader,
                                   level_rule_from_data, observing_decision)  # fmt: skip
from lhopt_dsl.agent.observation import FeatureBuilder
from lhopt_dsl.agent.policy import PolicyFileError, load_checkpoint, save_checkpoint
from lhopt_dsl.controller import LHOPT, load_policy
from runners.level_train import FACTORS

from .test_level_train import _start_policy
from .test_residual import LR_VALUES, SPACE, Scripted
from .test_residual_ppo import residual_spec

D, O = len(DESCRIPTOR_NAMES), len(OBSERVED)
MODEL = tuple(model_descriptor([(8, 8)], 1000, 50))
WATCHED = "loss_ratio/tanh"  # log(train / valid) squashed: what the planted level reads


def watching_net(below: float, above: float) -> LevelNet:
    """An observing level's network that chooses ``below`` where the run's tanh(log(train / valid))
    is below 0.1 and ``above`` where it is above, whatever the model (and keeps at 0.1)."""
    torch.manual_seed(0)
    net = LevelNet(D + O, len(FACTORS), hidden=4)
    at = D + OBSERVED.index(WATCHED)
    with torch.no_grad():
        for layer in (net.body[0], net.body[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        net.mean[at], net.scale[at] = 0.1, 0.1  # an unreported ratio reads as 0.1 (keep), not as the builder's 0
        net.body[0].weight[0, at] = 5.0
        net.body[2].weight[0, 0] = 5.0
        net.logits.weight[FACTORS.index(below), 0] = -10.0
        net.logits.weight[FACTORS.index(above), 0] = 10.0
    return net


def watching(below=0.5, above=2.0, at=OBSERVE_AT) -> LearnedLevel:
    return LearnedLevel(FACTORS, watching_net(below, above), DESCRIPTOR_NAMES, {"note": "planted"}, OBSERVED, at)


def test_the_decision_is_the_nearest_to_its_fraction_after_the_first_segment_and_before_the_last():
    assert [observing_decision(0.125, n) for n in (2, 4, 8, 16, 30, 50, 100)] == [1, 1, 1, 2, 4, 6, 12]
    assert observing_decision(0.99, 10) == 9 and observing_decision(0.125, 1) == 0


def test_an_observing_level_chooses_at_its_fraction_from_what_each_run_showed():
    rule = watching()
    actor = HoldLevel(Scripted([LR_VALUES.index(1.0)] * 16), SPACE, rule)
    index, flag = ObservedReader([WATCHED, "loss_ratio/is_nan"], SPACE).index
    runs = [Run({"lr": 1e-3}, 16, describe=MODEL)] * 3 + [Run({"lr": 1e-3}, 16)]  # one model; the last undescribed
    carry = actor.start(runs)
    assert carry.goal == (1.0,) * 4  # nothing chosen before the run has shown anything
    shown = np.zeros((4, actor.policy_size), dtype=np.float32)
    shown[:, index] = [0.3, -0.3, 0.0, 0.3]
    shown[2, flag] = 1.0  # the third's ratio was never reported: the builder's default 0, flagged
    offsets = []
    for t in range(8):
        _, carry = actor.act(carry, shown, [None] * 4, True)
        offsets.append(carry.offset)
    at = observing_decision(OBSERVE_AT, 16)
    assert all(o == (1.0,) * 4 for o in offsets[:at])  # the base schedule until it chooses
    assert offsets[at] == offsets[-1] == pytest.approx((2.0, 0.5, 1.0, 1.0))  # by what it saw; unreported: the mean
    assert carry.goal == pytest.approx((2.0, 0.5, 1.0, 1.0))


def test_the_same_model_reported_differently_in_the_dropin_gets_different_learning_rates(tmp_path):
    """Through LHOPT: one model, one seed; only what the user reports differs, and so does the level."""
    spec = residual_spec(tmp_path)
    state = load_checkpoint(_start_policy(tmp_path, spec))
    state["level"] = watching(below=0.25, above=0.5).to_data()  # lowered levels: clear of the learning rate's bound
    save_checkpoint(state, tmp_path / "observing.pt")
    policy, _ = load_policy(tmp_path / "observing.pt")
    assert policy.inner.rule.observe == OBSERVED

    def run(train_over_valid: float | None) -> list[float]:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 8)
        opt = LHOPT(model.parameters(), tmp_path / "observing.pt", total_steps=320, outer_steps=16, guard=False)
        for _ in range(320):
            model.weight.grad = torch.full_like(model.weight, 1e-2)
            model.bias.grad = torch.full_like(model.bias, 1e-2)
            if train_over_valid is not None:
                opt.observe(train_loss=1.0 * train_over_valid, valid_loss=1.0)
            opt.step()
        return [h["lr"] for h in opt.history]

    overfit, underfit, silent = run(0.5), run(2.0), run(None)
    at = observing_decision(OBSERVE_AT, 16)
    # the history's entry k + 1 is the learning rate decision k set: the same base schedule until it chooses
    first = [next(k for k, (a, b) in enumerate(zip(other, silent)) if a != b) for other in (overfit, underfit)]
    assert first == [at + 1, at + 1]
    assert underfit[-1] / silent[-1] == pytest.approx(0.5) and overfit[-1] / silent[-1] == pytest.approx(0.25)


def test_a_chosen_level_holds_from_its_decision():
    actor = HoldLevel(Scripted([LR_VALUES.index(1.0)] * 16), SPACE, ChosenLevel(4.0, at=0.25))
    carry = actor.start([Run({"lr": 1e-3}, 16)])
    seen = []
    for _ in range(16):
        _, carry = actor.act(carry, np.zeros((1, actor.policy_size)), [None], True)
        seen.append(carry.offset[0])
    assert seen[:4] == [1.0] * 4 and seen[4] == 2.0 and seen[5:] == [4.0] * 11  # x2 a decision at most


def test_an_observing_level_that_does_not_fit_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="names the features it reads and a fraction"):
        LearnedLevel(FACTORS, watching_net(0.5, 2.0), DESCRIPTOR_NAMES, {}, OBSERVED, None)
    with pytest.raises(ValueError, match="names the features it reads and a fraction"):
        LearnedLevel(FACTORS, watching_net(0.5, 2.0), DESCRIPTOR_NAMES, {}, OBSERVED, 1.0)
    with pytest.raises(ValueError, match="reads 29 inputs"):
        LearnedLevel(FACTORS, watching_net(0.5, 2.0), DESCRIPTOR_NAMES, {}, OBSERVED[:3], 0.5)
    unknown = LearnedLevel(FACTORS, LevelNet(D + 1, len(FACTORS)), DESCRIPTOR_NAMES, {}, ("no/such",), 0.5)
    with pytest.raises(ValueError, match=r"reads the features \['no/such'\]"):
        HoldLevel(Scripted([0]), SPACE, unknown)
    spec = residual_spec(tmp_path)
    state = load_checkpoint(_start_policy(tmp_path, spec))
    for mend, expect in [(lambda lv: lv.__setitem__("at", 1.5), r"\['level'\]\['at'\] is 1.5"),
                         (lambda lv: lv.__setitem__("at", None), r"\['level'\]\['at'\] is None"),
                         (lambda lv: lv.__setitem__("observe", "loss"), r"\['level'\]\['observe'\] must be a list"),
                         (lambda lv: lv.__setitem__("observe", OBSERVED[:3]), r"\['level'\]\['net'\]\['mean'\] has shape \[29\], but the declared shape needs \[15\]"),
                         (lambda lv: lv.pop("observe"), r"\['level'\]\['at'\] is set"),
                         (lambda lv: lv["observe"].__setitem__(0, "no/such"),
                          r"\['level'\]\['observe'\]: an observing level reads the features \['no/such'\]")]:  # fmt: skip
        level = watching().to_data()
        level["observe"] = list(level["observe"])
        mend(level)
        save_checkpoint({**state, "level": level}, tmp_path / "bad.pt")
        with pytest.raises(PolicyFileError, match=r"bad\.pt: .*" + expect):
            load_policy(tmp_path / "bad.pt")


def test_an_observing_level_round_trips_and_its_features_are_the_policys_own():
    rule = level_rule_from_data(watching(at=0.25).to_data())
    assert isinstance(rule, LearnedLevel) and rule.observe == OBSERVED and rule.at == 0.25
    names = FeatureBuilder(ActionSpace(SPACE), SPACE).policy_names()
    assert [names[i] for i in ObservedReader(OBSERVED, SPACE).index] == list(OBSERVED)
    shown = np.zeros((2, O))
    shown[:, OBSERVED.index(WATCHED)] = [0.3, -0.3]
    assert rule.choose_observed([MODEL, MODEL], shown) == [2.0, 0.5]


def test_train_level_observing_draws_in_the_episode_from_the_start_level_and_resumes_the_same(tmp_path):
    import json

    import yaml

    from runners import level_train
    from runners.level_train import LevelSettings, start_from_level, train_level

    from .test_level_train import _learned_file, planted_net
    from .test_residual_ppo import OFFLINE

    spec = residual_spec(tmp_path)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    start = _start_policy(tmp_path, spec)
    describing = _learned_file(tmp_path, spec, planted_net(small=2.0, big=0.5))  # hidden 4
    run = tmp_path / "run"
    settings = LevelSettings(iterations=1, episodes=4, workers=1, run_dir=run, policy=start, tracking_uri=OFFLINE,
                             quiet=True, dev_every=0, hidden=4, observe=True, start_level=describing)  # fmt: skip
    with pytest.warns(UserWarning, match="tracking disabled"):
        path = train_level(str(spec_path), settings)
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    first = LevelNet(D + O, len(FACTORS), 4)
    start_from_level(first, describing)
    for r in rows:  # drawn by the start level, which reads the description as before and the observations at zero
        assert len(r["input"]) == D + O and r["factor"] == FACTORS[r["pick"]]
        with torch.no_grad():
            logp = torch.log_softmax(first(np.array([r["input"]]))[0].double(), 1)[0, r["pick"]]
        assert float(logp) == pytest.approx(r["logp"], abs=1e-6)
    policy, _ = load_policy(path)
    assert policy.inner.rule.observe == OBSERVED and policy.inner.rule.at == OBSERVE_AT
    # killed during its second iteration after one episode: resumed, it reuses it and draws the rest
    ckpt = load_checkpoint(run / level_train.CHECKPOINT)
    job = (str(spec_path), str(start), level_train.FIRST_ITERATION + 1, 0,
           (ckpt["net"], (spec.seed * 1_000_003 + 1) * 100_003))  # fmt: skip
    once, again = level_train.episode(job), level_train.episode(job)
    assert (once["pick"], once["logp"], once["reward"]) == (again["pick"], again["logp"], again["reward"])
    other = level_train.episode((*job[:3], 1, (ckpt["net"], job[4][1] + 1)))
    with (run / "episodes.jsonl").open("a") as f:
        f.write(json.dumps({**once, "cpu_seconds": 1e6}) + "\n")
        f.write(json.dumps({**other, "logp": other["logp"] - 1.0, "cpu_seconds": 1e6}) + "\n")  # not this network's draw
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "iterations": 2}))
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and sum(r["cpu_seconds"] == 1e6 for r in rows) == 2
    assert sorted(r["slot"] for r in rows[-3:]) == [1, 2, 3]  # slot 0 reused; slot 1's stale row run again
    with pytest.raises(ValueError, match="other start_level_sha256"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "start_level": start}))
    with pytest.raises(ValueError, match="only an observing run"):
        start_from_level(LevelNet(D, len(FACTORS), 4), path)  # an observing level starts only an observing run
    with pytest.raises(ValueError, match="no learned level"):
        start_from_level(LevelNet(D + O, len(FACTORS), 4), start)
    with pytest.raises(ValueError, match="4 hidden units, this run 8"):
        start_from_level(LevelNet(D + O, len(FACTORS), 8), describing)

    # an observing level goes on in a new run (another spec, say) exactly where it was: its whole
    # network, and the first iteration keeps its standardisation rather than taking the new episodes'
    trained = LevelNet(D + O, len(FACTORS), 4)
    assert start_from_level(trained, path) is True
    now = load_policy(path)[0].inner.rule.net.state_dict()  # the run's level after its second iteration
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in now.items())
    on = tmp_path / "on"
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "run_dir": on, "start_level": path}))
    rows = [json.loads(line) for line in (on / "episodes.jsonl").read_text().splitlines()]
    for r in rows:  # drawn by the level it started from
        with torch.no_grad():
            logp = torch.log_softmax(trained(np.array([r["input"]]))[0].double(), 1)[0, r["pick"]]
        assert float(logp) == pytest.approx(r["logp"], abs=1e-6)
    after = load_checkpoint(on / level_train.CHECKPOINT)["net"]
    assert torch.equal(after["mean"], trained.mean) and torch.equal(after["scale"], trained.scale)


def test_train_level_with_cadences_tells_both_runs_the_tasks_drawn_cadence(tmp_path):
    """--cadences: the episode's runs report at the task's cadence drawn from the spec (here: never a
    training or validation loss), so the level reads what such a run shows; a run keeps its choice."""
    import json

    import yaml

    from lhopt_dsl.spec.experiment import ReportingSpec
    from runners import level_train
    from runners.level_train import Job, LevelSettings, train_level

    from .test_residual_ppo import OFFLINE

    spec = residual_spec(tmp_path, reporting=ReportingSpec(full=0.0, train_never=1.0, valid_never=1.0))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    start = _start_policy(tmp_path, spec)
    net = LevelNet(D + O, len(FACTORS), 4)
    job = Job(str(spec_path), str(start), level_train.FIRST_ITERATION, 0, (net.state_dict(), 1))
    full, silent = level_train.episode(job), level_train.episode(job._replace(cadences=True))
    assert "cadence" not in full and silent["cadence"] == [None, None]
    ratio = OBSERVED.index(WATCHED)
    assert full["observed"][ratio] is not None and not np.isnan(full["observed"][ratio])
    assert np.isnan(silent["observed"][ratio])  # nothing reported: read as the training mean
    assert silent["start_test_loss"] == full["start_test_loss"]  # the same run; only what it was told differs

    run = tmp_path / "run"
    settings = LevelSettings(iterations=1, episodes=2, workers=1, run_dir=run, policy=start, tracking_uri=OFFLINE,
                             quiet=True, dev_every=0, hidden=4, observe=True, cadences=True)  # fmt: skip
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), settings)
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert [r["cadence"] for r in rows] == [[None, None]] * 2
    with pytest.raises(ValueError, match="other recipe"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "cadences": False}))
