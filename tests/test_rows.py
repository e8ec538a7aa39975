"""Table 1 rows: derived from a task's config, and covered by the default evaluation distribution."""

import collections

import numpy as np
import pytest

from lhopt_dsl import TABLE1_ROWS, TaskConfig, load_spec, sample, table1_row
from lhopt_dsl.evaluation.rows import ROWS_BEYOND_TABLE1
from lhopt_dsl.spec.families import FAMILY_SPECS, LM_ALGO_DATASETS, LM_OOD_DATASETS, LM_TEXT_DATASETS

from .conftest import SPECS

COMMON = {"batch_size": 8, "inner_steps": 20, "outer_steps": 2}
TRANSFORMER = {"family": "transformer", "d_model": 16, "num_layers": 1, "num_heads": 2, "ff_mult": 1, "seq_len": 8,
               "norm_position": "pre", "positional": "learned"}  # fmt: skip
TASKS = [
    # (task, its row)
    ({"family": "rnn", "task": "parity", "cell": "gru", "hidden_size": 8, "num_layers": 1, "seq_len": 4}, "Algo+RNN"),
    ({"family": "text_rnn", "dataset": "sst2", "cell": "lstm", "embed_dim": 8, "hidden_size": 8, "num_layers": 1,
      "bidirectional": False, "max_len": 8, "vocab_size": 100}, "Text+RNN"),
    ({**TRANSFORMER, "dataset": "copy"}, "Algo+Transformer"),
    ({**TRANSFORMER, "dataset": "arithmetic_expressions"}, "Algo+Transformer"),
    ({**TRANSFORMER, "dataset": "markov2"}, "Text+Transformer"),
    ({**TRANSFORMER, "dataset": "sst2_words"}, "Text+Transformer"),
    ({**TRANSFORMER, "dataset": "tinyshakespeare"}, "Text+Transformer"),
    ({"family": "mlp", "dataset": "mnist", "hidden": [8], "activation": "relu", "norm": "none",
      "loss": "cross_entropy"}, "MNISTs+MLP"),
    ({"family": "cnn", "dataset": "kmnist", "channels": [4], "kernel_size": 3, "pooling": "max",
      "activation": "elu", "norm": "batch"}, "MNISTs+CNN"),
    ({"family": "nqm", "dim": 4, "spectrum_decay": 1.0, "noise_scale": 0.1}, "NQM"),
    ({"family": "regression", "inputs": 4, "target": "linear", "noise": 0.0, "examples": 16, "hidden": [8],
      "activation": "tanh", "norm": "none", "loss": "mse"}, "Regression+MLP"),
]  # fmt: skip


HPARAMS = sample(load_spec(SPECS / "smoke.yaml"), 0).hparams  # any; rows do not depend on them


def config(task: dict) -> TaskConfig:
    return TaskConfig.model_validate({"seed": 0, "task": {**task, **COMMON}, "hparams": HPARAMS})


@pytest.mark.parametrize("task, row", TASKS, ids=[f"{t['family']}-{t.get('dataset', '')}" for t, _ in TASKS])
def test_row_of_a_task_and_of_its_config(task, row):
    cfg = config(task)
    assert table1_row(cfg.task) == row
    assert table1_row(cfg) == row


def test_rows_are_the_papers_and_every_family_has_one():
    assert TABLE1_ROWS == (
        "Algo+RNN", "Text+RNN", "Algo+Transformer", "Text+Transformer", "MNISTs+MLP", "MNISTs+CNN", "NQM",
    )  # fmt: skip
    assert {row for _, row in TASKS} == set(TABLE1_ROWS) | set(ROWS_BEYOND_TABLE1)
    assert {t["family"] for t, _ in TASKS} == set(FAMILY_SPECS)  # a new family needs a row here


def test_every_dataset_has_the_row_of_its_group():
    for dataset in LM_ALGO_DATASETS:
        assert table1_row(config({**TRANSFORMER, "dataset": dataset})) == "Algo+Transformer"
    for dataset in LM_TEXT_DATASETS + LM_OOD_DATASETS:
        assert table1_row(config({**TRANSFORMER, "dataset": dataset})) == "Text+Transformer"


def test_default_spec_trains_on_text_and_evaluates_every_row():
    spec = load_spec(SPECS / "default.yaml")
    evaluation = spec.evaluation.tasks
    # Sized for CPUs: every evaluation task runs ~110 times (policy and baselines), so its cap is lower.
    assert evaluation.budget is not None and spec.tasks.budget is not None
    assert 0 < evaluation.budget.max_gflops_per_run <= spec.tasks.budget.max_gflops_per_run / 10
    # Table 6 weights, the Transformer's 0.31 split equally between its text and algorithmic rows.
    rows = collections.Counter()
    for entry in evaluation.families:  # every task of an entry is in the same row
        rows[table1_row(entry.sample(np.random.default_rng(0)))] += entry.weight
    assert rows == pytest.approx({"Algo+RNN": 0.27, "MNISTs+CNN": 0.068, "MNISTs+MLP": 0.2, "NQM": 0.014,
                                  "Text+RNN": 0.14, "Text+Transformer": 0.155, "Algo+Transformer": 0.155})  # fmt: skip
    # Sampling without the budget (it only redraws within an entry, so every row stays reachable).
    unbudgeted = evaluation.model_copy(update={"budget": None})
    drawn = collections.Counter(table1_row(sample(spec, seed, unbudgeted)) for seed in range(400))
    assert set(drawn) == set(TABLE1_ROWS)
    training = spec.tasks.model_copy(update={"budget": None})
    assert "Algo+Transformer" not in {table1_row(sample(spec, seed, training)) for seed in range(400)}
