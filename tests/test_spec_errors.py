"""Every kind of bad input gives a SpecError naming file, line, column and field path."""

import pytest

from lhopt_dsl import SpecError, load_spec

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
    ("value below its limit", _replace("values: [8, 16]", "values: [0, 16]"), 9, "tasks.families[0].hidden.width", ">= 1"),
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
