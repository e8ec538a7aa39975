"""CIAO's maths, written once: its hyperparameters, running products, update and step statistics.

One model (:class:`~lhopt_dsl.optim.ciao.CIAO`) and a population of K models trained as one
(:class:`~lhopt_dsl.tasks.population.CIAOPopulation`) run the same functions here, as ``torch.optim.adamw``
runs one update through its single-tensor, multi-tensor and fused paths. What differs between them
is only where the numbers live, so the maths is written over NAMED state and coefficients and over
a *layout*, which says how a handful of primitive operations run:

* :class:`TensorLists`: a parameter group's tensors as lists, coefficients Python numbers; torch's
  multi-tensor kernels (``foreach``, the fast path) or one tensor at a time (the reference);
* :class:`FlatRows`: K members' tensors flattened into the rows of (K, N) buffers, coefficients
  (K, 1) tensors, per-tensor norms over column ranges: plain tensor code over all members at once,
  without ``vmap``, that ``torch.compile`` fuses (:func:`flat_step_`).

The step is split where the kinds of numbers split. Host side (Python floats for a group, (K,)
float64 tensors for a population, the same code for both): :func:`advance` moves the running
products and step counts, :func:`coefficients` derives from them and the hyperparameters everything
the update multiplies with, in float64 (bias corrections of ``1 - beta**t`` lose their digits in
float32). Device side: :func:`ciao_step_` clips, updates the moments and parameters and, on the steps
that ask, reduces what the statistics need (:func:`~lhopt_dsl.optim.stats.stat_sums`).

Hyperparameters are declared once, in :data:`HYPERPARAMETER_TABLE`: default, validity rule and kind
(a number, of which population members may hold different values, or a switch, a branch of the code).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Callable, Mapping, MutableMapping, NamedTuple, Sequence

import torch

from .stats import stat_sums

Tensors = Any  # a tensor, or a list of tensors (one per parameter): whatever the layout works on


# --- hyperparameters -----------------------------------------------------------------------------


class Rule(NamedTuple):
    """What a hyperparameter's value must satisfy, and how the error says so."""

    ok: Callable[[Any], bool]
    text: str


def _number(v: Any) -> bool:
    return isinstance(v, (int, float))


NONNEGATIVE = Rule(lambda v: _number(v) and math.isfinite(v) and v >= 0, "must be a finite number >= 0")
RATE = Rule(lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1] (it is 1 - beta)")
FRACTION = Rule(lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]")
FLAG = Rule(lambda v: isinstance(v, bool), "must be true or false")


def one_of(*options: str) -> Rule:
    return Rule(lambda v: v in options, "must be " + " or ".join(repr(o) for o in options))


#: CIAO's hyperparameters, in the order of its keyword arguments: default (paper Table 7) and rule.
#: A float default makes a number (read by the maths from the coefficients, one value per
#: population member); any other default a switch (a branch of the code, shared by a population).
#: Adding a hyperparameter: a row here and its use in :func:`coefficients` or :func:`ciao_step_`.
HYPERPARAMETER_TABLE: dict[str, tuple[Any, Rule]] = {
    "lr": (1e-3, NONNEGATIVE),
    "weight_decay": (1e-2, NONNEGATIVE),
    "eps": (1e-6, NONNEGATIVE),
    "one_minus_beta1": (0.1, RATE),
    "one_minus_beta2": (1e-2, RATE),
    "bias_correction": ("product", one_of("product", "power")),
    "denominator": ("adamax", one_of("adam", "adamax")),
    "use_clip": (True, FLAG),
    "grad_clip_fraction": (0.8, FRACTION),
    "one_minus_beta_gradclip": (1e-2, RATE),
    "use_lamb": (True, FLAG),
    "one_minus_beta_lamb": (0.05, RATE),
    "lamb_min_trust": (1e-3, NONNEGATIVE),
}
DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in HYPERPARAMETER_TABLE.items()}
#: Hyperparameters that are numbers: per-member (K,) tensors in a population.
NUMBERS: tuple[str, ...] = tuple(n for n, d in DEFAULTS.items() if type(d) is float)
#: Hyperparameters that choose code paths: one value for all members of a population.
SWITCHES: tuple[str, ...] = tuple(n for n in DEFAULTS if n not in NUMBERS)


def check_hyperparameters(values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the offending value."""
    for name, (_, rule) in HYPERPARAMETER_TABLE.items():
        if not rule.ok(values[name]):
            raise ValueError(f"CIAO: invalid {name}={values[name]!r}: {rule.text}")


# --- host side: running products and coefficients ---------------------------------------------------

#: Per group (one model) or per member (population) counters kept on the host, with their start.
COUNTERS: dict[str, Any] = {
    "step": 0,
    "beta1_prod": 1.0,  # what 1 - beta_prod corrects the moments' bias with (see bias_correction)
    "beta2_prod": 1.0,
    "lamb_prod": 1.0,
    "steps_since_stats": 0,
    "noise_sq_ema": 0.0,  # the noise scale's moving average of |g|^2 (lhopt_dsl.optim.stats)
    "noise_count": 0,
}


def advance(counters: MutableMapping[str, Any], hp: Mapping[str, Any], bias_correction: str) -> None:
    """Count one more step taken with ``hp`` (floats or (K,) float64 tensors, updated in place).

    ``bias_correction="product"`` multiplies the betas actually used into the products, which stays
    exact when a policy changes them mid-run; ``"power"`` is torch's Adam: ``beta**t`` with the
    current betas (the two agree while the betas stay fixed).
    """
    counters["step"] = step = counters["step"] + 1
    b1, b2 = 1.0 - hp["one_minus_beta1"], 1.0 - hp["one_minus_beta2"]
    if bias_correction == "power":
        counters["beta1_prod"], counters["beta2_prod"] = b1**step, b2**step
    else:
        counters["beta1_prod"] = counters["beta1_prod"] * b1
        counters["beta2_prod"] = counters["beta2_prod"] * b2
    counters["lamb_prod"] = counters["lamb_prod"] * (1.0 - hp["one_minus_beta_lamb"])
    counters["steps_since_stats"] = counters["steps_since_stats"] + 1


def coefficients(hp: Mapping[str, Any], counters: Mapping[str, Any]) -> dict[str, Any]:
    """Every number :func:`ciao_step_` reads, by name: the hyperparameters that are numbers and what
    derives from them and the running products (all floats, or all (K,) float64 tensors)."""
    bc1, bc2 = 1.0 - counters["beta1_prod"], 1.0 - counters["beta2_prod"]
    return {
        **{n: hp[n] for n in NUMBERS},
        "beta2": 1.0 - hp["one_minus_beta2"],
        "beta_lamb": 1.0 - hp["one_minus_beta_lamb"],
        "beta_gradclip": 1.0 - hp["one_minus_beta_gradclip"],
        "bc2": bc2,
        "sqrt_bc2": bc2**0.5,
        "inv_bc1": 1.0 / bc1,
        "wd_bc1": hp["weight_decay"] * bc1,  # the update is computed times bc1 (see ciao_step_)
        "lamb_bc": 1.0 - counters["lamb_prod"],
    }


# --- device side: the update ---------------------------------------------------------------------


def ciao_step_(
    ops: Any, p: Tensors, g: Tensors, m: Tensors, v: Tensors, state: Mapping[str, Any], c: Mapping[str, Any],
    switches: Mapping[str, Any], *, grad_ema: Tensors | None = None, numels: torch.Tensor | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:  # fmt: skip
    """One CIAO update (module docstring of :mod:`lhopt_dsl.optim.ciao`) on layout ``ops``, in place.

    ``p``, ``g``, ``m``, ``v``: parameters, gradients (clipped in place, like
    ``torch.nn.utils.clip_grad_norm_``), first and second moments. ``state``: ``grad_max`` (the
    moving maximum of |g|) and ``clipped`` (clipped steps since the last statistics), one per member,
    and ``update_norm_ema`` (LAMB's moving average of each tensor's update norm). ``c``:
    :func:`coefficients`; ``switches``: the hyperparameters that are :data:`SWITCHES` (a mapping
    that has them, such as a parameter group). Returns ``state``'s new values and, when ``grad_ema``
    (the noise scale's moving average of the gradient, advanced here; or a function that returns it,
    called where it is first needed) is given, the statistics' reductions
    (:func:`~lhopt_dsl.optim.stats.stat_sums`, which need ``numels``: elements per tensor).
    """
    adam, use_clip, use_lamb = switches["denominator"] == "adam", switches["use_clip"], switches["use_lamb"]
    grad_max, clipped, ema = state["grad_max"], state["clipped"], state["update_norm_ema"]
    if use_clip:  # to a fraction of the moving maximum G_t = max(G_{t-1} beta, |g_t|); NaN leaves G alone
        grad_norm = ops.total_norm(g)
        finite = torch.isfinite(grad_norm)
        grad_max = torch.where(finite, torch.maximum(grad_max * c["beta_gradclip"], grad_norm), grad_max)
        threshold = c["grad_clip_fraction"] * grad_max
        clip = finite & (grad_norm > threshold)
        clipped = clipped + clip.to(clipped.dtype)
        ops.mul_(g, torch.where(clip, threshold / grad_norm, torch.ones_like(grad_norm)))
    ops.lerp_(m, g, c["one_minus_beta1"])
    ops.mul_(v, c["beta2"])
    if adam:
        ops.addcmul_(v, g, g, c["one_minus_beta2"])
        denom = ops.add_(ops.div_(ops.sqrt(v), c["sqrt_bc2"]), c["eps"])
    else:  # Adamax: u = max(beta2 u, |g|)
        ops.maximum_(v, ops.abs(g))
        denom = ops.add(v, c["eps"])
    # bc1 x the update (m_hat / denom + weight_decay p): 1/bc1 is folded into the trust ratio or the step.
    u = ops.div(m, denom)
    ops.add_scaled_(u, p, c["wd_bc1"])
    trust = None
    scale = c["inv_bc1"]  # what still multiplies u: per member, or per tensor with LAMB
    if use_lamb:  # |p| / EMA(|update|), bias-corrected, never below lamb_min_trust (Appendix I.1)
        ema = ema * c["beta_lamb"] + ops.norms(u) * (c["inv_bc1"] * c["one_minus_beta_lamb"])
        ema_hat, p_norm = ema / c["lamb_bc"], ops.norms(p)
        ok = (p_norm > 0) & (ema_hat > 0)
        trust = torch.where(ok, p_norm / torch.where(ok, ema_hat, torch.ones_like(ema_hat)), torch.ones_like(p_norm))
        trust = torch.clamp(trust, min=c["lamb_min_trust"])
        scale = trust * c["inv_bc1"]
    if grad_ema is None:
        ops.step_(p, u, scale * c["lr"], per_tensor=use_lamb)
        return {"grad_max": grad_max, "clipped": clipped, "update_norm_ema": ema}, None
    # The statistics read the update and the parameters before they move; the step is then taken
    # exactly as without statistics, so computing them never changes a run (not even its rounding).
    sums = stat_sums(ops, g, u, scale, trust, p, m, v, grad_ema, c, adam=adam, numels=numels, clipped=clipped)
    ops.step_(p, u, scale * c["lr"], per_tensor=use_lamb)
    return {"grad_max": grad_max, "clipped": torch.zeros_like(clipped), "update_norm_ema": ema}, sums


# --- layouts ---------------------------------------------------------------------------------------


def _each(fused: Callable[..., Any], single: Callable[..., Any], foreach: bool, xs: list, *args: Any, **kw: Any) -> Any:
    """``fused(xs, *args)`` (a ``torch._foreach_*`` kernel), or ``single`` on one tensor at a time,
    taking the i-th element of list arguments."""
    if foreach:
        return fused(xs, *args, **kw)
    return [single(x, *(a[i] if isinstance(a, list) else a for a in args), **kw) for i, x in enumerate(xs)]


def _sum(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).sum()


class TensorLists:
    """A parameter group as lists of tensors, one per parameter; coefficients are Python numbers.

    ``foreach``: torch's multi-tensor kernels (the fast path); otherwise one tensor at a time with the
    same operations (the reference a test compares the kernels against). Reductions are 0-d tensors.
    """

    def __init__(self, foreach: bool = True):
        self.foreach = foreach

    def _in_place(self, fused: Callable[..., Any], single: Callable[..., Any], xs: list, *args: Any, **kw: Any) -> list:
        _each(fused, single, self.foreach, xs, *args, **kw)
        return xs

    def lerp_(self, x: list, y: list, w: float) -> list:
        return self._in_place(torch._foreach_lerp_, torch.Tensor.lerp_, x, y, w)

    def mul_(self, x: list, s: Any) -> list:
        return self._in_place(torch._foreach_mul_, torch.Tensor.mul_, x, s)

    def addcmul_(self, x: list, a: list, b: list, w: float) -> list:
        return self._in_place(torch._foreach_addcmul_, torch.Tensor.addcmul_, x, a, b, value=w)

    def div_(self, x: list, s: float) -> list:
        return self._in_place(torch._foreach_div_, torch.Tensor.div_, x, s)

    def add_(self, x: list, s: float) -> list:
        return self._in_place(torch._foreach_add_, torch.Tensor.add_, x, s)

    def maximum_(self, x: list, y: list) -> list:
        return self._in_place(torch._foreach_maximum_, lambda a, b: torch.maximum(a, b, out=a), x, y)

    def add_scaled_(self, x: list, y: list, s: float) -> list:
        return self._in_place(torch._foreach_add_, torch.Tensor.add_, x, y, alpha=s) if s != 0 else x

    def sqrt(self, x: list) -> list:
        return _each(torch._foreach_sqrt, torch.sqrt, self.foreach, x)

    def abs(self, x: list) -> list:
        return _each(torch._foreach_abs, torch.abs, self.foreach, x)

    def add(self, x: list, s: float) -> list:
        return _each(torch._foreach_add, torch.add, self.foreach, x, s)

    def div(self, x: list, y: Any) -> list:
        return _each(torch._foreach_div, torch.div, self.foreach, x, y)

    def norms(self, x: list) -> torch.Tensor:
        """(tensors,) norms."""
        if self.foreach:
            return torch.stack(torch._foreach_norm(x))
        return torch.stack([torch.linalg.vector_norm(t) for t in x])

    def total_norm(self, x: list) -> torch.Tensor:
        return torch.linalg.vector_norm(self.norms(x))

    def scale_(self, x: list, s: Any, *, per_tensor: bool) -> list:
        """``x`` times ``s`` (per tensor, or one number), in place."""
        return self.mul_(x, list(s.unbind()) if per_tensor else s)

    def scale(self, x: list, s: Any, *, per_tensor: bool) -> list:
        """``x`` times ``s`` (per tensor, or one number), as new tensors."""
        return _each(torch._foreach_mul, torch.mul, self.foreach, x, list(s.unbind()) if per_tensor else s)

    def step_(self, p: list, u: list, s: Any, *, per_tensor: bool) -> None:
        """``p -= s * u``; a per-tensor ``s`` scales ``u`` in place first."""
        if per_tensor:
            self.scale_(u, s, per_tensor=True)
            s = 1.0
        self._in_place(torch._foreach_add_, torch.Tensor.add_, p, u, alpha=-s)

    # Reductions for the statistics, float64 sums: the reference reduces each tensor in float64; the
    # multi-tensor path reduces in the tensors' dtype into short partial sums (rows of _ROW elements
    # for norms, BLAS for dot products) and finishes them in float64. Equal to float32 round-off
    # (see _ROW), and without the model-sized float64 copies a float64 reduction makes on CPU.

    def sq(self, x: list) -> torch.Tensor:
        if self.foreach:
            return _list_norm_sum(x, 2)
        return _sum([torch.linalg.vector_norm(t, dtype=torch.float64) ** 2 for t in x])

    def dot(self, x: list, y: list) -> torch.Tensor:
        if self.foreach:
            return torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(x, y)]).to(torch.float64).sum()
        return _sum([(a * b).sum(dtype=torch.float64) for a, b in zip(x, y)])

    def abs_sum(self, x: list) -> torch.Tensor:
        if self.foreach:
            return _list_norm_sum(x, 1)
        return _sum([t.abs().sum(dtype=torch.float64) for t in x])

    def count_ge(self, x: list, s: float) -> torch.Tensor:
        if self.foreach:  # counting a bool tensor's nonzeros is 3x faster than summing it
            return _sum([torch.count_nonzero(t >= s) for t in x])
        return _sum([(t >= s).sum() for t in x])

    def member_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of per-tensor values."""
        return x.sum()

    @property
    def batched_stats(self) -> bool:
        """Whether :func:`~lhopt_dsl.optim.stats.stat_sums` reduces through :meth:`stat_reductions`."""
        return self.foreach

    def stat_reductions(
        self, g: list, u: list, scale: Any, per_tensor: bool, p: list, m: list, e: list, root: list, eps: float
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """The reductions :func:`~lhopt_dsl.optim.stats.stat_sums` writes out, on the multi-tensor
        path in fewer calls and without a scaled copy of large tensors' update (:func:`_batched_reductions`)."""
        return _batched_reductions(g, u, scale, per_tensor, p, m, e, root, eps)


#: Elements per partial sum of :func:`_partial_norms`: a float32 sum of 4,096 terms loses about 1e-7 of its
#: value, where one float32 norm over a 4M-element tensor lost 1.6e-4 (it accumulates serially).
_ROW = 4096


def _partial_norms(x: torch.Tensor, ord: float) -> torch.Tensor:
    """(K, N) -> (K, pieces): the ``ord``-norms of each row's pieces of :data:`_ROW` elements (and
    its remainder), in ``x``'s dtype: short sums that stay accurate, for a float64 finish."""
    if x.shape[1] <= _ROW:
        return torch.linalg.vector_norm(x, ord, dim=1, keepdim=True)
    full = x.shape[1] // _ROW * _ROW
    parts = [torch.linalg.vector_norm(x[:, :full].unflatten(1, (-1, _ROW)), ord, dim=2)] if full else []
    if full < x.shape[1]:
        parts.append(torch.linalg.vector_norm(x[:, full:], ord, dim=1, keepdim=True))
    return torch.cat(parts, 1)


def _list_norm_sum(xs: list[torch.Tensor], ord: float) -> torch.Tensor:
    """0-d float64: :func:`_norm_sum` of a parameter group's tensors, the small ones (at most
    :data:`_ROW` elements, most of a small model's tensors) in one multi-tensor call: on models of
    thousands of parameters the number of calls, not the elements, is what a reduction costs."""
    small = [t for t in xs if t.numel() <= _ROW]
    large = [t.reshape(1, -1) for t in xs if t.numel() > _ROW]
    pieces = [torch.stack(torch._foreach_norm(small, ord))] if small else []  # (small,)
    if large:
        pieces.append(torch.cat([_partial_norms(x, ord) for x in large], 1)[0])  # (pieces,)
    values = torch.cat(pieces).to(torch.float64)
    return (values.square() if ord == 2 else values).sum()


def _pieces64(x: torch.Tensor, ord: float) -> torch.Tensor:
    """(pieces,) float64: the ``ord``-norms of a large tensor's pieces (:func:`_partial_norms`)."""
    return _partial_norms(x.reshape(1, -1), ord)[0].to(torch.float64)


def _batched_reductions(
    g: list, u: list, scale: Any, per_tensor: bool, p: list, m: list, e: list, root: list, eps: float
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The reductions of :func:`~lhopt_dsl.optim.stats.stat_sums` on the multi-tensor path in a few calls.

    Tensors of at most :data:`_ROW` elements (all of a small model's) give what the reductions one
    list at a time gave, bit for bit: the update scaled as a copy, the norms of all five lists in
    one ``_foreach_norm`` call (on CPU each tensor's norm is computed on its own either way), the
    three kinds of dot products in one conversion, the comparisons with ``eps`` counted on one
    concatenation. Larger tensors' update is never copied scaled: by linearity (|s u|^2 = s^2 |u|^2,
    g.(s u) = s g.u, |s u|_1 = s |u|_1 for s >= 0) its per-tensor sums are scaled in float64 by the
    float32 ``s`` the copy would have been multiplied with (float32 round-off apart, the same)."""
    f64, n = torch.float64, len(p)
    few = [i for i in range(n) if p[i].numel() <= _ROW]
    many = [i for i in range(n) if p[i].numel() > _ROW]
    factors = [1.0] * n  # what multiplies each large tensor's u: the float32 the copy would multiply by
    if many:
        factors = scale.float().tolist() if per_tensor else [float(torch.as_tensor(scale, dtype=torch.float32))] * n
    scaled = [u[i] for i in few]
    if few:  # exactly the copy TensorLists.scale makes of these tensors
        scaled = torch._foreach_mul(scaled, [scale[i] for i in few] if per_tensor else scale)
    update = list(u)  # small tensors' update scaled, large ones' not (their factor is applied to the sums)
    for k, i in enumerate(few):
        update[i] = scaled[k]
    lists = (g, m, p, e, update)
    small = torch.stack(torch._foreach_norm([x[i] for x in lists for i in few])).to(f64).view(5, -1) if few else None
    # Large tensors: norms of pieces (as _list_norm_sum takes them); u's times its tensor's factor.
    def pieces(xs: list, ord: float) -> torch.Tensor:
        return torch.cat([_partial_norms(xs[i].reshape(1, -1), ord) for i in many], 1)[0].to(f64)

    per_piece = torch.tensor([factors[i] for i in many for _ in range(-(-p[i].numel() // _ROW))], dtype=f64)
    out: dict[str, torch.Tensor] = {}
    for k, name in enumerate(("g2", "m2", "w2", "noise_m2", "u2")):
        if name == "u2" and many:  # linearity: |s u|^2 = s^2 |u|^2, piece by piece
            out[name] = _cat(([small[k].square()] if few else []) + [(pieces(u, 2) * per_piece).square()]).sum()
        else:  # the norms of all tensors (pieces of large ones), squared and summed, as _list_norm_sum does
            out[name] = _cat(([small[k]] if few else []) + ([pieces(lists[k], 2)] if many else [])).square().sum()
    abs_u = [torch.stack(torch._foreach_norm(scaled, 1)).to(f64)] if few else []
    if many:
        abs_u.append(pieces(u, 1) * per_piece)
    out["abs_u"] = _cat(abs_u).sum()
    out.update(_batched_dots(g, m, p, update, [1.0 if i in few else f for i, f in enumerate(factors)]))
    out["big_enough"] = _count_ge([root[i] for i in few], [root[i] for i in many], eps)
    return out


def _cat(xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def _batched_dots(g: list, m: list, p: list, update: list, factors: list[float]) -> dict[str, torch.Tensor]:
    """g.m, g.p and g.update as TensorLists.dot reduces them (a BLAS dot per tensor, summed in
    float64), the three kinds in one conversion; ``factors``: what multiplies each tensor's g.update."""
    flat = [t.reshape(-1) for t in g]
    dots = [torch.dot(a, b.reshape(-1)) for y in (m, p, update) for a, b in zip(flat, y)]
    table = torch.stack(dots).to(torch.float64).view(3, -1)
    gu = table[2] if all(f == 1.0 for f in factors) else table[2] * torch.tensor(factors, dtype=torch.float64)
    return {"gm": table[0].sum(), "gw": table[1].sum(), "gu": gu.sum()}


def _count_ge(few: list[torch.Tensor], many: list[torch.Tensor], s: float) -> torch.Tensor:
    """Elements at least ``s``: small tensors counted on one concatenation, large ones one by one."""
    counts = [torch.count_nonzero(t >= s) for t in many]
    if few:
        counts.append(torch.count_nonzero(torch.cat([t.reshape(-1) for t in few]) >= s))
    return torch.stack(counts).sum()


def _norm_sum(xs: list[torch.Tensor], ord: float) -> torch.Tensor:
    """(K,) float64: the sum over ``xs`` (each (K, N_i)) of their ord-norms (2: squared norms)."""
    pieces = torch.cat([_partial_norms(x, ord) for x in xs], 1).to(torch.float64)  # (K, pieces)
    return (pieces.square() if ord == 2 else pieces).sum(1)


class CompiledLists(TensorLists):
    """:class:`TensorLists` one tensor at a time, written for ``torch.compile`` to trace: coefficients
    are 0-d tensors of the parameters' dtype (graph inputs, so a policy changing a hyperparameter
    never recompiles), and every operation takes them as tensors. Traced, the per-tensor loops unroll
    and inductor fuses the elementwise update, the norms and the statistics' reductions into a few
    loops per tensor (the statistics' float64 accumulations cast inside the loop, never a copy)."""

    def __init__(self) -> None:
        super().__init__(foreach=False)

    def addcmul_(self, x: list, a: list, b: list, w: torch.Tensor) -> list:
        for xi, ai, bi in zip(x, a, b):
            xi.addcmul_(ai * w, bi)  # addcmul's value must be a number
        return x

    def maximum_(self, x: list, y: list) -> list:
        for xi, yi in zip(x, y):
            xi.copy_(torch.maximum(xi, yi))
        return x

    def add_scaled_(self, x: list, y: list, s: torch.Tensor) -> list:
        for xi, yi in zip(x, y):
            xi.add_(yi * s)
        return x

    def step_(self, p: list, u: list, s: torch.Tensor, *, per_tensor: bool) -> None:
        """``p -= s * u`` (``s`` per tensor or one number), ``u`` left as it is."""
        for i, (pi, ui) in enumerate(zip(p, u)):
            pi.sub_(ui * (s[i] if per_tensor else s))

    # Reductions for the statistics: whole-tensor sums in the tensors' dtype, finished in float64.
    # Traced, they are loops of the same shape as the LAMB norms', so inductor can fuse them with the
    # update, and its CPU reductions sum in cascade (4e-7 relative on 6M float32 elements, where an
    # eager float32 norm loses 1.6e-4); float64 accumulation inside the loops made a statistics step
    # 1.7x slower.

    def sq(self, x: list) -> torch.Tensor:
        return _each_sum([t * t for t in x]).sum()

    def dot(self, x: list, y: list) -> torch.Tensor:
        return _each_sum([a * b for a, b in zip(x, y)]).sum()

    def abs_sum(self, x: list) -> torch.Tensor:
        return _each_sum([t.abs() for t in x]).sum()

    linear_stats = True  # stat_sums takes the update's sums from scaled_sums

    def scaled_sums(self, g: list, u: list, s: torch.Tensor, *, per_tensor: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """|s u|^2, g.(s u) and |s u|_1 summed over tensors, by linearity from each tensor's sums of
        the unscaled ``u`` (``s`` >= 0: per tensor, or one number), finished in float64. The scale
        with LAMB depends on the update's norms, so a scaled copy would need a pass of its own after
        them; u's own sums are loops of the shape of those norms and fuse with them."""
        factor = s.to(torch.float64) if per_tensor else s.to(torch.float64).expand(len(u))
        uu, gu = _each_sum([t * t for t in u]), _each_sum([a * b for a, b in zip(g, u)])
        ua = _each_sum([t.abs() for t in u])
        return (uu * factor.square()).sum(), (gu * factor).sum(), (ua * factor).sum()


def _each_sum(xs: list[torch.Tensor]) -> torch.Tensor:
    """(tensors,) float64: each tensor's sum, in its dtype (inductor sums in cascade), finished in float64."""
    return torch.stack([t.sum() for t in xs]).to(torch.float64)


class FlatRows:
    """K members' tensors flattened into the rows of (K, N) tensors (tensor i in columns
    ``offsets[i]:offsets[i+1]``; ``segments``: each column's tensor); coefficients are (K, 1)
    tensors. Per-member values are (K, 1), per-tensor ones (K, tensors)."""

    def __init__(self, offsets: Sequence[int], segments: torch.Tensor):
        self.offsets, self.segments = offsets, segments

    def lerp_(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.lerp_(y, w)

    def mul_(self, x: torch.Tensor, s: Any) -> torch.Tensor:
        return x.mul_(s)

    def addcmul_(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.addcmul_(a * w, b)  # addcmul's value must be a number

    def div_(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x.div_(s)

    def add_(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x.add_(s)

    def maximum_(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, y, out=x)

    def add_scaled_(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x.add_(y * s)

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt()

    def abs(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    def add(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x + s

    def div(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x / y

    def norms(self, x: torch.Tensor) -> torch.Tensor:
        """(K, tensors) norms."""
        bounds = zip(self.offsets, self.offsets[1:])
        return torch.stack([torch.linalg.vector_norm(x[:, a:b], dim=1) for a, b in bounds], 1)

    def total_norm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x, dim=1, keepdim=True)

    def scale(self, x: torch.Tensor, s: torch.Tensor, *, per_tensor: bool) -> torch.Tensor:
        """``x`` times ``s`` (per tensor, or per member), as a new tensor."""
        return x * (s[:, self.segments] if per_tensor else s)

    def step_(self, p: torch.Tensor, u: torch.Tensor, s: torch.Tensor, *, per_tensor: bool) -> None:
        """``p -= s * u``."""
        p.addcmul_(u, s[:, self.segments] if per_tensor else s, value=-1.0)

    # Reductions for the statistics, (K, 1) float64 per member: in the rows' dtype, finished in
    # float64, as TensorLists' multi-tensor path (no (K, N) float64 copies, no (K, N) products).

    def sq(self, x: torch.Tensor) -> torch.Tensor:
        return _norm_sum([x], 2).unsqueeze(1)

    def dot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).reshape(-1, 1).to(torch.float64)  # a BLAS dot per member

    def abs_sum(self, x: torch.Tensor) -> torch.Tensor:
        return _norm_sum([x], 1).unsqueeze(1)

    def count_ge(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.count_nonzero(x >= s, dim=1).unsqueeze(1)

    def member_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1, keepdim=True)


# --- one parameter group's step, compiled ----------------------------------------------------------

_SERIAL = itertools.count()


def layout_key(params: Sequence[torch.Tensor], switches: Mapping[str, Any], stats: bool) -> tuple:
    """What a compiled step is specialised to: each tensor's shape, strides, dtype and device, the
    switches (branches of the code) and whether the step reduces the statistics."""
    tensors = tuple((tuple(p.shape), p.stride(), p.dtype, p.device) for p in params)
    return tensors, tuple(switches[n] for n in SWITCHES), stats


def compilable(params: Sequence[torch.Tensor]) -> bool:
    """One dtype (a floating one) and one device: the coefficients go in as one tensor of that dtype."""
    first = params[0]
    return first.is_floating_point() and all(p.dtype == first.dtype and p.device == first.device for p in params)


class CompiledStep:
    """:func:`ciao_step_` on :class:`CompiledLists`, ``torch.compile``d once for one layout
    (:func:`layout_key`), called with the coefficients as one tensor so that changing a
    hyperparameter never recompiles. If compiling fails it warns once and runs the same step eagerly
    (:class:`TensorLists`' multi-tensor kernels): a run never dies of its speed-up.

    Each instance compiles a code object of its own: Dynamo checks the guards of every graph kept
    for a code object one after another on each call, so sharing one across layouts would slow
    every step of a process that met many."""

    def __init__(self, switches: Mapping[str, Any], names: tuple[str, ...]):
        self.switches = fixed = {n: switches[n] for n in SWITCHES}

        def entry(p: list, g: list, m: list, v: list, state: dict, coef: torch.Tensor, grad_ema: list | None,
                  numels: torch.Tensor | None) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:  # fmt: skip
            c = dict(zip(names, coef.to(p[0].dtype).unbind()))  # (coefficients,) -> named 0-d tensors
            return ciao_step_(CompiledLists(), p, g, m, v, state, c, fixed, grad_ema=grad_ema, numels=numels)

        entry.__code__ = entry.__code__.replace(co_name=f"ciao_step_{next(_SERIAL)}")
        self.names, self.compiled, self.failed = names, torch.compile(entry, dynamic=False), False

    def __call__(self, p: list, g: list, m: list, v: list, state: dict[str, Any], c: Mapping[str, float], *,
                 grad_ema: Callable[[], list] | None, numels: torch.Tensor | None,
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:  # fmt: skip
        """As :func:`ciao_step_` with ``c`` the host's (float) :func:`coefficients`."""
        if not self.failed:
            coef = torch.tensor([c[n] for n in self.names], dtype=torch.float64, device=p[0].device)  # (coefficients,)
            try:
                return self.compiled(p, g, m, v, state, coef, None if grad_ema is None else grad_ema(), numels)
            except Exception as e:  # compilation errors come in many types (dynamo, inductor, C++ toolchain)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                warnings.warn(f"CIAO: torch.compile failed ({type(e).__name__}: {first[:200]}); stepping eagerly")
                self.failed = True
        return ciao_step_(TensorLists(True), p, g, m, v, state, c, self.switches, grad_ema=grad_ema, numels=numels)


# --- the batched driver's kernel -------------------------------------------------------------------


def flat_step_(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, state: dict[str, torch.Tensor],
    c: dict[str, torch.Tensor], switches: dict[str, Any], offsets: list[int], segments: torch.Tensor,
    numels: torch.Tensor, grad_ema: torch.Tensor | None = None,
) -> torch.Tensor | None:  # fmt: skip
    """:func:`ciao_step_` of K members on (K, N) rows, everything in place (``state``: ``grad_max``
    and ``clipped`` (K, 1), ``update_norm_ema`` (K, tensors)); plain tensor code, so
    ``torch.compile`` can fuse it. With ``grad_ema``, returns the (sums, K) float64 reductions of
    :data:`~lhopt_dsl.optim.stats.SUM_NAMES`."""
    ops = FlatRows(offsets, segments)
    new, sums = ciao_step_(ops, p, g, m, v, state, c, switches, grad_ema=grad_ema, numels=numels)
    for name, value in new.items():
        if value is not state[name]:
            state[name].copy_(value)
    return None if sums is None else torch.cat(list(sums.values()), 1).T
