"""Exact counting of task settings.

A family entry of a mixture is a product of *axes*, one per field that changes the compiled
task. An axis is a finite set of values (a ``frozenset``, or a lazy ``range`` for an integer
range), or a :class:`LayerAxis` for stacks whose depth and per-layer sizes are both sampled.
Because every combination of axis values is a valid task (the families check cross-field
constraints on whole supports), an entry has exactly ``prod(len(axis))`` distinct settings, two
entries of the same family intersect axis by axis, and the number of distinct settings of a
mixture follows by inclusion-exclusion over entries of the same family (entries of different
families never coincide).

Counting is arithmetic: a range is never listed, and inclusion-exclusion over ``k`` entries reads,
for every subset of entries, how many values of each axis all of them share from a table built
once per axis (a superset-sum over ``2**k`` membership masks) instead of intersecting sets
``2**k`` times. Its cost is bounded by ``MAX_ENTRIES_PER_FAMILY`` and the caps of the families'
fields, never by a number in a spec.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

#: Most entries of one family in one mixture: inclusion-exclusion looks at every subset of them
#: (2**16 = 65,536 subsets take a few hundredths of a second per axis).
MAX_ENTRIES_PER_FAMILY = 16

Values = Union[frozenset, range]


def meet(a: Values, b: Values) -> Values:
    """The values two axes share; two ranges meet as a range, without listing either."""
    if isinstance(a, range) and isinstance(b, range):
        start, stop = max(a.start, b.start), min(a.stop, b.stop)
        return range(start, max(start, stop))
    if isinstance(a, range):
        a, b = b, a
    if isinstance(b, range):
        return frozenset(x for x in a if x in b)
    return a & b


@dataclass(frozen=True)
class LayerAxis:
    """Stacks of ``depth`` layers, each of a size from ``widths``.

    ``independent``: each layer draws its own size (``sum_d |widths|^d`` settings); otherwise all
    layers share one size (``|depths| * |widths|`` settings).
    """

    depths: Values
    widths: Values
    independent: bool

    def size(self) -> int:
        """Number of stacks. Not ``__len__``: Python's ``len`` cannot return more than 2**63 - 1,
        and 1,000 widths at a depth of 32 make 10**96 stacks."""
        w = len(self.widths)
        if self.independent:
            return sum(w**d for d in self.depths)  # depths are capped (families.MAX_LAYERS)
        return len(self.depths) * w

    def __and__(self, other: "LayerAxis") -> "LayerAxis":
        # A stack with one shared size is also an independent stack, so a shared-size axis
        # intersected with anything is a shared-size axis over the common depths and sizes.
        return LayerAxis(
            meet(self.depths, other.depths),
            meet(self.widths, other.widths),
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


Axis = Union[frozenset, range, LayerAxis]
Axes = Mapping[str, Axis]


def axis_size(axis: Axis) -> int:
    """Number of values of one axis (exact, however large)."""
    return axis.size() if isinstance(axis, LayerAxis) else len(axis)


def axes_size(axes: Axes) -> int:
    n = 1
    for axis in axes.values():
        n *= axis_size(axis)
    return n


def intersect(a: Axes, b: Axes) -> dict[str, Axis]:
    assert a.keys() == b.keys(), "entries of one family have the same axes"
    return {k: (a[k] & b[k]) if isinstance(a[k], LayerAxis) else meet(a[k], b[k]) for k in a}


def _superset_sums(counts: np.ndarray, k: int) -> np.ndarray:
    """``out[S] = sum(counts[T] for T ⊇ S)`` over ``k``-bit masks, in ``k`` vectorised passes."""
    out = counts.copy()
    for bit in range(k):
        view = out.reshape(-1, 2, 1 << bit)
        view[:, 0, :] += view[:, 1, :]
    return out


def _shared_counts(sets: Sequence[Values]) -> np.ndarray:
    """For every subset ``S`` of the ``k`` value sets (a bit mask), how many values all of ``S``
    hold: each value is counted once under the mask of the sets holding it, then summed over
    supersets. Ranges are cut into pieces at their ends, never listed."""
    k = len(sets)
    counts = np.zeros(1 << k, dtype=np.int64)
    listed: dict[Any, int] = {}  # each value written out somewhere -> mask of the sets holding it
    for i, values in enumerate(sets):
        if not isinstance(values, range):
            for v in values:
                listed[v] = listed.get(v, 0) | (1 << i)
    ranges = [(i, r) for i, r in enumerate(sets) if isinstance(r, range) and len(r)]
    ends = sorted({x for _, r in ranges for x in (r.start, r.stop)})
    inside = [0] * max(len(ends) - 1, 0)  # listed values within each piece between two ends
    for v, mask in listed.items():
        in_ranges = 0
        for i, r in ranges:
            if v in r:
                in_ranges |= 1 << i
        if in_ranges:
            inside[bisect.bisect_right(ends, v) - 1] += 1
        counts[mask | in_ranges] += 1
    for piece, (lo, hi) in enumerate(zip(ends, ends[1:])):
        mask = sum(1 << i for i, r in ranges if r.start <= lo and hi <= r.stop)
        if mask:
            counts[mask] += hi - lo - inside[piece]
    return _superset_sums(counts, k)


def _layer_counts(axes: Sequence[LayerAxis]) -> np.ndarray:
    """``len`` of the intersection of every subset of the ``k`` layer axes, as Python ints.

    A subset's stacks have the depths all of them allow and sizes all of them allow, and are
    independent only if every axis of the subset is; depths are few (capped), so each depth's
    term is added to the subsets that allow it.
    """
    k = len(axes)
    subsets = np.arange(1 << k)
    widths = _shared_counts([a.widths for a in axes]).astype(object)
    independent_mask = sum(1 << i for i, a in enumerate(axes) if a.independent)
    independent = (subsets & ~independent_mask) == 0
    depth_masks: dict[int, int] = {}
    for i, a in enumerate(axes):
        for d in a.depths:
            depth_masks[d] = depth_masks.get(d, 0) | (1 << i)
    out = np.zeros(1 << k, dtype=object)
    for d, mask in depth_masks.items():
        allowed = (subsets & mask) == subsets
        own = allowed & independent
        out[own] += widths[own] ** d
        shared = allowed & ~independent
        out[shared] += widths[shared]
    return out


def union_size(entries: Sequence[Axes]) -> int:
    """Number of distinct settings in the union of product sets (inclusion-exclusion, arithmetic)."""
    if len(entries) > MAX_ENTRIES_PER_FAMILY:
        raise ValueError(
            f"{len(entries)} entries of one family: too many to count overlaps exactly "
            f"(at most {MAX_ENTRIES_PER_FAMILY}); merge entries that share a family"
        )
    if len(entries) == 1:
        return axes_size(entries[0])
    k = len(entries)
    sizes = np.ones(1 << k, dtype=object)
    for name in entries[0]:
        column = [e[name] for e in entries]
        if all(isinstance(a, LayerAxis) for a in column):
            sizes = sizes * _layer_counts(column)  # type: ignore[arg-type]
        else:
            sizes = sizes * _shared_counts(column).astype(object)  # type: ignore[arg-type]
    subsets = np.arange(1 << k)
    odd = np.zeros(1 << k, dtype=bool)
    for bit in range(k):
        odd ^= ((subsets >> bit) & 1).astype(bool)
    signs = np.where(odd, 1, -1).astype(object)
    return int((sizes[1:] * signs[1:]).sum())


def iter_settings(axes: Axes) -> Iterator[dict[str, Any]]:
    """Every setting of one entry, by brute force (for small spaces and tests)."""
    names = list(axes)
    values = [list(a) if isinstance(a, LayerAxis) else sorted(a, key=repr) for a in axes.values()]
    for combo in itertools.product(*values):
        yield dict(zip(names, combo))
