"""Populations: K members of one task trained as ONE batched model with ``torch.func``.

Members share the task's architecture, initial weights and data order (the 35 AdamW baselines of
an evaluation task; the policy rollouts, self-play baseline and initial-hyperparameter run of a
meta-training task) and differ in their hyperparameters. Their parameters live in one flat
``(K, N)`` buffer whose per-tensor views are handed to ``functional_call``; gradients come from
``vmap(grad(loss))`` over the member axis with the same batch for every member, and CIAO's update
is applied to the flat buffers with one value of every hyperparameter per member
(:class:`CIAOPopulation`). AdamW is CIAO with the Adam denominator, clipping and LAMB off, so the
AdamW baselines run on the same code. The statistics for the policy's features come from the
same pass, per member, through the formulas the one-model optimizer uses
(:func:`lhopt_dsl.optim.stats.stats_from_sums`).

Results equal the one-member-at-a-time path within float tolerance (tests). Tasks whose modules
cannot be batched this way (BatchNorm's in-place running statistics, packed sequences, recurrent
kernels without a vmap rule) are found by a one-step probe (:func:`batchable`); callers then run
their members one at a time.

How a population runs on its device is its :class:`Plan`, derived from the memory one member's
training step works through (:func:`member_step_elements`): on a CPU, a batched step whose tensors
outgrow the cache turns memory-bound and slower than the members' steps one after another, so the
gradients are computed for groups of members whose tensors together stay within
:data:`WORKING_SET` (on a GPU the same bound keeps memory in check). Evaluation passes hold many
more examples than a training batch; they run in chunks of examples within the same bound, or, on
a CPU for models with fused kernels (recurrent layers, attention), one member at a time through
those kernels, as a one-model run evaluates: a forward pass gains nothing from batching there, and
the explicit forms that ``vmap`` needs are slower than the fused kernels. Whether a population pays
at all is :func:`population_pays`, measured (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .compile import compile_task, estimate_cost
from .compile.compiler import _meta_problem
from .compile.models import use_batchable_forms
from .compile.task import Batch, InnerTask
from .schedule import LearningCurve, Schedule, segment_bounds, shape_factor
from .training import ciao_kwargs, evaluation_count
from .optim.ciao import DEFAULTS, check_hyperparameters
from .optim.stats import NOISE_BETA, StepStats, noise_ratio, stats_from_sums
from .sample import TaskConfig
from .spec.families import NQMTask
from .spec.hparams import HPARAM_NAMES

#: CIAO's hyperparameters that may differ between members (the rest are shared by all).
MEMBER_HPARAMS = HPARAM_NAMES
SHARED_HPARAMS = ("denominator", "use_clip", "use_lamb", "lamb_min_trust", "bias_correction")


class _Member(nn.Module):
    """Calls the task's model with one member's parameters (duck-types the module for loss_fn)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self._model, self._params = model, params

    def forward(self, *args: Any) -> torch.Tensor:
        return functional_call(self._model, self._params, args)


def adamw_settings(s: Schedule) -> dict[str, Any]:
    """CIAO's hyperparameters that make it AdamW with ``s``'s betas, eps and weight decay."""
    return {"lr": s.lr, "weight_decay": s.weight_decay, "eps": s.eps, "one_minus_beta1": 1.0 - s.betas[0],
            "one_minus_beta2": 1.0 - s.betas[1], "denominator": "adam", "use_clip": False, "use_lamb": False}  # fmt: skip


def _ciao_update(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lamb_ema: torch.Tensor, grad_max: torch.Tensor,
    clipped: torch.Tensor, cols: torch.Tensor, offsets: list[int], segments: torch.Tensor, use_clip: bool, adam: bool,
    use_lamb: bool, lamb_min_trust: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """CIAO's update of K members on flat (K, N) tensors, in place except for the parameters.

    Returns the update (K, N) to subtract times each member's learning rate, and the (K, tensors)
    trust ratios. ``cols`` holds the per-member scalars that :meth:`CIAOPopulation.step` computes.
    """
    w1, b2, w2, sbc2, eps, wd_bc1, inv_bc1, bl, wl, gclip_decay, gclip_frac, lamb_bc = (
        c.unsqueeze(1) for c in cols.unbind(1)
    )
    if use_clip:
        grad_norm = torch.linalg.vector_norm(g, dim=1)
        finite = torch.isfinite(grad_norm)
        grad_max.copy_(torch.where(finite, torch.maximum(grad_max * gclip_decay[:, 0], grad_norm), grad_max))
        threshold = gclip_frac[:, 0] * grad_max
        clip = finite & (grad_norm > threshold)
        clipped.add_(clip.to(clipped.dtype))
        g.mul_(torch.where(clip, threshold / grad_norm, torch.ones_like(grad_norm)).unsqueeze(1))
    m.lerp_(g, w1)
    v.mul_(b2)
    if adam:
        v.addcmul_(g * w2, g)
        denom = v.sqrt().div_(sbc2).add_(eps)
    else:
        torch.maximum(v, g.abs(), out=v)
        denom = v + eps
    update = m / denom  # bc1 x the update; 1/bc1 is folded into the trust ratio or applied at the end
    update.add_(p * wd_bc1)
    trust = torch.ones_like(lamb_ema)
    if not use_lamb:
        return update * inv_bc1, trust

    def norms(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.linalg.vector_norm(x[:, a:b], dim=1) for a, b in zip(offsets, offsets[1:])], 1)

    lamb_ema.mul_(bl).add_(norms(update) * (inv_bc1 * wl))
    ema_hat = lamb_ema / lamb_bc
    p_norm = norms(p)
    ok = (p_norm > 0) & (ema_hat > 0)
    trust = torch.where(ok, p_norm / torch.where(ok, ema_hat, torch.ones_like(ema_hat)), torch.ones_like(p_norm))
    trust = trust.clamp(min=lamb_min_trust)
    return update * (trust * inv_bc1)[:, segments], trust


def _stat_sums(
    g: torch.Tensor, u: torch.Tensor, trust: torch.Tensor, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
    noise_ema: torch.Tensor, clipped: torch.Tensor, eps: torch.Tensor, bc2: torch.Tensor, numels: torch.Tensor,
    adam: bool,
) -> torch.Tensor:  # fmt: skip
    """The (12, K) per-member reductions that :func:`stats_from_sums` turns into statistics, in one
    pass over the step's tensors (parameters before the update); advances the noise-scale EMA."""
    f64 = torch.float64
    sq = lambda x: torch.linalg.vector_norm(x, dim=1, dtype=f64) ** 2  # noqa: E731
    dot = lambda x, y: (x * y).sum(1, dtype=f64)  # noqa: E731
    big = ((v / bc2).sqrt() >= eps).sum(1) if adam else (v >= eps).sum(1)
    noise_ema.lerp_(g, 1.0 - NOISE_BETA)
    return torch.stack([
        sq(g), sq(m), sq(u), sq(p), dot(g, m), dot(g, u), dot(g, p), u.abs().sum(1, dtype=f64), big.to(f64),
        (torch.log(trust.to(f64)) * numels).sum(1), clipped.to(f64), sq(noise_ema),
    ])  # fmt: skip


class CIAOPopulation:
    """K CIAO runs of one task as one batched model; ``settings[k]`` are member k's hyperparameters.

    Member hyperparameters (:data:`MEMBER_HPARAMS`) are (K,) float64 tensors in ``self.hp`` that
    may be changed between steps; :data:`SHARED_HPARAMS` must agree between members.
    """

    def __init__(self, task: InnerTask, settings: Sequence[dict[str, Any]], *, compiled: bool = False):
        if not settings:
            raise ValueError("a population needs at least one member")
        full = [{**DEFAULTS, **s} for s in settings]
        for s in full:
            check_hyperparameters(s)
        shared = {n: full[0][n] for n in SHARED_HPARAMS}
        if any(s[n] != shared[n] for s in full for n in SHARED_HPARAMS):
            raise ValueError(f"population members must share {', '.join(SHARED_HPARAMS)}")
        self.task, self.k = task, len(full)
        self.denominator, self.use_clip, self.use_lamb = shared["denominator"], shared["use_clip"], shared["use_lamb"]
        self.lamb_min_trust = float(shared["lamb_min_trust"])
        self.bias_correction = shared["bias_correction"]
        self.hp = {n: torch.tensor([float(s[n]) for s in full], dtype=torch.float64) for n in MEMBER_HPARAMS}

        model = task.model
        fused = use_batchable_forms(model)  # vmap-friendly forms of fused kernels (the same maths)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        self.numel = self.offsets[-1]
        ref = named[0][1]
        self.device, self.dtype = ref.device, ref.dtype
        flat = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.flat = flat.unsqueeze(0).repeat(self.k, 1).contiguous()  # (K, N)
        zeros = lambda *shape: torch.zeros(*shape, device=self.device, dtype=self.dtype)  # noqa: E731
        self.exp_avg, self.exp_avg_sq = zeros(self.k, self.numel), zeros(self.k, self.numel)
        self._noise_ema: torch.Tensor | None = None  # allocated at the first statistics step
        self.lamb_ema = zeros(self.k, len(self.names))  # per member and tensor: EMA of the update norm
        self.grad_max = zeros(self.k)
        self.clipped = zeros(self.k)
        f64 = lambda v: torch.full((self.k,), v, dtype=torch.float64)  # noqa: E731
        self.beta1_prod, self.beta2_prod, self.lamb_prod = f64(1.0), f64(1.0), f64(1.0)
        self.step_count = f64(0.0)
        self.noise_sq_ema, self.noise_count = f64(0.0), f64(0.0)
        self.steps_since_stats = f64(0.0)
        self.segments = torch.repeat_interleave(
            torch.arange(len(self.names), device=self.device), torch.tensor(self.numels, device=self.device)
        )
        model.train()
        # Copies: a compiled kernel shared by populations must not specialise on one task's own buffer objects.
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.plan = plan(task.config, self.k, self.device, fused_kernels=fused, params=self.numel)
        whole = _kernels(task, self.k, compiled)  # kernels over all K members
        self._loss, self._update, self._stat_sums = whole.loss, whole.update, whole.stat_sums
        self._grads = [_kernels(task, b - a, compiled).grad for a, b in self.plan.groups]  # one per group
        self.numel_tensor = torch.tensor(self.numels, device=self.device, dtype=torch.float64)

    # --- views -----------------------------------------------------------------------------------

    def params(self) -> dict[str, torch.Tensor]:
        """Per-tensor (K, *shape) views of the flat parameters."""
        return {n: self.flat[:, a:b].view(self.k, *s)
                for n, s, a, b in zip(self.names, self.shapes, self.offsets, self.offsets[1:])}  # fmt: skip

    def hparams(self, k: int) -> dict[str, float]:
        return {n: float(self.hp[n][k]) for n in MEMBER_HPARAMS}

    def set_hparams(self, k: int, values: dict[str, float]) -> None:
        """Change member k's hyperparameters (checked by CIAO's rules) from the next step on."""
        unknown = set(values) - set(MEMBER_HPARAMS)
        if unknown:
            raise KeyError(f"not a per-member hyperparameter: {sorted(unknown)}; those are {list(MEMBER_HPARAMS)}")
        check_hyperparameters({**DEFAULTS, **self.hparams(k), **{n: float(v) for n, v in values.items()}})
        for n, v in values.items():
            self.hp[n][k] = float(v)

    @property
    def noise_ema(self) -> torch.Tensor:
        """(K, N) moving average of the gradient for the noise-scale statistic."""
        if self._noise_ema is None:
            self._noise_ema = torch.zeros_like(self.flat)
        return self._noise_ema

    # --- training ------------------------------------------------------------------------------

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, N) gradients and (K,) training losses of every member on the task's next batch,
        computed for the plan's groups of members one after another (the same batch for all)."""
        batch, params = self.task.next_batch(), self.params()
        grads = torch.empty(self.k, self.numel, device=self.device, dtype=self.dtype)
        losses = []
        for (a, b), kernel in zip(self.plan.groups, self._grads):
            g, loss = kernel({n: p[a:b] for n, p in params.items()}, self.buffers, batch)
            # Copies (cat): a CUDA-graph kernel's outputs are overwritten by its next replay.
            torch.cat([g[n].reshape(b - a, -1) for n in self.names], 1, out=grads[a:b])
            losses.append(loss.detach())
        return grads, torch.cat(losses)

    def train_step(self, stats: bool = False) -> tuple[torch.Tensor, list[StepStats] | None]:
        """One inner step of every member; returns (K,) losses and, if asked, each member's statistics."""
        grads, losses = self.gradients()
        return losses, self.step(grads, stats=stats, losses=losses)

    @torch.no_grad()
    def step(self, grads: torch.Tensor, *, stats: bool = False, losses: torch.Tensor | None = None) -> list[StepStats] | None:
        """CIAO's update (see :mod:`lhopt_dsl.optim.ciao`) of all members; ``grads`` is (K, N) and is clipped in place."""
        hp = self.hp
        b1, b2, bl = 1.0 - hp["one_minus_beta1"], 1.0 - hp["one_minus_beta2"], 1.0 - hp["one_minus_beta_lamb"]
        self.step_count += 1
        if self.bias_correction == "power":  # as CIAO's option: torch's Adam, 1 - beta**t with the current betas
            self.beta1_prod, self.beta2_prod = b1**self.step_count, b2**self.step_count
        else:
            self.beta1_prod *= b1
            self.beta2_prod *= b2
        self.lamb_prod *= bl
        self.steps_since_stats += 1
        bc1, bc2 = 1.0 - self.beta1_prod, 1.0 - self.beta2_prod
        # Per-member scalars go to the device in one transfer.
        host = torch.stack([1.0 - b1, b2, 1.0 - b2, bc2.sqrt(), hp["eps"], hp["weight_decay"] * bc1, 1.0 / bc1,
                            bl, 1.0 - bl, 1.0 - hp["one_minus_beta_gradclip"], hp["grad_clip_fraction"],
                            1.0 - self.lamb_prod, hp["lr"]], 1).to(self.device, self.dtype)  # fmt: skip
        # Groups of members (rows) one after another: a group's arrays stay in the cache (plan.update_groups).
        parts = []
        for a, b in self.plan.update_groups:
            update, trust = self._update(
                self.flat[a:b], grads[a:b], self.exp_avg[a:b], self.exp_avg_sq[a:b], self.lamb_ema[a:b],
                self.grad_max[a:b], self.clipped[a:b], host[a:b, :-1], self.offsets, self.segments, self.use_clip,
                self.denominator == "adam", self.use_lamb, self.lamb_min_trust,
            )  # fmt: skip
            if stats:  # the statistics read every member's parameters before the update
                parts.append((update, trust))
            else:
                self.flat[a:b].addcmul_(update, host[a:b, -1:], value=-1.0)
        if not stats:
            return None
        update, trust = (torch.cat(x) for x in zip(*parts)) if len(parts) > 1 else parts[0]
        out = self._stats(grads, update, trust, losses)
        self.flat.addcmul_(update, host[:, -1:], value=-1.0)
        return out

    def _stats(self, g: torch.Tensor, u: torch.Tensor, trust: torch.Tensor, losses: torch.Tensor | None) -> list[StepStats]:
        """Per-member statistics; parameters are read before this step's update."""
        eps = self.hp["eps"].to(self.device, self.dtype).unsqueeze(1)
        bc2 = (1.0 - self.beta2_prod).to(self.device, self.dtype).unsqueeze(1)
        reductions = self._stat_sums(g, u, trust, self.flat, self.exp_avg, self.exp_avg_sq, self.noise_ema,
                                     self.clipped, eps, bc2, self.numel_tensor, self.denominator == "adam").cpu()  # fmt: skip
        g2, m2, u2, w2, gm, gu, gw, abs_u, big, log_trust, clipped, noise_m2 = reductions.unbind()
        self.noise_sq_ema = self.noise_sq_ema * NOISE_BETA + (1.0 - NOISE_BETA) * g2
        self.noise_count += 1
        steps, self.steps_since_stats = self.steps_since_stats.clone(), torch.zeros_like(self.steps_since_stats)
        self.clipped.zero_()
        return stats_from_sums(
            numel=self.numel, g2=g2, m2=m2, u2=u2, w2=w2, gm=gm, gu=gu, gw=gw, abs_u=abs_u,
            lr_u2=self.hp["lr"] ** 2 * u2, big_enough=big, log_trust=log_trust, clipped=clipped, steps=steps,
            noise=noise_ratio(self.noise_sq_ema, noise_m2, self.noise_count),
            loss=None if losses is None else losses.detach().double().cpu(),
        )  # fmt: skip

    # --- evaluation and member state -------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batches: list[Batch]) -> torch.Tensor:
        """(K,) mean losses over ``batches`` (weighted by batch size) in evaluation mode."""
        self.task.model.eval()
        try:
            totals = self._member_totals(batches) if self.plan.evaluate_members else self._batched_totals(batches)
            return (totals / max(sum(len(b[0]) for b in batches), 1)).cpu()
        finally:
            self.task.model.train()

    def _batched_totals(self, batches: list[Batch]) -> torch.Tensor:
        """(K,) summed losses, all members at once in chunks of at most ``plan.eval_chunk`` examples."""
        total = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        params = self.params()
        for batch in batches:
            n = len(batch[0])
            size = self.plan.eval_chunk or n
            for part in (batch,) if size >= n else (tuple(t[i : i + size] for t in batch) for i in range(0, n, size)):
                total += self._loss(params, self.buffers, part).double() * len(part[0])  # .double() copies
        return total

    def _member_totals(self, batches: list[Batch]) -> torch.Tensor:
        """(K,) summed losses, one member at a time through the model's fused kernels: the
        computation of a one-model run's evaluation, on each member's weights."""
        total = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        model, params = self.task.model, self.params()
        use_batchable_forms(model, False)
        try:
            for k in range(self.k):
                member = _Member(model, {**{n: p[k] for n, p in params.items()}, **self.buffers})
                for batch in batches:
                    total[k] += self.task.loss_fn(member, batch).double() * len(batch[0])
        finally:
            use_batchable_forms(model, True)
        return total

    _ROWS = ("flat", "exp_avg", "exp_avg_sq", "noise_ema", "lamb_ema", "grad_max", "clipped",
             "beta1_prod", "beta2_prod", "lamb_prod", "step_count", "noise_sq_ema", "noise_count",
             "steps_since_stats")  # fmt: skip

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """A copy of member k's weights and optimizer state (not its hyperparameters): a checkpoint."""
        return {name: getattr(self, name)[k].clone() for name in self._ROWS}

    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Put a :meth:`member_state` copy back into slot k; the hyperparameters stay as they are."""
        for name in self._ROWS:
            getattr(self, name)[k].copy_(state[name])


class _Kernels(NamedTuple):
    """The functions a population of K members calls, eager or compiled."""

    grad: Any  # (params, buffers, batch) -> per-tensor (K, ...) gradients, (K,) losses
    loss: Any  # (params, buffers, batch) -> (K,) losses
    update: Any  # _ciao_update
    stat_sums: Any  # _stat_sums


#: Compiled kernels shared by the populations of one architecture: (task spec without its run
#: length, K, device) -> kernels. Parameters, buffers and batches are inputs, so any task with that
#: key may use them; compiling once per architecture is what makes compiling pay.
_COMPILED: dict[Any, _Kernels] = {}
_SERIAL = itertools.count()


def _architecture(cfg: TaskConfig) -> Any:
    """What fixes a task's model, loss and batch shapes: its family and spec without the run length."""
    spec = cfg.task.model_dump(mode="json", exclude={"inner_steps", "outer_steps"})
    return (cfg.family, repr(sorted(spec.items())))


def _kernels(task: InnerTask, k: int, compiled: bool) -> _Kernels:
    """(vmapped grad_and_value, vmapped loss, CIAO update, statistics reductions) for ``k`` members
    of ``task``'s population; with ``compile``, ``torch.compile``d and cached per architecture (the
    first task's module is the skeleton). Compiling is lazy: a kernel never called costs nothing."""
    key = (_architecture(task.config), k, str(task.device))
    if compiled and key in _COMPILED:
        return _COMPILED[key]
    model, loss_fn = task.model, task.loss_fn

    def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...]):
        return loss_fn(_Member(model, {**params, **buffers}), batch)

    grad, value = vmap(grad_and_value(loss), in_dims=(0, None, None)), vmap(loss, in_dims=(0, None, None))
    if not compiled:
        return _Kernels(grad, value, _ciao_update, _stat_sums)
    # Dynamo refuses to trace code that touches nn.RNN/GRU/LSTM modules unless allowed; populations only
    # read their parameters (``unrolled_rnn``), never call their fused kernels.
    torch._dynamo.config.allow_rnn = True
    # On CUDA the gradient and loss kernels (which mutate no inputs) replay as CUDA graphs.
    graphs = task.device.type == "cuda"
    kernels = _Kernels(
        _Compiled(grad, graphs), _Compiled(value, graphs), _Compiled(_ciao_update), _Compiled(_stat_sums)
    )
    _COMPILED[key] = kernels
    return kernels


class _Compiled:
    """``torch.compile(fn)`` with static shapes (vmap does not trace with symbolic ones) that falls
    back to ``fn``, with one warning, if compiling fails: a run never dies of its speed-up.

    ``cuda_graphs``: compile with ``mode="reduce-overhead"``, which on CUDA captures the compiled
    step in a CUDA graph and replays it (shapes are static). Its outputs live in the graph's memory
    pool and are overwritten by the next replay, so callers copy what they keep.
    """

    def __init__(self, fn: Any, cuda_graphs: bool = False):
        def entry(*args: Any) -> Any:
            return fn(*args)

        # Dynamo keeps its compiled graphs per code object and checks their guards one after another on
        # every call; a code object of its own per architecture keeps that list one entry long however
        # many architectures a process meets (shared code objects made later calls measurably slower).
        entry.__code__ = entry.__code__.replace(co_name=f"population_kernel_{next(_SERIAL)}")
        mode = "reduce-overhead" if cuda_graphs else None
        self.eager, self.compiled, self.failed = fn, torch.compile(entry, dynamic=False, mode=mode), False

    def __call__(self, *args: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as e:  # compilation errors come in many types (dynamo, inductor, C++ toolchain)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {first[:200]}); running this step eagerly")
                self.failed = True
        return self.eager(*args)


def _eligible(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


_BATCHABLE: dict[Any, bool] = {}


def _probe(cfg: TaskConfig, device: str, data_dir: str | None, max_valid: int) -> bool:
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    if not _eligible(task.model):
        return False
    # Some ops (packed sequences) have no vmap rule: a throwaway two-member step finds out. Its
    # "performance drop" warnings about vmap's fallback loops would only confuse here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            pop = CIAOPopulation(task, [ciao_kwargs(cfg.hparams)] * 2)
            pop.train_step(stats=True)
            pop.evaluate(task.valid_batches[:1])
        except (RuntimeError, NotImplementedError):
            return False
    return True


# --- how a population runs, and whether it pays ---------------------------------------------------

_STEP_ELEMENTS: dict[Any, int] = {}


def member_step_elements(cfg: TaskConfig) -> int:
    """Elements of memory one member's training step works through: the activations its forward pass
    keeps for the backward pass (in the batchable forms populations use), the model's output (which
    the loss keeps), and the member's parameters and gradients.

    Counted once per architecture on the meta device (shapes only, no data, no arithmetic) with the
    models and batch shapes of the FLOP counts (:func:`~lhopt_dsl.compile.count_flops`).
    """
    key = _architecture(cfg)
    if key not in _STEP_ELEMENTS:
        _STEP_ELEMENTS[key] = _count_step_elements(cfg.task)
    return _STEP_ELEMENTS[key]


def _count_step_elements(task: Any) -> int:
    if isinstance(task, NQMTask):
        return 3 * task.dim  # parameters, gradients and the noise vector
    with torch.device("meta"):
        model, loss_of, _ = _meta_problem(task)
        use_batchable_forms(model)
        params = list(model.parameters())
        own = {p.untyped_storage()._cdata for p in params}  # storages of parameters (and their views)
        saved: dict[int, int] = {}  # activation storage -> elements, each storage counted once

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage._cdata not in own:
                saved[storage._cdata] = storage.nbytes() // t.element_size()
            return t

        outputs: list[int] = []
        hook = model.register_forward_hook(lambda module, args, out: outputs.append(out.numel()))
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss_of(model)
        finally:
            hook.remove()
    return sum(saved.values()) + sum(outputs) + 2 * sum(p.numel() for p in params)


#: Elements (float32) that one batched call of a population may work through: its members' training
#: steps (:func:`member_step_elements`), or the examples of an evaluation chunk. On a CPU about the
#: last-level cache: measured (docs/PERFORMANCE.md), a step of many members turns memory-bound past
#: roughly ten million elements (a 170-MFLOP Transformer step is fastest for groups of 12-16 members
#: of 0.9M elements, a 520-MFLOP CNN for 4-8 members of 1.6M, and 35 members are slower than either).
#: On other devices it only bounds memory (a gigabyte), so that a population of a large task fits.
WORKING_SET = {"cpu": 12_000_000, "other": 250_000_000}
#: Elements that one call of CIAO's update may stream on a CPU: its members' parameters, gradients,
#: moments and temporaries, about :data:`UPDATE_ARRAYS` arrays of N elements per member. The update
#: is memory-bound; in groups of members within about the L2 cache it runs 2-3x faster than over all
#: 35 members of a 200k-parameter MLP at once (and as fast as 35 one-model AdamW steps).
UPDATE_ELEMENTS = 2_000_000
UPDATE_ARRAYS = 8


class Plan(NamedTuple):
    """How a population of K members runs on its device (:func:`plan`)."""

    groups: tuple[tuple[int, int], ...]  # member ranges [a, b) whose gradients are one batched call
    update_groups: tuple[tuple[int, int], ...]  # member ranges [a, b) whose update is one call
    eval_chunk: int  # examples per batched evaluation call of all members; 0: batches as they come
    evaluate_members: bool  # evaluate one member at a time through the model's fused kernels


def _split(k: int, size: int) -> tuple[tuple[int, int], ...]:
    """[0, k) as consecutive ranges of at most ``size`` (at least 1), sizes differing by at most one."""
    count = -(-k // max(1, min(k, size)))
    sizes = [k // count + (i < k % count) for i in range(count)]
    starts = list(itertools.accumulate(sizes, initial=0))
    return tuple(zip(starts, starts[1:]))


def plan(cfg: TaskConfig, k: int, device: str | torch.device, *, fused_kernels: bool, params: int) -> Plan:
    """The :class:`Plan` of ``k`` members of ``cfg``'s task (``params`` parameters each) on ``device``;
    ``fused_kernels``: the model has fused kernels that populations replace by explicit forms
    (recurrent layers, attention).

    Gradient groups are as equal as possible and as large as :data:`WORKING_SET` allows (at least one
    member); update groups likewise within :data:`UPDATE_ELEMENTS` on a CPU. Evaluation on a CPU goes
    member by member where the model has fused kernels (the explicit forms are slower there and an
    evaluation's forward pass gains nothing from batching); otherwise all members at once, in chunks
    of examples within the working set. An NQM's one evaluation "batch" is the exact loss, not
    examples, and is never split.
    """
    cpu = torch.device(device).type == "cpu"
    budget = WORKING_SET["cpu" if cpu else "other"]
    per_member = member_step_elements(cfg)
    update = UPDATE_ELEMENTS // (UPDATE_ARRAYS * max(1, params)) if cpu else k
    per_example = per_member / max(1, getattr(cfg.task, "batch_size", 1))
    chunk = 0 if isinstance(cfg.task, NQMTask) else max(1, int(budget // (k * per_example)))
    return Plan(_split(k, budget // per_member), _split(k, update), chunk, cpu and fused_kernels)


#: When populations beat one-at-a-time runs on a CPU (measured: bench rows (c) and (d),
#: docs/PERFORMANCE.md). A one-model step pays its per-operation overhead (Python, dispatch, small
#: kernels) once per member; a population pays it once per group, so populations pay where that
#: overhead is a large share of a member's step: where the step is small in arithmetic and in memory.
#: The 35 baselines of a task pay up to MAX_FLOPS_MANY per step and MAX_STEP_ELEMENTS_MANY elements
#: (:func:`member_step_elements`): beyond the first a one-model step runs near the machine's matmul
#: rate already, beyond the second it is memory-bound, and batching saves nothing either way. A
#: handful of members (meta-training) pay up to MAX_FLOPS_FEW; compiled populations also up to
#: MAX_FLOPS_COMPILED. On GPUs populations always pay.
MAX_FLOPS_MANY = 2e8
MAX_STEP_ELEMENTS_MANY = 2_000_000
MAX_FLOPS_FEW = 5e7
MAX_FLOPS_COMPILED = 5e7
FEW_MEMBERS = 8


def population_pays(cfg: TaskConfig, members: int, device: str | torch.device = "cpu", compiled: bool = False) -> bool:
    """Whether ``members`` runs of ``cfg``'s task are faster as a population (by the measured rule above)."""
    if torch.device(device).type != "cpu":
        return True
    flops = estimate_cost(cfg).flops_per_step
    if compiled and flops <= MAX_FLOPS_COMPILED:
        return True
    if members <= FEW_MEMBERS:
        return flops <= MAX_FLOPS_FEW
    return flops <= MAX_FLOPS_MANY and member_step_elements(cfg) <= MAX_STEP_ELEMENTS_MANY


def batchable(cfg: TaskConfig, device: str | torch.device = "cpu", data_dir: str | None = None, max_valid: int = 512) -> bool:
    """Whether ``cfg``'s task can run as a population (probed once per architecture and device)."""
    key = (_architecture(cfg), str(device))
    if key not in _BATCHABLE:
        _BATCHABLE[key] = _probe(cfg, str(device), data_dir, max_valid)
    return _BATCHABLE[key]


def run_population(
    cfg: TaskConfig, schedules: Sequence[Schedule], *, steps: int | None = None, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None, compiled: bool = False,
) -> list[LearningCurve] | None:  # fmt: skip
    """Curves of AdamW ``schedules`` on ``cfg``'s task, trained together; None if the task can't be batched.

    ``compile``: ``torch.compile`` the population's step (see :class:`CIAOPopulation`).
    """
    if not schedules or any(s.optimizer != "adamw" for s in schedules):
        raise ValueError("a population of baselines needs AdamW schedules")
    first = schedules[0]
    if any((s.betas, s.eps, s.weight_decay) != (first.betas, first.eps, first.weight_decay) for s in schedules):
        raise ValueError("population members must share betas, eps and weight decay")
    if not batchable(cfg, device, data_dir, max_valid):
        return None
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    pop = CIAOPopulation(task, [adamw_settings(s) for s in schedules], compiled=compiled)
    total = steps or task.steps
    base_lr = torch.tensor([s.lr for s in schedules], dtype=torch.float64)
    k = evaluations or evaluation_count(task, total)
    bounds = segment_bounds(total, k)
    curves = [LearningCurve([0], [float(v)], test_curve=[float(t)])
              for v, t in zip(pop.evaluate(task.valid_batches), pop.evaluate(task.test_batches))]  # fmt: skip
    for a, b in zip(bounds, bounds[1:]):
        losses = []
        for i in range(a, b):
            pop.hp["lr"] = base_lr * torch.tensor([shape_factor(s.shape, i / total) for s in schedules], dtype=torch.float64)
            losses.append(pop.train_step()[0])
        mean = torch.stack(losses).double().mean(0).tolist()
        valid, test = pop.evaluate(task.valid_batches).tolist(), pop.evaluate(task.test_batches).tolist()
        for c, v, t, tr in zip(curves, valid, test, mean):
            c.steps.append(b)
            c.valid_loss.append(v)
            c.test_curve.append(t)
            c.train_loss.append(tr)
    for c in curves:
        c.test_loss = c.test_curve[-1]
    return curves

