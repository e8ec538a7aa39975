"""lhopt_dsl.agent.level: a ridge rule that chooses a residual policy's held offset after one segment."""

import math

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.level import LEVEL_FACTORS, Z_CLIP, HoldLevel, LevelRule
from lhopt_dsl.agent.policy import ActorCritic, PolicyFileError, save_checkpoint
from lhopt_dsl.agent.residual import OFFSET_BOUNDS, Residual
from lhopt_dsl.controller import load_policy
from runners.meta_train import policy_shape

from .test_imitation import SMOKE
from .test_population import smoke
from .test_residual import BASE, LR_VALUES, SPACE, Scripted, biased, dropin_run, followed

P = ActorCritic(policy_shape(SMOKE)).policy_size


def planted(n=400, seed=0):
    """Tasks whose feature 0 says which factor pays: x4 where it is high, x0.25 where it is low,
    nothing in between; every other feature is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, P))
    rewards = np.full((n, len(LEVEL_FACTORS)), 0.95) + 0.01 * rng.normal(size=(n, len(LEVEL_FACTORS)))
    rewards[:, LEVEL_FACTORS.index(4.0)] += 0.2 * (x[:, 0] > 1)
    rewards[:, LEVEL_FACTORS.index(0.25)] += 0.2 * (x[:, 0] < -1)
    return x, rewards


def rule_for(factor_by_sign, decision=1):
    """A rule that chooses ``factor_by_sign[0]`` where feature 0 is negative and ``[1]`` where positive."""
    k = len(LEVEL_FACTORS)
    w = np.zeros((P + 1, k))
    w[-1] = -0.1
    for sign, f in zip((-1, 1), factor_by_sign):
        if f != 1.0:
            w[0, LEVEL_FACTORS.index(f)] = 0.2 * sign
    return LevelRule(decision, LEVEL_FACTORS, np.zeros(P), np.ones(P), w, 1.0)


def test_a_fitted_rule_finds_a_planted_signal_and_keeps_elsewhere():
    x, rewards = planted()
    rule = LevelRule.fit(x, rewards, l2=10.0)
    probe = np.zeros((3, P))
    probe[:, 0] = [2.5, 0.0, -2.5]
    assert list(rule.choose(probe)) == [4.0, 1.0, 0.25]
    shuffled = LevelRule.fit(x, rewards[np.random.default_rng(1).permutation(len(x))], l2=10.0)
    assert (shuffled.choose(probe) == 1.0).all()  # no factor predicted above the schedule
    # a row with a non-finite feature keeps; one far outside the training spread is clipped, not extrapolated
    probe[0, 3] = math.nan
    assert rule.choose(probe)[0] == 1.0
    far = np.zeros((1, P))
    far[0, 0] = 1e6
    assert rule.predict(far).max() == pytest.approx(rule.predict(np.eye(1, P) * Z_CLIP * x[:, 0].std() + x.mean(0)).max(), abs=0.05)


def test_a_rule_refuses_data_that_does_not_fit_it():
    w = np.zeros((P + 1, 6))
    with pytest.raises(ValueError, match="offset bounds|within"):
        LevelRule(1, (0.5, 2.0, 4.0, 8.0, 16.0, 1e3), np.zeros(P), np.ones(P), w)
    with pytest.raises(ValueError, match="weights"):
        LevelRule(1, LEVEL_FACTORS, np.zeros(P), np.ones(P), w[:-1])
    with pytest.raises(ValueError, match="positive"):
        LevelRule(1, LEVEL_FACTORS, np.zeros(P), np.zeros(P), w)
    with pytest.raises(ValueError, match="finite"):
        LevelRule.fit(np.full((4, P), math.nan), np.ones((4, 6)), 1.0)


def _offsets(actor, outer, features, guard_at=None):
    """The offset HoldLevel tracks after each decision of one run, and the learning-rate actions it took."""
    carry, offsets, taken = actor.start([Run({"lr": 1e-3}, outer)]), [], []
    for t in range(outer):
        step, carry = actor.act(carry, features, [None], True)
        taken.append(int(step.actions[0, actor.lr_dim]))
        assert step.proposed[0, actor.lr_dim] == LR_VALUES.index(1.0)  # the inner actor's own proposal is kept
        if t == guard_at:
            carry = actor.guarded(carry, 0, 0.5)
        offsets.append(carry.offset[0])
    return offsets, taken


def test_hold_level_reaches_the_chosen_factor_after_one_segment_holds_it_and_follows_the_guard():
    keep = LR_VALUES.index(1.0)
    inner = Scripted([keep] * 12)
    up, down = np.zeros((1, P)), np.zeros((1, P))
    up[0, 0], down[0, 0] = 1.0, -1.0
    actor = HoldLevel(inner, SPACE, rule_for((0.25, 4.0)))
    assert _offsets(actor, 6, up)[0] == pytest.approx([1, 2, 4, 4, 4, 4])  # chosen at decision 1, x2 a decision
    assert _offsets(actor, 6, down)[0] == pytest.approx([1, 0.5, 0.25, 0.25, 0.25, 0.25])
    assert _offsets(HoldLevel(inner, SPACE, rule_for((1.0, 1.0))), 6, up)[0] == [1.0] * 6  # nothing pays: keeps
    # the guard lowers the offset and the level held: the run is not steered back up to where it diverged
    assert _offsets(actor, 6, up, guard_at=3)[0] == pytest.approx([1, 2, 4, 2, 2, 2])
    # one decision: the rule chooses at the only one there is
    assert _offsets(actor, 1, up)[0] == pytest.approx([2])
    # the features only matter where the rule reads them: a run that changes after decision 1 keeps its level
    carry = actor.start([Run({"lr": 1e-3}, 5)])
    for t in range(5):
        _, carry = actor.act(carry, up if t <= 1 else down, [None], True)
    assert carry.offset[0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="reads"):
        HoldLevel(inner, SPACE, LevelRule(1, LEVEL_FACTORS, np.zeros(3), np.ones(3), np.zeros((4, 6))))


def test_inside_a_residual_the_learning_rate_follows_base_times_the_level():
    keep = LR_VALUES.index(1.0)
    outer = 12
    up = np.zeros((1, P))
    up[0, 0] = 1.0
    residual = Residual(HoldLevel(Scripted([keep] * outer), SPACE, rule_for((0.25, 4.0))), SPACE, BASE)
    carry = residual.start([Run({"lr": 1e-3}, outer)])
    for _ in range(outer):
        _, carry = residual.act(carry, up, [None], True)
    assert carry.offset[0] == pytest.approx(4.0) and carry.inner.offset[0] == pytest.approx(4.0)
    plain = followed(BASE, 1e-3, outer)[-1]
    assert carry.lr[0] == pytest.approx(4.0 * plain, rel=0.3)


def _policy_file(tmp_path, rule, name="level.pt", **extra):
    path = tmp_path / name
    data = {"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
            "residual": {"base": BASE.name, "offset_bounds": list(OFFSET_BOUNDS)}, "level": rule.to_data(), **extra}
    save_checkpoint(data, path)
    return path


def test_a_policy_file_with_a_level_loads_as_a_residual_around_it_and_runs_in_the_dropin(tmp_path):
    from runners.evaluate import policy_run

    w = np.zeros((P + 1, len(LEVEL_FACTORS)))
    w[-1, LEVEL_FACTORS.index(0.25)] = 0.1  # always x1/4 after the first segment
    rule = LevelRule(1, LEVEL_FACTORS, np.zeros(P), np.ones(P), w)
    path = _policy_file(tmp_path, rule)
    policy, space = load_policy(path)
    assert policy.kind == "residual" and policy.inner.kind == "level"
    cfg = smoke("mlp", outer_steps=8)
    lrs = [h["lr"] for h in policy_run(policy, space, cfg).hparams]
    plain = followed(BASE, cfg.hparams.lr, 8)
    assert lrs[0] == pytest.approx(plain[0]) and lrs[-1] == pytest.approx(plain[-1] / 4, rel=0.3)

    lrs, loss = dropin_run(path)
    assert lrs[-1] == pytest.approx(followed(BASE, 1e-3, 8)[-1] / 4, rel=0.3)
    assert math.isfinite(loss)


@pytest.mark.parametrize("mend, expect", [
    (lambda d: d.pop("residual"), "no ['residual'] base"),
    (lambda d: d["level"].__setitem__("mean", torch.zeros(3)), "['level']['mean'] has shape [3]"),
    (lambda d: d["level"]["weights"].__setitem__((0, 0), math.nan), "['level']['weights'] holds NaN"),
    (lambda d: d["level"].__setitem__("factors", [0.5, 2.0, 4.0, 8.0, 16.0, 1e3]), "outside the offset bounds"),
    (lambda d: d["level"]["scale"].__setitem__(0, 0.0), "not positive"),
    (lambda d: d["level"].__setitem__("decision", -1), "['level']['decision'] is -1"),
    (lambda d: d["level"].pop("weights"), "['level'] lacks 'weights'"),
])
def test_a_policy_file_whose_level_does_not_fit_is_refused_by_name(tmp_path, mend, expect):
    data = {"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
            "residual": {"base": BASE.name, "offset_bounds": list(OFFSET_BOUNDS)}, "level": rule_for((0.25, 4.0)).to_data()}
    mend(data)
    path = tmp_path / "bad.pt"
    save_checkpoint(data, path)
    with pytest.raises(PolicyFileError, match=r"bad\.pt: .*" + __import__("re").escape(expect)):
        load_policy(path)


def test_the_fitting_bench_writes_a_policy_that_loads(tmp_path, monkeypatch):
    """bench/level_rule.py on planted measurement rows (the held_value file format) writes a checked policy file."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import level_rule

    x, rewards = planted(n=120)
    monkeypatch.setattr(level_rule, "training_set", lambda spec, held, whole: {
        "x": x, "rewards": rewards, "spans": np.full(len(x), 4.6), "cap": 2.0,
        "tasks": [str(i) for i in range(len(x))], "labels": ["segment 1"] * len(x)})
    base = tmp_path / "base.pt"
    save_checkpoint({"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                     "residual": {"base": BASE.name, "offset_bounds": list(OFFSET_BOUNDS)}}, base)  # fmt: skip
    out = tmp_path / "out.pt"
    level_rule.main(["--policy", str(base), "--l2", "10", "1000", "--permutations", "2", "--out", str(out)])
    policy, _ = load_policy(out)
    probe = np.zeros((1, P))
    probe[0, 0] = 2.5
    assert policy.inner.rule.choose(probe)[0] == 4.0
    assert policy.inner.rule.fitted["tasks"] == 120
    plain = tmp_path / "plain.pt"
    save_checkpoint({"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json")}, plain)
    with pytest.raises(SystemExit):
        level_rule.main(["--policy", str(plain), "--out", str(out)])


# --- the described level: chosen before the first step from what can be seen of the model --------------

from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES, model_descriptor  # noqa: E402
from lhopt_dsl.agent.level import DescribedRule, TreeEnsemble, check_forest  # noqa: E402

CHOICES = (1.0, *LEVEL_FACTORS)


def split_forest(feature: int, threshold: float, below: float, above: float) -> TreeEnsemble:
    """One tree: ``below`` where input ``feature`` <= ``threshold``, else ``above`` (the factors' columns)."""
    value = np.zeros((3, len(CHOICES)))
    value[1, CHOICES.index(below)] = value[2, CHOICES.index(above)] = 1.0
    return TreeEnsemble(np.array([0]), np.array([1, -1, -1]), np.array([2, -1, -1]), np.array([feature, -1, -1]),
                        np.array([threshold, 0.0, 0.0]), value)  # fmt: skip


def test_a_forest_as_arrays_predicts_what_scikit_learns_does():
    from sklearn.ensemble import ExtraTreesRegressor

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 6)), rng.normal(size=(200, 3))
    fitted = ExtraTreesRegressor(20, min_samples_leaf=5, random_state=0).fit(x, y)
    forest = TreeEnsemble.from_sklearn(fitted)
    probe = rng.normal(size=(50, 6))
    assert np.allclose(forest.predict(probe), fitted.predict(probe), rtol=0, atol=1e-12)
    assert TreeEnsemble.from_data(forest.to_data()).predict(probe) == pytest.approx(forest.predict(probe))


@pytest.mark.parametrize("mend, expect", [
    (lambda a: a["left"].__setitem__(0, 0), "after its parent"),  # a cycle
    (lambda a: a["right"].__setitem__(0, 7), "after its parent inside its tree"),
    (lambda a: a["right"].__setitem__(0, -1), "one child"),
    (lambda a: a["value"].__setitem__((1, 0), np.inf), "non-finite"),
    (lambda a: a.__setitem__("roots", np.array([1])), "first nodes"),
    (lambda a: a.__setitem__("left", a["left"].astype(float)), "not signed integers"),
    (lambda a: a.__setitem__("roots", np.array([0], dtype=np.uint8)), "not signed integers"),  # np.diff would wrap
])
def test_a_forest_whose_paths_could_loop_or_leave_it_is_refused(mend, expect):
    f = split_forest(0, 0.0, 0.5, 2.0)
    arrays = {k: np.array(getattr(f, k), copy=True) for k in ("roots", "left", "right", "feature", "threshold", "value")}
    mend(arrays)
    assert expect in check_forest(*arrays.values())
    with pytest.raises(ValueError, match="not a forest"):
        TreeEnsemble(*arrays.values())


def test_a_described_rule_holds_the_level_its_model_description_calls_for_from_the_first_decision():
    big = model_descriptor([(512, 512)], 1000, 50)
    small = model_descriptor([(8, 8)], 1000, 50)
    at = DESCRIPTOR_NAMES.index("log_params")
    rule = DescribedRule(CHOICES, split_forest(at, np.log(1000.0), 2.0, 0.5), DESCRIPTOR_NAMES)
    keep = LR_VALUES.index(1.0)
    actor = HoldLevel(Scripted([keep] * 8), SPACE, rule)
    runs = [Run({"lr": 1e-3}, 4, 0, 0, tuple(small)), Run({"lr": 1e-3}, 4, 0, 0, tuple(big)), Run({"lr": 1e-3}, 4)]
    carry = actor.start(runs)
    offsets = []
    for _ in range(4):
        _, carry = actor.act(carry, np.zeros((3, P)), [None] * 3, True)
        offsets.append(carry.offset)
    assert [o[0] for o in offsets] == pytest.approx([2, 2, 2, 2])  # small model: x2 from the first decision
    assert [o[1] for o in offsets] == pytest.approx([0.5, 0.5, 0.5, 0.5])  # large: x1/2
    assert [o[2] for o in offsets] == [1.0] * 4  # no description: keeps
    with pytest.raises(ValueError, match="include 1"):
        DescribedRule(LEVEL_FACTORS, split_forest(0, 0.0, 0.5, 2.0), DESCRIPTOR_NAMES)


def _described_file(tmp_path, rule, name="described.pt"):
    path = tmp_path / name
    save_checkpoint({"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                     "residual": {"base": BASE.name, "offset_bounds": list(OFFSET_BOUNDS)},
                     "level": rule.to_data()}, path)  # fmt: skip
    return path


def test_evaluation_and_the_dropin_describe_the_model_alike_and_the_rule_acts_on_it(tmp_path):
    from lhopt_dsl.agent.rollout import described
    from lhopt_dsl.tasks.compiler import compile_task
    from runners.evaluate import policy_run

    cfg = smoke("mlp", outer_steps=8)
    task = compile_task(cfg, "cpu")
    seen_by_dropin = model_descriptor([p.shape for p in task.params], cfg.task.inner_steps, cfg.task.outer_steps)
    assert described(cfg) == tuple(seen_by_dropin)
    # a forest that wants x1/4 for every model this small
    rule = DescribedRule(CHOICES, split_forest(DESCRIPTOR_NAMES.index("log_params"), 50.0, 0.25, 0.25), DESCRIPTOR_NAMES)
    policy, space = load_policy(_described_file(tmp_path, rule))
    assert policy.inner.kind == "level"
    lrs = [h["lr"] for h in policy_run(policy, space, cfg).hparams]
    plain = followed(BASE, cfg.hparams.lr, 8)
    assert lrs[-1] == pytest.approx(plain[-1] / 4, rel=0.3)
    dropin, loss = dropin_run(_described_file(tmp_path, rule))
    assert dropin[-1] == pytest.approx(followed(BASE, 1e-3, 8)[-1] / 4, rel=0.3) and math.isfinite(loss)


@pytest.mark.parametrize("mend, expect", [
    (lambda d: d["level"].__setitem__("factors", list(LEVEL_FACTORS)), "lacks 1"),
    (lambda d: d["level"]["forest"].__setitem__("value", torch.zeros(3, 2)), "one column per factor"),
    (lambda d: d["level"]["forest"]["left"].__setitem__(0, 0), "not a forest: a child does not lie after its parent"),
    (lambda d: d["level"]["forest"]["feature"].__setitem__(0, 99), "beyond its 12 described"),
    (lambda d: d["level"].pop("forest"), "lacks 'forest'"),
    (lambda d: d["level"].__setitem__("descriptor", [f"x{i}" for i in range(12)]), "another description of the model"),
    (lambda d: d["level"].__setitem__("kind", "observing"), "['level']['kind'] is 'observing', a kind of level this version"),
    (lambda d: d["level"]["forest"].__setitem__("left", torch.tensor([1, -1, -1], dtype=torch.uint8)), "not signed integers"),
])
def test_a_described_level_that_does_not_fit_is_refused_by_name(tmp_path, mend, expect):
    rule = DescribedRule(CHOICES, split_forest(0, 0.0, 0.5, 2.0), DESCRIPTOR_NAMES)
    data = {"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
            "residual": {"base": BASE.name, "offset_bounds": list(OFFSET_BOUNDS)}, "level": rule.to_data()}
    mend(data)
    path = tmp_path / "bad.pt"
    save_checkpoint(data, path)
    with pytest.raises(PolicyFileError, match=r"bad\.pt: .*" + __import__("re").escape(expect)):
        load_policy(path)


def test_a_forests_node_arrays_are_bounded_by_its_nodes_and_only_its_values_by_the_factors_too(tmp_path, monkeypatch):
    from lhopt_dsl.agent import policy_file

    monkeypatch.setattr(policy_file, "MAX_FOREST_NODES", 2)  # the one-split forest has 3 nodes, 3 x 7 values
    path = _described_file(tmp_path, DescribedRule(CHOICES, split_forest(0, 0.0, 0.5, 2.0), DESCRIPTOR_NAMES))
    with pytest.raises(PolicyFileError, match=r"\['left'\] has 3 entries, more than a forest of 2 nodes"):
        load_policy(path)
    monkeypatch.setattr(policy_file, "MAX_FOREST_NODES", 3)
    assert isinstance(load_policy(path)[0].inner.rule, DescribedRule)


def test_a_described_level_in_bfloat16_loads_and_chooses_as_in_float64(tmp_path):
    """A file whose forest's thresholds and values are bfloat16 (numpy has no such dtype) loads; its
    rule chooses as the float64 one does."""
    rule = DescribedRule(CHOICES, split_forest(DESCRIPTOR_NAMES.index("log_params"), 6.0, 2.0, 0.5), DESCRIPTOR_NAMES)
    data = rule.to_data()
    for k in ("threshold", "value"):
        data["forest"][k] = data["forest"][k].to(torch.bfloat16)
    path = tmp_path / "bf16.pt"
    save_checkpoint({"policy": biased(1.0).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                     "residual": {"base": BASE.name, "offset_bounds": list(OFFSET_BOUNDS)}, "level": data}, path)  # fmt: skip
    policy, _ = load_policy(path)
    runs = [Run({}, 4, describe=tuple(model_descriptor([(8, 8)], 1000, 50))),
            Run({}, 4, describe=tuple(model_descriptor([(512, 512)], 1000, 50)))]
    assert policy.inner.rule.choose_runs(runs) == rule.choose_runs(runs) == [2.0, 0.5]


def test_ppo_refuses_to_start_from_a_level_policy_rather_than_drop_its_rule(tmp_path):
    from lhopt_dsl.agent.policy import load_checkpoint
    from runners.meta_train import initial_policy

    from .test_residual_ppo import residual_spec

    path = _described_file(tmp_path, DescribedRule(CHOICES, split_forest(0, 0.0, 0.5, 2.0), DESCRIPTOR_NAMES))
    with pytest.raises(PolicyFileError, match="holds a level rule"):
        initial_policy(residual_spec(tmp_path), load_checkpoint(path), path)
