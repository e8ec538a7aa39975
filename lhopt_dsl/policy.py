"""The LSTM actor and critic (paper Section 3.6), with their feature normalisers.

Actor and critic share an architecture but not weights: each is an LSTM over the outer steps of
an episode (default 1 layer x 256 units; the "large" preset is 2 x 512). The actor reads only
the robust policy features and has one categorical head per action dimension; the critic also
reads the value features (J.2) and outputs one number. Inputs are normalised by running EMA
statistics that are part of the policy's state (saved and loaded with it) and clipped to [-2, 2].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from .features import RunningNormalizer

PRESETS = {"default": (256, 1), "large": (512, 2)}


@dataclass(frozen=True)
class PolicyShape:
    """Everything needed to rebuild a policy and check it against an environment."""

    policy_size: int
    value_size: int
    nvec: tuple[int, ...]
    hidden_size: int = 256
    num_layers: int = 1


class LSTMState(NamedTuple):
    h: torch.Tensor  # (layers, B, H)
    c: torch.Tensor


class RecurrentNet(nn.Module):
    def __init__(self, inputs: int, outputs: int, hidden: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, layers)
        self.head = nn.Linear(hidden, outputs)
        nn.init.orthogonal_(self.head.weight, gain=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        out, (h, c) = self.lstm(x, None if state is None else tuple(state))  # x: (T, B, F)
        return self.head(out), LSTMState(h, c)  # (T, B, outputs)


class ActorCritic(nn.Module):
    """Actor (categorical per action dimension) and critic, each with its own LSTM."""

    def __init__(self, shape: PolicyShape):
        super().__init__()
        self.shape = shape
        self.actor = RecurrentNet(shape.policy_size, sum(shape.nvec), shape.hidden_size, shape.num_layers)
        self.critic = RecurrentNet(shape.policy_size + shape.value_size, 1, shape.hidden_size, shape.num_layers)
        self.policy_norm = RunningNormalizer(shape.policy_size)
        self.value_norm = RunningNormalizer(shape.value_size)

    # --- normalisation -------------------------------------------------------------------------

    def normalise(self, policy: np.ndarray, value: np.ndarray, update: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self.policy_norm(policy, update=update), self.value_norm(value, update=update)

    # --- heads ---------------------------------------------------------------------------------

    def dists(self, logits: torch.Tensor) -> list[Categorical]:
        return [Categorical(logits=chunk) for chunk in torch.split(logits, list(self.shape.nvec), dim=-1)]

    def actor_forward(self, x: torch.Tensor, state: LSTMState | None = None):
        return self.actor(x, state)

    def critic_forward(self, x: torch.Tensor, v: torch.Tensor, state: LSTMState | None = None):
        out, state = self.critic(torch.cat([x, v], dim=-1), state)
        return out.squeeze(-1), state

    def evaluate(self, x: torch.Tensor, v: torch.Tensor, actions: torch.Tensor):
        """Whole sequences from a zero state: log-probs (T, B), entropy (T, B), values (T, B)."""
        logits, _ = self.actor_forward(x)
        dists = self.dists(logits)
        logprob = sum(d.log_prob(actions[..., i]) for i, d in enumerate(dists))
        entropy = sum(d.entropy() for d in dists)
        values, _ = self.critic_forward(x, v)
        return logprob, entropy, values

    @torch.no_grad()
    def act(
        self,
        x: np.ndarray,
        v: np.ndarray,
        state: tuple[LSTMState | None, LSTMState | None],
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, float, float, tuple[LSTMState, LSTMState]]:
        """One outer step for one environment: normalised features in, (action, logprob, value, state) out."""
        xt = torch.as_tensor(x, dtype=torch.float32).view(1, 1, -1)
        vt = torch.as_tensor(v, dtype=torch.float32).view(1, 1, -1)
        logits, a_state = self.actor_forward(xt, state[0])
        value, c_state = self.critic_forward(xt, vt, state[1])
        actions, logprob = self._choose(logits[0, 0], generator, deterministic)
        return actions, logprob, float(value), (a_state, c_state)

    def _choose(self, logits: torch.Tensor, generator: torch.Generator | None, deterministic: bool) -> tuple[np.ndarray, float]:
        """One action from one row of logits: argmax, or one draw per dimension from ``generator``."""
        actions, logprob = [], 0.0
        for d in self.dists(logits):
            if deterministic:
                a = int(torch.argmax(d.probs))
            else:
                a = int(torch.multinomial(d.probs, 1, generator=generator))
            actions.append(a)
            logprob += float(d.log_prob(torch.tensor(a)))
        return np.asarray(actions, dtype=np.int64), logprob

    @torch.no_grad()
    def act_batch(
        self,
        x: np.ndarray,
        state: LSTMState | None,
        generators: list[torch.Generator | None],
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, LSTMState]:
        """One outer step of the actor for B environments at once: normalised (B, Fp) features in,
        (actions (B, D), logprobs (B,), actor state) out. Row b draws from ``generators[b]`` exactly
        as :meth:`act` would, so batched and one-at-a-time episodes take the same actions.
        Values are left to :meth:`critic_forward` over the finished sequences.
        """
        logits, state = self.actor_forward(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0), state)
        chosen = [self._choose(row, gen, deterministic) for row, gen in zip(logits[0], generators)]
        return np.stack([a for a, _ in chosen]), np.asarray([lp for _, lp in chosen]), state

    # --- saving --------------------------------------------------------------------------------

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "shape": asdict(self.shape),
            "weights": self.state_dict(),
            "policy_norm": self.policy_norm.state_dict(),
            "value_norm": self.value_norm.state_dict(),
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "ActorCritic":
        shape = PolicyShape(**{**ckpt["shape"], "nvec": tuple(ckpt["shape"]["nvec"])})
        model = cls(shape)
        model.load_state_dict(ckpt["weights"])
        model.policy_norm.load_state_dict(ckpt["policy_norm"])
        model.value_norm.load_state_dict(ckpt["value_norm"])
        return model

    def check_compatible(
        self, policy_size: int, value_size: int | None, nvec: list[int] | tuple[int, ...]
    ) -> None:  # fmt: skip
        """Fail with a clear message when feature or action spaces differ from the policy's.

        ``value_size=None`` checks only what acting needs (the actor's features and actions): the
        value features encode the task with the DSL's vocabularies, which grow between versions,
        and only the critic, which only training uses, reads them.
        """
        mine = (self.shape.policy_size, self.shape.value_size if value_size is not None else None, tuple(self.shape.nvec))
        theirs = (policy_size, value_size, tuple(nvec))
        if mine != theirs:
            raise ValueError(
                "policy does not match this optimizer: it was trained with "
                f"{mine[0]} policy features, {mine[1]} value features and action sizes {list(mine[2])}, "
                f"but here there are {theirs[0]}, {theirs[1]} and {list(theirs[2])}. "
                "Use the hyperparameter space (and restarts setting) the policy was trained with."
            )
