"""Every kind of bad input gives a SpecError naming file, line, column and field path."""

import os
import time
from pathlib import Path

import pytest

from lhopt_dsl import SpecError, load_spec

from .conftest import SPECS

GOOD_MLP = """\
name: t
tasks:
  families:
    - family: mlp
      weight: 1.0
      dataset: digits
      hidden:
        depth: 1
        width: {dist: choice, values: [8, 16]}
      activation: relu
      norm: none
      loss: cross_entropy
      batch_size: 32
      inner_steps: 50
      outer_steps: 4
"""


NQM_UNBINNED = """\
name: t
tasks:
  families:
    - family: nqm
      dim: 10
      spectrum_decay: {dist: uniform, low: 0.5, high: 2.0}
      noise_scale: 1.0
      batch_size: 4
      inner_steps: 20
      outer_steps: 2
"""


def _replace(old: str, new: str) -> str:
    assert old in GOOD_MLP
    return GOOD_MLP.replace(old, new)


def _error(write, text: str, name: str = "spec.yaml") -> SpecError:
    path = write(name, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value


def test_good_spec_loads(write):
    spec = load_spec(write("spec.yaml", GOOD_MLP))
    assert spec.tasks.families[0].family == "mlp"


CASES = [
    # (what, spec text, expected line, expected field path, words in the message)
    ("unknown key", _replace("      loss: cross_entropy\n", "      loss: cross_entropy\n      widht: 3\n"),
     13, "tasks.families[0].widht", "unknown key 'widht'"),
    ("wrong type", _replace("batch_size: 32", "batch_size: lots"), 13, "tasks.families[0].batch_size", "integer"),
    ("out-of-range value", _replace("outer_steps: 4", "outer_steps: 200"), 15, "tasks.families[0].outer_steps", "[2, 128]"),
    ("value below its limit", _replace("values: [8, 16]", "values: [0, 16]"), 9, "tasks.families[0].hidden.width", "[1, 65,536]; got 0"),
    ("empty choice", _replace("values: [8, 16]", "values: []"), 9, "tasks.families[0].hidden.width.values", "at least 1"),
    ("negative weight", _replace("weight: 1.0", "weight: -2"), 5, "tasks.families[0].weight", "greater than 0"),
    ("bad log range", _replace("inner_steps: 50", "inner_steps: {dist: log_int_range, low: 0, high: 9}"),
     14, "tasks.families[0].inner_steps.low", "greater than 0"),
    ("reversed range", _replace("inner_steps: 50", "inner_steps: {dist: int_range, low: 90, high: 9}"),
     14, "tasks.families[0].inner_steps", "must be >= low"),
    ("unknown family", _replace("family: mlp", "family: mpl"), 4, "tasks.families[0]", "'mpl'"),
    ("unknown dist", _replace("{dist: choice, values: [8, 16]}", "{dist: choise, values: [8, 16]}"),
     9, "tasks.families[0].hidden.width", "unknown dist 'choise'"),
    ("missing field", _replace("      loss: cross_entropy\n", ""), 4, "tasks.families[0].loss", "missing required field 'loss'"),
    ("continuous without bins", NQM_UNBINNED, 6, "tasks.families[0].spectrum_decay", "bins: N"),
    ("outer steps above inner steps", _replace("inner_steps: 50", "inner_steps: 3"), 4, "tasks.families[0]", "inner_steps"),
    ("weights of wrong length", _replace("values: [8, 16]}", "values: [8, 16], weights: [1]}"),
     9, "tasks.families[0].hidden.width", "one weight per value"),
    ("duplicate key", _replace("norm: none", "norm: none\n      norm: batch"), 12, "tasks.families[0].norm", "duplicate key"),
    ("bad device", GOOD_MLP.replace("name: t", "name: t\ndevice: gpu0"), 2, "device", "pattern"),
    ("hyperparameter of another space", GOOD_MLP + "hparams:\n  space: adamw\n  grad_clip_fraction: {init: 0.5}\n",
     16, "hparams", "'grad_clip_fraction' belongs to the ciao space, not to the adamw space"),
    ("setting of another space", GOOD_MLP + "hparams:\n  space: adamw\n  denominator: adam\n",
     16, "hparams", "set `space: ciao`"),
    ("unknown space", GOOD_MLP + "hparams:\n  space: sgd\n", 16, "hparams", "`space: adamw`"),
    ("bad value in the adamw space", GOOD_MLP + "hparams:\n  space: adamw\n  eps:\n    init: 1.0\n",
     18, "hparams.eps", "outside bounds [1e-12, 0.1]"),
    ("bad value in the ciao space", GOOD_MLP + "hparams:\n  eps:\n    init: 1.0\n",
     17, "hparams.eps", "outside bounds [1e-10, 0.1]"),
]



def test_a_value_outside_a_long_vocabulary_names_a_few_and_how_many(write):
    """A Transformer dataset is one of 88 names: the message shows some, not a paragraph of them."""
    from lhopt_dsl.spec.families import LM_DATASETS

    text = (SPECS / "families" / "transformer.yaml").read_text().replace("[markov1,", "[arkov1,", 1)
    spec = "name: t\ntasks:\n  families:\n    - " + text.replace("\n", "\n      ")
    problem = _error(write, spec).problems[0]
    assert problem.path == "tasks.families[0].dataset.values[0]"
    assert f"one of {len(LM_DATASETS)} values: 'markov1'," in problem.message and "docs/dsl.md" in problem.message
    assert len(problem.message) < 250 and LM_DATASETS[-1] not in problem.message
    short = _error(write, _replace("loss: cross_entropy", "loss: hinge")).problems[0]  # 4 options: all of them
    assert "'cross_entropy', 'mae', 'mse' or 'huber'" in short.message


@pytest.mark.parametrize("what,text,line,path,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_file_line_and_path(write, what, text, line, path, words):
    err = _error(write, text)
    problem = err.problems[0]
    assert problem.location is not None
    assert problem.location.file.endswith("spec.yaml")
    assert problem.location.line == line, str(err)
    assert problem.path == path, str(err)
    assert words in problem.message, str(err)
    # The rendered message carries all of it: file:line:col: path: message.
    assert f"spec.yaml:{line}:" in str(err) and path in str(err)


def test_yaml_syntax_error_has_line(write):
    err = _error(write, "name: t\ntasks: {families: [\nseed: 1\n")
    assert err.problems[0].location.file.endswith("spec.yaml")
    assert err.problems[0].location.line >= 2
    assert "YAML syntax error" in str(err)


def test_missing_include_names_the_file_and_where(write):
    text = GOOD_MLP.replace("  families:\n", "  families:\n    - {include: fams/nothere.yaml}\n")
    err = _error(write, text)
    problem = err.problems[0]
    assert problem.location.line == 4 and problem.path == "tasks.families[0]"
    assert "nothere.yaml" in problem.message and "not found" in problem.message


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "absent.yaml")


def test_include_cycle_is_reported(write):
    write("a.yaml", "name: a\ntasks: b.yaml\n")
    write("b.yaml", "families:\n  - include: c.yaml\n")
    write("c.yaml", "include: b.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec(write("a.yaml", "name: a\ntasks: b.yaml\n"))
    assert "include cycle" in str(info.value)
    assert "b.yaml -> " in str(info.value) and "c.yaml" in str(info.value)


def test_errors_inside_included_files_point_into_them(write):
    fam_text = "family: mlp\ndataset: digits\nhidden: {depth: 1, width: 8}\nactivation: swish\nnorm: none\n" \
               "loss: mse\nbatch_size: 8\ninner_steps: 20\nouter_steps: 2\n"
    write("fam/mlp.yaml", fam_text)
    err = _error(write, "name: t\ntasks:\n  families:\n    - {include: fam/mlp.yaml, weight: 2}\n", "top.yaml")
    problem = err.problems[0]
    assert problem.location.file.endswith("mlp.yaml") and problem.location.line == 4
    assert problem.path == "tasks.families[0].activation"


def test_include_overrides_and_tasks_path(write):
    write("fam.yaml", "family: nqm\ndim: 10\nspectrum_decay: 1.0\nnoise_scale: 1.0\nbatch_size: 4\n"
          "inner_steps: 20\nouter_steps: 2\n")
    write("dist.yaml", "families:\n  - {include: fam.yaml, weight: 3, dim: {dist: choice, values: [10, 20]}}\n")
    spec = load_spec(write("exp.yaml", "name: e\ntasks: dist.yaml\n"))
    fam = spec.tasks.families[0]
    assert fam.weight == 3 and fam.dim.values == [10, 20]


TRANSFORMER = """\
family: transformer
dataset: markov1
d_model: 16
num_layers: 1
num_heads: 2
ff_mult: 1
seq_len: 8
norm_position: pre
positional: learned
batch_size: 4
inner_steps: 10
outer_steps: 2
"""


def _entry(family: str, indent: str) -> str:
    """A family's YAML as one list entry at ``indent``."""
    return indent + "- " + family.replace("\n", "\n" + indent + "  ").rstrip() + "\n"


def _experiment(training: str, evaluation: str | None = None) -> str:
    """An experiment whose training (and evaluation) distribution is one family entry."""
    text = "name: t\ntasks:\n  families:\n" + _entry(training, "    ")
    if evaluation is not None:
        text += "evaluation:\n  tasks:\n    families:\n" + _entry(evaluation, "      ")
    return text


def test_ood_dataset_rejected_in_training(write):
    text = _experiment(TRANSFORMER.replace("markov1", "tinyshakespeare"))
    err = _error(write, text)
    problem = err.problems[0]
    assert problem.path == "tasks.families[0].dataset" and problem.location.line == 5
    assert "out-of-distribution" in str(err) and "evaluation.tasks" in str(err)
    # ...but it is welcome in an evaluation distribution.
    spec = load_spec(write("ok.yaml", _experiment(TRANSFORMER, TRANSFORMER.replace("markov1", "tinyshakespeare"))))
    assert spec.evaluation.tasks.families[0].dataset == "tinyshakespeare"


def test_algorithmic_dataset_rejected_in_training_at_its_line(write):
    err = _error(write, _experiment(TRANSFORMER.replace("markov1", "copy")))
    problem = err.problems[0]
    assert problem.location.file.endswith("spec.yaml") and problem.location.line == 5
    assert problem.path == "tasks.families[0].dataset"
    assert "spec.yaml:5:" in str(err)
    assert "'copy' is algorithmic" in problem.message and "Algo+Transformer" in problem.message
    assert "evaluation.tasks" in problem.message


def test_algorithmic_choice_value_is_located_in_the_list(write):
    choice = "dataset:\n  dist: choice\n  values:\n    - markov1\n    - sort\n    - addition\n"
    err = _error(write, _experiment(TRANSFORMER.replace("dataset: markov1\n", choice)))
    problem = err.problems[0]
    assert problem.path == "tasks.families[0].dataset.values[1]" and problem.location.line == 9
    assert "'sort' is algorithmic" in problem.message and "also held out here: addition" in problem.message
    # A zero weight means the value is never drawn: nothing held out is trained on.
    weighted = choice + "  weights: [1, 0, 0]\n"
    assert load_spec(write("w.yaml", _experiment(TRANSFORMER.replace("dataset: markov1\n", weighted))))


def test_algorithmic_dataset_in_an_include_points_into_the_right_file(write):
    write("fam/algo.yaml", TRANSFORMER.replace("markov1", "dyck2"))
    err = _error(write, "name: t\ntasks:\n  families:\n    - {include: fam/algo.yaml}\n")
    assert err.problems[0].location.file.endswith("algo.yaml") and err.problems[0].location.line == 2
    # An override in the including file is reported where it is written, not in the included file.
    write("fam/text.yaml", TRANSFORMER)
    text = "name: t\ntasks:\n  families:\n    - include: fam/text.yaml\n      dataset: reverse\n"
    problem = _error(write, text).problems[0]
    assert problem.location.file.endswith("spec.yaml") and problem.location.line == 5, str(problem)


def test_algorithmic_datasets_are_welcome_in_evaluation(write):
    spec = load_spec(write("ok.yaml", _experiment(TRANSFORMER, TRANSFORMER.replace("markov1", "copy"))))
    assert spec.evaluation.tasks.families[0].dataset == "copy"
    assert spec.tasks.held_out_datasets() == [] and len(spec.evaluation.tasks.held_out_datasets()) == 1


def test_heads_must_divide_width(write):
    text = (
        "name: t\ntasks:\n  families:\n    - family: transformer\n      dataset: markov1\n"
        "      d_model: {dist: choice, values: [16, 24]}\n      num_layers: 1\n"
        "      num_heads: {dist: choice, values: [1, 16]}\n      ff_mult: 1\n      seq_len: 8\n"
        "      norm_position: pre\n      positional: learned\n      batch_size: 4\n      inner_steps: 10\n"
        "      outer_steps: 2\n"
    )
    err = _error(write, text)
    assert "d_model 24 is not divisible by num_heads 16" in str(err)


def test_all_problems_are_reported_at_once(write):
    text = _replace("batch_size: 32", "batch_size: lots").replace("norm: none", "norm: sometimes")
    err = _error(write, text)
    paths = {p.path for p in err.problems}
    assert {"tasks.families[0].batch_size", "tasks.families[0].norm"} <= paths


# --- hostile and broken YAML -----------------------------------------------------------------------


YAML_ERRORS = [
    # (what, spec text, expected line, expected column or None, words in the message)
    ("NUL byte", "name: t\nseed: 1\x00\n", 2, 8, "U+0000"),
    ("control character", "name: t\ntasks:\n  families: [\x1b]\n", 3, 14, "U+001B"),
    ("tab indentation", "name: t\ntasks:\n\tfamilies: []\n", 3, 1, "'\\t'"),
    ("unclosed quote", 'name: "t\nseed: 1\n', 3, None, "quoted scalar"),
    ("bad indentation", "name: t\n  seed: 1\n", 2, 7, "mapping values"),
    ("undefined alias", "name: *nothing\n", 1, 7, "undefined alias"),
    ("unknown tag", "name: !!python/object:os.system echo\n", 1, 7, "constructor"),
    ("bad int", "name: t\nseed: !!int abc\n", 2, 7, "not a valid int"),
    ("bad date", "name: t\nseed: 2020-13-45\n", 2, 7, "not a valid timestamp"),
    ("bad bool", "name: t\nseed: !!bool maybe\n", 2, 7, "not a valid bool"),
    ("recursive alias", "name: t\nseed: &a [*a]\n", 2, 7, "recursive alias"),
    ("deep nesting", "name: t\nseed: " + "[" * 2000 + "]" * 2000 + "\n", 2, None, "nested"),
    ("merge key", "name: t\nbase: &b {seed: 1}\nx:\n  <<: *b\n", 4, 3, "merge keys"),
    ("not UTF-8", "name: t\n", 2, 4, "not UTF-8"),  # the text gets a latin-1 byte below
]


@pytest.mark.parametrize("what,text,line,col,words", YAML_ERRORS, ids=[c[0] for c in YAML_ERRORS])
def test_every_yaml_error_is_a_located_spec_error(write, tmp_path, what, text, line, col, words):
    path = write("spec.yaml", text)
    if what == "not UTF-8":
        path.write_bytes(b"name: t\nx: \xe9t\xe9\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problem = info.value.problems[0]
    assert problem.location is not None and problem.location.file.endswith("spec.yaml"), str(info.value)
    assert problem.location.line == line, str(info.value)
    assert col is None or problem.location.column == col, str(info.value)
    assert words in problem.message, str(info.value)
    assert f"spec.yaml:{line}:" in str(info.value)


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" spec: each level is ``width`` aliases of the one below (width**levels values)."""
    lines = ["name: bomb", "a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join([*lines, f"tasks: {{families: *a{levels - 1}}}"]) + "\n"


def test_alias_bomb_is_refused_at_once(write):
    text = _bomb()
    assert len(text) < 1200
    started = time.perf_counter()
    err = _error(write, text)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert "spec.yaml:" in str(err) and "expands to more than" in str(err) and "alias" in str(err)


def test_alias_bomb_through_includes_is_refused(write):
    dims = ", ".join(str(d) for d in range(1, 41))  # each include brings some 50 values
    write("fam.yaml", f"family: nqm\ndim: {{dist: choice, values: [{dims}]}}\nspectrum_decay: 1.0\n"
          "noise_scale: 1.0\nbatch_size: 4\ninner_steps: 20\nouter_steps: 2\n")
    text = "name: b\na0: &a0 [{include: fam.yaml}, {include: fam.yaml, weight: 2}, {include: fam.yaml}]\n"
    # Small enough to pass the check of the file alone: the included files make it too big.
    text += "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 6))
    started = time.perf_counter()
    err = _error(write, text + "tasks: {families: *a5}\n")
    assert time.perf_counter() - started < 10
    assert "the spec " in str(err) and "spec.yaml expands to more than" in str(err)  # counted across files


def test_a_few_aliases_still_work(write):
    text = GOOD_MLP.replace("width: {dist: choice, values: [8, 16]}", "width: &w {dist: choice, values: [8, 16]}")
    text += "    - family: mlp\n      dataset: digits\n      hidden: {depth: 2, width: *w}\n      activation: relu\n" \
            "      norm: none\n      loss: mse\n      batch_size: 32\n      inner_steps: 50\n      outer_steps: 4\n"
    spec = load_spec(write("spec.yaml", text))
    assert spec.tasks.families[1].hidden.width.values == [8, 16]
    # A small bomb (9**3 values) is not a bomb: only sizes beyond any spec's are refused.
    assert "expands to more than" not in str(_error(write, _bomb(levels=3)))


SECRET = "root:x:0:0:hunter2-SECRET:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" * 40


INCLUDES = ["tasks: {include: NAME}", "tasks: NAME", "tasks:\n  families:\n    - include: NAME"]


@pytest.mark.parametrize("how", INCLUDES)
def test_include_of_a_non_spec_file_names_it_without_quoting_it(write, how):
    # A YAML file in the spec's tree is read, and refused as a spec without being quoted...
    write("secret.yaml", SECRET)
    err = _error(write, f"name: t\n{how.replace('NAME', 'secret.yaml')}\n")
    assert "secret.yaml" in str(err) and "not a spec" in str(err)
    assert "hunter2" not in str(err) and "root:x" not in str(err)
    # ...and any other file is refused before it is read.
    write("secret", SECRET)
    err = _error(write, f"name: t\n{how.replace('NAME', 'secret')}\n")
    assert "secret" in str(err) and "not a .yaml or .yml file" in str(err)
    assert "hunter2" not in str(err) and "root:x" not in str(err)


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="no /etc/passwd here")
def test_include_of_etc_passwd(write):
    err = _error(write, "name: t\ntasks: {include: /etc/passwd}\n")
    assert "passwd" in str(err) and "root:" not in str(err) and len(str(err)) < 400
    assert "not a .yaml or .yml file" in str(err)


def test_long_values_of_an_included_file_are_not_quoted_whole(write):
    secret = "hunter2" + "-SECRET" * 50
    write("conf.yaml", f"families:\n  - family: '{secret}'\n  - {{dist: '{secret}'}}\n{secret}: 1\n")
    err = _error(write, "name: t\ntasks: {include: conf.yaml}\n")
    assert "conf.yaml:" in str(err) and "characters)" in str(err)
    assert secret not in str(err) and secret[:60] not in str(err)


def test_binary_directory_fifo_and_missing_includes(write, tmp_path):
    (tmp_path / "blob.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "adir.yaml").mkdir()
    cases = {"blob.yaml": "not UTF-8 text", "adir.yaml": "is a directory", "nothere.yaml": "not found"}
    if hasattr(os, "mkfifo"):  # a pipe would block a reader forever
        os.mkfifo(tmp_path / "pipe.yaml")
        cases["pipe.yaml"] = "not a regular file"
    if Path("/dev/zero").exists():
        cases["/dev/zero"] = "not a .yaml or .yml file"
    for target, words in cases.items():
        err = _error(write, f"name: t\ntasks: {{include: {target}}}\n")
        problem = err.problems[0]
        assert problem.location.file.endswith("spec.yaml") and problem.location.line == 2, str(err)
        assert words in problem.message and Path(target).name in problem.message, str(err)
        assert len(str(err)) < 400, str(err)


def test_huge_file_is_refused(write):
    err = _error(write, "name: t\n" + "# padding\n" * 120_000)
    assert "too large" in str(err)


def test_other_yaml_readers_give_located_errors(write):
    from lhopt_dsl import TaskConfig
    from lhopt_dsl.controller import load_schedule
    from lhopt_dsl.spec.loader import load_yaml, parse_yaml

    with pytest.raises(SpecError, match=r"task\.yaml:2:7: .*U\+0007"):
        TaskConfig.from_yaml("seed: 1\ntask: \x07\n", "task.yaml")
    with pytest.raises(SpecError, match=r"sched\.yaml:2:1: YAML syntax error"):
        load_schedule(write("sched.yaml", "schedule: {progress: [0.0], lr: [1e-3\n"))
    with pytest.raises(SpecError, match=r"tasks\.yaml:\d+:\d+: .*expands to more than"):
        load_yaml(write("tasks.yaml", "seed: 1\n---\n" + _bomb()), documents=True)
    with pytest.raises(SpecError, match=r"<string>:3:1: YAML syntax error"):
        parse_yaml("a: 1\n---\n]\n", documents=True)
    assert parse_yaml("a: 1e-3\n---\nb: [1, 2]\n", documents=True) == [{"a": 0.001}, {"b": [1, 2]}]
    assert parse_yaml("") is None


def test_schedule_export_reports_bad_task_yaml(write, capsys):
    from lhopt_dsl.controller import DEFAULT_POLICY
    from runners.cli import main

    task = write("task.yaml", "# task_id: x\nseed: 1\n\ttask: {}\n")
    assert main(["schedule", "export", "--policy", str(DEFAULT_POLICY), "--task", str(task)]) == 2
    assert "task.yaml:3:1: YAML syntax error" in capsys.readouterr().err
    # A task file that is YAML but no task: the field is named, the file's values are not quoted.
    task = write("task.yaml", "seed: 1\ntask: {secret: hunter2}\nhparams: hunter2\n")
    assert main(["schedule", "export", "--policy", str(DEFAULT_POLICY), "--task", str(task)]) == 2
    err = capsys.readouterr().err
    assert "task.yaml is not a task" in err and "hunter2" not in err and "Traceback" not in err
