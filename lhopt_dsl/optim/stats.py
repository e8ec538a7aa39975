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


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum(dtype=torch.float64) for x, y in zip(a, b))  # type: ignore[return-value]


def _sq(a: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.linalg.vector_norm(x, dtype=torch.float64) ** 2 for x in a]).sum()


def _cos(dot: torch.Tensor, na2: torch.Tensor, nb2: torch.Tensor) -> float:
    den = math.sqrt(float(na2) * float(nb2))
    return float(dot) / den if den > 0 else float("nan")


def logit_cdf(x: float) -> float:
    """logit(Phi(x)), accurate for large |x|."""
    t = torch.tensor(x, dtype=torch.float64)
    return float(torch.special.log_ndtr(t) - torch.special.log_ndtr(-t))


def cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _log(x: float) -> float:
    return math.log(x) if x > 0 else (float("-inf") if x == 0 else float("nan"))


def _noise_ratio(parts: list[dict[str, Any]], g2: float) -> float:
    """tr(Sigma_B) / |G|^2 from moving averages updated at statistics steps (module docstring)."""
    emas = [e for p in parts for e in p["noise_state"]]
    grads = [g for p in parts for g in p["grads"]]
    gs = parts[0]["gs"]
    torch._foreach_lerp_(emas, grads, 1.0 - NOISE_BETA)
    gs["noise_sq_ema"] = gs.get("noise_sq_ema", 0.0) * NOISE_BETA + (1.0 - NOISE_BETA) * g2
    gs["noise_count"] = gs.get("noise_count", 0) + 1
    n = gs["noise_count"]
    corr = 1.0 - NOISE_BETA**n
    a = gs["noise_sq_ema"] / corr
    m2 = float(_sq(emas)) / corr**2
    k = (1.0 - NOISE_BETA) * (1.0 + NOISE_BETA**n) / ((1.0 + NOISE_BETA) * corr)
    if n < 2 or not (math.isfinite(a) and math.isfinite(m2)):
        return float("nan")
    trace = max((a - m2) / (1.0 - k), 1e-8 * max(a, 1e-30))
    signal = max((m2 - k * a) / (1.0 - k), 1e-8 * max(a, 1e-30))
    return trace / signal


def compute_stats(parts: list[dict[str, Any]], loss: float | None) -> StepStats:
    """Reduce the per-group inputs gathered by CIAO into the named statistics."""
    if not parts:
        return {name: float("nan") for name in STAT_NAMES}
    g = [x for p in parts for x in p["grads"]]
    m = [x for p in parts for x in p["momenta"]]
    u = [x for p in parts for x in p["updates"]]
    numel = sum(x.numel() for x in g)
    part_u2 = [float(_sq(p["updates"])) for p in parts]
    g2, m2, u2 = float(_sq(g)), float(_sq(m)), sum(part_u2)
    w2 = float(sum(p["param_sq"] for p in parts))
    gw = sum(p["grad_dot_param"] for p in parts)
    lr_u2 = sum(p["group"]["lr"] ** 2 * x for p, x in zip(parts, part_u2))

    big_enough = 0
    for p in parts:
        eps, adam = p["group"]["eps"], p["group"]["denominator"] == "adam"
        for v in p["second"]:
            root = (v / p["bc2"]).sqrt() if adam else v
            big_enough += int((root >= eps).sum())
    log_trust = sum(float(torch.log(t.double())) * n for p in parts for t, n in zip(p["trusts"], p["numels"]))

    root_d = math.sqrt(numel)
    cos_gm, cos_gu, cos_gp = _cos(_dot(g, m), g2, m2), _cos(_dot(g, u), g2, u2), _cos(gw, g2, w2)
    steps = sum(p["steps"] for p in parts)
    clipped = sum(float(p["clipped"]) for p in parts)
    return {
        "frac_clipped": clipped / max(steps, 1),
        "frac_sqrt_v_ge_eps": big_enough / numel,
        "update_magnitude": sum(float(x.abs().sum(dtype=torch.float64)) for x in u) / numel,
        "log_scale": _log(math.sqrt(g2 * w2) / abs(loss)) if loss else float("nan"),
        "log_update_param_ratio": 0.5 * (_log(lr_u2) - _log(w2)),
        "log_noise_scale": _log(_noise_ratio(parts, g2)),
        "log_lamb_trust": log_trust / numel,
        "cos_grad_momentum": cos_gm,
        "logit_cdf_cos_grad_momentum": logit_cdf(cos_gm * root_d) if math.isfinite(cos_gm) else float("nan"),
        "cos_grad_update": cos_gu,
        "logit_cdf_cos_grad_update": logit_cdf(cos_gu * root_d) if math.isfinite(cos_gu) else float("nan"),
        "cos_grad_param": cos_gp,
        "cdf_cos_grad_param": cdf(cos_gp * root_d) if math.isfinite(cos_gp) else float("nan"),
    }
