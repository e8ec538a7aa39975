"""Distributions of the task DSL, tagged with ``dist:``.

A field of a task family is either a plain scalar (a fixed value) or one of these distributions.
Every distribution can ``sample(rng)`` a concrete value and report ``support()``, the exact set of
values it can produce; the size of that set is what the distribution contributes to the task
space. Continuous distributions (``uniform``, ``log_uniform``) produce infinitely many values
unless they declare ``bins``: then samples are snapped to ``bins`` evenly spaced points (in log
space for ``log_uniform``), so the declared count is exactly the number of distinct values.
Task families reject continuous distributions without ``bins``; the hyperparameter noise, which is
not part of the task space, may stay continuous.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

T = TypeVar("T")
Scalar = Union[bool, int, float, str]


class StrictModel(BaseModel):
    """Base of every spec model: unknown keys are errors and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(StrictModel, Generic[T]):
    """One of a list of values, uniformly or with the given relative weights."""

    dist: Literal["choice"] = "choice"
    values: Annotated[
        list[T], Field(min_length=1, description="The values to choose from (at least one, no repeats).")
    ]
    weights: Annotated[
        list[Annotated[float, Field(ge=0)]] | None,
        Field(description="Relative weights, one per value (non-negative, not all zero). Default: uniform."),
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
    low: Annotated[int, Field(description="Smallest value (included).")]
    high: Annotated[int, Field(description="Largest value (included); must be >= low.")]

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
    low: Annotated[int, Field(gt=0, description="Smallest value (included); must be > 0.")]
    high: Annotated[int, Field(gt=0, description="Largest value (included); must be >= low.")]

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
            description=(
                "Snap samples to this many evenly spaced points (in log space for log_uniform), "
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
        return self

    def _to(self, x: float) -> float:  # the space in which samples are uniform
        return x

    def _from(self, x: float) -> float:
        return x

    def sample(self, rng: np.random.Generator) -> float:
        lo, hi = self._to(self.low), self._to(self.high)
        if self.bins is None:
            return float(self._from(rng.uniform(lo, hi)))
        k = int(rng.integers(self.bins))
        return self._grid()[k]

    def _grid(self) -> list[float]:
        lo, hi = self._to(self.low), self._to(self.high)
        assert self.bins is not None
        return [float(self._from(lo + (hi - lo) * k / (self.bins - 1))) for k in range(self.bins)]

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
    """Exact set of values a field can take (a fixed value has one)."""
    return value.support() if is_distribution(value) else [value]


def _key(v: Any) -> tuple[str, Any]:
    # Distinguish 1 from 1.0 from True when checking for repeats.
    return (type(v).__name__, v)
