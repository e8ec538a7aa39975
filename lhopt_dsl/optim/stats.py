"""Statistics of an inner optimizer step for the policy's features (paper Appendix J.1).

Computed only on the steps that ask for them (every 4 inner steps by default), from the
gradient, momentum, second moment, update and parameters CIAO used on that step. All are unitless:
fractions, cosines, log-ratios. One model and a population of K share every formula: during the
step, :func:`stat_sums` reduces the step's tensors to a few sums per member on whatever layout the
step runs on (:mod:`lhopt_dsl.optim.functional`); on the host, :func:`statistics` advances the
noise scale's averages and turns the sums into the named statistics (:func:`stats_from_sums`).

Readings where the paper is terse, and why:

* *CDF cosine*: ``Phi(cos * sqrt(D))`` with D the number of elements: the cosine of two random
  D-dimensional vectors has standard deviation ``1/sqrt(D)``, so this is comparable across model
  sizes; its logit is computed as ``log_ndtr(x) - log_ndtr(-x)``, exact far into the tails.
* *Noise scale* (McCandlish et al. 2018): the "simple" noise scale ``B_simple = tr(Sigma)/|G|^2``
  divided by the batch size, i.e. ``tr(Sigma_B)/|G|^2``, which needs no batch size and is
  unitless. It is estimated from exponential moving averages (beta 0.9) of the gradient ``g`` and
  of ``|g|^2`` taken at the statistics steps: for n i.i.d. draws the bias-corrected averages
  satisfy ``E A = |G|^2 + tr(Sigma_B)`` and ``E |m|^2 = |G|^2 + k_n tr(Sigma_B)`` with
  ``k_n = (1-beta)(1+beta^n) / ((1+beta)(1-beta^n))``, which we solve for both unknowns.
  Undefined (NaN) after the first draw; estimates at or below zero are floored at 1e-8.
* *Log scale* (Leclerc & Madry 2020 discuss the regimes of the loss scale): we use
  ``log(|g| |p| / |loss|)``, the relative change of the loss per relative change of the
  parameters' scale, which is invariant to rescaling the loss and (for homogeneous networks) the
  parameters. NaN when no loss is given.
"""

from __future__ import annotations

import math
from typing import Any, MutableMapping

import torch

NOISE_BETA = 0.9
STAT_NAMES: tuple[str, ...] = (
    "frac_clipped",
    "frac_sqrt_v_ge_eps",
    "update_magnitude",
    "log_scale",
    "log_update_param_ratio",
    "log_noise_scale",
    "log_lamb_trust",
    "cos_grad_momentum",
    "logit_cdf_cos_grad_momentum",
    "cos_grad_update",
    "logit_cdf_cos_grad_update",
    "cos_grad_param",
    "cdf_cos_grad_param",
)
StepStats = dict[str, float]


def mean_stats(samples: list[StepStats]) -> StepStats:
    """Average of several steps' statistics, ignoring non-finite values ({} for no samples)."""
    if not samples:
        return {}
    out = {}
    for name in STAT_NAMES:
        values = [s[name] for s in samples if math.isfinite(s[name])]
        out[name] = sum(values) / len(values) if values else float("nan")
    return out


def logit_cdf(x: float) -> float:
    """logit(Phi(x)), accurate for large |x|."""
    t = torch.tensor(x, dtype=torch.float64)
    return float(torch.special.log_ndtr(t) - torch.special.log_ndtr(-t))


def cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def noise_ratio(sq_ema: torch.Tensor, m2: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """tr(Sigma_B) / |G|^2 per member from the moving averages (module docstring).

    ``sq_ema``: EMA of |g|^2; ``m2``: |EMA of g|^2; ``count``: draws so far (all (K,) tensors).
    NaN until the second draw or when an average is not finite.
    """
    n = count.double()
    corr = 1.0 - NOISE_BETA**n
    a = sq_ema / corr
    m2 = m2 / corr**2
    k = (1.0 - NOISE_BETA) * (1.0 + NOISE_BETA**n) / ((1.0 + NOISE_BETA) * corr)
    floor = 1e-8 * torch.clamp(a, min=1e-30)
    safe = torch.where(n >= 2, 1.0 - k, torch.ones_like(k))
    trace = torch.maximum((a - m2) / safe, floor)
    signal = torch.maximum((m2 - k * a) / safe, floor)
    ok = (n >= 2) & torch.isfinite(a) & torch.isfinite(m2)
    return torch.where(ok, trace / signal, torch.full_like(a, math.nan))


def stats_from_sums(
    *, numel: int, g2: torch.Tensor, m2: torch.Tensor, u2: torch.Tensor, w2: torch.Tensor, gm: torch.Tensor,
    gu: torch.Tensor, gw: torch.Tensor, abs_u: torch.Tensor, lr_u2: torch.Tensor, big_enough: torch.Tensor,
    log_trust: torch.Tensor, clipped: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor,
    loss: torch.Tensor | None,
) -> list[StepStats]:  # fmt: skip
    """The named statistics of K members from their reductions, each a (K,) float64 tensor.

    ``g2``, ``m2``, ``u2``, ``w2``: squared norms of gradient, momentum, update and parameters;
    ``gm``, ``gu``, ``gw``: dot products of the gradient with them; ``abs_u``: sum of |update|;
    ``lr_u2``: sum over tensors of (lr |update|)^2; ``big_enough``: elements with sqrt(v) >= eps;
    ``log_trust``: sum over tensors of numel * log(trust); ``noise``: :func:`noise_ratio`.
    """
    nan = torch.full_like(g2, math.nan)
    root_d = math.sqrt(numel)

    def cos(dot: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        den = torch.sqrt(a2 * b2)
        return torch.where(den > 0, dot / torch.where(den > 0, den, torch.ones_like(den)), nan)

    def logit_cdf_t(x: torch.Tensor) -> torch.Tensor:
        return torch.special.log_ndtr(x) - torch.special.log_ndtr(-x)

    cos_gm, cos_gu, cos_gp = cos(gm, g2, m2), cos(gu, g2, u2), cos(gw, g2, w2)
    if loss is None:
        log_scale = nan
    else:
        loss = loss.double()
        log_scale = torch.where(loss != 0, torch.log(torch.sqrt(g2 * w2) / loss.abs()), nan)
    columns = {
        "frac_clipped": clipped.double() / torch.clamp(steps.double(), min=1),
        "frac_sqrt_v_ge_eps": big_enough.double() / numel,
        "update_magnitude": abs_u / numel,
        "log_scale": log_scale,
        "log_update_param_ratio": 0.5 * (torch.log(lr_u2) - torch.log(w2)),
        "log_noise_scale": torch.log(noise),
        "log_lamb_trust": log_trust / numel,
        "cos_grad_momentum": cos_gm,
        "logit_cdf_cos_grad_momentum": logit_cdf_t(cos_gm * root_d),
        "cos_grad_update": cos_gu,
        "logit_cdf_cos_grad_update": logit_cdf_t(cos_gu * root_d),
        "cos_grad_param": cos_gp,
        "cdf_cos_grad_param": torch.special.ndtr(cos_gp * root_d),
    }
    rows = torch.stack([columns[name].double().reshape(-1) for name in STAT_NAMES], 1).tolist()
    return [dict(zip(STAT_NAMES, row)) for row in rows]


#: The per-member reductions of one step that :func:`statistics` turns into the named statistics.
SUM_NAMES: tuple[str, ...] = (
    "g2", "m2", "u2", "w2", "gm", "gu", "gw", "abs_u", "lr_u2", "big_enough", "log_trust", "clipped", "noise_m2",
)  # fmt: skip


def stat_sums(
    ops: Any, g: Any, u: Any, scale: Any, trust: torch.Tensor | None, p: Any, m: Any, v: Any, grad_ema: Any, c: Any,
    *, adam: bool, numels: torch.Tensor, clipped: torch.Tensor,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The reductions of :data:`SUM_NAMES` (float64, one per member) of one CIAO step, in one pass
    over its tensors on layout ``ops`` (:mod:`lhopt_dsl.optim.functional`): gradient ``g`` (after
    clipping), the update ``u`` before its ``scale`` (per tensor where ``trust``, the per-tensor
    trust ratio, is given; else per member), parameters ``p`` before the update, moments ``m`` and
    ``v``, coefficients ``c``; ``clipped``: clipped steps since the last statistics. Advances
    ``grad_ema``, the moving average of the gradient behind the noise scale, in place (a function
    that returns it is called here).

    The reductions are those written out below on a copy of the scaled update; a layout whose
    ``batched_stats`` is true computes the same ones its own way (``stat_reductions``: fewer calls,
    no scaled copy; TensorLists' multi-tensor path), and one whose ``linear_stats`` is true takes
    the update's three sums from the unscaled update's (``scaled_sums``: the compiled step, where
    they then fuse into the loop that computes LAMB's norms of the update).
    """
    f64, per_tensor = torch.float64, trust is not None
    batched = getattr(ops, "batched_stats", False)
    linear = getattr(ops, "linear_stats", False)  # the update's sums from u's own, scaled after (no scaled copy)
    update = u if batched or linear else ops.scale(u, scale, per_tensor=per_tensor)
    grad_ema = grad_ema() if callable(grad_ema) else grad_ema  # a function: allocated when first needed
    ops.lerp_(grad_ema, g, 1.0 - NOISE_BETA)
    root = ops.sqrt(ops.div(v, c["bc2"])) if adam else v  # sqrt(v_hat), Adamax's u as it is
    if batched:
        sums = ops.stat_reductions(g, u, scale, per_tensor, p, m, grad_ema, root, c["eps"])
        u2 = sums["u2"]
    elif linear:
        u2, gu, abs_u = ops.scaled_sums(g, u, scale, per_tensor=per_tensor)
    else:
        u2 = ops.sq(update)
    log_trust = torch.zeros_like(u2) if trust is None else ops.member_sum(torch.log(trust.to(f64)) * numels)
    if batched:
        sums.update(lr_u2=c["lr"] ** 2 * u2, log_trust=log_trust, clipped=clipped)
    else:
        if not linear:
            gu, abs_u = ops.dot(g, update), ops.abs_sum(update)
        sums = {
            "g2": ops.sq(g), "m2": ops.sq(m), "u2": u2, "w2": ops.sq(p), "gm": ops.dot(g, m), "gu": gu,
            "gw": ops.dot(g, p), "abs_u": abs_u, "lr_u2": c["lr"] ** 2 * u2,
            "big_enough": ops.count_ge(root, c["eps"]), "log_trust": log_trust, "clipped": clipped,
            "noise_m2": ops.sq(grad_ema),
        }  # fmt: skip
    return {name: sums[name].to(f64) for name in SUM_NAMES}


def statistics(
    sums: dict[str, torch.Tensor], noise: MutableMapping[str, Any], *, steps: Any, numel: int, loss: torch.Tensor | None
) -> list[StepStats]:
    """The named statistics of K members from :func:`stat_sums`'s reductions, each a (K,) float64
    CPU tensor. Advances the noise scale's moving average of |g|^2 and its count, kept in ``noise``
    (``noise_sq_ema``, ``noise_count``: numbers for one model, (K,) tensors for a population);
    ``steps``: steps since the last statistics, ``numel``: elements of one member's parameters."""
    noise["noise_sq_ema"] = noise["noise_sq_ema"] * NOISE_BETA + (1.0 - NOISE_BETA) * sums["g2"]
    noise["noise_count"] = noise["noise_count"] + 1
    f64 = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    ratio = noise_ratio(f64(noise["noise_sq_ema"]), sums["noise_m2"], f64(noise["noise_count"]))
    named = {n: sums[n] for n in SUM_NAMES if n != "noise_m2"}
    return stats_from_sums(numel=numel, **named, steps=f64(steps), noise=ratio, loss=loss)
