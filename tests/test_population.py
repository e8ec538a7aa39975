"""Populations: K members of one task as one batched model equal the one-at-a-time runs."""

import copy
import math

import numpy as np
import pytest
import torch

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.agent.observation import FULL_CADENCE, Cadence
from lhopt_dsl.optim import CIAO, STAT_NAMES
from lhopt_dsl.spec.schedule import SHAPES, Schedule
from lhopt_dsl.tasks import compile_task
from lhopt_dsl.tasks.population import CIAOPopulation, batchable, run_population
from lhopt_dsl.tasks.training import ciao_kwargs, run_schedule

from .conftest import SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
SCHEDULES = [Schedule(lr=lr, shape=shape) for lr in (1e-3, 1e-2) for shape in SHAPES[:4]]


def smoke(family: str, **task) -> TaskConfig:
    cfg = next(c for c in (sample(SMOKE, s) for s in range(200)) if c.family == family)
    if task:
        cfg = TaskConfig.model_validate({**cfg.model_dump(), "task": {**cfg.task.model_dump(), **task}})
    return cfg


def close(a: float, b: float, rel: float = 1e-4, abs_: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.mark.parametrize("family", ["mlp", "nqm", "transformer", "rnn"])
def test_adamw_population_equals_sequential_runs(family):
    cfg = smoke(family)
    curves = run_population(cfg, SCHEDULES)
    assert curves is not None and len(curves) == len(SCHEDULES)
    for schedule, curve in zip(SCHEDULES, curves):
        ref = run_schedule(cfg, schedule)
        assert curve.steps == ref.steps
        assert len(curve.valid_loss) == len(ref.valid_loss) and len(curve.train_loss) == len(ref.train_loss) > 0
        for a, b in zip(curve.valid_loss, ref.valid_loss):
            assert close(a, b), (schedule.name, a, b)
        assert close(curve.test_loss, ref.test_loss)
        for a, b in zip(curve.train_loss, ref.train_loss):
            assert close(a, b)


def test_longer_horizon_and_schedules_differ():
    cfg = smoke("nqm")
    curves = run_population(cfg, SCHEDULES, steps=2 * cfg.task.inner_steps)
    assert curves[0].steps[-1] == 2 * cfg.task.inner_steps
    assert len({c.valid_loss[-1] for c in curves}) == len(SCHEDULES)


def test_unbatchable_tasks_fall_back():
    text = sample(load_spec(SPECS / "families" / "text_rnn.yaml"), 0)
    assert not batchable(text)  # packed variable-length sequences have no vmap rule
    assert run_population(text, SCHEDULES[:2]) is None
    bn = smoke("mlp", norm="batch")
    assert run_population(bn, SCHEDULES) is None  # BatchNorm's running statistics update in place
    with pytest.raises(ValueError, match="AdamW"):
        run_population(smoke("nqm"), [Schedule(optimizer="ciao")])


def _members(cfg: TaskConfig, denominator: str, use_lamb: bool, bias_correction: str = "product") -> list[dict]:
    base = {**ciao_kwargs(cfg.hparams), "denominator": denominator, "use_lamb": use_lamb,
            "bias_correction": bias_correction}  # fmt: skip
    # Without LAMB's trust ratio, larger steps make these tiny tasks chaotic (rounding is amplified).
    return [base, {**base, "lr": base["lr"] * (3 if use_lamb else 0.7), "one_minus_beta1": 0.3, "grad_clip_fraction": 0.5},
            {**base, "lr": base["lr"] / 2, "eps": 1e-3, "weight_decay": 0.1, "one_minus_beta_lamb": 0.2}]  # fmt: skip


@pytest.mark.parametrize(
    "family,denominator,use_lamb,bias_correction",
    [("mlp", "adamax", True, "product"), ("nqm", "adam", True, "product"), ("transformer", "adamax", False, "product"),
     ("rnn", "adam", False, "product"), ("mlp", "adam", False, "power")],
)
def test_ciao_population_equals_ciao_member_by_member(family, denominator, use_lamb, bias_correction):
    """Per-member hyperparameters, changes between steps, statistics and restarts all agree."""
    cfg = smoke(family)
    settings = _members(cfg, denominator, use_lamb, bias_correction)
    steps, change, save, load = 24, 9, 6, 15
    pop = CIAOPopulation(compile_task(cfg), settings)
    pop_stats, pop_losses = [], []
    saved = None
    for i in range(steps):
        if i == change:
            pop.set_hparams(1, {"lr": settings[1]["lr"] / 10, "one_minus_beta2": 0.05})
        if i == save:
            saved = pop.member_state(2)
        if i == load:
            pop.load_member_state(2, saved)
        losses, stats = pop.train_step(stats=(i + 1) % 4 == 0)
        pop_losses.append(losses)
        pop_stats.append(stats)
    valid = pop.evaluate(pop.task.valid_batches)

    for k, s in enumerate(settings):
        task = compile_task(cfg)
        opt = CIAO(task.params, **s)
        ckpt = None
        for i in range(steps):
            if k == 1 and i == change:
                opt.param_groups[0].update(lr=s["lr"] / 10, one_minus_beta2=0.05)
            if k == 2 and i == save:
                ckpt = (copy.deepcopy(task.model.state_dict()), copy.deepcopy(opt.state_dict()))
            if k == 2 and i == load:
                task.model.load_state_dict(ckpt[0])
                opt.load_state_dict(ckpt[1])
            loss = task.train_loss(task.next_batch())
            opt.zero_grad()
            loss.backward()
            want = (i + 1) % 4 == 0
            opt.step(stats=want, loss=float(loss.detach()) if want else None)
            assert close(float(loss.detach()), float(pop_losses[i][k])), (k, i)
            if want:
                for name in STAT_NAMES:
                    assert close(opt.stats[name], pop_stats[i][k][name], rel=2e-3, abs_=2e-4), (k, i, name)
        assert close(task.valid_loss(), float(valid[k]))


def test_member_state_is_a_copy_and_keeps_hyperparameters():
    cfg = smoke("nqm")
    pop = CIAOPopulation(compile_task(cfg), _members(cfg, "adamax", True)[:2])
    pop.train_step()
    state = pop.member_state(0)
    before = state["flat"].clone()
    pop.set_hparams(0, {"lr": 0.5})
    pop.train_step()
    assert torch.equal(state["flat"], before)  # training on never touches the checkpoint
    pop.load_member_state(0, state)
    assert torch.equal(pop.flat[0], before) and pop.hparams(0)["lr"] == 0.5
    assert not torch.equal(pop.flat[1], before)


def test_population_members_must_share_the_switches():
    cfg = smoke("nqm")
    base = ciao_kwargs(cfg.hparams)
    with pytest.raises(ValueError, match="share"):
        CIAOPopulation(compile_task(cfg), [base, {**base, "denominator": "adam"}])
    with pytest.raises(ValueError, match="lr"):
        CIAOPopulation(compile_task(cfg), [{**base, "lr": -1.0}])


@pytest.mark.parametrize("family,compiled", [("nqm", False), ("rnn", True)])
def test_baseline_grid_uses_the_population_and_records_every_member(tmp_path, family, compiled):
    import optuna

    from runners.baselines import run_grid, study_name

    cfg = smoke(family)
    names = [f"adamw-{shape}-lr0.001" for shape in SHAPES[:3]]
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    # population=None: the default, which batches nqm eagerly and every batchable family when compiling
    curves = run_grid(cfg, storage, names=names, horizons=(1,), population=None, compiled=compiled)
    study = optuna.load_study(study_name=study_name(cfg), storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs["run"]["population"] for t in done)
    from runners.baselines import GRID_EVALUATIONS_PER_T

    for name in names:
        ref = run_schedule(cfg, Schedule(lr=1e-3, shape=name.split("-")[1]), evaluations=GRID_EVALUATIONS_PER_T)
        assert curves[(name, 1)].valid_loss == pytest.approx(ref.valid_loss, rel=1e-4, abs=1e-6)
        assert curves[(name, 1)].test_curve == pytest.approx(ref.test_curve, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "family,cadence",
    [("mlp", FULL_CADENCE), ("nqm", FULL_CADENCE), ("transformer", FULL_CADENCE), ("rnn", FULL_CADENCE),
     ("mlp", Cadence(5, 40)), ("nqm", Cadence(None, None)), ("rnn", Cadence(3, None))],
    ids=str,
)  # fmt: skip
def test_population_rollouts_equal_one_at_a_time_rollouts(family, cadence):
    """Meta-training's runs of a task (initial hyperparameters, self-play baseline, 3 sampled
    episodes with restarts) give the same episodes batched as one by one, under the full cadence
    and under sparse ones (what a task's runs tell their policies)."""
    from lhopt_dsl.agent.actions import ActionSpace
    from lhopt_dsl.agent.policy import ActorCritic
    from lhopt_dsl.agent.rollout import task_rollouts
    from runners.meta_train import policy_shape

    cfg = smoke(family)
    if family == "transformer":  # its sampled initial learning rate diverges: chaotic, so rounding decides
        cfg = TaskConfig.model_validate({**cfg.model_dump(), "hparams": {**cfg.hparams.model_dump(), "lr": 0.01}})
    torch.manual_seed(3)
    policy, ema = ActorCritic(policy_shape(SMOKE)), ActorCritic(policy_shape(SMOKE))
    for net in (policy, ema):  # non-trivial normalisers, as after some training
        net.policy_norm(torch.randn(64, net.shape.policy_size).numpy() * 3)
        net.value_norm(torch.randn(64, net.shape.value_size).numpy() * 3)
    # Untrained policies drive learning rates to where training is chaotic and rounding decides the
    # curve (one model with fused vs explicit attention differs as much); favour mild actions.
    identity = ActionSpace(SMOKE.hparams).identity()
    offsets = np.concatenate([[0], np.cumsum(ema.shape.nvec)[:-1]])
    with torch.no_grad():
        policy.actor.head.bias[torch.as_tensor(offsets[:-1] + identity[:-1])] += 1.0  # restarts stay random
        ema.actor.head.bias[torch.as_tensor(offsets + identity)] += 1.0
    args = dict(rollouts=3, seed=11, cadence=cadence, critic=policy)
    seq = task_rollouts(cfg, policy, ema, SMOKE.hparams, population=False, **args)
    pop = task_rollouts(cfg, policy, ema, SMOKE.hparams, population=True, **args)
    assert pop.population and not seq.population and pop.cadence == seq.cadence == cadence
    assert pop.baseline_curve == pytest.approx(seq.baseline_curve, rel=1e-4, abs=1e-6)
    assert pop.initial_curve == pytest.approx(seq.initial_curve, rel=1e-4, abs=1e-6)
    assert len(pop.episodes) == len(seq.episodes) == 3
    restarts = 0
    for p, s in zip(pop.episodes, seq.episodes):
        assert (p.actions == s.actions).all()
        restarts += sum(kind != "none" for kind, _ in s.restarts)
        assert p.restarts == s.restarts
        assert p.valid_curve == pytest.approx(s.valid_curve, rel=1e-4, abs=1e-6)
        assert p.rewards == pytest.approx(s.rewards, rel=1e-3, abs=1e-4)
        assert p.logprobs == pytest.approx(s.logprobs, rel=1e-4, abs=1e-5)
        assert p.values == pytest.approx(s.values, rel=1e-3, abs=1e-4)
        assert p.raw_policy == pytest.approx(s.raw_policy, rel=1e-3, abs=1e-3)
        assert p.raw_value == pytest.approx(s.raw_value, rel=1e-3, abs=1e-3)
        assert p.policy_obs == pytest.approx(s.policy_obs, rel=1e-3, abs=1e-3)
        assert p.final_reward == pytest.approx(s.final_reward, rel=1e-3, abs=1e-4)
        assert p.reward_vs_initial == pytest.approx(s.reward_vs_initial, rel=1e-3, abs=1e-4)
        for hp, hs in zip(p.hparams, s.hparams):
            assert hp == pytest.approx(hs, rel=1e-9)
    assert restarts > 0  # the random policy saves, loads and swaps checkpoints


@pytest.mark.parametrize("family", ["mlp", "nqm"])
def test_adamw_space_population_rollouts_equal_one_at_a_time_rollouts(family):
    """In the AdamW space (AdamW's bias correction, four controlled hyperparameters, no restarts)
    the batched rollouts of a task equal the one-by-one ones."""
    from lhopt_dsl.agent.policy import ActorCritic
    from lhopt_dsl.agent.rollout import task_rollouts
    from runners.meta_train import policy_shape

    spec = load_spec(SPECS / "smoke_adamw.yaml")
    cfg = next(c for c in (sample(spec, s) for s in range(200)) if c.family == family)
    torch.manual_seed(3)
    policy, ema = ActorCritic(policy_shape(spec)), ActorCritic(policy_shape(spec))
    args = dict(rollouts=2, seed=11, critic=policy)
    seq = task_rollouts(cfg, policy, ema, spec.hparams, population=False, **args)
    pop = task_rollouts(cfg, policy, ema, spec.hparams, population=True, **args)
    assert pop.population and not seq.population
    assert pop.baseline_curve == pytest.approx(seq.baseline_curve, rel=1e-4, abs=1e-6)
    assert pop.initial_curve == pytest.approx(seq.initial_curve, rel=1e-4, abs=1e-6)
    assert len(pop.episodes) == len(seq.episodes) == 2
    for p, s in zip(pop.episodes, seq.episodes):
        assert (p.actions == s.actions).all() and p.actions.shape[1] == 5  # 4 hyperparameters + restarts
        assert len(p.hparams) == len(s.hparams) > 0
        assert p.valid_curve == pytest.approx(s.valid_curve, rel=1e-4, abs=1e-6)
        assert p.raw_value == pytest.approx(s.raw_value, rel=1e-3, abs=1e-3)
        for hp, hs in zip(p.hparams, s.hparams):
            assert list(hp) == ["lr", "weight_decay", "eps", "one_minus_beta2"] and hp == pytest.approx(hs, rel=1e-9)


def test_compiled_population_equals_eager_and_is_shared_per_architecture():
    from lhopt_dsl.tasks import population

    cfg = smoke("mlp")
    settings = _members(cfg, "adamax", True)
    cache = population.PopulationCache()  # this test's own, so that it compiles what it checks
    eager, compiled = (CIAOPopulation(compile_task(cfg), settings, compiled=c, cache=cache) for c in (False, True))
    for i in range(6):
        le, se = eager.train_step(stats=i % 3 == 2)
        lc, sc = compiled.train_step(stats=i % 3 == 2)
        assert torch.allclose(le, lc, rtol=1e-4, atol=1e-6)
        if i % 3 == 2:  # statistics were asked for: one dict per member from both, or the loop checks nothing
            assert len(se) == len(sc) == len(settings)
        for a, b in zip(se or [], sc or []):
            assert all(close(a[n], b[n], rel=2e-3, abs_=2e-4) for n in STAT_NAMES)
    assert torch.allclose(eager.evaluate(eager.task.valid_batches), compiled.evaluate(compiled.task.valid_batches),
                          rtol=1e-4, atol=1e-6)  # fmt: skip
    kernels = compiled._grads
    again = CIAOPopulation(compile_task(smoke("mlp")), settings, compiled=True, cache=cache)  # same architecture
    assert again._grads == kernels and len(cache.kernels) >= 1  # ... and the same kernels: no recompile
    shared = population.SHARED_CACHE.kernels.values()  # nothing of this test's leaks into the process:
    assert not any(mine is theirs for mine in cache.kernels.values() for theirs in shared)  # its kernels,
    assert not torch._dynamo.config.allow_rnn  # and the switch Dynamo needs for the models' recurrent layers


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_population_leaves_the_callers_model_as_it_was(family):
    """A population runs its own copy of the model in the forms vmap batches; the caller's model keeps
    its fused kernels, its mode and its weights, and the population's results do not depend on them."""
    from lhopt_dsl.tasks.models import use_batchable_forms

    cfg = smoke(family)
    task = compile_task(cfg)
    before = {n: p.detach().clone() for n, p in task.model.state_dict().items()}
    task.model.eval()
    pop = CIAOPopulation(task, _members(cfg, "adamax", True)[:2])
    pop.train_step(stats=True)
    pop.evaluate(task.valid_batches)
    assert not task.model.training
    for module in task.model.modules():  # its fused kernels were never switched to the explicit forms ...
        assert not getattr(module, "unrolled", False) and not getattr(module, "explicit_attention", False)
    assert use_batchable_forms(task.model, False)  # ... which it has
    assert all(torch.equal(p, before[n]) for n, p in task.model.state_dict().items())


def test_a_diverging_member_leaves_the_others_alone():
    cfg = smoke("mlp")
    base = ciao_kwargs(cfg.hparams)
    pop = CIAOPopulation(compile_task(cfg), [base, {**base, "lr": 1e6, "use_lamb": True}])
    pop.hp["lr"][1] = 1e6  # far past stability: this member's weights overflow
    task = compile_task(cfg)
    opt = CIAO(task.params, **base)
    for i in range(30):
        losses, stats = pop.train_step(stats=i % 4 == 3)
        loss = task.train_loss(task.next_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert close(float(loss.detach()), float(losses[0]))
    valid = pop.evaluate(pop.task.valid_batches)
    assert not math.isfinite(float(valid[1])) or float(valid[1]) > 10 * float(valid[0])
    assert close(float(valid[0]), task.valid_loss())


def test_set_hparams_checks_values():
    cfg = smoke("nqm")
    pop = CIAOPopulation(compile_task(cfg), [ciao_kwargs(cfg.hparams)] * 2)
    with pytest.raises(ValueError, match="one_minus_beta1"):
        pop.set_hparams(0, {"one_minus_beta1": 1.5})
    with pytest.raises(KeyError, match="denominator"):
        pop.set_hparams(0, {"denominator": 1.0})
    pop.set_hparams(1, {"lr": 0.5})
    assert pop.hparams(1)["lr"] == 0.5 and pop.hparams(0)["lr"] == cfg.hparams.lr


def test_population_pays_follows_the_measured_rule():
    from lhopt_dsl.tasks import estimate_cost
    from lhopt_dsl.tasks.population import (
        MAX_FLOPS_FEW, MAX_FLOPS_MANY, MAX_STEP_ELEMENTS_MANY, member_step_elements, population_pays,
    )  # fmt: skip

    tiny, mid = smoke("mlp"), smoke("transformer")  # about 0.16 and 17 MFLOP per step, small activations
    assert population_pays(tiny, 35) and population_pays(tiny, 6)
    assert population_pays(mid, 35) and population_pays(mid, 35, compiled=True) and population_pays(mid, 6)
    cnns = [sample(load_spec(SPECS / "families" / "cnn.yaml"), s) for s in range(80)]
    flops = lambda c: estimate_cost(c).flops_per_step  # noqa: E731
    mid_flops = lambda c: MAX_FLOPS_FEW < flops(c) <= MAX_FLOPS_MANY  # noqa: E731
    big = next(c for c in cnns if member_step_elements(c) > MAX_STEP_ELEMENTS_MANY and mid_flops(c))
    assert not population_pays(big, 35) and not population_pays(big, 6, compiled=True) and not population_pays(big, 6)
    assert population_pays(big, 35, device="cuda")  # on GPUs populations always pay
    small = next(c for c in cnns if member_step_elements(c) <= MAX_STEP_ELEMENTS_MANY and mid_flops(c))
    assert population_pays(small, 35) and not population_pays(small, 6)
    heavy = next(c for c in cnns if member_step_elements(c) <= MAX_STEP_ELEMENTS_MANY and flops(c) > MAX_FLOPS_MANY)
    assert not population_pays(heavy, 35)


# --- populations of Transformers and CNNs, their plans, and the batchable forms they use ------------


def family_task(family: str, **task) -> TaskConfig:
    """A task of ``family`` (from its spec under task_specs/families) with ``task``'s settings."""
    cfg = sample(load_spec(SPECS / "families" / f"{family}.yaml"), 0)
    return TaskConfig.model_validate({**cfg.model_dump(), "task": {**cfg.task.model_dump(), **task}})


RUN = {"inner_steps": 30, "outer_steps": 3}
TRANSFORMERS = {
    "pre-learned": dict(dataset="markov1", d_model=32, num_layers=2, num_heads=2, ff_mult=2, seq_len=16,
                        norm_position="pre", positional="learned", batch_size=8),
    "post-sinusoidal": dict(dataset="pcfg", d_model=16, num_layers=1, num_heads=4, ff_mult=1, seq_len=32,
                            norm_position="post", positional="sinusoidal", batch_size=4),
}  # fmt: skip
CNNS = {
    "layer-prelu-stride": dict(dataset="digits", channels=(4, 8), kernel_size=3, pooling="stride", activation="prelu",
                               norm="layer", batch_size=16),
    "max-elu-k5": dict(dataset="digits", channels=(6,), kernel_size=5, pooling="max", activation="elu", norm="none",
                       batch_size=16),
    "avg-3-layers": dict(dataset="digits", channels=(4, 4, 4), kernel_size=3, pooling="avg",
                         activation="very_leaky_relu", norm="layer", batch_size=8),
}  # fmt: skip
CASES = [("transformer", k, v) for k, v in TRANSFORMERS.items()] + [("cnn", k, v) for k, v in CNNS.items()]
GRID = [Schedule(lr=lr, shape=shape) for lr in (1e-3, 1e-2) for shape in ("constant", "cosine")]


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, whatever else shares the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family,name,task", CASES, ids=[f"{f}-{n}" for f, n, _ in CASES])
def test_transformer_and_cnn_populations_equal_sequential_runs(one_thread, family, name, task):
    """Each member's training, validation and test losses over a few dozen steps equal its own
    one-model run (fused attention, torch's convolutions) to float32 reassociation."""
    cfg = family_task(family, **task, **RUN)
    curves = run_population(cfg, GRID, evaluations=3)
    assert curves is not None
    for schedule, curve in zip(GRID, curves):
        ref = run_schedule(cfg, schedule, evaluations=3)
        assert curve.steps == ref.steps
        assert curve.train_loss == pytest.approx(ref.train_loss, rel=1e-4, abs=1e-6), schedule.name
        assert curve.valid_loss == pytest.approx(ref.valid_loss, rel=1e-4, abs=1e-6), schedule.name
        assert curve.test_curve == pytest.approx(ref.test_curve, rel=1e-4, abs=1e-6), schedule.name
    assert len({round(c.valid_loss[-1], 6) for c in curves}) == len(GRID)  # the members really differ


@pytest.mark.parametrize("family,name,task", [CASES[0], CASES[2]], ids=["transformer", "cnn"])
def test_groups_and_evaluation_chunks_do_not_change_a_population(one_thread, monkeypatch, family, name, task):
    """Gradients and CIAO's updates in uneven groups of members, and evaluation in chunks of examples
    or member by member, give every member the losses and statistics of the population in one piece."""
    from lhopt_dsl.tasks import population
    from lhopt_dsl.tasks.population import Plan

    cfg = family_task(family, **task, **RUN)
    base = ciao_kwargs(cfg.hparams)  # LAMB and clipping on: per-tensor and per-member norms
    factors, betas = (0.3, 0.5, 1, 1, 2, 3, 5), (0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1)
    settings = [{**base, "lr": base["lr"] * f, "one_minus_beta1": b} for f, b in zip(factors, betas)]
    whole = ((0, 7),)
    plans = [Plan(whole, whole, 0, False), Plan(((0, 3), (3, 5), (5, 6), (6, 7)), ((0, 2), (2, 7)), 5, False),
             Plan(((0, 1), (1, 7)), tuple((i, i + 1) for i in range(7)), 0, True)]  # fmt: skip
    runs = []
    for p in plans:
        monkeypatch.setattr(population, "plan", lambda *args, p=p, **kwargs: p)
        pop = CIAOPopulation(compile_task(cfg), settings)
        steps = [pop.train_step(stats=i % 4 == 3) for i in range(12)]
        losses = torch.stack([loss for loss, _ in steps])
        stats = torch.tensor([[s[n] for s in st for n in STAT_NAMES] for _, st in steps if st], dtype=torch.float64)
        runs.append((losses, stats, pop.evaluate(pop.task.valid_batches), pop.evaluate(pop.task.test_batches)))
    for run in runs[1:]:
        for got, want in zip(run, runs[0]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("family", ["transformer", "cnn", "mlp", "rnn", "nqm"])
def test_plan_keeps_batched_calls_within_the_working_set(monkeypatch, family):
    from lhopt_dsl.tasks import population
    from lhopt_dsl.tasks.population import UPDATE_ARRAYS, UPDATE_ELEMENTS, member_step_elements, plan

    settings = {"transformer": TRANSFORMERS["pre-learned"], "cnn": CNNS["avg-3-layers"]}.get(family, {})
    cfg = family_task(family, **settings)
    params = compile_task(cfg).num_params
    per_member = member_step_elements(cfg)
    assert per_member > 2 * params  # activations besides parameters and gradients

    def contiguous(groups, k=35):
        sizes = [b - a for a, b in groups]
        assert groups[0][0] == 0 and groups[-1][1] == k and all(x[1] == y[0] for x, y in zip(groups, groups[1:]))
        assert max(sizes) - min(sizes) <= 1
        return max(sizes), len(groups)

    for budget in (1, 3 * per_member, 10 * per_member, 10**12):
        monkeypatch.setitem(population.WORKING_SET, "cpu", budget)
        p = plan(cfg, 35, "cpu", fused_kernels=family in ("transformer", "rnn"), params=params)
        size, count = contiguous(p.groups)
        assert size == 1 or size * per_member <= budget
        assert count == -(-35 // max(1, min(35, budget // per_member)))  # no more groups than needed
        size, _ = contiguous(p.update_groups)
        assert size == 1 or size * UPDATE_ARRAYS * params <= UPDATE_ELEMENTS
        if family == "nqm":
            assert p.eval_chunk == 0  # its evaluation batch is the exact loss, not examples
        else:
            assert p.eval_chunk == 1 or 35 * p.eval_chunk * per_member / cfg.task.batch_size <= budget
        assert p.evaluate_members == (family in ("transformer", "rnn"))
    gpu = plan(cfg, 35, "cuda", fused_kernels=True, params=params)
    assert not gpu.evaluate_members and gpu.update_groups == ((0, 35),)  # GPUs batch evaluations and updates


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unrolled_rnn_equals_torchs_fused_kernel(cell):
    from lhopt_dsl.tasks.models import unrolled_rnn

    torch.manual_seed(0)
    rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](3, 8, 2, batch_first=True)
    x = torch.randn(5, 7, 3)
    fused = rnn(x)[0]
    g_fused = torch.autograd.grad(fused.square().sum(), list(rnn.parameters()))
    mine = unrolled_rnn(rnn, x)
    g_mine = torch.autograd.grad(mine.square().sum(), list(rnn.parameters()))
    torch.testing.assert_close(mine, fused, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_mine, g_fused):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_explicit_attention_equals_the_fused_kernel(pre_norm):
    from lhopt_dsl.tasks.models import Block, use_batchable_forms

    torch.manual_seed(0)
    block = Block(16, 4, 2, pre_norm)
    x = torch.randn(3, 9, 16)
    fused = block(x)
    assert use_batchable_forms(block) and block.explicit_attention
    torch.testing.assert_close(block(x), fused, rtol=1e-5, atol=1e-6)
    assert use_batchable_forms(block, False) and not block.explicit_attention
    assert not use_batchable_forms(torch.nn.Linear(2, 2))  # nothing to switch
