"""Fuzzing the spec reader: mutated real specs are either valid or a located SpecError, never a crash.

The mutations are what editing by hand, bad copy-pasting and hostile files produce: flipped and
deleted bytes, inserted NULs and control characters, duplicated lines, broken indentation, tabs,
stray YAML syntax and alias bombs. Every spec goes through what `lhopt validate` runs
(:func:`load_spec`, then :func:`space_size` of a spec that loads); a mutated file that shipped
specs include (the families/ files, and specs built on other specs) is also loaded through a spec
that includes it, exactly as that spec does. ``derandomize=True`` makes the
examples the same on every run, so a failure here is reproducible.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhopt_dsl import ExperimentSpec, SpecError, load_spec, space_size
from lhopt_dsl.spec.loader import SpecProblem, spec_files

from .conftest import SPECS

FILES = sorted(p.relative_to(SPECS) for p in SPECS.rglob("*.yaml"))


def _included_by() -> dict[Path, Path]:
    """Each file of task_specs/ that a shipped spec includes, and the first spec that does."""
    out: dict[Path, Path] = {}
    for spec in sorted(SPECS.glob("*.yaml")):
        for included in spec_files(spec)[1:]:
            out.setdefault(included.relative_to(SPECS.resolve()), spec.relative_to(SPECS))
    return out


INCLUDED_BY = _included_by()

# Bytes that YAML treats specially, and bytes it must refuse (NUL, controls, DEL, invalid UTF-8).
SPECIAL = [
    b"\x00", b"\x01", b"\x07", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f", b"\t", b"\r", b"\n", b"\xff", b"\xc3",
    b"\xe2\x80\xa8", b"\xef\xbb\xbf", b":", b": ", b"- ", b"[", b"]", b"{", b"}", b",", b"&a ", b"*a", b"*zz",
    b"!!int ", b"!!python/object ", b"!x ", b"'", b'"', b"#", b"|", b">", b"? ", b"<<: *a", b"%YAML 1.1\n",
    b"---\n", b"...\n", b"\\", b'"\\x00"', b"1e400", b"9" * 5000, b"2020-13-45", b"include: ", b"!!binary x",
]  # fmt: skip
BOMB = b"".join(
    [b"x0: &x0 [l, l, l, l, l, l, l, l, l]\n"]
    + [b"x%d: &x%d [%s]\n" % (i, i, b", ".join([b"*x%d" % (i - 1)] * 9)) for i in range(1, 9)]
)
LOCATED = re.compile(r"^\S+:\d+:\d+: ", re.MULTILINE)


@st.composite
def mutations(draw: st.DrawFn, text: bytes) -> bytes:
    """``text`` after one to four random edits."""
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split(b"\n")
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        n = draw(st.integers(0, max(len(lines) - 1, 0)))
        kind = draw(st.sampled_from(
            ["flip", "delete", "insert", "special", "dup_line", "drop_line", "indent", "dedent", "tab", "bomb"]
        ))  # fmt: skip
        if kind == "flip":
            text = text[:i] + bytes([draw(st.integers(0, 255))]) + text[i + 1 :]
        elif kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)) :]
        elif kind == "insert":
            text = text[:i] + draw(st.binary(min_size=1, max_size=4)) + text[i:]
        elif kind == "special":
            text = text[:i] + draw(st.sampled_from(SPECIAL)) + text[i:]
        elif kind == "dup_line":
            text = b"\n".join([*lines[: n + 1], *lines[n:]])
        elif kind == "drop_line":
            text = b"\n".join([*lines[:n], *lines[n + 1 :]])
        elif kind == "indent":
            text = b"\n".join([*lines[:n], b" " * draw(st.integers(1, 3)) + lines[n], *lines[n + 1 :]])
        elif kind == "dedent":
            text = b"\n".join([*lines[:n], lines[n].lstrip(b" "), *lines[n + 1 :]])
        elif kind == "tab":
            text = b"\n".join([*lines[:n], b"\t" + lines[n], *lines[n + 1 :]])
        else:  # an alias bomb up front: unused, used as a value, or as the whole task list
            text = BOMB + draw(st.sampled_from([b"", b"seed: *x8\n", b"name: b\ntasks: {families: *x8}\n#"])) + text
    return text


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[Path, bytes]:
    """A spec file of task_specs/ (by its path there) and its mutated content."""
    rel = draw(st.sampled_from(FILES))
    return rel, draw(mutations((SPECS / rel).read_bytes()))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of task_specs/ whose files the test overwrites, one at a time."""
    root = tmp_path_factory.mktemp("fuzz") / "task_specs"
    shutil.copytree(SPECS, root)
    return root


def _validate(path: Path, load: Callable[[Path], ExperimentSpec] = load_spec) -> None:
    """What `lhopt validate` does with one spec: a SpecError must say where each problem is."""
    try:
        spec = load(path)
    except SpecError as e:
        assert e.problems, "a SpecError without problems"
        for problem in e.problems:
            if problem.message.startswith("... and "):  # the summary of problems left out
                continue
            assert problem.location is not None, f"a problem without a location: {problem}"
            assert problem.location.line >= 1 and problem.location.column >= 1, str(problem)
            assert LOCATED.match(str(problem)), str(problem)
        assert len(str(e)) < 100 * len(e.problems) + 2000, "the message quotes too much of the file"
        return
    space_size(spec)


@settings(
    max_examples=1000,
    derandomize=True,  # the same examples on every run and every machine
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=mutated_specs())
def test_mutated_specs_load_or_fail_with_a_located_spec_error(tree: Path, case: tuple[Path, bytes]) -> None:
    rel, text = case
    target = tree / rel
    target.write_bytes(text)
    try:
        started = time.perf_counter()
        _validate(target)
        if rel in INCLUDED_BY:
            _validate(tree / INCLUDED_BY[rel])
        assert time.perf_counter() - started < 10, "a small spec took seconds to check"
    finally:
        shutil.copyfile(SPECS / rel, target)


def test_every_family_file_is_fuzzed_through_a_spec_that_includes_it() -> None:
    families = {p.relative_to(SPECS) for p in (SPECS / "families").glob("*.yaml")}
    assert families and families <= INCLUDED_BY.keys(), families - INCLUDED_BY.keys()
    assert INCLUDED_BY[Path("families/transformer_algo.yaml")] == Path("cpu.yaml")  # as an evaluation family


def test_fuzz_test_catches_a_crash(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: with a reader that lets PyYAML's error through, a NUL byte is a crash."""
    from lhopt_dsl.spec import loader

    def unguarded(text: str, name: str, documents: bool = False) -> tuple[list, loader._Loader]:
        reader = loader._Loader(text)  # raises yaml.reader.ReaderError on a NUL
        return [reader.get_single_node()], reader

    monkeypatch.setattr(loader, "_compose", unguarded)
    target = tree / "smoke.yaml"
    target.write_bytes(b"name: t\x00\n" + (SPECS / "smoke.yaml").read_bytes())
    try:
        with pytest.raises(Exception) as info:
            _validate(target)
        assert not isinstance(info.value, SpecError)
    finally:
        shutil.copyfile(SPECS / "smoke.yaml", target)


def test_fuzz_test_catches_an_unlocated_error(tree: Path) -> None:
    """The check above can fail: a SpecError that does not say where is refused."""

    def load(path: Path) -> ExperimentSpec:
        raise SpecError([SpecProblem(None, "", "something is wrong somewhere")])

    with pytest.raises(AssertionError, match="without a location"):
        _validate(tree / "smoke.yaml", load)
