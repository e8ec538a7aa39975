"""Tests for lhopt_dsl.agent.feature_transforms: integral CDF features, sanitize, RunningNormalizer."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lhopt_dsl.agent.feature_transforms import B_VALUES, IntegralCDF, RunningNormalizer, normal_cdf, sanitize

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 spells it trapz


def _quadrature_stats(ts: np.ndarray, ys: np.ndarray, b: float) -> tuple[float, float]:
    """Dense numerical weighted mean/std of the true linear interpolation through (ts, ys).

    Segment by segment (trapezoid rule, ~200k points in all), so a repeated t may make the curve
    jump; zero-length segments are skipped.
    """
    pieces = []
    for t0, t1, y0, y1 in zip(ts[:-1], ts[1:], ys[:-1], ys[1:]):
        if t1 > t0:
            grid = np.linspace(t0, t1, max(2, int(200_000 * (t1 - t0) / (ts[-1] - ts[0]))))
            pieces.append((grid, y0 + (y1 - y0) * (grid - t0) / (t1 - t0)))

    def w_int(power: int, center: float = 0.0) -> float:  # int e^{t log b} (y - center)^power dt
        return sum(_trapezoid(np.exp(g * math.log(b)) * (y - center) ** power, g) for g, y in pieces)

    total = w_int(0)
    mu = w_int(1) / total
    var = w_int(2, mu) / total
    return mu, math.sqrt(var)


def _feed(acc: IntegralCDF, ts, ys) -> np.ndarray:
    """Feed a (N,) or (N, F) series; return the (N, F, B) features."""
    return np.array([acc.update(t, np.atleast_1d(y)) for t, y in zip(ts, ys)])


# ----------------------------------------------------------------------------- integral CDF


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_match_quadrature(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 12
    ts = np.sort(rng.uniform(0.0, 1.0, n))
    ys = rng.normal(size=(n, 3)) * np.array([1.0, 10.0, 0.01]) + np.array([0.0, -5.0, 3.0])
    acc = IntegralCDF(3)
    _feed(acc, ts, ys)
    mu, sigma = acc.stats()
    assert mu.shape == sigma.shape == (3, len(B_VALUES))
    for f in range(3):
        for j, b in enumerate(B_VALUES):
            q_mu, q_sigma = _quadrature_stats(ts, ys[:, f], b)
            assert mu[f, j] == pytest.approx(q_mu, rel=1e-6, abs=1e-9 * abs(q_sigma))
            assert sigma[f, j] == pytest.approx(q_sigma, rel=1e-6)


def test_stats_match_quadrature_for_other_bases() -> None:
    # b = 1 (c = 0, series branch only), b < 1 (decaying weights), b = 1e4 (|c dt| > 1 branch).
    bs = (0.5, 1.0, 1e4)
    rng = np.random.default_rng(11)
    ts, ys = np.sort(rng.uniform(0, 1, 9)), rng.normal(size=9)
    acc = IntegralCDF(1, bs=bs)
    _feed(acc, ts, ys)
    mu, sigma = acc.stats()
    for j, b in enumerate(bs):
        q_mu, q_sigma = _quadrature_stats(ts, ys, b)
        assert mu[0, j] == pytest.approx(q_mu, rel=1e-6, abs=1e-9)
        assert sigma[0, j] == pytest.approx(q_sigma, rel=1e-6)


def test_feature_uses_history_before_current_point() -> None:
    rng = np.random.default_rng(3)
    ts, ys = np.sort(rng.uniform(0, 1, 8)), rng.normal(size=8)
    acc = IntegralCDF(1)
    _feed(acc, ts[:-1], ys[:-1])
    mu, sigma = acc.stats()
    out = acc.update(ts[-1], ys[-1:])
    np.testing.assert_allclose(out, normal_cdf((ys[-1] - mu) / sigma), rtol=1e-12)


def test_linear_interpolation_not_the_papers_swapped_weights() -> None:
    # Two points (0, 0) -> (1, 1) with b = 20: true interpolation y(t) = t weighs the late
    # (large) values more, so mu > 1/2; the paper's printed (swapped) weights would give mu < 1/2.
    acc = IntegralCDF(1, bs=(20.0,))
    acc.update(0.0, np.array([0.0]))
    acc.update(1.0, np.array([1.0]))
    c = math.log(20.0)
    expected = (math.exp(c) * (c - 1) + 1) / c**2 / (math.expm1(c) / c)  # int t e^{ct} / int e^{ct}
    assert acc.stats()[0][0, 0] == pytest.approx(expected, rel=1e-12)
    assert expected > 0.5


def _integral_vs_ema(f, n: int, beta: float = 0.9) -> tuple[np.ndarray, float]:
    """Final features of f sampled at n even progress points: integral CDF (B,), discrete EMA."""
    ts = np.linspace(0.0, 1.0, n)
    acc = IntegralCDF(1)
    final = _feed(acc, ts, [f(t) for t in ts])[-1, 0]
    # Naive per-observation EMA of mean/variance (the alternative Appendix E argues against).
    mean, var, ema_out = f(ts[0]), 0.0, 0.5
    for t in ts[1:]:
        y = f(t)
        ema_out = float(normal_cdf((y - mean) / math.sqrt(var))) if var > 0 else float(y > mean)
        d = y - mean
        mean, var = mean + (1 - beta) * d, beta * (var + (1 - beta) * d * d)
    return final, ema_out


@pytest.mark.parametrize(
    "curve",
    [
        lambda t: math.exp(-3 * t) + 0.1 * math.sin(8 * t),
        lambda t: math.log(0.5 + 2.0 / (1 + 30 * t)),  # log-loss-like: fast drop, then plateau
    ],
    ids=["exp_sin", "log_loss"],
)
def test_insensitive_to_sampling_frequency(curve) -> None:
    tol = 0.05
    coarse, ema_coarse = _integral_vs_ema(curve, 10)
    fine, ema_fine = _integral_vs_ema(curve, 100)
    icdf_diff = np.abs(coarse - fine).max()
    ema_diff = abs(ema_coarse - ema_fine)
    assert icdf_diff < tol  # measured: ~0.021 for both curves
    # The discrete EMA (beta = 0.9 per observation) depends on the sampling rate: it fails the
    # same tolerance, by a clear margin (measured: ~0.48 and ~0.10).
    assert ema_diff > tol
    assert ema_diff > 2 * icdf_diff


def test_first_and_second_value_conventions() -> None:
    acc = IntegralCDF(3)
    first = acc.update(0.0, np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(first, 0.5)
    second = acc.update(0.1, np.array([2.0, 0.5, 1.0]))
    np.testing.assert_array_equal(second[0], 1.0)
    np.testing.assert_array_equal(second[1], 0.0)
    np.testing.assert_array_equal(second[2], 0.5)


def test_constant_series_gives_half() -> None:
    acc = IntegralCDF(1)
    out = _feed(acc, np.linspace(0, 1, 20), np.full(20, 0.3))
    np.testing.assert_array_equal(out, 0.5)


def test_monotone_increasing_series_above_half() -> None:
    acc = IntegralCDF(2)
    ts = np.linspace(0, 1, 30)
    out = _feed(acc, ts, np.stack([ts**2, np.log1p(5 * ts)], axis=1))
    assert (out[1:] > 0.5).all()
    decreasing = _feed(IntegralCDF(1), ts, -ts)
    assert (decreasing[1:] < 0.5).all()


def test_nan_gives_half_and_leaves_state_unchanged() -> None:
    acc = IntegralCDF(2)
    _feed(acc, [0.0, 0.2, 0.4], [[1.0, 1.0], [2.0, 3.0], [1.5, 0.5]])
    before = acc.state_dict()
    out = acc.update(0.5, np.array([np.nan, np.inf]))
    np.testing.assert_array_equal(out, 0.5)
    after = acc.state_dict()
    for key, value in before.items():
        if key != "t_last":  # the global clock advances; no per-feature state may change
            np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(value), err_msg=key)
    # The next finite value's segment starts from the last finite observation (t = 0.4).
    acc.update(0.6, np.array([1.0, -np.inf]))
    ref = IntegralCDF(1)
    _feed(ref, [0.0, 0.2, 0.4, 0.6], [1.0, 2.0, 1.5, 1.0])
    np.testing.assert_allclose(acc.stats()[0][0], ref.stats()[0][0], rtol=1e-15)
    np.testing.assert_allclose(acc.stats()[1][0], ref.stats()[1][0], rtol=1e-15)


def test_nan_first_value_starts_history_at_first_finite() -> None:
    acc = IntegralCDF(1)
    assert (acc.update(0.0, np.array([np.nan])) == 0.5).all()
    assert (acc.update(0.1, np.array([3.0])) == 0.5).all()  # first finite value
    assert (acc.update(0.2, np.array([4.0])) == 1.0).all()


def test_tiny_segments_are_finite_and_accurate() -> None:
    ts = np.array([0.0, 0.3, 0.3 + 1e-12, 0.3 + 2e-12, 0.7, 0.7, 1.0])
    ys = np.array([1.0, 2.0, 5.0, -3.0, 0.5, 0.7, 1.5])
    acc = IntegralCDF(1)
    out = _feed(acc, ts, ys)
    assert np.isfinite(out).all() and ((out >= 0) & (out <= 1)).all()
    mu, sigma = acc.stats()
    # The near-vertical spikes carry ~1e-12 of the weight and the zero-length segment none.
    for j, b in enumerate(B_VALUES):
        q_mu, q_sigma = _quadrature_stats(ts, ys, b)
        assert mu[0, j] == pytest.approx(q_mu, rel=1e-6)
        assert sigma[0, j] == pytest.approx(q_sigma, rel=1e-6)


def test_zero_length_history_uses_plain_point_mean() -> None:
    acc = IntegralCDF(1)
    _feed(acc, [0.5, 0.5, 0.5], [1.0, 3.0, 5.0])
    mu, sigma = acc.stats()
    np.testing.assert_allclose(mu, 3.0)
    np.testing.assert_allclose(sigma, math.sqrt(8 / 3))


def test_large_offset_is_accurate() -> None:
    rng = np.random.default_rng(4)
    ts = np.sort(rng.uniform(0, 1, 15))
    wiggle = 1e-3 * rng.normal(size=15)
    acc_big, acc_small = IntegralCDF(1), IntegralCDF(1)
    out_big = _feed(acc_big, ts, 1e6 + wiggle)
    out_small = _feed(acc_small, ts, wiggle)
    assert np.isfinite(out_big).all()
    # 1e6 + wiggle loses ~1e-10 absolute to rounding, i.e. ~1e-7 of the wiggle's scale.
    np.testing.assert_allclose(out_big, out_small, atol=1e-5)
    np.testing.assert_allclose(acc_big.stats()[1], acc_small.stats()[1], rtol=1e-5)
    np.testing.assert_allclose(acc_big.stats()[0] - 1e6, acc_small.stats()[0], atol=1e-9)


def test_state_dict_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(5)
    ts, ys = np.sort(rng.uniform(0, 1, 20)), rng.normal(size=(20, 2))
    ys[7, 1] = np.nan
    a = IntegralCDF(2)
    _feed(a, ts[:10], ys[:10])
    b = IntegralCDF(2)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    np.testing.assert_array_equal(_feed(a, ts[10:], ys[10:]), _feed(b, ts[10:], ys[10:]))
    with pytest.raises(ValueError):
        IntegralCDF(3).load_state_dict(a.state_dict())


def test_rejects_decreasing_progress_and_bad_shapes() -> None:
    acc = IntegralCDF(2)
    acc.update(0.5, np.zeros(2))
    with pytest.raises(ValueError):
        acc.update(0.4, np.zeros(2))
    with pytest.raises(ValueError):
        acc.update(0.6, np.zeros(3))
    with pytest.raises(ValueError):
        acc.update(float("nan"), np.zeros(2))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(0.0, 0.2),  # progress increment (zero allowed)
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            st.floats(allow_nan=True, allow_infinity=True, width=64),  # may be anything
        ),
        min_size=1,
        max_size=25,
    )
)
def test_property_outputs_in_unit_interval(data) -> None:
    acc = IntegralCDF(2)
    t = 0.0
    for dt, y0, y1 in data:
        t = min(t + dt, 1.0)
        if math.isfinite(y1) and abs(y1) > 1e100:
            y1 = math.copysign(1e100, y1)
        out = acc.update(t, np.array([y0, y1]))
        assert out.shape == (2, len(B_VALUES))
        assert np.isfinite(out).all()
        assert ((out >= 0.0) & (out <= 1.0)).all()


# ----------------------------------------------------------------------------- sanitize


def test_sanitize_flags() -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf, -2.0])
    clean, is_nan, is_inf = sanitize(x, default=7.0)
    np.testing.assert_array_equal(clean, [1.0, 7.0, 7.0, 7.0, -2.0])
    np.testing.assert_array_equal(is_nan, [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(is_inf, [0, 0, 1, 1, 0])
    assert is_nan.dtype == is_inf.dtype == np.float64
    clean2, _, _ = sanitize(np.full((2, 3), np.nan))
    assert clean2.shape == (2, 3) and (clean2 == 0.0).all()


# ----------------------------------------------------------------------------- normaliser


def test_normalizer_clips_and_is_float32() -> None:
    norm = RunningNormalizer(3)
    rng = np.random.default_rng(6)
    norm(rng.normal(size=(200, 3)))
    out = norm(np.array([1e9, -1e9, 0.0]))
    assert out.dtype == np.float32 and out.shape == (3,)
    assert out[0] == 2.0 and out[1] == -2.0 and abs(out[2]) < 2.0


def test_normalizer_converges_on_stationary_stream() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(5.0, 3.0, size=(20_000, 2))
    norm = RunningNormalizer(2, clip=1e9)  # no clipping, to see the standardisation itself
    norm(x[:10_000])
    out = norm(x[10_000:]).astype(np.float64)
    assert np.abs(out.mean(axis=0)).max() < 0.1
    assert np.abs(out.std(axis=0) - 1.0).max() < 0.1
    np.testing.assert_allclose(norm.mean, 5.0, atol=0.5)
    np.testing.assert_allclose(np.sqrt(norm.var), 3.0, rtol=0.1)
    # With the default clip the outputs stay in [-2, 2].
    clipped = RunningNormalizer(2)(x[:5000])
    assert clipped.min() >= -2.0 and clipped.max() <= 2.0


def test_normalizer_bias_correction_from_first_sample() -> None:
    norm = RunningNormalizer(1)
    assert norm(np.array([10.0]))[0] == 0.0  # first sample is the mean
    assert norm.mean[0] == pytest.approx(10.0)  # not 0.001 * 10 (uncorrected EMA)
    second = norm(np.array([12.0]))[0]
    assert second == pytest.approx(1.0, abs=1e-3)  # {10, 12}: one std above their mean
    assert norm.mean[0] == pytest.approx(11.0, abs=0.01)
    assert math.sqrt(norm.var[0]) == pytest.approx(1.0, abs=0.01)


def test_normalizer_batch_equals_row_by_row() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(50, 4))
    a, b = RunningNormalizer(4), RunningNormalizer(4)
    out_batch = a(x)
    out_rows = np.stack([b(row) for row in x])
    np.testing.assert_array_equal(out_batch, out_rows)


def test_normalizer_rejects_non_finite() -> None:
    norm = RunningNormalizer(2)
    for bad in (np.array([np.nan, 0.0]), np.array([[0.0, np.inf]])):
        with pytest.raises(ValueError):
            norm(bad)
    assert norm.count == 0
    with pytest.raises(ValueError):
        norm(np.zeros(3))


def test_normalizer_update_false_leaves_stats() -> None:
    rng = np.random.default_rng(9)
    norm = RunningNormalizer(3)
    norm(rng.normal(size=(30, 3)))
    before = norm.state_dict()
    out = norm(rng.normal(size=(5, 3)) * 100, update=False)
    assert np.isfinite(out).all() and out.shape == (5, 3)
    after = norm.state_dict()
    assert after["count"] == before["count"]
    np.testing.assert_array_equal(after["mean"], before["mean"])
    np.testing.assert_array_equal(after["var_ema"], before["var_ema"])
    assert (RunningNormalizer(3)(np.ones(3), update=False) == 0.0).all()


def test_normalizer_state_round_trip() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(40, 2))
    a = RunningNormalizer(2)
    a(x[:20])
    b = RunningNormalizer(2)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    np.testing.assert_array_equal(a(x[20:]), b(x[20:]))
    with pytest.raises(ValueError):
        RunningNormalizer(3).load_state_dict(a.state_dict())
