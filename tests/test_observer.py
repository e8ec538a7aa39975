"""The observer: one definition of what a policy sees, shared by the environment, the population
rollouts and the drop-in optimizer (the population's equality with the environment is in
tests/test_population.py)."""

import copy
import math

import numpy as np
import pytest
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.actions import ActionSpace, Checkpoint
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.observation import (
    FIRST_RATIOS,
    FULL_CADENCE,
    MISSING_LOSS,
    Cadence,
    FeatureBuilder,
    Observer,
    draw_cadence,
    norm_ratios,
)
from lhopt_dsl.agent.policy import ActorCritic
from lhopt_dsl.agent.rollout import run_episode
from lhopt_dsl.controller import LHOPT
from lhopt_dsl.optim import STAT_NAMES
from lhopt_dsl.spec.schedule import segment_bounds
from lhopt_dsl.tasks import compile_task
from runners.meta_train import policy_shape

from .conftest import SPECS
from .test_env import policy_layout

SMOKE = load_spec(SPECS / "smoke.yaml")


@pytest.mark.parametrize(
    "family,cadence",
    [("nqm", FULL_CADENCE), ("mlp", FULL_CADENCE), ("mlp", Cadence(7, 45)), ("nqm", Cadence(None, None)),
     ("mlp", Cadence(None, 30)), ("mlp", Cadence(3, None))],
    ids=str,
)  # fmt: skip
def test_the_drop_in_and_the_environment_show_the_policy_the_same_vectors(family, cadence):
    """Told the same things, LHOPT in a user's loop and the environment of meta-training give the
    policy identical vectors, and so take the same actions and restarts: under the full cadence (a
    training loss and CIAO's statistics at each step, the validation loss before the run and after
    each segment) and under the sparse ones meta-training draws (a user who reports the training
    loss every k steps or never, the validation loss every n steps or never)."""
    cfg = next(c for c in (sample(SMOKE, s) for s in range(200)) if c.family == family)
    torch.manual_seed(0)
    policy = ActorCritic(policy_shape(SMOKE))
    policy.policy_norm(torch.randn(64, policy.shape.policy_size).numpy() * 3)  # non-trivial normaliser
    env = InnerTrainingEnv(SMOKE.hparams)
    episode = run_episode(env, cfg, policy, log_improvement_reward, generator=torch.Generator().manual_seed(5),
                          cadence=cadence)  # fmt: skip

    task = compile_task(cfg)  # the same weights and data order as the environment's
    opt = LHOPT(task.params, copy.deepcopy(policy), total_steps=task.steps, outer_steps=task.outer_steps,
                initial=cfg.hparams.controlled(), model=task.model, deterministic=False, seed=5)  # fmt: skip
    seen, normalise = [], opt.actor.policy_norm
    opt.actor.policy_norm = lambda x, update=False: normalise(seen.append(x.copy()) or x, update=update)
    if cadence.valid_every is not None:
        opt.observe(valid_loss=task.valid_loss())
    bounds = segment_bounds(task.steps, task.outer_steps)
    for a, b in zip(bounds, bounds[1:]):
        for i in range(a, b):
            loss = task.train_loss(task.next_batch())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            told = float(loss.detach()) if cadence.trains(i) else None
            opt.step(loss=told)  # this step's statistics see its loss; without one, the latest reported
            if told is not None:
                opt.observe(train_loss=told)  # counted in the segment it belongs to
        if cadence.validates(a, b):
            opt.observe(valid_loss=task.valid_loss())
        else:
            task.valid_loss()  # the environment measures it anyway (for its reward): keep the data order

    assert len(seen) == len(episode.raw_policy) == task.outer_steps
    np.testing.assert_array_equal(np.concatenate(seen), episode.raw_policy)  # one (1, Fp) row per decision
    assert [h["restart"] for h in opt.history] == [kind for kind, _ in episode.restarts]
    assert any(kind != "none" for kind, _ in episode.restarts)  # the restart path is covered
    for mine, theirs in zip(opt.history, episode.hparams):
        assert {n: mine[n] for n in theirs} == theirs


def test_missing_observations_look_as_the_observer_documents():
    """The cases of Observer's docstring, against FeatureBuilder given the documented values by hand
    (the same sequence, as its CDF history depends on the order)."""
    actions = ActionSpace(SMOKE.hparams)
    initial = {n: hp.init for n, hp in SMOKE.hparams.controlled().items()}
    observer = Observer(FeatureBuilder(actions, SMOKE.hparams), outer_steps=4, initial=initial)
    ref = FeatureBuilder(actions, SMOKE.hparams)
    at = policy_layout(ref)
    slots = [None] * ref.slots
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(50, generator=g) for _ in range(4)]
    sample = lambda shift: {n: float(i + shift) for i, n in enumerate(STAT_NAMES)}  # noqa: E731

    # Nothing reported yet, as the drop-in before any observe(): no losses (1., 2.), no statistics
    # (4.), no previous parameters or action (5.); a saved checkpoint shows as empty (2.).
    saved = [Checkpoint({}, {}, 0.0, math.nan), *slots[1:]]
    first = observer.policy(initial, saved, params[0])
    np.testing.assert_array_equal(first, ref.policy(0.0, None, math.nan, math.nan, saved, initial, initial, 1.0,
                                                    math.nan, {}))  # fmt: skip
    assert math.isnan(MISSING_LOSS) and FIRST_RATIOS[0] == 1.0 and math.isnan(FIRST_RATIOS[1])  # as documented
    flags = ["loss_ratio/is_nan", "log_train/is_nan", "log_valid/is_nan", "checkpoint0/is_empty"]
    assert [first[at[f]] for f in flags] == [1.0] * 4
    assert all(first[at[f"{s}/is_nan_or_inf"]] == 1.0 for s in STAT_NAMES)
    assert not first[at[f"prev_action/{actions.names[0]}/0"] : at["loss_ratio/is_nan"]].any()  # no previous action
    assert first[at["log_param_norm_ratio/tanh"]] == 0.0 and first[at["log_update_ratio/tanh"]] == 0.0

    # A segment with everything reported: the means of its training losses and statistics.
    action = actions.identity()
    observer.acted(action)
    for loss in (2.0, 4.0):
        observer.report(train_loss=loss)
    observer.report(stats=sample(1.0))
    observer.report(stats=sample(3.0), valid_loss=5.0)
    full = observer.policy(initial, slots, params[1])
    stats = {n: float(i + 2.0) for i, n in enumerate(STAT_NAMES)}
    np.testing.assert_array_equal(full, ref.policy(0.25, action, 3.0, 5.0, slots, initial, initial,
                                                   *norm_ratios(params[0], params[1]), stats))  # fmt: skip

    # A segment with nothing reported: NaN train loss (1.), the latest valid loss (3.), the latest
    # statistics (4.).
    empty = observer.policy(initial, slots, params[2])
    np.testing.assert_array_equal(empty, ref.policy(0.5, action, math.nan, 5.0, slots, initial, initial,
                                                    *norm_ratios(params[1], params[2]), stats))  # fmt: skip
    assert empty[at["log_train/is_nan"]] == 1.0 and empty[at["log_valid/is_nan"]] == 0.0
    assert math.isnan(observer.seen[2].train_loss) and observer.seen[2].valid_loss == 5.0

    # A restart that loads a checkpoint: its validation loss, until a new one is reported.
    observer.restarted(1.5)
    restarted = observer.policy(initial, slots, params[3])
    np.testing.assert_array_equal(restarted, ref.policy(0.75, action, math.nan, 1.5, slots, initial, initial,
                                                        *norm_ratios(params[2], params[3]), stats))  # fmt: skip
    assert [s.progress for s in observer.seen] == [0.0, 0.25, 0.5, 0.75] and observer.progress == 0.75


def test_a_cadence_reports_what_a_users_loop_would():
    every3 = Cadence(3, 10)
    assert [i for i in range(10) if every3.trains(i)] == [0, 3, 6, 9]
    assert every3.validates(0, 10) and not every3.validates(0, 9) and every3.validates(9, 11)
    assert every3.validates(5, 25) and not every3.validates(11, 19)
    never = Cadence(None, None)
    assert not any(never.trains(i) for i in range(100)) and not never.validates(0, 100)
    assert FULL_CADENCE.full and all(FULL_CADENCE.trains(i) for i in range(5)) and FULL_CADENCE.validates(4, 5)
    assert not every3.full and str(never) == "train loss never, valid loss never"
    with pytest.raises(ValueError, match="train_every"):
        Cadence(0, 0)
    with pytest.raises(ValueError, match="valid_every"):
        Cadence(1, -1)


def test_meta_training_draws_every_kind_of_cadence_in_the_spec_s_proportions():
    """Per task and from its seed (so every run of the task, baseline included, reports alike)."""
    reporting = SMOKE.meta_train.reporting
    steps = 400
    drawn = [draw_cadence(reporting, seed, steps) for seed in range(4000)]
    assert drawn == [draw_cadence(reporting, seed, steps) for seed in range(4000)]  # deterministic
    full = np.mean([c.full for c in drawn])
    assert abs(full - reporting.full) < 0.03
    sparse = [c for c in drawn if not c.full]
    assert abs(np.mean([c.train_every is None for c in sparse]) - reporting.train_never) < 0.03
    assert abs(np.mean([c.valid_every is None for c in sparse]) - reporting.valid_never) < 0.03
    ks = [c.train_every for c in sparse if c.train_every is not None]
    ns = [c.valid_every for c in sparse if c.valid_every is not None]
    low, high = reporting.valid_every_fraction
    assert min(ks) == 2 and max(ks) == reporting.train_every_max
    assert round(steps * low) <= min(ns) < 2 * steps * low and steps * high / 2 < max(ns) <= round(steps * high)
    # log-uniform: as many k below the geometric middle as above it
    middle = math.sqrt(2 * reporting.train_every_max)
    assert abs(np.mean([k < middle for k in ks]) - 0.5) < 0.05
    assert draw_cadence(reporting.model_copy(update={"full": 1.0}), 3, steps) == FULL_CADENCE
