"""A training job that checkpoints the drop-in LHOPT (or AdamW with ScheduleReplay) and resumes in a
fresh process continues bit for bit; and LHOPT's constructor refuses what it cannot run, saying why."""

from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.controller import DEFAULT_POLICY, LHOPT, ScheduleReplay
from runners.dropin import PROGRAMS

STEPS = 90


def _through_a_file(obj: Any) -> Any:
    """``obj`` as a fresh process reads it back: saved, then loaded with torch's restricted loader
    (tensors and plain data only)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _loop(make_opt, cadence: tuple[int | None, int | None], *, spike: int = -1, save_at: int | None = None,
          resume: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """A user's loop on the regression program: the training loss every ``cadence[0]`` steps (before
    ``step()``), the validation loss every ``cadence[1]`` steps (after it), 1e6 reported as the
    validation loss after step ``spike``. ``save_at``: stop before that step and return the
    checkpoint a job would write; ``resume``: start from such a checkpoint."""
    p = PROGRAMS["regression"](0)
    opt = make_opt(p.model)
    start = 0
    if resume is not None:
        p.model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        start = resume["step"]
    losses = []
    train_every, valid_every = cadence
    for step in range(start, STEPS):
        if step == save_at:
            return _through_a_file({"model": p.model.state_dict(), "opt": opt.state_dict(), "step": step})
        x, y = p.batch_at(step)
        loss = p.loss(p.model(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        if train_every and step % train_every == 0:
            opt.observe(train_loss=losses[-1])
        opt.step()
        if valid_every and step % valid_every == 0:
            opt.observe(valid_loss=p.score(p.valid))
        if step == spike:
            opt.observe(valid_loss=1e6)
    params = [t.detach().clone() for t in p.model.parameters()]
    return {"losses": losses, "history": copy.deepcopy(getattr(opt, "history", [])), "params": params}


@pytest.fixture(scope="module")
def network_file(tmp_path_factory) -> Path:
    """The shipped policy's network on its own, saved as a plain policy (it samples in the drop-in)."""
    state = load_checkpoint(DEFAULT_POLICY)
    path = tmp_path_factory.mktemp("policy") / "network.pt"
    save_checkpoint({"policy": ActorCritic.from_checkpoint(state["policy"]).to_checkpoint(), "spec": state["spec"]},
                    path)  # fmt: skip
    return path


CASES = {  # name: (policy, LHOPT options, cadence, spike)
    "shipped, every step": (None, {}, (1, None), -1),
    "shipped, valid now and then, guard": (None, {}, (None, 20), 44),
    "sampling network, sparse": ("network", {"deterministic": False, "seed": 3}, (7, 25), 30),
    "no guard": (None, {"guard": False, "outer_steps": 12}, (3, 10), -1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_saved_and_resumed_lhopt_continues_bit_for_bit(case, network_file):
    policy, options, cadence, spike = CASES[case]
    path = network_file if policy == "network" else None

    def make(model):
        return LHOPT(model.parameters(), path, total_steps=STEPS, model=model, **options)

    whole = _loop(make, cadence, spike=spike)
    assert len(whole["history"]) >= min(options.get("outer_steps", 32), STEPS)
    if spike >= 0:
        assert any(h["restart"] == "guard" for h in whole["history"])  # the guard's state is exercised
    for at in (0, 1, 8, 33, spike + 1 if spike >= 0 else 45, STEPS - 1):
        saved = _loop(make, cadence, spike=spike, save_at=at)
        resumed = _loop(make, cadence, spike=spike, resume=saved)
        assert resumed["losses"] == whole["losses"][at:], f"losses differ after resuming at step {at}"
        assert resumed["history"] == whole["history"], f"decisions differ after resuming at step {at}"
        assert all(torch.equal(a, b) for a, b in zip(resumed["params"], whole["params"]))


def test_the_state_is_plain_data_and_refuses_another_run():
    model = PROGRAMS["regression"](0).model
    state = LHOPT(model.parameters(), total_steps=60, model=model).state_dict()
    torch.load(io.BytesIO(_buffer(state)), weights_only=True)  # tensors and plain data only
    with pytest.raises(ValueError, match="total_steps=60, outer_steps=32, but this one has 50 and 32"):
        LHOPT(model.parameters(), total_steps=50, model=model).load_state_dict(state)
    with pytest.raises(ValueError, match="guard on; resume with the same guard setting"):
        LHOPT(model.parameters(), total_steps=60, model=model, guard=False).load_state_dict(state)
    plain = LHOPT(model.parameters(), total_steps=60, model=model)
    plain.load_state_dict({k: v for k, v in state.items() if k != "lhopt"})  # a CIAO state alone still loads
    assert plain.step_count == 0


def _buffer(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _adamw_loop(save_at: int | None = None, resume: dict[str, Any] | None = None) -> Any:
    schedule = {"meta": {"space": "adamw"}, "schedule": {"progress": [0.0, 0.25, 0.5, 0.75], "lr": [1e-3, 3e-3, 1e-3, 1e-4],
                "eps": [1e-8] * 4, "one_minus_beta2": [1e-3, 1e-2, 1e-2, 1e-3], "weight_decay": [0.0, 0.01, 0.01, 0.1]}}
    p = PROGRAMS["regression"](0)
    opt = torch.optim.AdamW(p.model.parameters())
    replay = ScheduleReplay(opt, schedule, total_steps=STEPS)
    start = 0
    if resume is not None:
        p.model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        replay.load_state_dict(resume["replay"])
        start = resume["step"]
    losses = []
    for step in range(start, STEPS):
        if step == save_at:
            return _through_a_file({"model": p.model.state_dict(), "opt": opt.state_dict(),
                                    "replay": replay.state_dict(), "step": step})  # fmt: skip
        x, y = p.batch_at(step)
        loss = p.loss(p.model(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        replay.step()
    return losses


def test_a_saved_and_resumed_schedule_replay_continues_bit_for_bit():
    whole = _adamw_loop()
    for at in (0, 22, 23, 50, STEPS - 1):
        assert _adamw_loop(resume=_adamw_loop(save_at=at)) == whole[at:], f"losses differ after resuming at step {at}"
    p = PROGRAMS["regression"](0)
    opt = torch.optim.AdamW(p.model.parameters())
    state = ScheduleReplay(opt, {"meta": {"space": "adamw"}, "schedule": {"progress": [0.0], "lr": [1e-3], "eps": [1e-8],
                                 "one_minus_beta2": [1e-3], "weight_decay": [0.0]}}, total_steps=10).state_dict()
    with pytest.raises(ValueError, match="total_steps=10, but this one has 20"):
        ScheduleReplay(opt, {"meta": {"space": "adamw"}, "schedule": {"progress": [0.0], "lr": [1e-3], "eps": [1e-8],
                             "one_minus_beta2": [1e-3], "weight_decay": [0.0]}}, total_steps=20).load_state_dict(state)


@pytest.mark.parametrize("bad,error,message", [
    (2.5, TypeError, "total_steps must be a whole number of optimizer steps, got 2.5 (float)"),
    ("10", TypeError, "total_steps must be a whole number of optimizer steps, got '10' (str)"),
    (None, TypeError, "total_steps must be a whole number of optimizer steps, got None (NoneType)"),
    (True, TypeError, "got True (bool)"),
    (0, ValueError, "total_steps must be >= 1, got 0"),
])  # fmt: skip
def test_a_bad_total_steps_is_refused_by_name(bad, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        LHOPT([torch.nn.Parameter(torch.zeros(2))], total_steps=bad)


def test_outer_steps_zero_and_complex_parameters_are_refused_up_front():
    with pytest.raises(ValueError, match="outer_steps must be >= 1, got 0"):
        LHOPT([torch.nn.Parameter(torch.zeros(2))], total_steps=10, outer_steps=0)
    with pytest.raises(TypeError, match="outer_steps must be a whole number"):
        LHOPT([torch.nn.Parameter(torch.zeros(2))], total_steps=10, outer_steps=2.0)
    for params in ([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))],
                   [{"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]}]):
        with pytest.raises(ValueError, match="complex parameters.*torch.view_as_real"):
            LHOPT(params, total_steps=10)


def test_stepping_past_total_steps_warns_once_and_keeps_the_last_values():
    w = torch.nn.Parameter(torch.ones(3))
    opt = LHOPT([w], total_steps=4, outer_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            (w**2).sum().backward()
            opt.step()
    with pytest.warns(RuntimeWarning, match="stepped past total_steps=4") as caught:
        for _ in range(3):
            (w**2).sum().backward()
            opt.step()
    assert len(caught) == 1 and opt.decisions == 2 and math.isfinite(float(w.detach().sum()))
