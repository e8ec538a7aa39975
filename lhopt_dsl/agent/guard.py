"""A safety net that wraps an optimizer's step, as optax's ``apply_if_finite`` wraps an update.

A learned policy can choose a learning rate that ruins a run. :class:`Guard` keeps a copy of the
training state (parameters, optimizer state, a model's buffers) from the last moment the run looked
healthy; when a step leaves a parameter non-finite or the parameters' norm more than ``factor``
times its value after the first step (a run diverging, seen even when no loss is reported), that
step is undone, and when a reported loss is non-finite or more than ``factor`` times the first of
its kind, the next step is skipped. Either way the copy is restored and the learning rate
multiplied by ``lr_factor``, before any forward pass sees the broken state, and whoever drives the
hyperparameters is told (``on_restore``). The step itself knows nothing of this.

Its state is tensors and plain data (:meth:`Guard.state_dict`), so a checkpointed job resumes with
the same safety copy and the same reference values.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

from ..spec.hparams import HPARAM_NAMES
from .actions import Checkpoint, CheckpointBank, copy_state

T = TypeVar("T")


def checkpoint_data(ckpt: Checkpoint | None) -> dict[str, Any] | None:
    """A restart checkpoint as plain data (its states are tensors and numbers already)."""
    if ckpt is None:
        return None
    return {"model": ckpt.model, "optimizer": ckpt.optimizer, "progress": ckpt.progress, "valid_loss": ckpt.valid_loss}


def checkpoint_from_data(data: dict[str, Any] | None) -> Checkpoint | None:
    if data is None:
        return None
    return Checkpoint(dict(data["model"]), data["optimizer"], float(data["progress"]), float(data["valid_loss"]))


class Guard:
    """Wraps an optimizer's step (see the module docstring).

    ``params``: the parameters whose norm is watched; ``module`` and ``optimizer``: what a safety
    copy holds (the optimizer's own state, not a driver's); ``on_restore(reason, valid_loss)``:
    called after each restore with why and the validation loss the restored copy was saved with.
    """

    def __init__(self, params: Sequence[torch.Tensor], module: nn.Module, optimizer: Any, *, factor: float,
                 lr_factor: float, on_restore: Callable[[str, float], None]):  # fmt: skip
        if not factor > 1.0 or not 0.0 < lr_factor < 1.0:
            raise ValueError(f"need guard_factor > 1 and 0 < guard_lr_factor < 1, got {factor}, {lr_factor}")
        self.params, self.module, self.optimizer = list(params), module, optimizer
        self.factor, self.lr_factor, self.on_restore = float(factor), float(lr_factor), on_restore
        self._bank = CheckpointBank(0, HPARAM_NAMES)  # restores that keep the hyperparameters
        self.first: dict[str, float] = {}  # first finite loss reported, per kind
        self.first_norm: float | None = None  # the parameters' norm after the first step
        self.bad: str | None = None  # why the next step must restore the safe copy instead of stepping
        self._private = False  # whether the safe copy's tensors are the guard's alone (see _snapshot)
        self.safe: Checkpoint = self._snapshot(0.0, math.nan)

    def accepts(self, kind: str, value: float) -> bool:
        """Whether a reported loss of ``kind`` looks healthy; one that does not (non-finite, or
        ``factor`` times the first finite one of its kind) makes the next step restore instead."""
        if math.isfinite(value):
            first = self.first.setdefault(kind, value)
            if value <= self.factor * max(abs(first), 1e-12):
                return True
        self.bad = self.bad or f"{kind} {value:.4g}"
        return False

    def keep(self, progress: float, valid_loss: float) -> None:
        """The run looks healthy now: this is the copy to go back to."""
        if self.bad is None:
            self.safe = self._snapshot(progress, valid_loss)

    def _snapshot(self, progress: float, valid_loss: float) -> Checkpoint:
        """A copy of the training state, bit for bit (:func:`~lhopt_dsl.agent.actions.copy_state`).
        The previous copy's tensors are reused as buffers while they are the guard's alone: a
        restore loads copies of them (the optimizer's ``load_state_dict`` copies, the model's
        copies into its tensors), so only :meth:`state_dict` and :meth:`load_state_dict` hand them
        out, after which the next copy allocates new ones."""
        into = self.safe if self._private else None
        model = copy_state(self.module.state_dict(), None if into is None else into.model)
        optimizer = copy_state(self.optimizer.state_dict(), None if into is None else into.optimizer)
        self._private = True
        return Checkpoint(model, optimizer, progress, valid_loss)

    def step(self, step: Callable[[], T], skipped: Callable[[], None]) -> T | None:
        """Run ``step`` unless a diverging loss was reported (then restore, call ``skipped`` and
        return None); undo it if it left the parameters diverging."""
        if self.bad is not None:
            self._restore(self.bad)
            skipped()
            return None
        out = step()
        if problem := self._parameters_problem():
            self._restore(problem)
        return out

    def _restore(self, reason: str) -> None:
        """Go back to the last healthy copy and lower the learning rate."""
        self._bank.restore(self.safe, self.module, self.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_factor
        self.bad = None
        self.on_restore(reason, self.safe.valid_loss)

    def _parameters_problem(self) -> str | None:
        """Why the parameters say the run is diverging (None if they do not): a non-finite entry, or
        a norm more than ``factor`` times the initial one. The second needs no reported loss: a run
        whose user reports none can still blow up (its weights grow without bound)."""
        # One fused reduction: the norm of all parameters is finite exactly when every entry is.
        norm = float(torch.nn.utils.get_total_norm(self.params, foreach=True))
        if not math.isfinite(norm):
            return "non-finite parameters"
        if self.first_norm is None:
            self.first_norm = norm if norm > 0 else None  # all zeros: the first non-zero norm instead
        elif norm > self.factor * self.first_norm:
            return f"parameter norm {norm:.4g}, over {self.factor:g}x the initial {self.first_norm:.4g}"
        return None

    def state_dict(self) -> dict[str, Any]:
        self._private = False  # the caller holds the safe copy's tensors now: the next copy leaves them be
        return {"first": dict(self.first), "first_norm": self.first_norm, "bad": self.bad,
                "safe": checkpoint_data(self.safe)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first = {str(k): float(v) for k, v in state["first"].items()}
        self.first_norm = None if state["first_norm"] is None else float(state["first_norm"])
        self.bad = state["bad"]
        safe = checkpoint_from_data(state["safe"])
        assert safe is not None
        self.safe, self._private = safe, False
