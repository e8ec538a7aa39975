"""Tests for the transformer family's language-modelling datasets (lhopt_dsl.tasks.lm_datasets).

The real corpora are read from $LHOPT_DATA_DIR (set by the test runner) and the running Python's
standard library.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lhopt_dsl.spec.families import (
    LM_ALGO_DATASETS,
    LM_DATASETS,
    LM_OOD_DATASETS,
    LM_TEXT_DATASETS,
    LM_TRAIN_DATASETS,
)
from lhopt_dsl.tasks import datafiles
from lhopt_dsl.tasks.datafiles import DataNotFoundError
from lhopt_dsl.tasks.lm_datasets import (
    FIRST,
    LM_BUILDERS,
    MARKOV_SYMBOLS,
    MODULUS,
    PAD,
    WORD_LEXICON,
    LMData,
    _char_corpus,
    _word_corpus,
    build_lm_data,
    decode,
    load_corpus,
    markov_transition_table,
    split_bounds,
    vocab_size,
)

ALL = sorted(LM_DATASETS)
CORPORA = ["sst2_chars", "sst2_words", "stdlib_docstrings", "stdlib_source", "tinyshakespeare"]
SYNTHETIC = [n for n in ALL if n not in CORPORA]
TEXT_SYNTHETIC = [n for n in LM_TEXT_DATASETS if n not in CORPORA]
SMALL = dict(n_train=256, n_valid=64, n_test=64)
ROOT = Path(__file__).resolve().parents[1]


def build(name: str, seq_len: int = 32, seed: int = 0, **sizes: int) -> LMData:
    return build_lm_data(name, seq_len, seed, **{**SMALL, **sizes})


def texts(name: str, seq_len: int = 64, seed: int = 0, n: int = 300) -> list[str]:
    """Decoded training examples of a synthetic task."""
    return [decode(name, row) for row in build(name, seq_len, seed, n_train=n).train]


def instance(text: str) -> str:
    """A padded example without its padding; checks that the padding only comes at the end."""
    body = text.rstrip("_")
    assert "_" not in body, text
    return body


# --- registry and generic properties -----------------------------------------------------------------


def test_registry_is_exactly_the_dsl_names():
    assert set(LM_BUILDERS) == set(LM_DATASETS) and len(LM_DATASETS) == len(set(LM_DATASETS))
    assert len(SYNTHETIC) == 51 and set(CORPORA) <= set(LM_BUILDERS)


def test_text_and_algorithmic_groups_split_the_datasets():
    text, algo, ood = set(LM_TEXT_DATASETS), set(LM_ALGO_DATASETS), set(LM_OOD_DATASETS)
    assert len(LM_TEXT_DATASETS) >= 31  # the paper's count of Text + Transformer datasets
    assert len(text) == len(LM_TEXT_DATASETS) and len(algo) == len(LM_ALGO_DATASETS)
    assert not text & algo and not text & ood and not algo & ood
    assert text | algo | ood == set(LM_DATASETS) == set(LM_BUILDERS)
    assert LM_TRAIN_DATASETS == LM_TEXT_DATASETS
    deterministic_rules = {
        "copy", "reverse", "sort", "count", "addition", "multiplication", "modular_addition", "cumulative_sum",
        "parity_stream", "dyck1", "dyck2", "anbn", "palindrome", "duplicate", "interleave", "caesar", "successor",
        "fibonacci", "periodic", "associative_recall", "majority", "histogram", "arithmetic_expressions",
    }  # fmt: skip
    assert algo == deterministic_rules
    assert {"sst2_chars", "sst2_words", "stdlib_docstrings", "stdlib_source"} <= text


def test_unknown_name_lists_known_datasets():
    with pytest.raises(ValueError, match="no_such_set") as err:
        build_lm_data("no_such_set", 16, 0)
    assert "copy" in str(err.value) and "tinyshakespeare" in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [dict(seq_len=0, seed=0), dict(seq_len=8, seed=-1), dict(seq_len=8, seed=0, n_valid=0)]
)
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError, match="copy"):
        build_lm_data("copy", **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_every_dataset_is_well_formed_and_deterministic(name):
    seq_len = 32
    data = build(name, seq_len)
    assert isinstance(data, LMData) and data.vocab_size >= 2
    for split, wanted in zip(data[:3], (256, 64, 64)):
        assert split.dtype == torch.int64 and split.device.type == "cpu"
        assert split.ndim == 2 and split.shape[1] == seq_len + 1
        assert 1 <= split.shape[0] <= wanted and (name in CORPORA or split.shape[0] == wanted)
        assert int(split.min()) >= 0 and int(split.max()) < data.vocab_size
    assert data.train.shape[0] == 256
    assert len(torch.unique(data.train)) > 1
    again = build(name, seq_len)
    assert all(torch.equal(a, b) for a, b in zip(data[:3], again[:3])) and data.vocab_size == again.vocab_size
    other = build(name, seq_len, seed=1)
    assert not torch.equal(data.train, other.train)
    assert other.vocab_size == data.vocab_size
    if name in SYNTHETIC:
        assert not torch.equal(data.valid, other.valid)
        assert not torch.equal(data.train[:64], data.valid)  # independent streams per split


@pytest.mark.parametrize("name", ALL)
def test_vocabulary_size_is_known_without_building(name):
    built = build(name, 8, n_train=8, n_valid=8, n_test=8).vocab_size
    assert vocab_size(name) == built if name in SYNTHETIC else vocab_size(name) >= built


@pytest.mark.parametrize("name", ALL)
def test_shortest_context_still_builds(name):
    data = build(name, seq_len=2, n_train=32, n_valid=8, n_test=8)
    assert data.train.shape == (32, 3) and int(data.train.max()) < data.vocab_size


def test_same_tokens_in_a_fresh_process():
    names = SYNTHETIC + ["sst2_chars", "stdlib_source"]
    code = (
        "import hashlib, json, sys\n"
        "from lhopt_dsl.tasks.lm_datasets import build_lm_data\n"
        "out = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    d = build_lm_data(name, 24, 7, n_train=64, n_valid=16, n_test=16)\n"
        "    out[name] = hashlib.sha256(b''.join(t.numpy().tobytes() for t in d[:3])).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    for name in names:
        d = build_lm_data(name, 24, 7, n_train=64, n_valid=16, n_test=16)
        assert theirs[name] == hashlib.sha256(b"".join(t.numpy().tobytes() for t in d[:3])).hexdigest(), name


# --- synthetic tasks: the sequences are what they say ------------------------------------------------


@pytest.mark.parametrize("seq_len", [8, 17, 64])
@pytest.mark.parametrize(
    "name",
    ["copy", "reverse", "sort", "count", "addition", "multiplication", "cumulative_sum", "dyck1", "dyck2", "anbn",
     "palindrome", "duplicate", "interleave", "caesar", "majority", "histogram", "arithmetic_expressions"],
)  # fmt: skip
def test_padded_instances_fit_the_window(name, seq_len):
    for text in texts(name, seq_len, n=100):
        body = instance(text)
        assert body.endswith(";"), text


def test_copy():
    for text in texts("copy"):
        x, y, rest = instance(text).split(";")
        assert x and x == y and rest == ""


def test_reverse():
    for text in texts("reverse"):
        x, y, _ = instance(text).split(";")
        assert x and y == x[::-1]


def test_sort():
    for text in texts("sort"):
        x, y, _ = instance(text).split(";")
        assert list(y) == sorted(y) and sorted(x) == sorted(y) and x


def test_duplicate_and_palindrome_and_anbn():
    for text in texts("duplicate"):
        body = instance(text)[:-1]
        assert body[::2] == body[1::2]
    for text in texts("palindrome"):
        body = instance(text)[:-1]
        assert body == body[::-1] and len(body) >= 2
    for text in texts("anbn"):
        k = len(instance(text)) // 2
        assert instance(text) == "a" * k + "b" * k + ";"


def test_count_and_histogram_and_majority():
    for text in texts("count"):
        m = re.fullmatch(r"([abcd]+);([abcd])=(\d+);", instance(text))
        assert m and m[1].count(m[2]) == int(m[3])
    counts = "123456789ABCDEFG"
    for text in texts("histogram"):
        x, h, _ = instance(text).split(";")
        assert [counts[min(x.count(c), 16) - 1] for c in x] == list(h)
    for text in texts("majority"):
        x, answer, _ = instance(text).split(";")
        assert len(x) % 2 == 1 and answer == max("ab", key=x.count)


def test_addition_and_multiplication():
    for text in texts("addition"):
        m = re.fullmatch(r"(\d+)\+(\d+)=(\d+);", instance(text))
        assert m and int(m[1]) + int(m[2]) == int(m[3])
    for text in texts("multiplication"):
        m = re.fullmatch(r"(\d+)\*(\d+)=(\d+);", instance(text))
        assert m and int(m[1]) * int(m[2]) == int(m[3])


def test_modular_addition():
    residues = "0123456789abcdefg"
    data = build("modular_addition", 64)
    assert data.vocab_size == FIRST + MODULUS + 1
    for text in (decode("modular_addition", row) for row in data.train):
        equations = re.findall(r"(.)\+(.)=(.);", text)
        assert len(equations) == 65 // 6
        for a, b, c in equations:
            assert (residues.index(a) + residues.index(b)) % MODULUS == residues.index(c)


def test_cumulative_sum_and_caesar_and_interleave():
    for text in texts("cumulative_sum"):
        x, s, _ = instance(text).split(";")
        assert [int(c) for c in s] == [int(v) % 10 for v in np.cumsum([int(c) for c in x])]
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    for text in texts("caesar"):
        m = re.fullmatch(r"([a-z]);([a-z]+)=([a-z]+);", instance(text))
        shift = alphabet.index(m[1])
        assert m[3] == "".join(alphabet[(alphabet.index(c) + shift) % 26] for c in m[2])
    for text in texts("interleave"):
        m = re.fullmatch(r"([a-h]+);([0-7]+)=(\w+);", instance(text))
        assert m and m[3][::2] == m[1] and m[3][1::2] == m[2]


def test_arithmetic_expressions_evaluate_mod_10():
    for text in texts("arithmetic_expressions"):
        expr, value = instance(text)[:-1].split("=")
        assert eval(expr) % 10 == int(value)  # noqa: S307 (digits, + - * and parentheses only)


def balanced(text: str, pairs: dict[str, str]) -> bool:
    """Every prefix is a valid Dyck prefix and the whole string closes every bracket."""
    stack = []
    for c in text:
        if c in pairs:
            stack.append(pairs[c])
        elif not stack or stack.pop() != c:
            return False
    return not stack


@pytest.mark.parametrize("name, pairs", [("dyck1", {"(": ")"}), ("dyck2", {"(": ")", "[": "]"})])
def test_dyck_strings_are_balanced(name, pairs):
    kinds = set()
    for text in texts(name, seq_len=48):
        body = instance(text)
        assert body.endswith(";") and body.count(";") == 1
        assert body[:-1] and balanced(body[:-1], pairs), text
        kinds |= set(body[:-1])
    assert kinds == set(pairs) | set(pairs.values())


def test_parity_stream():
    for text in texts("parity_stream", seq_len=40):
        bits, parities = text[0::2], text[1::2]
        expected = ["eo"[int(v) % 2] for v in np.cumsum([int(b) for b in bits])]
        assert list(parities) == expected[: len(parities)]


@pytest.mark.parametrize("seq_len", [1, 7, 33])
def test_streams_fill_the_window(seq_len):
    for name in ["successor", "fibonacci", "periodic", "parity_stream", *TEXT_SYNTHETIC]:
        assert int((build(name, seq_len).train == PAD).sum()) == 0, name


def test_streams_are_what_they_say():
    for text in texts("successor"):
        numbers = text.split(";")[:-1]
        assert [int(v) - int(numbers[0]) for v in numbers] == list(range(len(numbers)))
    for text in texts("fibonacci"):
        f = [int(v) for v in text.split(";")[:-1]]
        assert all(f[i] == f[i - 1] + f[i - 2] for i in range(2, len(f)))
    ring = "0123456789abcdef"
    for text in texts("random_walk"):
        for i in range(1, len(text) - 1, 2):
            step = 1 if text[i] == ">" else -1
            assert ring.index(text[i + 1]) == (ring.index(text[i - 1]) + step) % 16
    for text in texts("periodic"):
        assert any(all(text[i] == text[i % p] for i in range(len(text))) for p in range(2, 9))


def test_associative_recall_answers_the_queried_key():
    for text in texts("associative_recall"):
        pairs, queries = instance(text).split(";")
        memory = dict(zip(pairs[0::2], pairs[1::2]))
        assert len(memory) == len(pairs) // 2 and all(k.islower() and v.isupper() for k, v in memory.items())
        assert len(queries) >= 2
        for key, value in zip(queries[0::2], queries[1::2]):
            assert memory[key] == value


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_markov_chains_follow_their_seeded_table(order):
    name = f"markov{order}"
    table = markov_transition_table(order, seed=3)
    assert table.shape == (12**order, 12) and np.allclose(table.sum(axis=1), 1.0)
    assert ((table > 0).sum(axis=1) == 3).all()
    assert not np.array_equal(table, markov_transition_table(order, seed=4))
    data = build(name, 40, seed=3)
    assert data.vocab_size == FIRST + len(MARKOV_SYMBOLS)
    for split in (data.train, data.valid):
        x = split.numpy() - FIRST
        powers = 12 ** np.arange(order - 1, -1, -1)
        for t in range(order, x.shape[1]):
            assert (table[x[:, t - order : t] @ powers, x[:, t]] > 0).all()


def test_bigram_grammar_sentences():
    words = None
    for row in build("bigram_grammar", 64).train[:100]:
        sentences = decode("bigram_grammar", row).split(" . ")[1:-1]  # whole sentences only
        for s in sentences:
            first, *rest = s.split()
            assert first in {"the", "a", "every", "some"} and rest
        words = (words or set()) | set(decode("bigram_grammar", row).split())
    assert "." in words and "_" not in words and ";" not in words


# --- text-like languages ---------------------------------------------------------------------------


def conditional_entropy(x: np.ndarray, k: int, vocab: int) -> float:
    """Plug-in estimate (nats) of H(x_t | the k previous tokens) over the rows of ``x``."""
    windows = np.lib.stride_tricks.sliding_window_view(x, k + 1, axis=1).reshape(-1, k + 1)
    codes = windows @ (vocab ** np.arange(k, -1, -1))  # (context, next) as one integer

    def entropy(ids: np.ndarray) -> float:
        p = np.unique(ids, return_counts=True)[1] / len(ids)
        return float(-(p * np.log(p)).sum())

    return entropy(codes) - entropy(codes // vocab)


def fingerprint(name: str) -> tuple[int, float, float, float]:
    """Vocabulary size and H(x_t | 0, 1 and 2 previous tokens): what a language model would see."""
    data = build(name, 64, n_train=512)
    x = data.train.numpy()
    return (data.vocab_size, *(conditional_entropy(x, k, data.vocab_size) for k in range(3)))


def test_text_languages_are_stochastic():
    for name in TEXT_SYNTHETIC:
        x = build(name, 32).train
        assert len(torch.unique(x, dim=0)) == len(x), f"{name}: two training windows are identical"
        assert conditional_entropy(x.numpy(), 1, build(name, 32).vocab_size) > 0.5, name


def test_text_languages_differ_from_each_other():
    prints = {name: fingerprint(name) for name in TEXT_SYNTHETIC}
    for a, b in itertools.combinations(TEXT_SYNTHETIC, 2):
        same_vocab = prints[a][0] == prints[b][0]
        gap = max(abs(u - v) for u, v in zip(prints[a][1:], prints[b][1:]))
        assert not same_vocab or gap > 0.05, f"{a} and {b} have the same token statistics: {prints[a]} {prints[b]}"


def test_unigram_zipf_follows_zipf():
    x = build("unigram_zipf", 64, n_train=512).train
    top = int(torch.bincount(x.ravel()).max()) / x.numel()
    assert top == pytest.approx(1 / np.sum(np.arange(1, 27) ** -1.2), abs=0.01)


def test_noisy_periodic_is_periodic_up_to_noise():
    x = build("noisy_periodic", 64).train.numpy()
    agreement = np.array([max(np.mean(r[p:] == r[:-p]) for p in range(2, 9)) for r in x])
    assert agreement.mean() > 0.65 and (agreement < 1).mean() > 0.95


def test_pcfg_sentences_agree_and_recurse():
    plural_nouns = {"cats", "dogs", "children", "teachers", "farmers", "kings", "birds", "rivers"}
    plural_verbs = {"see", "like", "know", "find", "follow", "sleep"}
    nouns = plural_nouns | {"cat", "dog", "child", "teacher", "farmer", "king", "bird", "river"}
    verbs = plural_verbs | {"sees", "likes", "knows", "finds", "follows", "sleeps"}
    simple = nested = 0
    for row in build("pcfg", 64).train:
        for sentence in decode("pcfg", row).split(" . ")[1:-1]:  # whole sentences only
            words = sentence.split()
            if "that" in words or {"near", "with", "behind", "under"} & set(words):
                nested += 1
                continue
            simple += 1
            noun = next(w for w in words if w in nouns)
            verb = next(w for w in words if w in verbs)
            assert (noun in plural_nouns) == (verb in plural_verbs), sentence
    assert simple > 100 and nested > 100


def test_records_are_well_formed():
    for text in texts("records"):
        records = text.split(";")[:-1]
        assert records
        for record in records:
            m = re.fullmatch(r"([a-z]+) (\d+) ([a-z]+) (ok|fail)", record)
            assert m and 18 <= int(m[2]) <= 90, record


def test_morphology_endings_follow_the_stem_and_agree():
    # Stems are consonant-vowel syllables and every ending starts with a vowel, so a word splits
    # after its last consonant-vowel pair. Endings by [class][case], as in the generator.
    inflections = {"a": (0, 0), "as": (0, 1), "am": (0, 2), "o": (1, 0), "is": (1, 1), "om": (1, 2),
                   "e": (2, 0), "en": (2, 1), "em": (2, 2)}  # fmt: skip
    class_of_stem: dict[str, int] = {}
    same_case = pairs = 0
    for text in texts("morphology"):
        cases = []
        for word in text.split()[:-1]:  # the last word may be cut
            i = 0
            while i + 1 < len(word) and word[i] not in "aeiou" and word[i + 1] in "aeiou":
                i += 2
            stem, ending = word[:i], word[i:]
            assert stem and ending in inflections, word
            cls, case = inflections[ending]
            assert class_of_stem.setdefault(stem, cls) == cls, word
            cases.append(case)
        same_case += sum(a == b for a, b in zip(cases, cases[1:]))
        pairs += len(cases) - 1
    assert len(class_of_stem) > 50
    assert same_case / pairs == pytest.approx(0.6 + 0.4 / 3, abs=0.03)  # keeps the case, or draws it again


def test_word_languages_share_one_lexicon():
    assert len(set(WORD_LEXICON)) == len(WORD_LEXICON) == 512
    for name in ["bigram_words", "trigram_words", "class_hmm", "lda_topics", "pitman_yor_words", "phrase_repetition"]:
        data = build(name, 16)
        assert data.vocab_size == FIRST + 512
        assert set(decode(name, data.train[0]).split()) <= set(WORD_LEXICON)


def test_pitman_yor_words_reuse_words_as_the_process_says():
    x = build("pitman_yor_words", 32, n_train=2000).train.numpy()
    distinct = np.mean([len(set(row)) for row in x.tolist()])
    # Expected tables after 33 words, averaged over the concentration; tables can share a word.
    concentration, tables = np.linspace(1, 10, 2001), 0.0
    for t in range(33):
        tables = tables + (concentration + 0.5 * tables) / (concentration + t)
    assert 0.5 * tables.mean() < distinct < tables.mean()


def test_phrase_repetition_repeats_phrases():
    def repeated_trigrams(name: str) -> float:
        hits = total = 0
        for row in build(name, 64).train.tolist():
            seen: set[tuple[int, ...]] = set()
            for t in range(len(row) - 2):
                hits, total = hits + (tuple(row[t : t + 3]) in seen), total + 1
                seen.add(tuple(row[t : t + 3]))
        return hits / total

    assert repeated_trigrams("phrase_repetition") > 0.2 > 0.01 > repeated_trigrams("lda_topics")


def test_decode_rejects_real_corpora():
    with pytest.raises(ValueError, match="sst2_chars"):
        decode("sst2_chars", [0, 1])


# --- real corpora ----------------------------------------------------------------------------------


def located(window: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Start positions where ``window`` occurs in ``part``."""
    view = np.lib.stride_tricks.sliding_window_view(part, len(window))
    return np.flatnonzero((view == window).all(axis=1))


def non_overlapping(candidates: list[np.ndarray], length: int) -> bool:
    """Whether one start can be picked per window, in order, each ``length`` past the previous."""
    previous = -length
    for positions in candidates:
        later = positions[positions >= previous + length]
        if not len(later):
            return False
        previous = later[0]
    return True


@pytest.mark.parametrize("name", ["sst2_chars", "sst2_words", "tinyshakespeare", "stdlib_docstrings"])
def test_corpus_windows_come_from_their_own_part(name):
    seq_len = 32
    corpus = load_corpus(name)
    a, b, c, d = split_bounds(len(corpus.tokens))
    parts = {"train": corpus.tokens[a:b], "valid": corpus.tokens[b:c], "test": corpus.tokens[c:d]}
    data = build(name, seq_len, seed=5)
    for split, windows in zip(parts, data[:3]):
        starts = [located(w, parts[split]) for w in windows.numpy()[:12]]
        assert all(len(s) for s in starts), f"{name} {split}: a window is not inside its part"
        if split != "train":  # fixed, non-overlapping offsets, identical for every seed
            assert non_overlapping(starts, seq_len + 1)
            assert torch.equal(windows, getattr(build(name, seq_len, seed=6), split))


def test_corpus_valid_and_test_shrink_to_what_fits():
    data = build_lm_data("sst2_words", 128, 0)
    size = len(load_corpus("sst2_words").tokens)
    a, b, c, d = split_bounds(size)
    assert data.train.shape[0] == 4096
    assert data.valid.shape[0] == min(512, (c - b) // 129) and data.test.shape[0] == min(512, (d - c) // 129)


def test_character_vocabularies_are_stable():
    corpus = load_corpus("tinyshakespeare")
    chars = corpus.vocab[:-1]
    assert corpus.vocab[-1] == "<unk>" and list(chars) == sorted(chars) and len(corpus.vocab) <= 257
    sizes = {build("tinyshakespeare", seed=s).vocab_size for s in (1, 2)}
    assert sizes == {len(corpus.vocab)}
    assert _char_corpus("aaabbc", cap=2).vocab == ("a", "b", "<unk>")
    assert _char_corpus("aaabbc", cap=2).tokens.tolist() == [0, 0, 0, 1, 1, 2]
    assert not corpus.tokens.flags.writeable  # the cached stream cannot be changed by callers


def test_sst2_words_vocabulary_and_unknowns():
    corpus = load_corpus("sst2_words")
    assert corpus.vocab[-2:] == ("<unk>", "<eos>") and len(corpus.vocab) == 2002
    unk, eos = len(corpus.vocab) - 2, len(corpus.vocab) - 1
    data = build("sst2_words", 64)
    assert (data.train == unk).any() and (data.train == eos).any()
    toy = _word_corpus("b a a c c c\nd e e", cap=3)
    assert toy.vocab == ("c", "a", "e", "<unk>", "<eos>")
    assert toy.tokens.tolist() == [3, 1, 1, 0, 0, 0, 4, 3, 2, 2, 4]


def test_sst2_chars_drops_labels():
    corpus = load_corpus("sst2_chars")
    text = "".join(corpus.vocab[i] for i in corpus.tokens[:2000])
    lines = text.split("\n")
    assert lines[0].startswith("a stirring , funny")
    assert not any(re.match(r"[01] ", line) for line in lines[:-1])


def test_stdlib_corpora():
    docs, source = load_corpus("stdlib_docstrings"), load_corpus("stdlib_source")
    assert len(source.tokens) > 2 * len(docs.tokens) > 100_000
    text = "".join(source.vocab[i] for i in source.tokens[:5000])
    assert "import" in text and "def " in text


@pytest.mark.parametrize(
    "name, filename", [("sst2_chars", "stsa.binary.train"), ("tinyshakespeare", "tinyshakespeare.txt")]
)
def test_missing_data_names_the_file(name, filename, tmp_path, monkeypatch):
    monkeypatch.setenv("LHOPT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datafiles, "REMOTES", {})
    with pytest.raises(DataNotFoundError, match=re.escape(filename)):
        build_lm_data(name, 16, 0)


def test_windows_do_not_alias_the_cache():
    data = build("tinyshakespeare", 16)
    data.train.zero_()
    assert int(build("tinyshakespeare", 16).train.max()) > 0
