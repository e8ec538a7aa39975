"""The LSTM actor and critic (paper Section 3.6), with their feature normalisers.

Actor and critic share an architecture but not weights: each is an LSTM over the outer steps of
an episode (default 1 layer x 256 units; the "large" preset is 2 x 512). The actor reads only
the robust policy features and has one categorical head per action dimension; the critic also
reads the value features (J.2) and outputs one number. Inputs are normalised by running EMA
statistics that are part of the policy's state (saved and loaded with it) and clipped to [-2, 2].
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import PurePath
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from torch.distributions import Categorical

from .actor import Run, Step
from .feature_transforms import RunningNormalizer

PRESETS = {"default": (256, 1), "large": (512, 2)}
_NOT_TRAINED = "an ensemble of policies is not trained: train its members, then combine them"


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
    """Actor (categorical per action dimension) and critic, each with its own LSTM; as an
    :class:`~lhopt_dsl.agent.actor.Actor` only the actor acts (meta-training runs the critic on
    recorded episodes)."""

    kind = "network"

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

    # --- acting (the Actor interface of lhopt_dsl.agent.actor; the critic is never run) ------------

    @property
    def policy_size(self) -> int:
        return self.shape.policy_size

    @property
    def nvec(self) -> tuple[int, ...]:
        return tuple(self.shape.nvec)

    def start(self, runs: Sequence[Run]) -> Any:
        """The actor LSTM's zero state for ``len(runs)`` runs (what ``nn.LSTM`` starts from)."""
        hidden = self.shape.hidden_size
        zero = torch.zeros(self.shape.num_layers, len(runs), hidden)
        return LSTMState(zero, zero.clone())

    @torch.no_grad()
    def act(self, carry: Any, features: np.ndarray, generators: Sequence[torch.Generator | None],
            greedy: bool) -> tuple[Step, Any]:  # fmt: skip
        """One decision of B runs: raw (B, Fp) features, normalised by :attr:`policy_norm`, through
        the actor; row b draws from ``generators[b]`` unless ``greedy``."""
        x = self.policy_norm(np.asarray(features).reshape(-1, self.shape.policy_size), update=False)  # (B, Fp)
        logits, carry = self.actor_forward(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0), carry)
        chosen = [self._choose(row, gen, greedy) for row, gen in zip(logits[0], generators)]
        actions = np.stack([a for a, _ in chosen])
        return Step(actions, np.asarray([lp for _, lp in chosen]), x, actions), carry

    def guarded(self, carry: Any, row: int, lr_factor: float) -> Any:
        return carry  # the network sees the lowered learning rate in its next features

    def _choose(self, logits: torch.Tensor, generator: torch.Generator | None, deterministic: bool) -> tuple[np.ndarray, float]:
        """One action from one row of logits: argmax, or one draw per dimension from ``generator``.

        The numbers of :meth:`dists` (``torch.distributions.Categorical``: the logits less their
        logsumexp, their softmax), without building a distribution per dimension: a decision's
        cost is a few small operations and one transfer to Python."""
        chunks = torch.split(logits, list(self.shape.nvec), dim=-1)
        norms = [c - c.logsumexp(dim=-1, keepdim=True) for c in chunks]  # Categorical's normalised logits
        probs = [torch.softmax(n, dim=-1) for n in norms]
        starts = np.cumsum([0, *self.shape.nvec]).tolist()
        if deterministic:  # the first of equal maxima, as torch.argmax
            p = torch.cat(probs).tolist()
            actions = [max(range(a, b), key=p.__getitem__) - a for a, b in zip(starts, starts[1:])]
        else:
            actions = [int(torch.multinomial(p, 1, generator=generator)) for p in probs]
        flat, logprob = torch.cat(norms).tolist(), 0.0
        for a, start in zip(actions, starts):
            logprob += flat[start + a]
        return np.asarray(actions, dtype=np.int64), logprob

    @torch.no_grad()
    def values(self, policy_obs: np.ndarray, value_obs: np.ndarray) -> np.ndarray:
        """The critic's value of each step of one recorded episode: normalised (T, Fp) and (T, Fv)
        features in, (T,) out, one step at a time from a zero state (as it was trained to see them)."""
        state, out = None, []
        for x, v in zip(policy_obs, value_obs):
            xt = torch.as_tensor(x, dtype=torch.float32).view(1, 1, -1)
            vt = torch.as_tensor(v, dtype=torch.float32).view(1, 1, -1)
            value, state = self.critic_forward(xt, vt, state)
            out.append(float(value))
        return np.asarray(out)

    @torch.no_grad()
    def favour(self, action: Sequence[int], dims: Sequence[bool], logit: float) -> None:
        """Raise the actor's logit of ``action[d]`` by ``logit`` in every dimension ``d`` where
        ``dims[d]`` (an untrained actor, whose logits are near 0, then picks it with probability
        e^logit / (e^logit + n - 1) of its n choices)."""
        start = 0
        for d, n in enumerate(self.shape.nvec):
            if dims[d]:
                self.actor.head.bias[start + int(action[d])] += logit
            start += n

    def sharpen(self, temperature: float) -> None:
        """Divide every action logit by ``temperature`` (the actor head's weights and biases): each
        dimension's most likely action stays the most likely, so greedy choices are unchanged, and
        below 1 a sampled choice leaves it less often."""
        if not temperature > 0:
            raise ValueError(f"a logit temperature is positive, got {temperature}")
        with torch.no_grad():
            self.actor.head.weight.div_(temperature)
            self.actor.head.bias.div_(temperature)

    # --- saving --------------------------------------------------------------------------------

    def to_checkpoint(self) -> dict[str, Any]:
        """The policy as data (weights, shape and the normalisers' states) for :meth:`from_checkpoint`;
        :func:`save_checkpoint` writes it as tensors and plain data that :func:`load_checkpoint` reads."""
        return {
            "shape": asdict(self.shape),
            "weights": self.state_dict(),
            "policy_norm": self.policy_norm.state_dict(),
            "value_norm": self.value_norm.state_dict(),
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "ActorCritic":
        """The policy a checkpoint holds: an :class:`ActorCritic`, or an :class:`EnsembleActorCritic`
        where the checkpoint has ``members``."""
        if "members" in ckpt:
            return EnsembleActorCritic([ActorCritic.from_checkpoint(m) for m in ckpt["members"]])
        shape = PolicyShape(**{**ckpt["shape"], "nvec": tuple(ckpt["shape"]["nvec"])})
        with torch.device("meta"):  # no initialisation (QR for the heads) of weights about to be replaced
            model = cls(shape)
        model.load_state_dict({k: v.clone() for k, v in ckpt["weights"].items()}, assign=True)
        model.policy_norm.load_state_dict(_numpy_arrays(ckpt["policy_norm"]))
        model.value_norm.load_state_dict(_numpy_arrays(ckpt["value_norm"]))
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


class _PassThrough(RunningNormalizer):
    """An ensemble's normaliser: each member of an ensemble has its own statistics, so the raw
    features pass through (checked finite, as float32) and every member normalises them itself.
    It has no statistics of its own to update or save."""

    def state_dict(self) -> dict[str, Any]:
        raise ValueError("an ensemble's features are normalised by its members; save their normalisers")

    def __call__(self, x: np.ndarray, update: bool = True) -> np.ndarray:
        if update:
            raise ValueError(_NOT_TRAINED)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.size:
            raise ValueError(f"expected shape ({self.size},) or (N, {self.size}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("the policy got non-finite features; sanitize() them first")
        return x.astype(np.float32)


class EnsembleActorCritic(ActorCritic):
    """Several policies acting as one: at each decision, every member reads the raw features through
    its own normaliser and LSTM, and the ensemble's action distribution per dimension is the
    normalised geometric mean of the members' (the mean of their log-probabilities); the value is
    the mean of theirs. Greedy acting then takes the action the members jointly find most probable.

    Members are trained separately (``lhopt imitate --clone-seed S``: one policy per seed) and
    combined by ``lhopt ensemble``; they must share features and actions (hidden sizes may differ).
    The recurrent state is the tuple of the members' states. An ensemble acts everywhere a policy
    does (evaluation, the drop-in ``LHOPT``, schedule export) but is not itself trained.
    """

    kind = "ensemble"

    def __init__(self, members: Sequence[ActorCritic]):
        nn.Module.__init__(self)
        if not members:
            raise ValueError("an ensemble needs at least one policy")
        first = members[0].shape
        for i, m in enumerate(members):
            if m.kind == "ensemble":
                raise ValueError("an ensemble's members must be single policies, not ensembles")
            s = m.shape
            if (s.policy_size, s.value_size, tuple(s.nvec)) != (first.policy_size, first.value_size, tuple(first.nvec)):
                raise ValueError(
                    f"policy {i} of the ensemble has {s.policy_size} policy features, {s.value_size} value features and "
                    f"action sizes {list(s.nvec)}, but policy 0 has {first.policy_size}, {first.value_size} and "
                    f"{list(first.nvec)}: combine only policies made for the same hyperparameter space and features"
                )
        self.shape = first
        self.members = nn.ModuleList(members)
        self.policy_norm = _PassThrough(first.policy_size)
        self.value_norm = _PassThrough(first.value_size)

    def start(self, runs: Sequence[Run]) -> Any:
        return tuple(m.start(runs) for m in self.members)

    def _member_input(self, m: ActorCritic, x: torch.Tensor, norm: RunningNormalizer) -> torch.Tensor:
        flat = x.detach().cpu().numpy().reshape(-1, x.shape[-1])
        return torch.as_tensor(norm(flat, update=False), device=x.device).view(x.shape)

    def actor_forward(self, x: torch.Tensor, state: tuple | None = None):
        states = state if state is not None else (None,) * len(self.members)
        logprobs, out = [], []
        for m, st in zip(self.members, states):
            logits, new = m.actor_forward(self._member_input(m, x, m.policy_norm), st)
            chunks = torch.split(logits, list(self.shape.nvec), dim=-1)
            logprobs.append(torch.cat([torch.log_softmax(c, dim=-1) for c in chunks], dim=-1))
            out.append(new)
        return torch.stack(logprobs).mean(0), tuple(out)

    def critic_forward(self, x: torch.Tensor, v: torch.Tensor, state: tuple | None = None):
        states = state if state is not None else (None,) * len(self.members)
        values, out = [], []
        for m, st in zip(self.members, states):
            value, new = m.critic_forward(self._member_input(m, x, m.policy_norm),
                                          self._member_input(m, v, m.value_norm), st)  # fmt: skip
            values.append(value)
            out.append(new)
        return torch.stack(values).mean(0), tuple(out)

    def favour(self, action: Sequence[int], dims: Sequence[bool], logit: float) -> None:
        raise ValueError(_NOT_TRAINED)

    def sharpen(self, temperature: float) -> None:
        raise ValueError(_NOT_TRAINED)

    def to_checkpoint(self) -> dict[str, Any]:
        return {"members": [m.to_checkpoint() for m in self.members]}


# --- safe files ----------------------------------------------------------------------------------
#
# Policies and training checkpoints are ``torch.save`` files that hold only tensors and plain data,
# and are read with ``torch.load(weights_only=True)``: torch's restricted unpickler, which builds
# tensors and containers and calls nothing else. A full unpickler runs whatever callable a file
# names, so a policy shared by someone else could otherwise run arbitrary code when it is loaded.

PLAIN_DATA = "tensors and plain data (dicts, lists, strings, numbers, booleans, None)"


def _numpy_arrays(state: dict[str, Any]) -> dict[str, Any]:
    """A normaliser's state with the tensors a checkpoint holds back as the numpy arrays it keeps."""
    return {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class PolicyFileError(ValueError):
    """A policy or checkpoint file that cannot be used: unreadable, not what it was loaded as, or
    inconsistent. The message starts with the file's name, then says what is wrong with it."""


class UnsafeCheckpointError(PolicyFileError):
    """A policy or checkpoint that holds more than tensors and plain data; it is not loaded."""


def to_plain(obj: Any, where: str = "") -> Any:
    """``obj`` with everything that is not a tensor or plain data converted to plain data.

    numpy arrays become tensors (dtype kept), numpy scalars Python numbers, tuples (``torch.Size``
    too) lists, paths strings, enums their values, pydantic models their JSON dump; anything else raises TypeError
    rather than being pickled as an object that only a full unpickler could rebuild.
    """
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj if type(obj) is torch.Tensor else obj.detach()  # nn.Parameter -> its data
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"cannot save a numpy array of Python objects at {where or 'the top level'}")
        return torch.from_numpy(np.array(obj, copy=True, order="C"))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Enum):
        return to_plain(obj.value, where)
    for plain in (bool, int, float, str):  # other subclasses of them
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (list, tuple)):
        return [to_plain(x, f"{where}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        out: dict[Any, Any] = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            key = k.item() if isinstance(k, np.generic) else k
            if type(key) not in (str, int):
                raise TypeError(f"cannot save a {type(k).__name__} dict key at {where or 'the top level'}")
            out[key] = to_plain(v, f"{where}[{key!r}]")
        if hasattr(obj, "_metadata"):  # module state dicts carry per-module versions
            out._metadata = to_plain(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
        return out
    raise TypeError(f"cannot save a {type(obj).__module__}.{type(obj).__qualname__} at {where or 'the top level'}: "
                    f"policies and checkpoints hold only {PLAIN_DATA}")  # fmt: skip


def _plain_problem(obj: Any, where: str = "") -> str | None:
    """Where and what the first value outside tensors and plain data is, or None (tuples pass:
    the restricted unpickler builds them and they run nothing; files saved here have lists)."""
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return None
    if type(obj) in (list, tuple):
        items = enumerate(obj)
    elif type(obj) in (dict, OrderedDict):
        for k in obj:
            if type(k) not in (str, int):
                return f"a {type(k).__name__} dict key at {where or 'the top level'}"
        items = obj.items()  # type: ignore[assignment]
    else:
        return f"a {type(obj).__module__}.{type(obj).__qualname__} at {where or 'the top level'}"
    return next((p for k, v in items if (p := _plain_problem(v, f"{where}[{k!r}]"))), None)


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> None:
    """Save ``obj`` (converted by :func:`to_plain`) atomically: a reader, or a run killed while
    saving, sees the old file or the new one, never half of one."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(to_plain(obj), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str], what: str = "policy", map_location: Any = None) -> Any:
    """Read a file saved by :func:`save_checkpoint` without running any code from it.

    Anything beyond tensors and plain data raises :class:`UnsafeCheckpointError`; a file torch
    cannot read at all (empty, truncated, another format) raises :class:`PolicyFileError`. Both
    messages name the file, say what is wrong and what to do; ``what`` ("policy", "training
    checkpoint") says what the file was loaded as. What the data means is checked by the caller
    (:mod:`lhopt_dsl.agent.policy_file` for policies and training checkpoints).
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(path)}: no such {what} file") from None
    except OSError as e:
        raise PolicyFileError(f"{os.fspath(path)}: cannot read it ({e.strerror or type(e).__name__})") from None
    if size == 0:
        raise PolicyFileError(f"{os.fspath(path)}: the file is empty, not a {what} saved by lhopt")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn about its protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global|unrecognized function (\S+)", str(e))
        if found is None:  # not a refused object but bytes the unpickler cannot parse
            raise PolicyFileError(f"{os.fspath(path)}: not a {what} saved by lhopt ({_unreadable(e)})") from None
        held = f"it refers to `{found.group(1) or found.group(2)}`"
        raise UnsafeCheckpointError(_unsafe_message(path, what, held)) from None
    except Exception as e:  # noqa: BLE001 - whatever torch raises on bytes it cannot read, the file is not usable
        raise PolicyFileError(f"{os.fspath(path)}: not a {what} saved by lhopt ({_unreadable(e, path)})") from None
    if problem := _plain_problem(state):
        raise UnsafeCheckpointError(_unsafe_message(path, what, f"it holds {problem}"))
    return state


def _unreadable(e: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """Why torch could not read a file, in one short line (its messages run to paragraphs of advice
    that does not apply here, such as loading with ``weights_only=False``)."""
    text = str(e)
    if "PytorchStreamReader" in text or (path is not None and _zip_header(path)):
        return "it is truncated or corrupted: torch cannot read it as a zip archive"
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(e, UnicodeDecodeError) or first.startswith("Unsupported operand"):
        return f"torch cannot read it: {first[:100] or type(e).__name__} (is it a torch.save file?)"
    return f"torch cannot read it: {type(e).__name__}{': ' + first[:100] if first else ''}"


def _zip_header(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts as ``torch.save`` files do (a zip archive's first local header)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


# What an older lhopt pickled besides tensors: numpy arrays, their dtypes and numpy scalars. These
# names only build arrays from raw bytes, so an unpickler allowed them and nothing else runs no code;
# numpy 1.x wrote them under ``numpy.core``, numpy 2 under ``numpy._core``.
_LEGACY_NAMES = ("_reconstruct", "scalar")


def _legacy_globals() -> list[Any]:
    """The allow-list of :func:`convert_legacy_checkpoint`: numpy's array and dtype classes and the
    array/scalar constructors, under the names either major version of numpy pickles them with."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = [np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles a dtype's own class
        allowed += [c for c in vars(dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    for name in _LEGACY_NAMES:
        fn = getattr(multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return allowed


def _legacy_names() -> set[str]:
    return {item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}"
            for item in _legacy_globals()}  # fmt: skip


def _convertible(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`convert_legacy_checkpoint` would read ``path``: every object it names is on
    the allow-list. Torch lists them from the pickle's opcodes without building any."""
    try:
        named = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - an old non-zip file, or one torch cannot list: do not advise
        return False
    return bool(named) and named <= _legacy_names()


def _unsafe_message(path: str | os.PathLike[str], what: str, held: str) -> str:
    refusal = (f"{os.fspath(path)}: not loaded as a {what}: {held}, and lhopt loads only {PLAIN_DATA}, "
               "because unpickling anything else can run arbitrary code from the file.")  # fmt: skip
    if _convertible(path):
        return (
            f"{refusal} It holds numpy arrays as an older lhopt saved them; if you made it, convert it once with\n"
            f"    python -c \"from lhopt_dsl.agent.policy import convert_legacy_checkpoint; "
            f"convert_legacy_checkpoint({os.fspath(path)!r})\"\n"
            "(the conversion reads numpy arrays and nothing else, so it runs no code from the file)."
        )
    return f"{refusal} It cannot be converted: ask whoever made it for a file saved by this version of lhopt."


def convert_legacy_checkpoint(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> None:
    """Rewrite a policy or checkpoint saved by an older lhopt (numpy arrays pickled as objects) in
    the safe format, to ``out`` (default: in place).

    It reads the file with torch's restricted unpickler allowed numpy's array, dtype and scalar
    constructors and nothing else, so a file that names any other object is refused
    (:class:`UnsafeCheckpointError`) without running anything from it.
    """
    from torch.serialization import safe_globals

    try:
        with safe_globals(_legacy_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global|unrecognized function (\S+)", str(e))
        if found is None:
            raise PolicyFileError(f"{os.fspath(path)}: not a file saved by lhopt ({_unreadable(e)})") from None
        raise UnsafeCheckpointError(
            f"{os.fspath(path)}: not converted: it refers to `{found.group(1) or found.group(2)}`, which no lhopt "
            "saved; only numpy arrays are converted. Ask whoever made it for a file saved by this version of lhopt."
        ) from None
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - bytes torch cannot read
        raise PolicyFileError(f"{os.fspath(path)}: not a file saved by lhopt ({_unreadable(e)})") from None
    try:
        plain = to_plain(state)
    except TypeError as e:  # e.g. a numpy array of Python objects
        raise UnsafeCheckpointError(f"{os.fspath(path)}: not converted: {e}") from None
    save_checkpoint(plain, path if out is None else out)
