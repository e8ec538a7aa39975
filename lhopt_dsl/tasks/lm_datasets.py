"""Language-modelling datasets of the transformer family, as windows of token ids.

Why this module exists: a ``TransformerTask`` names its data with one of the DSL's
``LM_TEXT_DATASETS`` / ``LM_ALGO_DATASETS`` / ``LM_OOD_DATASETS`` (:mod:`lhopt_dsl.spec.families`),
and the compiler needs, for any such name, a context length and a seed, three tensors of examples it
can train and evaluate a causal language model on. This module is the one place that turns a name
into those tensors, so that the same (name, seq_len, seed) gives the same tokens in every process
and on every machine.

Every example is ``seq_len + 1`` token ids: a model reads ``x[:, :-1]`` and predicts ``x[:, 1:]``.

* **Synthetic tasks** (51 of them) are generated on the fly from explicit numpy generators seeded
  with ``[seed, crc32(name), split]``, so train / valid / test are independent draws and no global
  RNG is touched. 23 are *algorithmic* (a deterministic rule: copy, sort, add, balance brackets...)
  and held out of training; 28 are *text-like* stochastic languages (Markov chains, hidden Markov
  models, grammars, Zipfian, topic-mixture and Pitman-Yor word languages...), whose structure
  (transition tables, lexicons, rankings) is drawn from the seed alone, shared by its three splits. Each task has a small alphabet of printable symbols; ids 0, 1, 2 are always
  ``PAD``, ``SEP`` (separator / end of an instance) and ``EQ`` ('='), and the task's symbols follow
  from id 3 on. :func:`decode` shows an example as text (``PAD`` '_', ``SEP`` ';', ``EQ`` '=').
  An instance is sized to (mostly) fill the window, then padded with ``PAD`` or truncated; stream
  tasks (chains, walks, repeated equations, every text-like language) fill the window completely.
  Word-level languages use :data:`WORD_LEXICON` (or the grammar's English words) as their symbols.
* **Real corpora** are read once per process (cached per name and resolved path), tokenized by
  character or by word, and cut contiguously 90% / 5% / 5% into train / valid / test parts. Train
  windows start at offsets drawn from the seed; valid and test windows sit at fixed, evenly spaced,
  non-overlapping offsets of their own part (as many as fit, when fewer than asked for do).
"""

from __future__ import annotations

import ast
import functools
import itertools
import os
import sysconfig
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch

from ..spec.families import LM_DATASETS
from .datafiles import DataNotFoundError, find_file

__all__ = [
    "CHAR_CAP", "Corpus", "LMData", "LM_BUILDERS", "LM_DATASETS", "STDLIB_FILES", "WORD_CAP",
    "WORD_LEXICON", "build_lm_data", "decode", "load_corpus", "markov_transition_table", "split_bounds",
    "vocab_size",
]  # fmt: skip

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


def vocab_size(name: str) -> int:
    """Vocabulary size of dataset ``name`` without building it: exact for a synthetic task, the
    most a real corpus can have (its character or word cap, plus its special tokens) otherwise."""
    if name in _SYMBOLS:
        return FIRST + len(_SYMBOLS[name])
    if name in _CORPORA:
        return WORD_CAP + 2 if _CORPORA[name].words else CHAR_CAP + 1
    raise ValueError(f"unknown language-modelling dataset {name!r}; known datasets: {', '.join(LM_DATASETS)}")


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
    v = len(MARKOV_SYMBOLS)
    return _sparse_table(_rng(seed, f"markov{order}", _TASK), v**order, v, _MARKOV_FANOUT)


def _sparse_table(rng: np.random.Generator, rows: int, size: int, fanout: int) -> np.ndarray:
    """A (rows, size) table of distributions: each row allows ``fanout`` random entries, Dirichlet(1) weights."""
    support = np.argsort(rng.random((rows, size)), axis=1)[:, :fanout]
    table = np.zeros((rows, size))
    np.put_along_axis(table, support, rng.dirichlet(np.ones(fanout), size=rows), axis=1)
    return table


def _markov(order: int) -> Callable[[int], Sampler]:
    def make(seed: int) -> Sampler:
        cum = _cumulative(markov_transition_table(order, seed))
        return functools.partial(_sample_markov, order=order, cum=cum)

    return make


def _sample_markov(rng: np.random.Generator, n: int, length: int, order: int, cum: np.ndarray) -> np.ndarray:
    """An order-``order`` chain from row CDFs ``cum`` (one row per context, oldest symbol most significant)."""
    v = cum.shape[1]
    tokens = np.empty((n, length), np.int64)
    tokens[:, :order] = rng.integers(0, v, size=(n, min(order, length)))
    u = rng.random((n, length))
    powers = v ** np.arange(order - 1, -1, -1)
    for t in range(order, length):
        tokens[:, t] = _draw(cum[tokens[:, t - order : t] @ powers], u[:, t])
    return tokens + FIRST


for _order in (1, 2, 3, 4):
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


# --- text-like languages: shared pieces -----------------------------------------------------------


def _zipf_cdf(size: int, exponent: float) -> np.ndarray:
    """CDF over ranks 0..size-1 with P(rank k) proportional to (k + 1) ** -exponent."""
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    return _cumulative(weights[None, :] / weights.sum())[0]


def _ranks(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling from one shared ``cdf``: a rank per uniform in ``u`` (any shape)."""
    return np.searchsorted(cdf, u, side="right")


def _dirichlet_cdfs(rng: np.random.Generator, rows: int, size: int, alpha: float) -> np.ndarray:
    """CDFs of ``rows`` distributions over ``size`` outcomes, each drawn from a symmetric Dirichlet(alpha)."""
    return _cumulative(rng.dirichlet(np.full(size, alpha), size=rows))


_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_SYLLABLES = tuple(c + v for c in _CONSONANTS for v in _VOWELS)  # 70 consonant-vowel syllables


def _pseudo_words(rng: np.random.Generator, count: int, max_syllables: int) -> list[str]:
    """``count`` distinct pronounceable words of 1 to ``max_syllables`` consonant-vowel syllables."""
    words: dict[str, None] = {}
    while len(words) < count:
        k = int(rng.integers(1, max_syllables + 1))
        words.setdefault("".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), size=k)), None)
    return list(words)


def _spell(words: Sequence[str], ids: np.ndarray) -> list[str]:
    """Each row of word indices written out as text, every word followed by a space."""
    return ["".join(words[i] + " " for i in row) for row in ids.tolist()]


#: Vocabulary of the word-level languages: 512 distinct two-syllable pseudo-words in a fixed order
#: (every one of the 70 x 70 syllable pairs visited with stride 389, coprime to 4900). Which words
#: are frequent, and what follows what, is drawn from each seed.
WORD_LEXICON: tuple[str, ...] = tuple(
    _SYLLABLES[k // len(_SYLLABLES)] + _SYLLABLES[k % len(_SYLLABLES)]
    for k in (i * 389 % len(_SYLLABLES) ** 2 for i in range(512))
)
_LEX = len(WORD_LEXICON)
_WORD_ZIPF = _zipf_cdf(_LEX, 1.1)  # word frequencies of the word-level languages, by rank

# --- text-like languages: symbol streams -----------------------------------------------------------

_SYMBOLS_16 = "abcdefghijklmnop"


@_synthetic("markov_dense", _SYMBOLS_16, seeded=True)
def _markov_dense(seed: int) -> Sampler:
    """markov_dense: an order-2 chain over 16 letters in which every letter can follow every context;
    each context's next-letter distribution is drawn from Dirichlet(0.3) (peaked, never zero)."""
    table = _dirichlet_cdfs(_rng(seed, "markov_dense", _TASK), len(_SYMBOLS_16) ** 2, len(_SYMBOLS_16), 0.3)
    return functools.partial(_sample_markov, order=2, cum=table)


_MIXTURE_CHAINS = 4


@_synthetic("markov_mixture", MARKOV_SYMBOLS, seeded=True)
def _markov_mixture(seed: int) -> Sampler:
    """markov_mixture: each example follows one of 4 order-1 chains over 12 letters, chosen uniformly
    per example (the chains come from the seed, each next-letter distribution from Dirichlet(0.5))."""
    v = len(MARKOV_SYMBOLS)
    chains = _dirichlet_cdfs(_rng(seed, "markov_mixture", _TASK), _MIXTURE_CHAINS * v, v, 0.5)
    chains = chains.reshape(_MIXTURE_CHAINS, v, v)  # (chain, previous, next)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        chain = rng.integers(0, _MIXTURE_CHAINS, size=n)
        u = rng.random((n, length))
        tokens = np.empty((n, length), np.int64)
        tokens[:, 0] = rng.integers(0, v, size=n)
        for t in range(1, length):
            tokens[:, t] = _draw(chains[chain, tokens[:, t - 1]], u[:, t])
        return tokens + FIRST

    return sample


@_synthetic("lagged_markov", MARKOV_SYMBOLS, seeded=True)
def _lagged_markov(seed: int) -> Sampler:
    """lagged_markov: each letter depends on the letter ``lag`` places back (lag uniform in 2-8 per
    example) through a seeded table allowing 3 successors per letter; the first ``lag`` letters are uniform."""
    v = len(MARKOV_SYMBOLS)
    table = _cumulative(_sparse_table(_rng(seed, "lagged_markov", _TASK), v, v, _MARKOV_FANOUT))

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        lag = rng.integers(2, 9, size=n)
        tokens = rng.integers(0, v, size=(n, length))  # kept where t < lag
        u = rng.random((n, length))
        rows = np.arange(n)
        for t in range(2, length):
            source = tokens[rows, np.maximum(t - lag, 0)]
            tokens[:, t] = np.where(t >= lag, _draw(table[source], u[:, t]), tokens[:, t])
        return tokens + FIRST

    return sample


_HMM_STATES = 6


@_synthetic("hmm", _SYMBOLS_16, seeded=True)
def _hmm(seed: int) -> Sampler:
    """hmm: a hidden Markov model whose 6 hidden states persist (stay probability 0.8-0.95, else a jump
    with Dirichlet(1) weights) and each emit letters from their own Dirichlet(0.3) distribution over
    16 letters; only the letters are seen."""
    rng = _rng(seed, "hmm", _TASK)
    k, v = _HMM_STATES, len(_SYMBOLS_16)
    stay = rng.uniform(0.8, 0.95, size=k)
    transitions = np.diag(stay)
    transitions[~np.eye(k, dtype=bool)] = ((1 - stay)[:, None] * rng.dirichlet(np.ones(k - 1), size=k)).ravel()
    transitions, emissions = _cumulative(transitions), _dirichlet_cdfs(rng, k, v, 0.3)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        state = rng.integers(0, k, size=n)
        u_emit, u_next = rng.random((2, n, length))
        out = np.empty((n, length), np.int64)
        for t in range(length):
            out[:, t] = _draw(emissions[state], u_emit[:, t])
            state = _draw(transitions[state], u_next[:, t])
        return out + FIRST

    return sample


_PFA_STATES, _PFA_FANOUT = 10, 4


@_synthetic("pfa", _SYMBOLS_16, seeded=True)
def _pfa(seed: int) -> Sampler:
    """pfa: a random probabilistic finite automaton: 10 states, each allowing 4 of 16 letters
    (Dirichlet(1) weights); the letter emitted decides the next state (both drawn from the seed)."""
    rng = _rng(seed, "pfa", _TASK)
    v = len(_SYMBOLS_16)
    emissions = _cumulative(_sparse_table(rng, _PFA_STATES, v, _PFA_FANOUT))
    goto = rng.integers(0, _PFA_STATES, size=(_PFA_STATES, v))  # (state, letter) -> next state

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        state = rng.integers(0, _PFA_STATES, size=n)
        u = rng.random((n, length))
        out = np.empty((n, length), np.int64)
        for t in range(length):
            out[:, t] = _draw(emissions[state], u[:, t])
            state = goto[state, out[:, t]]
        return out + FIRST

    return sample


_LEVELS = "0123456789abcdef"


@_synthetic("ar_series", _LEVELS)
def _ar_series(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """ar_series: a quantized AR(1) series x_t = phi x_(t-1) + sqrt(1 - phi^2) e_t, e_t standard
    normal and phi uniform in [0.5, 0.99] per example, written as 16 equal levels over [-2, 2] (clipped)."""
    phi = rng.uniform(0.5, 0.99, size=n)
    noise = rng.standard_normal((n, length))
    x = np.empty((n, length))
    x[:, 0] = noise[:, 0]
    for t in range(1, length):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * noise[:, t]
    return np.clip(np.floor((x + 2) * len(_LEVELS) / 4), 0, len(_LEVELS) - 1).astype(np.int64) + FIRST


@_synthetic("noisy_periodic", "abcdefgh")
def _noisy_periodic(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """noisy_periodic: a random pattern of 2-8 letters repeated, each letter replaced by a uniformly
    random one with a per-example probability in [0.05, 0.3]."""
    periods = rng.integers(2, 9, size=(n, 1))
    patterns = rng.integers(0, 8, size=(n, 8))
    clean = np.take_along_axis(patterns, np.arange(length)[None, :] % periods, axis=1)
    noisy = rng.random((n, length)) < rng.uniform(0.05, 0.3, size=(n, 1))
    return np.where(noisy, rng.integers(0, 8, size=(n, length)), clean) + FIRST


@_synthetic("runs", MARKOV_SYMBOLS, seeded=True)
def _runs(seed: int) -> Sampler:
    """runs: runs of a repeated letter with geometric lengths; each of the 12 letters has its own mean
    run length (1.5 to 8, from the seed), and the next run's letter is uniform among the other 11."""
    v = len(MARKOV_SYMBOLS)
    switch = 1 / _rng(seed, "runs", _TASK).uniform(1.5, 8.0, size=v)  # P(run ends) after each letter

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        u = rng.random((n, length))
        other = rng.integers(1, v, size=(n, length))
        out = np.empty((n, length), np.int64)
        out[:, 0] = rng.integers(0, v, size=n)
        for t in range(1, length):
            prev = out[:, t - 1]
            out[:, t] = np.where(u[:, t] < switch[prev], (prev + other[:, t]) % v, prev)
        return out + FIRST

    return sample


@_synthetic("unigram_zipf", _ALPHABET, seeded=True)
def _unigram_zipf(seed: int) -> Sampler:
    """unigram_zipf: independent letters a-z with Zipfian frequencies (exponent 1.2); which letter has
    which rank is drawn from the seed."""
    letter_of_rank = _rng(seed, "unigram_zipf", _TASK).permutation(len(_ALPHABET))
    cdf = _zipf_cdf(len(_ALPHABET), 1.2)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        return letter_of_rank[_ranks(cdf, rng.random((n, length)))] + FIRST

    return sample


@_synthetic("unigram_dirichlet", _SYMBOLS_16)
def _unigram_dirichlet(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """unigram_dirichlet: independent letters from a distribution over 16 letters that each example
    draws from Dirichlet(0.5), so letter frequencies must be inferred in context."""
    cum = _dirichlet_cdfs(rng, n, len(_SYMBOLS_16), 0.5)  # (n, 16)
    u = rng.random((n, length))
    return (cum[:, None, :] <= u[:, :, None]).sum(axis=2) + FIRST


# --- text-like languages: words and sentences ------------------------------------------------------

_WORD_CHARS = _ALPHABET + " "


def _lexicon_sampler(name: str, seed: int, count: int = 300) -> Sampler:
    """Independent words from a lexicon of ``count`` pseudo-words of 1-3 syllables drawn from the
    seed, with Zipfian frequencies (exponent 1.1), spelled out with a space after each."""
    lexicon = _pseudo_words(_rng(seed, name, _TASK), count, 3)
    cdf = _zipf_cdf(count, 1.1)

    def sample(rng: np.random.Generator, n: int, length: int) -> list[str]:
        return _spell(lexicon, _ranks(cdf, rng.random((n, length // 2 + 1))))  # words take >= 2 characters

    return sample


@_synthetic("zipf_words", _WORD_CHARS, seeded=True)
def _zipf_words(seed: int) -> Sampler:
    """zipf_words: independent words separated by spaces, from a lexicon of 300 pseudo-words of 1-3
    syllables (drawn from the seed) with Zipfian frequencies (exponent 1.1)."""
    return _lexicon_sampler("zipf_words", seed)


@_synthetic("noisy_words", _WORD_CHARS, seeded=True)
def _noisy_words(seed: int) -> Sampler:
    """noisy_words: Zipfian pseudo-words as in zipf_words (a lexicon of its own) typed with typos:
    each letter is replaced (3%), dropped (2%) or followed by a stray letter (2%)."""
    words = _lexicon_sampler("noisy_words", seed)

    def sample(rng: np.random.Generator, n: int, length: int) -> list[str]:
        return _typos(rng, words(rng, n, length + 8)).split("\n")  # spare words for the dropped letters

    return sample


def _typos(rng: np.random.Generator, texts: list[str], replace: float = 0.03, drop: float = 0.02,
           stray: float = 0.02) -> str:
    """``texts`` joined by newlines, random letters replaced, dropped, or followed by a random letter."""
    chars = np.frombuffer("\n".join(texts).encode("ascii"), np.uint8)
    letters = np.frombuffer(_ALPHABET.encode("ascii"), np.uint8)[rng.integers(0, 26, size=(len(chars), 2))]
    u = np.where(np.isin(chars, np.frombuffer(b" \n", np.uint8)), 1.0, rng.random(len(chars)))  # kept as they are
    typed = np.where(u < replace, letters[:, 0], chars)
    keep = (u >= replace + drop) | (u < replace)
    extra = (u >= replace + drop) & (u < replace + drop + stray)
    pairs, emit = np.stack([typed, letters[:, 1]], axis=1), np.stack([keep, extra], axis=1)
    return pairs[emit].tobytes().decode("ascii")


_ONSETS = ("", "t", "n", "s", "r", "l", "k", "m", "d", "p", "b", "v", "st", "tr", "pl", "kr", "f", "g")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "s", "l", "t")
_BREAKS = ("", " ", ". ")  # after a syllable: none, end of a word, end of a sentence
_WORD_END, _SENTENCE_END = 0.45, 0.12


def _syllable_pieces() -> tuple[tuple[str, ...], np.ndarray]:
    """Every syllable-and-break piece of ``syllable_words`` and the CDF of their probabilities."""
    parts = (_ONSETS, _NUCLEI, _CODAS)
    probs = [np.diff(_zipf_cdf(len(p), 1.0), prepend=0.0) for p in parts]
    probs.append(np.array([1 - _WORD_END, _WORD_END * (1 - _SENTENCE_END), _WORD_END * _SENTENCE_END]))
    joint = functools.reduce(np.multiply.outer, probs).ravel()  # onset-major, like the pieces
    pieces = tuple(o + n + c + b for o in _ONSETS for n in _NUCLEI for c in _CODAS for b in _BREAKS)
    return pieces, _cumulative(joint[None, :] / joint.sum())[0]


_SYLLABLE_PIECES, _SYLLABLE_CDF = _syllable_pieces()


@_synthetic("syllable_words", _ALPHABET + " .")
def _syllable_words(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """syllable_words: sentences of words made up on the fly from syllables (an onset, a vowel and a
    coda, each with Zipfian frequencies); a word ends after each syllable with probability 0.45, and a
    sentence ('.') after each word with probability 0.12."""
    pieces = _ranks(_SYLLABLE_CDF, rng.random((n, length)))  # every syllable has at least one letter
    return ["".join(_SYLLABLE_PIECES[i] for i in row) for row in pieces.tolist()]


_INFLECTIONS = (("a", "as", "am"), ("o", "is", "om"), ("e", "en", "em"))  # [class][case]
_STEMS = 120


@_synthetic("morphology", _WORD_CHARS, seeded=True)
def _morphology(seed: int) -> Sampler:
    """morphology: words made of a stem and an ending: 120 stems (pseudo-words from the seed, Zipfian
    frequencies) each belong to one of 3 inflection classes, and the ending follows from the stem's
    class and the word's case (3 cases); a word keeps the previous word's case with probability 0.6
    (agreement), else takes a uniformly random one."""
    rng = _rng(seed, "morphology", _TASK)
    stems = _pseudo_words(rng, _STEMS, 2)
    classes = rng.integers(0, len(_INFLECTIONS), size=_STEMS)
    forms = [stem + _INFLECTIONS[c][case] for stem, c in zip(stems, classes.tolist()) for case in range(3)]
    cdf = _zipf_cdf(_STEMS, 1.1)

    def sample(rng: np.random.Generator, n: int, length: int) -> list[str]:
        m = length // 2 + 1  # words take >= 2 characters
        stem = _ranks(cdf, rng.random((n, m)))
        fresh, keep = rng.integers(0, 3, size=(n, m)), rng.random((n, m)) < 0.6
        case = fresh.copy()
        for t in range(1, m):
            case[:, t] = np.where(keep[:, t], case[:, t - 1], fresh[:, t])
        return _spell(forms, 3 * stem + case)

    return sample


_USERS, _CITIES = 80, 15


@_synthetic("records", _ALPHABET + DIGITS + " ", seeded=True)
def _records(seed: int) -> Sampler:
    """records: a stream of records 'user age city status;': a user (80 pseudo-words from the seed,
    Zipfian), an age (normal around 38, sd 12, within 18-90), a city (the user's home city with
    probability 0.8, else one of 15 with Zipfian frequencies) and 'ok' or 'fail' (each user its own
    failure rate, 2-30%)."""
    rng = _rng(seed, "records", _TASK)
    users, cities = _pseudo_words(rng, _USERS, 3), _pseudo_words(rng, _CITIES, 2)
    home = _ranks(_zipf_cdf(_CITIES, 1.0), rng.random(_USERS))
    failure = rng.uniform(0.02, 0.3, size=_USERS)
    user_cdf, city_cdf = _zipf_cdf(_USERS, 1.1), _zipf_cdf(_CITIES, 1.0)

    def sample(rng: np.random.Generator, n: int, length: int) -> list[str]:
        size = (n, length // 12 + 1)  # a record takes at least 12 characters
        user = _ranks(user_cdf, rng.random(size))
        age = np.clip(np.rint(rng.normal(38, 12, size)), 18, 90).astype(np.int64)
        city = np.where(rng.random(size) < 0.8, home[user], _ranks(city_cdf, rng.random(size)))
        fail = rng.random(size) < failure[user]
        fields = zip(*(x.ravel().tolist() for x in (user, age, city, fail)))
        records = [f"{users[u]} {a} {cities[c]} {'fail' if f else 'ok'};" for u, a, c, f in fields]
        m = size[1]
        return ["".join(records[i : i + m]) for i in range(0, len(records), m)]

    return sample


_PCFG_CLASSES = {
    "det": ("the",),  # either number
    "det_sg": ("a", "every", "this"),
    "det_pl": ("some", "many", "these"),
    "noun_sg": ("cat", "dog", "child", "teacher", "farmer", "king", "bird", "river"),
    "noun_pl": ("cats", "dogs", "children", "teachers", "farmers", "kings", "birds", "rivers"),
    "verb_sg": ("sees", "likes", "knows", "finds", "follows", "sleeps"),
    "verb_pl": ("see", "like", "know", "find", "follow", "sleep"),
    "adj": ("big", "small", "old", "happy", "quiet", "red"),
    "prep": ("near", "with", "behind", "under"),
    "that": ("that",),
    "end": (".",),
}
_PCFG_SYMBOLS = tuple(w for words in _PCFG_CLASSES.values() for w in words)
_DET, _DET_SG, _DET_PL, _NOUN_SG, _NOUN_PL, _VERB_SG, _VERB_PL, _ADJ, _PREP, _THAT, _END = range(len(_PCFG_CLASSES))
_PCFG_MAX_DEPTH = 3  # deeper phrases take no further modifiers, so every sentence ends


class _PCFG:
    """Sentences of the ``pcfg`` grammar as word classes, driven by a stream of uniforms.

    S -> NP[n] VP[n] '.'; NP[n] -> Det[n] Adj{0,2} N[n] (PP | 'that' VP[n])?; VP[n] -> V[n]
    (NP | 'that' NP VP)? PP?; PP -> P NP. The number n (singular or plural) of a subject is drawn per
    clause and its verb agrees with it, also across the relative clauses and prepositional phrases
    between them. The words of each class are drawn afterwards (:func:`_pcfg_words`).
    """

    def __init__(self, u: Iterator[float]):
        self.u = u
        self.out: list[int] = []  # word classes

    def sentence(self) -> None:
        self.clause(depth=0)
        self.out.append(_END)

    def clause(self, depth: int) -> None:
        plural = next(self.u) < 0.4
        self.noun_phrase(plural, depth)
        self.verb_phrase(plural, depth)

    def noun_phrase(self, plural: bool, depth: int) -> None:
        u, out = self.u, self.out
        out.append(_DET if next(u) < 0.4 else _DET_PL if plural else _DET_SG)
        if next(u) < 0.25:
            out.append(_ADJ)
            if next(u) < 0.25:
                out.append(_ADJ)
        out.append(_NOUN_PL if plural else _NOUN_SG)
        if depth < _PCFG_MAX_DEPTH:
            r = next(u)
            if r < 0.15:
                self.prepositional_phrase(depth + 1)
            elif r < 0.27:
                out.append(_THAT)
                self.verb_phrase(plural, depth + 1)

    def verb_phrase(self, plural: bool, depth: int) -> None:
        u, out = self.u, self.out
        out.append(_VERB_PL if plural else _VERB_SG)
        r = next(u)
        if r < 0.55:
            self.noun_phrase(next(u) < 0.4, depth + 1)
        elif r < 0.65 and depth < _PCFG_MAX_DEPTH:
            out.append(_THAT)
            self.clause(depth + 1)
        if depth < _PCFG_MAX_DEPTH and next(u) < 0.15:
            self.prepositional_phrase(depth + 1)

    def prepositional_phrase(self, depth: int) -> None:
        self.out.append(_PREP)
        self.noun_phrase(next(self.u) < 0.4, depth)


def _uniforms(rng: np.random.Generator, chunk: int = 1 << 16) -> Iterator[float]:
    """An endless stream of uniforms from ``rng``, drawn in chunks."""
    return itertools.chain.from_iterable(iter(lambda: rng.random(chunk).tolist(), None))


def _pcfg_words(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """A word for every word class in ``classes``: Zipfian within the class, in the order listed."""
    u = rng.random(classes.shape)
    ids = np.empty_like(classes)
    for cls, words in enumerate(_PCFG_CLASSES.values()):
        here = classes == cls
        ids[here] = FIRST + _PCFG_SYMBOLS.index(words[0]) + _ranks(_zipf_cdf(len(words), 1.0), u[here])
    return ids


@_synthetic("pcfg", _PCFG_SYMBOLS)
def _pcfg(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """pcfg: a stream of sentences from a probabilistic context-free grammar with recursion (relative
    clauses, sentential complements, prepositional phrases) and subject-verb number agreement."""
    grammar = _PCFG(_uniforms(rng))
    classes = np.empty((n, length), np.int64)
    for i in range(n):
        grammar.out = []
        while len(grammar.out) < length:
            grammar.sentence()
        classes[i] = grammar.out[:length]
    return _pcfg_words(rng, classes)


def _affine_rankings(rng: np.random.Generator, contexts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per context, a random bijection from rank to word: ``(a * rank + b) mod 512`` with ``a`` odd."""
    return 2 * rng.integers(0, _LEX // 2, size=contexts) + 1, rng.integers(0, _LEX, size=contexts)


@_synthetic("bigram_words", WORD_LEXICON, seeded=True)
def _bigram_words(seed: int) -> Sampler:
    """bigram_words: a word bigram language over 512 pseudo-words: with probability 0.75 the next word
    comes from the previous word's own Zipfian ranking of successors, else (back-off) from the Zipfian
    unigram ranking; rankings drawn from the seed."""
    rng = _rng(seed, "bigram_words", _TASK)
    unigram, (a, b) = rng.permutation(_LEX), _affine_rankings(rng, _LEX)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        u, ranks = rng.random((n, length)), _ranks(_WORD_ZIPF, rng.random((n, length)))
        out = unigram[ranks]  # back-off draws; overwritten where the bigram is used
        for t in range(1, length):
            prev = out[:, t - 1]
            out[:, t] = np.where(u[:, t] < 0.75, (a[prev] * ranks[:, t] + b[prev]) % _LEX, out[:, t])
        return out + FIRST

    return sample


@_synthetic("trigram_words", WORD_LEXICON, seeded=True)
def _trigram_words(seed: int) -> Sampler:
    """trigram_words: a word trigram language over 512 pseudo-words with back-off: the next word comes
    from the previous two words' own Zipfian ranking (probability 0.6), the previous word's (0.25) or
    the unigram ranking (0.15); all rankings drawn from the seed."""
    rng = _rng(seed, "trigram_words", _TASK)
    unigram, (a2, b2), (a3, b3) = rng.permutation(_LEX), _affine_rankings(rng, _LEX), _affine_rankings(rng, _LEX**2)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        u, ranks = rng.random((n, length)), _ranks(_WORD_ZIPF, rng.random((n, length)))
        out = unigram[ranks]
        for t in range(1, length):
            prev, r = out[:, t - 1], ranks[:, t]
            bigram = (a2[prev] * r + b2[prev]) % _LEX
            if t >= 2:
                context = out[:, t - 2] * _LEX + prev
                bigram = np.where(u[:, t] < 0.6, (a3[context] * r + b3[context]) % _LEX, bigram)
            out[:, t] = np.where(u[:, t] < 0.85, bigram, out[:, t])
        return out + FIRST

    return sample


_WORD_CLASSES = 8


@_synthetic("class_hmm", WORD_LEXICON, seeded=True)
def _class_hmm(seed: int) -> Sampler:
    """class_hmm: a class-based language, like parts of speech: a hidden chain over 8 word classes
    (transition rows from Dirichlet(0.5)), each class owning 64 of the 512 words and emitting them with
    Zipfian frequencies; classes, their words and the chain drawn from the seed."""
    rng = _rng(seed, "class_hmm", _TASK)
    transitions = _dirichlet_cdfs(rng, _WORD_CLASSES, _WORD_CLASSES, 0.5)
    members = rng.permutation(_LEX).reshape(_WORD_CLASSES, -1)  # (class, rank) -> word
    cdf = _zipf_cdf(members.shape[1], 1.0)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        cls = rng.integers(0, _WORD_CLASSES, size=n)
        ranks, u_next = _ranks(cdf, rng.random((n, length))), rng.random((n, length))
        out = np.empty((n, length), np.int64)
        for t in range(length):
            out[:, t] = members[cls, ranks[:, t]]
            cls = _draw(transitions[cls], u_next[:, t])
        return out + FIRST

    return sample


_TOPICS = 8


@_synthetic("lda_topics", WORD_LEXICON, seeded=True)
def _lda_topics(seed: int) -> Sampler:
    """lda_topics: a topic model (LDA): 8 topics, each Zipfian over its own ranking of the 512 words
    (from the seed); each example draws topic proportions from Dirichlet(0.3), then every word draws
    a topic and a word of that topic."""
    rng = _rng(seed, "lda_topics", _TASK)
    rankings = np.stack([rng.permutation(_LEX) for _ in range(_TOPICS)])  # (topic, rank) -> word

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        proportions = _dirichlet_cdfs(rng, n, _TOPICS, 0.3)  # (n, topics)
        topic = (proportions[:, None, :] <= rng.random((n, length))[:, :, None]).sum(axis=2)
        return rankings[topic, _ranks(_WORD_ZIPF, rng.random((n, length)))] + FIRST

    return sample


_PY_DISCOUNT = 0.5


@_synthetic("pitman_yor_words", WORD_LEXICON, seeded=True)
def _pitman_yor_words(seed: int) -> Sampler:
    """pitman_yor_words: words from a Pitman-Yor process (discount 0.5, concentration uniform in
    [1, 10] per example), the rich-get-richer reuse of words in text: a word joins an earlier table
    with probability proportional to its count minus 0.5, or opens a new table with probability
    proportional to concentration + 0.5 x tables; a new table's word is Zipfian over a seeded ranking."""
    ranking = _rng(seed, "pitman_yor_words", _TASK).permutation(_LEX)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        concentration = rng.uniform(1.0, 10.0, size=n)
        fresh = ranking[_ranks(_WORD_ZIPF, rng.random((n, length)))]
        u = rng.random((n, length))
        words = np.zeros((n, length), np.int64)  # (row, table) -> its word
        joiners = np.zeros((n, length), np.int64)  # tables of the customers who joined one, in order
        tables, rows = np.zeros(n, np.int64), np.arange(n)
        out = np.empty((n, length), np.int64)
        for t in range(length):
            # count_k - discount = (1 - discount) + (count_k - 1): a uniform table, or the table of a
            # uniform earlier joiner; the rest of the mass, concentration + discount x tables, opens one.
            x = u[:, t] * (t + concentration)
            by_table = x < tables * (1 - _PY_DISCOUNT)
            by_joiner = ~by_table & (x < tables * (1 - _PY_DISCOUNT) + t - tables)
            joiner = np.clip(x - tables * (1 - _PY_DISCOUNT), 0, length - 1).astype(np.int64)
            table = np.where(by_table, (x / (1 - _PY_DISCOUNT)).astype(np.int64), joiners[rows, joiner])
            new = ~(by_table | by_joiner)
            table[new] = tables[new]
            words[rows[new], tables[new]] = fresh[new, t]
            joiners[rows[~new], (t - tables)[~new]] = table[~new]
            tables += new
            out[:, t] = words[rows, table]
        return out + FIRST

    return sample


@_synthetic("phrase_repetition", WORD_LEXICON, seeded=True)
def _phrase_repetition(seed: int) -> Sampler:
    """phrase_repetition: Zipfian words (a ranking from the seed) in which, at each word with
    probability 0.15, a phrase of 2-8 words from a uniformly random earlier position is repeated
    (overlaps allowed), as quotes and set phrases recur in text."""
    ranking = _rng(seed, "phrase_repetition", _TASK).permutation(_LEX)

    def sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        out = ranking[_ranks(_WORD_ZIPF, rng.random((n, length)))]  # fresh words; copies overwrite
        begin, span, where = rng.random((n, length)) < 0.15, rng.integers(2, 9, (n, length)), rng.random((n, length))
        source, left, rows = np.zeros(n, np.int64), np.zeros(n, np.int64), np.arange(n)
        for t in range(1, length):
            start = (left == 0) & begin[:, t]
            source = np.where(start, (where[:, t] * t).astype(np.int64), source)  # < t
            left = np.where(start, span[:, t], left)
            copying = left > 0
            out[:, t] = np.where(copying, out[rows, source], out[:, t])
            source, left = source + copying, left - copying
        return out + FIRST

    return sample


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
