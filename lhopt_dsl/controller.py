"""A trained policy in your own training loop, and fixed schedules exported from it.

``LHOPT`` is a drop-in ``torch.optim.Optimizer`` (CIAO underneath) that lets a policy change its
hyperparameters at evenly spaced outer steps. What it needs from you is what the paper's plug-in
requirement names: progress (from ``total_steps`` and the ``step()`` calls), the training loss and
the validation loss, given with ``observe()`` whenever you have them::

    opt = LHOPT(model.parameters(), total_steps=10_000)          # the shipped default policy
    for step in range(10_000):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward()
        opt.observe(train_loss=loss.item())                      # before step(): its statistics use it
        opt.step()
        if step % 500 == 0:
            opt.observe(valid_loss=evaluate(model))

``ScheduleReplay`` plays a recorded schedule (learning rate, eps, beta2, weight decay over
progress) on a standard ``torch.optim.AdamW``, stretched to any number of updates, like a
learning-rate scheduler (paper Section 4.5, Appendix B).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from .actions import ActionSpace, CheckpointBank, apply_action, current_hparams
from .env import segment_bounds
from .observation import FeatureBuilder, flatten, norm_ratios
from .optim import CIAO
from .optim.stats import mean_stats
from .policy import ActorCritic
from .spec.hparams import HPARAM_NAMES, HyperparameterSpace

DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.pt"


def load_policy(policy: ActorCritic | str | os.PathLike[str] | None) -> tuple[ActorCritic, HyperparameterSpace]:
    """A policy object, a checkpoint path (``policy.pt`` or a training ``checkpoint.pt``), or None
    for the shipped default; returns it with the hyperparameter space it was trained with."""
    if isinstance(policy, ActorCritic):
        return policy, HyperparameterSpace()
    path = Path(policy) if policy is not None else DEFAULT_POLICY
    if not path.exists():
        raise FileNotFoundError(f"policy checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    space = HyperparameterSpace.model_validate(state.get("spec", {}).get("hparams", {}))
    return ActorCritic.from_checkpoint(state["policy"]), space


class _Params(nn.Module):
    """Exposes an optimizer's parameters as a module, so restarts can checkpoint them."""

    def __init__(self, params: Sequence[nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterList(params)


class LHOPT(CIAO):
    """CIAO driven by a learned policy; see the module docstring.

    ``outer_steps`` is how many times the policy acts over ``total_steps`` (default: 32, at most
    ``total_steps``); ``model`` (optional) lets restart actions include buffers such as BatchNorm
    statistics, otherwise restarts cover the parameters and optimizer state.
    """

    def __init__(
        self,
        params: Iterable[Any],
        policy: ActorCritic | str | os.PathLike[str] | None = None,
        *,
        total_steps: int,
        outer_steps: int | None = None,
        initial: dict[str, float] | None = None,
        model: nn.Module | None = None,
        deterministic: bool = True,
        seed: int = 0,
        stats_every: int = 4,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.policy, self.space = load_policy(policy)
        defaults = {n: hp.init for n, hp in self.space.controlled().items()}
        defaults.update(denominator=self.space.denominator, use_lamb=self.space.use_lamb,
                        lamb_min_trust=self.space.lamb_min_trust)  # fmt: skip
        defaults.update(initial or {})
        super().__init__(params, **defaults)
        self.actions = ActionSpace(self.space)
        self.features = FeatureBuilder(self.actions, self.space)
        self.policy.check_compatible(self.features.policy_size, self.features.value_size, self.actions.nvec)
        self.total_steps = total_steps
        self.outer_steps = min(outer_steps or 32, total_steps)
        self.bounds = segment_bounds(total_steps, self.outer_steps)
        self.stats_every, self.deterministic = stats_every, deterministic
        self.generator = torch.Generator().manual_seed(seed)
        self._all_params = [p for g in self.param_groups for p in g["params"]]
        self._module = model if model is not None else _Params(self._all_params)
        self.bank = CheckpointBank(self.features.slots, HPARAM_NAMES)
        self.initial = current_hparams(self)
        self.step_count, self.decisions = 0, 0
        self._state: tuple = (None, None)
        self._prev_action: np.ndarray | None = None
        self._train_losses: list[float] = []
        self._valid_loss = math.nan
        self._stats: list[dict[str, float]] = []
        self._last_stats: dict[str, float] = {}
        self._prev_flat = flatten(self._all_params)
        self.history: list[dict[str, Any]] = []  # hyperparameters chosen at each decision

    def observe(self, *, train_loss: float | None = None, valid_loss: float | None = None) -> None:
        """Report losses; the policy sees the mean training loss since its last decision and the
        latest validation loss."""
        if train_loss is not None:
            self._train_losses.append(float(train_loss))
        if valid_loss is not None:
            self._valid_loss = float(valid_loss)

    def _decide(self) -> None:
        progress = self.decisions / self.outer_steps
        now = flatten(self._all_params)
        ratios = (1.0, math.nan) if self.decisions == 0 else norm_ratios(self._prev_flat, now)  # as the env's reset
        self._prev_flat = now
        stats = mean_stats(self._stats) or self._last_stats  # the latest statistics when a segment had none
        self._last_stats, self._stats = stats, []
        train = float(np.mean(self._train_losses)) if self._train_losses else math.nan
        self._train_losses = []
        x = self.features.policy(progress, self._prev_action, train, self._valid_loss, self.bank.slots,
                                 current_hparams(self),
                                 self.initial, ratios[0], ratios[1], stats)  # fmt: skip
        x = self.policy.policy_norm(x, update=False)
        v = np.zeros(self.policy.shape.value_size, dtype=np.float32)  # the critic is not needed to act
        action, _, _, self._state = self.policy.act(x, v, self._state, self.generator, self.deterministic)
        kind, slot = self.actions.restart(action) if self.features.slots else ("none", -1)
        self._valid_loss = self.bank.apply(kind, slot, self._module, self, progress, self._valid_loss)
        applied = apply_action(self, self.actions, action)
        self._prev_action = action
        self.decisions += 1
        # Exact fraction of the run at which these values take effect (what ScheduleReplay switches on).
        at = self.bounds[self.decisions - 1] / self.total_steps
        self.history.append({"progress": at, **applied, "restart": kind})

    @torch.no_grad()
    def step(self, closure=None, *, stats: bool | None = None, loss: float | None = None):  # noqa: ANN001
        """An optimizer step; at an outer-step boundary the policy first sets the hyperparameters."""
        if self.decisions < self.outer_steps and self.step_count >= self.bounds[self.decisions]:
            self._decide()
        want = (self.step_count + 1) % self.stats_every == 0 if stats is None else stats
        if loss is None and self._train_losses:
            loss = self._train_losses[-1]
        out = super().step(closure, stats=want, loss=loss)
        if want and self.stats is not None:
            self._stats.append(self.stats)
        self.step_count += 1
        return out

    def schedule(self) -> dict[str, Any]:
        """The hyperparameters chosen so far, in the format :class:`ScheduleReplay` reads."""
        return schedule_from_history(self.history)


# --- fixed schedules -----------------------------------------------------------------------------


def schedule_from_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Columns of the hyperparameters applied at each decision (progress in [0, 1))."""
    return {
        "progress": [float(h["progress"]) for h in history],
        **{n: [float(h[n]) for h in history] for n in HPARAM_NAMES if history and n in history[0]},
    }


def save_schedule(schedule: dict[str, Any], path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
    Path(path).write_text(yaml.safe_dump({"meta": meta or {}, "schedule": schedule}, sort_keys=False))


def load_schedule(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    schedule = data.get("schedule", data)
    if "progress" not in schedule or "lr" not in schedule:
        raise ValueError(f"{path}: not a schedule (needs 'progress' and 'lr' columns)")
    return schedule


class ScheduleReplay:
    """Replays a recorded schedule on ``torch.optim.AdamW`` like a learning-rate scheduler.

    Call ``step()`` after each ``optimizer.step()`` (as with torch's schedulers); the values in
    force at update ``t`` are those recorded at the last progress <= t / total_steps, so the
    schedule stretches to any number of updates. Sets ``lr``, ``eps``, ``betas[1]`` (from
    ``one_minus_beta2``) and ``weight_decay``; beta1 stays as configured (Appendix B).
    """

    KEYS = ("lr", "eps", "one_minus_beta2", "weight_decay")

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: dict[str, Any] | str | os.PathLike[str],
                 total_steps: int):  # fmt: skip
        self.optimizer = optimizer
        self.schedule = schedule if isinstance(schedule, dict) else load_schedule(schedule)
        self.progress = np.asarray(self.schedule["progress"], dtype=np.float64)
        if len(self.progress) == 0 or np.any(np.diff(self.progress) < 0):
            raise ValueError("a schedule needs at least one row, in increasing progress")
        self.total_steps = total_steps
        self.last_step = 0
        self._apply(0)

    def values_at(self, step: int) -> dict[str, float]:
        i = max(int(np.searchsorted(self.progress, step / self.total_steps, side="right")) - 1, 0)
        return {k: float(self.schedule[k][i]) for k in self.KEYS if k in self.schedule}

    def _apply(self, step: int) -> None:
        values = self.values_at(step)
        for group in self.optimizer.param_groups:
            if "lr" in values:
                group["lr"] = values["lr"]
            if "eps" in values:
                group["eps"] = values["eps"]
            if "weight_decay" in values:
                group["weight_decay"] = values["weight_decay"]
            if "one_minus_beta2" in values and "betas" in group:
                group["betas"] = (group["betas"][0], 1.0 - values["one_minus_beta2"])

    def step(self) -> None:
        self.last_step += 1
        self._apply(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply(self.last_step)
