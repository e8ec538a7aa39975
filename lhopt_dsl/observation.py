"""Assembling the policy's and the value function's feature vectors (paper Appendix J).

:mod:`lhopt_dsl.features` holds the maths (integral CDF features, NaN handling, the running
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
"""

from __future__ import annotations

import functools
import math
import typing
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .actions import ActionSpace, Checkpoint
from .features import IntegralCDF, sanitize
from .optim.stats import STAT_NAMES
from .spec.families import CNNTask, MLPTask, NQMTask, RNNTask, TextRNNTask, TransformerTask
from .spec.hparams import HyperparameterSpace

NB = 5  # values of b for the integral CDF features
TASK_CLASSES = (MLPTask, CNNTask, RNNTask, TextRNNTask, TransformerTask, NQMTask)
# Series that get integral CDF features, in order.
CDF_SERIES = ("log_loss_ratio", "log_train", "log_valid", "log_param_norm_ratio", "log_update_ratio", *STAT_NAMES)


def _log(x: float) -> float:
    if x is None or not math.isfinite(x):
        return float("nan") if x is None or math.isnan(x) else float("inf")
    return math.log(x) if x > 0 else float("-inf")


def _flagged(x: float) -> tuple[float, float, float]:
    """(value or 0, is_nan, is_inf) for one number."""
    v, nan, inf = sanitize(np.asarray([x], dtype=np.float64))
    return float(v[0]), float(nan[0]), float(inf[0])


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
            out += [float(np.clip(v, -1e3, 1e3)), max(nan, inf), *cdfs[5 + j]]
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
