"""PPO of a residual policy: it scores the offsets the policy chose, measures each episode against
the base schedule's own run of the task, warms its critic up with the actor frozen, and can hold
the actor near where it started."""

import copy

import numpy as np
import pytest
import torch

from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.policy import ActorCritic, PolicyShape, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.residual import Residual
from lhopt_dsl.controller import load_policy
from lhopt_dsl.spec.schedule import Schedule
from runners.meta_train import Settings, initial_policy, kl_from, policy_data, policy_shape, ppo_update, train

from lhopt_dsl import load_spec

from .conftest import SPECS
from .test_meta_train import _tiny_spec, toy_episode

OFFLINE = "http://127.0.0.1:9"  # nothing listens there: tracking is skipped quickly
BASE = "linear-lr0.03"


def residual_spec(tmp_path, **meta):
    """The tiny smoke spec in cpu.yaml's space (whose actions can keep every hyperparameter, as a
    schedule's follower must), around linear-lr0.03."""
    spec = _tiny_spec(tmp_path)
    spec = spec.model_copy(update={"hparams": load_spec(SPECS / "cpu.yaml").hparams})
    mt = spec.meta_train.model_copy(update={"residual": BASE, "baseline": "schedule", **meta})
    return spec.model_copy(update={"meta_train": type(mt).model_validate(mt.model_dump())})


def keeper(spec) -> ActorCritic:
    """A policy that keeps every hyperparameter, whatever it sees (with probability 1 - 1e-8 per
    dimension): around a base schedule, it follows the schedule."""
    torch.manual_seed(0)
    model = ActorCritic(policy_shape(spec))
    actions = ActionSpace(spec.hparams)
    bias = torch.full((sum(actions.nvec),), -20.0)
    offsets = np.concatenate([[0], np.cumsum(actions.nvec)[:-1]])
    bias[torch.as_tensor(offsets + actions.identity())] = 20.0
    with torch.no_grad():
        model.actor.head.weight.zero_()
        model.actor.head.bias.copy_(bias)
    rng = np.random.default_rng(0)  # normalisers that have seen data, as a started policy's have
    model.policy_norm(rng.normal(size=(50, model.shape.policy_size)), update=True)
    model.value_norm(rng.normal(size=(50, model.shape.value_size)), update=True)
    return model


def test_a_policy_that_keeps_earns_exactly_the_schedules_reward_and_the_critic_warms_up_first(tmp_path):
    spec = residual_spec(tmp_path, critic_warmup=1, kl_to_start=0.5, update_normalisers=False)
    start = keeper(spec)
    init = tmp_path / "start.pt"
    save_checkpoint(policy_data(spec, start), init)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="tracking disabled"):
        train(spec, Settings(iterations=1, workers=0, tracking_uri=OFFLINE, run_dir=run, quiet=True, init=init))
    ckpt = load_checkpoint(run / "checkpoint.pt", "training checkpoint")
    first = ckpt["history"][0]
    # Every rollout followed the schedule: same weights, same batches, same learning rates as the
    # schedule's own run, so each episode ends at its loss, exactly: a reward of 1 (the baseline's own).
    assert first["reward/vs_schedule"] == 1.0 and first["policy/lr_moves"] == 0.0
    assert first["ppo/actor_trained"] == 0.0 and first["ppo/kl_to_start"] == 0.0
    trained = ActorCritic.from_checkpoint(ckpt["policy"])
    for name, value in start.state_dict().items():  # the warm-up moved the critic alone; normalisers as they were
        moved = not torch.equal(value, trained.state_dict()[name])
        assert moved == name.startswith("critic."), name
    assert ckpt["residual"]["base"] == BASE and "start" in ckpt
    with pytest.warns(UserWarning):
        path = train(spec, Settings(iterations=2, workers=0, resume=True, tracking_uri=OFFLINE, run_dir=run, quiet=True))
    history = load_checkpoint(run / "checkpoint.pt", "training checkpoint")["history"]
    assert [h["ppo/actor_trained"] for h in history] == [0.0, 1.0]
    policy, _ = load_policy(path)  # the trained file acts around its base, as the drop-in will run it
    assert policy.kind == "residual" and policy.base == Schedule.from_name(BASE)
    assert isinstance(policy, Residual) and isinstance(policy.inner, ActorCritic)


def test_frozen_normalisers_need_a_start_that_has_fitted_them(tmp_path):
    spec = residual_spec(tmp_path, update_normalisers=False)
    with pytest.raises(ValueError, match="update_normalisers: false.*--init"):
        train(spec, Settings(iterations=1, workers=0, tracking_uri=OFFLINE, run_dir=tmp_path / "run", quiet=True))


def test_ppo_scores_the_actions_the_policy_chose_not_those_carried_out():
    """A residual policy's log-probabilities are of its offsets; the learning-rate actions carried
    out differ. Before any step the ratio of new to old probabilities is 1, which it is only when
    the update scores the chosen actions."""
    torch.manual_seed(0)
    model = ActorCritic(PolicyShape(policy_size=4, value_size=2, nvec=(4, 3), hidden_size=16))
    with torch.no_grad():  # a policy that prefers some actions (a fresh one finds all about equally likely)
        model.actor.head.bias.copy_(torch.tensor([3.0, 0.0, -1.0, 1.0, 2.0, -2.0, 0.0]))
    gen = torch.Generator().manual_seed(0)
    episodes = [toy_episode(model, gen, length=5) for _ in range(6)]
    for e in episodes:
        e.proposed, e.actions = e.actions, (e.actions + 1) % np.asarray([4, 3])  # what a wrapper carried out
    spec_mt = _tiny_spec(None).meta_train.model_copy(update={"update_epochs": 1, "minibatch_episodes": 6})
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = ppo_update(model, opt, episodes, spec_mt, np.random.default_rng(0))
    assert stats["ppo/approx_kl"] == pytest.approx(0.0, abs=1e-6) and stats["ppo/clip_frac"] == 0.0
    for e in episodes:  # scored the carried-out actions instead, the ratio is far from 1
        e.proposed = None
    stats = ppo_update(model, opt, episodes, spec_mt, np.random.default_rng(0))
    assert stats["ppo/approx_kl"] > 0.05 and stats["ppo/clip_frac"] > 0.3


def test_the_kl_penalty_keeps_the_actor_near_its_start():
    """The toy problem PPO solves from a uniform start (tests/test_meta_train.py) stays near the
    start's behaviour with a strong pull towards it, and is solved without one."""
    def run(kl: float) -> tuple[float, float]:
        torch.manual_seed(0)
        model = ActorCritic(PolicyShape(policy_size=4, value_size=2, nvec=(4, 3), hidden_size=16))
        start = copy.deepcopy(model)
        mt = load_spec(SPECS / "smoke.yaml").meta_train.model_copy(
            update={"learning_rate": 3e-3, "minibatch_episodes": 4, "kl_to_start": kl})
        opt = torch.optim.Adam(model.parameters(), lr=mt.learning_rate)
        gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
        for _ in range(40):
            stats = ppo_update(model, opt, [toy_episode(model, gen) for _ in range(8)], mt, rng, start=start)
        x = torch.randn(3, 8, 4, generator=gen)
        return float(np.mean([toy_episode(model, gen).rewards.mean() for _ in range(30)])), float(kl_from(start, model, x).mean())

    free, held = run(0.0), run(50.0)
    assert free[0] > 0.9 and held[0] < 0.5, (free, held)
    assert held[1] < free[1] / 5, (free, held)
    model = ActorCritic(PolicyShape(policy_size=4, value_size=2, nvec=(4, 3), hidden_size=16))
    assert float(kl_from(model, model, torch.randn(2, 3, 4)).abs().max()) < 1e-6


def test_a_run_starts_only_from_a_policy_made_around_its_base(tmp_path):
    spec = residual_spec(tmp_path)
    plain = spec.model_copy(update={"meta_train": _tiny_spec(tmp_path).meta_train})
    model = ActorCritic(policy_shape(spec))
    around = policy_data(spec, model)
    assert initial_policy(spec, around, "around.pt").shape == model.shape
    with pytest.raises(ValueError, match=r"plain.pt: a plain policy.*lhopt imitate --base linear-lr0.03"):
        initial_policy(spec, policy_data(plain, model), "plain.pt")
    with pytest.raises(ValueError, match=r"around.pt: acts around .*set meta_train.residual: linear-lr0.03"):
        initial_policy(plain, around, "around.pt")
    other = dict(around, residual={"base": "cosine-lr0.01"})
    with pytest.raises(ValueError, match="cosine-lr0.01, but the spec's meta_train.residual is linear-lr0.03"):
        initial_policy(spec, other, "other.pt")


def test_a_schedule_baseline_needs_a_residual_base():
    from pydantic import ValidationError

    from lhopt_dsl.spec.experiment import MetaTrainSpec

    with pytest.raises(ValidationError, match="set meta_train.residual"):
        MetaTrainSpec(baseline="schedule")
    with pytest.raises(ValidationError, match="no optimizer prefix"):
        MetaTrainSpec(residual="adamw-linear-lr0.03")
    assert MetaTrainSpec(residual=BASE, baseline="schedule").residual == BASE


def test_init_temperature_sharpens_the_started_policy_and_keeps_its_greedy_choices(tmp_path):
    """Below 1 the started policy's sampled choices leave its mode less often (a cloned policy's
    deviations become rare), its argmax is unchanged, and the file it came from is not touched."""
    spec = residual_spec(tmp_path)
    torch.manual_seed(1)
    start = ActorCritic(policy_shape(spec))
    with torch.no_grad():
        start.actor.head.bias.normal_(0, 1.0)
        start.actor.head.weight.normal_(0, 0.1)
    data = policy_data(spec, start)
    as_saved = initial_policy(spec, data, "start.pt")
    cold_spec = residual_spec(tmp_path, init_temperature=0.25)
    cold = initial_policy(cold_spec, data, "start.pt")
    x = torch.randn(7, 5, start.shape.policy_size)
    warm_logits, _ = as_saved.actor_forward(x)
    cold_logits, _ = cold.actor_forward(x)
    torch.testing.assert_close(cold_logits, warm_logits / 0.25)
    for w, c in zip(as_saved.dists(warm_logits), cold.dists(cold_logits)):
        assert torch.equal(w.probs.argmax(-1), c.probs.argmax(-1))
        assert bool((c.probs.max(-1).values >= w.probs.max(-1).values - 1e-6).all())
        assert float(c.entropy().mean()) < float(w.entropy().mean())
    again = initial_policy(spec, data, "start.pt")  # the loaded data itself was not sharpened
    torch.testing.assert_close(again.actor_forward(x)[0], warm_logits)
    with pytest.raises(ValueError, match="init_temperature"):
        residual_spec(tmp_path, init_temperature=0.0)
