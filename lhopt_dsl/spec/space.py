"""Exact counting of task settings.

A family entry of a mixture is a product of *axes*, one per field that changes the compiled
task. An axis is a finite set of values, or a :class:`LayerAxis` for stacks whose depth and
per-layer sizes are both sampled. Because every combination of axis values is a valid task (the
families check cross-field constraints on whole supports), an entry has exactly
``prod(len(axis))`` distinct settings, two entries of the same family intersect axis by axis,
and the number of distinct settings of a mixture follows by inclusion-exclusion over entries of
the same family (entries of different families never coincide).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, Union


@dataclass(frozen=True)
class LayerAxis:
    """Stacks of ``depth`` layers, each of a size from ``widths``.

    ``independent``: each layer draws its own size (``sum_d |widths|^d`` settings); otherwise all
    layers share one size (``|depths| * |widths|`` settings).
    """

    depths: frozenset[int]
    widths: frozenset[Any]
    independent: bool

    def __len__(self) -> int:
        w = len(self.widths)
        if self.independent:
            return sum(w**d for d in self.depths)
        return len(self.depths) * w

    def __and__(self, other: "LayerAxis") -> "LayerAxis":
        # A stack with one shared size is also an independent stack, so a shared-size axis
        # intersected with anything is a shared-size axis over the common depths and sizes.
        return LayerAxis(
            self.depths & other.depths,
            self.widths & other.widths,
            self.independent and other.independent,
        )

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        widths = sorted(self.widths)
        for d in sorted(self.depths):
            if self.independent:
                yield from itertools.product(widths, repeat=d)
            else:
                for w in widths:
                    yield (w,) * d


Axis = Union[frozenset, LayerAxis]
Axes = Mapping[str, Axis]


def axes_size(axes: Axes) -> int:
    n = 1
    for axis in axes.values():
        n *= len(axis)
    return n


def intersect(a: Axes, b: Axes) -> dict[str, Axis]:
    assert a.keys() == b.keys(), "entries of one family have the same axes"
    return {k: a[k] & b[k] for k in a}


def union_size(entries: Sequence[Axes]) -> int:
    """Number of distinct settings in the union of product sets (inclusion-exclusion)."""
    if len(entries) > 16:
        raise ValueError(
            f"{len(entries)} entries of one family: too many to count overlaps exactly (at most 16); "
            "merge entries that share a family"
        )
    total = 0
    for r in range(1, len(entries) + 1):
        for subset in itertools.combinations(entries, r):
            common = dict(subset[0])
            for other in subset[1:]:
                common = intersect(common, other)
            total += (-1) ** (r + 1) * axes_size(common)
    return total


def iter_settings(axes: Axes) -> Iterator[dict[str, Any]]:
    """Every setting of one entry, by brute force (for small spaces and tests)."""
    names = list(axes)
    values = [sorted(a, key=repr) if isinstance(a, frozenset) else list(a) for a in axes.values()]
    for combo in itertools.product(*values):
        yield dict(zip(names, combo))
