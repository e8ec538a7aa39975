"""Actions, restarts, observations and the inner-training environment."""

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.agent.actions import ActionSpace, CheckpointBank, apply_action
from lhopt_dsl.agent.env import InnerTrainingEnv, OuterStep, log_improvement_reward
from lhopt_dsl.agent.feature_transforms import RunningNormalizer
from lhopt_dsl.agent.observation import TASK_CLASSES, FeatureBuilder, task_vector
from lhopt_dsl.optim import CIAO, STAT_NAMES
from lhopt_dsl.spec import HPARAM_NAMES, AdamWSpace, CIAOSpace
from lhopt_dsl.spec.schedule import SHAPES, Schedule, segment_bounds, shape_factor
from lhopt_dsl.tasks.training import run_schedule

from .conftest import SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
SMOKE_ADAMW = load_spec(SPECS / "smoke_adamw.yaml")


def smoke_cfg(family: str, seed: int = 0) -> TaskConfig:
    for s in range(seed, seed + 500):
        cfg = sample(SMOKE, s)
        if cfg.family == family:
            return cfg
    raise AssertionError(family)


def test_action_space_follows_table_8_and_restarts():
    actions = ActionSpace(CIAOSpace())
    assert actions.nvec == [7, 2, 2, 2, 2, 4, 3, 3, 10]
    assert actions.size == sum(actions.nvec)
    assert [actions.restart([0] * 8 + [r]) for r in (0, 1, 2, 3, 4, 9)] == [
        ("none", -1), ("save", 0), ("load", 0), ("swap", 0), ("save", 1), ("swap", 2)
    ]
    enc = actions.encode([6, 1, 0, 0, 1, 3, 2, 0, 9])
    assert enc.sum() == 9 and enc[6] == 1 and enc[-1] == 1
    assert actions.encode(None).sum() == 0
    with pytest.raises(ValueError, match="outside the action space"):
        actions.check([7, 0, 0, 0, 0, 0, 0, 0, 0])


def test_adamw_space_actions_and_features_cover_adamws_four_hyperparameters():
    ciao, adamw = ActionSpace(CIAOSpace()), ActionSpace(AdamWSpace())
    assert adamw.names == ["lr", "weight_decay", "eps", "one_minus_beta2"] and set(adamw.names) < set(HPARAM_NAMES)
    assert adamw.nvec == [7, 2, 2, 2, 1]  # restarts off by default: a schedule cannot replay them
    fc, fa = FeatureBuilder(ciao, CIAOSpace()), FeatureBuilder(adamw, AdamWSpace())
    # previous action one-hot, one log(current / initial) per controlled hyperparameter, 3 per checkpoint slot
    fewer = (ciao.size - adamw.size) + (8 - 4) + 3 * 3
    assert fc.policy_size - fa.policy_size == fewer
    assert fc.value_size - fa.value_size == fewer + (8 - 4)  # and the initial hyperparameters' vector


def test_adamw_space_env_runs_ciao_as_adamw_and_refuses_tasks_of_another_space():
    cfg = next(c for c in (sample(SMOKE_ADAMW, s) for s in range(50)) if c.family == "nqm")
    assert cfg.hparams.space == "adamw" and cfg.hparams.controlled() == cfg.hparams.model_dump(exclude={"space"})
    env = InnerTrainingEnv(SMOKE_ADAMW.hparams)
    obs, info = env.reset(options={"config": cfg})
    g = env.optimizer.param_groups[0]
    assert (g["denominator"], g["use_clip"], g["use_lamb"], g["bias_correction"]) == ("adam", False, False, "power")
    assert g["one_minus_beta1"] == 0.1 and g["eps"] == cfg.hparams.eps
    assert obs["policy"].shape == (env.features.policy_size,)
    done = False
    while not done:
        obs, _, done, _, info = env.step(env.action_space.sample())
        assert list(info["hparams"]) == ["lr", "weight_decay", "eps", "one_minus_beta2"]
        assert np.isfinite(obs["policy"]).all() and np.isfinite(obs["value"]).all()
    with pytest.raises(ValueError, match="in the ciao space, but the policy acts in the adamw space"):
        env.reset(options={"config": smoke_cfg("nqm")})


def test_apply_action_scales_shifts_and_clamps():
    space = CIAOSpace()
    actions = ActionSpace(space)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = CIAO([p], lr=0.05, grad_clip_fraction=0.8)
    up = [6, 1, 1, 1, 1, 3, 2, 2, 0]  # lr x2, other scales x2, clip fraction logit +1
    applied = apply_action(opt, actions, up)
    assert applied["lr"] == 0.1  # 0.05 * 2, at the upper bound
    z = math.log(0.8 / 0.2) + 1.0
    assert math.isclose(applied["grad_clip_fraction"], 1 / (1 + math.exp(-z)))
    for _ in range(30):
        applied = apply_action(opt, actions, up)
    for name, hp in space.controlled().items():
        low, high = hp.bounds
        assert low <= applied[name] <= high, name
        assert opt.param_groups[0][name] == applied[name]
    assert applied["lr"] == 0.1 and applied["grad_clip_fraction"] == 0.999
    # No policy can leave the range where training makes sense (the default bounds): beta1 >= 0.5,
    # beta2 >= 0.9, weight decay <= 0.1, however often it asks for more.
    assert applied["one_minus_beta1"] == 0.5 and applied["one_minus_beta2"] == 0.1 and applied["weight_decay"] == 0.1
    down = [0, 0, 0, 0, 0, 0, 0, 0, 0]
    for _ in range(200):
        applied = apply_action(opt, actions, down)
    assert applied["lr"] == space.lr.bounds[0] and applied["grad_clip_fraction"] == space.grad_clip_fraction.bounds[0]
    identity = actions.identity()
    before = dict(opt.param_groups[0])
    apply_action(opt, actions, identity)
    assert opt.param_groups[0]["lr"] == before["lr"]  # the lr action list contains 1.0


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    return model, CIAO(model.parameters())


def _train(model, opt, steps=5):
    for _ in range(steps):
        loss = model(torch.randn(16, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_save_then_load_restores_parameters_bit_exactly():
    model, opt = _model_and_opt()
    bank = CheckpointBank(3, ["lr"])
    _train(model, opt)
    bank.apply("save", 1, model, opt, progress=0.25, valid=0.7)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_m = opt.state[next(model.parameters())]["exp_avg"].clone()
    _train(model, opt)
    opt.param_groups[0]["lr"] = 0.123  # the policy's latest choice survives a load
    assert bank.apply("load", 1, model, opt, progress=0.5, valid=0.9) == 0.7
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert torch.equal(opt.state[next(model.parameters())]["exp_avg"], saved_m)
    assert opt.param_groups[0]["lr"] == 0.123
    _train(model, opt)  # training on after a load leaves the checkpoint intact
    bank.apply("load", 1, model, opt, progress=0.75, valid=0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_swap_exchanges_current_and_checkpoint():
    model, opt = _model_and_opt()
    bank = CheckpointBank(3, ["lr"])
    _train(model, opt)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    bank.apply("save", 0, model, opt, 0.1, 1.0)
    _train(model, opt)
    b = {k: v.clone() for k, v in model.state_dict().items()}
    assert bank.apply("swap", 0, model, opt, 0.2, 2.0) == 1.0
    assert all(torch.equal(v, a[k]) for k, v in model.state_dict().items())
    assert bank.apply("swap", 0, model, opt, 0.3, 1.0) == 2.0
    assert all(torch.equal(v, b[k]) for k, v in model.state_dict().items())
    assert bank.apply("load", 2, model, opt, 0.4, 3.0) == 3.0  # empty slot: nothing happens


def test_gymnasium_check_env_passes():
    env = InnerTrainingEnv(SMOKE.hparams, config=smoke_cfg("mlp"))
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("family", ["mlp", "nqm", "rnn", "transformer"])
def test_full_episode_on_a_smoke_task(family):
    cfg = smoke_cfg(family)
    env = InnerTrainingEnv(SMOKE.hparams)
    obs, info = env.reset(options={"config": cfg})
    v0 = info["valid_loss"]
    assert obs["policy"].shape == env.observation_space["policy"].shape
    assert obs["value"].shape == env.observation_space["value"].shape
    rewards, steps = [], 0
    rng = np.random.default_rng(0)
    done = False
    while not done:
        action = rng.integers(0, env.action_space.nvec)
        action[-1] = 0  # no restarts here, so the default reward telescopes
        obs, reward, done, truncated, info = env.step(action)
        steps += 1
        rewards.append(reward)
        assert not truncated
        assert np.isfinite(obs["policy"]).all() and np.isfinite(obs["value"]).all()
        assert set(info["hparams"]) >= {"lr", "eps", "weight_decay"}
    assert steps == cfg.task.outer_steps and info["progress"] == 1.0 and info["inner_step"] == cfg.task.inner_steps
    assert not info["diverged"], "these seeded episodes stay finite; a divergence would skip the check below"
    assert math.isclose(sum(rewards), math.log(v0) - math.log(info["valid_loss"]), rel_tol=1e-6, abs_tol=1e-9)
    with pytest.raises(RuntimeError, match="ended"):
        env.step(env.actions.identity())


def test_reset_needs_a_task():
    with pytest.raises(ValueError, match="config"):
        InnerTrainingEnv().reset()


def test_diverged_run_keeps_going_flags_nan_and_recovers_by_restart():
    cfg = smoke_cfg("mlp")
    env = InnerTrainingEnv(SMOKE.hparams)
    env.reset(options={"config": cfg})
    save0 = env.actions.identity()
    save0[-1] = 1  # save to slot 0
    env.step(save0)
    with torch.no_grad():
        env.task.params[0].fill_(float("nan"))  # inject a divergence
    obs, reward, done, _, info = env.step(env.actions.identity())
    assert info["diverged"] and math.isnan(info["valid_loss"]) and reward == -10.0
    assert np.isfinite(obs["policy"]).all() and np.isfinite(obs["value"]).all()
    normalizer = RunningNormalizer(len(obs["policy"]))
    out = normalizer(obs["policy"])
    assert np.isfinite(out).all() and np.abs(out).max() <= 2.0
    load0 = env.actions.identity()
    load0[-1] = 2  # load slot 0
    obs, reward, done, _, info = env.step(load0)
    assert not info["diverged"] and math.isfinite(info["valid_loss"])
    assert info["restart"] == ("load", 0)


def policy_layout(features: FeatureBuilder) -> dict[str, int]:
    """Each named entry of FeatureBuilder.policy's vector -> its index."""
    names = features.policy_names()
    assert len(names) == features.policy_size == len(set(names))
    return {name: i for i, name in enumerate(names)}


def test_policy_names_follow_the_vector():
    features = FeatureBuilder(ActionSpace(SMOKE.hparams), SMOKE.hparams)
    at = policy_layout(features)
    hp = {n: 2.0 for n in features.actions.names}
    init = {n: 1.0 for n in features.actions.names}
    stats = {name: 10.0 + k for k, name in enumerate(STAT_NAMES)}
    action = np.zeros(len(features.actions.nvec), dtype=np.int64)
    action[0] = features.actions.nvec[0] - 1
    vec = features.policy(0.25, action, 1.0, 1.0, [None] * features.slots, hp, init, 1.0, 1.0, stats)
    assert vec[at["progress"]] == 0.25
    first = features.actions.names[0]
    assert vec[at[f"prev_action/{first}/{features.actions.nvec[0] - 1}"]] == 1.0
    assert vec[at[f"prev_action/{first}/0"]] == 0.0
    assert all(vec[at[f"log_hparam/{n}"]] == np.float32(math.log(2.0)) for n in features.actions.names)
    assert [vec[at[f"{name}/value"]] for name in STAT_NAMES] == [10.0 + k for k in range(len(STAT_NAMES))]
    assert all(vec[at[f"checkpoint{k}/is_empty"]] == 1.0 for k in range(features.slots))


def test_policy_layout_names_the_flags_of_each_loss_series():
    features = FeatureBuilder(ActionSpace(SMOKE.hparams), SMOKE.hparams)
    at = policy_layout(features)
    flags = ["loss_ratio/is_nan", "log_train/is_nan", "log_train/is_inf", "log_valid/is_nan", "log_valid/is_inf"]

    def read(train: float, valid: float) -> list[float]:
        features.reset()
        vec = features.policy(0.5, None, train, valid, [None] * features.slots, {}, {}, 1.0, 1.0, {})
        return [float(vec[at[f]]) for f in flags]

    assert read(math.nan, 2.0) == [1, 1, 0, 0, 0]
    assert read(2.0, 0.0) == [1, 0, 0, 0, 1]  # log 0 = -inf
    assert read(2.0, 1.0) == [0, 0, 0, 0, 0]


def test_nan_flags_are_set_in_the_policy_features():
    cfg = smoke_cfg("mlp")
    env = InnerTrainingEnv(SMOKE.hparams)
    env.reset(options={"config": cfg})
    at = policy_layout(env.features)
    healthy, *_ = env.step(env.actions.identity())
    with torch.no_grad():
        env.task.params[0].fill_(float("nan"))
    sick, *_ = env.step(env.actions.identity())
    # NaN weights make the train and valid losses NaN (not inf), and so their log ratio
    nan_flags = ["loss_ratio/is_nan", "log_train/is_nan", "log_valid/is_nan"]
    inf_flags = ["log_train/is_inf", "log_valid/is_inf"]
    assert [healthy["policy"][at[f]] for f in nan_flags + inf_flags] == [0.0] * 5
    assert [sick["policy"][at[f]] for f in nan_flags] == [1.0] * 3
    assert [sick["policy"][at[f]] for f in inf_flags] == [0.0] * 2
    assert np.isfinite(sick["policy"]).all() and np.isfinite(sick["value"]).all()


def test_task_vector_has_a_fixed_size_and_family_one_hot():
    sizes = set()
    for s in range(60):
        cfg = sample(load_spec(SPECS / "default.yaml"), s)
        v = task_vector(cfg.task)
        sizes.add(len(v))
        assert v[: len(TASK_CLASSES)].sum() == 1 and np.isfinite(v).all()
    assert len(sizes) == 1


def test_segments_cover_the_run():
    assert segment_bounds(100, 4) == [0, 25, 50, 75, 100]
    b = segment_bounds(130, 128)
    assert b[0] == 0 and b[-1] == 130 and len(b) == 129 and all(y > x for x, y in zip(b, b[1:]))


def test_schedule_shapes():
    for shape in SHAPES:
        assert shape_factor(shape, 0.0) == 1.0
    assert shape_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert shape_factor("cosine_0.1", 1.0) == pytest.approx(0.1)
    assert shape_factor("linear", 0.25) == 0.75 and shape_factor("quadratic", 0.5) == 0.25
    assert shape_factor("multi_step", 0.6) == 0.1 and shape_factor("multi_step", 0.8) == 0.01
    assert shape_factor("exponential", 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="known"):
        shape_factor("warmup", 0.1)


def test_run_schedule_sees_the_same_task_as_the_policy():
    cfg = smoke_cfg("mlp")
    env = InnerTrainingEnv(SMOKE.hparams)
    _, info = env.reset(options={"config": cfg})
    curve = run_schedule(cfg, Schedule(lr=3e-3, shape="cosine"))
    assert curve.valid_loss[0] == info["valid_loss"]
    assert curve.steps == segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps)
    assert curve.valid_loss[-1] < curve.valid_loss[0] and math.isfinite(curve.test_loss)
    long = run_schedule(cfg, Schedule(lr=3e-3, shape="cosine"), steps=2 * cfg.task.inner_steps)
    assert long.steps[-1] == 2 * cfg.task.inner_steps and len(long.steps) == 2 * cfg.task.outer_steps + 1
    again = run_schedule(cfg, Schedule(lr=3e-3, shape="cosine"))
    assert again.valid_loss == curve.valid_loss  # deterministic
    ciao = run_schedule(cfg, Schedule(optimizer="ciao"))
    assert len(ciao.valid_loss) == len(curve.valid_loss)


def test_identity_policy_equals_ciao_at_fixed_values():
    """An episode whose actions change nothing trains exactly like CIAO at its initial values."""
    neutral = {
        name: {"action": {"type": hp.action.type, "values": [1.0 if hp.action.type == "scale" else 0.0]}}
        for name, hp in CIAOSpace().controlled().items()
    }
    space = CIAOSpace.model_validate({**neutral, "restarts": {"enabled": False}})
    for family in ("nqm", "mlp"):
        cfg = smoke_cfg(family)
        env = InnerTrainingEnv(space)
        _, info = env.reset(options={"config": cfg})
        losses, done = [info["valid_loss"]], False
        while not done:
            _, _, done, _, info = env.step([0] * len(env.action_space.nvec))
            losses.append(info["valid_loss"])
        assert losses == run_schedule(cfg, Schedule(optimizer="ciao")).valid_loss


def test_log_improvement_reward():
    step = OuterStep(1, 0.5, 1.0, 0.5, 1.0, False, None)
    assert log_improvement_reward(step) == pytest.approx(math.log(2))
    assert log_improvement_reward(OuterStep(1, 0.5, 1.0, float("nan"), 1.0, False, None)) == -10.0


def test_default_reward_telescopes_across_restarts():
    """A load that jumps back to a better checkpoint is not paid for twice."""
    cfg = smoke_cfg("mlp")
    env = InnerTrainingEnv(SMOKE.hparams)
    _, info = env.reset(options={"config": cfg})
    v0, total = info["valid_loss"], 0.0
    for restart in [1, 0, 2, 0, 2, 0, 2, 0][: cfg.task.outer_steps]:  # save, then load again and again
        action = env.actions.identity()
        action[-1] = restart
        _, reward, done, _, info = env.step(action)
        total += reward
    assert done
    assert math.isclose(total, math.log(v0) - math.log(info["valid_loss"]), rel_tol=1e-9, abs_tol=1e-12)
