"""The inner training run as a gymnasium environment.

One episode is one inner training run of a :class:`~lhopt_dsl.spec.sample.TaskConfig`: ``reset``
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

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from ..optim import CIAO
from ..spec.hparams import HPARAM_NAMES, CIAOSpace, HyperparameterSpace
from ..spec.sample import TaskConfig
from ..spec.schedule import segment_bounds
from ..tasks import compile_task
from ..tasks.task import InnerTask
from ..tasks.training import ciao_kwargs, train_segment
from .actions import ActionSpace, CheckpointBank, apply_action, current_hparams
from .actor import take
from .observation import FULL_CADENCE, FeatureBuilder, Observer, flatten

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
    config: TaskConfig


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
        config: TaskConfig | None = None,
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
        self.cadence = options.get("cadence") or FULL_CADENCE  # what the policy is told (rewards use every loss)
        self.observer = Observer(self.features, self.task.outer_steps, self.initial)
        self.bank = CheckpointBank(self.features.slots, HPARAM_NAMES)
        self.bounds = segment_bounds(self.task.steps, self.task.outer_steps)
        self.k = 0
        self.reward_so_far = 0.0
        self.valid_loss = self.task.valid_loss()
        self.train_loss = float("nan")  # nothing trained yet
        if self.cadence.valid_every is not None:
            self.observer.report(valid_loss=self.valid_loss)
        self.curve = [self.valid_loss]
        self.test_loss = float("nan")
        obs = self._observe()
        return obs, self._info(applied=current_hparams(self.optimizer), restart=("none", -1))

    def step(self, action: Sequence[int]):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if self.k >= self.task.outer_steps:
            raise RuntimeError("the episode has ended; call reset()")
        # The reward compares with the loss the run had before any restart: a load that jumps back
        # to a better checkpoint must not be paid for twice (rewards telescope over the episode).
        prev_valid = self.valid_loss
        # The measured validation loss is measured again after the segment.
        taken = take(np.asarray(action), actions=self.actions, observer=self.observer, bank=self.bank,
                     model=self.task.model, optimizer=self.optimizer,
                     set_hparams=functools.partial(apply_action, self.optimizer, self.actions))  # fmt: skip
        start, stop = self.bounds[self.k], self.bounds[self.k + 1]
        seg = train_segment(self.task, self.optimizer, stop - start, start, self.stats_every, reports=self.cadence.trains)
        self.train_loss = seg.train_loss
        self.valid_loss = self.task.valid_loss()
        self.observer.report(train_loss=seg.reported_loss, stats=seg.stats,
                             valid_loss=self.valid_loss if self.cadence.validates(start, stop) else None)  # fmt: skip
        self.curve.append(self.valid_loss)
        self.k += 1
        done = self.k == self.task.outer_steps
        if done:  # the score of evaluations: measured once the run is over, never observed
            self.test_loss = self.task.test_loss()
        reward = float(self.reward_fn(OuterStep(self.k, self.k / self.task.outer_steps, self.train_loss,
                                                self.valid_loss, prev_valid, done, self.config)))  # fmt: skip
        self.reward_so_far += reward
        obs = self._observe()
        info = self._info(applied=taken.applied, restart=taken.restart)
        if done:
            info["test_loss"] = self.test_loss  # the run's score; the policy never sees it
        return obs, reward, done, False, info

    # --- helpers -------------------------------------------------------------------------------

    def _observe(self) -> dict[str, np.ndarray]:
        policy = self.observer.policy(current_hparams(self.optimizer), self.bank.slots, flatten(self.task.params))
        value = self.observer.value(policy, self.config.task, self.reward_so_far, self.baseline)
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
