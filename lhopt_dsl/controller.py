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
learning-rate scheduler (paper Section 4.5, Appendix B). Only schedules of a policy meta-trained in
the AdamW space (``hparams: {space: adamw}``), where CIAO is exactly AdamW, mean the same thing
on AdamW; schedules from any other space are refused.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from .actions import ActionSpace, CheckpointBank, apply_action, current_hparams
from .schedule import segment_bounds
from .observation import FeatureBuilder, Observer, flatten
from .optim import CIAO
from .policy import ActorCritic, EnsembleActorCritic, save_checkpoint
from .policy_file import load_policy_file
from .residual import ResidualPolicy, Target
from .spec.hparams import HPARAM_NAMES, SPACES, AdamWSpace, CIAOSpace, HyperparameterSpace, validate_space

DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.pt"


def load_policy(policy: ActorCritic | str | os.PathLike[str] | None) -> tuple[ActorCritic, HyperparameterSpace]:
    """A policy object, a checkpoint path (``policy.pt`` or a training ``checkpoint.pt``), or None
    for the shipped default; returns it with the hyperparameter space it was trained with (the
    checkpoint's spec records it; the CIAO space for a policy object and for checkpoints that
    record none, as those saved before spaces existed). Files are read with
    :func:`~lhopt_dsl.policy_file.load_policy_file`, which runs no code from them and checks them
    before anything is built: a policy someone shared is data, not a program. A file that is not a
    usable policy raises :class:`~lhopt_dsl.policy.PolicyFileError` (a ValueError) naming it."""
    if isinstance(policy, ActorCritic):
        return policy, CIAOSpace()
    path = Path(policy) if policy is not None else DEFAULT_POLICY
    if not path.exists():
        raise FileNotFoundError(f"policy checkpoint not found: {path}")
    state = load_policy_file(path)  # shapes in bounds, tensors as declared and finite, space and base valid
    space = validate_space((state.get("spec") or {}).get("hparams", {}))
    model = ActorCritic.from_checkpoint(state["policy"])
    if state.get("residual") is not None:  # a policy that acts around a base schedule
        return ResidualPolicy(model, space, Target.from_name(state["residual"]["base"])), space  # type: ignore[return-value]
    return model, space


def combine_policies(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> EnsembleActorCritic:
    """Write to ``out`` one policy file that acts as the ensemble of the policies in ``paths``
    (:class:`~lhopt_dsl.policy.EnsembleActorCritic`: the mean of their log-probabilities), and
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
        if isinstance(model, EnsembleActorCritic):
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


class LHOPT(CIAO):
    """CIAO driven by a learned policy; see the module docstring.

    ``outer_steps`` is how many times the policy acts over ``total_steps`` (default: 32, at most
    ``total_steps``); ``model`` (optional) lets restart actions include buffers such as BatchNorm
    statistics, otherwise restarts cover the parameters and optimizer state; ``initial`` sets the
    starting values of the hyperparameters the policy controls (default: its space's ``init``). A
    policy of the AdamW space runs CIAO as exactly ``torch.optim.AdamW``.

    ``guard`` (on by default) keeps a policy's choices from ruining a run: at every decision where
    the run looks healthy it keeps a copy of the parameters and optimizer state (and ``model``'s
    buffers). When a step leaves a parameter non-finite, or the parameters' norm more than
    ``guard_factor`` times its value after the first step (a diverging run, seen even when no loss
    is reported), that step is undone; when a reported loss is non-finite or more than
    ``guard_factor`` times the first one of its kind, the next step is skipped. Either way the copy is restored and the learning rate multiplied by
    ``guard_lr_factor``, before any forward pass sees the broken state. Each such event is a row of
    :attr:`history` with ``restart: "guard"`` and the reason, so exported schedules replay the lowered
    learning rate. It costs one parameter-norm reduction per step and one copy of the training
    state in memory; ``guard=False`` turns it off.

    ``compiled=True``: CIAO's ``torch.compile``d step (see :class:`~lhopt_dsl.optim.CIAO`), for long
    runs of large models, where its compile of seconds to a minute pays back.
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
        guard: bool = True,
        guard_factor: float = 10.0,
        guard_lr_factor: float = 0.1,
        compiled: bool = False,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if guard_factor <= 1.0 or not 0.0 < guard_lr_factor < 1.0:
            raise ValueError(f"need guard_factor > 1 and 0 < guard_lr_factor < 1, got {guard_factor}, {guard_lr_factor}")
        self.policy, self.space = load_policy(policy)
        start = {n: hp.init for n, hp in self.space.controlled().items()} | (initial or {})
        super().__init__(params, compiled=compiled, **self.space.initial(start).ciao_kwargs())
        self.actions = ActionSpace(self.space)
        self.features = FeatureBuilder(self.actions, self.space)
        self.policy.check_compatible(self.features.policy_size, None, self.actions.nvec)  # acting: no critic
        self.total_steps = total_steps
        self.outer_steps = min(outer_steps or 32, total_steps)
        self.bounds = segment_bounds(total_steps, self.outer_steps)
        if isinstance(self.policy, ResidualPolicy):  # acts around its base schedule, from this run's start
            self.policy = self.policy.bind(float(self.param_groups[0]["lr"]), self.outer_steps)  # type: ignore[assignment]
        self.stats_every, self.deterministic = stats_every, deterministic
        self.generator = torch.Generator().manual_seed(seed)
        self._all_params = [p for g in self.param_groups for p in g["params"]]
        self._module = model if model is not None else _Params(self._all_params)
        self.bank = CheckpointBank(self.features.slots, HPARAM_NAMES)
        self.initial = current_hparams(self)
        # What the policy sees, as in meta-training; it also says what it sees of losses never reported.
        self.observer = Observer(self.features, self.outer_steps, self.initial)
        self.step_count, self.decisions = 0, 0
        self._state: tuple = (None, None)
        self.history: list[dict[str, Any]] = []  # hyperparameters chosen at each decision (and guard events)
        self.guard, self.guard_factor, self.guard_lr_factor = guard, guard_factor, guard_lr_factor
        self._first: dict[str, float] = {}  # first finite loss reported, per kind
        self._first_norm: float | None = None  # the parameters' norm after the first step
        self._bad: str | None = None  # why the next step must restore the safe copy instead of stepping
        self._safe = self.bank.snapshot(self._module, self, 0.0, math.nan) if guard else None

    def observe(self, *, train_loss: float | None = None, valid_loss: float | None = None) -> None:
        """Report losses; the policy sees the mean training loss since its last decision and the
        latest validation loss (:class:`~lhopt_dsl.observation.Observer` says what it sees when you
        report none).

        With the guard on, a loss that is non-finite or ``guard_factor`` times the first of its kind
        is not shown to the policy: the state that produced it is undone at the next step.
        """
        for kind, value in (("train_loss", train_loss), ("valid_loss", valid_loss)):
            if value is None:
                continue
            value = float(value)
            if self.guard and self._diverged(kind, value):
                self._bad = self._bad or f"{kind} {value:.4g}"
                continue
            self.observer.report(**{kind: value})

    def _diverged(self, kind: str, value: float) -> bool:
        """Whether ``value`` (a loss of ``kind``) says the run is diverging; records the first finite one."""
        if not math.isfinite(value):
            return True
        first = self._first.setdefault(kind, value)
        return value > self.guard_factor * max(abs(first), 1e-12)

    def _restore_safe(self, reason: str) -> None:
        """Go back to the last healthy copy and lower the learning rate; recorded in the history."""
        assert self._safe is not None
        self.bank.restore(self._safe, self._module, self)
        for group in self.param_groups:
            group["lr"] *= self.guard_lr_factor
        if hasattr(self.policy, "lowered"):  # a residual policy: its offset from the base schedule follows
            self.policy.lowered(self.guard_lr_factor)
        self.observer.restarted(self._safe.valid_loss)
        hparams = {n: float(self.param_groups[0][n]) for n in self.actions.hparams}
        self.history.append({"progress": self.step_count / self.total_steps, **hparams, "restart": "guard",
                             "reason": reason})  # fmt: skip
        self._bad = None

    def _decide(self) -> None:
        if self.guard and self._bad is None and self.step_count > 0:  # healthy so far: the copy to go back to
            self._safe = self.bank.snapshot(self._module, self, self.step_count / self.total_steps,
                                            self.observer.valid_loss)  # fmt: skip
        x = self.observer.policy(current_hparams(self), self.bank.slots, flatten(self._all_params))
        x = self.policy.policy_norm(x, update=False)
        v = np.zeros(self.policy.shape.value_size, dtype=np.float32)  # the critic is not needed to act
        action, _, _, self._state = self.policy.act(x, v, self._state, self.generator, self.deterministic)
        kind, slot = self.actions.restart(action) if self.features.slots else ("none", -1)
        valid = self.bank.apply(kind, slot, self._module, self, self.observer.progress, self.observer.valid_loss)
        self.observer.restarted(valid)
        applied = apply_action(self, self.actions, action)
        self.observer.acted(action)
        self.decisions += 1
        # Exact fraction of the run at which these values take effect (what ScheduleReplay switches on).
        at = self.bounds[self.decisions - 1] / self.total_steps
        self.history.append({"progress": at, **applied, "restart": kind})

    @torch.no_grad()
    def step(self, closure=None, *, stats: bool | None = None, loss: float | None = None):  # noqa: ANN001
        """An optimizer step; at an outer-step boundary the policy first sets the hyperparameters.

        With the guard on, a step that follows a diverging loss report is skipped and the last
        healthy state restored instead, and a step that leaves a parameter non-finite (non-finite
        gradients, an overflowing update) is undone the same way, before any forward pass sees it.
        """
        if self.guard and self._bad is not None:
            self._restore_safe(self._bad)
            self.step_count += 1
            return None
        if self.decisions < self.outer_steps and self.step_count >= self.bounds[self.decisions]:
            self._decide()
        want = (self.step_count + 1) % self.stats_every == 0 if stats is None else stats
        if loss is None:
            loss = self.observer.last_train_loss
        out = super().step(closure, stats=want, loss=loss)
        if want and self.stats is not None:
            self.observer.report(stats=self.stats)
        self.step_count += 1
        if self.guard and (problem := self._parameters_problem()):
            self._restore_safe(problem)
        return out

    def _parameters_problem(self) -> str | None:
        """Why the parameters say the run is diverging (None if they do not): a non-finite entry, or
        a norm more than ``guard_factor`` times the initial one. The second needs no reported loss:
        a run whose user reports none can still blow up (its weights grow without bound)."""
        # One fused reduction: the norm of all parameters is finite exactly when every entry is.
        norm = float(torch.nn.utils.get_total_norm(self._all_params, foreach=True))
        if not math.isfinite(norm):
            return "non-finite parameters"
        if self._first_norm is None:
            self._first_norm = norm if norm > 0 else None  # all zeros: the first non-zero norm instead
        elif norm > self.guard_factor * self._first_norm:
            return f"parameter norm {norm:.4g}, over {self.guard_factor:g}x the initial {self._first_norm:.4g}"
        return None

    def schedule(self) -> dict[str, Any]:
        """The hyperparameters chosen so far, as a schedule document (see :func:`schedule_from_history`)."""
        return schedule_from_history(self.history, self.space.space)


# --- fixed schedules -----------------------------------------------------------------------------
#
# A schedule document is plain data, as saved in YAML: ``{"meta": {"space": ..., ...}, "schedule":
# {"progress": [...], "<hyperparameter>": [...], ...}}``, one column per hyperparameter the policy
# controls, one row per decision, ``progress`` in [0, 1) being where the row takes effect.


def schedule_from_history(history: list[dict[str, Any]], space: str) -> dict[str, Any]:
    """A schedule document of the hyperparameters applied at each decision of a ``space`` policy."""
    columns = {n: [float(h[n]) for h in history] for n in SPACES[space].hparam_names()}
    return {"meta": {"space": space}, "schedule": {"progress": [float(h["progress"]) for h in history], **columns}}


def save_schedule(schedule: dict[str, Any], path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
    """Write a schedule document as YAML, with ``meta`` added to its metadata."""
    document = {"meta": {**schedule.get("meta", {}), **(meta or {})}, "schedule": schedule["schedule"]}
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False))


def _document(data: Any, source: str) -> dict[str, Any]:
    """A schedule document from loaded data; a bare mapping of columns has no metadata."""
    document = data if isinstance(data, dict) and "schedule" in data else {"meta": {}, "schedule": data}
    columns = document["schedule"]
    if not isinstance(columns, dict) or "progress" not in columns or "lr" not in columns:
        raise ValueError(f"{source}: not a schedule (needs 'progress' and 'lr' columns)")
    return {"meta": document.get("meta") or {}, "schedule": columns}


def load_schedule(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a schedule document written by :func:`save_schedule` (or `lhopt schedule export`).

    Read like a spec, so a broken, binary or alias-bomb file is a SpecError (a ValueError) naming
    file:line:col rather than a PyYAML traceback or a hang.
    """
    from .spec.loader import load_yaml

    return _document(load_yaml(path), str(path))


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


class ScheduleReplay:
    """Replays a schedule of an AdamW-space policy on ``torch.optim.AdamW``, like a learning-rate
    scheduler.

    Call ``step()`` after each ``optimizer.step()`` (as with torch's schedulers); the values in
    force at update ``t`` are those recorded at the last progress <= t / total_steps, so the
    schedule stretches to any number of updates. ``schedule`` is a schedule document or its YAML
    file. The values are AdamW's own: ``lr``, ``eps``, ``weight_decay`` and
    ``betas[1] = 1 - one_minus_beta2``; beta1 stays as configured (the AdamW space keeps it at
    AdamW's default 0.9; paper Appendix B). Replayed with the run's weights and data order, the
    schedule reproduces the run it was exported from.
    """

    COLUMNS = AdamWSpace.hparam_names()

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: dict[str, Any] | str | os.PathLike[str],
                 total_steps: int):  # fmt: skip
        if isinstance(schedule, dict):
            document = _document(schedule, "schedule")
            what = "the schedule"
        else:
            document = load_schedule(schedule)
            what = f"schedule {schedule}"
        require_adamw_space(document["meta"].get("space"), what)
        self.schedule = document["schedule"]
        missing = [c for c in self.COLUMNS if c not in self.schedule]
        if missing:
            raise ValueError(f"{what} lacks the column(s) {', '.join(missing)} of an AdamW-space schedule")
        if any(not {"lr", "betas", "eps", "weight_decay"} <= set(g) for g in optimizer.param_groups):
            raise ValueError("ScheduleReplay drives torch.optim.AdamW: its param groups need lr, betas, eps and "
                             "weight_decay")
        self.optimizer = optimizer
        self.progress = np.asarray(self.schedule["progress"], dtype=np.float64)
        if len(self.progress) == 0 or np.any(np.diff(self.progress) < 0):
            raise ValueError("a schedule needs at least one row, in increasing progress")
        self.total_steps = total_steps
        self.last_step = 0
        self._apply(0)

    def values_at(self, step: int) -> dict[str, float]:
        i = max(int(np.searchsorted(self.progress, step / self.total_steps, side="right")) - 1, 0)
        return {c: float(self.schedule[c][i]) for c in self.COLUMNS}

    def _apply(self, step: int) -> None:
        v = self.values_at(step)
        for group in self.optimizer.param_groups:
            group.update(lr=v["lr"], eps=v["eps"], weight_decay=v["weight_decay"],
                         betas=(group["betas"][0], 1.0 - v["one_minus_beta2"]))  # fmt: skip

    def step(self) -> None:
        self.last_step += 1
        self._apply(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply(self.last_step)
