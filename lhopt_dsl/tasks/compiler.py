"""``compile_task(cfg, device) -> InnerTask`` for every task family, and per-config cost estimates.

Initial weights are drawn on the CPU from a generator seeded by the config's seed (the global RNG
is forked and restored, so compiling never disturbs the caller's random state) and then moved to
the device: the same config gives bit-identical initial weights on every device. Batch order and
generated data come from further seeds derived from the same config seed.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..spec.families import CNNTask, MLPTask, NQMTask, RegressionTask, RNNTask, TaskBase, TextRNNTask, TransformerTask
from . import models
from .datasets import image_data, sst2_data
from .synthetic import ALGO_TASKS, NoisyQuadratic, nqm_noise, regression_examples, regression_target
from .task import GeneratedSampler, IndexSampler, InnerTask, LossFn, chunks

if TYPE_CHECKING:  # annotations only: the sampler's module needs nothing from here
    from ..spec.sample import TaskConfig

EVAL_CHUNK = 512
HUBER_DELTA = 0.1
REGRESSION_HUBER_DELTA = 1.0


def derive_seed(seed: int, stream: int) -> int:
    """Independent 63-bit seeds for the weights, the batch order and generated data of a task."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


WEIGHTS, ORDER, VALID, TEST, PROBLEM = range(5)  # PROBLEM: a regression task's target and training set


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _build(seed: int, factory: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, WEIGHTS))
        model = factory()
    return model.to(device)


# --- losses --------------------------------------------------------------------------------------


def classification_loss(kind: str = "cross_entropy") -> LossFn:
    """Cross-entropy on logits, or MAE / MSE / Huber between softmax outputs and one-hot targets.

    The regression losses sum over classes and average over examples; Huber uses delta 0.1 so that
    it differs from MSE on probabilities (whose errors never exceed 1).
    """

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        if logits.dim() == 3:  # (B, L, C) per-step predictions
            logits, y = logits.flatten(0, 1), y.flatten()
        if kind == "cross_entropy":
            return F.cross_entropy(logits, y)
        diff = logits.softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        if kind == "mae":
            per_class = diff.abs()
        elif kind == "mse":
            per_class = diff.square()
        elif kind == "huber":
            per_class = F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=HUBER_DELTA)
        else:
            raise ValueError(f"unknown loss '{kind}'")
        return per_class.sum(-1).mean()

    return loss


REGRESSION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": lambda pred, y: F.huber_loss(pred, y, delta=REGRESSION_HUBER_DELTA),
}


def regression_loss(kind: str = "mse") -> LossFn:
    """Squared error, absolute error or Huber (delta 1) between the model's scalar output and the
    target, averaged over examples."""
    if kind not in REGRESSION_LOSSES:
        raise ValueError(f"unknown regression loss '{kind}'; known: {', '.join(REGRESSION_LOSSES)}")
    of = REGRESSION_LOSSES[kind]

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return of(model(x), y)

    return loss


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    (tokens,) = batch  # (B, T + 1)
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def nqm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(batch[0])


# --- per-family builders -------------------------------------------------------------------------


@dataclass
class _Parts:
    model: nn.Module
    loss: LossFn
    sampler: Callable[[], tuple[torch.Tensor, ...]]
    valid: list[tuple[torch.Tensor, ...]]
    test: list[tuple[torch.Tensor, ...]]


def _split_batches(split: Any, limit: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    return chunks([t[:limit].to(device) for t in split], EVAL_CHUNK)


def _image(cfg: TaskConfig, device: torch.device, data_dir: Any, max_valid: int, max_test: int) -> _Parts:
    task = cfg.task
    data = image_data(task.dataset, data_dir)
    in_shape = tuple(data.train.x.shape[1:])
    build = models.build_mlp if isinstance(task, MLPTask) else models.build_cnn
    model = _build(cfg.seed, lambda: build(task, in_shape, data.num_classes), device)
    train = [t.to(device) for t in data.train]
    loss = classification_loss(task.loss if isinstance(task, MLPTask) else "cross_entropy")
    sampler = IndexSampler(train, task.batch_size, derive_seed(cfg.seed, ORDER))
    return _Parts(model, loss, sampler, _split_batches(data.valid, max_valid, device), _split_batches(data.test, max_test, device))


def _algorithmic(cfg: TaskConfig, device: torch.device, data_dir: Any, max_valid: int, max_test: int) -> _Parts:
    task: RNNTask = cfg.task
    make, features = ALGO_TASKS[task.task]
    model = _build(cfg.seed, lambda: models.SequenceTagger(task, features, 2), device)

    def fixed(stream: int, n: int) -> list[tuple[torch.Tensor, ...]]:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, stream))
        return chunks([t.to(device) for t in make(gen, n, task.seq_len)], EVAL_CHUNK)

    sampler = GeneratedSampler(
        lambda g, b: make(g, b, task.seq_len), task.batch_size, derive_seed(cfg.seed, ORDER), device
    )
    return _Parts(model, classification_loss(), sampler, fixed(VALID, max_valid), fixed(TEST, max_test))


def _text(cfg: TaskConfig, device: torch.device, data_dir: Any, max_valid: int, max_test: int) -> _Parts:
    task: TextRNNTask = cfg.task
    data = sst2_data(task.vocab_size, task.max_len, data_dir)
    model = _build(cfg.seed, lambda: models.SentenceClassifier(task, data.num_classes), device)
    train = [t.to(device) for t in data.train]
    sampler = IndexSampler(train, task.batch_size, derive_seed(cfg.seed, ORDER))
    return _Parts(
        model, classification_loss(), sampler,
        _split_batches(data.valid, max_valid, device), _split_batches(data.test, max_test, device),
    )  # fmt: skip


def _language(cfg: TaskConfig, device: torch.device, data_dir: Any, max_valid: int, max_test: int) -> _Parts:
    from .lm_datasets import build_lm_data

    task: TransformerTask = cfg.task
    data = build_lm_data(
        task.dataset, task.seq_len, derive_seed(cfg.seed, VALID), data_dir, n_valid=max_valid, n_test=max_test
    )
    model = _build(cfg.seed, lambda: models.TransformerLM(task, data.vocab_size), device)
    sampler = IndexSampler([data.train.to(device)], task.batch_size, derive_seed(cfg.seed, ORDER))
    return _Parts(
        model, lm_loss, sampler, chunks([data.valid.to(device)], EVAL_CHUNK), chunks([data.test.to(device)], EVAL_CHUNK)
    )


def _nqm(cfg: TaskConfig, device: torch.device, data_dir: Any, max_valid: int, max_test: int) -> _Parts:
    task: NQMTask = cfg.task
    model = _build(cfg.seed, lambda: NoisyQuadratic(task), device)
    h = model.h.cpu()
    sampler = GeneratedSampler(lambda g, b: (nqm_noise(task, h, g),), task.batch_size, derive_seed(cfg.seed, ORDER), device)
    exact = [(torch.zeros(task.dim, device=device),)]
    return _Parts(model, nqm_loss, sampler, exact, exact)


def _regression(cfg: TaskConfig, device: torch.device, data_dir: Any, max_valid: int, max_test: int) -> _Parts:
    task: RegressionTask = cfg.task
    problem = torch.Generator().manual_seed(derive_seed(cfg.seed, PROBLEM))
    target = regression_target(task, problem)
    train = [t.to(device) for t in regression_examples(task, target, problem, task.examples)]

    def fixed(stream: int, n: int) -> list[tuple[torch.Tensor, ...]]:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, stream))
        return chunks([t.to(device) for t in regression_examples(task, target, gen, n)], EVAL_CHUNK)

    model = _build(cfg.seed, lambda: models.build_mlp(task, (task.inputs,), 1), device)
    sampler = IndexSampler(train, task.batch_size, derive_seed(cfg.seed, ORDER))
    return _Parts(model, regression_loss(task.loss), sampler, fixed(VALID, max_valid), fixed(TEST, max_test))


_BUILDERS = {
    "mlp": _image, "cnn": _image, "rnn": _algorithmic, "text_rnn": _text, "transformer": _language, "nqm": _nqm,
    "regression": _regression,
}  # fmt: skip


def compile_task(
    cfg: TaskConfig,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_valid: int = 512,
    max_test: int = 2048,
) -> InnerTask:
    """Build a config's model, data and losses on ``device``.

    ``max_valid`` caps the fixed validation set (evaluated at every outer step) and ``max_test``
    the test set. ``data_dir`` is searched first for dataset files (then $LHOPT_DATA_DIR, then a
    user cache).
    """
    dev = resolve_device(device)
    parts = _BUILDERS[cfg.task.family](cfg, dev, data_dir, max_valid, max_test)
    return InnerTask(cfg, dev, parts.model, parts.loss, parts.sampler, parts.valid, parts.test)


# --- cost estimates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskCost:
    """Size and work of one task: parameters, FLOPs per training step and per whole run."""

    params: int
    flops_per_step: int  # forward + backward of one training batch
    flops_per_run: int  # T training steps plus one validation pass per outer step


def _lm_vocab(dataset: str) -> int:
    from .lm_datasets import vocab_size  # without building the data: exact, or a corpus's cap

    return vocab_size(dataset)


def _meta_problem(task: Any) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor], int]:
    """A model on the meta device and a function computing one training batch's loss."""
    b = task.batch_size
    if isinstance(task, (MLPTask, CNNTask)):
        shape = _image_shape(task)
        build = models.build_mlp if isinstance(task, MLPTask) else models.build_cnn
        return build(task, shape, 10), lambda m: m(torch.zeros(b, *shape)).sum(), b
    if isinstance(task, RNNTask):
        feats = ALGO_TASKS[task.task][1]
        return models.SequenceTagger(task, feats, 2), lambda m: m(torch.zeros(b, task.seq_len, feats)).sum(), b
    if isinstance(task, TextRNNTask):
        x = torch.zeros(b, task.max_len, dtype=torch.long)
        # Full-length sentences: an upper bound on the packed-sequence cost.
        return models.SentenceClassifier(task, 2), lambda m: m.head(m.rnn(m.embed(x))[0][:, -1]).sum(), b
    if isinstance(task, TransformerTask):
        x = torch.zeros(b, task.seq_len, dtype=torch.long)
        return models.TransformerLM(task, _lm_vocab(task.dataset)), lambda m: m(x).sum(), b
    if isinstance(task, RegressionTask):
        return models.build_mlp(task, (task.inputs,), 1), lambda m: m(torch.zeros(b, task.inputs)).sum(), b
    raise TypeError(f"no meta model for {type(task).__name__}")


def parameter_shapes(task: Any) -> list[tuple[int, ...]]:
    """The shapes of the parameters a task's model has, built on the meta device (nothing is
    allocated, no data is read)."""
    if isinstance(task, NQMTask):
        return [(task.dim,)]
    with torch.device("meta"):
        model, _, _ = _meta_problem(task)
    return [tuple(p.shape) for p in model.parameters()]


def _image_shape(task: MLPTask | CNNTask) -> tuple[int, int, int]:
    return (1, 8, 8) if task.dataset == "digits" else (1, 28, 28)


def count_flops(task: Any) -> tuple[int, int]:
    """(parameters, matmul/conv FLOPs of one training step) by running it on the meta device.

    Exact for what it counts but slow for recurrent networks (they unroll); ``estimate_cost`` uses
    closed forms where they exist and this counter for convolutions, and a test checks they agree.
    """
    with torch.device("meta"):
        model, loss_of, _ = _meta_problem(task)
        counter = FlopCounterMode(display=False)
        with counter:
            loss_of(model).backward()
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops())


_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _recurrent_weights(cell: str, inputs: int, hidden: int, layers: int, dirs: int = 1) -> int:
    """Weights of a recurrent stack's matrices (FLOPs per step are twice this), biases excluded."""
    g, total = _GATES[cell], 0
    for layer in range(layers):
        width = inputs if layer == 0 else hidden * dirs
        total += g * hidden * (width + hidden) * dirs
    return total


def _recurrent_params(cell: str, inputs: int, hidden: int, layers: int, dirs: int = 1) -> int:
    return _recurrent_weights(cell, inputs, hidden, layers, dirs) + 2 * _GATES[cell] * hidden * layers * dirs


def _recurrent_flops(cell: str, inputs: int, hidden: int, layers: int, dirs: int = 1) -> int:
    """Forward matmul FLOPs of a recurrent stack per example and time step."""
    return 2 * _recurrent_weights(cell, inputs, hidden, layers, dirs)


def _forward_flops_per_example(task: Any) -> int:
    """Matmul FLOPs of one example's forward pass (backward counts twice this)."""
    if isinstance(task, MLPTask):
        widths = [math.prod(_image_shape(task)), *task.hidden, 10]
        return sum(2 * a * b for a, b in zip(widths, widths[1:]))
    if isinstance(task, RegressionTask):
        widths = [task.inputs, *task.hidden, 1]
        return sum(2 * a * b for a, b in zip(widths, widths[1:]))
    if isinstance(task, RNNTask):
        feats = ALGO_TASKS[task.task][1]
        per_step = _recurrent_flops(task.cell, feats, task.hidden_size, task.num_layers) + 2 * task.hidden_size * 2
        return per_step * task.seq_len
    if isinstance(task, TextRNNTask):
        dirs = 2 if task.bidirectional else 1
        rnn = _recurrent_flops(task.cell, task.embed_dim, task.hidden_size, task.num_layers, dirs) * task.max_len
        return rnn + 2 * task.hidden_size * dirs * 2
    if isinstance(task, TransformerTask):
        d, t = task.d_model, task.seq_len
        per_token = task.num_layers * (2 * d * 3 * d + 2 * d * d + 2 * 2 * d * task.ff_mult * d + 2 * 2 * t * d)
        return t * (per_token + 2 * d * _lm_vocab(task.dataset))
    raise TypeError(f"no closed form for {type(task).__name__}")


@functools.lru_cache(maxsize=4096)
def _step_cost(task: Any) -> tuple[int, int, int]:
    """(parameters, FLOPs per training step, forward FLOPs per example); independent of T."""
    if isinstance(task, CNNTask):
        params, step = count_flops(task)
        return params, step, step // (3 * task.batch_size)
    if isinstance(task, RNNTask):
        feats = ALGO_TASKS[task.task][1]
        params = _recurrent_params(task.cell, feats, task.hidden_size, task.num_layers) + task.hidden_size * 2 + 2
    elif isinstance(task, TextRNNTask):
        dirs = 2 if task.bidirectional else 1
        params = (
            task.vocab_size * task.embed_dim
            + _recurrent_params(task.cell, task.embed_dim, task.hidden_size, task.num_layers, dirs)
            + (task.hidden_size * dirs + 1) * 2
        )
    else:
        with torch.device("meta"):
            params = sum(p.numel() for p in _meta_problem(task)[0].parameters())
    forward = _forward_flops_per_example(task)
    # A backward pass costs about twice the forward, but no gradient flows into the input data.
    no_input_grad = 0
    if isinstance(task, MLPTask):
        no_input_grad = 2 * math.prod(_image_shape(task)) * (task.hidden or (10,))[0]
    elif isinstance(task, RegressionTask):
        no_input_grad = 2 * task.inputs * (task.hidden or (1,))[0]
    elif isinstance(task, RNNTask):
        no_input_grad = 2 * _GATES[task.cell] * task.hidden_size * ALGO_TASKS[task.task][1] * task.seq_len
    return params, (3 * forward - no_input_grad) * task.batch_size, forward


def estimate_cost(cfg: TaskConfig, max_valid: int = 512) -> TaskCost:
    """Parameters and FLOPs of a config (or a bare task), without data or real tensors.

    FLOPs count matrix multiplications and convolutions (what dominates): a training step is taken
    as three forward passes (forward, and a backward pass of about twice the work), and each outer
    step adds a forward pass over ``max_valid`` validation examples.
    """
    task = cfg if isinstance(cfg, TaskBase) else cfg.task
    if isinstance(task, NQMTask):
        step = 6 * task.dim
        return TaskCost(task.dim, step, step * task.inner_steps + step * task.outer_steps)
    params, step, forward = _step_cost(task.model_copy(update={"inner_steps": 1, "outer_steps": 1}))
    evals = forward * max_valid * task.outer_steps
    return TaskCost(params, step, step * task.inner_steps + evals)
