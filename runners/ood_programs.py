"""Ordinary PyTorch training programs that no task family covers (the out-of-distribution suite).

Why this module exists: the meta-training distribution is compiled from task specs, so a policy
can only be shown to generalise by programs written without the DSL, the way a user writes them,
driven through the public drop-in :class:`~lhopt_dsl.controller.LHOPT`. Each program is a function
``build_*(seed, sizes, data_dir) -> Problem`` that builds its model and data deterministically from
a seed (initial weights and batch order; the data splits are fixed and never depend on the seed),
and :func:`train` is the one plain training loop every optimizer runs through: the policy, AdamW
with a ``LambdaLR`` schedule, Schedule-Free AdamW and Prodigy.

The programs (sizes in :data:`PROGRAMS`; each run takes seconds on one CPU thread):

* ``wikitext2_lm``: a word-level GPT-style Transformer language model on WikiText-2, the
  scaled-down analogue of the paper's GPT-2 on WikiText-103 (Section 4.2). It trains on
  ``valid.txt``; the first half of ``test.txt`` is the validation split and the second half the
  test split. The vocabulary is the most frequent words of the training text (the rest map to
  WikiText's own ``<unk>``), plus ``<eos>`` at the end of each line.
* ``mnist_vit``: a small Vision Transformer on the 10,000 images of the MNIST test file alone (so
  the program needs no training file), split by a fixed shuffle into 8,000 train, 1,000 valid and
  1,000 test images.
* ``fashion_autoencoder``: a convolutional autoencoder on Fashion-MNIST with a mean squared pixel
  reconstruction loss; the last 5,000 training images (after a fixed shuffle) are held out for
  validation, and the official test set is the test split.

Data files are found like every other dataset of the project (``data_dir``, then
``$LHOPT_DATA_DIR``, then the user cache, downloading from the public mirror when possible), and a
missing file fails with a message that names it.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lhopt_dsl.controller import LHOPT
from lhopt_dsl.spec.schedule import Schedule, segment_bounds, shape_factor
from lhopt_dsl.tasks.baselines import tuning_free_optimizer
from lhopt_dsl.tasks.datafiles import REMOTES, Remote, find_file
from lhopt_dsl.tasks.datasets import read_idx


__all__ = [
    "AutoencoderSizes", "Batch", "EVALUATIONS", "LMSizes", "Optimization", "OptimizerFactory", "PROGRAMS",
    "Problem", "Program", "Run", "ViTSizes", "adamw", "build_fashion_autoencoder", "build_mnist_vit",
    "build_wikitext2_lm", "evaluate", "fashion_splits", "mnist_test_splits", "names", "policy", "report_losses",
    "run_program", "spaced_windows", "train", "tuning_free", "wikitext2",
]  # fmt: skip

DataDir = Union[str, os.PathLike, None]
Batch = tuple[torch.Tensor, ...]  # (inputs,) or (inputs, targets)

#: Validation measurements per T steps (the cadence a user would choose: every T/16 steps).
EVALUATIONS = 16
SPLIT_SEED = 20240611  # fixed: the programs' data splits never depend on the run's seed


# --- what a program is ----------------------------------------------------------------------------


class Problem(NamedTuple):
    """A model with its data: everything :func:`train` needs, built from one seed."""

    model: nn.Module
    next_batch: Callable[[], Batch]  # the next training batch (its own seeded generator)
    loss: Callable[[nn.Module, Batch], torch.Tensor]  # mean loss of a batch, a scalar
    valid: Batch  # whole held-out splits, evaluated in chunks
    test: Batch
    steps: int  # T
    eval_chunk: int  # examples per forward pass when evaluating


@dataclass(frozen=True)
class Program:
    """A named training program with its default sizes."""

    name: str
    description: str
    build: Callable[[int, Any, DataDir], Problem]  # (seed, sizes, data_dir) -> Problem
    sizes: Any  # a frozen *Sizes dataclass; ``steps`` is T

    def scaled(self, factor: float) -> Any:
        """The default sizes with T scaled by ``factor`` (a multiple of 16, at least 16)."""
        steps = max(EVALUATIONS, round(self.sizes.steps * factor / EVALUATIONS) * EVALUATIONS)
        return replace(self.sizes, steps=steps)


def _init(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with initial weights drawn from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _sampler(generator: torch.Generator, size: int, batch: int, take: Callable[[torch.Tensor], Batch]):
    """Batches of ``batch`` indices drawn uniformly (with replacement) from ``range(size)``."""
    return lambda: take(torch.randint(0, size, (batch,), generator=generator))


# --- WikiText-2 word-level language model ---------------------------------------------------------

WIKITEXT_TRAIN = "text/wikitext-2/valid.txt"
WIKITEXT_HELD_OUT = "text/wikitext-2/test.txt"
_WIKITEXT_URL = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"
#: Where the WikiText-2 files can be downloaded (checksums of the published files).
WIKITEXT_REMOTES: dict[str, Remote] = {
    **REMOTES,
    WIKITEXT_TRAIN: Remote(_WIKITEXT_URL + "valid.txt",
                           sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
    WIKITEXT_HELD_OUT: Remote(_WIKITEXT_URL + "test.txt",
                              sha256="d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
}  # fmt: skip
UNK, EOS = "<unk>", "<eos>"


class WordStreams(NamedTuple):
    """Token-id streams of the three splits and the vocabulary (id -> word)."""

    train: torch.Tensor  # (N_train,) int64
    valid: torch.Tensor  # (N_valid,)
    test: torch.Tensor  # (N_test,)
    vocab: tuple[str, ...]


def _lines(path: str) -> list[list[str]]:
    """The words of each non-empty line."""
    text = Path(path).read_text(encoding="utf-8")
    return [line.split() for line in text.split("\n") if line.strip()]


def _encode(lines: list[list[str]], index: dict[str, int]) -> torch.Tensor:
    unk, eos = index[UNK], index[EOS]
    ids = [i for line in lines for i in [*(index.get(w, unk) for w in line), eos]]
    return torch.tensor(ids, dtype=torch.int64)


@functools.lru_cache(maxsize=4)
def _wikitext(vocab_size: int, train_path: str, held_out_path: str) -> WordStreams:
    train = _lines(train_path)
    held_out = _lines(held_out_path)
    counts = Counter(w for line in train for w in line if w != UNK)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    vocab = (UNK, EOS, *words)
    index = {w: i for i, w in enumerate(vocab)}
    half = len(held_out) // 2  # whole lines (paragraphs) on each side
    return WordStreams(_encode(train, index), _encode(held_out[:half], index), _encode(held_out[half:], index), vocab)


def wikitext2(vocab_size: int, data_dir: DataDir = None) -> WordStreams:
    """WikiText-2 as word ids: train on ``valid.txt``; ``test.txt`` halved into valid and test.

    The vocabulary (``vocab_size`` words including ``<unk>`` and ``<eos>``) comes from the
    training text only. Read once per process, size and path.
    """
    train = find_file(WIKITEXT_TRAIN, data_dir, remotes=WIKITEXT_REMOTES)
    held_out = find_file(WIKITEXT_HELD_OUT, data_dir, remotes=WIKITEXT_REMOTES)
    return _wikitext(vocab_size, str(train.resolve()), str(held_out.resolve()))


def spaced_windows(stream: torch.Tensor, length: int, count: int) -> torch.Tensor:
    """``count`` non-overlapping windows of ``length`` tokens, evenly spaced over ``stream``."""
    count = max(1, min(count, len(stream) // length))
    starts = torch.arange(count) * (len(stream) // count)
    return stream[starts[:, None] + torch.arange(length)]  # (count, length)


@dataclass(frozen=True)
class LMSizes:
    steps: int = 256  # T
    batch: int = 8  # windows per step
    context: int = 32  # tokens a window predicts (each window holds context + 1 ids)
    vocab: int = 1000  # words, including <unk> and <eos>
    width: int = 32  # d_model
    depth: int = 2  # Transformer blocks
    heads: int = 2
    eval_windows: int = 32  # windows of each held-out split (1,024 predicted tokens)


class WordTransformer(nn.Module):
    """GPT-style causal Transformer: token + learned position embeddings, pre-norm blocks, tied output."""

    def __init__(self, vocab: int, context: int, width: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        nn.init.normal_(self.embed.weight, std=0.02)  # GPT-2's initialisation (the output layer shares it)
        self.position = nn.Parameter(0.02 * torch.randn(context, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) ids -> (B, L, V) logits
        length = tokens.shape[1]
        h = self.embed(tokens) + self.position[:length]  # (B, L, D)
        h = self.blocks(h, mask=self.mask[:length, :length], is_causal=True)
        return self.norm(h) @ self.embed.weight.T  # weights tied with the embedding, as in GPT-2


def _lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    (windows,) = batch  # (B, L + 1)
    logits = model(windows[:, :-1])  # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())


def build_wikitext2_lm(seed: int, sizes: LMSizes = LMSizes(), data_dir: DataDir = None) -> Problem:
    data = wikitext2(sizes.vocab, data_dir)
    length = sizes.context + 1
    model = _init(seed, lambda: WordTransformer(len(data.vocab), sizes.context, sizes.width, sizes.depth, sizes.heads))
    offsets = torch.arange(length)

    def take(starts: torch.Tensor) -> Batch:
        return (data.train[starts[:, None] + offsets],)

    g = torch.Generator().manual_seed(seed)
    return Problem(model, _sampler(g, len(data.train) - length + 1, sizes.batch, take), _lm_loss,
                   (spaced_windows(data.valid, length, sizes.eval_windows),),
                   (spaced_windows(data.test, length, sizes.eval_windows),), sizes.steps, eval_chunk=64)  # fmt: skip


# --- images: MNIST test set and Fashion-MNIST ------------------------------------------------------


def _images(folder: str, prefix: str, data_dir: DataDir) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) labels of one IDX file pair."""
    images = read_idx(find_file(f"{folder}/{prefix}-images-idx3-ubyte.gz", data_dir))
    labels = read_idx(find_file(f"{folder}/{prefix}-labels-idx1-ubyte.gz", data_dir))
    if len(images) != len(labels):
        raise ValueError(f"{folder}/{prefix}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


class ImageSplits(NamedTuple):
    train: Batch  # (x (N, 1, 28, 28) float32, y (N,) int64)
    valid: Batch
    test: Batch


@functools.lru_cache(maxsize=2)
def _mnist_test_splits(data_dir: str | None) -> ImageSplits:
    images, labels = _images("mnist", "t10k", data_dir)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    parts = perm[:8000], perm[8000:9000], perm[9000:]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28)
    mean, std = x[parts[0]].mean(), x[parts[0]].std()  # the training split's statistics
    x = (x - mean) / std
    y = torch.from_numpy(labels)
    return ImageSplits(*((x[p], y[p]) for p in parts))


def mnist_test_splits(data_dir: DataDir = None) -> ImageSplits:
    """The 10,000 MNIST test images, normalised, split by a fixed shuffle into 8,000 / 1,000 / 1,000."""
    return _mnist_test_splits(str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=2)
def _fashion_splits(data_dir: str | None) -> ImageSplits:
    train_x, train_y = _images("fashion-mnist", "train", data_dir)
    test_x, test_y = _images("fashion-mnist", "t10k", data_dir)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(train_x))
    to_tensor = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731 (N, 1, 28, 28) in [0, 1]
    train, valid = perm[:-5000], perm[-5000:]
    test = np.random.default_rng(SPLIT_SEED).permutation(len(test_x))
    return ImageSplits(
        (to_tensor(train_x[train]), torch.from_numpy(train_y[train])),
        (to_tensor(train_x[valid]), torch.from_numpy(train_y[valid])),
        (to_tensor(test_x[test]), torch.from_numpy(test_y[test])),
    )


def fashion_splits(data_dir: DataDir = None) -> ImageSplits:
    """Fashion-MNIST pixels in [0, 1]: 55,000 train and 5,000 valid images from the training file
    (fixed shuffle), and the official 10,000 test images (in a fixed shuffled order)."""
    return _fashion_splits(str(data_dir) if data_dir else None)


@dataclass(frozen=True)
class ViTSizes:
    steps: int = 256  # T
    batch: int = 32
    patch: int = 7  # 28 / 7 = 4 x 4 = 16 patches, plus a class token
    width: int = 32
    depth: int = 2
    heads: int = 2
    eval_size: int = 500  # images of each held-out split (at most 1,000)


class VisionTransformer(nn.Module):
    """ViT: patch embedding (a strided convolution), class token, learned positions, pre-norm blocks."""

    def __init__(self, patch: int, width: int, depth: int, heads: int, classes: int = 10, side: int = 28):
        super().__init__()
        self.patchify = nn.Conv2d(1, width, kernel_size=patch, stride=patch)
        tokens = (side // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes)
        h = self.patchify(x).flatten(2).transpose(1, 2)  # (B, P, D)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1) + self.position  # (B, P + 1, D)
        return self.head(self.norm(self.blocks(h)[:, 0]))


def _classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _take(split: Batch, n: int) -> Batch:
    return tuple(t[:n] for t in split)


def build_mnist_vit(seed: int, sizes: ViTSizes = ViTSizes(), data_dir: DataDir = None) -> Problem:
    data = mnist_test_splits(data_dir)
    model = _init(seed, lambda: VisionTransformer(sizes.patch, sizes.width, sizes.depth, sizes.heads))
    x, y = data.train
    g = torch.Generator().manual_seed(seed)
    return Problem(model, _sampler(g, len(x), sizes.batch, lambda i: (x[i], y[i])), _classification_loss,
                   _take(data.valid, sizes.eval_size), _take(data.test, sizes.eval_size), sizes.steps,
                   eval_chunk=500)  # fmt: skip


@dataclass(frozen=True)
class AutoencoderSizes:
    steps: int = 256  # T
    batch: int = 32
    channels: int = 8  # of the first convolution; the second has twice as many
    latent: int = 16  # bottleneck features
    eval_size: int = 500  # images of each held-out split


class ConvAutoencoder(nn.Module):
    """28x28 -> two stride-2 convolutions -> a linear bottleneck -> two sub-pixel convolutions.

    The decoder upsamples with sub-pixel convolutions (a convolution to 4x the channels, then
    ``PixelShuffle(2)``; Shi et al. 2016), which run several times faster on CPUs than transposed
    convolutions of the same shape.
    """

    def __init__(self, channels: int, latent: int):
        super().__init__()
        c1, c2 = channels, 2 * channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),  # (B, c2, 7, 7)
            nn.Flatten(), nn.Linear(c2 * 7 * 7, latent),  # (B, latent)
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(latent, c2 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (c2, 7, 7)),
            nn.Conv2d(c2, 4 * c1, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(),  # (B, c1, 14, 14)
            nn.Conv2d(c1, 4, 3, padding=1), nn.PixelShuffle(2), nn.Sigmoid(),  # (B, 1, 28, 28) in (0, 1)
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _reconstruction_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    x = batch[0]
    return F.mse_loss(model(x), x)


def build_fashion_autoencoder(seed: int, sizes: AutoencoderSizes = AutoencoderSizes(),
                              data_dir: DataDir = None) -> Problem:  # fmt: skip
    data = fashion_splits(data_dir)
    model = _init(seed, lambda: ConvAutoencoder(sizes.channels, sizes.latent))
    x = data.train[0]
    g = torch.Generator().manual_seed(seed)
    return Problem(model, _sampler(g, len(x), sizes.batch, lambda i: (x[i],)), _reconstruction_loss,
                   _take(data.valid, sizes.eval_size)[:1], _take(data.test, sizes.eval_size)[:1], sizes.steps,
                   eval_chunk=500)  # fmt: skip


PROGRAMS: dict[str, Program] = {
    p.name: p
    for p in (
        Program("wikitext2_lm", "word-level Transformer LM on WikiText-2 (cross-entropy per word)",
                build_wikitext2_lm, LMSizes()),  # fmt: skip
        Program("mnist_vit", "Vision Transformer on the MNIST test set (cross-entropy)", build_mnist_vit, ViTSizes()),
        Program("fashion_autoencoder", "convolutional autoencoder on Fashion-MNIST (pixel MSE)",
                build_fashion_autoencoder, AutoencoderSizes()),  # fmt: skip
    )
}


# --- optimizers -----------------------------------------------------------------------------------


class Optimization(NamedTuple):
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


#: ``factory(model, total_steps)`` -> the optimizer (and scheduler) of one run.
OptimizerFactory = Callable[[nn.Module, int], Optimization]


def adamw(lr: float, shape: str) -> OptimizerFactory:
    """AdamW at ``lr`` with the learning-rate ``shape`` stretched over the run (a ``LambdaLR``),
    with the AdamW settings of the task baselines (:class:`lhopt_dsl.spec.schedule.Schedule`)."""
    s = Schedule(lr=lr, shape=shape)
    shape_factor(shape, 0.0)  # an unknown shape fails here, not inside the training loop

    def make(model: nn.Module, steps: int) -> Optimization:
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)
        return Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: shape_factor(shape, i / steps)))

    return make


def tuning_free(name: str) -> OptimizerFactory:
    """Schedule-Free AdamW (``schedulefree``) or Prodigy (``prodigy``), set as in lhopt_dsl/tasks/baselines.py."""
    return lambda model, steps: Optimization(tuning_free_optimizer(name, list(model.parameters()), steps))


def policy(path: str | os.PathLike | Schedule | None = None, seed: int = 0) -> OptimizerFactory:
    """The drop-in :class:`LHOPT` with a policy checkpoint (None: the shipped default), greedy, or
    driven by a fixed :class:`~lhopt_dsl.spec.schedule.Schedule` (CIAO following it)."""
    return lambda model, steps: Optimization(LHOPT(model.parameters(), path, total_steps=steps, model=model, seed=seed))


# --- the training loop ----------------------------------------------------------------------------


@dataclass
class Run:
    """What one training run measured, at ``steps`` (0 first, then every ``T / 16`` steps)."""

    steps: list[int] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)  # never shown to the optimizer
    train_loss: list[float] = field(default_factory=list)  # mean of the steps since the last measurement
    seconds: float = 0.0
    diverged_at: int | None = None  # the step whose training loss was non-finite (the run stopped there)
    history: list[dict[str, Any]] = field(default_factory=list)  # the policy's decisions (LHOPT only)

    @property
    def final_test(self) -> float:
        return self.test_loss[-1] if self.test_loss else math.nan

    @property
    def final_valid(self) -> float:
        return self.valid_loss[-1] if self.valid_loss else math.nan

    @property
    def finite(self) -> bool:
        return math.isfinite(self.final_test) and math.isfinite(self.final_valid)


@torch.no_grad()
def evaluate(model: nn.Module, loss: Callable[[nn.Module, Batch], torch.Tensor], split: Batch, chunk: int) -> float:
    """Mean loss over a whole split, ``chunk`` examples per forward pass."""
    was_training = model.training
    model.eval()
    total, n = 0.0, len(split[0])
    for a in range(0, n, chunk):
        part = tuple(t[a : a + chunk] for t in split)
        total += float(loss(model, part)) * len(part[0])
    model.train(was_training)
    return total / n


def report_losses(opt: torch.optim.Optimizer, step: int, *, train_loss: float | None = None,
                  valid_loss: float | Callable[[], float] | None = None, train_every: int | None = 1,
                  valid_every: int | None = None) -> None:  # fmt: skip
    """Report to the drop-in :class:`LHOPT` the losses due at inner step ``step`` (counted from 0)
    when a loop reports the training loss every ``train_every`` steps and the validation loss every
    ``valid_every`` steps (None: never; 1: at every call), as a user's ``if step % k == 0:
    opt.observe(...)`` does.

    ``train_loss`` (this step's) is reported when ``step % train_every == 0``, then ``valid_loss``
    when ``step % valid_every == 0``; a callable ``valid_loss`` is called only then, so an
    evaluation costs nothing on the other steps. Any other optimizer is told nothing and nothing is
    evaluated. A step's training loss is reported after ``backward()`` and before ``step()``:
    LHOPT's statistics of the step use it. :func:`train` reports its validation losses at its
    measurement points instead of every k steps (``train_every=None, valid_every=1`` there).
    """
    if not isinstance(opt, LHOPT):
        return
    if train_every and step % train_every == 0:
        opt.observe(train_loss=train_loss)
    if valid_every and step % valid_every == 0:
        opt.observe(valid_loss=valid_loss() if callable(valid_loss) else valid_loss)


def train(problem: Problem, make_optimizer: OptimizerFactory, steps: int | None = None,
          evaluations: int | None = None) -> Run:  # fmt: skip
    """Train ``problem.model`` for ``steps`` (default T), measuring validation and test loss at
    ``evaluations`` evenly spaced points (default: every T/16 steps) and before the first step.

    The loop is what a user writes. With :class:`LHOPT` it reports the training loss of every step
    and each validation loss (``observe``, through :func:`report_losses`); Schedule-Free AdamW is
    switched to its evaluation point (``optimizer.eval()``) while measuring. A run whose training
    loss becomes non-finite stops there, as a user's would; its later measurements are NaN.
    """
    steps = steps or problem.steps
    evaluations = evaluations or max(1, round(EVALUATIONS * steps / problem.steps))
    model = problem.model
    opt, scheduler = make_optimizer(model, steps)
    reports = isinstance(opt, LHOPT)
    two_points = hasattr(opt, "train") and hasattr(opt, "eval")  # Schedule-Free trains at y, evaluates at x
    points = segment_bounds(steps, evaluations)
    run, losses = Run(), []
    t0 = time.perf_counter()

    def measure(step: int) -> None:
        if two_points:
            opt.eval()
        run.steps.append(step)
        run.valid_loss.append(evaluate(model, problem.loss, problem.valid, problem.eval_chunk))
        run.test_loss.append(evaluate(model, problem.loss, problem.test, problem.eval_chunk))
        if step > 0:
            run.train_loss.append(float(np.mean(losses)) if losses else math.nan)
            losses.clear()
        if two_points:
            opt.train()
        # every measurement point (after the step, and before the first), not every k steps
        report_losses(opt, step, valid_loss=run.valid_loss[-1], train_every=None, valid_every=1)

    model.train()
    measure(0)
    for step in range(steps):
        loss = problem.loss(model, problem.next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            run.diverged_at = step
            break
        report_losses(opt, step, train_loss=value)  # every step, before step(): its statistics use it
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(value)
        if step + 1 in points:
            measure(step + 1)
    for step in points[len(run.steps) :]:  # a stopped run: nothing more was measured
        run.steps.append(step)
        for curve in (run.valid_loss, run.test_loss, run.train_loss):
            curve.append(math.nan)
    run.seconds = time.perf_counter() - t0
    if reports:
        run.history = [{k: (float(v) if isinstance(v, (int, float, np.number)) else v) for k, v in h.items()}
                       for h in opt.history]  # fmt: skip
    return run


def run_program(program: Program | str, make_optimizer: OptimizerFactory, *, seed: int = 0, sizes: Any = None,
                steps: int | None = None, data_dir: DataDir = None) -> Run:  # fmt: skip
    """Build ``program`` from ``seed`` (with ``sizes``, default its own) and train it once."""
    program = PROGRAMS[program] if isinstance(program, str) else program
    problem = program.build(seed, sizes or program.sizes, data_dir)
    return train(problem, make_optimizer, steps)


def names(programs: Sequence[str]) -> list[str]:
    """Validated program names (all of them when empty)."""
    unknown = [p for p in programs if p not in PROGRAMS]
    if unknown:
        raise ValueError(f"unknown program(s) {', '.join(unknown)}; known: {', '.join(PROGRAMS)}")
    return list(programs) or list(PROGRAMS)
