"""Residual policies: a learned policy acting around a base learning-rate schedule."""

import math

import numpy as np
import pytest
import torch

from lhopt_dsl.actions import ActionSpace
from lhopt_dsl.controller import LHOPT, combine_policies, load_policy
from lhopt_dsl.decoding import decoded
from lhopt_dsl.imitation import ScheduleFollower, Target, relabel, residual_demo
from lhopt_dsl.observation import Cadence
from lhopt_dsl.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.residual import OFFSET_BOUNDS, ResidualPolicy
from runners.meta_train import initial_policy, policy_shape

from .test_imitation import SMOKE, _graded
from .test_population import smoke

SPACE = SMOKE.hparams
LR_VALUES = list(SPACE.controlled()["lr"].action.values)
BASE = Target(0.03, "linear")


def biased(lr_action: float) -> ActorCritic:
    """A policy whose greedy learning-rate action is always ``lr_action`` (a scale among the
    space's values) and every other dimension's keeps: the actor's head says so whatever it sees."""
    torch.manual_seed(0)
    model = ActorCritic(policy_shape(SMOKE))
    actions = ActionSpace(SPACE)
    favoured = [LR_VALUES.index(lr_action)] + list(actions.identity()[1:])
    bias = torch.zeros(sum(actions.nvec))
    offsets = np.concatenate([[0], np.cumsum(actions.nvec)[:-1]])
    bias[torch.as_tensor(offsets + np.asarray(favoured))] = 20.0
    with torch.no_grad():
        model.actor.head.weight.zero_()
        model.actor.head.bias.copy_(bias)
    return model


class Scripted:
    """Stands in for a policy: plays the learning-rate actions ``script`` in order, keeps the rest."""

    def __init__(self, script):
        self.model = ActorCritic(policy_shape(SMOKE))
        self.shape, self.policy_norm, self.normalise = self.model.shape, self.model.policy_norm, self.model.normalise
        self.check_compatible = self.model.check_compatible
        self.script, self.keep = list(script), ActionSpace(SPACE).identity()

    def act(self, x, v, state, generator=None, deterministic=False):
        a = self.keep.copy()
        a[0] = self.script.pop(0)
        return a, 0.0, 0.0, state


def run_bound(bound, steps):
    x, v = np.zeros(bound.shape.policy_size, np.float32), np.zeros(bound.shape.value_size, np.float32)
    lrs, state = [], (None, None)
    for _ in range(steps):
        action, _, _, state = bound.act(x, v, state, None, True)
        lrs.append(bound.lr)
    return lrs


def test_keeping_follows_the_base_schedule_exactly_and_other_dimensions_are_the_policys():
    outer, initial = 16, 1e-3
    keep = LR_VALUES.index(1.0)
    bound = ResidualPolicy(Scripted([keep] * outer), SPACE, BASE).bind(initial, outer)
    follower = ScheduleFollower(None, SPACE, [BASE], initial, outer)
    expected, lr = [], initial
    for t in range(outer):
        _, lr = follower.choose(BASE, lr, t)
        expected.append(lr)
    assert run_bound(bound, outer) == expected
    assert [m for m, _ in bound.trace] == [1.0] * outer
    assert max(expected) == pytest.approx(0.03, rel=0.25)  # it ramps up to the base and decays with it


def test_the_offset_scales_the_schedule_within_its_bounds():
    outer = 40
    half = LR_VALUES.index(0.5)
    bound = ResidualPolicy(Scripted([half] * outer), SPACE, BASE).bind(1e-3, outer)
    run_bound(bound, outer)
    assert bound.offset == OFFSET_BOUNDS[0]  # halved 40 times, but never below the bound
    assert [m for m, _ in bound.trace][:3] == [1.0, 0.5, 0.25]
    bound.lowered(0.1)  # the drop-in's guard: the offset follows the lowered learning rate
    assert bound.offset == OFFSET_BOUNDS[0]
    b2 = ResidualPolicy(Scripted([]), SPACE, BASE).bind(1e-3, 4)
    b2.lowered(0.1)
    assert b2.offset == pytest.approx(0.1) and b2.lr == pytest.approx(1e-4)
    with pytest.raises(RuntimeError, match="bind"):
        ResidualPolicy(Scripted([]), SPACE, BASE).act(None, None, None)
    with pytest.raises(ValueError, match="keep"):
        ResidualPolicy(Scripted([]), SPACE, Target(None))


def test_labels_keep_on_the_base_and_lead_to_another_schedules_offset():
    residual = ResidualPolicy(Scripted([]), SPACE, BASE)
    keep = LR_VALUES.index(1.0)
    assert (residual.labels(residual.offsets(BASE, 1e-3, 32)) == keep).all()
    lower = Target(0.01, "linear")
    wanted = residual.offsets(lower, 1e-3, 32)
    assert wanted == pytest.approx([1 / 3] * 32)
    labels = residual.labels(wanted)
    m = 1.0
    for a in labels:
        m = min(max(m * LR_VALUES[a], OFFSET_BOUNDS[0]), OFFSET_BOUNDS[1])
    assert abs(math.log(m) - math.log(1 / 3)) <= math.log(1.1) / 2 + 1e-9  # as near as the scales allow
    assert labels[-1] == keep
    # From where a policy's own run stood (DAgger): each label heads back towards the wanted offset.
    before = [3.0] * 32
    assert (residual.labels(wanted, before) == LR_VALUES.index(0.5)).all()
    # Playing the labels runs the lower schedule's learning rates, as its own follower does.
    bound = ResidualPolicy(Scripted(list(labels)), SPACE, BASE).bind(1e-3, 32)
    got = run_bound(bound, 32)
    follower = ScheduleFollower(None, SPACE, [lower], 1e-3, 32)
    lr, theirs = 1e-3, []
    for t in range(32):
        _, lr = follower.choose(lower, lr, t)
        theirs.append(lr)
    assert np.allclose(np.log(got[8:-2]), np.log(theirs[8:-2]), atol=math.log(1.6))


def test_a_follower_demonstration_becomes_offset_labels():
    residual = ResidualPolicy(Scripted([]), SPACE, BASE)
    demo = _graded("t", {"linear-lr0.03": 1.0, "linear-lr0.01": 0.9})
    demo.actions = np.tile(ActionSpace(SPACE).identity(), (32, 1))
    demo.actions[:, 0] = LR_VALUES.index(2.0)
    out = residual_demo(demo, residual, BASE, 1e-3)
    assert (out.actions[:, 0] == LR_VALUES.index(1.0)).all() and (out.actions[:, 1:] == demo.actions[:, 1:]).all()
    assert (demo.actions[:, 0] == LR_VALUES.index(2.0)).all()  # the original is untouched


def test_dagger_relabels_a_residual_policys_own_episode_from_its_offsets():
    cfg = smoke("mlp", outer_steps=8)
    policy = biased(2.0)  # doubles its offset at every decision
    residual = ResidualPolicy(policy, SPACE, BASE)
    demo = relabel(cfg, policy, SPACE, BASE, residual=residual, cadence=Cadence(None, None))
    # From offsets 1, 2, 4, ... the way back to the base is down, except at the very start.
    assert demo.actions[0, 0] == LR_VALUES.index(1.0)
    assert (demo.actions[1:, 0] == LR_VALUES.index(0.5)).all()
    with pytest.raises(ValueError, match="hard labels"):
        relabel(cfg, policy, SPACE, BASE, residual=residual, follow=BASE)


def _save(tmp_path, policy, base="linear-lr0.03"):
    path = tmp_path / "residual.pt"
    save_checkpoint({"policy": policy.to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                     "residual": {"base": base, "offset_bounds": list(OFFSET_BOUNDS)}}, path)  # fmt: skip
    return path


def test_a_residual_policy_file_acts_around_its_base_in_evaluation_and_the_dropin(tmp_path):
    from runners.evaluate import policy_run

    path = _save(tmp_path, biased(1.0))
    policy, space = load_policy(path)
    assert isinstance(policy, ResidualPolicy) and policy.base == BASE
    cfg = smoke("mlp", outer_steps=8)
    episode = policy_run(policy, space, cfg)
    follower = ScheduleFollower(None, space, [BASE], cfg.hparams.lr, 8)
    lr, expected = cfg.hparams.lr, []
    for t in range(8):
        _, lr = follower.choose(BASE, lr, t)
        expected.append(lr)
    assert [h["lr"] for h in episode.hparams] == pytest.approx(expected)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = LHOPT(model.parameters(), policy=path, total_steps=64, outer_steps=8)
    for _ in range(64):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.observe(train_loss=loss.item())
        opt.step()
    follower = ScheduleFollower(None, space, [BASE], 1e-3, 8)
    lr, expected = 1e-3, []
    for t in range(8):
        _, lr = follower.choose(BASE, lr, t)
        expected.append(lr)
    assert [h["lr"] for h in opt.history] == pytest.approx(expected)
    assert math.isfinite(float(loss))


def test_residual_policies_are_refused_where_they_cannot_act(tmp_path):
    path = _save(tmp_path, ActorCritic(policy_shape(SMOKE)))
    with pytest.raises(ValueError, match="plain policies"):
        combine_policies([path, path], tmp_path / "e.pt")
    with pytest.raises(ValueError, match="PPO does not"):
        initial_policy(SMOKE, load_checkpoint(path), path)
    policy, space = load_policy(path)
    with pytest.raises(ValueError, match="greedily"):
        decoded(policy, space, "mean")
    assert decoded(policy, space, "greedy") is policy
    broken = tmp_path / "broken.pt"
    save_checkpoint({"policy": ActorCritic(policy_shape(SMOKE)).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                     "residual": {"offset_bounds": [0.1, 10]}}, broken)  # fmt: skip
    with pytest.raises(ValueError, match="without a base"):
        load_policy(broken)


def test_lhopt_imitate_with_a_base_writes_a_residual_policy(tmp_path):
    from runners import imitate as imitate_mod

    small = dict(lrs=(1e-3, 1e-2), shapes=("constant", "linear"), epochs=5, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    run = tmp_path / "run"
    path = imitate_mod.imitate(SMOKE, imitate_mod.ImitationSettings(tasks=3, run_dir=run, quiet=True, dagger=1,
                                                                    base="linear-lr0.01", **small))  # fmt: skip
    assert path.name == "imitation-blinear-lr0.01.pt"
    saved = load_checkpoint(path)
    assert saved["residual"]["base"] == "linear-lr0.01" and saved["imitation"]["base"] == "linear-lr0.01"
    assert len(list((run / "dagger-3-blinear-lr0.01" / "round1").iterdir())) == 3
    policy, _ = load_policy(path)
    assert isinstance(policy, ResidualPolicy) and policy.base == Target(0.01, "linear")
    with pytest.raises(ValueError, match="one of them"):
        imitate_mod.imitate(SMOKE, imitate_mod.ImitationSettings(tasks=3, run_dir=run, quiet=True, soft=0.01,
                                                                 base="linear-lr0.01", **small))  # fmt: skip
