"""The drop-in LHOPT's guard: a diverging run goes back to its last healthy state with a lower
learning rate, for every way a user may report losses."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lhopt_dsl import LHOPT
from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.observation import FeatureBuilder
from lhopt_dsl.agent.policy import ActorCritic, PolicyShape
from lhopt_dsl.spec.hparams import HPARAM_NAMES, CIAOSpace
from runners.dropin import CADENCES
from runners.ood_programs import report_losses


def regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP regression problem (the shape of a user's first try)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g)) + 0.1 * torch.randn(256, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)), x, y


def train(opt_of, steps: int, train_every: int | None, valid_every: int | None) -> list[float]:
    """Train with the optimizer ``opt_of(model)``, reporting the training loss every ``train_every``
    steps and a validation loss every ``valid_every`` steps (None: never); every loss computed."""
    model, x, y = regression()
    opt = opt_of(model)

    @torch.no_grad()
    def full_loss() -> float:  # the validation loss: the whole data set
        return float(nn.functional.mse_loss(model(x), y))

    losses = []
    for step in range(steps):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        report_losses(opt, step, train_loss=losses[-1], valid_loss=full_loss, train_every=train_every,
                      valid_every=valid_every)  # fmt: skip
        opt.step()
    losses.append(full_loss())
    return losses


@pytest.mark.parametrize("train_every,valid_every", CADENCES)
def test_every_reporting_cadence_trains_without_a_non_finite_loss(train_every, valid_every):
    adamw = train(lambda m: torch.optim.AdamW(m.parameters()), 200, None, None)
    assert all(math.isfinite(v) for v in adamw)  # the bar: AdamW at its defaults stays finite here
    ours = train(lambda m: LHOPT(m.parameters(), total_steps=200, model=m), 200, train_every, valid_every)
    assert all(math.isfinite(v) for v in ours), f"non-finite loss at step {next(i for i, v in enumerate(ours) if not math.isfinite(v))}"


def _poisoned_run(guard: bool) -> tuple[LHOPT, nn.Module]:
    model, x, y = regression()
    opt = LHOPT(model.parameters(), total_steps=60, outer_steps=6, model=model, guard=guard)
    for step in range(60):
        loss = nn.functional.mse_loss(model(x[:32]), y[:32])
        opt.zero_grad()
        loss.backward()
        if step == 25:  # a gradient that overflowed: the update would make the weights NaN
            next(model.parameters()).grad[0, 0] = math.nan
        opt.observe(train_loss=float(loss))
        opt.step()
    return opt, model


def test_a_non_finite_update_is_undone_and_the_learning_rate_lowered():
    opt, model = _poisoned_run(guard=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    events = [h for h in opt.history if h["restart"] == "guard"]
    assert len(events) == 1 and events[0]["reason"] == "non-finite parameters"
    assert events[0]["progress"] == pytest.approx(26 / 60)
    before = [h for h in opt.history if h["progress"] < events[0]["progress"] and h["restart"] != "guard"][-1]
    assert events[0]["lr"] == pytest.approx(before["lr"] * 0.1)
    unguarded, model = _poisoned_run(guard=False)  # the test can fail: without the guard the weights break
    assert not all(torch.isfinite(p).all() for p in model.parameters())
    assert not any(h["restart"] == "guard" for h in unguarded.history)


def test_an_exploding_reported_loss_restores_the_last_healthy_state():
    model, x, y = regression()
    opt = LHOPT(model.parameters(), total_steps=40, outer_steps=4, model=model)
    for step in range(40):
        loss = nn.functional.mse_loss(model(x[:32]), y[:32])
        opt.zero_grad()
        loss.backward()
        if step == 10:  # just after the second decision: the healthy copy is the state at step 10
            safe = [p.detach().clone() for p in model.parameters()]
        opt.observe(train_loss=float(loss) * (1e3 if step == 15 else 1.0))
        opt.step()
        if step == 15:  # the step after the report was skipped and the copy restored
            assert all(torch.equal(a, b) for a, b in zip(safe, model.parameters()))
            assert opt.history[-1]["restart"] == "guard" and opt.history[-1]["reason"].startswith("train_loss")
    assert sum(h["restart"] == "guard" for h in opt.history) == 1


def test_guard_settings_are_checked():
    model, _, _ = regression()
    with pytest.raises(ValueError, match="guard_factor"):
        LHOPT(model.parameters(), total_steps=10, guard_factor=0.5)


def reckless_policy() -> ActorCritic:
    """A CIAO-space policy that always raises the learning rate as far as it can and lowers weight
    decay (what the policy shipped in 2026-11 did to runs that reported no loss)."""
    space = CIAOSpace()
    actions = ActionSpace(space)
    features = FeatureBuilder(actions, space)
    torch.manual_seed(0)
    policy = ActorCritic(PolicyShape(features.policy_size, features.value_size, tuple(actions.nvec), 16))
    act = actions.identity().copy()
    act[actions.names.index("lr")] = int(np.argmax(actions.hparams["lr"].action.values))
    act[actions.names.index("weight_decay")] = int(np.argmin(actions.hparams["weight_decay"].action.values))
    policy.favour(act, [True] * len(act), 30.0)
    return policy


@pytest.mark.parametrize("seed", [1, 3])
def test_a_run_that_reports_no_loss_is_still_kept_from_blowing_up(seed):
    """With no loss reported the guard watches the parameters' norm: driven by a reckless policy and
    never told a loss, the weights grow a thousandfold without the guard and stay within
    guard_factor of their first norm with it, at a lower loss."""

    def run(guard: bool) -> tuple[float, float, float, LHOPT]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(256, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g) * 0.7 + 0.1 * torch.randn(256, 1, generator=g)
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
        first = float(torch.nn.utils.get_total_norm(list(model.parameters())))
        opt = LHOPT(model.parameters(), reckless_policy(), total_steps=200, model=model, guard=guard)
        for step in range(200):
            batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()  # and never opt.observe(...)
        with torch.no_grad():
            last = float(nn.functional.mse_loss(model(x), y))
        return first, float(torch.nn.utils.get_total_norm(list(model.parameters()))), last, opt

    first, wild_norm, wild_loss, _ = run(guard=False)
    assert wild_norm > 100 * first
    first, norm, loss, opt = run(guard=True)
    assert norm <= 10 * first * 1.1 and math.isfinite(loss) and loss < wild_loss
    assert any(h["restart"] == "guard" and h["reason"].startswith("parameter norm") for h in opt.history)


def _bit_equal(a, b, where: str = "") -> str | None:
    """Where two states differ (None: equal bit for bit, NaNs and the sign of zero included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
        return None if same else where
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)} != {list(b)}"
        return next((d for k in a if (d := _bit_equal(a[k], b[k], f"{where}[{k!r}]"))), None)
    if isinstance(a, (list, tuple)) and type(a) is type(b) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _bit_equal(x, y, f"{where}[{i}]"))), None)
    if isinstance(a, float) and isinstance(b, float):
        return None if a.hex() == b.hex() else f"{where}: {a!r} != {b!r}"
    return None if type(a) is type(b) and a == b else f"{where}: {a!r} != {b!r}"


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
    return [t for v in values for t in _tensors(v)]


def test_the_safe_copy_and_a_restore_equal_the_saved_state_bit_for_bit():
    """The guard's copy (tensors copied into buffers reused between decisions) equals a deepcopy of
    the state bit for bit: parameters and buffers (BatchNorm's), CIAO's moments, its noise-scale
    average, its counters and the param groups' hyperparameters; a restore gives that state back
    (keeping the hyperparameters a restore keeps, with the lower learning rate), shares no tensor
    with the copy, and a later copy changes neither the restored state nor a state_dict handed out."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = LHOPT(model.parameters(), total_steps=40, outer_steps=4, model=model, stats_every=2)
    own = opt.guard.optimizer

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.observe(train_loss=float(loss.detach()))
            opt.step()

    def now() -> dict:
        return copy.deepcopy({"model": model.state_dict(), "optimizer": own.state_dict()})

    train(5)
    opt.guard.keep(0.2, 1.5)
    saved, buffers = now(), [t.data_ptr() for t in _tensors(opt.guard.safe.optimizer)]
    assert _bit_equal(opt.guard.safe.model, saved["model"], "model") is None
    assert _bit_equal(opt.guard.safe.optimizer, saved["optimizer"], "optimizer") is None
    train(3)
    opt.guard.keep(0.3, 1.4)  # the same layout: written into the same buffers, still bit for bit
    assert [t.data_ptr() for t in _tensors(opt.guard.safe.optimizer)] == buffers
    saved = now()
    assert _bit_equal(opt.guard.safe.optimizer, saved["optimizer"], "optimizer") is None
    train(1)
    lr = opt.param_groups[0]["lr"]
    opt.observe(train_loss=math.inf)
    opt.step()  # skipped: the copy restored, the learning rate lowered
    restored = now()
    assert _bit_equal(restored["model"], saved["model"], "model") is None
    groups = saved["optimizer"]["param_groups"]
    for name in HPARAM_NAMES:  # a restore keeps the hyperparameters in force (lr then lowered)
        groups[0][name] = opt.param_groups[0][name]
    assert opt.param_groups[0]["lr"] == lr * 0.1
    assert _bit_equal(restored["optimizer"], saved["optimizer"], "optimizer") is None
    live = {t.data_ptr() for t in _tensors({"m": model.state_dict(), "o": own.state_dict()})}
    assert not live & {t.data_ptr() for t in _tensors([opt.guard.safe.model, opt.guard.safe.optimizer])}
    handed_out = opt.state_dict()["lhopt"]["guard"]  # (CIAO's own entries are its live tensors, as torch's are)
    frozen = copy.deepcopy(handed_out)
    opt.guard.keep(0.5, 1.3)  # a later copy: after a restore and after a state_dict
    assert _bit_equal(now(), restored) is None  # no step since the restore: the state is as restored
    assert _bit_equal(handed_out, frozen, "state_dict") is None
    train(12)  # through decisions that keep copies and steps that move the state
    assert _bit_equal(handed_out, frozen, "state_dict") is None
