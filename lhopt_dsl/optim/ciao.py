"""CIAO, the Customizable Inner Adaptive Optimizer (paper Section 3.5, Appendix I).

An Adam-family optimizer designed to have its hyperparameters changed during training by a
policy. Every hyperparameter lives in ``param_groups`` and is read at every step:

* ``lr``, ``weight_decay`` (decoupled, AdamW-style), ``eps``;
* ``one_minus_beta1`` / ``one_minus_beta2``: moving-average rates stored as 1 - beta so that
  multiplicative actions apply naturally;
* ``bias_correction``: ``"product"`` (default) divides by 1 - the running product of the betas
  actually used, which stays exact when a policy changes them mid-run; ``"power"`` divides by
  ``1 - beta**t`` with the current beta, as ``torch.optim.Adam``/``AdamW`` do (the two agree
  while the betas stay fixed);
* ``denominator``: ``"adamax"`` (default: u = max(beta2 * u, |g|)) or ``"adam"`` (EMA of g^2);
* ``use_clip``, ``grad_clip_fraction``, ``one_minus_beta_gradclip``: the gradient's global norm is
  clipped to a fraction of its exponentially decaying moving maximum
  ``G_t = max(G_{t-1} * beta_gradclip, |g_t|)`` (Appendix I.1), which no fixed threshold can be;
* ``use_lamb``, ``one_minus_beta_lamb``, ``lamb_min_trust``: each tensor's update is scaled by
  the LAMB trust ratio ``|p| / EMA(|update|)``, normalised by a moving average of the update norm
  rather than the current one (Appendix I.1), and never below ``lamb_min_trust``.

The update of a tensor is ``p -= lr * trust * (m_hat / denom + weight_decay * p)``; with LAMB and
clipping off, the Adam denominator and ``bias_correction="power"`` this is exactly
``torch.optim.AdamW``, also when its hyperparameters change between steps (the AdamW space of
:mod:`lhopt_dsl.spec.hparams`). The maths, the hyperparameters' defaults and rules, and the statistics'
reductions are written once in :mod:`lhopt_dsl.optim.functional`, shared with populations of many
models (:mod:`lhopt_dsl.tasks.population`); this class keeps the state and runs them on a parameter group's
tensors, with torch's multi-tensor kernels (``foreach``, the fast path) or one tensor at a time
(the reference; a test keeps the two equal). A non-finite gradient norm leaves the moving maximum
unchanged; the step itself proceeds, so a diverged run shows up in its losses. Like
``torch.nn.utils.clip_grad_norm_``, clipping scales the ``.grad`` tensors in place.

Statistics for the policy's features are computed only on steps that ask for them
(``step(stats=True)``); see :mod:`lhopt_dsl.optim.stats`.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from .functional import (
    COUNTERS, DEFAULTS, CompiledStep, TensorLists, advance, check_hyperparameters, ciao_step_, coefficients, compilable,
    layout_key,
)  # fmt: skip
from .stats import STAT_NAMES, SUM_NAMES, StepStats, statistics

#: Hyperparameters read at every step (and so changeable between steps).
HYPERPARAMETERS = tuple(DEFAULTS)
__all__ = ["CIAO", "DEFAULTS", "HYPERPARAMETERS", "check_hyperparameters"]


class CIAO(Optimizer):
    """See the module docstring. ``foreach=None`` picks the multi-tensor path. ``compiled=True``
    steps with ``torch.compile``d kernels instead, compiled once per parameter layout (and per
    setting of the switches; coefficients are inputs, so a policy's changes never recompile):
    about 2.5x faster than the multi-tensor path on CPU, after a compile of seconds to minutes
    (docs/PERFORMANCE.md), so it pays for long runs of one model, not for many short ones. Falls back
    to the multi-tensor path, with a warning, where compiling fails."""

    def __init__(
        self, params: Iterable[Any], *, foreach: bool | None = None, compiled: bool = False, **hyperparameters: Any
    ):
        unknown = set(hyperparameters) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"CIAO: unknown hyperparameters {sorted(unknown)}; known: {list(DEFAULTS)}")
        defaults = {**DEFAULTS, **hyperparameters}
        check_hyperparameters(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_hyperparameters(group)
        self.foreach = True if foreach is None else foreach
        self.compiled = compiled
        self._kernels: dict[tuple, CompiledStep] = {}  # layout_key -> the step compiled for it
        self.stats: StepStats | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a copy: training on must never mutate the saved checkpoint (torch's default aliases it)."""
        super().load_state_dict(copy.deepcopy(state_dict))

    def _group_state(self, group: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Per-group counters (:data:`~lhopt_dsl.optim.functional.COUNTERS`), the moving maximum of
        |g| and the clipped steps since the last statistics, kept in the group so ``state_dict`` saves them."""
        if "_ciao" not in group:
            zero = torch.zeros((), device=device)
            group["_ciao"] = {**COUNTERS, "grad_max": zero, "clipped": zero.clone()}
        for name, start in COUNTERS.items():  # checkpoints written before a counter existed
            group["_ciao"].setdefault(name, start)
        return group["_ciao"]

    def _param_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["update_norm_ema"] = torch.zeros((), device=p.device, dtype=p.dtype)
        return state

    @torch.no_grad()
    def step(
        self, closure: Callable[[], torch.Tensor] | None = None, *, stats: bool = False, loss: float | None = None
    ) -> torch.Tensor | None:
        """One update. With ``stats=True`` also fill ``self.stats`` (pass the training ``loss``)."""
        closure_loss = None
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
        ops = TensorLists(self.foreach)
        parts: list[tuple[dict[str, Any], dict[str, torch.Tensor], int]] = []  # (group state, sums, elements)
        for group in self.param_groups:
            check_hyperparameters(group)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("CIAO does not support sparse gradients")
            gs = self._group_state(group, params[0].device)
            advance(gs, group, group["bias_correction"])
            states = [self._param_state(p) for p in params]
            lamb = group["use_lamb"]
            emas = [s["update_norm_ema"] for s in states]
            small = {"grad_max": gs["grad_max"], "clipped": gs["clipped"],
                     "update_norm_ema": torch.stack(emas) if lamb else None}  # fmt: skip
            grad_ema = numels = None
            if stats:  # the noise scale's moving average of the gradient, and elements per tensor
                grad_ema = functools.partial(self._grad_ema, states, params)
                numels = torch.tensor([p.numel() for p in params], dtype=torch.float64, device=params[0].device)
            m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            grads, c = [p.grad for p in params], coefficients(group, gs)
            if self.compiled and compilable(params):
                key = layout_key(params, group, stats)
                kernel = self._kernels.get(key) or self._kernels.setdefault(key, CompiledStep(group, tuple(c)))
                new, sums = kernel(params, grads, m, v, small, c, grad_ema=grad_ema, numels=numels)
            else:
                new, sums = ciao_step_(ops, params, grads, m, v, small, c, group, grad_ema=grad_ema, numels=numels)
            gs["grad_max"], gs["clipped"] = new["grad_max"], new["clipped"]
            if lamb:
                torch._foreach_copy_(emas, list(new["update_norm_ema"].unbind()))
            if sums is not None:
                parts.append((gs, sums, sum(p.numel() for p in params)))
        if stats:
            self.stats = self._statistics(parts, loss)
        return closure_loss

    @staticmethod
    def _grad_ema(states: list[dict[str, torch.Tensor]], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The noise scale's moving average of each gradient, allocated at its first use: inside the step,
        after the update's temporaries. Where a long-lived buffer lands decides whether glibc's malloc
        returns the temporaries' pages to the system after every step and faults them in again at the
        next one; allocated before the temporaries, it made the step 1.2-1.4x slower in
        bench/optim_bench.py (a), allocator luck rather than arithmetic (with trimming off, no difference)."""
        for s, p in zip(states, params):
            if "grad_ema" not in s:
                s["grad_ema"] = torch.zeros_like(p)
        return [s["grad_ema"] for s in states]

    @staticmethod
    def _statistics(parts: list[tuple[dict[str, Any], dict[str, torch.Tensor], int]], loss: float | None) -> StepStats:
        """The statistics of all groups together: their sums add up; the noise scale's averages live
        in the first group's state."""
        if not parts:
            return {name: math.nan for name in STAT_NAMES}
        if len(parts) == 1:  # what the sum below gives (0 + x), on all the sums at once
            total = torch.stack([parts[0][1][n] for n in SUM_NAMES]).add(0).cpu().unsqueeze(1)
        else:
            total = torch.stack([sum(s[n] for _, s, _ in parts) for n in SUM_NAMES]).cpu().unsqueeze(1)
        steps = sum(gs["steps_since_stats"] for gs, _, _ in parts)
        for gs, _, _ in parts:
            gs["steps_since_stats"] = 0
        return statistics(
            dict(zip(SUM_NAMES, total.unbind())), parts[0][0], steps=steps, numel=sum(n for _, _, n in parts),
            loss=None if loss is None else torch.as_tensor(loss, dtype=torch.float64).detach().cpu().reshape(1),
        )[0]  # fmt: skip
