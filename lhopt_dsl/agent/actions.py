"""The policy's actions: relative hyperparameter changes and checkpoint restarts (paper 3.3, I.2).

An action is one integer per dimension (a ``MultiDiscrete`` action): one dimension per
controlled hyperparameter, picking one of its Table 8 values (a scale factor or a logit shift),
and one restart dimension: 0 does nothing; for checkpoint slot k (0-based), ``1 + 3k`` saves the
current state there, ``2 + 3k`` loads it and ``3 + 3k`` swaps the current state with it.

Actions touch the optimizer only through :func:`apply_action`, which clamps every value to the
spec's bounds and returns the values applied. A checkpoint holds the model's state and the
optimizer's moment state; it does not hold the hyperparameters, which stay under the policy's
relative control (a load after a divergence keeps the lower learning rate the policy just chose),
nor the step budget, which a load never refunds.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..spec.hparams import HPARAM_NAMES, HyperparameterSpace

RESTART_KINDS = ("none", "save", "load", "swap")


class ActionSpace:
    """The discrete action dimensions derived from a hyperparameter space: one per hyperparameter
    its policy controls (``names``), then the restart dimension."""

    def __init__(self, space: HyperparameterSpace):
        self.space = space
        self.hparams = space.controlled()
        self.names = list(self.hparams)
        self.restarts = space.restarts
        self.nvec = [len(hp.action.values) for hp in self.hparams.values()] + [space.restarts.num_actions]

    @property
    def size(self) -> int:
        """Length of the one-hot encoding of an action."""
        return int(sum(self.nvec))

    def check(self, action: Sequence[int]) -> np.ndarray:
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        if a.shape != (len(self.nvec),) or np.any(a < 0) or np.any(a >= np.asarray(self.nvec)):
            raise ValueError(f"action {a.tolist()} outside the action space with sizes {self.nvec}")
        return a

    def encode(self, action: Sequence[int] | None) -> np.ndarray:
        """One-hot per dimension, concatenated; all zeros for 'no action yet'."""
        out = np.zeros(self.size, dtype=np.float32)
        if action is not None:
            offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
            out[offsets + self.check(action)] = 1.0
        return out

    def restart(self, action: Sequence[int]) -> tuple[str, int]:
        """(kind, slot) of the restart dimension: kind in RESTART_KINDS, slot -1 for 'none'."""
        r = int(self.check(action)[-1])
        if r == 0:
            return "none", -1
        return RESTART_KINDS[1 + (r - 1) % 3], (r - 1) // 3

    def identity(self) -> np.ndarray:
        """An action that changes nothing where the action values allow it (for baselines and tests)."""
        idx = []
        for hp in self.hparams.values():
            neutral = 1.0 if hp.action.type == "scale" else 0.0
            values = np.asarray(hp.action.values)
            idx.append(int(np.argmin(np.abs(values - neutral))))
        return np.asarray(idx + [0], dtype=np.int64)

    def keeps(self) -> np.ndarray:
        """Per action dimension, whether :meth:`identity` changes nothing there exactly (the restart
        dimension's do-nothing always does; a hyperparameter whose values are only x0.5 and x2 has no
        action that keeps it)."""
        exact = [(1.0 if hp.action.type == "scale" else 0.0) in hp.action.values for hp in self.hparams.values()]
        return np.asarray(exact + [True])


def current_hparams(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """CIAO's continuous hyperparameters as the optimizer holds them now (first param group); a
    space's policy controls some of them."""
    return {n: float(optimizer.param_groups[0][n]) for n in HPARAM_NAMES}


def act_on_values(actions: ActionSpace, action: Sequence[int], current: dict[str, Any]) -> dict[str, float]:
    """The controlled hyperparameters after the hyperparameter part of ``action``, clamped to bounds."""
    a = actions.check(action)
    return {name: hp.apply(float(current[name]), hp.action.values[int(a[i])])
            for i, (name, hp) in enumerate(actions.hparams.items())}  # fmt: skip


def apply_action(optimizer: torch.optim.Optimizer, actions: ActionSpace, action: Sequence[int]) -> dict[str, float]:
    """Apply the hyperparameter part of ``action`` to every param group; return the values applied."""
    for group in optimizer.param_groups:
        group.update(act_on_values(actions, action, group))
    return {name: float(optimizer.param_groups[0][name]) for name in actions.hparams}


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    progress: float  # when it was saved, in [0, 1]
    valid_loss: float  # validation loss of the saved state


_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def copy_state(obj: Any, into: Any = None, memo: dict[int, Any] | None = None) -> Any:
    """A copy of ``obj`` (a state dict: nested dicts, lists and tuples of tensors and plain data) equal
    to ``copy.deepcopy(obj)``, without deepcopy's per-object bookkeeping: each dense tensor cloned, bit
    for bit, or copied into the tensor at the same place of ``into`` (an earlier copy of a state of
    the same layout, owned by the caller and read by no one else) where that has its shape, dtype,
    device and strides, so that a copy made again and again allocates nothing. A tensor met twice
    (tied weights) is copied once, as deepcopy does; a state dict's ``_metadata`` (module versions,
    never mutated) is kept; anything else is deep-copied."""
    memo = {} if memo is None else memo
    if type(obj) in _PLAIN:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if type(obj) is torch.Tensor and obj.layout == torch.strided and not obj.requires_grad:
        fits = (type(into) is torch.Tensor and into.shape == obj.shape and into.dtype == obj.dtype
                and into.device == obj.device and into.stride() == obj.stride())  # fmt: skip
        out: Any = into.copy_(obj) if fits else obj.clone()
    elif isinstance(obj, dict) and type(obj) in (dict, OrderedDict):
        old = into if isinstance(into, dict) else {}
        out = type(obj)((k, copy_state(v, old.get(k), memo)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
    elif type(obj) in (list, tuple):
        old = into if type(into) is type(obj) and len(into) == len(obj) else [None] * len(obj)
        out = type(obj)(copy_state(v, o, memo) for v, o in zip(obj, old))
    else:
        out = copy.deepcopy(obj)
    memo[id(obj)] = out
    return out


def _hparams_of(optimizer: torch.optim.Optimizer, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{n: g[n] for n in names} for g in optimizer.param_groups]


class CheckpointBank:
    """Checkpoint slots for the restart actions."""

    def __init__(self, slots: int, hparam_names: Sequence[str]):
        self.slots: list[Checkpoint | None] = [None] * slots
        self.hparam_names = list(hparam_names)

    def snapshot(self, model: nn.Module, optimizer: torch.optim.Optimizer, progress: float, valid: float) -> Checkpoint:
        return Checkpoint(copy_state(model.state_dict()), copy_state(optimizer.state_dict()), progress, valid)

    def restore(self, ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the model and optimizer state but keep the current hyperparameters."""
        current = _hparams_of(optimizer, self.hparam_names)
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(copy_state(ckpt.optimizer))  # a copy: the checkpoint may be loaded again
        for group, values in zip(optimizer.param_groups, current):
            group.update(values)

    def apply(
        self, kind: str, slot: int, model: nn.Module, optimizer: torch.optim.Optimizer, progress: float, valid: float
    ) -> float:
        """Carry out a restart action; return the validation loss of the state now current.

        Loading or swapping with an empty slot does nothing.
        """
        if kind == "none":
            return valid
        if kind == "save":
            self.slots[slot] = self.snapshot(model, optimizer, progress, valid)
            return valid
        ckpt = self.slots[slot]
        if ckpt is None:
            return valid
        if kind == "swap":
            self.slots[slot] = self.snapshot(model, optimizer, progress, valid)
        self.restore(ckpt, model, optimizer)
        return ckpt.valid_loss
