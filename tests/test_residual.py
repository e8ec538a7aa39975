"""Residual policies: a learned policy acting around a base learning-rate schedule."""

import math

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.actor import Run, Step
from lhopt_dsl.agent.imitation import relabel, residual_demo
from lhopt_dsl.agent.observation import Cadence
from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.residual import OFFSET_BOUNDS, Follow, Residual
from lhopt_dsl.controller import LHOPT, combine_policies, load_policy
from lhopt_dsl.spec.schedule import KEEP, Schedule
from runners.meta_train import initial_policy, policy_shape

from .test_imitation import SMOKE, _graded
from .test_population import smoke

SPACE = SMOKE.hparams
LR_VALUES = list(SPACE.controlled()["lr"].action.values)
BASE = Schedule(optimizer=None, lr=0.03, shape="linear")


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
    """An actor that plays the learning-rate actions ``script`` in order and keeps the rest."""

    kind = "network"

    def __init__(self, script):
        model = ActorCritic(policy_shape(SMOKE))
        self.policy_size, self.nvec = model.policy_size, model.nvec
        self.script, self.keep = list(script), ActionSpace(SPACE).identity()

    def start(self, runs):
        return 0  # decisions made

    def act(self, carry, features, generators, greedy):
        a = self.keep.copy()
        a[0] = self.script[carry]
        actions = np.tile(a, (len(features), 1))
        return Step(actions, np.zeros(len(actions)), np.asarray(features, np.float32), actions), carry + 1

    def guarded(self, carry, row, lr_factor):
        return carry


def run_residual(residual, initial, steps):
    """The learning rate after each decision of one run, the offsets before each and the carry at the end."""
    carry = residual.start([Run({"lr": initial}, steps)])
    lrs, proposed = [], []
    for _ in range(steps):
        step, carry = residual.act(carry, np.zeros((1, residual.policy_size), np.float32), [None], True)
        lrs.append(carry.lr[0])
        proposed.append(step.proposed[0, residual.lr_dim])
    return lrs, residual.offsets_before(proposed), carry


def followed(target, initial, outer):
    """The learning rates a follower of ``target`` sets from ``initial`` over ``outer`` decisions."""
    follower, lr, out = Follow([target], SPACE), initial, []
    for t in range(outer):
        _, lr = follower.choose(target, lr, t, outer)
        out.append(lr)
    return out


def test_keeping_follows_the_base_schedule_exactly_and_other_dimensions_are_the_policys():
    outer, initial = 16, 1e-3
    keep = LR_VALUES.index(1.0)
    lrs, offsets, _ = run_residual(Residual(Scripted([keep] * outer), SPACE, BASE), initial, outer)
    expected = followed(BASE, initial, outer)
    assert lrs == expected
    assert offsets == [1.0] * outer
    assert max(expected) == pytest.approx(0.03, rel=0.25)  # it ramps up to the base and decays with it


def test_the_offset_scales_the_schedule_within_its_bounds():
    outer = 40
    half = LR_VALUES.index(0.5)
    residual = Residual(Scripted([half] * outer), SPACE, BASE)
    _, offsets, carry = run_residual(residual, 1e-3, outer)
    assert carry.offset[0] == OFFSET_BOUNDS[0]  # halved 40 times, but never below the bound
    assert offsets[:3] == [1.0, 0.5, 0.25]
    carry = residual.guarded(carry, 0, 0.1)  # the drop-in's guard: the offset follows the lowered learning rate
    assert carry.offset[0] == OFFSET_BOUNDS[0]
    fresh = residual.guarded(residual.start([Run({"lr": 1e-3}, 4)]), 0, 0.1)
    assert fresh.offset[0] == pytest.approx(0.1) and fresh.lr[0] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="keep"):
        Residual(Scripted([]), SPACE, KEEP)


def test_labels_keep_on_the_base_and_lead_to_another_schedules_offset():
    residual = Residual(Scripted([]), SPACE, BASE)
    keep = LR_VALUES.index(1.0)
    assert (residual.labels(residual.offsets(BASE, 1e-3, 32)) == keep).all()
    lower = Schedule(optimizer=None, lr=0.01, shape="linear")
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
    got, _, _ = run_residual(Residual(Scripted(list(labels)), SPACE, BASE), 1e-3, 32)
    theirs = followed(lower, 1e-3, 32)
    assert np.allclose(np.log(got[8:-2]), np.log(theirs[8:-2]), atol=math.log(1.6))


def test_a_follower_demonstration_becomes_offset_labels():
    residual = Residual(Scripted([]), SPACE, BASE)
    demo = _graded("t", {"linear-lr0.03": 1.0, "linear-lr0.01": 0.9})
    demo.actions = np.tile(ActionSpace(SPACE).identity(), (32, 1))
    demo.actions[:, 0] = LR_VALUES.index(2.0)
    out = residual_demo(demo, residual, BASE, 1e-3)
    assert (out.actions[:, 0] == LR_VALUES.index(1.0)).all() and (out.actions[:, 1:] == demo.actions[:, 1:]).all()
    assert (demo.actions[:, 0] == LR_VALUES.index(2.0)).all()  # the original is untouched


def test_dagger_relabels_a_residual_policys_own_episode_from_its_offsets():
    cfg = smoke("mlp", outer_steps=8)
    policy = biased(2.0)  # doubles its offset at every decision
    residual = Residual(policy, SPACE, BASE)
    demo = relabel(cfg, policy, SPACE, BASE, residual=residual, cadence=Cadence(None, None))
    # From offsets 1, 2, 4, ... the way back to the base is down, except at the very start.
    assert demo.actions[0, 0] == LR_VALUES.index(1.0)
    assert (demo.actions[1:, 0] == LR_VALUES.index(0.5)).all()
    with pytest.raises(ValueError, match="episodes are its own"):
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
    assert policy.kind == "residual" and policy.base == BASE
    cfg = smoke("mlp", outer_steps=8)
    episode = policy_run(policy, space, cfg)
    assert [h["lr"] for h in episode.hparams] == pytest.approx(followed(BASE, cfg.hparams.lr, 8))

    lrs, loss = dropin_run(path)
    assert lrs == pytest.approx(followed(BASE, 1e-3, 8))
    assert math.isfinite(loss)


def dropin_run(path, steps=64, outer=8):
    """The learning rate the drop-in set at each decision of a small regression trained with the
    policy file ``path`` (initial learning rate 1e-3), and the final training loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = LHOPT(model.parameters(), policy=path, total_steps=steps, outer_steps=outer)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.observe(train_loss=loss.item())
        opt.step()
    return [h["lr"] for h in opt.history], loss.item()


def test_residual_policies_are_refused_where_they_cannot_act(tmp_path):
    path = _save(tmp_path, ActorCritic(policy_shape(SMOKE)))
    with pytest.raises(ValueError, match="plain policies"):
        combine_policies([path, path], tmp_path / "e.pt")
    with pytest.raises(ValueError, match="set meta_train.residual"):
        initial_policy(SMOKE, load_checkpoint(path), path)
    broken = tmp_path / "broken.pt"
    save_checkpoint({"policy": ActorCritic(policy_shape(SMOKE)).to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                     "residual": {"offset_bounds": [0.1, 10]}}, broken)  # fmt: skip
    with pytest.raises(ValueError, match=r"broken.pt: \['residual'\] lacks 'base'"):
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
    assert policy.kind == "residual" and policy.base == Schedule(optimizer=None, lr=0.01, shape="linear")
