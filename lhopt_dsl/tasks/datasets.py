"""Classification datasets as whole tensors: MNIST-like images (IDX files), 8x8 digits, SST-2.

Everything is loaded once per process (cached as CPU tensors) and split deterministically, with a
fixed split seed that does not depend on the task, so every task sees the same train/valid/test
partition of a dataset. The compiler moves the tensors to the task's device.

Splits:

* MNIST / KMNIST / Fashion-MNIST with training files: the last 5,000 training images (after a fixed
  shuffle) are the validation set; the official test set is the test set.
* A dataset with only its test files (MNIST here, where the training images are not available):
  the 10,000 test images are split by a fixed shuffle into 8,000 train, 1,000 valid and 1,000 test.
* 8x8 digits (scikit-learn's bundled copy, no download): 1,797 images split 1,257 / 270 / 270.
* SST-2: the official train / dev / test files.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .datafiles import DataNotFoundError, find_file

SPLIT_SEED = 20210203  # fixed: splits never depend on the task's seed

IMAGE_DIRS = {"mnist": "mnist", "kmnist": "kmnist", "fashion_mnist": "fashion-mnist"}


class Split(NamedTuple):
    x: torch.Tensor  # (N, ...) features (float32 images, or int64 token ids)
    y: torch.Tensor  # (N,) int64 labels


class ClassificationData(NamedTuple):
    train: Split
    valid: Split
    test: Split
    num_classes: int


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST-like datasets."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: IDX header says {shape} ({expected} bytes) but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _fixed_permutation(n: int) -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(n)


def _normalise(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """Scale to zero mean, unit variance using the training split's statistics."""
    mean, std = float(train.mean()), float(train.std()) or 1.0
    return [torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in (train, *others)]


@functools.lru_cache(maxsize=8)
def _mnist_like(name: str, data_dir: str | None) -> ClassificationData:
    folder = IMAGE_DIRS[name]

    def load(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(find_file(f"{folder}/{prefix}-images-idx3-ubyte.gz", data_dir))
        labels = read_idx(find_file(f"{folder}/{prefix}-labels-idx1-ubyte.gz", data_dir))
        if len(images) != len(labels):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        return images.astype(np.float32) / 255.0, labels.astype(np.int64)

    test_x, test_y = load("t10k")
    try:
        train_x, train_y = load("train")
        perm = _fixed_permutation(len(train_x))
        tr, va = perm[:-5000], perm[-5000:]
        parts = [(train_x[tr], train_y[tr]), (train_x[va], train_y[va]), (test_x, test_y)]
    except DataNotFoundError:
        # Only the test split exists: split it 80 / 10 / 10 with a fixed shuffle.
        perm = _fixed_permutation(len(test_x))
        n_tr, n_va = int(0.8 * len(perm)), int(0.9 * len(perm))
        idx = [perm[:n_tr], perm[n_tr:n_va], perm[n_va:]]
        parts = [(test_x[i], test_y[i]) for i in idx]
    xs = _normalise(*(p[0][:, None] for p in parts))  # (N, 1, 28, 28)
    splits = [Split(x, torch.from_numpy(p[1])) for x, p in zip(xs, parts)]
    return ClassificationData(*splits, num_classes=10)


@functools.lru_cache(maxsize=1)
def _digits() -> ClassificationData:
    from sklearn.datasets import load_digits  # bundled inside the scikit-learn wheel

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)
    perm = _fixed_permutation(len(images))
    idx = [perm[:1257], perm[1257:1527], perm[1527:]]
    xs = _normalise(*(images[i][:, None] for i in idx))
    splits = [Split(x, torch.from_numpy(labels[i])) for x, i in zip(xs, idx)]
    return ClassificationData(*splits, num_classes=10)


def image_data(name: str, data_dir: str | os.PathLike[str] | None = None) -> ClassificationData:
    """An image classification dataset as (N, 1, H, W) float tensors, normalised, on the CPU."""
    if name == "digits":
        return _digits()
    if name not in IMAGE_DIRS:
        raise ValueError(f"unknown image dataset '{name}'; known: digits, {', '.join(IMAGE_DIRS)}")
    return _mnist_like(name, str(data_dir) if data_dir else None)


# --- SST-2 -----------------------------------------------------------------------------------------

PAD, UNK = 0, 1


@functools.lru_cache(maxsize=4)
def _sst2_lines(path: Path) -> tuple[tuple[int, tuple[str, ...]], ...]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        label, _, sentence = line.partition(" ")
        if label not in ("0", "1"):
            raise ValueError(f"{path}:{number}: expected '<0 or 1> <sentence>', got {line[:40]!r}")
        rows.append((int(label), tuple(sentence.lower().split())))
    return tuple(rows)


def build_vocab(sentences: list[tuple[str, ...]], size: int) -> dict[str, int]:
    """The ``size - 2`` most frequent words (ties alphabetical), after <pad>=0 and <unk>=1."""
    counts = Counter(w for s in sentences for w in s)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max(size - 2, 0)]
    return {w: i + 2 for i, w in enumerate(words)}


def encode(sentences: list[tuple[str, ...]], vocab: dict[str, int], max_len: int) -> torch.Tensor:
    """(N, max_len) int64 ids, cut to max_len, padded with <pad>; unknown words map to <unk>."""
    out = torch.full((len(sentences), max_len), PAD, dtype=torch.int64)
    for i, s in enumerate(sentences):
        ids = [vocab.get(w, UNK) for w in s[:max_len]] or [UNK]  # an empty sentence reads as <unk>
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def sst2_data(
    vocab_size: int, max_len: int, data_dir: str | os.PathLike[str] | None = None
) -> ClassificationData:
    """SST-2 as (N, max_len) token ids with a vocabulary built from the training split."""
    d = str(data_dir) if data_dir else None
    splits = [_sst2_lines(find_file(f"sst2/stsa.binary.{part}", d)) for part in ("train", "dev", "test")]
    vocab = build_vocab([s for _, s in splits[0]], vocab_size)
    out = [Split(encode([s for _, s in rows], vocab, max_len), torch.tensor([y for y, _ in rows])) for rows in splits]
    return ClassificationData(*out, num_classes=2)
