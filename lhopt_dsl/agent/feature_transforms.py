"""Feature math for the policy's inputs: unitless, NaN-free, normalised.

Why this module exists: the LHOPT policy must not be able to tell which inner task it is driving
(paper Section 3.2), so every input has to look alike from a toy MLP to a large language model.
Three tools get it there:

* :class:`IntegralCDF` -- the "integral CDF features" of Appendix E: where a value sits within its
  own history, mapped to [0, 1] by a Gaussian CDF. The history's mean and standard deviation are
  weighted integrals over the *piecewise-linear* interpolation of the observations, so the
  features barely depend on how often they are observed (a discrete EMA does depend on it).
* :func:`sanitize` -- NaN/inf become a default value plus ``is_nan``/``is_inf`` flags
  (Appendix J: "NaN's are all converted to a default value to avoid passing them in to the
  controller").
* :class:`RunningNormalizer` -- the final step of Section 3.2: subtract an exponential moving
  mean, divide by an exponential moving std (both beta = 0.999) and clip to [-2, 2].

Everything here is plain numpy (float64 inside), cheap per step, and its state is picklable.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.special import ndtr

__all__ = ["B_VALUES", "IntegralCDF", "RunningNormalizer", "normal_cdf", "sanitize"]

B_VALUES: tuple[float, ...] = (1.25, 2.5, 5.0, 10.0, 20.0)

_SERIES_MAX_K = 1.0  # |k| below this: power series for the exp-moment integrals
_SERIES_TERMS = 19  # remainder < 1/19!/20 ~ 4e-19 for |k| < 1
_VAR_REL_TOL = 1e-13  # variance below this fraction of the raw second moment is rounding noise


# ----------------------------------------------------------------------------- small helpers


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, elementwise (vectorised ``scipy.special.ndtr``)."""
    return ndtr(np.asarray(z, dtype=np.float64))


def sanitize(x: np.ndarray, default: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``x`` into (clean values, is_nan, is_inf); the flags are float arrays of 0/1.

    Non-finite entries of the clean values are replaced by ``default``; shapes are preserved.
    """
    x = np.asarray(x, dtype=np.float64)
    is_nan = np.isnan(x)
    is_inf = np.isinf(x)
    clean = np.where(is_nan | is_inf, default, x)
    return clean, is_nan.astype(np.float64), is_inf.astype(np.float64)


def _exp_moments(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I_j(k) = integral_0^1 s^j e^{k s} ds for j = 0, 1, 2, elementwise and stable.

    Closed forms: I0 = expm1(k)/k, I1 = (e^k (k-1) + 1)/k^2, I2 = (e^k (k^2-2k+2) - 2)/k^3.
    They cancel catastrophically as k -> 0, so |k| < 1 uses the series
    I_j(k) = sum_m k^m / (m! (m+j+1)).
    """
    k = np.asarray(k, dtype=np.float64)
    small = np.abs(k) < _SERIES_MAX_K
    # Series branch (evaluated everywhere; only used where |k| < 1).
    ks = np.where(small, k, 0.0)
    i0 = np.zeros_like(k)
    i1 = np.zeros_like(k)
    i2 = np.zeros_like(k)
    term = np.ones_like(k)  # k^m / m!
    for m in range(_SERIES_TERMS + 1):
        i0 += term / (m + 1)
        i1 += term / (m + 2)
        i2 += term / (m + 3)
        term = term * ks / (m + 1)
    # Closed-form branch (k replaced by 1 where the series is used, to avoid 0/0 warnings).
    kc = np.where(small, 1.0, k)
    ek = np.exp(kc)
    c0 = np.expm1(kc) / kc
    c1 = (ek * (kc - 1.0) + 1.0) / kc**2
    c2 = (ek * (kc * kc - 2.0 * kc + 2.0) - 2.0) / kc**3
    return np.where(small, i0, c0), np.where(small, i1, c1), np.where(small, i2, c2)


def _series_moments(ks: np.ndarray, orders: tuple[int, ...]) -> np.ndarray:
    """(len(orders), *ks.shape): the power series of I_j(k) (:func:`_exp_moments`) for j in ``orders``,
    with the same operations on each element as :func:`_exp_moments`' series, all orders at once."""
    denominators = np.asarray(orders, dtype=np.float64).reshape((-1,) + (1,) * ks.ndim) + 1.0  # m + j + 1 at m = 0
    acc = np.zeros((len(orders), *ks.shape))
    term = np.ones_like(ks)  # k^m / m!
    for m in range(_SERIES_TERMS + 1):
        acc += term / (denominators + m)
        term = term * ks / (m + 1)
    return acc


def _segment_weights(k: np.ndarray) -> tuple[np.ndarray, ...]:
    """Bernstein-basis integrals on s in [0, 1] of the weight e^{k s}:

    L0 = int (1-s) e^{ks}, L1 = int s e^{ks},
    J00 = int (1-s)^2 e^{ks}, J01 = int s (1-s) e^{ks}, J11 = int s^2 e^{ks}.
    The (1-s) ones use the reflection s -> 1-s: int (1-s)^j e^{ks} = e^k I_j(-k), which stays
    well conditioned for either sign of k. All five are positive.
    """
    k = np.asarray(k, dtype=np.float64)
    if np.all(np.abs(k) < _SERIES_MAX_K):  # short segments (the usual case): I_1, I_2 of k and -k in one series
        (i1, r1), (i2, r2) = _series_moments(np.stack([k, -k]), (1, 2))
    else:
        _, i1, i2 = _exp_moments(k)
        _, r1, r2 = _exp_moments(-k)
    ek = np.exp(k)
    return ek * r1, i1, ek * r2, i1 - i2, i2


# ----------------------------------------------------------------------------- integral CDF


class IntegralCDF:
    """Incremental integral CDF features (paper Appendix E), for ``num_features`` series at once.

    Observations (t_n, y_n) arrive with non-decreasing progress t (expected in [0, 1]). For each
    weighting base b, the history y_1..y_{N-1} before the current value y_N is the piecewise-linear
    curve through its points, weighted by w(t) = exp(t log b) (so t = 1 weighs b times t = 0):

        mu      = int_{t_1}^{t_{N-1}} w(t) y(t) dt            / int_{t_1}^{t_{N-1}} w(t) dt
        sigma^2 = int_{t_1}^{t_{N-1}} w(t) (y(t) - mu)^2 dt   / int_{t_1}^{t_{N-1}} w(t) dt

    and the feature of y_N is Phi((y_N - mu) / sigma), Phi the standard normal CDF.

    NOTE: the paper's printed formula swaps the two interpolation weights (as printed it gives
    y_{n+1} at t = t_n). We use true linear interpolation,
    y(t) = y_n (t_{n+1} - t)/Delta + y_{n+1} (t - t_n)/Delta, Delta = t_{n+1} - t_n.

    Conventions (Section 3.2): the first value gives 0.5; with sigma = 0 (e.g. the history is a
    single point, so mu = y_1) the feature is 1, 0 or 0.5 when y_N is >, < or == mu. A history
    of zero total length (all its points at the same t) falls back to the plain mean and
    variance of its points; once the history has positive length, zero-length segments add
    nothing (the continuous limit of a vanishing segment). Non-finite y entries give 0.5 and are
    left out of that feature's history: its next segment starts at its last finite observation.

    Implementation: per segment, the integrals of e^{c t} times polynomials of degree <= 2 in t
    are in closed form (c = log b), so running sums W = int w, M1 = int w (y - r),
    M2 = int w (y - r)^2 give each update in O(F * len(bs)). Values are taken relative to each
    feature's first finite observation r, which keeps the variance M2/W - (M1/W)^2 free of
    catastrophic cancellation for values with a large offset (e.g. 1e6 + small wiggles).
    """

    def __init__(self, num_features: int, bs: Sequence[float] = B_VALUES) -> None:
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        bs = tuple(float(b) for b in bs)
        if not bs or any(not math.isfinite(b) or b <= 0.0 for b in bs):
            raise ValueError(f"bs must be non-empty, finite and positive, got {bs}")
        self.num_features = int(num_features)
        self.bs = bs
        self._c = np.log(np.asarray(bs, dtype=np.float64))  # (B,)
        self.reset()

    def reset(self) -> None:
        """Forget all history."""
        f, nb = self.num_features, len(self.bs)
        self._t_last = -math.inf  # last progress passed to update (any feature)
        self._count = np.zeros(f, dtype=np.int64)  # finite observations per feature
        self._ref = np.zeros(f)  # (F,) first finite observation
        self._last_t = np.zeros(f)  # (F,) progress of the last finite observation
        self._last_d = np.zeros(f)  # (F,) last finite observation minus ref
        self._w = np.zeros((f, nb))  # (F, B) int w dt
        self._m1 = np.zeros((f, nb))  # (F, B) int w (y - ref) dt
        self._m2 = np.zeros((f, nb))  # (F, B) int w (y - ref)^2 dt
        self._p1 = np.zeros(f)  # (F,) sum of (y - ref) over points (zero-length fallback)
        self._p2 = np.zeros(f)  # (F,) sum of (y - ref)^2 over points

    # -- statistics

    def _centered_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean - ref, sigma), each (F, B), of the current history; undefined where count == 0."""
        has_len = self._w > 0.0  # (F, B)
        w = np.where(has_len, self._w, 1.0)
        cnt = np.maximum(self._count, 1)[:, None].astype(np.float64)  # (F, 1)
        mean = np.where(has_len, self._m1 / w, self._p1[:, None] / cnt)
        second = np.where(has_len, self._m2 / w, self._p2[:, None] / cnt)  # E[(y - ref)^2]
        var = second - mean**2
        var = np.where(var > _VAR_REL_TOL * second, var, 0.0)  # rounding noise -> exactly 0
        return mean, np.sqrt(var)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma), each (F, len(bs)), of the history so far including the latest point.

        NaN for features that have no finite observation yet.
        """
        mean, sigma = self._centered_stats()
        empty = (self._count == 0)[:, None]
        mu = np.where(empty, np.nan, mean + self._ref[:, None])
        return mu, np.where(empty, np.nan, sigma)

    # -- updates

    def _features(self, d: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """CDF of d = y - ref against the history before it; (F, B). 0.5 where not ok or empty."""
        mean, sigma = self._centered_stats()
        diff = d[:, None] - mean  # (F, B)
        pos = sigma > 0.0
        z = diff / np.where(pos, sigma, 1.0)
        out = np.where(pos, normal_cdf(np.where(pos, z, 0.0)), 0.5 * (1.0 + np.sign(diff)))
        usable = (ok & (self._count > 0))[:, None] & np.isfinite(out)
        return np.where(usable, out, 0.5)

    def _add_segments(self, t: float, d: np.ndarray, ok: np.ndarray) -> None:
        """Add the segment (last_t, last_d) -> (t, d) to the sums of features in ``ok``."""
        delta = np.where(ok, t - self._last_t, 0.0)  # (F,)
        seg = ok & (delta > 0.0)
        if not seg.any():
            return
        k = delta[:, None] * self._c[None, :]  # (F, B)
        l0, l1, j00, j01, j11 = _segment_weights(k)
        scale = delta[:, None] * np.exp(self._c[None, :] * self._last_t[:, None])  # (F, B)
        a = self._last_d[:, None]  # (F, 1) value at segment start, relative to ref
        b = d[:, None]  # (F, 1) value at segment end
        # y(s) = a (1-s) + b s  =>  y^2 = a^2 (1-s)^2 + 2ab s(1-s) + b^2 s^2
        dw = scale * (l0 + l1)
        dm1 = scale * (a * l0 + b * l1)
        dm2 = scale * (a * a * j00 + 2.0 * a * b * j01 + b * b * j11)
        m = seg[:, None]
        self._w += np.where(m, dw, 0.0)
        self._m1 += np.where(m, dm1, 0.0)
        self._m2 += np.where(m, dm2, 0.0)

    def update(self, t: float, y: np.ndarray) -> np.ndarray:
        """Observe y (F,) at progress t; return (F, len(bs)) features in [0, 1] for these values."""
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"progress t must be finite, got {t}")
        if t < self._t_last:
            raise ValueError(f"progress must be non-decreasing: got {t} after {self._t_last}")
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape != (self.num_features,):
            raise ValueError(f"expected {self.num_features} values, got shape {y.shape}")
        finite = np.isfinite(y)
        first = finite & (self._count == 0)
        self._ref = np.where(first, y, self._ref)
        d = np.where(finite, y - self._ref, 0.0)  # (F,)
        out = self._features(d, finite)
        # Extend the history with this observation.
        old = finite & (self._count > 0)
        self._add_segments(t, d, old)
        self._p1 = self._p1 + d
        self._p2 = self._p2 + d * d
        self._last_t = np.where(finite, t, self._last_t)
        self._last_d = np.where(finite, d, self._last_d)
        self._count = self._count + finite
        self._t_last = t
        return out

    # -- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "bs": list(self.bs),
            "t_last": self._t_last,
            "count": self._count.copy(),
            "ref": self._ref.copy(),
            "last_t": self._last_t.copy(),
            "last_d": self._last_d.copy(),
            "w": self._w.copy(),
            "m1": self._m1.copy(),
            "m2": self._m2.copy(),
            "p1": self._p1.copy(),
            "p2": self._p2.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_features"]) != self.num_features or tuple(state["bs"]) != self.bs:
            raise ValueError("state was saved for a different num_features or bs")
        f, nb = self.num_features, len(self.bs)

        def arr(name: str, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
            a = np.array(state[name], dtype=dtype)  # copies
            if a.shape != shape:
                raise ValueError(f"state[{name!r}] has shape {a.shape}, expected {shape}")
            return a

        self._t_last = float(state["t_last"])
        self._count = arr("count", (f,), np.int64)
        self._ref, self._last_t, self._last_d = arr("ref", (f,)), arr("last_t", (f,)), arr("last_d", (f,))
        self._w, self._m1, self._m2 = arr("w", (f, nb)), arr("m1", (f, nb)), arr("m2", (f, nb))
        self._p1, self._p2 = arr("p1", (f,)), arr("p2", (f,))


# ----------------------------------------------------------------------------- normaliser


class RunningNormalizer:
    """Exponential moving standardisation with clipping (paper Section 3.2, beta = 0.999).

    Statistics are the bias-corrected (Adam-style) exponential moving mean and variance: with
    weights beta^(n-i) on the n samples seen so far, ``mean`` is the normalised weighted mean
    (equal to EMA / (1 - beta^n)), and the variance EMA is fed the squared deviation in its
    numerically stable West/Welford form (x - mean_old) * (x - mean_new), then divided by
    (1 - beta^n). Both are exact for those weights, so the first samples already give sensible
    values (the first output is 0, the second is about +-1: two points are one std from their mean).

    Output: (x - mean) / (std + eps), clipped to [-clip, clip], float32. With ``update`` the
    statistics take each row first, in order, and that row is normalised with them (so a batch
    equals calling row by row). Before any update the output is 0. Inputs must be finite
    (run :func:`sanitize` first); NaN/inf raise ValueError.
    """

    def __init__(self, size: int, beta: float = 0.999, clip: float = 2.0, eps: float = 1e-8) -> None:
        if size < 1 or not 0.0 < beta < 1.0 or clip <= 0.0 or eps < 0.0:
            raise ValueError(f"bad RunningNormalizer arguments: {size=}, {beta=}, {clip=}, {eps=}")
        self.size, self.beta, self.clip, self.eps = int(size), float(beta), float(clip), float(eps)
        self.count = 0
        self.mean = np.zeros(self.size)  # (F,) bias-corrected moving mean
        self.var_ema = np.zeros(self.size)  # (F,) raw (uncorrected) EMA of squared deviation

    def _correction(self) -> float:
        return -math.expm1(self.count * math.log(self.beta))  # 1 - beta^n, accurate for small n

    @property
    def var(self) -> np.ndarray:
        """(F,) bias-corrected moving variance (0 before any sample)."""
        return self.var_ema / self._correction() if self.count else np.zeros(self.size)

    def _update_row(self, x: np.ndarray) -> None:
        self.count += 1
        corr = self._correction()
        rate = (1.0 - self.beta) / corr  # weight of the new sample in the normalised mean
        old = self.mean
        self.mean = old + rate * (x - old)
        self.var_ema = self.beta * self.var_ema + (1.0 - self.beta) * (x - old) * (x - self.mean)

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        if self.count == 0:
            return np.zeros_like(x)
        z = (x - self.mean) / (np.sqrt(np.maximum(self.var, 0.0)) + self.eps)
        return np.nan_to_num(np.clip(z, -self.clip, self.clip), nan=0.0)

    def __call__(self, x: np.ndarray, update: bool = True) -> np.ndarray:
        """(F,) or (N, F) -> same shape, float32 in [-clip, clip]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.size:
            raise ValueError(f"expected shape ({self.size},) or (N, {self.size}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("RunningNormalizer got non-finite input; sanitize() it first")
        rows = x.reshape(-1, self.size)  # (N, F)
        out = np.empty_like(rows)
        for i, row in enumerate(rows):
            if update:
                self._update_row(row)
            out[i] = self._normalise(row)
        return out.reshape(x.shape).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size, "beta": self.beta, "clip": self.clip, "eps": self.eps,
            "count": self.count, "mean": self.mean.copy(), "var_ema": self.var_ema.copy(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"state was saved for size {state['size']}, this one has {self.size}")
        mean = np.array(state["mean"], dtype=np.float64)
        var_ema = np.array(state["var_ema"], dtype=np.float64)
        if mean.shape != (self.size,) or var_ema.shape != (self.size,):
            raise ValueError("state arrays have the wrong shape")
        self.beta, self.clip, self.eps = float(state["beta"]), float(state["clip"]), float(state["eps"])
        self.count, self.mean, self.var_ema = int(state["count"]), mean, var_ema
