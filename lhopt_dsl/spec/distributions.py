"""Distributions of the task DSL, tagged with ``dist:``.

A field of a task family is either a plain scalar (a fixed value) or one of these distributions.
Every distribution can ``sample(rng)`` a concrete value and report ``support()``, the exact set of
values it can produce; the size of that set is what the distribution contributes to the task
space. Continuous distributions (``uniform``, ``log_uniform``) produce infinitely many values
unless they declare ``bins``: then samples are snapped to ``bins`` evenly spaced points (in log
space for ``log_uniform``), so the declared count is exactly the number of distinct values.
Task families reject continuous distributions without ``bins``; the hyperparameter noise, which is
not part of the task space, may stay continuous.

Specs are shared and checked unattended, so nothing here costs time or memory in proportion to a
number a user writes: ``bins`` and the length of a ``choice`` are capped, integer ranges are
counted and sampled arithmetically (``support()`` of a range is a lazy :class:`range`, and
:func:`support_bounds` / :func:`first_outside` read its ends), and no value is infinite or NaN.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

T = TypeVar("T")
Scalar = Union[bool, int, float, str]

#: Most ``bins`` of a continuous distribution: 1,000 evenly spaced values are as good as
#: continuous for any setting a task family has (the shipped specs use 3 to 7).
MAX_BINS = 1000
#: Most values of one ``choice`` (the longest shipped list, the Transformer's datasets, has 32).
MAX_CHOICE_VALUES = 1000
#: Largest magnitude of an integer range's ends: every integer up to 2**53 is exact as a float,
#: which ``log_int_range`` sampling relies on. Task families cap their fields far lower.
MAX_RANGE_END = 2**53


class StrictModel(BaseModel):
    """Base of every spec model: unknown keys are errors, instances are immutable, and no float is
    infinite or NaN (``weight: .inf`` would make every probability NaN)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Choice(StrictModel, Generic[T]):
    """One of a list of values, uniformly or with the given relative weights."""

    dist: Literal["choice"] = "choice"
    values: Annotated[
        list[T],
        Field(
            min_length=1,
            max_length=MAX_CHOICE_VALUES,
            description=f"The values to choose from (at least one, at most {MAX_CHOICE_VALUES:,}, no repeats).",
        ),
    ]
    weights: Annotated[
        list[Annotated[float, Field(ge=0)]] | None,
        Field(description="Relative weights, one per value (finite, non-negative, not all zero, with a finite "
              "sum). Default: uniform."),
    ] = None

    @model_validator(mode="after")
    def _check(self) -> "Choice[T]":
        keys = [_key(v) for v in self.values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"values must not repeat: {self.values}")
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(
                    f"weights has {len(self.weights)} entries but values has {len(self.values)}; give one weight per value"
                )
            if not any(w > 0 for w in self.weights):
                raise ValueError("at least one weight must be > 0")
            check_weight_sum(self.weights, "weights")
        return self

    def sample(self, rng: np.random.Generator) -> T:
        if self.weights is None:
            return self.values[int(rng.integers(len(self.values)))]
        p = np.asarray(self.weights, dtype=np.float64)
        return self.values[int(rng.choice(len(self.values), p=p / p.sum()))]

    def support(self) -> list[T]:
        """Values that can be sampled (zero-weight values cannot)."""
        if self.weights is None:
            return list(self.values)
        return [v for v, w in zip(self.values, self.weights) if w > 0]


class IntRange(StrictModel):
    """An integer drawn uniformly from ``low`` to ``high``, both included."""

    dist: Literal["int_range"] = "int_range"
    low: Annotated[
        int, Field(ge=-MAX_RANGE_END, le=MAX_RANGE_END, description="Smallest value (included; within +-2**53).")
    ]
    high: Annotated[
        int,
        Field(
            ge=-MAX_RANGE_END, le=MAX_RANGE_END, description="Largest value (included; within +-2**53); must be >= low."
        ),
    ]

    @model_validator(mode="after")
    def _check(self) -> "IntRange":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def support(self) -> range:
        return range(self.low, self.high + 1)


class LogIntRange(StrictModel):
    """An integer from ``low`` to ``high`` (included) whose logarithm is roughly uniform.

    Drawn as ``floor(exp(u))`` with ``u`` uniform on ``[log low, log(high + 1))``, so every integer
    in the range has a positive probability and small values are favoured.
    """

    dist: Literal["log_int_range"] = "log_int_range"
    low: Annotated[int, Field(gt=0, le=MAX_RANGE_END, description="Smallest value (included); must be > 0.")]
    high: Annotated[
        int, Field(gt=0, le=MAX_RANGE_END, description="Largest value (included; at most 2**53); must be >= low.")
    ]

    @model_validator(mode="after")
    def _check(self) -> "LogIntRange":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def sample(self, rng: np.random.Generator) -> int:
        u = rng.uniform(math.log(self.low), math.log(self.high + 1))
        return int(min(max(math.floor(math.exp(u)), self.low), self.high))

    def support(self) -> range:
        return range(self.low, self.high + 1)


class _Continuous(StrictModel):
    low: float
    high: float
    bins: Annotated[
        int | None,
        Field(
            ge=2,
            le=MAX_BINS,
            description=(
                f"Snap samples to this many evenly spaced points (2 to {MAX_BINS:,}; in log space for log_uniform), "
                "which is then exactly the number of distinct values. Required inside task families."
            ),
        ),
    ] = None

    @model_validator(mode="after")
    def _check(self) -> "_Continuous":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must be > low ({self.low})")
        if not math.isfinite(self._to(self.high) - self._to(self.low)):  # -1e308 to 1e308: every grid point NaN
            raise ValueError("high - low overflows a float; narrow the range")
        return self

    def _to(self, x: float) -> float:  # the space in which samples are uniform
        return x

    def _from(self, x: float) -> float:
        return x

    def sample(self, rng: np.random.Generator) -> float:
        lo, hi = self._to(self.low), self._to(self.high)
        if self.bins is None:
            return float(self._from(rng.uniform(lo, hi)))
        return self._point(int(rng.integers(self.bins)))

    def _point(self, k: int) -> float:
        """Point ``k`` of the ``bins`` grid, computed alone (a sample never builds the grid)."""
        lo, hi = self._to(self.low), self._to(self.high)
        assert self.bins is not None
        return float(self._from(lo + (hi - lo) * k / (self.bins - 1)))

    def _grid(self) -> list[float]:
        assert self.bins is not None
        return [self._point(k) for k in range(self.bins)]

    def support(self) -> list[float]:
        if self.bins is None:
            raise ValueError(
                f"a continuous '{self.dist}' distribution has infinitely many values; "  # type: ignore[attr-defined]
                "add 'bins: N' to count it as N evenly spaced values"
            )
        return self._grid()


class Uniform(_Continuous):
    """A float drawn uniformly from ``[low, high]``."""

    dist: Literal["uniform"] = "uniform"
    low: Annotated[float, Field(description="Lower end.")]
    high: Annotated[float, Field(description="Upper end; must be > low.")]


class LogUniform(_Continuous):
    """A positive float whose logarithm is uniform on ``[log low, log high]``."""

    dist: Literal["log_uniform"] = "log_uniform"
    low: Annotated[float, Field(gt=0, description="Lower end; must be > 0.")]
    high: Annotated[float, Field(gt=0, description="Upper end; must be > low.")]

    def _to(self, x: float) -> float:
        return math.log(x)

    def _from(self, x: float) -> float:
        return math.exp(x)


Distribution = Union[Choice[Any], IntRange, LogIntRange, Uniform, LogUniform]
DIST_TAGS = ("choice", "int_range", "log_int_range", "uniform", "log_uniform")


def _tag(value: Any) -> str | None:
    """Discriminator: mappings carry ``dist:``; anything else is a fixed value."""
    if isinstance(value, dict):
        return value.get("dist")
    if isinstance(value, BaseModel):
        return getattr(value, "dist", None)
    return "fixed"


def _dist_field(fixed: Any, *variants: tuple[str, Any], what: str) -> Any:
    tags = ["a fixed value"] + [f"dist: {t}" for t, _ in variants]
    return Annotated[
        Union[(Annotated[fixed, Tag("fixed")], *(Annotated[v, Tag(t)] for t, v in variants))],
        Discriminator(
            _tag,
            custom_error_type="invalid_distribution",
            custom_error_message=f"expected {what}: " + ", or a mapping with ".join(tags),
        ),
    ]


def int_dist() -> Any:
    """Type of a field that is an int or a distribution over ints."""
    return _dist_field(
        int,
        ("choice", Choice[int]),
        ("int_range", IntRange),
        ("log_int_range", LogIntRange),
        what="an integer",
    )


def float_dist() -> Any:
    """Type of a field that is a float or a distribution over floats."""
    return _dist_field(
        float,
        ("choice", Choice[float]),
        ("uniform", Uniform),
        ("log_uniform", LogUniform),
        what="a number",
    )


def choice_dist(value_type: Any) -> Any:
    """Type of a field that is one value of ``value_type`` or a choice among them."""
    return _dist_field(value_type, ("choice", Choice[value_type]), what="a value")


def is_distribution(value: Any) -> bool:
    return isinstance(value, (Choice, IntRange, LogIntRange, Uniform, LogUniform))


def sample_value(value: Any, rng: np.random.Generator) -> Any:
    """Sample a distribution, or return a fixed value unchanged."""
    return value.sample(rng) if is_distribution(value) else value


def support_of(value: Any) -> list[Any] | range:
    """Exact set of values a field can take (a fixed value has one); an integer range's is a lazy
    :class:`range`, which callers must read arithmetically (``len``, ``in``, its ends), never list."""
    return value.support() if is_distribution(value) else [value]


def support_bounds(value: Any) -> tuple[Any, Any]:
    """Smallest and largest value a numeric field can take, without listing a range."""
    support = support_of(value)
    if isinstance(support, range):
        return support[0], support[-1]
    return min(support), max(support)


def first_outside(value: Any, low: float | None, high: float | None) -> Any | None:
    """The first value a numeric field can take (in the order written) outside ``[low, high]``, or
    None; a range is checked at its ends (and names the end outside), so a range of a trillion
    values costs nothing."""
    support = support_of(value)
    if isinstance(support, range):
        if low is not None and support[0] < low:
            return support[0]
        if high is not None and support[-1] > high:
            return support[-1]
        return None
    return next((x for x in support if (low is not None and x < low) or (high is not None and x > high)), None)


def check_weight_sum(weights: list[float], what: str) -> None:
    """Refuse weights whose sum overflows: each is finite, but drawing divides by their sum."""
    if not math.isfinite(sum(weights)):
        raise ValueError(f"{what} add up to more than the largest float; scale them down (only their ratios matter)")


def _key(v: Any) -> tuple[str, Any]:
    # Distinguish 1 from 1.0 from True when checking for repeats.
    return (type(v).__name__, v)
