"""Decodings: how a trained policy's action distributions become the actions it takes when it is used.

The actor outputs one categorical distribution per action dimension. Training samples from them;
evaluation and the drop-in optimizer act *greedily* (:meth:`~lhopt_dsl.policy.ActorCritic.act`
with ``greedy=True``: the most probable value of each dimension). A cloned policy is often
unsure between neighbouring actions (its labels decay the learning rate by x0.9 at some
decisions and keep it at others, at moments no observation tells apart), and greedy acting then
takes the majority action every time. Two alternatives, for measuring what that costs
(``lhopt eval --decode``):

- ``mean``: per hyperparameter, the expected action in the action's own units (the log of a scale
  factor, a logit shift as it is), carried out by *error diffusion*: the expectation is added to a
  running residual, the action value nearest the residual is taken and subtracted from it. Over a
  run the applied changes add up to the expected ones (a policy that gives x0.9 probability 0.3
  decays by x0.9 on 3 decisions in 10), deterministically. The restart dimension, whose values
  are not ordered, stays greedy.
- ``sample``: one draw per dimension, as in training, from a generator seeded per task.

On the first 106 held-out tasks the shipped default policy does best greedy (docs/RESULTS.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .actions import ActionSpace
from .actor import Actor, Run, Step
from .policy import ActorCritic
from .spec.hparams import HyperparameterSpace

DECODINGS = ("greedy", "mean", "sample")


class DecodedCarry(NamedTuple):
    """The network's carry, and per run (row) the error-diffusion residuals and its generator's state."""

    inner: Any
    residual: tuple[tuple[float, ...], ...]
    rng: tuple[torch.Tensor, ...]


class Decoded:
    """``network`` acting under ``decode`` (one of :data:`DECODINGS`), an :class:`~lhopt_dsl.actor.Actor`.
    Its carry holds each run's error-diffusion residual (from zero) and, for ``sample``, the state of
    the run's own generator, seeded by the run's seed (:attr:`~lhopt_dsl.actor.Run.seed`: the task's
    index in evaluation), so that the draws do not depend on which tasks a worker met before."""

    def __init__(self, network: ActorCritic, space: HyperparameterSpace, decode: str):
        if decode not in DECODINGS:
            raise ValueError(f"decode must be one of {', '.join(DECODINGS)}, got {decode!r}")
        actions = ActionSpace(space)
        if tuple(actions.nvec) != tuple(network.nvec):
            raise ValueError(f"the policy's action sizes {list(network.nvec)} are not this space's {actions.nvec}")
        self.network, self.space, self.decode = network, space, decode
        self.kind = f"{network.kind}, decoded by {decode}"
        # each hyperparameter's action values in additive units (the restart dimension has none)
        self.units = [np.log(np.asarray(hp.action.values, dtype=np.float64)) if hp.action.type == "scale"
                      else np.asarray(hp.action.values, dtype=np.float64) for hp in actions.hparams.values()]  # fmt: skip

    @property
    def policy_size(self) -> int:
        return self.network.policy_size

    @property
    def nvec(self) -> tuple[int, ...]:
        return self.network.nvec

    def start(self, runs: Sequence[Run]) -> DecodedCarry:
        rng = tuple(torch.Generator().manual_seed(int(r.seed)).get_state() for r in runs)
        return DecodedCarry(self.network.start(runs), ((0.0,) * len(self.units),) * len(runs), rng)

    @torch.no_grad()
    def act(self, carry: DecodedCarry, features: np.ndarray, generators: Sequence[torch.Generator | None],
            greedy: bool) -> tuple[Step, DecodedCarry]:  # fmt: skip
        """As :meth:`~lhopt_dsl.policy.ActorCritic.act`; ``generators`` and ``greedy`` are ignored
        (the decoding decides)."""
        if self.decode == "greedy":
            step, inner = self.network.act(carry.inner, features, generators, True)
            return step, carry._replace(inner=inner)
        x = self.network.policy_norm(np.asarray(features).reshape(-1, self.policy_size), update=False)
        logits, inner = self.network.actor_forward(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0), carry.inner)
        rows = [self._row(logits[0, b], carry.residual[b], carry.rng[b]) for b in range(len(x))]
        actions = np.stack([a for a, _, _, _ in rows])
        step = Step(actions, np.asarray([lp for _, lp, _, _ in rows]), x, actions)
        return step, DecodedCarry(inner, tuple(r for _, _, r, _ in rows), tuple(g for _, _, _, g in rows))

    def _row(self, logits: torch.Tensor, residual: tuple[float, ...],
             rng: torch.Tensor) -> tuple[np.ndarray, float, tuple[float, ...], torch.Tensor]:  # fmt: skip
        """One run's action, its log-probability, and its residuals and generator state after it."""
        generator = torch.Generator()
        generator.set_state(rng)
        res, chosen, logprob = list(residual), [], 0.0
        for d, dist in enumerate(self.network.dists(logits)):
            if self.decode == "sample":
                a = int(torch.multinomial(dist.probs, 1, generator=generator))
            elif d < len(self.units):
                u = self.units[d]
                r = res[d] + float(dist.probs.double().numpy() @ u)
                a = int(np.argmin(np.abs(r - u)))
                res[d] = float(r - u[a])
            else:
                a = int(torch.argmax(dist.probs))
            chosen.append(a)
            logprob += float(dist.log_prob(torch.tensor(a)))
        return np.asarray(chosen, dtype=np.int64), logprob, tuple(res), generator.get_state()

    def guarded(self, carry: DecodedCarry, row: int, lr_factor: float) -> DecodedCarry:
        return carry._replace(inner=self.network.guarded(carry.inner, row, lr_factor))


def decoded(actor: Actor[Any], space: HyperparameterSpace, decode: str) -> Actor[Any]:
    """``actor`` under ``decode``; greedy returns it unchanged. Only a network's (or an ensemble's)
    action distributions can be decoded."""
    if decode not in DECODINGS:
        raise ValueError(f"decode must be one of {', '.join(DECODINGS)}, got {decode!r}")
    if decode == "greedy":
        return actor
    if not isinstance(actor, ActorCritic):  # the one place that needs a network's distributions
        raise ValueError(f"a {actor.kind} policy has no action distribution to decode (a residual policy acts "
                         "greedily around its base schedule, a fixed schedule follows it): --decode mean|sample "
                         "decode plain policies and ensembles only")  # fmt: skip
    return Decoded(actor, space, decode)
