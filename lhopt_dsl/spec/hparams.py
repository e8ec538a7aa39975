"""The inner optimizer's hyperparameter space: initial values, their noise, actions and bounds.

Defaults are the paper's Table 7 (initial values) and Table 8 (action types, action values and
initial-value noise), plus the restart actions of Appendix I.2 (three checkpoints with save, load
and swap, and a do-nothing action: 10 actions). Moving-average rates are stored as ``1 - beta``
so that multiplicative actions apply naturally.

Noise is applied with the hyperparameter's action type when a task is sampled: a ``scale``
hyperparameter is multiplied by a factor drawn log-uniformly from ``[low, high]`` (Table 8's
``[1e-2, 1e2]`` for the learning rate means "up to 100x either way", which only a log-uniform
draw treats symmetrically); a ``logit_shift`` hyperparameter has ``logit(x)`` shifted by an
amount drawn uniformly from ``[low, high]``. The result is clamped to the bounds.

Bounds are not given by the paper; ours keep every value meaningful (rates in (0, 1], a
clip fraction strictly inside (0, 1)) and wide enough that no noisy initial value from Table 8
touches them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .distributions import StrictModel

ActionType = Literal["scale", "logit_shift"]


class Noise(StrictModel):
    """Range of the random perturbation applied to the initial value when a task is sampled."""

    low: Annotated[float, Field(description="Lower end (a factor for scale, a shift for logit_shift).")]
    high: Annotated[float, Field(description="Upper end; must be >= low.")]


class Action(StrictModel):
    """How the policy may change a hyperparameter at an outer step."""

    type: Annotated[
        ActionType,
        Field(description="scale: multiply by a value; logit_shift: sigmoid(logit(x) + value)."),
    ]
    values: Annotated[
        list[float],
        Field(min_length=1, description="The discrete choices the policy picks from at each outer step."),
    ]


class HParam(StrictModel):
    """One continuous hyperparameter the policy controls."""

    init: Annotated[float, Field(description="Initial value before noise.")]
    noise: Annotated[Noise | None, Field(description="Initial-value noise; null for none.")]
    action: Annotated[Action, Field(description="Action type and the values the policy picks from.")]
    bounds: Annotated[
        tuple[float, float], Field(description="[low, high]: values are clamped here after noise and actions.")
    ]

    @model_validator(mode="after")
    def _check(self) -> "HParam":
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"bounds must be [low, high] with low < high; got {list(self.bounds)}")
        if not low <= self.init <= high:
            raise ValueError(f"init {self.init} lies outside bounds {list(self.bounds)}")
        if self.noise is not None and self.noise.high < self.noise.low:
            raise ValueError(f"noise high ({self.noise.high}) must be >= low ({self.noise.low})")
        if self.action.type == "scale":
            if low <= 0:
                raise ValueError(f"a scale hyperparameter needs positive bounds; got low={low}")
            bad = [v for v in self.action.values if v <= 0]
            if bad:
                raise ValueError(f"scale action values must be > 0; got {bad[0]}")
            if self.noise is not None and self.noise.low <= 0:
                raise ValueError(f"scale noise is a factor and must be > 0; got low={self.noise.low}")
        else:
            if not (0 < low and high < 1):
                raise ValueError(f"a logit_shift hyperparameter needs bounds inside (0, 1); got {list(self.bounds)}")
        return self

    def apply(self, value: float, amount: float) -> float:
        """Apply ``amount`` with this hyperparameter's action type, then clamp to the bounds."""
        if self.action.type == "scale":
            new = value * amount
        else:
            z = math.log(value) - math.log1p(-value) + amount
            new = 1.0 / (1.0 + math.exp(-z))
        low, high = self.bounds
        return min(max(new, low), high)

    def sample_initial(self, rng: np.random.Generator) -> float:
        if self.noise is None:
            return self.init
        lo, hi = self.noise.low, self.noise.high
        if self.action.type == "scale":
            amount = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        else:
            amount = rng.uniform(lo, hi) if hi > lo else lo
        return self.apply(self.init, amount)


def _scale(init: float, values: list[float], noise: tuple[float, float], bounds: tuple[float, float]) -> HParam:
    return HParam(
        init=init, noise=Noise(low=noise[0], high=noise[1]), action=Action(type="scale", values=values), bounds=bounds
    )


class Restarts(StrictModel):
    """Restart actions (Appendix I.2): save, load and swap per checkpoint, plus do-nothing."""

    enabled: Annotated[bool, Field(description="Offer restart actions to the policy.")] = True
    checkpoints: Annotated[int, Field(ge=1, le=8, description="Number of checkpoint slots.")] = 3

    @property
    def num_actions(self) -> int:
        return 3 * self.checkpoints + 1 if self.enabled else 1


#: Names of the continuous hyperparameters, in the order used by actions and features.
HPARAM_NAMES: tuple[str, ...] = (
    "lr",
    "weight_decay",
    "eps",
    "one_minus_beta1",
    "one_minus_beta2",
    "grad_clip_fraction",
    "one_minus_beta_gradclip",
    "one_minus_beta_lamb",
)


class HyperparameterSpace(StrictModel):
    """CIAO's hyperparameters: what the policy controls and how (paper Tables 7 and 8)."""

    lr: Annotated[HParam, Field(description="Learning rate.")] = _scale(
        1e-3, [0.5, 0.707, 0.9, 1.0, 1.1, 1.414, 2.0], (1e-2, 1e2), (1e-6, 1.0)
    )
    weight_decay: Annotated[HParam, Field(description="Decoupled weight decay.")] = _scale(
        1e-2, [0.5, 2.0], (0.1, 10.0), (1e-6, 1.0)
    )
    eps: Annotated[HParam, Field(description="Denominator epsilon.")] = _scale(
        1e-6, [0.5, 2.0], (0.1, 10.0), (1e-10, 1e-1)
    )
    one_minus_beta1: Annotated[HParam, Field(description="1 - momentum rate.")] = _scale(
        0.1, [0.5, 2.0], (0.1, 10.0), (1e-3, 1.0)
    )
    one_minus_beta2: Annotated[HParam, Field(description="1 - second-moment rate.")] = _scale(
        1e-2, [0.5, 2.0], (0.1, 10.0), (1e-5, 1.0)
    )
    grad_clip_fraction: Annotated[
        HParam, Field(description="Clip the gradient norm to this fraction of its moving maximum.")
    ] = HParam(
        init=0.8,
        noise=Noise(low=-1.0, high=1.0),
        action=Action(type="logit_shift", values=[-1.0, -0.3, 0.3, 1.0]),
        bounds=(1e-3, 0.999),
    )
    one_minus_beta_gradclip: Annotated[
        HParam, Field(description="1 - decay of the gradient norm's moving maximum.")
    ] = _scale(1e-2, [0.5, 1.0, 2.0], (0.5, 2.0), (1e-4, 1.0))
    one_minus_beta_lamb: Annotated[
        HParam, Field(description="1 - rate of the update norm's moving average (LAMB normaliser).")
    ] = _scale(0.05, [1 / 1.5, 1.0, 1.5], (0.5, 2.0), (1e-3, 1.0))
    denominator: Annotated[
        Literal["adamax", "adam"], Field(description="Second-moment denominator: Adamax (max) or Adam (EMA).")
    ] = "adamax"
    use_lamb: Annotated[bool, Field(description="Scale updates by the LAMB trust ratio.")] = True
    lamb_min_trust: Annotated[float, Field(gt=0, description="Lower bound of the LAMB trust ratio.")] = 1e-3
    restarts: Annotated[Restarts, Field(description="Checkpoint restart actions (Appendix I.2).")] = Restarts()

    @model_validator(mode="before")
    @classmethod
    def _merge_partial(cls, data: Any) -> Any:
        """Let a spec override part of a hyperparameter (``lr: {init: 3e-4}``); the rest stays default."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name in HPARAM_NAMES:
            value = data.get(name)
            if isinstance(value, dict):
                default = cls.model_fields[name].get_default().model_dump()
                merged[name] = {**default, **value}
        return merged

    def controlled(self) -> dict[str, HParam]:
        return {name: getattr(self, name) for name in HPARAM_NAMES}


class InitialHParams(StrictModel):
    """Concrete initial hyperparameters of one task (after noise)."""

    lr: float
    weight_decay: float
    eps: float
    one_minus_beta1: float
    one_minus_beta2: float
    grad_clip_fraction: float
    one_minus_beta_gradclip: float
    one_minus_beta_lamb: float
    denominator: Literal["adamax", "adam"]
    use_lamb: bool
    lamb_min_trust: float


def sample_hparams(space: HyperparameterSpace, rng: np.random.Generator) -> InitialHParams:
    """Noisy initial hyperparameters: each controlled value perturbed by its noise, then clamped."""
    values = {name: hp.sample_initial(rng) for name, hp in space.controlled().items()}
    return InitialHParams(
        **values, denominator=space.denominator, use_lamb=space.use_lamb, lamb_min_trust=space.lamb_min_trust
    )
