"""Hostile specs: a few bytes must not hang `lhopt validate`, exhaust memory or leak a file.

Every spec either validates, counts and samples quickly in little memory, or gets a SpecError
located at file:line:col and field. The guarantees are structural (caps on every size a spec
can name, integer ranges counted and sampled without being listed, includes confined to the
spec's tree), so the time and memory bounds below are generous and only catch a regression to
work proportional to a number in the spec.
"""

from __future__ import annotations

import os
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhopt_dsl import SpecError, load_spec, sample, space_size
from lhopt_dsl.spec import loader
from lhopt_dsl.spec.distributions import IntRange, LogIntRange, Uniform
from lhopt_dsl.spec.families import MAX_INNER_STEPS, MAX_LAYERS, MAX_WIDTH
from lhopt_dsl.spec.loader import parse_yaml
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.space import LayerAxis, axes_size, iter_settings, union_size

from .conftest import SPECS

SMOKE = (SPECS / "smoke.yaml").read_text()
LOCATED = re.compile(r"^\S+:\d+:\d+: ", re.MULTILINE)
#: Far above what any check below needs (milliseconds), far below the minutes of a regression.
SECONDS = 5.0


def _smoke(old: str, new: str, count: int = 1) -> str:
    """smoke.yaml with ``old`` replaced (which must be there)."""
    assert old in SMOKE, old
    return SMOKE.replace(old, new, count)


def _refused(path: Path, **kwargs: object) -> SpecError:
    """The SpecError of loading ``path``, which must come at once and locate every problem."""
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path, **kwargs)  # type: ignore[arg-type]
    assert time.perf_counter() - started < SECONDS, "refusing a spec took seconds"
    for problem in info.value.problems:
        assert problem.location is not None and LOCATED.match(str(problem)), str(problem)
    return info.value


# --- item 1: every spec is bounded -----------------------------------------------------------------

BOUNDED = [
    # (what, spec text, line, field path, words in the message)
    ("bins 10,000,000", _smoke("bins: 3", "bins: 10000000"), 24, "tasks.families[1].noise_scale.bins", "1000"),
    ("bins 1,000,000,000", _smoke("bins: 3", "bins: 1000000000"), 24, "tasks.families[1].noise_scale.bins", "1000"),
    ("a huge hex bins", _smoke("bins: 3", "bins: 0x" + "f" * 2000), 24, "tasks.families[1].noise_scale.bins", "1000"),
    ("int_range high 1e12", _smoke("high: 8}", "high: 1000000000000}"), 34, "tasks.families[2].seq_len",
     "[2, 8,192]; got 1000000000000"),
    ("int_range high 100,000,000", _smoke("high: 8}", "high: 100000000}"), 34, "tasks.families[2].seq_len",
     "lower it to at most 8,192"),
    ("log_int_range high 1e12",
     _smoke("inner_steps: {dist: choice, values: [60, 100]}", "inner_steps: {dist: log_int_range, low: 60, high: 1e12}"),
     18, "tasks.families[0].inner_steps", f"[1, {MAX_INNER_STEPS:,}]; got 1000000000000"),
    ("depth high 1,000,000", _smoke("depth: {dist: int_range, low: 1, high: 2}", "depth: {high: 1000000, dist: int_range, low: 1}"),
     12, "tasks.families[0].hidden.depth", f"[1, {MAX_LAYERS}]"),
    ("width 2**40", _smoke("width: {dist: choice, values: [16, 32]}", "width: {dist: choice, values: [16, 1099511627776]}"),
     13, "tasks.families[0].hidden.width", f"[1, {MAX_WIDTH:,}]"),
    ("an int_range end past 2**53", _smoke("high: 8}", "high: 0x" + "f" * 300 + "}"), 34, "tasks.families[2].seq_len.high",
     "less than or equal to"),
    ("weight .inf", _smoke("weight: 1.0", "weight: .inf"), 9, "tasks.families[0].weight", "finite"),
    ("weight .nan", _smoke("weight: 1.0", "weight: .nan"), 9, "tasks.families[0].weight", "finite"),
    ("weights that sum past the largest float", _smoke("weight: 1.0", "weight: 1.0e308", 2), 7, "tasks.families",
     "add up to more than the largest float"),
    ("choice weight .inf", _smoke("values: [16, 32]}", "values: [16, 32], weights: [1, .inf]}"), 13,
     "tasks.families[0].hidden.width.weights[1]", "finite"),
    ("choice weights that sum past the largest float", _smoke("values: [16, 32]}", "values: [16, 32], weights: [1e308, 1e308]}"),
     13, "tasks.families[0].hidden.width", "add up to more than the largest float"),
    ("an infinite fixed value", _smoke("spectrum_decay: {dist: choice, values: [1.0, 1.5]}", "spectrum_decay: .inf"), 23,
     "tasks.families[1].spectrum_decay", "finite"),
    ("a choice of 1,001 values", _smoke("values: [60, 100]}", "values: [" + ", ".join(map(str, range(1, 1002))) + "]}"),
     18, "tasks.families[0].inner_steps.values", "at most 1000 items"),
    ("an endless budget", _smoke("meta_train:", "  budget: {max_params: 1, max_tries: 1000000000000}\nmeta_train:"),
     51, "tasks.budget.max_tries", "10000"),
    ("a policy of 2,000,000 units", _smoke("hidden_size: 32", "hidden_size: 2000000"), 56, "meta_train.hidden_size", "4096"),
]  # fmt: skip


@pytest.mark.parametrize("what,text,line,path,words", BOUNDED, ids=[c[0] for c in BOUNDED])
def test_huge_numbers_get_a_located_error_at_once(write, what, text, line, path, words):
    err = _refused(write("spec.yaml", text))
    problem = err.problems[0]
    assert problem.location.line == line and problem.path == path, str(err)
    assert words in problem.message, str(err)
    assert len(str(err)) < 600, "a huge value is quoted whole"


def test_weight_inf_is_refused_by_validate_and_sample(write, capsys):
    """`weight: .inf` used to validate, then crash `lhopt sample` (probabilities contain NaN)."""
    from runners.cli import main

    path = str(write("spec.yaml", _smoke("weight: 1.0", "weight: .inf")))
    assert main(["validate", path]) == 1
    assert main(["sample", path, "--count", "3"]) == 2
    err = capsys.readouterr().err
    assert "spec.yaml:9:" in err and "finite" in err and "Traceback" not in err


def test_too_many_entries_of_one_family_are_a_located_error(write):
    entry = SMOKE[SMOKE.index("    - family: nqm") : SMOKE.index("    - family: rnn")]
    text = SMOKE.replace(entry, entry * 17)
    err = _refused(write("spec.yaml", text))
    assert err.problems[0].path == "tasks.families[17]" and "more than 16 entries of family 'nqm'" in str(err)
    assert space_size(load_spec(write("ok.yaml", SMOKE.replace(entry, entry * 16)))).total == 352


CAPPED = """\
name: capped
tasks:
  families:
    - family: mlp
      dataset: digits
      hidden: {depth: {dist: int_range, low: 1, high: 32}, width: {dist: int_range, low: 1, high: 65536}}
      activation: relu
      norm: none
      loss: mse
      batch_size: {dist: log_int_range, low: 1, high: 65536}
      inner_steps: {dist: log_int_range, low: 128, high: 1000000}
      outer_steps: {dist: int_range, low: 2, high: 128}
    - family: nqm
      dim: {dist: int_range, low: 1, high: 100000000}
      spectrum_decay: {dist: uniform, low: 0.5, high: 2.0, bins: 1000}
      noise_scale: {dist: log_uniform, low: 0.01, high: 10.0, bins: 1000}
      batch_size: {dist: int_range, low: 1, high: 65536}
      inner_steps: {dist: int_range, low: 128, high: 1000000}
      outer_steps: {dist: int_range, low: 2, high: 128}
"""


def test_a_spec_at_every_cap_validates_counts_and_samples_in_little_time_and_memory(write):
    path = write("capped.yaml", CAPPED + CAPPED[CAPPED.index("    - family: nqm") :])  # two overlapping NQM entries
    tracemalloc.start()
    try:
        started = time.perf_counter()
        spec = load_spec(path)
        size = space_size(spec)
        tasks = [sample(spec, train_seed(0, 0, i)) for i in range(50)]
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < SECONDS and peak < 100 * 2**20, (elapsed, peak)
    widths = sum(65536**d for d in range(1, 33))
    assert size.entries[0] == widths * 65536 * (1_000_000 - 127) * 127
    nqm = 100_000_000 * 1000 * 1000 * 65536 * (1_000_000 - 127) * 127
    assert size.entries[1:] == [nqm, nqm] and size.families["nqm"] == nqm  # the same settings counted once
    assert {t.family for t in tasks} == {"mlp", "nqm"}


def test_cli_validate_and_space_print_a_spec_at_every_cap(write, capsys):
    from runners.cli import main

    path = str(write("capped.yaml", CAPPED))
    assert main(["validate", path]) == 0
    assert main(["space", path, "--budget-draws", "1"]) == 0
    out = capsys.readouterr().out
    assert "1..65536" in out and "128..1000000" in out


def test_a_task_file_carries_the_same_caps():
    """A task file is read without a spec (`lhopt schedule export --task`): its sizes are capped too."""
    from pydantic import ValidationError

    from lhopt_dsl import TaskConfig

    text = (SPECS / "transfer" / "mlp_large.yaml").read_text()
    assert TaskConfig.from_yaml(text).task.hidden == (256, 256)
    for old, new, field in [("[256, 256]", "[2000000000]", "hidden.0"), ("[256, 256]", "[" + "8, " * 33 + "8]", "hidden"),
                            ("inner_steps: 1200", "inner_steps: 1e12", "inner_steps")]:  # fmt: skip
        with pytest.raises(ValidationError) as info:
            TaskConfig.from_yaml(text.replace(old, new))
        assert f"task.mlp.{field}" in str(info.value), str(info.value)


def test_extreme_hyperparameter_actions_are_clamped_not_crashed():
    from lhopt_dsl.spec import CIAOSpace

    space = CIAOSpace()
    clip, lr = space.grad_clip_fraction, space.lr
    assert clip.apply(0.5, -1e308) == clip.bounds[0] and clip.apply(0.5, 1e308) == clip.bounds[1]
    assert lr.apply(1e-3, 1e308) == lr.bounds[1] and lr.apply(1e-3, 5e-324) == lr.bounds[0]


def test_integer_ranges_are_sampled_and_counted_without_being_listed():
    """A range of 2**53 values would take 72 petabytes as a list; as a range it takes nothing."""
    import numpy as np

    rng = np.random.default_rng(0)
    for dist in (IntRange(low=1, high=2**53), LogIntRange(low=1, high=2**53)):
        assert len(dist.support()) == 2**53 and 2**52 in dist.support()
        assert all(1 <= dist.sample(rng) <= 2**53 for _ in range(100))
    with pytest.raises(ValueError, match="overflows a float"):  # every point of its grid would be NaN
        Uniform(low=-1e308, high=1e308, bins=3)
    axis = LayerAxis(range(1, MAX_LAYERS + 1), range(1, MAX_WIDTH + 1), True)
    assert union_size([{"a": range(0, 2**53), "h": axis}] * 2) == 2**53 * axis.size()


# --- exact counting, arithmetically ---------------------------------------------------------------

VALUES = st.sampled_from([0, 1, 2, 3, 5, True, 2.0, 2.5, "x"])


@st.composite
def value_axes(draw: st.DrawFn) -> frozenset | range:
    """A small set of values, or a range (possibly empty), mixing values that compare equal (1, True)."""
    if draw(st.booleans()):
        start = draw(st.integers(-2, 4))
        return range(start, start + draw(st.integers(0, 4)))
    return frozenset(draw(st.lists(VALUES, max_size=4)))


@st.composite
def entries(draw: st.DrawFn) -> list[dict]:
    """A few entries of one family: two value axes and a layer axis."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        depths = draw(st.one_of(st.builds(range, st.integers(1, 2), st.integers(1, 4)),
                                st.frozensets(st.integers(1, 3), max_size=3)))  # fmt: skip
        widths = draw(st.one_of(st.builds(range, st.integers(1, 3), st.integers(1, 5)),
                                st.frozensets(st.integers(1, 4), max_size=3)))  # fmt: skip
        out.append({"a": draw(value_axes()), "b": draw(value_axes()), "h": LayerAxis(depths, widths, draw(st.booleans()))})
    return out


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(family=entries())
def test_union_size_equals_brute_force(family):
    """Inclusion-exclusion over membership masks counts exactly what listing every setting finds."""
    seen = {tuple(s.items()) for e in family for s in iter_settings(e)}
    assert union_size(family) == len(seen)
    assert all(axes_size(e) == len(list(iter_settings(e))) for e in family)


def test_sixteen_overlapping_entries_with_large_axes_are_counted_at_once():
    family = [
        {
            "a": frozenset(range(6000)) - {i},
            "b": range(i, 1_000_000 - i),
            "h": LayerAxis(range(1, 33 - i % 3), range(1, 65537 - i), i % 2 == 0),
        }
        for i in range(16)
    ]
    started = time.perf_counter()
    total = union_size(family)
    assert time.perf_counter() - started < SECONDS
    assert max(axes_size(e) for e in family) < total < sum(axes_size(e) for e in family)


# --- adversarial values anywhere a number goes ------------------------------------------------------

#: Where a number goes in smoke.yaml: (text to replace, template with {} for the value).
SLOTS = [
    ("weight: 1.0", "weight: {}"),
    ("bins: 3", "bins: {}"),
    ("depth: {dist: int_range, low: 1, high: 2}", "depth: {{dist: int_range, low: 1, high: {}}}"),
    ("depth: {dist: int_range, low: 1, high: 2}", "depth: {{dist: log_int_range, low: 1, high: {}}}"),
    ("depth: {dist: int_range, low: 1, high: 2}", "depth: {}"),
    ("width: {dist: choice, values: [16, 32]}", "width: {{dist: int_range, low: 1, high: {}}}"),
    ("width: {dist: choice, values: [16, 32]}", "width: {{dist: choice, values: [16, {}], weights: [1, {}]}}"),
    ("high: 8}", "high: {}}}"),
    ("low: 4, high: 8}", "low: {}, high: 8}}"),
    ("batch_size: 32", "batch_size: {{dist: log_int_range, low: 1, high: {}}}"),
    ("inner_steps: {dist: choice, values: [60, 100]}", "inner_steps: {{dist: int_range, low: 60, high: {}}}"),
    ("dim: {dist: choice, values: [10, 100]}", "dim: {{dist: int_range, low: 1, high: {}}}"),
    ("spectrum_decay: {dist: choice, values: [1.0, 1.5]}", "spectrum_decay: {{dist: uniform, low: 0.5, high: {}, bins: 4}}"),
    ("noise_scale: {dist: log_uniform, low: 0.1, high: 1.0, bins: 3}", "noise_scale: {{dist: log_uniform, low: {}, high: 1.0, bins: 3}}"),
    ("seed: 0", "seed: {}"),
    ("num_heads: {dist: choice, values: [1, 2]}", "num_heads: {{dist: int_range, low: 1, high: {}}}"),
    ("evaluation:", "hparams:\n  grad_clip_fraction: {{noise: {{low: -{}, high: {}}}}}\nevaluation:"),
    ("evaluation:", "hparams:\n  lr: {{init: {}, noise: {{low: {}, high: 100.0}}}}\nevaluation:"),
    ("evaluation:", "hparams:\n  eps: {{bounds: [{}, {}]}}\nevaluation:"),
    ("d_model: 32", "d_model: {{dist: int_range, low: 32, high: {}}}"),
]  # fmt: skip
#: Every cap and its neighbours: the largest valid specs, and the smallest refused ones.
CAPS = sorted({c + d for c in (2, 32, 128, 1000, 8192, 65536, 1_000_000, 100_000_000, 2**53) for d in (-1, 0, 1)})
NUMBERS = st.one_of(
    st.sampled_from(CAPS),
    st.integers(-(2**70), 2**70),
    st.integers(0, 4000).map(lambda bits: str(2**bits)),
    st.integers(0, 4000).map(lambda bits: hex(2**bits - 1)),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([".inf", "-.inf", ".nan", "1e308", "5e-324", "190:20:30", "1:30.5", "0b" + "1" * 300,
                     "0o777", "0777", "1_000_000", "9" * 4500, "~", "[]", "{}", "''"]),
)  # fmt: skip


@settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(slot=st.sampled_from(SLOTS), values=st.lists(NUMBERS, min_size=2, max_size=2))
def test_adversarial_numbers_validate_count_and_sample_quickly_or_get_a_located_error(write, slot, values):
    old, template = slot
    new = template.format(*[str(v) for v in values][: template.count("{}")])
    path = write("spec.yaml", _smoke(old, new))
    started = time.perf_counter()
    try:
        spec = load_spec(path)
    except SpecError as e:
        for problem in e.problems:
            assert problem.message.startswith("... and ") or (problem.location and LOCATED.match(str(problem))), str(e)
        assert len(str(e)) < 100 * len(e.problems) + 2000, "the message quotes too much of the spec"
    else:
        space_size(spec)
        for i in range(5):
            sample(spec, train_seed(spec.seed, 0, i))
    assert time.perf_counter() - started < SECONDS, "a spec took seconds to check, count or sample"


# --- YAML 1.1 base-60 numbers -------------------------------------------------------------------------


def test_sexagesimal_is_a_string_not_a_number(write):
    assert parse_yaml("a: 190:20:30\nb: 1:30.5\nc: -1:00\n") == {"a": "190:20:30", "b": "1:30.5", "c": "-1:00"}
    # Everything else YAML 1.1 reads as a number still is one, and 1e-3 is a float.
    numbers = parse_yaml("[0x1f, 0b101, 017, 1_000, 12, -3, 1.5, 1e-3, .5, .inf, -.inf, 2.5e+3]")
    assert numbers[:6] == [31, 5, 15, 1000, 12, -3] and numbers[6:9] == [1.5, 0.001, 0.5]
    assert numbers[9:] == [float("inf"), float("-inf"), 2500.0]
    err = _refused(write("spec.yaml", _smoke("seed: 0", "seed: 190:20:30")))
    assert "spec.yaml:4:1: seed: Input should be a valid integer" in str(err)
    err = _refused(write("spec.yaml", _smoke("inner_steps: {dist: choice, values: [60, 100]}", "inner_steps: 1:40")))
    assert err.problems[0].path == "tasks.families[0].inner_steps" and "integer" in str(err)


# --- includes -----------------------------------------------------------------------------------------

NQM = "family: nqm\ndim: 10\nspectrum_decay: 1.0\nnoise_scale: 1.0\nbatch_size: 4\ninner_steps: 20\nouter_steps: 2\n"
SECRET = "AWS_SECRET_ACCESS_KEY: hunter2-wJalrXUtnFEMI\nAWS_ACCESS_KEY_ID: AKIA-hunter2\n"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A spec directory and, beside it, a directory holding secrets; no include directories set.
    Records every file the loader opens, to prove a refused include is never read."""
    monkeypatch.delenv(loader.SPEC_PATH_ENV, raising=False)
    specs, outside = tmp_path / "specs", tmp_path / "outside"
    specs.mkdir()
    outside.mkdir()
    (outside / "secret.yaml").write_text(SECRET)
    (outside / "nqm.yaml").write_text(NQM)
    (specs / "nqm.yaml").write_text(NQM)
    opened: list[Path] = []
    read_text = loader._read_text

    def recording(file: Path, *args: object) -> str:
        opened.append(Path(file))
        return read_text(file, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "_read_text", recording)
    return {"specs": specs, "outside": outside, "opened": opened}  # type: ignore[dict-item]


def _spec(tree: dict, include: str) -> Path:
    path = tree["specs"] / "spec.yaml"
    path.write_text(f"name: t\ntasks:\n  families:\n    - include: {include}\n")
    return path


def _refused_unread(tree: dict, include: str, words: str) -> SpecError:
    """Loading a spec including ``include`` is refused with ``words``, located at the include, and
    no file outside the spec's directory was opened."""
    err = _refused(_spec(tree, include))
    problem = err.problems[0]
    assert problem.location.file.endswith("spec.yaml") and problem.location.line == 4, str(err)
    assert problem.path == "tasks.families[0]" and words in problem.message, str(err)
    assert "hunter2" not in str(err) and "AWS_" not in str(err) and "AKIA" not in str(err)
    assert all(p.resolve().is_relative_to(tree["specs"].resolve()) for p in tree["opened"]), tree["opened"]
    return err


def test_an_include_outside_the_spec_directory_is_refused_unread(tree):
    _refused_unread(tree, str(tree["outside"] / "secret.yaml"), "lies outside the spec's directory")
    _refused_unread(tree, "../outside/secret.yaml", "LHOPT_SPEC_PATH")


@pytest.mark.skipif(not Path("/etc/shadow").exists(), reason="no /etc/shadow here")
def test_etc_shadow_is_refused_unread(tree):
    _refused_unread(tree, "/etc/shadow", "not a .yaml or .yml file")


def test_a_file_that_is_not_yaml_is_refused_unread(tree):
    (tree["specs"] / ".env").write_text(SECRET)
    (tree["specs"] / "secret.txt").write_text(SECRET)
    _refused_unread(tree, ".env", "not a .yaml or .yml file")
    _refused_unread(tree, "secret.txt", "not a .yaml or .yml file")
    assert {p.name for p in tree["opened"]} == {"spec.yaml"}, "only the spec itself was read"


def test_a_symbolic_link_out_of_the_tree_is_refused_unread(tree):
    (tree["specs"] / "link.yaml").symlink_to(tree["outside"] / "secret.yaml")
    (tree["specs"] / "sub").symlink_to(tree["outside"], target_is_directory=True)
    (tree["specs"] / "env.yaml").symlink_to(tree["specs"] / "secret.env")
    _refused_unread(tree, "link.yaml", "is a symbolic link to a file outside the spec's directory")
    _refused_unread(tree, "sub/secret.yaml", "is a symbolic link to a file outside the spec's directory")
    _refused_unread(tree, "env.yaml", "not a .yaml or .yml file (through a symbolic link)")


def test_a_loop_of_symbolic_links_is_a_located_error(tree):
    (tree["specs"] / "a.yaml").symlink_to(tree["specs"] / "b.yaml")
    (tree["specs"] / "b.yaml").symlink_to(tree["specs"] / "a.yaml")
    (tree["specs"] / "self.yaml").symlink_to(tree["specs"] / "self.yaml")
    _refused_unread(tree, "a.yaml", "loop of symbolic links")
    _refused_unread(tree, "self.yaml", "loop of symbolic links")
    # So is one in the data directory, and one in the spec's own name.
    (tree["specs"] / "data").symlink_to(tree["specs"] / "data")
    path = tree["specs"] / "spec.yaml"
    path.write_text(f"name: t\ndata_dir: data\ntasks:\n  families:\n    - include: nqm.yaml\n")
    err = _refused(path)
    assert err.problems[0].path == "data_dir" and err.problems[0].location.line == 2, str(err)
    with pytest.raises(SpecError, match="loop of symbolic links"):
        load_spec(tree["specs"] / "self.yaml")


def test_directories_named_by_the_user_may_be_included(tree, monkeypatch):
    from runners.cli import main

    path = _spec(tree, "../outside/nqm.yaml")
    _refused(path)
    assert load_spec(path, include_dirs=[tree["outside"]]).tasks.families[0].dim == 10
    # A secret in a trusted directory is read, but never quoted: it is not a family.
    err = _refused(_spec(tree, "../outside/secret.yaml"), include_dirs=[tree["outside"]])
    assert "hunter2" not in str(err) and "AKIA" not in str(err)
    path = _spec(tree, "../outside/nqm.yaml")
    monkeypatch.setenv(loader.SPEC_PATH_ENV, os.pathsep.join(["", str(tree["outside"])]))
    assert load_spec(path).tasks.families[0].dim == 10
    monkeypatch.delenv(loader.SPEC_PATH_ENV)
    assert main(["validate", str(path)]) == 1
    assert main(["--include-dir", str(tree["outside"]), "validate", str(path)]) == 0


def test_includes_within_the_tree_still_point_into_the_included_file(tree):
    (tree["specs"] / "fam").mkdir()
    (tree["specs"] / "fam" / "bad.yml").write_text(NQM.replace("dim: 10", "dim: 0"))
    err = _refused(_spec(tree, "fam/bad.yml"))
    assert err.problems[0].location.file.endswith("bad.yml") and err.problems[0].location.line == 2
    assert err.problems[0].path == "tasks.families[0].dim"


# --- the largest specs ------------------------------------------------------------------------------


def _many_values(per_choice: int) -> str:
    """16 overlapping NQM entries, each with three choices of ``per_choice`` values and 1,000 bins."""
    lines = ["name: many", "tasks:", "  families:"]
    for i in range(16):
        values = ", ".join(str(i + 3 * k + 1) for k in range(per_choice))
        lines += [
            "    - family: nqm",
            f"      dim: {{dist: choice, values: [{values}]}}",
            "      spectrum_decay: {dist: uniform, low: 0.5, high: 2.0, bins: 1000}",
            f"      noise_scale: {{dist: log_uniform, low: 0.01, high: {10 + i}.0, bins: 1000}}",
            f"      batch_size: {{dist: choice, values: [{values}]}}",
            "      inner_steps: {dist: choice, values: [" + ", ".join(str(200 + i + 3 * k) for k in range(per_choice)) + "]}",
            f"      outer_steps: {{dist: int_range, low: 2, high: {100 + i}}}",
        ]
    return "\n".join(lines) + "\n"


def test_the_largest_spec_validates_counts_and_samples_quickly_and_a_larger_one_is_refused_early(write):
    path = write("many.yaml", _many_values(390))  # about 19,000 values: just under the limit
    started = time.perf_counter()
    spec = load_spec(path)
    assert space_size(spec).families["nqm"] > 390**3 * 1000**2
    for i in range(20):
        sample(spec, i)
    assert time.perf_counter() - started < SECONDS
    # A megabyte of values is refused as soon as the parser passes the limit, not after reading it all.
    text = "name: t\nx: [" + ", ".join(["1234567"] * 115_000) + "]\n"
    assert len(text) <= loader.MAX_YAML_BYTES
    err = _refused(write("huge.yaml", text))
    assert f"holds more than {loader.MAX_SPEC_VALUES:,} values" in str(err) and err.problems[0].location.line == 2
    assert str(err).count("1234567") == 0
