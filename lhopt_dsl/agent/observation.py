"""Assembling the policy's and the value function's feature vectors (paper Appendix J).

:mod:`lhopt_dsl.agent.feature_transforms` holds the maths (integral CDF features, NaN handling, the running
normaliser); this module decides *which* features exist and in which order. Vectors are raw but
finite: every NaN or inf becomes a default value with an ``is_nan`` / ``is_inf`` flag beside it.
Normalisation (EMA mean/std, clip to [-2, 2]) belongs to the policy, whose state it is.

Policy features (J.1), per outer step:

1. progress in [0, 1];
2. the previous action, one-hot per dimension;
3. log(train loss / valid loss): is_nan, tanh, integral CDF features (5 values of b);
4. log train loss: is_nan, is_inf, CDF features;  5. log valid loss: the same;
6./7. per checkpoint slot: is_empty, the percentile of its validation loss among all validation
   losses seen so far, and the progress when it was saved;
8. per hyperparameter the policy controls (those of the spec's space): log(current / initial value);
9. log(|theta_k| / |theta_{k-1}|): tanh, CDF features;
10. log(|theta_k - theta_{k-1}| / |theta_{k-1}|): tanh, CDF features;
and for each optimizer statistic of :data:`lhopt_dsl.optim.STAT_NAMES` (averaged over the
statistics steps of the last segment, or the latest one when the segment had none): the raw
value, is_nan, and CDF features. Train loss is the mean over the last segment's steps.

Value features (J.2): the policy features plus a vector encoding of the task's choices, the
initial hyperparameters, the reward so far, raw log losses, and the baseline's validation loss at
the same progress and at its end, when a baseline curve is given.

:class:`FeatureBuilder` lays the vectors out from given values; :class:`Observer` owns the sequence
of one run that those values come from (what was reported in each segment, what was seen before),
and so defines what the policy sees of an observation nobody made.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from ..optim.stats import STAT_NAMES, mean_stats
from ..spec.experiment import ReportingSpec
from ..spec.families import CNNTask, MLPTask, NQMTask, RNNTask, TextRNNTask, TransformerTask
from ..spec.hparams import HyperparameterSpace
from .actions import ActionSpace, Checkpoint
from .feature_transforms import IntegralCDF

NB = 5  # values of b for the integral CDF features
# The critic's task encoding (task_vector) covers the paper's families, a vocabulary fixed with the
# policy files' value size: a family added later (the regression family) encodes as none of them,
# all zeros, so every trained critic still loads. The actor never reads the task.
TASK_CLASSES = (MLPTask, CNNTask, RNNTask, TextRNNTask, TransformerTask, NQMTask)
# Series that get integral CDF features, in order.
CDF_SERIES = ("log_loss_ratio", "log_train", "log_valid", "log_param_norm_ratio", "log_update_ratio", *STAT_NAMES)
# What the policy sees of an observation nobody made (Observer, which lists the cases).
MISSING_LOSS = math.nan  # a training or validation loss that was not reported (cases 1 and 2)
FIRST_RATIOS = (1.0, math.nan)  # (|theta| ratio, update ratio) of the first vector: no previous parameters (case 5)


def _log(x: float) -> float:
    if x is None or not math.isfinite(x):
        return float("nan") if x is None or math.isnan(x) else float("inf")
    return math.log(x) if x > 0 else float("-inf")


def _flagged(x: float) -> tuple[float, float, float]:
    """(value or 0, is_nan, is_inf) for one number: :func:`sanitize` of one value, in plain Python."""
    x = float(x)
    if math.isnan(x):
        return 0.0, 1.0, 0.0
    return (0.0, 0.0, 1.0) if math.isinf(x) else (x, 0.0, 0.0)


def _encode_field(annotation: Any, value: Any) -> list[float]:
    if typing.get_origin(annotation) is typing.Literal:
        options = typing.get_args(annotation)
        return [1.0 if value == o else 0.0 for o in options]
    if annotation is bool:
        return [float(value)]
    if typing.get_origin(annotation) is tuple:
        return [math.log(len(value)), math.log(float(np.mean(value)))] if value else [0.0, 0.0]
    return [math.log(float(value)) if float(value) > 0 else 0.0]


def flatten(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """All parameters as one detached vector (for the parameter-norm features)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def norm_ratios(prev: torch.Tensor, now: torch.Tensor) -> tuple[float, float]:
    """(|now| / |prev|, |now - prev| / |prev|) between two outer steps; NaN when |prev| is 0."""
    prev_norm = float(prev.norm())
    if prev_norm == 0:
        return math.nan, math.nan
    return float(now.norm()) / prev_norm, float((now - prev).norm()) / prev_norm


@functools.lru_cache(maxsize=512)  # tasks are frozen and hashable; the vector never changes in a run
def task_vector(task: Any) -> np.ndarray:
    """Fixed-size encoding of a concrete task: family one-hot, then one block per family.

    Categorical choices are one-hot over their vocabulary, numbers are logged, layer stacks give
    log depth and log mean width. Blocks of other families are zero.
    """
    out = [1.0 if isinstance(task, cls) else 0.0 for cls in TASK_CLASSES]
    for cls in TASK_CLASSES:
        for name, field in cls.model_fields.items():
            if name == "family":
                continue
            zero = _encode_field(field.annotation, getattr(task, name) if isinstance(task, cls) else _blank(field))
            out += zero if isinstance(task, cls) else [0.0] * len(zero)
    vec = np.asarray(out, dtype=np.float32)
    vec.setflags(write=False)  # cached: shared between callers
    return vec


def _blank(field: Any) -> Any:
    ann = field.annotation
    if typing.get_origin(ann) is typing.Literal:
        return typing.get_args(ann)[0]
    if typing.get_origin(ann) is tuple:
        return (1,)
    return False if ann is bool else 1


TASK_VECTOR_SIZE = len(
    task_vector(NQMTask(batch_size=1, inner_steps=2, outer_steps=2, dim=1, spectrum_decay=1.0, noise_scale=1.0))
)


class FeatureBuilder:
    """Keeps a run's feature history and turns each outer step into policy and value vectors."""

    def __init__(self, actions: ActionSpace, space: HyperparameterSpace):
        self.actions = actions
        self.space = space
        self.slots = actions.restarts.checkpoints if actions.restarts.enabled else 0
        self.cdf = IntegralCDF(len(CDF_SERIES))
        self.valid_history: list[float] = []
        blank = self.policy(0.0, None, math.nan, math.nan, [None] * self.slots, {}, {}, math.nan, math.nan, {}, False)
        self.policy_size = len(blank)
        self.value_size = self.policy_size + TASK_VECTOR_SIZE + len(self.actions.names) + 5 * 3 + 2

    def policy_names(self) -> list[str]:
        """A name for each entry of :meth:`policy`'s vector, in its order (``<series>/cdf<b>``: the
        integral CDF feature of that series at the b-th of its :data:`NB` values of b)."""
        cdf = [f"cdf{b}" for b in range(NB)]
        out = ["progress"]
        for name, n in zip([*self.actions.names, "restart"], self.actions.nvec):
            out += [f"prev_action/{name}/{k}" for k in range(n)]
        out += [f"loss_ratio/{x}" for x in ("is_nan", "tanh", *cdf)]
        out += [f"{series}/{x}" for series in ("log_train", "log_valid") for x in ("is_nan", "is_inf", *cdf)]
        out += [f"checkpoint{k}/{x}" for k in range(self.slots) for x in ("is_empty", "percentile", "progress")]
        out += [f"log_hparam/{name}" for name in self.actions.names]  # log(current / initial)
        out += [f"{series}/{x}" for series in CDF_SERIES[3:5] for x in ("tanh", *cdf)]
        out += [f"{series}/{x}" for series in STAT_NAMES for x in ("value", "is_nan_or_inf", *cdf)]
        return out

    def reset(self) -> None:
        self.cdf = IntegralCDF(len(CDF_SERIES))
        self.valid_history = []

    def policy(
        self,
        progress: float,
        prev_action: Sequence[int] | None,
        train_loss: float,
        valid_loss: float,
        checkpoints: Sequence[Checkpoint | None],
        hparams: dict[str, float],
        initial: dict[str, float],
        param_norm_ratio: float,
        update_ratio: float,
        stats: dict[str, float],
        update: bool = True,
    ) -> np.ndarray:
        """The policy vector at ``progress``; ``update`` adds this step to the CDF history."""
        log_train, log_valid = _log(train_loss), _log(valid_loss)
        ratio = log_train - log_valid if math.isfinite(log_train) and math.isfinite(log_valid) else float("nan")
        log_pn, log_up = _log(param_norm_ratio), _log(update_ratio)
        stat_values = [stats.get(name, float("nan")) for name in STAT_NAMES]
        series = np.asarray([ratio, log_train, log_valid, log_pn, log_up, *stat_values], dtype=np.float64)
        if update:
            cdfs = self.cdf.update(progress, series)  # (S, NB); non-finite entries give 0.5
            if math.isfinite(valid_loss):
                self.valid_history.append(valid_loss)
        else:
            cdfs = np.full((len(CDF_SERIES), NB), 0.5)

        out: list[float] = [progress]
        out += self.actions.encode(prev_action).tolist()
        r, r_nan, _ = _flagged(ratio)
        out += [r_nan, math.tanh(r), *cdfs[0]]
        for i, x in ((1, log_train), (2, log_valid)):
            v, nan, inf = _flagged(x)
            out += [nan, inf, *cdfs[i]]
        history = np.asarray(self.valid_history)
        for ckpt in checkpoints:
            if ckpt is None or not len(history):
                out += [1.0, 0.0, 0.0]
            else:
                pct = float(np.mean(history <= ckpt.valid_loss)) if math.isfinite(ckpt.valid_loss) else 1.0
                out += [0.0, pct, ckpt.progress]
        for name in self.actions.names:
            cur, ini = hparams.get(name, 1.0), initial.get(name, 1.0)
            out.append(math.log(cur / ini) if cur > 0 and ini > 0 else 0.0)
        for i, x in ((3, log_pn), (4, log_up)):
            v, _, _ = _flagged(x)
            out += [math.tanh(v), *cdfs[i]]
        for j, x in enumerate(stat_values):
            v, nan, inf = _flagged(x)
            out += [min(max(v, -1e3), 1e3), max(nan, inf), *cdfs[5 + j]]
        return np.asarray(out, dtype=np.float32)

    def value(
        self,
        policy_vec: np.ndarray,
        task: Any,
        initial: dict[str, float],
        reward_so_far: float,
        train_loss: float,
        valid_loss: float,
        baseline_now: float,
        baseline_final: float,
    ) -> np.ndarray:
        """The value function's vector: the policy vector plus non-robust features (J.2)."""
        defaults = self.space.controlled()
        extra = [math.log(initial[n] / defaults[n].init) for n in self.actions.names]
        for x in (reward_so_far, _log(train_loss), _log(valid_loss), _log(baseline_now), _log(baseline_final)):
            v, nan, inf = _flagged(x)
            extra += [float(np.clip(v, -1e3, 1e3)), nan, inf]
        lv, lb = _log(valid_loss), _log(baseline_now)
        gap = lv - lb if math.isfinite(lv) and math.isfinite(lb) else float("nan")
        v, nan, _ = _flagged(gap)
        extra += [math.tanh(v), nan]
        return np.concatenate([policy_vec, task_vector(task), np.asarray(extra, dtype=np.float32)])


@dataclass(frozen=True)
class Cadence:
    """When a run tells its policy the losses, in inner steps (counted from 0).

    ``train_every``: the training loss of step ``i`` is reported when ``i % train_every == 0``
    (1: every step; None: never). ``valid_every``: a validation loss is reported after a segment
    that crosses a multiple of it, and before training starts (0: after every segment, as
    evaluation does; None: never). This is what a user's ``if step % k == 0: opt.observe(...)``
    does in the drop-in; meta-training draws one per task (:func:`draw_cadence`) so that the policy
    learns what such reports look like (:class:`Observer`'s missing observations).
    """

    train_every: int | None = 1
    valid_every: int | None = 0

    def __post_init__(self) -> None:
        if self.train_every is not None and self.train_every < 1:
            raise ValueError(f"train_every must be >= 1 or None, got {self.train_every}")
        if self.valid_every is not None and self.valid_every < 0:
            raise ValueError(f"valid_every must be >= 0 or None, got {self.valid_every}")

    @property
    def full(self) -> bool:
        return self.train_every == 1 and self.valid_every == 0

    def trains(self, step: int) -> bool:
        """Whether the training loss of inner step ``step`` is reported."""
        return self.train_every is not None and step % self.train_every == 0

    def validates(self, start: int, stop: int) -> bool:
        """Whether a validation loss is reported after the segment of steps ``[start, stop)``."""
        if self.valid_every is None:
            return False
        return self.valid_every == 0 or stop // self.valid_every > start // self.valid_every

    def __str__(self) -> str:
        train = "never" if self.train_every is None else f"every {self.train_every}"
        valid = {None: "never", 0: "every decision"}.get(self.valid_every, f"every {self.valid_every}")
        return f"train loss {train}, valid loss {valid}"


FULL_CADENCE = Cadence()


def draw_cadence(reporting: ReportingSpec, seed: int, steps: int) -> Cadence:
    """The cadence of a task with ``steps`` inner steps drawn from ``reporting`` with ``seed``
    (a task's own seed: every run of the task, baseline included, reports alike)."""
    rng = np.random.default_rng([seed, 0x5E9])
    if rng.random() < reporting.full:
        return FULL_CADENCE

    def log_uniform(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    train = None if rng.random() < reporting.train_never else int(round(log_uniform(2, reporting.train_every_max)))
    low, high = reporting.valid_every_fraction
    valid = None if rng.random() < reporting.valid_never else max(1, int(round(steps * log_uniform(low, high))))
    return Cadence(train, valid)


class Seen(NamedTuple):
    """The losses one policy vector saw, at its progress (the value features reuse them)."""

    progress: float
    train_loss: float
    valid_loss: float


class Observer:
    """What a policy sees of one run: told what happens, it gives the policy's vector at each decision.

    Every driver of a policy keeps one per run: the environment of meta-training
    (:class:`~lhopt_dsl.agent.env.InnerTrainingEnv`), the batched population rollouts
    (:func:`~lhopt_dsl.agent.rollout.population_rollouts`) and the drop-in :class:`~lhopt_dsl.controller.LHOPT`.
    They tell it what happens during a segment (:meth:`report` training losses, optimizer statistics
    and validation losses; :meth:`restarted`; :meth:`acted`) and ask at each decision for the policy's
    vector (:meth:`policy`, given the hyperparameters, checkpoints and parameters now) and, where a
    critic needs it, the value vector (:meth:`value`). With this sequence state in one place, a
    policy sees in a user's training loop what it saw in meta-training: equal reports give equal
    vectors (tests/test_observer.py). The i-th vector (from 0) is at progress i / ``outer_steps`` and
    summarises the segment since the previous one:

    * train loss: the mean of the training losses reported in the segment;
    * valid loss: the latest reported, or the restored checkpoint's after a restart that loads one;
    * optimizer statistics: the mean (:func:`~lhopt_dsl.optim.stats.mean_stats`) of the samples
      reported in the segment;
    * parameter-norm ratios: between the parameters given to this vector and to the previous one;
    * the previous action, and each controlled hyperparameter now against ``initial``.

    Missing observations. What the policy sees when something was not reported is decided here and
    nowhere else, in :meth:`_summarise` (and :data:`MISSING_LOSS`). Meta-training produces every
    case below: it tells each task's runs their losses at a :class:`Cadence` drawn per task
    (:func:`draw_cadence`; half of the tasks by default report everything, as evaluation does).

    1. no training loss in a segment: NaN (the train and loss-ratio features are flagged is_nan,
       their CDF features are 0.5 and their history skips it). Always so before the first segment
       (progress 0). Later it means either that no loss was reported (a sparse cadence) or that
       the loss went NaN (a diverged run): the policy tells them apart by the rest of what it sees.
    2. no validation loss reported yet: NaN (flagged as in 1.; with no validation loss in the
       history, a saved checkpoint shows as an empty slot).
    3. no validation loss in a segment: the latest one, unchanged (and added to the percentile
       history again).
    4. no statistics in a segment: those of the latest segment that had some; before any, none, so
       each statistic is NaN with its flag set. Statistics are computed by the optimizer, so every
       cadence has them; their log-scale statistic reads the latest training loss reported in the
       segment (NaN without one).
    5. no previous parameters (the first vector): parameter-norm ratio 1 (unchanged), update ratio
       NaN. No previous action (the first vector): an all-zero one-hot.
    6. after a restart that loads a checkpoint: the validation loss the run had reported when the
       checkpoint was saved (drivers keep what was reported, not what was measured, in their banks).
    """

    def __init__(self, features: FeatureBuilder, outer_steps: int, initial: dict[str, float]):
        features.reset()  # one observer per run: the feature history starts with it
        self.features = features
        self.outer_steps = outer_steps
        self.initial = dict(initial)  # the run's initial hyperparameters (log(current / initial) features)
        self.seen: list[Seen] = []  # one entry per vector given, in order
        self.prev_action: np.ndarray | None = None
        self.valid_loss = MISSING_LOSS  # the latest validation loss
        self._train: list[float] = []  # the current segment's reports
        self._stats: list[dict[str, float]] = []
        self._last_stats: dict[str, float] = {}  # of the latest segment that had some
        self._prev_params: torch.Tensor | None = None  # given to the previous vector

    # --- what happened ---------------------------------------------------------------------------

    def report(
        self, *, train_loss: float | None = None, valid_loss: float | None = None, stats: dict[str, float] | None = None
    ) -> None:
        """Something measured during the current segment: a training loss (one step's, or a segment's
        mean as one report), the validation loss, one statistics step's optimizer statistics (or a
        segment's mean). None or empty: not measured."""
        if train_loss is not None:
            self._train.append(float(train_loss))
        if valid_loss is not None:
            self.valid_loss = float(valid_loss)
        if stats:
            self._stats.append(stats)

    def restarted(self, valid_loss: float) -> None:
        """A restart action ran; ``valid_loss`` is that of the state now current (a loaded
        checkpoint's, the same one otherwise): the policy sees it until a new one is reported."""
        self.valid_loss = float(valid_loss)

    def acted(self, action: np.ndarray) -> None:
        """The action taken at this decision; the next vector shows it."""
        self.prev_action = action

    @property
    def last_train_loss(self) -> float | None:
        """The latest training loss reported since the last vector (None if none was)."""
        return self._train[-1] if self._train else None

    @property
    def progress(self) -> float:
        """Progress of the latest vector, that is of the decision it serves."""
        return self.seen[-1].progress

    # --- saving and resuming -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything this run has told it (and its feature history), as numbers, lists and arrays:
        an observer restored from it gives the next vectors exactly as this one would."""
        return {
            "cdf": self.features.cdf.state_dict(),
            "valid_history": list(self.features.valid_history),
            "seen": [list(s) for s in self.seen],
            "prev_action": None if self.prev_action is None else np.asarray(self.prev_action, dtype=np.int64).copy(),
            "valid_loss": self.valid_loss,
            "train": list(self._train),
            "stats": [dict(s) for s in self._stats],
            "last_stats": dict(self._last_stats),
            "prev_params": None if self._prev_params is None else self._prev_params.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.features.cdf.load_state_dict({k: v.numpy() if torch.is_tensor(v) else v for k, v in state["cdf"].items()})
        self.features.valid_history = [float(v) for v in state["valid_history"]]
        self.seen = [Seen(*(float(x) for x in s)) for s in state["seen"]]
        action = state["prev_action"]
        self.prev_action = None if action is None else np.asarray(action, dtype=np.int64).copy()
        self.valid_loss = float(state["valid_loss"])
        self._train = [float(v) for v in state["train"]]
        self._stats = [{str(k): float(v) for k, v in s.items()} for s in state["stats"]]
        self._last_stats = {str(k): float(v) for k, v in state["last_stats"].items()}
        params = state["prev_params"]
        self._prev_params = None if params is None else torch.as_tensor(params).clone()

    # --- what the policy sees ------------------------------------------------------------------

    def policy(
        self, hparams: dict[str, float], checkpoints: Sequence[Checkpoint | None], params: torch.Tensor
    ) -> np.ndarray:
        """The policy's vector at the next decision, from what was reported since the last one.

        ``params``: all parameters now as one vector (:func:`flatten`); it is kept for the next
        vector's ratios, so must not change in place afterwards.
        """
        progress = len(self.seen) / self.outer_steps
        train, stats, (norm_ratio, update_ratio) = self._summarise(params)
        self.seen.append(Seen(progress, train, self.valid_loss))
        return self.features.policy(progress, self.prev_action, train, self.valid_loss, checkpoints, hparams,
                                    self.initial, norm_ratio, update_ratio, stats)  # fmt: skip

    def value(
        self,
        policy_vec: np.ndarray,
        task: Any,
        reward_so_far: float,
        baseline: Sequence[float] | None = None,
        at: int = -1,
    ) -> np.ndarray:
        """The value function's vector beside ``policy_vec``, the ``at``-th policy vector (default: the latest).

        ``baseline``: the baseline run's validation loss at its evenly spaced evaluations, read at
        the vector's progress and at its end (NaN without one).
        """
        seen = self.seen[at]
        now = final = math.nan
        if baseline is not None and len(baseline):
            idx = min(int(round(seen.progress * (len(baseline) - 1))), len(baseline) - 1)
            now, final = float(baseline[idx]), float(baseline[-1])
        return self.features.value(policy_vec, task, self.initial, reward_so_far, seen.train_loss, seen.valid_loss,
                                   now, final)  # fmt: skip

    def _summarise(self, params: torch.Tensor) -> tuple[float, dict[str, float], tuple[float, float]]:
        """(train loss, statistics, parameter ratios) of the segment just ended; starts the next one.

        The one place that decides what a missing observation looks like (the class docstring's
        list; the validation loss is missing as the NaN it starts with, or stays at the latest).
        """
        train = float(np.mean(self._train)) if self._train else MISSING_LOSS  # 1.
        stats = mean_stats(self._stats) or self._last_stats  # 4.: {} gives NaN for every statistic
        if self._prev_params is None:  # 5.
            ratios = FIRST_RATIOS
        else:
            ratios = norm_ratios(self._prev_params, params)
        self._train, self._stats, self._last_stats, self._prev_params = [], [], stats, params
        return train, stats, ratios

