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
:mod:`lhopt_dsl.spec.hparams`). Two implementations share the maths: ``_step_reference`` (a loop
over tensors: the specification) and ``_step_foreach`` (torch's multi-tensor kernels: the fast
path); a test keeps them equal. A non-finite gradient norm leaves
the moving maximum unchanged; the step itself proceeds, so a diverged run shows up in its losses.
Like ``torch.nn.utils.clip_grad_norm_``, clipping scales the ``.grad`` tensors in place.

Statistics for the policy's features are computed only on steps that ask for them
(``step(stats=True)``); see :mod:`lhopt_dsl.optim.stats`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from .stats import StepStats, compute_stats

DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "eps": 1e-6,
    "one_minus_beta1": 0.1,
    "one_minus_beta2": 1e-2,
    "bias_correction": "product",
    "denominator": "adamax",
    "use_clip": True,
    "grad_clip_fraction": 0.8,
    "one_minus_beta_gradclip": 1e-2,
    "use_lamb": True,
    "one_minus_beta_lamb": 0.05,
    "lamb_min_trust": 1e-3,
}
#: Hyperparameters read at every step (and so changeable between steps).
HYPERPARAMETERS = tuple(DEFAULTS)


def check_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ValueError naming the offending value."""

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"CIAO: invalid {name}={group[name]!r}: {rule}")

    for name in ("lr", "weight_decay", "eps", "lamb_min_trust"):
        v = group[name]
        need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, name, "must be a finite number >= 0")
    for name in ("one_minus_beta1", "one_minus_beta2", "one_minus_beta_gradclip", "one_minus_beta_lamb"):
        v = group[name]
        need(isinstance(v, (int, float)) and 0 < v <= 1, name, "must be in (0, 1] (it is 1 - beta)")
    v = group["grad_clip_fraction"]
    need(isinstance(v, (int, float)) and 0 < v <= 1, "grad_clip_fraction", "must be in (0, 1]")
    need(group["denominator"] in ("adam", "adamax"), "denominator", "must be 'adam' or 'adamax'")
    need(group["bias_correction"] in ("product", "power"), "bias_correction", "must be 'product' or 'power'")
    for name in ("use_clip", "use_lamb"):
        need(isinstance(group[name], bool), name, "must be true or false")


class CIAO(Optimizer):
    """See the module docstring. ``foreach=None`` picks the multi-tensor path."""

    def __init__(self, params: Iterable[Any], *, foreach: bool | None = None, **hyperparameters: Any):
        unknown = set(hyperparameters) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"CIAO: unknown hyperparameters {sorted(unknown)}; known: {list(DEFAULTS)}")
        defaults = {**DEFAULTS, **hyperparameters}
        check_hyperparameters(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_hyperparameters(group)
        self.foreach = True if foreach is None else foreach
        self.stats: StepStats | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a copy: training on must never mutate the saved checkpoint (torch's default aliases it)."""
        super().load_state_dict(copy.deepcopy(state_dict))

    # --- group-level state ---------------------------------------------------------------------

    def _group_state(self, group: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Per-group scalars, kept in the group itself so ``state_dict`` saves them."""
        if "_ciao" not in group:
            group["_ciao"] = {
                "step": 0,
                "beta1_prod": 1.0,  # what 1 - beta_prod corrects the moments' bias with (see bias_correction)
                "beta2_prod": 1.0,
                "lamb_prod": 1.0,
                "grad_max": torch.zeros((), device=device),  # G_t, the moving maximum of |g|
                "clipped": torch.zeros((), device=device),  # clipped steps since the last statistics
                "steps_since_stats": 0,
            }
        return group["_ciao"]

    @torch.no_grad()
    def step(
        self, closure: Callable[[], torch.Tensor] | None = None, *, stats: bool = False, loss: float | None = None
    ) -> torch.Tensor | None:
        """One update. With ``stats=True`` also fill ``self.stats`` (pass the training ``loss``)."""
        closure_loss = None
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
        collected = []
        for group in self.param_groups:
            check_hyperparameters(group)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("CIAO does not support sparse gradients")
            gs = self._group_state(group, params[0].device)
            gs["step"] += 1
            b1, b2 = 1.0 - group["one_minus_beta1"], 1.0 - group["one_minus_beta2"]
            if group["bias_correction"] == "power":  # torch's Adam: 1 - beta**t with the current betas
                gs["beta1_prod"], gs["beta2_prod"] = b1 ** gs["step"], b2 ** gs["step"]
            else:
                gs["beta1_prod"] *= b1
                gs["beta2_prod"] *= b2
            gs["lamb_prod"] *= 1.0 - group["one_minus_beta_lamb"]
            gs["steps_since_stats"] += 1
            impl = self._step_foreach if self.foreach else self._step_reference
            collected.append(impl(group, gs, params, stats))
        if stats:
            self.stats = compute_stats([c for c in collected if c is not None], loss)
        return closure_loss

    # --- shared pieces -------------------------------------------------------------------------

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["update_norm_ema"] = torch.zeros((), device=p.device, dtype=p.dtype)
        return state

    @staticmethod
    def _clip_scale(group: dict[str, Any], gs: dict[str, Any], grad_norm: torch.Tensor) -> torch.Tensor:
        """Scale applied to the gradient (1 when not clipped); updates the moving maximum."""
        if not group["use_clip"]:
            return torch.ones_like(grad_norm)
        decayed = gs["grad_max"] * (1.0 - group["one_minus_beta_gradclip"])
        finite = torch.isfinite(grad_norm)
        gs["grad_max"] = torch.where(finite, torch.maximum(decayed, grad_norm), gs["grad_max"])
        threshold = group["grad_clip_fraction"] * gs["grad_max"]
        clip = finite & (grad_norm > threshold)
        gs["clipped"] = gs["clipped"] + clip.to(gs["clipped"].dtype)
        return torch.where(clip, threshold / grad_norm, torch.ones_like(grad_norm))

    @staticmethod
    def _trust(group: dict[str, Any], gs: dict[str, Any], p_norm: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
        ema_hat = ema / (1.0 - gs["lamb_prod"])
        ok = (p_norm > 0) & (ema_hat > 0)
        ratio = torch.where(ok, p_norm / torch.where(ok, ema_hat, torch.ones_like(ema_hat)), torch.ones_like(p_norm))
        return ratio.clamp(min=group["lamb_min_trust"])

    # --- reference: one tensor at a time -------------------------------------------------------

    def _step_reference(self, group: dict[str, Any], gs: dict[str, Any], params: list[torch.Tensor], want: bool):
        b1, b2 = 1.0 - group["one_minus_beta1"], 1.0 - group["one_minus_beta2"]
        bl = 1.0 - group["one_minus_beta_lamb"]
        bc1, bc2 = 1.0 - gs["beta1_prod"], 1.0 - gs["beta2_prod"]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = self._clip_scale(group, gs, grad_norm)
        grads, updates, trusts = [], [], []
        param_sq = grad_dot_param = torch.zeros((), dtype=torch.float64, device=params[0].device)
        for p in params:
            state = self._init_state(p)
            g = p.grad.mul_(scale) if group["use_clip"] else p.grad
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            if group["denominator"] == "adam":
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denom = v.sqrt() / math.sqrt(bc2) + group["eps"]
            else:
                torch.maximum(v * b2, g.abs(), out=v)
                denom = v + group["eps"]
            update = m / bc1 / denom + group["weight_decay"] * p
            trust = torch.ones((), device=p.device, dtype=p.dtype)
            if group["use_lamb"]:
                ema = state["update_norm_ema"]
                ema.mul_(bl).add_(torch.linalg.vector_norm(update), alpha=1.0 - bl)
                trust = self._trust(group, gs, torch.linalg.vector_norm(p), ema)
                update = update * trust
            if want:
                grads.append(g)
                updates.append(update)
                trusts.append(trust)
                param_sq = param_sq + torch.linalg.vector_norm(p, dtype=torch.float64) ** 2
                grad_dot_param = grad_dot_param + (g * p).sum(dtype=torch.float64)
            p.add_(update, alpha=-group["lr"])
        if not want:
            return None
        return self._stats_inputs(group, gs, params, grads, updates, trusts, param_sq, grad_dot_param)

    # --- fast path: multi-tensor kernels -------------------------------------------------------

    def _step_foreach(self, group: dict[str, Any], gs: dict[str, Any], params: list[torch.Tensor], want: bool):
        b1, b2 = 1.0 - group["one_minus_beta1"], 1.0 - group["one_minus_beta2"]
        bl = 1.0 - group["one_minus_beta_lamb"]
        bc1, bc2 = 1.0 - gs["beta1_prod"], 1.0 - gs["beta2_prod"]
        states = [self._init_state(p) for p in params]
        ms = [s["exp_avg"] for s in states]
        vs = [s["exp_avg_sq"] for s in states]
        grads = [p.grad for p in params]
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = self._clip_scale(group, gs, grad_norm)
        if group["use_clip"]:
            torch._foreach_mul_(grads, scale)  # in place, like torch.nn.utils.clip_grad_norm_
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        torch._foreach_mul_(vs, b2)
        if group["denominator"] == "adam":
            torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, group["eps"])
        else:
            torch._foreach_maximum_(vs, torch._foreach_abs(grads))
            denom = torch._foreach_add(vs, group["eps"])
        # Work with bc1 * update and fold 1/bc1 into the trust ratio or the learning rate: one pass fewer.
        updates = torch._foreach_div(ms, denom)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"] * bc1)
        trust = torch.ones(len(params), device=params[0].device, dtype=params[0].dtype)
        factor = 1.0 / bc1  # what still multiplies ``updates``
        if group["use_lamb"]:
            emas = torch.stack([s["update_norm_ema"] for s in states])
            emas = emas * bl + torch.stack(torch._foreach_norm(updates)) * (factor * (1.0 - bl))
            torch._foreach_copy_([s["update_norm_ema"] for s in states], list(emas.unbind()))
            trust = self._trust(group, gs, torch.stack(torch._foreach_norm(params)), emas)
            torch._foreach_mul_(updates, list((trust * factor).unbind()))
            factor = 1.0
        if want:
            param_sq = sum(torch.linalg.vector_norm(p, dtype=torch.float64) ** 2 for p in params)
            grad_dot_param = sum((g * p).sum(dtype=torch.float64) for g, p in zip(grads, params))
            true_updates = updates if factor == 1.0 else torch._foreach_mul(updates, factor)
            stats_inputs = self._stats_inputs(
                group, gs, params, grads, true_updates, list(trust.unbind()), param_sq, grad_dot_param
            )
        torch._foreach_add_(params, updates, alpha=-group["lr"] * factor)
        return stats_inputs if want else None

    def _stats_inputs(self, group, gs, params, grads, updates, trusts, param_sq, grad_dot_param) -> dict[str, Any]:
        """What the statistics need; ``param_sq`` and ``grad_dot_param`` are taken before the update."""
        states = [self.state[p] for p in params]
        steps = gs["steps_since_stats"]
        clipped = gs["clipped"]
        gs["clipped"] = torch.zeros_like(clipped)
        gs["steps_since_stats"] = 0
        return {
            # The parameters move after this; the statistics need their values before the update.
            "param_sq": param_sq,
            "grad_dot_param": grad_dot_param,
            "numels": [p.numel() for p in params],
            "grads": grads,
            "momenta": [s["exp_avg"] for s in states],
            "second": [s["exp_avg_sq"] for s in states],
            "updates": updates,
            "trusts": trusts,
            "group": group,
            "bc2": 1.0 - gs["beta2_prod"],
            "clipped": clipped,
            "steps": steps,
            "noise_state": [s.setdefault("grad_ema", torch.zeros_like(p)) for s, p in zip(states, params)],
            "gs": gs,
        }
