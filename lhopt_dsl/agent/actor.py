"""The one interface of everything that acts as a policy, and the one decision step that carries an
action out.

A trained network, a fixed schedule's follower, a network acting around a base schedule and an
ensemble all act the same way for every driver (the meta-training environment and
rollouts, evaluation, the drop-in optimizer): an :class:`Actor` starts a batch of runs and gets a
*carry*, the per-run state it acts from (the LSTM's state, a follower's learning rate, a residual's
offset), then acts on each decision's raw policy features and hears the drop-in's guard. Wrappers
hold an inner actor and its carry inside theirs, as optax's transformations chain. Carries are
NamedTuples of tensors and numbers, so a driver can save and restore them as plain data
(:func:`carry_leaves`, :func:`carry_from_leaves`) without knowing what acts.

Acting never runs a critic: meta-training's critic reads the episode once it is recorded.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, Sequence, TypeVar

import numpy as np
import torch
from torch.utils import _pytree as pytree

from .actions import ActionSpace, CheckpointBank
from .observation import Observer

Carry = TypeVar("Carry")


class Run(NamedTuple):
    """What an actor is told when a run starts."""

    initial: dict[str, float]  # the run's initial values of the hyperparameters the policy controls
    outer_steps: int  # how many decisions the run has
    seed: int = 0  # seeds any draws of an actor's own: the same task draws the same
    member: int = 0  # which of a task's rollouts this is (a follower of several schedules follows this one)
    describe: tuple[float, ...] = ()  # what can be seen of the model before the first step (lhopt_dsl.agent.describe)


class Step(NamedTuple):
    """One decision of B runs."""

    actions: np.ndarray  # (B, D) int64: the actions carried out
    logprobs: np.ndarray  # (B,) log-probability of the innermost policy's own choice
    seen: np.ndarray  # (B, Fp) float32: the features as the policy saw them (normalised)
    proposed: np.ndarray  # (B, D) int64: the innermost policy's own choice (``actions`` unless a wrapper changed it)


class Actor(Protocol[Carry]):
    """Acts on the raw policy features of a batch of runs that start together."""

    @property
    def kind(self) -> str:
        """What acts, in words (``network``, ``ensemble``, ``residual``, ``schedule``): for messages."""
        ...

    @property
    def policy_size(self) -> int:
        """How many policy features it reads."""
        ...

    @property
    def nvec(self) -> tuple[int, ...]:
        """Its action sizes, one per dimension."""
        ...

    def start(self, runs: Sequence[Run]) -> Carry:
        """The carry of ``runs`` (one row each) before their first decision."""
        ...

    def act(self, carry: Carry, features: np.ndarray, generators: Sequence[torch.Generator | None],
            greedy: bool) -> tuple[Step, Carry]:  # fmt: skip
        """One decision of every row: raw (B, Fp) features in; each row draws from its generator
        (None: torch's default) unless ``greedy``, which takes each dimension's most probable action."""
        ...

    def guarded(self, carry: Carry, row: int, lr_factor: float) -> Carry:
        """Row ``row``'s learning rate was multiplied by ``lr_factor`` from outside (the drop-in's
        guard after a divergence): an actor that tracks the learning rate follows."""
        ...


def check_actor(actor: Actor[Any], policy_size: int, nvec: Sequence[int]) -> None:
    """Fail with a clear message when ``actor`` reads other features or takes other actions than a
    run of this hyperparameter space has."""
    mine, theirs = (actor.policy_size, tuple(actor.nvec)), (policy_size, tuple(nvec))
    if mine != theirs:
        raise ValueError(
            f"policy does not match this optimizer: it was trained with {mine[0]} policy features and action sizes "
            f"{list(mine[1])}, but here there are {theirs[0]} and {list(theirs[1])}. "
            "Use the hyperparameter space (and restarts setting) the policy was trained with."
        )


def carry_leaves(carry: Any) -> list[Any]:
    """A carry as a flat list of tensors and numbers (plain data a checkpoint can hold)."""
    return pytree.tree_flatten(carry)[0]


def carry_from_leaves(template: Any, leaves: Sequence[Any]) -> Any:
    """The carry shaped like ``template`` (a fresh :meth:`Actor.start`'s) holding ``leaves``."""
    mine, spec = pytree.tree_flatten(template)
    if len(mine) != len(leaves):
        raise ValueError(f"the saved policy state has {len(leaves)} entries, but this policy's has {len(mine)}: "
                         "resume with the policy the state was saved with")  # fmt: skip
    kept = [_like(t, v) for t, v in zip(mine, leaves)]
    return pytree.tree_unflatten(kept, spec)


def _like(template: Any, value: Any) -> Any:
    """``value`` as the type of ``template`` (a checkpoint reads numbers and tensors back as saved)."""
    if isinstance(template, torch.Tensor):
        return torch.as_tensor(value, dtype=template.dtype).clone()
    return type(template)(value)


class Taken(NamedTuple):
    """What a decision did to the run."""

    applied: dict[str, float]  # the controlled hyperparameters now
    restart: tuple[str, int]  # (kind, slot) of the restart action


def take(action: np.ndarray, *, actions: ActionSpace, observer: Observer, bank: CheckpointBank, model: Any,
         optimizer: Any, set_hparams: Callable[[np.ndarray], dict[str, float]]) -> Taken:  # fmt: skip
    """Carry out one decision's ``action``: the restart action on ``bank`` (``model``'s and
    ``optimizer``'s state), then the hyperparameter part through ``set_hparams``; ``observer``
    hears both. The one definition that the environment, the population rollouts and the drop-in
    optimizer share, so that an action means the same thing in meta-training and in use.

    Checkpoints keep the validation loss the policy was told (the drop-in knows no other)."""
    a = actions.check(action)
    kind, slot = actions.restart(a) if bank.slots else ("none", -1)
    observer.restarted(bank.apply(kind, slot, model, optimizer, observer.progress, observer.valid_loss))
    applied = set_hparams(a)
    observer.acted(a)
    return Taken(applied, (kind, slot))
