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

Checkpoint it as any optimizer: ``opt.state_dict()`` holds everything the policy has seen and
decided (tensors and plain data), so a job resumed from it continues exactly as if uninterrupted::

    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, path)
    ...
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])

``ScheduleReplay`` plays a schedule (:class:`~lhopt_dsl.spec.schedule.Schedule`: recorded learning
rate, eps, beta2 and weight decay over progress, or a named shape) on a standard
``torch.optim.AdamW``, stretched to any number of updates, like a learning-rate scheduler (paper
Section 4.5, Appendix B). Only schedules of a policy meta-trained in
the AdamW space (``hparams: {space: adamw}``), where CIAO is exactly AdamW, mean the same thing
on AdamW; schedules from any other space are refused.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from .agent.actions import ActionSpace, CheckpointBank, apply_action, current_hparams
from .agent.actor import Actor, Run, carry_from_leaves, carry_leaves, check_actor, take
from .agent.guard import Guard, checkpoint_data, checkpoint_from_data
from .agent.describe import model_descriptor
from .agent.level import HoldLevel, level_rule_from_data
from .agent.observation import FeatureBuilder, Observer, flatten
from .agent.policy import ActorCritic, EnsembleActorCritic, save_checkpoint, to_plain
from .agent.policy_file import checked_policy_state, load_policy_file
from .agent.residual import Follow, Residual
from .optim import CIAO
from .spec.hparams import HPARAM_NAMES, SPACES, AdamWSpace, CIAOSpace, HyperparameterSpace, validate_space
from .spec.schedule import Schedule, read_schedule_document, schedule_document, segment_bounds, shape_factor

DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.pt"


def load_policy(policy: ActorCritic | Schedule | str | os.PathLike[str] | None) -> tuple[Actor[Any], HyperparameterSpace]:
    """A policy object, a checkpoint path (``policy.pt`` or a training ``checkpoint.pt``), None
    for the shipped default, or a :class:`~lhopt_dsl.spec.schedule.Schedule` (CIAO's learning rate
    follows it and nothing else moves: the fixed schedule a learned policy has to beat, as
    ``Schedule.from_name("linear-lr0.03")``); returns it with the hyperparameter space it was trained with (the
    checkpoint's spec records it; the CIAO space for a policy object and for checkpoints that
    record none, as those saved before spaces existed). Files are read with
    :func:`~lhopt_dsl.agent.policy_file.load_policy_file`, which runs no code from them and checks them
    before anything is built: a policy someone shared is data, not a program. A file that is not a
    usable policy raises :class:`~lhopt_dsl.agent.policy.PolicyFileError` (a ValueError) naming it.
    A file is read and checked once per process and version of the file
    (:func:`~lhopt_dsl.agent.policy_file.checked_policy_state`); each call builds a network of its own."""
    if isinstance(policy, ActorCritic):
        return policy, CIAOSpace()
    if isinstance(policy, Schedule):  # in the shipped default's space, whose actions can keep every value
        space = load_policy(None)[1]
        return Follow([policy], space), space
    path = Path(policy) if policy is not None else DEFAULT_POLICY
    if not path.exists():
        raise FileNotFoundError(f"policy checkpoint not found: {path}")
    state = checked_policy_state(path)  # shapes in bounds, tensors as declared and finite, space and base valid
    space = validate_space((state.get("spec") or {}).get("hparams", {}))
    model = ActorCritic.from_checkpoint(state["policy"])
    if state.get("residual") is not None:  # a policy that acts around a base schedule
        inner: Actor[Any] = model
        if state.get("level") is not None:  # whose level a rule chooses after the first segment
            inner = HoldLevel(model, space, level_rule_from_data(state["level"]))
        return Residual(inner, space, Schedule.from_name(state["residual"]["base"])), space  # base checked on load
    return model, space


def combine_policies(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> EnsembleActorCritic:
    """Write to ``out`` one policy file that acts as the ensemble of the policies in ``paths``
    (:class:`~lhopt_dsl.agent.policy.EnsembleActorCritic`: the mean of their log-probabilities), and
    return it. The files must be single policies made for the same hyperparameter space; the
    output records each member's file name, sha256 and imitation record, and the first member's
    spec (its hyperparameter space is what :func:`load_policy` reads)."""
    if len(paths) < 2:
        raise ValueError("an ensemble needs at least two policy files")
    members, record, spec, space0 = [], [], None, None
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"policy checkpoint not found: {path}")
        state = load_policy_file(path)
        if state.get("residual") is not None:
            raise ValueError(f"{path} acts around the base schedule {state['residual'].get('base')}; an ensemble "
                             "combines plain policies only")
        model = ActorCritic.from_checkpoint(state["policy"])
        if model.kind == "ensemble":
            raise ValueError(f"{path} is already an ensemble; combine the single policies it was made from")
        space = validate_space((state.get("spec") or {}).get("hparams", {}))
        if space0 is None:
            spec, space0 = state.get("spec"), space
        elif space != space0:
            raise ValueError(f"{path} was made for another hyperparameter space than {paths[0]}; "
                             "combine only policies of the same space")
        members.append(model)
        record.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "imitation": state.get("imitation")})  # fmt: skip
    ensemble = EnsembleActorCritic(members)  # checks that features and actions agree
    data: dict[str, Any] = {"policy": ensemble.to_checkpoint(), "ensemble": {"combine": "mean log-probability",
                                                                               "members": record}}
    if spec is not None:
        data["spec"] = spec
    save_checkpoint(data, out)
    return ensemble


class _Params(nn.Module):
    """Exposes an optimizer's parameters as a module, so restarts can checkpoint them."""

    def __init__(self, params: Sequence[nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterList(params)


class _OwnState:
    """An optimizer as restarts and the guard copy it: its own state and hyperparameters, without
    the state of what drives it (:meth:`LHOPT.state_dict` adds that)."""

    def __init__(self, optimizer: CIAO):
        self.optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        return CIAO.state_dict(self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        CIAO.load_state_dict(self.optimizer, state)


def _described(params: Sequence[torch.Tensor], total_steps: int, outer_steps: int) -> tuple[float, ...]:
    """What the actor may see of the model before the first step (:func:`~lhopt_dsl.agent.describe.model_descriptor`);
    empty where there is nothing to describe (every parameter empty), and an actor that reads it then keeps."""
    try:
        return tuple(model_descriptor([p.shape for p in params], total_steps, outer_steps))
    except ValueError:
        return ()


class Controller:
    """Drives an optimizer's hyperparameters by an :class:`~lhopt_dsl.agent.actor.Actor` over a run of
    ``total_steps`` steps, as :class:`ScheduleReplay` drives AdamW's by a recorded schedule: at
    ``outer_steps`` evenly spaced steps it asks the actor for a decision from what the run reported
    (an :class:`~lhopt_dsl.agent.observation.Observer`, as in meta-training) and carries it out with the
    one decision step (:func:`~lhopt_dsl.agent.actor.take`). Its whole state is :meth:`state_dict`."""

    def __init__(self, actor: Actor[Any], space: HyperparameterSpace, optimizer: Any, module: nn.Module, *,
                 total_steps: int, outer_steps: int, deterministic: bool, seed: int):  # fmt: skip
        self.actor, self.space, self.optimizer, self.module = actor, space, optimizer, module
        self.actions = ActionSpace(space)
        self.features = FeatureBuilder(self.actions, space)
        check_actor(actor, self.features.policy_size, self.actions.nvec)
        self.total_steps, self.outer_steps = total_steps, outer_steps
        self.bounds = segment_bounds(total_steps, outer_steps)
        self.deterministic = deterministic
        self.generator = torch.Generator().manual_seed(seed)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.bank = CheckpointBank(self.features.slots, HPARAM_NAMES)
        self.initial = current_hparams(optimizer)
        # What the policy sees, as in meta-training; it also says what it sees of losses never reported.
        self.observer = Observer(self.features, outer_steps, self.initial)
        self.step_count, self.decisions = 0, 0
        self.run = Run(self.initial, outer_steps, seed, describe=_described(self.params, total_steps, outer_steps))
        self.carry = actor.start([self.run])
        self.history: list[dict[str, Any]] = []  # hyperparameters chosen at each decision (and guard events)

    @property
    def due(self) -> bool:
        """Whether the next step starts a new segment, so the actor decides first."""
        return self.decisions < self.outer_steps and self.step_count >= self.bounds[self.decisions]

    def decide(self) -> None:
        x = self.observer.policy(current_hparams(self.optimizer), self.bank.slots, flatten(self.params))
        step, self.carry = self.actor.act(self.carry, x[None], [self.generator], self.deterministic)
        set_hparams = functools.partial(apply_action, self.optimizer, self.actions)
        taken = take(step.actions[0], actions=self.actions, observer=self.observer, bank=self.bank, model=self.module,
                     optimizer=self.optimizer, set_hparams=set_hparams)  # fmt: skip
        self.decisions += 1
        # Exact fraction of the run at which these values take effect (what ScheduleReplay switches on).
        at = self.bounds[self.decisions - 1] / self.total_steps
        self.history.append({"progress": at, **taken.applied, "restart": taken.restart[0]})

    def guarded(self, reason: str, valid_loss: float, lr_factor: float) -> None:
        """The guard restored a copy saved with ``valid_loss`` and lowered the learning rate by ``lr_factor``."""
        self.carry = self.actor.guarded(self.carry, 0, lr_factor)
        self.observer.restarted(valid_loss)
        hparams = {n: float(self.optimizer.param_groups[0][n]) for n in self.actions.hparams}
        self.history.append({"progress": self.step_count / self.total_steps, **hparams, "restart": "guard",
                             "reason": reason})  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Step, decisions, history, the actor's carry, the observer, the restart slots and the
        random state, as tensors and plain data."""
        return to_plain({
            "total_steps": self.total_steps, "outer_steps": self.outer_steps, "step_count": self.step_count,
            "decisions": self.decisions, "history": self.history, "generator": self.generator.get_state(),
            "carry": carry_leaves(self.carry), "observer": self.observer.state_dict(),
            "slots": [checkpoint_data(c) for c in self.bank.slots],
        })  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine, theirs = (self.total_steps, self.outer_steps), (int(state["total_steps"]), int(state["outer_steps"]))
        if mine != theirs:
            raise ValueError(f"this state was saved by an LHOPT of total_steps={theirs[0]}, outer_steps={theirs[1]}, "
                             f"but this one has {mine[0]} and {mine[1]}: resume with the settings of the saved run")
        if len(state["slots"]) != len(self.bank.slots):
            raise ValueError(f"this state has {len(state['slots'])} checkpoint slots, but the policy's space has "
                             f"{len(self.bank.slots)}: resume with the policy the state was saved with")
        self.carry = carry_from_leaves(self.actor.start([self.run]), state["carry"])
        self.step_count, self.decisions = int(state["step_count"]), int(state["decisions"])
        self.history = [dict(h) for h in state["history"]]
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
        self.observer.load_state_dict(state["observer"])
        self.bank.slots = [checkpoint_from_data(c) for c in state["slots"]]


def _whole(name: str, value: Any, *, optional: bool = False) -> int | None:
    """``value`` as a count of steps >= 1 (None where ``optional``), or an error naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number of optimizer steps, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


#: Parameter elements times steps from which :class:`LHOPT` compiles CIAO's step unless told
#: otherwise. The compiled step saves about 0.8 of AdamW's multi-tensor step per step (about 3.5 ns
#: per element on one CPU thread, docs/PERFORMANCE.md), so a compile of up to a minute pays back
#: after about 2e10 element-steps; the default asks for 2.5 times that.
COMPILE_WORK = 5e10


def compile_pays(params: Sequence[torch.Tensor], total_steps: int) -> bool:
    """Whether a run of ``total_steps`` steps over ``params`` is long enough for CIAO's compile to pay back."""
    return sum(p.numel() for p in params) * total_steps >= COMPILE_WORK


class LHOPT(CIAO):
    """CIAO driven by a learned policy; see the module docstring.

    ``outer_steps`` is how many times the policy acts over ``total_steps`` (default: 32, at most
    ``total_steps``); ``model`` (optional) lets restart actions include buffers such as BatchNorm
    statistics, otherwise restarts cover the parameters and optimizer state; ``initial`` sets the
    starting values of the hyperparameters the policy controls (default: its space's ``init``). A
    policy of the AdamW space runs CIAO as exactly ``torch.optim.AdamW``. Stepping past
    ``total_steps`` keeps the last hyperparameters, with a warning.

    Underneath, a :class:`Controller` drives CIAO's hyperparameters and, unless ``guard=False``, a
    :class:`~lhopt_dsl.agent.guard.Guard` wraps each step: at every decision where the run looks healthy
    it keeps a copy of the parameters and optimizer state (and ``model``'s buffers); when a step
    leaves a parameter non-finite, or the parameters' norm more than ``guard_factor`` times its
    value after the first step, that step is undone; when a reported loss is non-finite or more
    than ``guard_factor`` times the first one of its kind, the next step is skipped. Either way the
    copy is restored and the learning rate multiplied by ``guard_lr_factor``. Each such event is a
    row of :attr:`history` with ``restart: "guard"`` and the reason, so exported schedules replay the
    lowered learning rate. It costs one parameter-norm reduction per step and one copy of the
    training state in memory.

    :meth:`state_dict` holds the controller and the guard too, as tensors and plain data: a job
    saved at any step and loaded into a fresh ``LHOPT`` (same policy and settings) continues as if
    it had never stopped.

    ``compiled``: whether CIAO steps with its ``torch.compile``d kernels (see
    :class:`~lhopt_dsl.optim.CIAO`): about half the cost of the multi-tensor step, after a compile of
    seconds to a minute or two at the first step (and at the first step with statistics), once per
    parameter layout and process. The default, None, compiles where that pays back with a wide
    margin: when the parameters' elements times ``total_steps`` reach :data:`COMPILE_WORK` (25M
    parameters for 2,000 steps, 1M for 50,000; docs/PERFORMANCE.md). The compiled step equals the
    multi-tensor one to float32 round-off, not bit for bit.
    """

    def __init__(
        self,
        params: Iterable[Any],
        policy: ActorCritic | Schedule | str | os.PathLike[str] | None = None,
        *,
        total_steps: int,
        outer_steps: int | None = None,
        initial: dict[str, float] | None = None,
        model: nn.Module | None = None,
        deterministic: bool = True,
        seed: int = 0,
        stats_every: int = 4,
        guard: bool = True,
        guard_factor: float = 10.0,
        guard_lr_factor: float = 0.1,
        compiled: bool | None = None,
    ):
        total = _whole("total_steps", total_steps)
        outer = _whole("outer_steps", outer_steps, optional=True)
        assert total is not None
        if not guard_factor > 1.0 or not 0.0 < guard_lr_factor < 1.0:
            raise ValueError(f"need guard_factor > 1 and 0 < guard_lr_factor < 1, got {guard_factor}, {guard_lr_factor}")
        # Each group's tensors as a list: a generator in a group dict would be used up by the check below.
        params = [{**g, "params": _tensors(g["params"])} if isinstance(g, dict) else g for g in params]
        _refuse_complex(params)
        actor, space = load_policy(policy)
        start = {n: hp.init for n, hp in space.controlled().items()} | (initial or {})
        if compiled is None:
            compiled = compile_pays(_flat(params), total)
        super().__init__(params, compiled=compiled, **space.initial(start).ciao_kwargs())
        self.space, self.total_steps, self.stats_every = space, total, stats_every
        module = model if model is not None else _Params([p for g in self.param_groups for p in g["params"]])
        own = _OwnState(self)
        self.controller = Controller(actor, space, own, module, total_steps=total,
                                     outer_steps=min(outer or 32, total), deterministic=deterministic, seed=seed)  # fmt: skip
        self.guard = (Guard(self.controller.params, module, own, factor=guard_factor, lr_factor=guard_lr_factor,
                            on_restore=functools.partial(self._restored, guard_lr_factor)) if guard else None)  # fmt: skip
        self._warned = False

    # Read-only views of the controller (what users and tests inspect).
    actor = property(lambda self: self.controller.actor)
    history = property(lambda self: self.controller.history)
    decisions = property(lambda self: self.controller.decisions)
    step_count = property(lambda self: self.controller.step_count)
    outer_steps = property(lambda self: self.controller.outer_steps)

    def observe(self, *, train_loss: float | None = None, valid_loss: float | None = None) -> None:
        """Report losses; the policy sees the mean training loss since its last decision and the
        latest validation loss (:class:`~lhopt_dsl.agent.observation.Observer` says what it sees when you
        report none).

        With the guard on, a loss that is non-finite or ``guard_factor`` times the first of its kind
        is not shown to the policy: the state that produced it is undone at the next step.
        """
        for kind, value in (("train_loss", train_loss), ("valid_loss", valid_loss)):
            if value is None:
                continue
            value = float(value)
            if self.guard is None or self.guard.accepts(kind, value):
                self.controller.observer.report(**{kind: value})

    def _restored(self, lr_factor: float, reason: str, valid_loss: float) -> None:
        self.controller.guarded(reason, valid_loss, lr_factor)

    def _skipped(self) -> None:
        self.controller.step_count += 1

    @torch.no_grad()
    def step(self, closure=None, *, stats: bool | None = None, loss: float | None = None):  # noqa: ANN001
        """An optimizer step; at an outer-step boundary the policy first sets the hyperparameters.

        With the guard on, a step that follows a diverging loss report is skipped and the last
        healthy state restored instead, and a step that leaves a parameter non-finite (non-finite
        gradients, an overflowing update) is undone the same way, before any forward pass sees it.
        """
        run = functools.partial(self._controlled_step, closure, stats, loss)
        return run() if self.guard is None else self.guard.step(run, self._skipped)

    def _controlled_step(self, closure: Any, stats: bool | None, loss: float | None) -> Any:
        c = self.controller
        if c.step_count >= self.total_steps and not self._warned:
            self._warned = True
            warnings.warn(f"LHOPT stepped past total_steps={self.total_steps}: the policy made its last decision at "
                          f"step {c.bounds[-2]} and the hyperparameters stay as they are; pass the run's real length "
                          "as total_steps", RuntimeWarning, stacklevel=3)  # fmt: skip
        if c.due:
            if self.guard is not None and c.step_count > 0:  # healthy so far: the copy to go back to
                self.guard.keep(c.step_count / self.total_steps, c.observer.valid_loss)
            c.decide()
        want = (c.step_count + 1) % self.stats_every == 0 if stats is None else stats
        out = super().step(closure, stats=want, loss=c.observer.last_train_loss if loss is None else loss)
        if want and self.stats is not None:
            c.observer.report(stats=self.stats)
        c.step_count += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """CIAO's state and hyperparameters, and under ``"lhopt"`` the controller's and the guard's."""
        state = super().state_dict()
        guard = None if self.guard is None else to_plain(self.guard.state_dict())
        state["lhopt"] = {"controller": self.controller.state_dict(), "guard": guard}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without the ``"lhopt"`` entry (a plain CIAO one) restores CIAO alone."""
        state = dict(state_dict)
        extra = state.pop("lhopt", None)
        super().load_state_dict(state)
        if extra is None:
            return
        if (extra["guard"] is None) != (self.guard is None):
            raise ValueError("this state was saved with the guard " + ("off" if extra["guard"] is None else "on") +
                             "; resume with the same guard setting")  # fmt: skip
        self.controller.load_state_dict(extra["controller"])
        if self.guard is not None:
            self.guard.load_state_dict(extra["guard"])

    def schedule(self) -> Schedule:
        """The hyperparameters chosen so far, as a tabulated :class:`~lhopt_dsl.spec.schedule.Schedule`
        (:func:`schedule_from_history`): :func:`save_schedule` writes it, :class:`ScheduleReplay` replays it."""
        return schedule_from_history(self.history, self.space.space)


def _tensors(params: Any) -> list[Any]:
    """A param group's ``params`` as a list (one tensor, as torch takes it, or any iterable of them)."""
    return [params] if torch.is_tensor(params) else list(params)


def _flat(params: list[Any]) -> list[Any]:
    """The tensors of a list of tensors and param groups (whose ``params`` are lists)."""
    return [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]


def _refuse_complex(params: list[Any]) -> None:
    """Complex parameters, refused up front with what to do (CIAO's statistics are real-valued)."""
    if any(torch.is_tensor(p) and p.is_complex() for p in _flat(params)):
        raise ValueError("LHOPT does not support complex parameters: CIAO's update and the policy's features are "
                         "defined on real numbers. Keep each complex parameter as a real one of twice the size "
                         "(torch.view_as_real) and view it as complex in your model's forward")


# --- fixed schedules -----------------------------------------------------------------------------
#
# One schedule type (lhopt_dsl.spec.schedule.Schedule) and one file form: a schedule file is YAML of
# ``schedule_document`` (``{"format": "lhopt-schedule", "version": 1, "meta": {...}, "schedule":
# Schedule.to_dict()}``). What a policy chose is a tabulated Schedule: one column per hyperparameter
# it controls, one row per decision, ``progress`` in [0, 1) being where the row takes effect. Files
# of earlier versions (the bare column document, ``{"meta": {"space": ...}, "schedule": {"progress":
# [...], "<hyperparameter>": [...]}}``) are read and converted.


def schedule_from_history(history: list[dict[str, Any]], space: str) -> Schedule:
    """The tabulated schedule of the hyperparameters applied at each decision of a ``space`` policy."""
    columns = {n: [float(h[n]) for h in history] for n in SPACES[space].hparam_names()}
    return Schedule.tabulated([float(h["progress"]) for h in history], columns, space)


def save_schedule(schedule: Schedule | dict[str, Any], path: str | os.PathLike[str],
                  meta: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Write a schedule file (YAML of :func:`~lhopt_dsl.spec.schedule.schedule_document`) with
    ``meta`` recorded beside it; ``schedule`` may also be a document of an earlier version."""
    if isinstance(schedule, Schedule):
        schedule, known = schedule, {}
    else:
        schedule, known = read_schedule_document(schedule)
    document = schedule_document(schedule, {**known, **(meta or {})})
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False))


def read_schedule(path: str | os.PathLike[str]) -> tuple[Schedule, dict[str, Any]]:
    """The schedule of a file written by :func:`save_schedule` (or `lhopt schedule export`, of any
    version) and its metadata.

    Read like a spec, so a broken, binary or alias-bomb file is a SpecError (a ValueError) naming
    file:line:col rather than a PyYAML traceback or a hang.
    """
    from .spec.loader import load_yaml

    return read_schedule_document(load_yaml(path), str(path))


def load_schedule(path: str | os.PathLike[str]) -> Schedule:
    """The schedule of a schedule file (see :func:`read_schedule`, which also gives its metadata)."""
    return read_schedule(path)[0]


def require_adamw_space(space: str | None, what: str) -> None:
    """Raise ValueError unless ``space`` is the AdamW space, the only one whose values mean the
    same thing on ``torch.optim.AdamW``; ``what`` names the policy or schedule in the message."""
    if space == "adamw":
        return
    if space:
        source = f"comes from the {space} space"
    else:  # schedules exported before spaces were recorded all come from CIAO-space policies
        source = "records no hyperparameter space, so it comes from the ciao space"
    raise ValueError(
        f"{what} {source}, whose values are in CIAO's units, not torch.optim.AdamW's: CIAO scales its weight decay "
        "and steps by the LAMB trust ratio, its beta2 decays an Adamax maximum and it clips gradients, so on AdamW "
        "those values would not reproduce the run. Meta-train a policy with `hparams: {space: adamw}` in its spec "
        "(as task_specs/smoke_adamw.yaml does) and export the schedule from it with `lhopt schedule export`."
    )


def _replayed(schedule: Any) -> tuple[Schedule, str]:
    """``schedule`` as a :class:`Schedule`, with how messages name it: a Schedule; a name of the
    platform's grammar; a schedule file (a path, or a string naming an existing file or ending in
    .yaml/.yml); or a schedule's plain data (a document of any version, or ``Schedule.to_dict()``)."""
    if isinstance(schedule, Schedule):
        return schedule, "the schedule"
    if isinstance(schedule, dict):
        return read_schedule_document(schedule, "schedule")[0], "the schedule"
    if isinstance(schedule, str) and not schedule.endswith((".yaml", ".yml")) and not Path(schedule).exists():
        return Schedule.from_name(schedule), "the schedule"  # a ValueError naming the grammar for anything else
    return load_schedule(schedule), f"schedule {schedule}"


class ScheduleReplay:
    """Replays a :class:`~lhopt_dsl.spec.schedule.Schedule` on ``torch.optim.AdamW``, like a
    learning-rate scheduler.

    Call ``step()`` after each ``optimizer.step()`` (as with torch's schedulers); the values in
    force at update ``t`` are the schedule's at progress ``t / total_steps``, so it stretches to any
    number of updates. ``schedule`` is a Schedule, a schedule file (``lhopt schedule export``'s, of
    any version), a schedule's plain data, or a name of the platform's grammar.

    A tabulated schedule of an AdamW-space policy (what export writes) sets, at the last row at or
    before that progress, AdamW's own ``lr``, ``eps``, ``weight_decay`` and ``betas[1] = 1 -
    one_minus_beta2``; beta1 stays as configured (the AdamW space keeps it at AdamW's default 0.9;
    paper Appendix B). Replayed with the run's weights and data order, it reproduces the run it was
    exported from. Tabulated schedules of other spaces are refused.

    A shaped schedule (a name such as ``"adamw-cosine-lr0.001"`` or ``"linear-lr0.03"``;
    ``"linear"`` alone is not a name) sets every param group's learning rate to ``lr x
    shape(progress)``, ``lr`` being each group's own initial learning rate where the name gives
    none; the other hyperparameters stay as the optimizer was built, as torch's own schedulers leave
    them.
    """

    COLUMNS = AdamWSpace.hparam_names()

    def __init__(self, optimizer: torch.optim.Optimizer,
                 schedule: dict[str, Any] | str | os.PathLike[str] | Schedule, total_steps: int):  # fmt: skip
        self.schedule, what = _replayed(schedule)
        if self.schedule.is_table:
            self._check_table(optimizer, what)
        else:
            self._check_shaped(optimizer)
        self.optimizer = optimizer
        self.total_steps = _whole("total_steps", total_steps)
        if not self.schedule.is_table:
            for group in optimizer.param_groups:  # each group's base, as torch's LR schedulers keep it
                group.setdefault("initial_lr", group["lr"])
        self.last_step = 0
        self._apply(0)

    @property
    def named(self) -> Schedule | None:
        """The shaped schedule replayed, or None for a tabulated one."""
        return None if self.schedule.is_table else self.schedule

    def _check_table(self, optimizer: torch.optim.Optimizer, what: str) -> None:
        require_adamw_space(self.schedule.optimizer, what)
        missing = [c for c in self.COLUMNS if c not in dict(self.schedule.columns)]
        if missing:
            raise ValueError(f"{what} lacks the column(s) {', '.join(missing)} of an AdamW-space schedule")
        if any(not {"lr", "betas", "eps", "weight_decay"} <= set(g) for g in optimizer.param_groups):
            raise ValueError("ScheduleReplay drives torch.optim.AdamW: its param groups need lr, betas, eps and "
                             "weight_decay")
        if self.schedule.rows == 0:
            raise ValueError("a schedule needs at least one row, in increasing progress")

    def _check_shaped(self, optimizer: torch.optim.Optimizer) -> None:
        if self.schedule.optimizer == "ciao":
            raise ValueError(f"{self.schedule.name} is a schedule of CIAO's, at the task's own hyperparameters; "
                             "replay a followed or AdamW schedule on AdamW (e.g. linear-lr0.03)")
        if any("lr" not in g for g in optimizer.param_groups):
            raise ValueError("ScheduleReplay sets the param groups' lr: this optimizer's groups have none")

    def values_at(self, step: int) -> dict[str, float]:
        """The values in force at update ``step``: a tabulated schedule's AdamW columns, a shaped
        one's learning rate where it gives one (else each group's own, set in :meth:`_apply`)."""
        values = self.schedule.values_at(min(step / self.total_steps, 1.0))
        return {c: values[c] for c in self.COLUMNS} if self.schedule.is_table else values

    def _apply(self, step: int) -> None:
        if not self.schedule.is_table:
            factor = shape_factor(self.schedule.shape, min(step / self.total_steps, 1.0))
            for group in self.optimizer.param_groups:
                group["lr"] = (self.schedule.lr if self.schedule.lr is not None else group["initial_lr"]) * factor
            return
        v = self.values_at(step)
        for group in self.optimizer.param_groups:
            group.update(lr=v["lr"], eps=v["eps"], weight_decay=v["weight_decay"],
                         betas=(group["betas"][0], 1.0 - v["one_minus_beta2"]))  # fmt: skip

    def step(self) -> None:
        self.last_step += 1
        self._apply(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        """Where the replay is, and the run it was made for (plain data); with the optimizer's own
        state dict it resumes a run exactly."""
        if not self.schedule.is_table:
            return {"last_step": self.last_step, "total_steps": self.total_steps, "schedule": self.schedule.name}
        return {"last_step": self.last_step, "total_steps": self.total_steps, "rows": self.schedule.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            raise ValueError(f"this state was saved by a ScheduleReplay of total_steps={state['total_steps']}, but this "
                             f"one has {self.total_steps}: resume with the settings of the saved run")
        mine = self.schedule
        if not mine.is_table and state.get("schedule", mine.name) != mine.name:
            raise ValueError(f"this state was saved replaying {state['schedule']}, but this replay follows "
                             f"{mine.name}: resume with the schedule of the saved run")
        if mine.is_table and int(state.get("rows", mine.rows)) != mine.rows:
            raise ValueError(f"this state was saved replaying a schedule of {state['rows']} rows, but this one has "
                             f"{mine.rows}: resume with the schedule of the saved run")
        self.last_step = int(state["last_step"])
        self._apply(self.last_step)
