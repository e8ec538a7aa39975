"""Property tests for the samplers: every sample lies in the declared support, counts are exact."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lhopt_dsl.spec.distributions import Choice, IntRange, LogIntRange, LogUniform, Uniform

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@given(low=st.integers(-1000, 1000), width=st.integers(0, 1000), seed=seeds)
def test_int_range_samples_within_bounds(low, width, seed):
    d = IntRange(low=low, high=low + width)
    rng = np.random.default_rng(seed)
    xs = [d.sample(rng) for _ in range(20)]
    assert all(low <= x <= low + width and isinstance(x, int) for x in xs)
    assert len(d.support()) == width + 1


@given(low=st.integers(1, 10**6), factor=st.floats(1.0, 100.0), seed=seeds)
def test_log_int_range_samples_within_bounds(low, factor, seed):
    high = int(low * factor)
    d = LogIntRange(low=low, high=high)
    rng = np.random.default_rng(seed)
    assert all(low <= d.sample(rng) <= high for _ in range(20))
    assert len(d.support()) == high - low + 1


def test_log_int_range_reaches_every_value_and_favours_small_ones():
    d = LogIntRange(low=1, high=8)
    rng = np.random.default_rng(0)
    xs = np.array([d.sample(rng) for _ in range(20000)])
    counts = np.bincount(xs, minlength=9)[1:]
    assert np.all(counts > 0)
    assert counts[0] > counts[-1] * 3  # P(1) = log 2 / log 9 vs P(8) = log(9/8) / log 9


@given(
    values=st.lists(st.integers(-50, 50), min_size=1, max_size=8, unique=True),
    data=st.data(),
    seed=seeds,
)
def test_choice_samples_only_positive_weight_values(values, data, seed):
    weights = data.draw(st.lists(st.floats(0, 10), min_size=len(values), max_size=len(values)))
    if not any(w > 0 for w in weights):
        with pytest.raises(ValidationError):
            Choice[int](values=values, weights=weights)
        return
    d = Choice[int](values=values, weights=weights)
    rng = np.random.default_rng(seed)
    allowed = set(d.support())
    assert allowed == {v for v, w in zip(values, weights) if w > 0}
    assert all(d.sample(rng) in allowed for _ in range(30))


def test_choice_weights_are_honoured():
    d = Choice[str](values=["a", "b", "c"], weights=[1, 3, 0])
    rng = np.random.default_rng(1)
    xs = [d.sample(rng) for _ in range(8000)]
    assert xs.count("c") == 0
    assert abs(xs.count("b") / len(xs) - 0.75) < 0.03


@given(
    low=st.floats(-1e3, 1e3), width=st.floats(1e-3, 1e3), bins=st.one_of(st.none(), st.integers(2, 50)), seed=seeds
)
def test_uniform_samples_within_bounds_and_on_the_grid(low, width, bins, seed):
    d = Uniform(low=low, high=low + width, bins=bins)
    rng = np.random.default_rng(seed)
    xs = [d.sample(rng) for _ in range(20)]
    assert all(low - 1e-9 <= x <= low + width + 1e-9 for x in xs)
    if bins is None:
        with pytest.raises(ValueError, match="bins"):
            d.support()
    else:
        grid = d.support()
        assert len(grid) == len(set(grid)) == bins
        assert all(x in grid for x in xs)


@given(low_exp=st.floats(-8, 3), span=st.floats(0.1, 6), bins=st.integers(2, 30), seed=seeds)
@settings(max_examples=60)
def test_log_uniform_grid_is_geometric(low_exp, span, bins, seed):
    low, high = 10**low_exp, 10 ** (low_exp + span)
    d = LogUniform(low=low, high=high, bins=bins)
    grid = d.support()
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(math.isclose(r, ratios[0], rel_tol=1e-6) for r in ratios)
    rng = np.random.default_rng(seed)
    assert all(d.sample(rng) in grid for _ in range(10))


def test_log_uniform_is_uniform_in_log_space():
    d = LogUniform(low=1e-4, high=1.0)
    rng = np.random.default_rng(0)
    logs = np.log10([d.sample(rng) for _ in range(10000)])
    assert abs(np.mean(logs) + 2) < 0.05
    assert abs(np.mean(logs < -3) - 0.25) < 0.02


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Choice[int](values=[]),
        lambda: Choice[int](values=[1, 1]),
        lambda: Choice[int](values=[1, 2], weights=[1]),
        lambda: Choice[int](values=[1, 2], weights=[1, -1]),
        lambda: IntRange(low=3, high=2),
        lambda: LogIntRange(low=0, high=4),
        lambda: Uniform(low=1.0, high=1.0),
        lambda: LogUniform(low=-1.0, high=1.0),
        lambda: Uniform(low=0, high=1, bins=1),
    ],
)
def test_invalid_distributions_are_rejected(bad):
    with pytest.raises(ValidationError):
        bad()
