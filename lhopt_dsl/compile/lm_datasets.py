"""Language-modelling datasets of the transformer family, as windows of token ids.

Why this module exists: a ``TransformerTask`` names its data with one of the DSL's
``LM_TRAIN_DATASETS`` / ``LM_OOD_DATASETS`` (:mod:`lhopt_dsl.spec.families`), and the compiler needs,
for any such name, a context length and a seed, three tensors of examples it can train and evaluate
a causal language model on. This module is the one place that turns a name into those tensors, so
that the same (name, seq_len, seed) gives the same tokens in every process and on every machine.

Every example is ``seq_len + 1`` token ids: a model reads ``x[:, :-1]`` and predicts ``x[:, 1:]``.

* **Synthetic tasks** (28 of them) are generated on the fly from explicit numpy generators seeded
  with ``[seed, crc32(name), split]``, so train / valid / test are independent draws and no global
  RNG is touched. Each task has a small alphabet of printable symbols; ids 0, 1, 2 are always
  ``PAD``, ``SEP`` (separator / end of an instance) and ``EQ`` ('='), and the task's symbols follow
  from id 3 on. :func:`decode` shows an example as text (``PAD`` '_', ``SEP`` ';', ``EQ`` '=').
  An instance is sized to (mostly) fill the window, then padded with ``PAD`` or truncated; stream
  tasks (chains, walks, repeated equations) fill the window completely.
* **Real corpora** are read once per process (cached per name and resolved path), tokenized by
  character or by word, and cut contiguously 90% / 5% / 5% into train / valid / test parts. Train
  windows start at offsets drawn from the seed; valid and test windows sit at fixed, evenly spaced,
  non-overlapping offsets of their own part (as many as fit, when fewer than asked for do).
"""

from __future__ import annotations

import ast
import functools
import os
import sysconfig
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch

from ..spec.families import LM_OOD_DATASETS, LM_TRAIN_DATASETS
from .datafiles import DataNotFoundError, find_file

__all__ = [
    "CHAR_CAP", "Corpus", "LMData", "LM_BUILDERS", "LM_DATASETS", "STDLIB_FILES", "WORD_CAP",
    "build_lm_data", "decode", "load_corpus", "markov_transition_table", "split_bounds",
]  # fmt: skip

#: Every language-modelling dataset name the DSL knows, training ones first.
LM_DATASETS: tuple[str, ...] = LM_TRAIN_DATASETS + LM_OOD_DATASETS

# Special ids shared by every synthetic task; a task's own symbols start at FIRST.
PAD, SEP, EQ, FIRST = 0, 1, 2, 3
_SPECIAL_CHARS = ("_", ";", "=")

# Generator streams: one per split, one for per-seed task structure (Markov tables).
_TRAIN, _VALID, _TEST, _TASK = 0, 1, 2, 3


class LMData(NamedTuple):
    """Token windows of one dataset; each row is ``seq_len + 1`` int64 ids on the CPU."""

    train: torch.Tensor  # (N_train, seq_len + 1)
    valid: torch.Tensor  # (N_valid, seq_len + 1)
    test: torch.Tensor  # (N_test, seq_len + 1)
    vocab_size: int  # every id is in [0, vocab_size)


class LMRequest(NamedTuple):
    """What a builder is asked for (validated by :func:`build_lm_data`)."""

    name: str
    seq_len: int
    seed: int
    data_dir: Union[str, os.PathLike, None]
    sizes: tuple[int, int, int]  # train, valid, test


Builder = Callable[[LMRequest], LMData]
#: Dataset name -> the function that builds it.
LM_BUILDERS: dict[str, Builder] = {}


def build_lm_data(
    name: str,
    seq_len: int,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    n_train: int = 4096,
    n_valid: int = 512,
    n_test: int = 512,
) -> LMData:
    """Build dataset ``name`` as windows of ``seq_len + 1`` tokens, deterministically from ``seed``.

    Real corpora may return fewer valid/test windows than asked for when their part is short.
    """
    builder = LM_BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown language-modelling dataset {name!r}; known datasets: {', '.join(LM_DATASETS)}")
    if seq_len < 1:
        raise ValueError(f"{name}: seq_len must be >= 1, got {seq_len}")
    if seed < 0:
        raise ValueError(f"{name}: seed must be >= 0, got {seed}")
    if min(n_train, n_valid, n_test) < 1:
        raise ValueError(f"{name}: n_train, n_valid and n_test must be >= 1, got {n_train}, {n_valid}, {n_test}")
    return builder(LMRequest(name, int(seq_len), int(seed), data_dir, (int(n_train), int(n_valid), int(n_test))))


def _rng(seed: int, name: str, stream: int) -> np.random.Generator:
    """An explicit generator for one (seed, dataset, stream); crc32 is stable across processes."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


# --- synthetic tasks: registration, encoding, decoding ---------------------------------------------

Sampler = Callable[[np.random.Generator, int, int], Union[np.ndarray, list]]
_SYMBOLS: dict[str, tuple[str, ...]] = {}


def _synthetic(name: str, symbols: str | Sequence[str], seeded: bool = False) -> Callable:
    """Register a synthetic task: ``fn(rng, n, length)`` returns ``n`` strings or an (n, length) id array.

    With ``seeded``, ``fn(seed)`` instead returns such a sampler (for structure drawn from the seed).
    """

    def register(fn: Callable) -> Callable:
        _SYMBOLS[name] = tuple(symbols)
        make = fn if seeded else (lambda seed: fn)
        LM_BUILDERS[name] = functools.partial(_build_synthetic, make=make, symbols=tuple(symbols))
        return fn

    return register


def _build_synthetic(req: LMRequest, make: Callable[[int], Sampler], symbols: tuple[str, ...]) -> LMData:
    sampler = make(req.seed)
    length = req.seq_len + 1
    splits = []
    for stream, count in zip((_TRAIN, _VALID, _TEST), req.sizes):
        out = sampler(_rng(req.seed, req.name, stream), count, length)
        ids = _encode(out, symbols, length) if isinstance(out, list) else out
        assert ids.shape == (count, length), (req.name, ids.shape)
        splits.append(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)))
    return LMData(*splits, vocab_size=FIRST + len(symbols))


@functools.lru_cache(maxsize=None)
def _lookup(symbols: tuple[str, ...]) -> np.ndarray:
    """Byte -> token id for single-character alphabets (-1 for bytes outside the alphabet)."""
    table = np.full(256, -1, np.int64)
    for i, ch in enumerate(_SPECIAL_CHARS + symbols):
        table[ord(ch)] = i
    return table


def _encode(strings: list[str], symbols: tuple[str, ...], length: int) -> np.ndarray:
    """Pad ('_') or truncate every string to ``length`` and map characters to ids in one pass."""
    text = "".join(s[:length].ljust(length, "_") for s in strings).encode("ascii")
    ids = _lookup(symbols)[np.frombuffer(text, np.uint8)].reshape(len(strings), length)
    assert (ids >= 0).all(), f"a generator produced a character outside {symbols}"
    return ids


def decode(name: str, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
    """Render one synthetic example as text: PAD '_', SEP ';', EQ '=', symbols as themselves."""
    if name not in _SYMBOLS:
        raise ValueError(f"{name!r} is not a synthetic language-modelling dataset; known: {', '.join(_SYMBOLS)}")
    table = _SPECIAL_CHARS + _SYMBOLS[name]
    joiner = "" if all(len(s) == 1 for s in table) else " "
    return joiner.join(table[int(i)] for i in ids)


def _pack(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Stack variable-length id rows into (n, length), padding with PAD and truncating."""
    out = np.full((len(rows), length), PAD, np.int64)
    for i, row in enumerate(rows):
        row = row[:length]
        out[i, : len(row)] = row
    return out


def _lengths(rng: np.random.Generator, n: int, hi: int, lo: int | None = None) -> np.ndarray:
    """Instance sizes uniform in [lo, hi] (default lo: ceil(hi / 2), so instances mostly fill)."""
    hi = max(1, hi)
    lo = (hi + 1) // 2 if lo is None else min(lo, hi)
    return rng.integers(lo, hi + 1, size=n)


def _words(rng: np.random.Generator, alphabet: str, lens: np.ndarray) -> list[str]:
    """Uniformly random strings over ``alphabet`` with the given lengths."""
    table = np.frombuffer(alphabet.encode("ascii"), np.uint8)
    mat = table[rng.integers(0, len(alphabet), size=(len(lens), int(lens.max())))]
    return [row[:k].tobytes().decode("ascii") for row, k in zip(mat, lens)]


def _numbers(rng: np.random.Generator, n: int, digits: int) -> list[int]:
    """Random integers written with a uniformly random number of digits in [1, digits]."""
    return [int(s) for s in _words(rng, DIGITS, _lengths(rng, n, digits, lo=1))]


def _cumulative(probs: np.ndarray) -> np.ndarray:
    """Row-wise CDFs that reach exactly 1.0 at each row's last positive entry (no float leaks)."""
    cum = np.cumsum(probs, axis=1)
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    cum[np.arange(probs.shape[1])[None, :] >= last[:, None]] = 1.0
    return cum


def _draw(cum_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: one index per row of ``cum_rows`` from uniforms ``u`` in [0, 1)."""
    return (cum_rows <= u[:, None]).sum(axis=1)


LETTERS = "abcdefghij"
DIGITS = "0123456789"

# --- synthetic tasks: sequence transductions "x;f(x);" ----------------------------------------------


@_synthetic("copy", LETTERS)
def _copy(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """copy: random letters, a separator, the same letters again, a separator."""
    return [f"{x};{x};" for x in _words(rng, LETTERS, _lengths(rng, n, (length - 2) // 2))]


@_synthetic("reverse", LETTERS)
def _reverse(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """reverse: random letters, a separator, the letters in reverse order, a separator."""
    return [f"{x};{x[::-1]};" for x in _words(rng, LETTERS, _lengths(rng, n, (length - 2) // 2))]


@_synthetic("sort", LETTERS)
def _sort(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """sort: random letters, a separator, the same letters sorted, a separator."""
    return [f"{x};{''.join(sorted(x))};" for x in _words(rng, LETTERS, _lengths(rng, n, (length - 2) // 2))]


@_synthetic("duplicate", LETTERS)
def _duplicate(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """duplicate: random letters each written twice in a row ('aabbcc'), a separator."""
    return ["".join(c + c for c in x) + ";" for x in _words(rng, LETTERS, _lengths(rng, n, (length - 1) // 2))]


@_synthetic("palindrome", LETTERS)
def _palindrome(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """palindrome: random letters, an optional middle letter, the letters reversed, a separator."""
    xs = _words(rng, LETTERS, _lengths(rng, n, (length - 2) // 2))
    middles = _words(rng, LETTERS, rng.integers(0, 2, size=n))
    return [x + m + x[::-1] + ";" for x, m in zip(xs, middles)]


_INTERLEAVE_LEFT, _INTERLEAVE_RIGHT = "abcdefgh", "01234567"


@_synthetic("interleave", _INTERLEAVE_LEFT + _INTERLEAVE_RIGHT)
def _interleave(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """interleave: letters x, a separator, digits y of the same length, '=', then x1 y1 x2 y2 ..."""
    lens = _lengths(rng, n, (length - 3) // 4)
    xs, ys = _words(rng, _INTERLEAVE_LEFT, lens), _words(rng, _INTERLEAVE_RIGHT, lens)
    return [f"{x};{y}=" + "".join(a + b for a, b in zip(x, y)) + ";" for x, y in zip(xs, ys)]


_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_SHIFTS = [str.maketrans(_ALPHABET, _ALPHABET[k:] + _ALPHABET[:k]) for k in range(26)]


@_synthetic("caesar", _ALPHABET)
def _caesar(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """caesar: a key letter, a separator, plaintext, '=', the plaintext shifted by the key ('a' = 0)."""
    xs = _words(rng, _ALPHABET, _lengths(rng, n, (length - 4) // 2))
    keys = rng.integers(0, 26, size=n)
    return [f"{_ALPHABET[k]};{x}={x.translate(_SHIFTS[k])};" for x, k in zip(xs, keys)]


@_synthetic("cumulative_sum", DIGITS)
def _cumulative_sum(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """cumulative_sum: random digits, a separator, their running sums mod 10, a separator."""
    out = []
    for x in _words(rng, DIGITS, _lengths(rng, n, (length - 2) // 2)):
        sums = np.cumsum(np.frombuffer(x.encode(), np.uint8) - 48) % 10 + 48
        out.append(f"{x};{sums.astype(np.uint8).tobytes().decode()};")
    return out


_COUNT_LETTERS = "abcd"


@_synthetic("count", _COUNT_LETTERS + DIGITS)
def _count(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """count: letters from 'abcd', a separator, a query letter, '=', how often it occurs (decimal)."""
    hi = max(1, length - 5)
    while hi > 1 and hi + 4 + len(str(hi)) > length:
        hi -= 1
    xs = _words(rng, _COUNT_LETTERS, _lengths(rng, n, hi))
    queries = rng.integers(0, len(_COUNT_LETTERS), size=n)
    return [f"{x};{_COUNT_LETTERS[q]}={x.count(_COUNT_LETTERS[q])};" for x, q in zip(xs, queries)]


_HIST_SYMBOLS, _HIST_COUNTS = "abcdefgh", "123456789ABCDEFG"  # counts 1..16, 'G' = 16 or more


@_synthetic("histogram", _HIST_SYMBOLS + _HIST_COUNTS)
def _histogram(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """histogram: random letters, a separator, then for each letter its count in the whole input."""
    lens = _lengths(rng, n, (length - 2) // 2)
    xs = rng.integers(0, len(_HIST_SYMBOLS), size=(n, int(lens.max())))
    rows = []
    for x, k in zip(xs, lens):
        counts = np.minimum(np.bincount(x[:k], minlength=len(_HIST_SYMBOLS))[x[:k]], len(_HIST_COUNTS))
        rows.append(np.concatenate([x[:k] + FIRST, [SEP], counts - 1 + FIRST + len(_HIST_SYMBOLS), [SEP]]))
    return _pack(rows, length)


@_synthetic("majority", "ab")
def _majority(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """majority: an odd number of 'a'/'b' (per-example bias), a separator, the more frequent letter."""
    lens = 2 * _lengths(rng, n, (length - 2) // 2) - 1  # odd, so there is never a tie
    bias = rng.uniform(0.1, 0.9, size=(n, 1))
    bits = rng.random((n, int(lens.max()))) < bias
    chars = np.where(bits, ord("b"), ord("a")).astype(np.uint8)
    answers = ["b" if 2 * b[:k].sum() > k else "a" for b, k in zip(bits, lens)]
    return [f"{row[:k].tobytes().decode()};{a};" for row, a, k in zip(chars, answers, lens)]


# --- synthetic tasks: arithmetic -------------------------------------------------------------------


@_synthetic("addition", DIGITS + "+")
def _addition(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """addition: 'a+b=c;' with decimal numbers of up to (seq_len - 3) // 3 digits."""
    digits = max(1, (length - 4) // 3)
    return [f"{a}+{b}={a + b};" for a, b in zip(_numbers(rng, n, digits), _numbers(rng, n, digits))]


@_synthetic("multiplication", DIGITS + "*")
def _multiplication(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """multiplication: 'a*b=c;' with decimal numbers of up to (seq_len - 2) // 4 digits."""
    digits = max(1, (length - 3) // 4)
    return [f"{a}*{b}={a * b};" for a, b in zip(_numbers(rng, n, digits), _numbers(rng, n, digits))]


MODULUS = 17
_RESIDUES = "0123456789abcdefg"  # the residues 0..16 as single symbols


@_synthetic("modular_addition", _RESIDUES + "+")
def _modular_addition(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """modular_addition: a stream of 'a+b=c;' where c = (a + b) mod 17, residues as single symbols."""
    k = -(-length // 6)
    a, b = rng.integers(0, MODULUS, size=(2, n, k))
    const = functools.partial(np.full, (n, k))
    parts = [a + FIRST, const(FIRST + MODULUS), b + FIRST, const(EQ), (a + b) % MODULUS + FIRST, const(SEP)]
    return np.stack(parts, axis=2).reshape(n, 6 * k)[:, :length]


@_synthetic("successor", DIGITS)
def _successor(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """successor: a random start number (1-6 digits), then each following integer: '41;42;43;...'."""
    starts = rng.integers(0, 10 ** rng.integers(1, 7, size=n))
    return [";".join(map(str, range(s, s + length // 2 + 1))) for s in starts.tolist()]


@_synthetic("fibonacci", DIGITS)
def _fibonacci(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """fibonacci: two random numbers in [0, 99], then each number the sum of the previous two."""
    out = []
    for a, b in rng.integers(0, 100, size=(n, 2)).tolist():
        parts, size = [], 0
        while size < length:
            parts.append(f"{a};")
            size += len(parts[-1])
            a, b = b, a + b
        out.append("".join(parts))
    return out


@_synthetic("arithmetic_expressions", DIGITS + "+-*()")
def _arithmetic_expressions(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """arithmetic_expressions: a random parenthesised expression over digits and + - *, '=', its value mod 10."""
    hi = max(1, (length + 2) // 4)  # m leaves take 4m - 5 characters, plus '=', the value and ';'
    leaves = _lengths(rng, n, hi)
    uniforms = rng.random((n, 3 * hi)).tolist()
    out = []
    for m, u in zip(leaves.tolist(), uniforms):
        text, value = _expression(m, iter(u), top=True)
        out.append(f"{text}={value};")
    return out


def _expression(leaves: int, u: Iterator[float], top: bool = False) -> tuple[str, int]:
    """A random binary expression tree with ``leaves`` digits: its text and its value mod 10."""
    if leaves == 1:
        digit = int(next(u) * 10)
        return str(digit), digit
    left = 1 + int(next(u) * (leaves - 1))
    op = "+-*"[int(next(u) * 3)]
    left_text, a = _expression(left, u)
    right_text, b = _expression(leaves - left, u)
    value = (a + b if op == "+" else a - b if op == "-" else a * b) % 10
    text = f"{left_text}{op}{right_text}"
    return (text if top else f"({text})"), value


# --- synthetic tasks: formal languages -------------------------------------------------------------


def _dyck(rng: np.random.Generator, n: int, length: int, kinds: int) -> np.ndarray:
    """Random balanced bracket strings (open i = FIRST + 2i, close i = FIRST + 2i + 1), then SEP."""
    pairs = _lengths(rng, n, (length - 1) // 2)
    total = 2 * pairs
    out = np.full((n, length), PAD, np.int64)
    stack = np.zeros((n, int(pairs.max()) + 1), np.int64)
    depth = np.zeros(n, np.int64)
    rows = np.arange(n)
    for t in range(min(length, int(total.max()))):
        active = t < total
        opens = active & (depth < total - t) & ((depth == 0) | (rng.random(n) < 0.5))
        closes = active & ~opens
        kind = rng.integers(0, kinds, size=n)
        stack[rows[opens], depth[opens]] = kind[opens]
        top = stack[rows, np.maximum(depth - 1, 0)]
        out[:, t] = np.where(opens, FIRST + 2 * kind, np.where(closes, FIRST + 2 * top + 1, PAD))
        depth += opens.astype(np.int64) - closes.astype(np.int64)
    ends = total < length
    out[rows[ends], total[ends]] = SEP
    return out


@_synthetic("dyck1", "()")
def _dyck1(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """dyck1: a random balanced string of round brackets, a separator."""
    return _dyck(rng, n, length, kinds=1)


@_synthetic("dyck2", "()[]")
def _dyck2(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """dyck2: a random balanced string over two bracket types '()' and '[]', a separator."""
    return _dyck(rng, n, length, kinds=2)


@_synthetic("anbn", "ab")
def _anbn(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """anbn: k 'a's then k 'b's and a separator, k uniform in [1, seq_len // 2]."""
    return ["a" * k + "b" * k + ";" for k in _lengths(rng, n, (length - 1) // 2, lo=1).tolist()]


# --- synthetic tasks: streams ----------------------------------------------------------------------


@_synthetic("parity_stream", "01eo")
def _parity_stream(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """parity_stream: random bits, each followed by the parity of all bits so far ('e' even, 'o' odd)."""
    k = -(-length // 2)
    bits = rng.integers(0, 2, size=(n, k))
    parity = np.cumsum(bits, axis=1) % 2
    return np.stack([bits + FIRST, parity + FIRST + 2], axis=2).reshape(n, 2 * k)[:, :length]


_RING = "0123456789abcdef"


@_synthetic("random_walk", "<>" + _RING)
def _random_walk(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """random_walk: a start position on a ring of 16, then alternating moves ('<', '>') and new positions."""
    k = length // 2
    steps = rng.integers(0, 2, size=(n, k))
    start = rng.integers(0, len(_RING), size=(n, 1))
    positions = (start + np.cumsum(2 * steps - 1, axis=1)) % len(_RING)
    out = np.empty((n, 2 * k + 1), np.int64)
    out[:, :1] = start + FIRST + 2
    out[:, 1::2] = steps + FIRST
    out[:, 2::2] = positions + FIRST + 2
    return out[:, :length]


@_synthetic("periodic", "abcdefgh")
def _periodic(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """periodic: a random pattern of 2-8 letters repeated to fill the window."""
    periods = rng.integers(2, 9, size=(n, 1))
    patterns = rng.integers(0, 8, size=(n, 8))
    return np.take_along_axis(patterns, np.arange(length)[None, :] % periods, axis=1) + FIRST


_KEYS, _VALUES = "abcdefghijklmnop", "ABCDEFGHIJKLMNOP"


@_synthetic("associative_recall", _KEYS + _VALUES)
def _associative_recall(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """associative_recall: distinct keys each followed by its value, a separator, then queried keys and their values."""
    pairs = _lengths(rng, n, min(len(_KEYS), (length - 3) // 2))
    keys = np.argsort(rng.random((n, len(_KEYS))), axis=1)
    value_of = rng.integers(0, len(_VALUES), size=(n, len(_KEYS)))  # value_of[i, key]

    def with_values(k: np.ndarray) -> np.ndarray:
        v = np.take_along_axis(value_of, k, axis=1)
        return np.stack([k + FIRST, v + FIRST + len(_KEYS)], axis=2).reshape(n, -1)

    queries = np.take_along_axis(keys, (rng.random((n, length // 2 + 1)) * pairs[:, None]).astype(np.int64), axis=1)
    context, asked = with_values(keys), with_values(queries)
    return _pack([np.concatenate([c[: 2 * p], [SEP], q]) for c, q, p in zip(context, asked, pairs)], length)


# --- synthetic tasks: Markov chains and a finite-state grammar -------------------------------------

MARKOV_SYMBOLS = "abcdefghijkl"
_MARKOV_FANOUT = 3  # next tokens with non-zero probability after each context


def markov_transition_table(order: int, seed: int) -> np.ndarray:
    """P(next | previous ``order`` tokens) of ``markov{order}`` for ``seed``: shape (12**order, 12).

    A context is the previous tokens (symbol indices, id - 3) read as a base-12 number, oldest
    first. Each context allows 3 random next symbols with Dirichlet(1, 1, 1) weights; the table is
    shared by the train, valid and test splits of a seed. Useful for the achievable loss, too.
    """
    rng = _rng(seed, f"markov{order}", _TASK)
    v = len(MARKOV_SYMBOLS)
    support = np.argsort(rng.random((v**order, v)), axis=1)[:, :_MARKOV_FANOUT]
    table = np.zeros((v**order, v))
    np.put_along_axis(table, support, rng.dirichlet(np.ones(_MARKOV_FANOUT), size=v**order), axis=1)
    return table


def _markov(order: int) -> Callable[[int], Sampler]:
    def make(seed: int) -> Sampler:
        cum = _cumulative(markov_transition_table(order, seed))
        return functools.partial(_sample_markov, order=order, cum=cum)

    return make


def _sample_markov(rng: np.random.Generator, n: int, length: int, order: int, cum: np.ndarray) -> np.ndarray:
    v = len(MARKOV_SYMBOLS)
    tokens = np.empty((n, length), np.int64)
    tokens[:, :order] = rng.integers(0, v, size=(n, min(order, length)))
    u = rng.random((n, length))
    powers = v ** np.arange(order - 1, -1, -1)
    for t in range(order, length):
        tokens[:, t] = _draw(cum[tokens[:, t - order : t] @ powers], u[:, t])
    return tokens + FIRST


for _order in (1, 2, 3):
    # markov{k}: a random order-k Markov chain over 12 letters whose transition table is drawn from the seed.
    _synthetic(f"markov{_order}", MARKOV_SYMBOLS, seeded=True)(_markov(_order))


_WORDS = {
    "det": ("the", "a", "every", "some"),
    "adj": ("big", "small", "red", "old", "happy"),
    "noun": ("cat", "dog", "bird", "child", "teacher", "ball", "house"),
    "verb": ("sees", "likes", "chases", "finds", "owns"),
    "prep": ("near", "with", "under"),
    "and": ("and",),
    "end": (".",),
}
# state: (word class it emits, {next state: probability}); sentences start in "subj_det".
_GRAMMAR = {
    "subj_det": ("det", {"subj_adj": 0.3, "subj_noun": 0.7}),
    "subj_adj": ("adj", {"subj_adj": 0.2, "subj_noun": 0.8}),
    "subj_noun": ("noun", {"verb": 1.0}),
    "verb": ("verb", {"obj_det": 0.8, "end": 0.2}),
    "obj_det": ("det", {"obj_adj": 0.3, "obj_noun": 0.7}),
    "obj_adj": ("adj", {"obj_adj": 0.2, "obj_noun": 0.8}),
    "obj_noun": ("noun", {"end": 0.6, "prep": 0.25, "and": 0.15}),
    "prep": ("prep", {"obj_det": 1.0}),
    "and": ("and", {"subj_det": 1.0}),
    "end": ("end", {"subj_det": 1.0}),
}
_GRAMMAR_SYMBOLS = tuple(w for words in _WORDS.values() for w in words)


def _grammar_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transition CDFs between states, and each state's first word id and number of words."""
    states = list(_GRAMMAR)
    probs = np.zeros((len(states), len(states)))
    for i, (_, nxt) in enumerate(_GRAMMAR.values()):
        for state, p in nxt.items():
            probs[i, states.index(state)] = p
    first_word = {c: FIRST + _GRAMMAR_SYMBOLS.index(words[0]) for c, words in _WORDS.items()}
    offsets = np.array([first_word[c] for c, _ in _GRAMMAR.values()])
    sizes = np.array([len(_WORDS[c]) for c, _ in _GRAMMAR.values()])
    return _cumulative(probs), offsets, sizes


@_synthetic("bigram_grammar", _GRAMMAR_SYMBOLS)
def _bigram_grammar(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """bigram_grammar: a stream of sentences ('the big dog sees a cat .') from a fixed finite-state grammar."""
    cum, offsets, sizes = _grammar_tables()
    state = np.zeros(n, np.int64)
    out = np.empty((n, length), np.int64)
    u_word, u_next = rng.random((2, n, length))
    for t in range(length):
        out[:, t] = offsets[state] + (u_word[:, t] * sizes[state]).astype(np.int64)
        state = _draw(cum[state], u_next[:, t])
    return out


# --- real corpora ---------------------------------------------------------------------------------

CHAR_CAP = 256  # most frequent characters kept; the rest map to <unk>
WORD_CAP = 2000  # most frequent words kept (ties alphabetical); the rest map to <unk>
UNK, EOS = "<unk>", "<eos>"
_SST2_FILE = "sst2/stsa.binary.train"
_SHAKESPEARE_FILE = "text/tinyshakespeare.txt"
#: Pure-Python standard-library files read (never imported) for the stdlib corpora; missing ones are skipped.
STDLIB_FILES: tuple[str, ...] = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "cmd.py", "codecs.py",
    "colorsys.py", "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py",
    "difflib.py", "enum.py", "fnmatch.py", "fractions.py", "functools.py", "getopt.py", "gettext.py",
    "heapq.py", "ipaddress.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
    "keyword.py", "linecache.py", "numbers.py", "operator.py", "pprint.py", "queue.py", "random.py",
    "sched.py", "shlex.py", "statistics.py", "string.py", "textwrap.py", "tokenize.py", "types.py",
    "weakref.py",
)  # fmt: skip


class Corpus(NamedTuple):
    """A tokenized corpus: the whole token stream (read-only int64) and the id -> token table."""

    tokens: np.ndarray
    vocab: tuple[str, ...]


def _sst2_text(path: Path) -> str:
    """The sentences of an SST-2 file, labels dropped, one per line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(line.partition(" ")[2].strip() for line in lines if line.strip())


def _plain_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _stdlib_paths(stdlib: Path) -> list[Path]:
    paths = [stdlib / rel for rel in STDLIB_FILES if (stdlib / rel).is_file()]
    if not paths:
        raise DataNotFoundError(f"none of the standard-library files {STDLIB_FILES} were found under {stdlib}")
    return paths


def _stdlib_source(stdlib: Path) -> str:
    return "\n".join(_plain_text(p) for p in _stdlib_paths(stdlib))


def _stdlib_docstrings(stdlib: Path) -> str:
    """Module, class and function docstrings of the stdlib files, in file and ``ast.walk`` order."""
    docs = []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in _stdlib_paths(stdlib):
        tree = ast.parse(_plain_text(path), filename=str(path))
        docs += [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]
    return "\n\n".join(docs)


class _Source(NamedTuple):
    locate: Callable[[Union[str, os.PathLike, None]], Path]
    read: Callable[[Path], str]
    words: bool  # word-level (else character-level)


def _data_file(relpath: str) -> Callable[[Union[str, os.PathLike, None]], Path]:
    return lambda data_dir: find_file(relpath, data_dir)


def _stdlib_dir(data_dir: Union[str, os.PathLike, None]) -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_CORPORA: dict[str, _Source] = {
    "sst2_chars": _Source(_data_file(_SST2_FILE), _sst2_text, words=False),
    "sst2_words": _Source(_data_file(_SST2_FILE), _sst2_text, words=True),
    "stdlib_docstrings": _Source(_stdlib_dir, _stdlib_docstrings, words=False),
    "stdlib_source": _Source(_stdlib_dir, _stdlib_source, words=False),
    "tinyshakespeare": _Source(_data_file(_SHAKESPEARE_FILE), _plain_text, words=False),
}


def load_corpus(name: str, data_dir: str | os.PathLike | None = None) -> Corpus:
    """The whole tokenized stream of real corpus ``name`` (read once per process and path)."""
    if name not in _CORPORA:
        raise ValueError(f"{name!r} is not a real-text corpus; known: {', '.join(_CORPORA)}")
    path = _CORPORA[name].locate(data_dir)
    return _read_corpus(name, str(path.resolve()))


@functools.lru_cache(maxsize=None)
def _read_corpus(name: str, path: str) -> Corpus:
    source = _CORPORA[name]
    text = source.read(Path(path))
    corpus = _word_corpus(text) if source.words else _char_corpus(text)
    corpus.tokens.flags.writeable = False  # shared by every build: nobody may change it
    return corpus


def _char_corpus(text: str, cap: int = CHAR_CAP) -> Corpus:
    """Character ids: the corpus's characters sorted (at most ``cap`` most frequent), then <unk>."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    chars, counts = np.unique(codes, return_counts=True)
    if len(chars) > cap:
        chars = np.sort(chars[np.lexsort((chars, -counts))[:cap]])
    ids = np.searchsorted(chars, codes)
    known = chars[np.minimum(ids, len(chars) - 1)] == codes
    tokens = np.where(known, ids, len(chars)).astype(np.int64)
    return Corpus(tokens, tuple(chr(c) for c in chars.tolist()) + (UNK,))


def _word_corpus(text: str, cap: int = WORD_CAP) -> Corpus:
    """Word ids: the ``cap`` most frequent words (ties alphabetical), then <unk> and <eos>; one sentence a line."""
    sentences = [line.split() for line in text.split("\n") if line.strip()]
    counts = Counter(w for s in sentences for w in s)
    vocab = tuple(sorted(counts, key=lambda w: (-counts[w], w))[:cap]) + (UNK, EOS)
    index = {w: i for i, w in enumerate(vocab[:-2])}
    unk, eos = len(vocab) - 2, len(vocab) - 1
    tokens = [i for s in sentences for i in [*(index.get(w, unk) for w in s), eos]]
    return Corpus(np.array(tokens, dtype=np.int64), vocab)


def split_bounds(size: int) -> tuple[int, int, int, int]:
    """Where the train / valid / test parts of a stream of ``size`` tokens start and end (90/5/5)."""
    return 0, size * 9 // 10, size * 19 // 20, size


def _build_corpus(req: LMRequest) -> LMData:
    corpus = load_corpus(req.name, req.data_dir)
    length = req.seq_len + 1
    bounds = split_bounds(len(corpus.tokens))
    parts = [corpus.tokens[a:b] for a, b in zip(bounds, bounds[1:])]
    for part, split in zip(parts, ("train", "valid", "test")):
        if len(part) < length:
            raise ValueError(f"{req.name}: seq_len {req.seq_len} is too long for its {split} part ({len(part)} tokens)")
    train_starts = _rng(req.seed, req.name, _TRAIN).integers(0, len(parts[0]) - length + 1, size=req.sizes[0])
    starts = [train_starts, _spaced(len(parts[1]), length, req.sizes[1]), _spaced(len(parts[2]), length, req.sizes[2])]
    windows = [torch.from_numpy(part[s[:, None] + np.arange(length)]) for part, s in zip(parts, starts)]
    return LMData(*windows, vocab_size=len(corpus.vocab))


def _spaced(size: int, length: int, count: int) -> np.ndarray:
    """Evenly spaced, non-overlapping window starts: ``count`` of them, or as many as fit (>= 1)."""
    count = max(1, min(count, size // length))
    return np.arange(count, dtype=np.int64) * (size // count)


for _name in _CORPORA:
    LM_BUILDERS[_name] = _build_corpus
