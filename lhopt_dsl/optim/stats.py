"""Statistics of an inner optimizer step for the policy's features (paper Appendix J.1).

Computed only on the steps that ask for them (every 4 inner steps by default), from the
gradient, momentum, second moment, update and parameters CIAO used on that step. All are unitless:
fractions, cosines, log-ratios.

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
from typing import Any

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
    The one-model path (:func:`compute_stats`) and populations share these formulas.
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


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum(dtype=torch.float64) for x, y in zip(a, b))  # type: ignore[return-value]


def _sq(a: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.linalg.vector_norm(x, dtype=torch.float64) ** 2 for x in a]).sum()


def _one(x: Any) -> torch.Tensor:
    """A number or scalar tensor as a (1,) float64 CPU tensor: one member for :func:`stats_from_sums`."""
    return torch.as_tensor(x, dtype=torch.float64).detach().cpu().reshape(1)


def _noise_update(parts: list[dict[str, Any]], g2: torch.Tensor) -> torch.Tensor:
    """Advance the noise-scale moving averages kept in the optimizer's state; return the ratio."""
    emas = [e for p in parts for e in p["noise_state"]]
    grads = [g for p in parts for g in p["grads"]]
    gs = parts[0]["gs"]
    torch._foreach_lerp_(emas, grads, 1.0 - NOISE_BETA)
    gs["noise_sq_ema"] = gs.get("noise_sq_ema", 0.0) * NOISE_BETA + (1.0 - NOISE_BETA) * float(g2)
    gs["noise_count"] = gs.get("noise_count", 0) + 1
    return noise_ratio(_one(gs["noise_sq_ema"]), _one(_sq(emas)), _one(gs["noise_count"]))


def compute_stats(parts: list[dict[str, Any]], loss: float | None) -> StepStats:
    """Reduce the per-group inputs gathered by CIAO into the named statistics."""
    if not parts:
        return {name: float("nan") for name in STAT_NAMES}
    g = [x for p in parts for x in p["grads"]]
    m = [x for p in parts for x in p["momenta"]]
    u = [x for p in parts for x in p["updates"]]
    numel = sum(x.numel() for x in g)
    part_u2 = [_sq(p["updates"]) for p in parts]
    g2 = _sq(g)

    big_enough = 0
    for p in parts:
        eps, adam = p["group"]["eps"], p["group"]["denominator"] == "adam"
        for v in p["second"]:
            root = (v / p["bc2"]).sqrt() if adam else v
            big_enough += int((root >= eps).sum())
    log_trust = sum(float(torch.log(t.double())) * n for p in parts for t, n in zip(p["trusts"], p["numels"]))
    return stats_from_sums(
        numel=numel, g2=_one(g2), m2=_one(_sq(m)), u2=_one(sum(part_u2)), w2=_one(sum(p["param_sq"] for p in parts)),
        gm=_one(_dot(g, m)), gu=_one(_dot(g, u)), gw=_one(sum(p["grad_dot_param"] for p in parts)),
        abs_u=_one(sum(x.abs().sum(dtype=torch.float64) for x in u)),
        lr_u2=_one(sum(p["group"]["lr"] ** 2 * x for p, x in zip(parts, part_u2))),
        big_enough=_one(big_enough), log_trust=_one(log_trust), clipped=_one(sum(float(p["clipped"]) for p in parts)),
        steps=_one(sum(p["steps"] for p in parts)), noise=_noise_update(parts, g2),
        loss=None if loss is None else _one(loss),
    )[0]
