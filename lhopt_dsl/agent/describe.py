"""What an optimizer can see of the model it trains before the first step: a fixed-size,
unit-free description from the parameters' shapes and the run's length.

A drop-in optimizer has no task description (which family, which dataset), but it holds the
parameters and is told how many steps the run has. docs/RESULTS.md ("The level is the task's")
finds that the learning-rate level a task wants is predicted from its description by a non-linear
rule, and about as well from this one, which needs nothing the drop-in lacks.

The entries (:data:`DESCRIPTOR_NAMES`):

* the size of the model: log of its parameter count, of its number of tensors, of the largest
  tensor's size, of the median tensor's size, of the largest dimension of any tensor;
* how it is built: the shares of parameters in tensors of rank 1 (biases, norms, vectors), rank 2
  (linear layers, embeddings, recurrent weights) and rank 3 or more (convolutions); the shares in
  rank-2 tensors whose rows are three or four times their columns (the stacked gates of GRU and
  LSTM cells);
* the run: log of its steps and of its decisions.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

DESCRIPTOR_NAMES: tuple[str, ...] = (
    "log_params", "log_tensors", "log_largest", "log_median", "log_widest",
    "share_rank1", "share_rank2", "share_rank3plus", "share_gates3", "share_gates4",
    "log_steps", "log_decisions",
)  # fmt: skip


def model_descriptor(shapes: Iterable[Sequence[int]], steps: int, decisions: int) -> np.ndarray:
    """The description (:data:`DESCRIPTOR_NAMES`, float64) of a model whose parameters have
    ``shapes`` (a scalar parameter counts as one element of rank 1; parameters without elements
    are left out), trained for ``steps`` steps with ``decisions`` decisions."""
    shapes = [s for s in (tuple(int(d) for d in s) or (1,) for s in shapes) if min(s) > 0]
    if not shapes or steps < 1 or decisions < 1:
        raise ValueError("a model to describe has at least one parameter with elements, and its run a step and a decision")
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    total = sizes.sum()
    ranks = np.array([len(s) for s in shapes])

    def gates(k: int) -> float:
        return float(sum(n for s, n in zip(shapes, sizes) if len(s) == 2 and s[0] == k * s[1]) / total)

    return np.array([
        math.log(total), math.log(len(shapes)), math.log(sizes.max()), math.log(float(np.median(sizes))),
        math.log(max(max(s) for s in shapes)),
        sizes[ranks == 1].sum() / total, sizes[ranks == 2].sum() / total, sizes[ranks >= 3].sum() / total,
        gates(3), gates(4),
        math.log(steps), math.log(decisions),
    ], dtype=np.float64)  # fmt: skip
