"""Decodings: how a trained policy's action distributions become the actions it takes when it is used.

The actor outputs one categorical distribution per action dimension. Training samples from them;
evaluation and the drop-in optimizer act *greedily* (:meth:`~lhopt_dsl.policy.ActorCritic.act`
with ``deterministic=True``: the most probable value of each dimension). A cloned policy is often
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

from typing import Any

import numpy as np
import torch

from .actions import ActionSpace
from .policy import ActorCritic
from .residual import ResidualPolicy
from .spec.hparams import HyperparameterSpace

DECODINGS = ("greedy", "mean", "sample")


class DecodedPolicy:
    """``policy`` acting under ``decode`` (one of :data:`DECODINGS`); it stands in for the policy
    wherever an episode is run greedily (:func:`~lhopt_dsl.rollout.run_episode`). Its recurrent
    state carries the error-diffusion residual, so each episode starts from zero.

    ``seed``: the sampling generator's seed (``sample``); :meth:`for_task` gives a copy per task so
    that the draws do not depend on the order in which a worker meets its tasks."""

    def __init__(self, policy: ActorCritic, space: HyperparameterSpace, decode: str, seed: int = 0):
        if decode not in DECODINGS:
            raise ValueError(f"decode must be one of {', '.join(DECODINGS)}, got {decode!r}")
        actions = ActionSpace(space)
        if tuple(actions.nvec) != tuple(policy.shape.nvec):
            raise ValueError(f"the policy's action sizes {list(policy.shape.nvec)} are not this space's {actions.nvec}")
        self.policy, self.space, self.decode, self.seed = policy, space, decode, int(seed)
        self.shape, self.normalise, self.policy_norm = policy.shape, policy.normalise, policy.policy_norm
        # each hyperparameter's action values in additive units (the restart dimension has none)
        self.units = [np.log(np.asarray(hp.action.values, dtype=np.float64)) if hp.action.type == "scale"
                      else np.asarray(hp.action.values, dtype=np.float64) for hp in actions.hparams.values()]  # fmt: skip
        self.generator = torch.Generator().manual_seed(self.seed)

    def for_task(self, seed: int) -> "DecodedPolicy":
        return DecodedPolicy(self.policy, self.space, self.decode, seed)

    @torch.no_grad()
    def act(self, x: np.ndarray, v: np.ndarray, state: tuple, generator: torch.Generator | None = None,
            deterministic: bool = True) -> tuple[np.ndarray, float, float, tuple]:  # fmt: skip
        """As :meth:`ActorCritic.act` (``generator`` and ``deterministic`` are ignored: the decoding
        decides); the state is ``(actor state, critic state, residual)``."""
        if self.decode == "greedy":
            action, logprob, value, (a, c) = self.policy.act(x, v, state[:2], None, True)
            return action, logprob, value, (a, c, None)
        residual = np.zeros(len(self.units)) if len(state) < 3 or state[2] is None else state[2].copy()
        xt = torch.as_tensor(x, dtype=torch.float32).view(1, 1, -1)
        vt = torch.as_tensor(v, dtype=torch.float32).view(1, 1, -1)
        logits, a_state = self.policy.actor_forward(xt, state[0])
        value, c_state = self.policy.critic_forward(xt, vt, state[1])
        chosen, logprob = [], 0.0
        for d, dist in enumerate(self.policy.dists(logits[0, 0])):
            if self.decode == "sample":
                a = int(torch.multinomial(dist.probs, 1, generator=self.generator))
            elif d < len(self.units):
                u = self.units[d]
                residual[d] += float(dist.probs.double().numpy() @ u)
                a = int(np.argmin(np.abs(residual[d] - u)))
                residual[d] -= u[a]
            else:
                a = int(torch.argmax(dist.probs))
            chosen.append(a)
            logprob += float(dist.log_prob(torch.tensor(a)))
        return np.asarray(chosen, dtype=np.int64), logprob, float(value), (a_state, c_state, residual)


def decoded(policy: Any, space: HyperparameterSpace, decode: str) -> Any:
    """``policy`` under ``decode``; greedy returns it unchanged (and so does anything that is not an
    :class:`ActorCritic`, such as a fixed schedule's follower, which has no distribution to decode)."""
    if decode not in DECODINGS:
        raise ValueError(f"decode must be one of {', '.join(DECODINGS)}, got {decode!r}")
    if decode == "greedy":
        return policy
    if isinstance(policy, ResidualPolicy):
        raise ValueError("a residual policy acts greedily around its base schedule; --decode mean|sample decode "
                         "plain policies only")
    if not isinstance(policy, ActorCritic):
        return policy
    return DecodedPolicy(policy, space, decode)

