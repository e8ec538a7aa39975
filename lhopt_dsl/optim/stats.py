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

import numpy as np
import torch
from scipy.special import log_ndtr, ndtr

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


def logit_cdf(x: Any) -> Any:
    """logit(Phi(x)), elementwise, accurate for large |x| (a float for a float, else an array)."""
    out = log_ndtr(x) - log_ndtr(-np.asarray(x, dtype=np.float64))
    return float(out) if np.ndim(x) == 0 else out


def cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def noise_ratio(sq_ema: np.ndarray, m2: np.ndarray, count: np.ndarray) -> np.ndarray:
    """tr(Sigma_B) / |G|^2 per member from the moving averages (module docstring).

    ``sq_ema``: EMA of |g|^2; ``m2``: |EMA of g|^2; ``count``: draws so far (all (K,) float64 arrays).
    NaN until the second draw or when an average is not finite.
    """
    n = count
    with np.errstate(all="ignore"):
        corr = 1.0 - NOISE_BETA**n
        a = sq_ema / corr
        m2 = m2 / corr**2
        k = (1.0 - NOISE_BETA) * (1.0 + NOISE_BETA**n) / ((1.0 + NOISE_BETA) * corr)
        floor = 1e-8 * np.maximum(a, 1e-30)
        safe = np.where(n >= 2, 1.0 - k, 1.0)
        trace = np.maximum((a - m2) / safe, floor)
        signal = np.maximum((m2 - k * a) / safe, floor)
        ok = (n >= 2) & np.isfinite(a) & np.isfinite(m2)
        return np.where(ok, trace / signal, math.nan)


def stats_from_sums(
    *, numel: int, g2: np.ndarray, m2: np.ndarray, u2: np.ndarray, w2: np.ndarray, gm: np.ndarray,
    gu: np.ndarray, gw: np.ndarray, abs_u: np.ndarray, lr_u2: np.ndarray, big_enough: np.ndarray,
    log_trust: np.ndarray, clipped: np.ndarray, steps: np.ndarray, noise: np.ndarray, loss: np.ndarray | None,
) -> list[StepStats]:  # fmt: skip
    """The named statistics of K members from their reductions, each a (K,) float64 array.

    ``g2``, ``m2``, ``u2``, ``w2``: squared norms of gradient, momentum, update and parameters;
    ``gm``, ``gu``, ``gw``: dot products of the gradient with them; ``abs_u``: sum of |update|;
    ``lr_u2``: sum over tensors of (lr |update|)^2; ``big_enough``: elements with sqrt(v) >= eps;
    ``log_trust``: sum over tensors of numel * log(trust); ``noise``: :func:`noise_ratio`.

    In numpy on the host: a handful of numbers per member, where each torch operation would cost
    more to dispatch than to compute (0.76 ms a statistics step in torch against about 0.1 ms).
    """
    root_d = math.sqrt(numel)
    with np.errstate(all="ignore"):

        def cos(dot: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> np.ndarray:
            den = np.sqrt(a2 * b2)
            return np.where(den > 0, dot / np.where(den > 0, den, 1.0), math.nan)

        cos_gm, cos_gu, cos_gp = cos(gm, g2, m2), cos(gu, g2, u2), cos(gw, g2, w2)
        nan = np.full_like(g2, math.nan)
        log_scale = nan if loss is None else np.where(loss != 0, np.log(np.sqrt(g2 * w2) / np.abs(loss)), math.nan)
        columns = {
            "frac_clipped": clipped / np.maximum(steps, 1.0),
            "frac_sqrt_v_ge_eps": big_enough / numel,
            "update_magnitude": abs_u / numel,
            "log_scale": log_scale,
            "log_update_param_ratio": 0.5 * (np.log(lr_u2) - np.log(w2)),
            "log_noise_scale": np.log(noise),
            "log_lamb_trust": log_trust / numel,
            "cos_grad_momentum": cos_gm,
            "logit_cdf_cos_grad_momentum": logit_cdf(cos_gm * root_d),
            "cos_grad_update": cos_gu,
            "logit_cdf_cos_grad_update": logit_cdf(cos_gu * root_d),
            "cos_grad_param": cos_gp,
            "cdf_cos_grad_param": ndtr(cos_gp * root_d),
        }
        rows = np.stack([columns[name] for name in STAT_NAMES], 1).tolist()
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


def _host(x: Any) -> np.ndarray:
    """A (K,) float64 numpy array of a number or tensor (on any device)."""
    if torch.is_tensor(x):
        if x.dtype != torch.float64 or x.device.type != "cpu" or x.requires_grad:
            x = x.detach().to("cpu", torch.float64)
        return x.numpy().reshape(-1)
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


def statistics(
    sums: dict[str, torch.Tensor], noise: MutableMapping[str, Any], *, steps: Any, numel: int, loss: torch.Tensor | None
) -> list[StepStats]:
    """The named statistics of K members from :func:`stat_sums`'s reductions, each a (K,) float64
    tensor. Advances the noise scale's moving average of |g|^2 and its count, kept in ``noise``
    (``noise_sq_ema``, ``noise_count``: numbers before the first statistics, then (K,) float64 CPU
    tensors); ``steps``: steps since the last statistics, ``numel``: elements of one member's parameters."""
    host = {name: _host(value) for name, value in sums.items()}
    sq_ema = _host(noise["noise_sq_ema"]) * NOISE_BETA + (1.0 - NOISE_BETA) * host["g2"]
    count = _host(noise["noise_count"]) + 1
    noise["noise_sq_ema"], noise["noise_count"] = torch.from_numpy(sq_ema), torch.from_numpy(count)
    ratio = noise_ratio(sq_ema, host["noise_m2"], count)
    named = {n: host[n] for n in SUM_NAMES if n != "noise_m2"}
    return stats_from_sums(numel=numel, **named, steps=_host(steps), noise=ratio,
                           loss=None if loss is None else _host(loss))  # fmt: skip
