"""The inner training run as a gymnasium environment, and fixed-schedule training for baselines.

One episode is one inner training run of a :class:`~lhopt_dsl.sample.TaskConfig`: ``reset``
compiles the task and returns the observation at progress 0; each ``step(action)`` applies a
restart action, then the hyperparameter actions, trains the next segment of inner steps with
CIAO, evaluates the validation loss and returns the next observation. The T inner steps are
split into ``outer_steps`` segments of (nearly) equal length, so the policy acts at evenly spaced
progress values 0, 1/K, ..., (K-1)/K and the episode ends at progress 1.

A run whose loss becomes NaN or inf keeps going (flagged in the features), so the policy can still
restart from a checkpoint. The reward is a callable the environment is given; the default,
:func:`log_improvement_reward`, pays the decrease of the log validation loss at every outer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import gymnasium as gym
import numpy as np
import torch

from .actions import ActionSpace, CheckpointBank, apply_action, current_hparams
from .compile import compile_task
from .compile.task import InnerTask
from .observation import FeatureBuilder, flatten, norm_ratios
from .optim import CIAO
from .optim.stats import mean_stats
from .spec.hparams import HPARAM_NAMES, CIAOSpace, HyperparameterSpace, InitialHParams

DIVERGED_PENALTY = 10.0


@dataclass(frozen=True)
class OuterStep:
    """What a reward function sees after each outer step."""

    index: int  # 1-based outer step just completed
    progress: float
    train_loss: float
    valid_loss: float
    prev_valid_loss: float
    done: bool
    config: Any


RewardFn = Callable[[OuterStep], float]


def log_improvement_reward(step: OuterStep) -> float:
    """log(previous valid loss) - log(valid loss): sums to log(initial / final) over an episode.

    A non-finite loss pays ``-DIVERGED_PENALTY``; each step's payment is clipped to that range.
    """
    prev, cur = step.prev_valid_loss, step.valid_loss
    if not math.isfinite(cur):
        return -DIVERGED_PENALTY
    if not math.isfinite(prev):
        return 0.0
    tiny = 1e-30  # a loss of exactly 0 is the best possible, not a divergence
    return float(np.clip(math.log(max(prev, tiny)) - math.log(max(cur, tiny)), -DIVERGED_PENALTY, DIVERGED_PENALTY))


def segment_bounds(inner_steps: int, outer_steps: int) -> list[int]:
    """Inner-step indices where outer steps happen: ``outer_steps + 1`` values from 0 to T."""
    return [round(k * inner_steps / outer_steps) for k in range(outer_steps + 1)]


def ciao_kwargs(h: InitialHParams) -> dict[str, Any]:
    """CIAO's keyword arguments that start a run from a task's initial hyperparameters (in its space)."""
    return h.ciao_kwargs()


@dataclass
class SegmentResult:
    train_loss: float  # mean over the segment's steps (NaN if any was NaN)
    stats: dict[str, float]  # statistics averaged over the segment's statistics steps
    steps: int


def train_segment(
    task: InnerTask, optimizer: torch.optim.Optimizer, steps: int, first_step: int, stats_every: int,
    before_step: Callable[[int], None] | None = None,
) -> SegmentResult:  # fmt: skip
    """Take ``steps`` inner steps; CIAO computes statistics on every ``stats_every``-th step."""
    losses = []
    collected: list[dict[str, float]] = []
    is_ciao = isinstance(optimizer, CIAO)
    for i in range(first_step, first_step + steps):
        if before_step is not None:
            before_step(i)
        loss = task.train_loss(task.next_batch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_ciao:
            want = stats_every > 0 and (i + 1) % stats_every == 0
            optimizer.step(stats=want, loss=float(loss.detach()) if want else None)
            if want and optimizer.stats is not None:
                collected.append(optimizer.stats)
        else:
            optimizer.step()
        losses.append(loss.detach())
    mean_loss = float(torch.stack(losses).double().mean()) if losses else float("nan")
    return SegmentResult(mean_loss, mean_stats(collected), steps)


class InnerTrainingEnv(gym.Env):
    """Gymnasium environment of one inner training run controlled by a policy.

    ``reset(options={"config": TaskConfig, "baseline": [valid losses at each outer step]})``;
    ``step(action)`` with a MultiDiscrete action. Observations are dicts with a ``policy`` and a
    ``value`` vector (finite, not normalised); ``info`` has raw losses and applied hyperparameters.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        hparams: HyperparameterSpace | None = None,
        reward_fn: RewardFn = log_improvement_reward,
        *,
        config: Any = None,
        device: str | torch.device = "cpu",
        data_dir: str | None = None,
        stats_every: int = 4,
        max_valid: int = 512,
    ):
        self.space = hparams or CIAOSpace()
        self.actions = ActionSpace(self.space)
        self.features = FeatureBuilder(self.actions, self.space)
        self.reward_fn = reward_fn
        self.default_config = config
        self.device, self.data_dir = device, data_dir
        self.stats_every, self.max_valid = stats_every, max_valid
        self.action_space = gym.spaces.MultiDiscrete(self.actions.nvec)
        box = lambda n: gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)  # noqa: E731
        self.observation_space = gym.spaces.Dict(
            {"policy": box(self.features.policy_size), "value": box(self.features.value_size)}
        )
        self.task: InnerTask | None = None

    # --- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        cfg = options.get("config", self.default_config)
        if cfg is None:
            raise ValueError("reset needs a task: pass options={'config': TaskConfig} or InnerTrainingEnv(config=...)")
        self.space.check_initial(cfg.hparams)
        self.config = cfg
        self.baseline = np.asarray(options["baseline"], dtype=np.float64) if options.get("baseline") is not None else None
        self.task = compile_task(cfg, self.device, self.data_dir, max_valid=self.max_valid)
        self.optimizer = CIAO(self.task.params, **ciao_kwargs(cfg.hparams))
        self.initial = cfg.hparams.controlled()
        self.bank = CheckpointBank(self.features.slots, HPARAM_NAMES)
        self.bounds = segment_bounds(self.task.steps, self.task.outer_steps)
        self.k = 0
        self.reward_so_far = 0.0
        self.prev_action: np.ndarray | None = None
        self.stats: dict[str, float] = {}
        self.features.reset()
        self.valid_loss = self.task.valid_loss()
        self.train_loss = float("nan")
        self.prev_params = flatten(self.task.params)
        self.curve = [self.valid_loss]
        self.test_loss = float("nan")
        obs = self._observe(param_norm_ratio=1.0, update_ratio=float("nan"))
        return obs, self._info(applied=current_hparams(self.optimizer), restart=("none", -1))

    def step(self, action: Sequence[int]):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if self.k >= self.task.outer_steps:
            raise RuntimeError("the episode has ended; call reset()")
        a = self.actions.check(action)
        progress = self.k / self.task.outer_steps
        kind, slot = self.actions.restart(a) if self.features.slots else ("none", -1)
        # The reward compares with the loss the run had before any restart: a load that jumps back
        # to a better checkpoint must not be paid for twice (rewards telescope over the episode).
        prev_valid = self.valid_loss
        self.valid_loss = self.bank.apply(kind, slot, self.task.model, self.optimizer, progress, self.valid_loss)
        applied = apply_action(self.optimizer, self.actions, a)
        start, stop = self.bounds[self.k], self.bounds[self.k + 1]
        seg = train_segment(self.task, self.optimizer, stop - start, start, self.stats_every)
        self.stats = seg.stats or self.stats  # keep the latest statistics when a segment had none
        self.train_loss = seg.train_loss
        self.valid_loss = self.task.valid_loss()
        self.curve.append(self.valid_loss)
        self.k += 1
        done = self.k == self.task.outer_steps
        if done:  # the score of evaluations: measured once the run is over, never observed
            self.test_loss = self.task.test_loss()
        reward = float(self.reward_fn(OuterStep(self.k, self.k / self.task.outer_steps, self.train_loss,
                                                self.valid_loss, prev_valid, done, self.config)))  # fmt: skip
        self.reward_so_far += reward
        self.prev_action = a
        now = flatten(self.task.params)
        ratios = norm_ratios(self.prev_params, now)
        self.prev_params = now
        obs = self._observe(*ratios)
        info = self._info(applied=applied, restart=(kind, slot))
        if done:
            info["test_loss"] = self.test_loss  # the run's score; the policy never sees it
        return obs, reward, done, False, info

    # --- helpers -------------------------------------------------------------------------------

    def _observe(self, param_norm_ratio: float, update_ratio: float) -> dict[str, np.ndarray]:
        progress = self.k / self.task.outer_steps
        policy = self.features.policy(
            progress, self.prev_action, self.train_loss, self.valid_loss, self.bank.slots, current_hparams(self.optimizer),
            self.initial, param_norm_ratio, update_ratio, self.stats,
        )  # fmt: skip
        base_now = base_final = float("nan")
        if self.baseline is not None and len(self.baseline):
            idx = min(int(round(progress * (len(self.baseline) - 1))), len(self.baseline) - 1)
            base_now, base_final = float(self.baseline[idx]), float(self.baseline[-1])
        value = self.features.value(policy, self.config.task, self.initial, self.reward_so_far,
                                    self.train_loss, self.valid_loss, base_now, base_final)  # fmt: skip
        return {"policy": policy, "value": value}

    def _info(self, applied: dict[str, float], restart: tuple[str, int]) -> dict[str, Any]:
        return {
            "outer_step": self.k,
            "progress": self.k / self.task.outer_steps,
            "inner_step": self.bounds[self.k],
            "train_loss": self.train_loss,
            "valid_loss": self.valid_loss,
            "diverged": not math.isfinite(self.valid_loss),
            "hparams": applied,
            "restart": restart,
        }


# --- fixed schedules (baselines) -------------------------------------------------------------------

ScheduleShape = Literal["constant", "multi_step", "linear", "quadratic", "exponential", "cosine", "cosine_0.1"]
SHAPES: tuple[str, ...] = ("constant", "multi_step", "linear", "quadratic", "exponential", "cosine", "cosine_0.1")


def shape_factor(shape: str, p: float) -> float:
    """Learning-rate multiplier at progress ``p`` in [0, 1] for the paper's seven schedules (4.1).

    multi_step: x0.1 at 50% and x0.01 at 75% of the run; exponential: decays to 1% at the end.
    """
    if shape == "constant":
        return 1.0
    if shape == "multi_step":
        return 1.0 if p < 0.5 else (0.1 if p < 0.75 else 0.01)
    if shape == "linear":
        return 1.0 - p
    if shape == "quadratic":
        return (1.0 - p) ** 2
    if shape == "exponential":
        return 0.01**p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "cosine_0.1":
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule shape '{shape}'; known: {', '.join(SHAPES)}")


@dataclass(frozen=True)
class Schedule:
    """A fixed baseline: AdamW with a learning-rate shape, or CIAO at fixed hyperparameters.

    ``optimizer="ciao"`` uses the task's initial hyperparameters (scaled by the shape over time).
    """

    optimizer: Literal["adamw", "ciao"] = "adamw"
    lr: float = 1e-3
    shape: str = "constant"
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.shape}-lr{self.lr:g}" if self.optimizer == "adamw" else f"ciao-{self.shape}"


@dataclass
class LearningCurve:
    """Losses of a fixed run, measured at ``steps``; the test split is measured at the same points.

    The test loss is the score of evaluations (no run sees it: nothing decides on it), and its
    curve is what speedups are read from; ``test_loss`` is its last value.
    """

    steps: list[int]  # inner steps at which the losses were measured (0 first)
    valid_loss: list[float]
    train_loss: list[float] = field(default_factory=list)  # mean training loss of each segment
    test_loss: float = float("nan")
    test_curve: list[float] = field(default_factory=list)  # test loss at each of ``steps``

    def losses(self, score: str) -> list[float]:
        """The curve used to score: ``"test"`` (the test curve) or ``"valid"``."""
        if score == "test":
            return self.test_curve
        if score == "valid":
            return self.valid_loss
        raise ValueError(f"unknown score '{score}'; use 'test' or 'valid'")

    @property
    def progress(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.float64) / max(self.steps[-1], 1)


def evaluation_count(task: InnerTask, total_steps: int) -> int:
    """Validation measurements of a fixed run: as many as the task's outer steps, scaled by length."""
    return max(1, round(task.outer_steps * total_steps / task.steps))


def train_and_measure(
    task: InnerTask, optimizer: torch.optim.Optimizer, total_steps: int, evaluations: int, *,
    before_step: Callable[[int], None] | None = None, before_train: Callable[[], None] | None = None,
    before_eval: Callable[[], None] | None = None,
) -> LearningCurve:  # fmt: skip
    """Train for ``total_steps`` with a fixed optimizer, measuring the validation and test losses at
    ``evaluations`` evenly spaced points (and the untrained model first).

    ``before_train`` / ``before_eval`` let optimizers with separate train and eval points
    (Schedule-Free) switch between them.
    """

    def measure(fn: Callable[[], float]) -> float:
        if before_eval is not None:
            before_eval()
        return fn()

    bounds = segment_bounds(total_steps, evaluations)
    curve = LearningCurve([0], [task.valid_loss()], test_curve=[task.test_loss()])
    for a, b in zip(bounds, bounds[1:]):
        if before_train is not None:
            before_train()
        seg = train_segment(task, optimizer, b - a, a, stats_every=0, before_step=before_step)
        curve.steps.append(b)
        curve.valid_loss.append(measure(task.valid_loss))
        curve.test_curve.append(measure(task.test_loss))
        curve.train_loss.append(seg.train_loss)
    curve.test_loss = curve.test_curve[-1]
    return curve


def run_schedule(
    cfg: Any, schedule: Schedule, *, steps: int | None = None, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None,
) -> LearningCurve:  # fmt: skip
    """Train ``cfg``'s task with a fixed schedule for ``steps`` (default T) and return its curve.

    The validation loss is measured at ``evaluations`` evenly spaced points (default: as many as
    the task's outer steps, scaled with ``steps / T``), on exactly the task (weights, data order)
    that a policy would see.
    """
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    total = steps or task.steps
    if schedule.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(task.params, lr=schedule.lr, betas=schedule.betas,
                                                       eps=schedule.eps, weight_decay=schedule.weight_decay)  # fmt: skip
    else:
        opt = CIAO(task.params, **ciao_kwargs(cfg.hparams))
    base_lr = opt.param_groups[0]["lr"]

    def set_lr(i: int) -> None:
        for g in opt.param_groups:
            g["lr"] = base_lr * shape_factor(schedule.shape, i / total)

    return train_and_measure(task, opt, total, evaluations or evaluation_count(task, total), before_step=set_lr)
