"""Populations: K members of one task trained as ONE batched model with ``torch.func``.

Members share the task's architecture, initial weights and data order (the 35 AdamW baselines of
an evaluation task; the policy rollouts, self-play baseline and initial-hyperparameter run of a
meta-training task) and differ in their hyperparameters. Their parameters live in one flat
``(K, N)`` buffer whose per-tensor views are handed to ``functional_call``; gradients come from
``vmap(grad(loss))`` over the member axis with the same batch for every member, and CIAO's update
is applied to the flat buffers with one value of every hyperparameter per member
(:class:`CIAOPopulation`). AdamW is CIAO with the Adam denominator, clipping and LAMB off, so the
AdamW baselines run on the same code. The update and the statistics for the policy's features are
the one-model optimizer's own functions (:mod:`lhopt_dsl.optim.functional`), run on the rows of
the flat buffers; the statistics come from the same pass, per member.

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

What a process learns once per architecture (compiled kernels, the batchability probe, the memory
of a member's step) lives in a :class:`PopulationCache`: the callers' own, or the process's
:data:`SHARED_CACHE`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..optim.functional import COUNTERS, DEFAULTS, NUMBERS, SWITCHES, advance, check_hyperparameters, coefficients
from ..optim.functional import flat_step_
from ..optim.stats import SUM_NAMES, StepStats, statistics
from ..spec.families import NQMTask
from ..spec.hparams import HPARAM_NAMES
from ..spec.sample import TaskConfig
from ..spec.schedule import LearningCurve, Schedule, segment_bounds, shape_factor
from .compiler import _meta_problem, compile_task, estimate_cost
from .models import use_batchable_forms
from .task import Batch, InnerTask
from .training import ciao_kwargs, evaluation_count

#: CIAO's hyperparameters that the policy changes per member (:meth:`CIAOPopulation.set_hparams`);
#: every hyperparameter that is a number may differ between members, the switches may not.
MEMBER_HPARAMS = HPARAM_NAMES
SHARED_HPARAMS = SWITCHES


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


class CIAOPopulation:
    """K CIAO runs of one task as one batched model; ``settings[k]`` are member k's hyperparameters.

    Every hyperparameter that is a number is a (K,) float64 tensor in ``self.hp``, read at every
    step (the policy's, :data:`MEMBER_HPARAMS`, through :meth:`set_hparams`); the switches
    (:data:`SHARED_HPARAMS`) must agree between members. The optimizer state has CIAO's names:
    ``self.state`` on the device (per element ``exp_avg``, ``exp_avg_sq`` and, from the first
    statistics step, ``grad_ema``; per tensor ``update_norm_ema``; per member ``grad_max`` and
    ``clipped``), ``self.counters`` on the host (per member,
    :data:`~lhopt_dsl.optim.functional.COUNTERS`).

    The caller's model is only read: gradients and batched evaluations run a copy of it in the forms
    ``vmap`` batches (``use_batchable_forms``), and evaluations member by member run it as it is.
    ``compiled``: ``torch.compile`` the gradients, losses and update, once per architecture in
    ``cache`` (default :data:`SHARED_CACHE`).
    """

    def __init__(
        self, task: InnerTask, settings: Sequence[dict[str, Any]], *, compiled: bool = False,
        cache: PopulationCache | None = None,
    ):  # fmt: skip
        if not settings:
            raise ValueError("a population needs at least one member")
        full = [{**DEFAULTS, **s} for s in settings]
        for s in full:
            check_hyperparameters(s)
        self.switches = {n: full[0][n] for n in SHARED_HPARAMS}
        if any(s[n] != self.switches[n] for s in full for n in SHARED_HPARAMS):
            raise ValueError(f"population members must share {', '.join(SHARED_HPARAMS)}")
        self.task, self.k = task, len(full)
        self.hp = {n: torch.tensor([float(s[n]) for s in full], dtype=torch.float64) for n in NUMBERS}

        named = [(n, p) for n, p in task.model.named_parameters() if p.requires_grad]
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
        self.state = {"exp_avg": zeros(self.k, self.numel), "exp_avg_sq": zeros(self.k, self.numel),
                      "update_norm_ema": zeros(self.k, len(self.names)), "grad_max": zeros(self.k, 1),
                      "clipped": zeros(self.k, 1)}  # fmt: skip
        self.counters = {n: torch.full((self.k,), float(v), dtype=torch.float64) for n, v in COUNTERS.items()}
        self.segments = torch.repeat_interleave(
            torch.arange(len(self.names), device=self.device), torch.tensor(self.numels, device=self.device)
        )
        self.numel_tensor = torch.tensor(self.numels, device=self.device, dtype=torch.float64)
        # Copies: a compiled kernel shared by populations must not specialise on one task's own buffer objects.
        self.buffers = {n: b.detach().clone() for n, b in task.model.named_buffers()}
        cache = SHARED_CACHE if cache is None else cache
        skeleton = copy.deepcopy(task.model)  # what the kernels run; parameters and buffers come with each call
        fused = use_batchable_forms(skeleton)  # vmap-friendly forms of fused kernels (the same maths)
        skeleton.train()
        self.plan = plan(task.config, self.k, self.device, fused_kernels=fused, params=self.numel, cache=cache)
        self._whole = _kernels(task, self.k, compiled, cache, skeleton)  # kernels over all K members
        self._grads = [_kernels(task, b - a, compiled, cache, skeleton).grad for a, b in self.plan.groups]  # per group

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
        current = {n: float(x[k]) for n, x in self.hp.items()}
        check_hyperparameters({**self.switches, **current, **{n: float(v) for n, v in values.items()}})
        for n, v in values.items():
            self.hp[n][k] = float(v)

    @property
    def grad_ema(self) -> torch.Tensor:
        """(K, N) moving average of the gradient for the noise-scale statistic (allocated when first needed)."""
        if "grad_ema" not in self.state:
            self.state["grad_ema"] = torch.zeros_like(self.flat)
        return self.state["grad_ema"]

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
        advance(self.counters, self.hp, self.switches["bias_correction"])
        # Per-member coefficients go to the device in one transfer, as (K, 1) columns by name.
        host = coefficients(self.hp, self.counters)
        columns = torch.stack(list(host.values()), 1).to(self.device, self.dtype).unsqueeze(2).unbind(1)
        c = dict(zip(host, columns))
        grad_ema = self.grad_ema if stats else None
        small = {n: self.state[n] for n in ("grad_max", "clipped", "update_norm_ema")}
        # Groups of members (rows) one after another: a group's arrays stay in the cache (plan.update_groups).
        sums = []
        for a, b in self.plan.update_groups:
            sums.append(self._whole.step(
                self.flat[a:b], grads[a:b], self.state["exp_avg"][a:b], self.state["exp_avg_sq"][a:b],
                {n: x[a:b] for n, x in small.items()}, {n: x[a:b] for n, x in c.items()}, self.switches, self.offsets,
                self.segments, self.numel_tensor, None if grad_ema is None else grad_ema[a:b],
            ))  # fmt: skip
        if not stats:
            return None
        steps = self.counters["steps_since_stats"].clone()
        self.counters["steps_since_stats"].zero_()
        return statistics(
            dict(zip(SUM_NAMES, torch.cat(sums, 1).cpu().unbind())), self.counters, steps=steps, numel=self.numel,
            loss=None if losses is None else losses.detach().double().cpu(),
        )  # fmt: skip

    # --- evaluation and member state -------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batches: list[Batch]) -> torch.Tensor:
        """(K,) mean losses over ``batches`` (weighted by batch size) in evaluation mode."""
        totals = self._member_totals(batches) if self.plan.evaluate_members else self._batched_totals(batches)
        return (totals / max(sum(len(b[0]) for b in batches), 1)).cpu()

    def _batched_totals(self, batches: list[Batch]) -> torch.Tensor:
        """(K,) summed losses, all members at once in chunks of at most ``plan.eval_chunk`` examples."""
        total = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        params = self.params()
        with _evaluation_mode(self._whole.model):
            for batch in batches:
                n = len(batch[0])
                size = self.plan.eval_chunk or n
                parts = (batch,) if size >= n else (tuple(t[i : i + size] for t in batch) for i in range(0, n, size))
                for part in parts:
                    total += self._whole.loss(params, self.buffers, part).double() * len(part[0])  # .double() copies
        return total

    def _member_totals(self, batches: list[Batch]) -> torch.Tensor:
        """(K,) summed losses, one member at a time through the caller's model as it is (with its fused
        kernels): the computation of a one-model run's evaluation, on each member's weights."""
        total = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        model, params = self.task.model, self.params()
        with _evaluation_mode(model):
            for k in range(self.k):
                member = _Member(model, {**{n: p[k] for n, p in params.items()}, **self.buffers})
                for batch in batches:
                    total[k] += self.task.loss_fn(member, batch).double() * len(batch[0])
        return total

    def _rows(self) -> dict[str, torch.Tensor]:
        """Everything with a row per member but the hyperparameters: weights, optimizer state, counters."""
        self.grad_ema  # noqa: B018 (allocates it: a checkpoint has every row)
        return {"flat": self.flat, **self.state, **self.counters}

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """A copy of member k's weights and optimizer state (not its hyperparameters): a checkpoint."""
        return {name: x[k].clone() for name, x in self._rows().items()}

    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Put a :meth:`member_state` copy back into slot k; the hyperparameters stay as they are."""
        for name, x in self._rows().items():
            x[k].copy_(state[name])


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the duration, then the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _Kernels(NamedTuple):
    """The functions a population of K members calls, eager or compiled, and the module they run."""

    model: nn.Module  # a copy of a task's model in its batchable forms; every call brings parameters and buffers
    grad: Any  # (params, buffers, batch) -> per-tensor (K, ...) gradients, (K,) losses
    loss: Any  # (params, buffers, batch) -> (K,) losses
    step: Any  # lhopt_dsl.optim.functional.flat_step_


class PopulationCache:
    """What populations learn once per architecture and device, for later populations to reuse:
    compiled kernels (``kernels``: (task spec without its run length, K, device) -> :class:`_Kernels`;
    parameters, buffers and batches are inputs, so any task with that key may use them, and compiling
    once per architecture is what makes compiling pay), whether a task batches at all
    (``batchable``: the probe trains two members a step) and the elements one member's step works
    through (``step_elements``, :func:`member_step_elements`).

    Functions and populations given none use :data:`SHARED_CACHE`; own one to scope what is learnt
    (a test, a long-lived runner) and :meth:`clear` it.
    """

    def __init__(self) -> None:
        self.kernels: dict[Any, _Kernels] = {}
        self.batchable: dict[Any, bool] = {}
        self.step_elements: dict[Any, int] = {}

    def clear(self) -> None:
        """Forget everything (compiled kernels included: the next compiled population compiles again)."""
        self.kernels.clear()
        self.batchable.clear()
        self.step_elements.clear()


#: The cache of callers that bring none. Kept per process because those callers (meta-training's
#: rollouts, the baseline grid) make a population per task and hold nothing that outlives it, while a
#: compiled kernel pays only when reused by the next tasks of its architecture; a cache owned by each
#: call would compile every time. Callers that can hold one pass their own PopulationCache.
SHARED_CACHE = PopulationCache()
_SERIAL = itertools.count()


def _architecture(cfg: TaskConfig) -> Any:
    """What fixes a task's model, loss and batch shapes: its family and spec without the run length."""
    spec = cfg.task.model_dump(mode="json", exclude={"inner_steps", "outer_steps"})
    return (cfg.family, repr(sorted(spec.items())))


def _kernels(task: InnerTask, k: int, compiled: bool, cache: PopulationCache, skeleton: nn.Module) -> _Kernels:
    """(vmapped grad_and_value, vmapped loss, CIAO's step on flat rows) for ``k`` members of
    ``task``'s population, running ``skeleton`` (a copy of the task's model in its batchable forms);
    with ``compile``, ``torch.compile``d and kept in ``cache`` per architecture (the first
    population's skeleton serves them all). Compiling is lazy: a kernel never called costs nothing."""
    key = (_architecture(task.config), k, str(task.device))
    if compiled and key in cache.kernels:
        return cache.kernels[key]
    loss_fn = task.loss_fn

    def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...]):
        return loss_fn(_Member(skeleton, {**params, **buffers}), batch)

    grad, value = vmap(grad_and_value(loss), in_dims=(0, None, None)), vmap(loss, in_dims=(0, None, None))
    if not compiled:
        return _Kernels(skeleton, grad, value, flat_step_)
    # On CUDA the gradient and loss kernels (which mutate no inputs) replay as CUDA graphs.
    graphs = task.device.type == "cuda"
    kernels = _Kernels(skeleton, _Compiled(grad, graphs, model=True), _Compiled(value, graphs, model=True),
                       _Compiled(flat_step_))  # fmt: skip
    cache.kernels[key] = kernels
    return kernels


class _Compiled:
    """``torch.compile(fn)`` with static shapes (vmap does not trace with symbolic ones) that falls
    back to ``fn``, with one warning, if compiling fails: a run never dies of its speed-up.

    ``cuda_graphs``: compile with ``mode="reduce-overhead"``, which on CUDA captures the compiled
    step in a CUDA graph and replays it (shapes are static). Its outputs live in the graph's memory
    pool and are overwritten by the next replay, so callers copy what they keep.
    ``model``: ``fn`` runs a model. Dynamo refuses to trace code that touches nn.RNN/GRU/LSTM modules
    unless allowed; populations only read their parameters (``unrolled_rnn``), never call their fused
    kernels, so these calls allow it, for their duration only (Dynamo traces during a call).
    """

    def __init__(self, fn: Any, cuda_graphs: bool = False, model: bool = False):
        def entry(*args: Any) -> Any:
            return fn(*args)

        # Dynamo keeps its compiled graphs per code object and checks their guards one after another on
        # every call; a code object of its own per architecture keeps that list one entry long however
        # many architectures a process meets (shared code objects made later calls measurably slower).
        entry.__code__ = entry.__code__.replace(co_name=f"population_kernel_{next(_SERIAL)}")
        mode = "reduce-overhead" if cuda_graphs else None
        self.eager, self.compiled, self.failed = fn, torch.compile(entry, dynamic=False, mode=mode), False
        self.config = torch._dynamo.config.patch(allow_rnn=True) if model else contextlib.nullcontext()

    def __call__(self, *args: Any) -> Any:
        if not self.failed:
            try:
                with self.config:  # made once and reused: a patch's own setup costs more than setting it
                    return self.compiled(*args)
            except Exception as e:  # compilation errors come in many types (dynamo, inductor, C++ toolchain)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {first[:200]}); running this step eagerly")
                self.failed = True
        return self.eager(*args)


def _eligible(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _probe(cfg: TaskConfig, device: str, data_dir: str | None, max_valid: int, cache: PopulationCache) -> bool:
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    if not _eligible(task.model):
        return False
    # Some ops (packed sequences) have no vmap rule: a throwaway two-member step finds out. Its
    # "performance drop" warnings about vmap's fallback loops would only confuse here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            pop = CIAOPopulation(task, [ciao_kwargs(cfg.hparams)] * 2, cache=cache)
            pop.train_step(stats=True)
            pop.evaluate(task.valid_batches[:1])
        except (RuntimeError, NotImplementedError):
            return False
    return True


# --- how a population runs, and whether it pays ---------------------------------------------------


def member_step_elements(cfg: TaskConfig, cache: PopulationCache | None = None) -> int:
    """Elements of memory one member's training step works through: the activations its forward pass
    keeps for the backward pass (in the batchable forms populations use), the model's output (which
    the loss keeps), and the member's parameters and gradients.

    Counted once per architecture on the meta device (shapes only, no data, no arithmetic) with the
    models and batch shapes of the FLOP counts (:func:`~lhopt_dsl.tasks.count_flops`), and kept in
    ``cache`` (default :data:`SHARED_CACHE`).
    """
    known = (SHARED_CACHE if cache is None else cache).step_elements
    key = _architecture(cfg)
    if key not in known:
        known[key] = _count_step_elements(cfg.task)
    return known[key]


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


def plan(
    cfg: TaskConfig, k: int, device: str | torch.device, *, fused_kernels: bool, params: int,
    cache: PopulationCache | None = None,
) -> Plan:  # fmt: skip
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
    per_member = member_step_elements(cfg, cache)
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


def population_pays(
    cfg: TaskConfig, members: int, device: str | torch.device = "cpu", compiled: bool = False,
    cache: PopulationCache | None = None,
) -> bool:  # fmt: skip
    """Whether ``members`` runs of ``cfg``'s task are faster as a population (by the measured rule above)."""
    if torch.device(device).type != "cpu":
        return True
    flops = estimate_cost(cfg).flops_per_step
    if compiled and flops <= MAX_FLOPS_COMPILED:
        return True
    if members <= FEW_MEMBERS:
        return flops <= MAX_FLOPS_FEW
    return flops <= MAX_FLOPS_MANY and member_step_elements(cfg, cache) <= MAX_STEP_ELEMENTS_MANY


def batchable(
    cfg: TaskConfig, device: str | torch.device = "cpu", data_dir: str | None = None, max_valid: int = 512,
    cache: PopulationCache | None = None,
) -> bool:  # fmt: skip
    """Whether ``cfg``'s task can run as a population (probed once per architecture and device, and
    kept in ``cache``, default :data:`SHARED_CACHE`)."""
    cache = SHARED_CACHE if cache is None else cache
    key = (_architecture(cfg), str(device))
    if key not in cache.batchable:
        cache.batchable[key] = _probe(cfg, str(device), data_dir, max_valid, cache)
    return cache.batchable[key]


def run_population(
    cfg: TaskConfig, schedules: Sequence[Schedule], *, steps: int | None = None, device: str | torch.device = "cpu",
    data_dir: str | None = None, max_valid: int = 512, evaluations: int | None = None, compiled: bool = False,
    cache: PopulationCache | None = None,
) -> list[LearningCurve] | None:  # fmt: skip
    """Curves of AdamW ``schedules`` on ``cfg``'s task, trained together; None if the task can't be batched.

    ``compile``: ``torch.compile`` the population's step (see :class:`CIAOPopulation`); ``cache``:
    see :class:`PopulationCache`.
    """
    if not schedules or any(s.optimizer != "adamw" for s in schedules):
        raise ValueError("a population of baselines needs AdamW schedules")
    first = schedules[0]
    if any((s.betas, s.eps, s.weight_decay) != (first.betas, first.eps, first.weight_decay) for s in schedules):
        raise ValueError("population members must share betas, eps and weight decay")
    if not batchable(cfg, device, data_dir, max_valid, cache):
        return None
    task = compile_task(cfg, device, data_dir, max_valid=max_valid)
    pop = CIAOPopulation(task, [adamw_settings(s) for s in schedules], compiled=compiled, cache=cache)
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

