"""Ensembles of policies (lhopt_dsl.agent.policy.EnsembleActorCritic, lhopt ensemble): the mean of the
members' log-probabilities, each member reading the raw features through its own normaliser."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lhopt_dsl import load_spec
from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.policy import ActorCritic, EnsembleActorCritic, PolicyShape, load_checkpoint, save_checkpoint
from lhopt_dsl.controller import LHOPT, combine_policies, load_policy
from lhopt_dsl.spec.hparams import CIAOSpace
from runners.cli import main as cli
from runners.meta_train import initial_policy, policy_shape

from .conftest import SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
SPACE = CIAOSpace()
NVEC = tuple(ActionSpace(SPACE).nvec)


def trained_looking(seed: int, size: int = 6) -> ActorCritic:
    """A policy with random weights (larger than a fresh head's) and a normaliser fitted to data of
    its own scale, so that members differ in both."""
    torch.manual_seed(seed)
    model = ActorCritic(PolicyShape(size, 3, NVEC, hidden_size=8))
    with torch.no_grad():
        model.actor.head.weight.normal_(0, 1.0)
    rng = np.random.default_rng(seed)
    model.policy_norm(rng.normal(seed, 1 + seed, size=(50, size)), update=True)
    model.value_norm(rng.normal(0, 1, size=(50, 3)), update=True)
    return model


def raw_features(steps: int = 5, batch: int = 4, size: int = 6) -> np.ndarray:
    return np.random.default_rng(7).normal(1.0, 2.0, size=(steps, batch, size))


def member_logprobs(model: ActorCritic, raw: np.ndarray) -> torch.Tensor:
    """(T, B, sum(nvec)) log-probabilities of one policy acting alone on raw features."""
    x = torch.as_tensor(model.policy_norm(raw.reshape(-1, raw.shape[-1]), update=False)).view(raw.shape)
    logits, _ = model.actor_forward(x)
    return torch.cat([torch.log_softmax(c, -1) for c in torch.split(logits, list(NVEC), -1)], -1)


def test_the_ensemble_distribution_is_the_normalised_geometric_mean_of_its_members():
    a, b = trained_looking(1), trained_looking(2)
    ens = EnsembleActorCritic([a, b])
    raw = raw_features()
    x = torch.as_tensor(ens.policy_norm(raw.reshape(-1, 6), update=False)).view(raw.shape)
    logits, state = ens.actor_forward(x)
    assert len(state) == 2
    expected = (member_logprobs(a, raw) + member_logprobs(b, raw)) / 2
    for got, want in zip(ens.dists(logits), torch.split(expected, list(NVEC), -1)):
        probs = torch.softmax(want, -1)  # the geometric mean, renormalised
        torch.testing.assert_close(got.probs, probs, atol=1e-5, rtol=1e-5)
    # and it differs from either member alone: the members disagree somewhere
    assert not torch.allclose(expected, member_logprobs(a, raw), atol=1e-3)


def test_each_member_normalises_the_raw_features_with_its_own_statistics():
    """An ensemble of one policy and a copy of it acts exactly as that policy on raw features,
    step by step with the recurrent state carried; sharing one member's normaliser would not."""
    a, b = trained_looking(1), trained_looking(3)
    raw = raw_features()
    for members in ([a, a], [b, b]):
        ens = EnsembleActorCritic(members)
        alone, runs = members[0], [Run({"lr": 1e-3}, raw.shape[0])] * raw.shape[1]
        st_alone, st_ens = alone.start(runs), ens.start(runs)
        for t in range(raw.shape[0]):
            step1, st_alone = alone.act(st_alone, raw[t], [None] * 4, True)
            step2, st_ens = ens.act(st_ens, raw[t], [None] * 4, True)
            assert (step1.actions == step2.actions).all()
            np.testing.assert_allclose(step1.logprobs, step2.logprobs, atol=1e-5)
    # b's weights read through a's statistics give other distributions than b's own
    shared = member_logprobs(b, raw)
    swapped = ActorCritic.from_checkpoint({**b.to_checkpoint(), "policy_norm": a.policy_norm.state_dict()})
    assert not torch.allclose(shared, member_logprobs(swapped, raw), atol=1e-3)


def test_an_ensemble_acts_through_act_with_mean_values():
    a, b = trained_looking(1), trained_looking(2)
    ens = EnsembleActorCritic([a, b])
    raw, v = raw_features()[0, :1], np.random.default_rng(1).normal(size=(1, 3))
    step, state = ens.act(ens.start([Run({"lr": 1e-3}, 3)]), raw, [None], True)
    assert step.actions.shape == (1, len(NVEC)) and len(state) == 2
    p, vv = ens.normalise(raw, v)
    value, _ = ens.critic_forward(torch.as_tensor(p)[None], torch.as_tensor(vv)[None])
    va, _ = a.critic_forward(*(torch.as_tensor(t)[None] for t in a.normalise(raw, v)))
    vb, _ = b.critic_forward(*(torch.as_tensor(t)[None] for t in b.normalise(raw, v)))
    assert float(value) == pytest.approx(float(va + vb) / 2, abs=1e-5)
    for _ in range(3):  # its carry goes on from decision to decision
        step, state = ens.act(state, raw, [None], True)
        assert step.actions.shape == (1, len(NVEC))


def test_combined_files_round_trip_and_drive_the_drop_in(tmp_path):
    paths = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = ActorCritic(policy_shape(SMOKE))
        with torch.no_grad():
            model.actor.head.weight.normal_(0, 0.1)
        paths.append(tmp_path / f"p{seed}.pt")
        save_checkpoint({"policy": model.to_checkpoint(), "spec": SMOKE.model_dump(mode="json"),
                         "imitation": {"seed": seed}}, paths[-1])  # fmt: skip
    out = tmp_path / "ens.pt"
    assert cli(["ensemble", *map(str, paths), "-o", str(out)]) == 0
    state = load_checkpoint(out)  # plain data, read by the safe loader
    assert [m["imitation"] for m in state["ensemble"]["members"]] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    assert all(len(m["sha256"]) == 64 for m in state["ensemble"]["members"])
    ens, space = load_policy(out)
    assert isinstance(ens, EnsembleActorCritic) and len(ens.members) == 3 and space == SMOKE.hparams
    direct = EnsembleActorCritic([load_policy(p)[0] for p in paths])
    raw = np.random.default_rng(0).normal(size=(3, ens.shape.policy_size))
    x = torch.as_tensor(ens.policy_norm(raw, update=False)).unsqueeze(0)
    torch.testing.assert_close(ens.actor_forward(x)[0], direct.actor_forward(x)[0])

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(256, 8, generator=g)
    ys = xs @ torch.randn(8, 1, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = LHOPT(net.parameters(), policy=out, total_steps=60, outer_steps=6)
    first = F.mse_loss(net(xs), ys).item()
    for step in range(60):
        loss = F.mse_loss(net(xs[step % 8 * 32:][:32]), ys[step % 8 * 32:][:32])
        opt.zero_grad()
        loss.backward()
        opt.observe(train_loss=loss.item())
        opt.step()
    final = F.mse_loss(net(xs), ys).item()
    assert opt.decisions == 6 and math.isfinite(final) and final < first


def test_bad_combinations_are_refused_with_what_to_do(tmp_path, capsys):
    a = tmp_path / "a.pt"
    save_checkpoint({"policy": trained_looking(1).to_checkpoint()}, a)
    other = tmp_path / "other.pt"
    save_checkpoint({"policy": ActorCritic(PolicyShape(6, 3, (3, 3))).to_checkpoint()}, other)
    with pytest.raises(ValueError, match="same hyperparameter space and features"):
        combine_policies([a, other], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="at least two"):
        combine_policies([a], tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        combine_policies([a, tmp_path / "absent.pt"], tmp_path / "x.pt")
    ens = tmp_path / "ens.pt"
    combine_policies([a, a], ens)
    with pytest.raises(ValueError, match="already an ensemble"):
        combine_policies([ens, a], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    assert cli(["ensemble", str(a), str(other), "-o", str(tmp_path / "x.pt")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not trained"):
        load_policy(ens)[0].policy_norm(np.zeros(6), update=True)


def test_an_ensemble_cannot_be_the_start_of_meta_training(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"p{seed}.pt")
        save_checkpoint({"policy": ActorCritic(policy_shape(SMOKE)).to_checkpoint(),
                         "spec": SMOKE.model_dump(mode="json")}, paths[-1])  # fmt: skip
    combine_policies(paths, tmp_path / "ens.pt")
    init = load_checkpoint(tmp_path / "ens.pt")
    with pytest.raises(ValueError, match="start from one of its members"):
        initial_policy(SMOKE, init, tmp_path / "ens.pt")
