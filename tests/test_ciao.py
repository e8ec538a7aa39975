"""CIAO: reference vs foreach, equivalence with AdamW, state round-trip, validation, statistics."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from lhopt_dsl.optim import CIAO, STAT_NAMES
from lhopt_dsl.optim.stats import cdf, logit_cdf
from lhopt_dsl.spec import AdamWSpace


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


DATA = torch.Generator().manual_seed(1)
X = torch.randn(256, 10, generator=DATA)
Y = torch.randint(0, 4, (256,), generator=DATA)


def train(model, opt, steps=30, schedule=None, stats_every=4):
    for i in range(steps):
        if schedule:
            schedule(opt, i)
        idx = torch.arange(i * 16, i * 16 + 32) % 256
        loss = F.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        if isinstance(opt, CIAO):
            opt.step(stats=(i % stats_every == stats_every - 1), loss=loss.item())
        else:
            opt.step()
    return model


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def changing_hparams(opt, i):
    # A policy acting mid-run: every hyperparameter changes between steps.
    if i in (7, 19):
        for g in opt.param_groups:
            g["lr"] *= 1.7
            g["one_minus_beta1"] = min(1.0, g["one_minus_beta1"] * 2)
            g["one_minus_beta2"] *= 0.5
            g["eps"] *= 2
            g["weight_decay"] *= 0.5
            g["grad_clip_fraction"] = 0.5
            g["one_minus_beta_gradclip"] *= 2
            g["one_minus_beta_lamb"] *= 1.5


CONFIGS = [
    {},
    {"denominator": "adam"},
    {"use_lamb": False},
    {"use_clip": False},
    {"denominator": "adam", "use_lamb": False, "use_clip": False, "weight_decay": 0.0},
    {"lr": 0.05, "lamb_min_trust": 0.5},
    {"bias_correction": "power"},
]


@pytest.mark.parametrize("hp", CONFIGS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "defaults")
@pytest.mark.parametrize("schedule", [None, changing_hparams], ids=["fixed", "changing"])
def test_foreach_matches_reference(hp, schedule):
    a, b = make_model(), make_model()
    oa, ob = CIAO(a.parameters(), foreach=False, **hp), CIAO(b.parameters(), foreach=True, **hp)
    train(a, oa, schedule=schedule)
    train(b, ob, schedule=schedule)
    assert max_diff(a, b) < 1e-6
    for name in STAT_NAMES:
        x, y = oa.stats[name], ob.stats[name]
        assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), name


@pytest.mark.parametrize("hp", CONFIGS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "defaults")
def test_compiled_matches_reference(hp):
    """The torch.compiled step (one kernel set per layout, coefficients as inputs) equals the
    reference in its update and its statistics while every hyperparameter changes mid-run, and the
    policy's changes never recompile it: one graph with statistics and one without."""
    torch._dynamo.utils.counters.clear()
    a, b = make_model(), make_model()
    oa, ob = CIAO(a.parameters(), foreach=False, **hp), CIAO(b.parameters(), compiled=True, **hp)
    train(a, oa, schedule=changing_hparams)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="CIAO: torch.compile failed")  # the fallback would pass
        train(b, ob, schedule=changing_hparams)
    assert max_diff(a, b) < 1e-6
    for name in STAT_NAMES:
        x, y = oa.stats[name], ob.stats[name]
        assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), name
    assert len(ob._kernels) == 2 and torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("hp", [{}, {"denominator": "adam", "use_lamb": False}], ids=["defaults", "adam"])
def test_statistics_of_large_tensors_match_reference(hp):
    """Tensors past the fast path's partial sums (pieces of 4,096 elements and a remainder, a
    transposed view): the multi-tensor and compiled paths' reductions in float32 with a float64
    finish give the reference's float64 statistics."""
    shapes = [(3 * 4096 + 17,), (300, 200), (64, 64)]
    stats = []
    for path in ({"foreach": False}, {"foreach": True}, {"compiled": True}):
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)) + 0.1)
                  for i, s in enumerate(shapes)]  # fmt: skip
        params[2] = torch.nn.Parameter(params[2].detach().t())  # not contiguous
        opt = CIAO(params, **path, **hp)
        for step in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + step)) * 1e-2 + 1e-3
            opt.step(stats=True, loss=0.5)
        stats.append(opt.stats)
    for fast in stats[1:]:
        for name in STAT_NAMES:
            x, y = stats[0][name], fast[name]
            assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7), (name, x, y)


@pytest.mark.parametrize("per_tensor", [True, False], ids=["lamb", "no-lamb"])
@pytest.mark.parametrize("adam", [True, False], ids=["adam", "adamax"])
def test_batched_statistics_reductions_equal_one_reduction_per_list(per_tensor, adam):
    """The multi-tensor path's statistics reductions (all lists' norms in one call, the update's
    sums of large tensors scaled by linearity, never copied scaled) equal the reductions one list
    at a time on a scaled copy (as the other layouts take them): bit for bit on tensors of at most
    4,096 elements, to float32 round-off on larger ones (pieces and a remainder, a transposed view)."""
    from lhopt_dsl.optim.functional import TensorLists
    from lhopt_dsl.optim.stats import stat_sums

    class OneListAtATime(TensorLists):
        batched_stats = False

    for shapes in ([(32, 10), (32,), (4, 32), (4,), (64, 64)], [(3 * 4096 + 17,), (8,), (300, 200), (5, 7)]):
        gen = torch.Generator().manual_seed(len(shapes[0]))
        g, u, p, m, v, ema = ([torch.randn(s, generator=gen) for s in shapes] for _ in range(6))
        u[-1], v = u[-1].t().contiguous().t(), [t.abs() for t in v]  # a transposed view; a second moment
        trust = torch.rand(len(shapes), generator=gen) + 0.5 if per_tensor else None
        scale = trust * 1.37 if per_tensor else 1.37
        c, numels = {"bc2": 0.3, "eps": 0.5, "lr": 0.01}, torch.tensor([math.prod(s) for s in shapes], dtype=torch.float64)
        fast, plain = (stat_sums(ops, g, u, scale, trust, p, m, v, [t.clone() for t in ema], c, adam=adam,
                                 numels=numels, clipped=torch.tensor(2.0)) for ops in (TensorLists(True), OneListAtATime()))  # fmt: skip
        for name in plain:
            if max(numels) <= 4096:
                assert torch.equal(fast[name], plain[name]), name
            else:
                assert math.isclose(float(fast[name]), float(plain[name]), rel_tol=1e-6), name


def test_compiled_statistics_never_change_the_run():
    """As below, for the compiled step: its kernels with and without statistics move the
    parameters bit for bit alike."""
    a, b = make_model(), make_model()
    oa, ob = CIAO(a.parameters(), compiled=True), CIAO(b.parameters(), compiled=True)
    train(a, oa, schedule=changing_hparams, stats_every=1)
    train(b, ob, schedule=changing_hparams, stats_every=10**9)
    assert oa.stats is not None and ob.stats is None
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_compiled_falls_back_when_compiling_fails(monkeypatch):
    """A run never dies of its speed-up: a step whose compile fails warns and runs the
    multi-tensor path, with the same result."""
    from lhopt_dsl.optim import functional

    def broken(fn, **kw):
        def fail(*args):
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(functional.torch, "compile", broken)
    a, b = make_model(), make_model()
    oa, ob = CIAO(a.parameters()), CIAO(b.parameters(), compiled=True)
    train(a, oa)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        train(b, ob)
    assert max_diff(a, b) == 0


@pytest.mark.parametrize("hp", CONFIGS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "defaults")
@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
def test_statistics_never_change_the_run(hp, foreach):
    """Statistics are observations: a run that computes them at every step moves its parameters
    bit for bit as one that never does, on the one-model layout and on the population's rows."""
    a, b = make_model(), make_model()
    oa, ob = CIAO(a.parameters(), foreach=foreach, **hp), CIAO(b.parameters(), foreach=foreach, **hp)
    train(a, oa, schedule=changing_hparams, stats_every=1)
    train(b, ob, schedule=changing_hparams, stats_every=10**9)
    assert oa.stats is not None and ob.stats is None
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_statistics_never_change_a_populations_run():
    from lhopt_dsl.tasks import compile_task
    from lhopt_dsl.tasks.population import CIAOPopulation
    from lhopt_dsl.spec.sample import sample
    from lhopt_dsl.spec import load_spec
    from lhopt_dsl.tasks.training import ciao_kwargs

    from .conftest import SPECS

    spec = load_spec(SPECS / "smoke.yaml")
    cfg = next(c for c in (sample(spec, s) for s in range(50)) if c.family == "mlp")
    runs = []
    for every in (1, 10**9):
        pop = CIAOPopulation(compile_task(cfg), [ciao_kwargs(cfg.hparams), {**ciao_kwargs(cfg.hparams), "lr": 3e-3}])
        for i in range(12):
            pop.train_step(stats=i % every == 0)
        runs.append(pop.flat.clone())
    assert torch.equal(runs[0], runs[1])


def test_multiple_param_groups_match():
    a, b = make_model(), make_model()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[3].parameters(), "lr": 3e-3, "use_lamb": False}]  # noqa: E731
    oa = CIAO(groups(a), foreach=False)
    ob = CIAO(groups(b), foreach=True)
    train(a, oa)
    train(b, ob)
    assert max_diff(a, b) < 1e-6


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_adamw_with_lamb_and_clipping_off(wd):
    a, b = make_model(), make_model()
    adamw = torch.optim.AdamW(a.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, foreach=True)
    ciao = CIAO(b.parameters(), lr=1e-2, one_minus_beta1=0.1, one_minus_beta2=0.01, eps=1e-8, weight_decay=wd,
                denominator="adam", use_lamb=False, use_clip=False)
    for step in range(60):
        train(a, adamw, steps=1)
        train(b, ciao, steps=1)
        assert max_diff(a, b) < 1e-5 * (1 + step / 10), step


def adamw_space_run(bias_correction: str, foreach: bool, steps: int = 60) -> float:
    """Largest parameter difference between CIAO in the AdamW space and torch.optim.AdamW, trained
    side by side while every hyperparameter the AdamW space's policy controls changes mid-run."""
    a, b = make_model(), make_model()
    start = AdamWSpace().initial()  # AdamW's defaults: lr 1e-3, eps 1e-8, beta2 0.999, weight decay 1e-2
    adamw = torch.optim.AdamW(a.parameters(), lr=start.lr, betas=(0.9, 1 - start.one_minus_beta2), eps=start.eps,
                              weight_decay=start.weight_decay, foreach=foreach)  # fmt: skip
    ciao = CIAO(b.parameters(), foreach=foreach, **{**start.ciao_kwargs(), "bias_correction": bias_correction})
    worst = 0.0
    for step in range(steps):
        if step in (10, 25, 40):  # a policy acting: AdamW's values in AdamW's units
            factor = {10: 2.0, 25: 0.5, 40: 4.0}[step]
            for g in ciao.param_groups:
                g.update(lr=g["lr"] * factor, eps=g["eps"] * factor, weight_decay=g["weight_decay"] / factor,
                         one_minus_beta2=g["one_minus_beta2"] * factor)  # fmt: skip
            for g in adamw.param_groups:
                ref = ciao.param_groups[0]
                g.update(lr=ref["lr"], eps=ref["eps"], weight_decay=ref["weight_decay"],
                         betas=(g["betas"][0], 1.0 - ref["one_minus_beta2"]))  # fmt: skip
        train(a, adamw, steps=1)
        train(b, ciao, steps=1)
        worst = max(worst, max_diff(a, b))
    return worst


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
def test_adamw_space_is_adamw_step_for_step_with_changing_hyperparameters(foreach):
    assert adamw_space_run("power", foreach) < 1e-5


def test_cumulative_bias_correction_is_not_adamw_once_beta2_changes():
    """Why the AdamW space uses AdamW's bias correction: CIAO's default (the running product of
    the betas used) departs from AdamW's ``1 - beta2**t`` as soon as beta2 changes."""
    assert adamw_space_run("product", foreach=True) > 1e-3


def test_defaults_follow_table_7():
    opt = CIAO(make_model().parameters())
    g = opt.param_groups[0]
    assert (g["lr"], g["one_minus_beta1"], g["one_minus_beta2"], g["eps"], g["weight_decay"]) == (1e-3, 0.1, 1e-2, 1e-6, 1e-2)
    assert (g["grad_clip_fraction"], g["one_minus_beta_gradclip"], g["denominator"]) == (0.8, 1e-2, "adamax")
    assert (g["use_lamb"], g["lamb_min_trust"], g["one_minus_beta_lamb"]) == (True, 1e-3, 0.05)


def test_state_dict_round_trip_continues_identically():
    a = make_model()
    oa = CIAO(a.parameters())
    train(a, oa, steps=10)
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(oa.state_dict())
    train(a, oa, steps=10)
    b = make_model(seed=5)
    b.load_state_dict(saved_model)
    ob = CIAO(b.parameters())
    ob.load_state_dict(saved_opt)
    train(b, ob, steps=10)
    # b replays steps 0..9 of the data again, so compare against a fresh replay of a from the checkpoint
    c = make_model(seed=6)
    c.load_state_dict(saved_model)
    oc = CIAO(c.parameters(), foreach=False)
    oc.load_state_dict(saved_opt)
    train(c, oc, steps=10)
    assert max_diff(b, c) < 1e-6
    assert ob.param_groups[0]["_ciao"]["step"] == 20


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"lr": -1.0}, "lr=-1.0"),
        ({"one_minus_beta1": 0.0}, "one_minus_beta1=0.0"),
        ({"one_minus_beta2": 1.5}, "one_minus_beta2=1.5"),
        ({"grad_clip_fraction": 0.0}, "grad_clip_fraction=0.0"),
        ({"eps": float("nan")}, "eps=nan"),
        ({"denominator": "sgd"}, "denominator='sgd'"),
        ({"use_lamb": "yes"}, "use_lamb='yes'"),
    ],
)
def test_invalid_hyperparameters_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        CIAO(make_model().parameters(), **bad)


def test_invalid_value_set_between_steps_is_caught():
    m = make_model()
    opt = CIAO(m.parameters())
    opt.param_groups[0]["one_minus_beta2"] = 0.0
    F.cross_entropy(m(X), Y).backward()
    with pytest.raises(ValueError, match="one_minus_beta2=0.0"):
        opt.step()


def test_unknown_hyperparameter():
    with pytest.raises(TypeError, match="betas"):
        CIAO(make_model().parameters(), betas=(0.9, 0.999))


@pytest.mark.parametrize("foreach", [False, True])
def test_first_step_statistics_against_direct_computation(foreach):
    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.randn(50))
    g = torch.randn(50)
    p.grad = g.clone()
    p0 = p.detach().clone()
    opt = CIAO([p], foreach=foreach, lr=0.1, weight_decay=0.01, eps=1e-6)
    opt.step(stats=True, loss=2.0)
    s = opt.stats
    # Step 1: G = |g| so the gradient is clipped to 0.8 |g|; m_hat = g'; Adamax u = |g'|.
    gc = 0.8 * g
    direction = gc / (gc.abs() + 1e-6) + 0.01 * p0
    trust = p0.norm() / direction.norm()  # the bias-corrected EMA of |update| equals |update| at step 1
    update = trust * direction
    assert torch.allclose(p.detach(), p0 - 0.1 * update, atol=1e-6)
    assert s["frac_clipped"] == 1.0
    assert s["frac_sqrt_v_ge_eps"] == float((gc.abs() >= 1e-6).float().mean())
    assert math.isclose(s["update_magnitude"], float(update.abs().mean()), rel_tol=1e-5)
    assert math.isclose(s["log_update_param_ratio"], math.log(0.1 * update.norm() / p0.norm()), rel_tol=1e-5)
    assert math.isclose(s["log_lamb_trust"], math.log(trust), rel_tol=1e-5)
    assert math.isclose(s["cos_grad_momentum"], 1.0, rel_tol=1e-6)
    cos_gu = float(F.cosine_similarity(gc, update, dim=0))
    cos_gp = float(F.cosine_similarity(gc, p0, dim=0))
    assert math.isclose(s["cos_grad_update"], cos_gu, rel_tol=1e-5)
    assert math.isclose(s["cos_grad_param"], cos_gp, rel_tol=1e-5)
    assert math.isclose(s["cdf_cos_grad_param"], 0.5 * (1 + math.erf(cos_gp * math.sqrt(50) / math.sqrt(2))), rel_tol=1e-5)
    assert math.isclose(s["logit_cdf_cos_grad_update"], logit_cdf(cos_gu * math.sqrt(50)), rel_tol=1e-6)
    assert math.isclose(s["log_scale"], math.log(gc.norm() * p0.norm() / 2.0), rel_tol=1e-5)
    assert math.isnan(s["log_noise_scale"])  # undefined after one draw


def test_logit_cdf_is_accurate_in_the_tails():
    for x in (-3.0, 0.0, 1.5, 6.0):
        p = cdf(x)
        assert math.isclose(logit_cdf(x), math.log(p / (1 - p)), rel_tol=1e-6, abs_tol=1e-9)
    assert math.isfinite(logit_cdf(60.0)) and logit_cdf(60.0) > 1000


def test_noise_scale_tracks_gradient_noise():
    """tr(Sigma_B)/|G|^2 estimated from the statistics steps recovers a known ratio."""
    torch.manual_seed(0)
    dim, signal = 2000, torch.ones(2000) * 0.1  # |G|^2 = 20
    for noise_std, expected in ((0.1, 1.0), (0.3, 9.0)):  # tr(Sigma_B) = dim * std^2
        p = torch.nn.Parameter(torch.zeros(dim))
        opt = CIAO([p], lr=0.0, use_clip=False)
        for _ in range(400):
            p.grad = signal + noise_std * torch.randn(dim)
            opt.step(stats=True)
        assert abs(opt.stats["log_noise_scale"] - math.log(expected)) < 0.35


def test_clipping_fraction_counts_steps_between_statistics():
    p = torch.nn.Parameter(torch.ones(4))
    opt = CIAO([p], lr=0.0)
    norms = [1.0, 1.0, 1.0, 5.0]
    for i, n in enumerate(norms):
        p.grad = torch.full((4,), n / 2)
        opt.step(stats=(i == 3))
    # every step clips here: |g| > 0.8 * G whenever |g| >= the decayed maximum
    assert opt.stats["frac_clipped"] == 1.0
    p.grad = torch.full((4,), 0.1)
    for i in range(4):
        opt.step(stats=(i == 3))
    assert opt.stats["frac_clipped"] == 0.0  # a small gradient under 0.8 * G is never clipped


def test_nan_gradient_does_not_poison_the_moving_maximum():
    p = torch.nn.Parameter(torch.ones(3))
    opt = CIAO([p])
    p.grad = torch.ones(3)
    opt.step()
    before = opt.param_groups[0]["_ciao"]["grad_max"].clone()
    p.grad = torch.tensor([float("nan"), 1.0, 1.0])
    opt.step()
    assert torch.equal(opt.param_groups[0]["_ciao"]["grad_max"], before)


@pytest.mark.parametrize("hp", CONFIGS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "defaults")
def test_flat_rows_run_the_optimizers_maths(hp):
    """The batched layout (K members' tensors in the rows of (K, N) buffers, (K, 1) coefficients,
    as populations use it) steps each member as CIAO steps that member alone, statistics included."""
    from lhopt_dsl.optim.functional import COUNTERS, DEFAULTS, NUMBERS, advance, coefficients, flat_step_
    from lhopt_dsl.optim.stats import SUM_NAMES, statistics

    members = [{**DEFAULTS, **hp}, {**DEFAULTS, **hp, "lr": 2 * DEFAULTS["lr"], "one_minus_beta1": 0.3, "eps": 1e-3}]
    models = [make_model() for _ in members]
    opts = [CIAO(m.parameters(), **s) for m, s in zip(models, members)]
    params = list(models[0].parameters())
    numels = [p.numel() for p in params]
    offsets = [0, *torch.tensor(numels).cumsum(0).tolist()]
    segments = torch.repeat_interleave(torch.arange(len(params)), torch.tensor(numels))
    k = len(members)
    flat = torch.cat([p.detach().reshape(-1) for p in params]).repeat(k, 1)
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    state = {"grad_max": torch.zeros(k, 1), "clipped": torch.zeros(k, 1),
             "update_norm_ema": torch.zeros(k, len(params))}  # fmt: skip
    grad_ema = torch.zeros_like(flat)
    hps = {n: torch.tensor([float(s[n]) for s in members], dtype=torch.float64) for n in NUMBERS}
    counters = {n: torch.full((k,), float(x), dtype=torch.float64) for n, x in COUNTERS.items()}
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        grads = [torch.randn(p.shape, generator=gen) * (1 + step % 3) for p in params]
        want = step % 4 == 3
        advance(counters, hps, members[0]["bias_correction"])
        c = {n: x.float().unsqueeze(1) for n, x in coefficients(hps, counters).items()}
        g = torch.cat([x.reshape(-1) for x in grads]).repeat(k, 1)
        sums = flat_step_(flat, g, m, v, state, c, members[0], offsets, segments,
                          torch.tensor(numels, dtype=torch.float64), grad_ema if want else None)  # fmt: skip
        if want:
            steps = counters["steps_since_stats"].clone()
            counters["steps_since_stats"].zero_()
            pop_stats = statistics(dict(zip(SUM_NAMES, sums.unbind())), counters, steps=steps, numel=sum(numels),
                                   loss=torch.full((k,), 1.5, dtype=torch.float64))  # fmt: skip
        for i, (model, opt) in enumerate(zip(models, opts)):
            for p, x in zip(model.parameters(), grads):
                p.grad = x.clone()
            opt.step(stats=want, loss=1.5)
            row = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            torch.testing.assert_close(flat[i], row, rtol=1e-5, atol=1e-6)
            for name in STAT_NAMES if want else ():
                x, y = opt.stats[name], pop_stats[i][name]
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), name
