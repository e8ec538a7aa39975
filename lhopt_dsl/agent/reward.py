"""The power-law reward of paper Section 3.4, and its potential-based shaping.

A baseline is run on the *same* task (initial weights, data order, initial hyperparameters).
Its validation curve is summarised by a power law fitted to its best-so-far envelope,

    L(s) = L_inf + A * (s + 1) ** -alpha,       0 <= L_inf < min loss, A > 0, alpha in [1e-3, 10],

(s = inner steps). The fit minimises squared errors of log L (bounded, with scipy's
``least_squares``), because losses span orders of magnitude. A final loss L* is mapped to the
number of baseline steps the fitted curve needs to reach it, S(L*), and the reward is

    R(L*) = log(S(L*) / S(L_worst)) / log(S(L_best) / S(L_worst)),

so 0 is the baseline's worst (first) loss, 1 its best loss, and values above 1 measure, in log
steps, how much longer the baseline would have needed: the paper's reading of "extrapolate past
the best loss of a baseline". Our reading of the paper's unstated choices, and why:

* *Envelope*: a non-monotone curve is replaced by its running minimum (a baseline can always stop
  at its best point), which makes the inverse S well defined.
* *Caps*: R is clipped to [-1, R_max] with R_max the reward of needing 100x the baseline's steps
  (so a loss at or below the fitted asymptote is worth R_max, not infinity). ``cap`` sets that
  factor: meta-training's ``reward_cap`` lowers it to the speedup at which evaluation stops
  counting (2x), so that a rare large win weighs no more in the reward than in the judge.
* *Degenerate baselines*: with fewer than three finite points, or no improvement over the first
  point (a flat curve), there is nothing to extrapolate: R is 1 for a loss below the baseline's
  best, 0 for one between (equal included), -1 above its worst. A baseline that diverged is
  judged by its finite prefix. A non-finite final loss gets the lowest reward, -1.
* *Fit failure* (numerical trouble): S falls back to linear interpolation of log S against log L
  on the envelope, extrapolated along its last segment.

*Reference* (:class:`FinalRelative`): the paper reads a loss against the baseline's *best*. Where the
baseline's run ends above its best (it over-fits, or its last segments are noisy), a policy that
runs exactly as the baseline then earns less than 1, and what a deviation is worth is misread by
that task's gap. ``reference="final"`` reads it against the baseline's own final loss instead:
R(L*) - R(L_final) + 1, so that ending where the baseline ends is 1 on every task.

Shaping (Ng et al. 1999): with potentials Phi_0 = 0 and Phi_k = R(L_k) for the validation loss
after outer step k, the shaped reward r_k = Phi_k - Phi_{k-1} sums over an episode to exactly
R(L_K), the final reward, when the discount is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

R_MIN = -1.0
LOSS_FLOOR = 1e-12
EXTRAPOLATION_CAP = 100.0  # the reward saturates at needing 100x the baseline's steps
_FLAT_TOL = 1e-6


@dataclass(frozen=True)
class PowerLaw:
    l_inf: float
    a: float
    alpha: float

    def __call__(self, steps: np.ndarray | float) -> np.ndarray:
        return self.l_inf + self.a * (np.asarray(steps, dtype=np.float64) + 1.0) ** -self.alpha

    def steps_to(self, loss: float) -> float:
        """Steps the curve needs to reach ``loss`` (inf at or below the asymptote)."""
        if loss <= self.l_inf:
            return math.inf
        log_steps = -math.log((loss - self.l_inf) / self.a) / self.alpha  # log(s + 1)
        return math.inf if log_steps > 700 else math.exp(log_steps) - 1.0  # in (-1, inf]


def envelope(steps: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite prefix of a curve and its running minimum."""
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(y)
    n = len(y) if finite.all() else int(np.argmin(finite))
    # Losses are floored at a tiny positive value so that a curve reaching 0 stays fit in log space.
    return s[:n], np.maximum(np.minimum.accumulate(y[:n]), LOSS_FLOOR) if n else y[:0]


def fit_power_law(steps: np.ndarray, losses: np.ndarray) -> PowerLaw | None:
    """Bounded least squares in log space; None when the fit is not usable."""
    from scipy.optimize import least_squares

    y_min = float(losses.min())
    if y_min <= 0:
        return None
    log_y = np.log(losses)

    def unpack(x: np.ndarray) -> PowerLaw:
        return PowerLaw(l_inf=y_min / (1.0 + math.exp(-x[0])), a=math.exp(x[1]), alpha=math.exp(x[2]))

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(unpack(x)(steps)) - log_y

    log_s1 = np.log(steps + 1.0)

    def jacobian(x: np.ndarray) -> np.ndarray:
        """Exact derivatives of the residuals (a third of the cost of finite differences)."""
        sig = 1.0 / (1.0 + math.exp(-x[0]))
        a, alpha = math.exp(x[1]), math.exp(x[2])
        decay = a * np.exp(-alpha * log_s1)  # A (s + 1)^-alpha
        inv = 1.0 / (y_min * sig + decay)
        return np.stack([inv * y_min * sig * (1.0 - sig), inv * decay, -inv * decay * log_s1 * alpha], 1)

    start = np.asarray([0.0, math.log(max(losses[0] - 0.5 * y_min, 1e-12)), math.log(0.5)])
    bounds = ([-30.0, -50.0, math.log(1e-3)], [30.0, 50.0, math.log(10.0)])
    try:
        result = least_squares(residuals, start, jac=jacobian, bounds=bounds, method="trf")
    except (ValueError, FloatingPointError):
        return None
    law = unpack(result.x)
    return law if result.success and all(map(math.isfinite, (law.l_inf, law.a, law.alpha))) else None


class PowerLawReward:
    """Maps a final validation loss to a reward against one baseline curve (module docstring)."""

    def __init__(self, steps: Sequence[float], losses: Sequence[float], cap: float = EXTRAPOLATION_CAP):
        if not cap > 1.0:
            raise ValueError(f"the reward's cap is a speedup factor above 1; got {cap}")
        self.steps, self.losses = envelope(steps, losses)
        self.worst = float(self.losses[0]) if len(self.losses) else math.nan
        self.best = float(self.losses[-1]) if len(self.losses) else math.nan
        self.flat = len(self.losses) < 3 or not self.best < self.worst * (1 - _FLAT_TOL)
        self.law = None if self.flat else fit_power_law(self.steps, self.losses)
        if not self.flat:
            self.s_worst = self._steps_to(self.worst)
            self.s_best = self._steps_to(self.best)
            self.flat = not (self.s_best > self.s_worst)
        if not self.flat:
            self.span = math.log((self.s_best + 1) / (self.s_worst + 1))
            self.r_max = 1.0 + math.log(cap) / self.span

    def _steps_to(self, loss: float) -> float:
        if self.law is not None:
            return self.law.steps_to(loss)
        # Fallback: linear in (log loss, log steps) along the envelope, extrapolated at the ends.
        ls, ly = np.log(self.steps + 1.0), np.log(self.losses)
        keep = np.concatenate([[True], np.diff(ly) < 0])  # strictly decreasing points only
        ls, ly = ls[keep], ly[keep]
        if len(ly) < 2:
            return math.inf if loss < self.best else 0.0
        x = math.log(loss) if loss > 0 else -math.inf
        if x >= ly[0]:
            i = 0
        elif x <= ly[-1]:
            i = len(ly) - 2
        else:
            return math.exp(float(np.interp(-x, -ly, ls))) - 1.0
        slope = (ls[i + 1] - ls[i]) / (ly[i + 1] - ly[i])
        log_steps = ls[i] + slope * (x - ly[i])
        return math.inf if log_steps > 700 else math.exp(log_steps) - 1.0

    def __call__(self, loss: float) -> float:
        if not math.isfinite(loss) or not math.isfinite(self.worst):
            return R_MIN
        loss = max(loss, LOSS_FLOOR)
        if self.flat:
            if loss < self.best * (1 - _FLAT_TOL):
                return 1.0
            return 0.0 if loss <= self.worst else R_MIN
        s = self._steps_to(loss)
        if not math.isfinite(s):
            return self.r_max
        if s + 1 <= 0:  # far above the curve's start: fewer than zero steps
            return R_MIN
        r = math.log((s + 1) / (self.s_worst + 1)) / self.span
        return float(min(max(r, R_MIN), self.r_max))


class FinalRelative:
    """``reward`` read against the baseline's own final loss (module docstring, *Reference*):
    R(L) - R(``final_loss``) + 1, at most the reward's cap (``r_max``: the cap's speedup is then
    counted from the baseline's end, as the judge counts a speedup over a run's final loss).

    Where the final loss has no place on the baseline's fitted curve, the reward stays the paper's:
    a final loss that is not finite, or one above the baseline's first loss (its reward clipped at
    the floor, where no number of steps stands for it), or a flat baseline's."""

    def __init__(self, reward: PowerLawReward, final_loss: float):
        self.reward = reward
        own = reward(final_loss) if math.isfinite(final_loss) else R_MIN
        self.offset = own - 1.0 if not reward.flat and own > R_MIN else 0.0
        self.r_max = reward.r_max if not reward.flat else math.inf

    def __call__(self, loss: float) -> float:
        return min(self.reward(loss) - self.offset, self.r_max)


def reference_reward(steps: Sequence[float], baseline: Sequence[float], cap: float = EXTRAPOLATION_CAP,
                     reference: str = "best") -> PowerLawReward | FinalRelative:  # fmt: skip
    """The reward against the ``baseline`` curve, read against its best loss (the paper's) or its final one."""
    reward = PowerLawReward(steps, baseline, cap)
    if reference == "best":
        return reward
    if reference == "final":
        return FinalRelative(reward, float(baseline[-1]))
    raise ValueError(f"a reward's reference is 'best' or 'final', got {reference!r}")


class ShapedReward:
    """Env reward callable: r_k = R(L_k) - R(L_{k-1}) with R(L_0) := 0, summing to R(L_K)."""

    def __init__(self, reward: PowerLawReward | FinalRelative):
        self.reward = reward
        self.potential = 0.0

    def __call__(self, step) -> float:  # step: lhopt_dsl.agent.env.OuterStep
        if step.index == 1:
            self.potential = 0.0
        phi = self.reward(step.valid_loss)
        r, self.potential = phi - self.potential, phi
        return r


def reward_speedups(rewards: np.ndarray, spans: np.ndarray, cap: float) -> np.ndarray:
    """The speedup over the schedule's run that a reward stands for: the reward is 1 + log(speedup) /
    span, with span the log of the schedule's steps from its first to its best loss (per task, the
    rows of ``rewards``), so a speedup is exp((reward - 1) * span), here within [1/cap, cap]. A
    schedule's run that did not improve has no span (nan): a reward of 1 or more counts as 1, less as 1/cap."""
    r = np.asarray(rewards, dtype=np.float64)
    span = np.asarray(spans, dtype=np.float64).reshape((-1,) + (1,) * (r.ndim - 1))
    flat = np.where(r >= 1.0, 1.0, 1.0 / cap)
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.where(np.isfinite(span), np.exp((r - 1.0) * np.nan_to_num(span)), flat)
    return np.clip(out, 1.0 / cap, cap)
