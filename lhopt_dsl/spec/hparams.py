"""The inner optimizer's hyperparameter space: initial values, their noise, actions and bounds.

A spec chooses a space with ``space:``. ``ciao`` (the default) is the paper's: the policy controls
CIAO's eight continuous hyperparameters, with LAMB's trust ratio and Adamax's denominator.
``adamw`` pins CIAO to exactly ``torch.optim.AdamW`` and lets the policy control AdamW's lr, eps,
beta2 and weight decay (paper Section 4.5, Appendix B): the only space whose schedules mean the
same thing on ``torch.optim.AdamW``, since CIAO's units differ (its weight decay and step are
scaled by the trust ratio, its beta2 decays an Adamax maximum, it clips gradients).

CIAO-space defaults are the paper's Table 7 (initial values) and Table 8 (action types, action values and
initial-value noise), plus the restart actions of Appendix I.2 (three checkpoints with save, load
and swap, and a do-nothing action: 10 actions). Moving-average rates are stored as ``1 - beta``
so that multiplicative actions apply naturally.

Noise is applied with the hyperparameter's action type when a task is sampled: a ``scale``
hyperparameter is multiplied by a factor drawn log-uniformly from ``[low, high]`` (Table 8's
``[1e-2, 1e2]`` for the learning rate means "up to 100x either way", which only a log-uniform
draw treats symmetrically); a ``logit_shift`` hyperparameter has ``logit(x)`` shifted by an
amount drawn uniformly from ``[low, high]``. The result is clamped to the bounds.

Bounds are not given by the paper. Ours keep every value where training still makes sense, so
that no policy, however undertrained, can take a user's run somewhere no tuned optimizer would
go: learning rate and weight decay at most 0.1 (the largest noisy initial value of Table 8;
CIAO's trust ratio makes its learning rate a relative step, so 0.1 moves every weight by up to
10% per step), beta1 at least 0.5 and beta2 at least 0.9 (a policy that set beta1 to 0 or
weight decay to 1 ended a user's run at NaN). Table 8's noise can draw 1 - beta1 up to 1; such a
draw is clamped to 0.5. A spec may give other bounds.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Mapping, Union

import numpy as np
from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, create_model, model_validator

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
        if self.noise is not None and not math.isfinite(self.noise.high - self.noise.low):
            raise ValueError("noise high - low overflows a float (no draw could be made); narrow the range")
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
            try:
                new = 1.0 / (1.0 + math.exp(-z))
            except OverflowError:  # z below -709: the sigmoid is 0 to double precision (then clamped)
                new = 0.0
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


#: Learning rate and weight decay: the same defaults in every space (Tables 7 and 8).
_LR = _scale(1e-3, [0.5, 0.707, 0.9, 1.0, 1.1, 1.414, 2.0], (1e-2, 1e2), (1e-6, 0.1))
_WEIGHT_DECAY = _scale(1e-2, [0.5, 2.0], (0.1, 10.0), (1e-6, 0.1))


class _Space(StrictModel):
    """What every hyperparameter space shares: its fields say what the policy controls.

    A space's ``HParam`` fields are the hyperparameters the policy controls, in the order used by
    actions and features; its other fields but ``space`` and ``restarts`` are settings that every
    task of the space copies; ``CIAO_FIXED`` holds the CIAO settings the space pins.
    """

    CIAO_FIXED: ClassVar[dict[str, Any]] = {}

    @classmethod
    def hparam_names(cls) -> tuple[str, ...]:
        """The hyperparameters the policy controls, in declaration order."""
        return tuple(n for n, f in cls.model_fields.items() if f.annotation is HParam)

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The fixed settings a task copies from the spec (not controlled by the policy)."""
        skip = {"space", "restarts", *cls.hparam_names()}
        return tuple(n for n in cls.model_fields if n not in skip)

    @model_validator(mode="before")
    @classmethod
    def _check_keys_and_merge_partial(cls, data: Any) -> Any:
        """Reject another space's hyperparameters and settings, naming the space they belong to;
        let a spec override part of a hyperparameter (``lr: {init: 3e-4}``), the rest staying this
        space's default."""
        if not isinstance(data, dict):
            return data
        space = cls.model_fields["space"].default
        for key in data:
            if key in cls.model_fields:
                continue
            owner = next((tag for tag, other in SPACES.items() if key in other.model_fields), None)
            if owner is not None:
                raise ValueError(
                    f"'{key}' belongs to the {owner} space, not to the {space} space, whose policy controls "
                    f"{', '.join(cls.hparam_names())}; remove it or set `space: {owner}`"
                )
        merged = dict(data)
        for name in cls.hparam_names():
            value = data.get(name)
            if isinstance(value, dict):
                default = cls.model_fields[name].get_default().model_dump()
                merged[name] = {**default, **value}
        return merged

    def controlled(self) -> dict[str, HParam]:
        return {name: getattr(self, name) for name in self.hparam_names()}

    def check_initial(self, initial: InitialHParams) -> None:
        """Raise ValueError when a task's initial hyperparameters belong to another space."""
        if initial.space != self.space:
            raise ValueError(
                f"the task's initial hyperparameters are in the {initial.space} space, but the policy acts in the "
                f"{self.space} space; sample the task from a spec with `hparams: {{space: {self.space}}}`"
            )

    def initial(self, values: Mapping[str, float] | None = None) -> InitialHParams:
        """Concrete initial hyperparameters of a task: ``values`` (default: each ``init``) and the
        space's settings. Raises a ValidationError naming any value that is not the space's."""
        if values is None:
            values = {name: hp.init for name, hp in self.controlled().items()}
        settings = {name: getattr(self, name) for name in self.setting_names()}
        return _INITIAL[self.space](**values, **settings)


class CIAOSpace(_Space):
    """The CIAO space (the default): the policy controls CIAO's hyperparameters (paper Tables 7, 8)."""

    space: Annotated[
        Literal["ciao"],
        Field(description="`ciao` (the default when absent): CIAO with LAMB's trust ratio and Adamax's denominator, "
              "as in the paper; `adamw`: see AdamWSpace."),
    ] = "ciao"
    lr: Annotated[HParam, Field(description="Learning rate.")] = _LR
    weight_decay: Annotated[HParam, Field(description="Decoupled weight decay.")] = _WEIGHT_DECAY
    eps: Annotated[HParam, Field(description="Denominator epsilon.")] = _scale(
        1e-6, [0.5, 2.0], (0.1, 10.0), (1e-10, 1e-1)
    )
    one_minus_beta1: Annotated[HParam, Field(description="1 - momentum rate.")] = _scale(
        0.1, [0.5, 2.0], (0.1, 10.0), (1e-3, 0.5)
    )
    one_minus_beta2: Annotated[HParam, Field(description="1 - second-moment rate.")] = _scale(
        1e-2, [0.5, 2.0], (0.1, 10.0), (1e-5, 0.1)
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


class AdamWSpace(_Space):
    """The AdamW space: CIAO runs as exactly `torch.optim.AdamW` (Adam denominator, no LAMB trust
    ratio, no gradient clipping, AdamW's bias correction, beta1 fixed at 0.9) and the policy
    controls AdamW's lr, eps, beta2 and weight decay (paper Section 4.5, Appendix B), so the
    schedules it chooses mean the same thing on AdamW (`lhopt schedule export`, `ScheduleReplay`).
    Initial values are AdamW's defaults (lr 1e-3, eps 1e-8, beta2 0.999, weight decay 1e-2) with
    Table 8's actions and noise.

    beta1 stays at AdamW's default, as in the paper, which found it hard to set robustly from
    small models. The bias correction is AdamW's ``1 - beta**t`` with the current betas (CIAO's
    ``bias_correction="power"``), which differs from CIAO's running product once beta2 changes.
    """

    CIAO_FIXED: ClassVar[dict[str, Any]] = {
        "one_minus_beta1": 0.1,
        "denominator": "adam",
        "use_clip": False,
        "use_lamb": False,
        "bias_correction": "power",
    }

    space: Annotated[
        Literal["adamw"], Field(description="`adamw`, which a spec must give to choose this space.")
    ] = "adamw"
    lr: Annotated[HParam, Field(description="AdamW's learning rate.")] = _LR
    weight_decay: Annotated[
        HParam, Field(description="AdamW's decoupled weight decay (each step scales weights by 1 - lr * weight_decay).")
    ] = _WEIGHT_DECAY
    eps: Annotated[HParam, Field(description="AdamW's eps, added to the root of the second moment.")] = _scale(
        1e-8, [0.5, 2.0], (0.1, 10.0), (1e-12, 1e-1)
    )
    one_minus_beta2: Annotated[HParam, Field(description="1 - AdamW's beta2 (the second moment's rate).")] = _scale(
        1e-3, [0.5, 2.0], (0.1, 10.0), (1e-5, 0.1)
    )
    restarts: Annotated[
        Restarts,
        Field(description="Checkpoint restart actions; off by default: a fixed schedule cannot replay a restart."),
    ] = Restarts(enabled=False)


#: The spaces by their ``space:`` tag.
SPACES: dict[str, type[_Space]] = {"ciao": CIAOSpace, "adamw": AdamWSpace}

#: CIAO's continuous hyperparameters (every space controls some of them), in the order used by
#: actions and features.
HPARAM_NAMES: tuple[str, ...] = CIAOSpace.hparam_names()


def _space_tag(value: Any) -> str:
    """The ``space:`` tag of a mapping or model; specs, policies and task configs written before
    spaces existed have none and are CIAO's."""
    if isinstance(value, dict):
        return value.get("space", "ciao")
    return getattr(value, "space", "ciao")


def _tagged_union(models: dict[str, type[BaseModel]]) -> Any:
    return Annotated[
        Union[tuple(Annotated[m, Tag(t)] for t, m in models.items())],
        Discriminator(
            _space_tag,
            custom_error_type="unknown_space",
            custom_error_message="expected `space: " + "` or `space: ".join(models) + "` (ciao when absent)",
        ),
    ]


#: A hyperparameter space of a spec: CIAO's (default) or AdamW's, told apart by ``space:``.
HyperparameterSpace = _tagged_union(SPACES)
_SPACE_ADAPTER: TypeAdapter[Any] = TypeAdapter(HyperparameterSpace)


def validate_space(data: Any) -> CIAOSpace | AdamWSpace:
    """A hyperparameter space from plain data (a spec's ``hparams``; ``{}`` is the CIAO space)."""
    return _SPACE_ADAPTER.validate_python(data)


class _Initial(StrictModel):
    """Concrete initial hyperparameters of one task (after noise), in one space; the models made by
    :func:`_initial_model` add the ``space`` tag and the values."""

    def controlled(self) -> dict[str, float]:
        """The values of the hyperparameters the policy controls."""
        return {name: getattr(self, name) for name in SPACES[self.space].hparam_names()}

    def ciao_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~lhopt_dsl.optim.CIAO` that start a run of this task."""
        return {**self.model_dump(exclude={"space"}), **SPACES[self.space].CIAO_FIXED}


def _initial_model(space: type[_Space], name: str, dump_tag: bool) -> type[_Initial]:
    """The model of a task's concrete initial hyperparameters in ``space``: a float per controlled
    hyperparameter, then the space's settings. ``dump_tag=False`` leaves the ``space:`` tag out of
    dumps (CIAO's: configs and their task ids from before spaces existed stay as they were)."""
    tag = space.model_fields["space"]
    fields: dict[str, Any] = {"space": (tag.annotation, Field(tag.default, exclude=not dump_tag))}
    fields.update({n: (float, ...) for n in space.hparam_names()})
    fields.update({n: (space.model_fields[n].annotation, ...) for n in space.setting_names()})
    doc = f"Concrete initial hyperparameters of one task in the {tag.default} space (after noise)."
    return create_model(name, __base__=_Initial, __doc__=doc, **fields)


CIAOInitial = _initial_model(CIAOSpace, "CIAOInitial", dump_tag=False)
AdamWInitial = _initial_model(AdamWSpace, "AdamWInitial", dump_tag=True)
_INITIAL: dict[str, type[_Initial]] = {"ciao": CIAOInitial, "adamw": AdamWInitial}
#: A task's initial hyperparameters, in the space of the spec it was sampled from.
InitialHParams = _tagged_union(_INITIAL)


def sample_hparams(space: HyperparameterSpace, rng: np.random.Generator) -> InitialHParams:
    """Noisy initial hyperparameters: each controlled value perturbed by its noise, then clamped."""
    return space.initial({name: hp.sample_initial(rng) for name, hp in space.controlled().items()})
