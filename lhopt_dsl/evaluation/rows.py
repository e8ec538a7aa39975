"""The row of the paper's Table 1 that a task belongs to, derived from its config in one place.

Table 1 reports results per group of tasks: Algo + RNN, Text + RNN, Algo + Transformer, Text +
Transformer, MNISTs + MLP, MNISTs + CNN and NQM (then Overall). Most rows are a task family; the
Transformer is split by dataset, because its algorithmic datasets are held out of training and make a
row of their own (:data:`lhopt_dsl.spec.families.LM_ALGO_DATASETS`), while the text-like datasets and
the out-of-distribution corpora count as text.
"""

from __future__ import annotations

from ..spec.families import LM_ALGO_DATASETS, TaskBase, TransformerTask
from ..spec.sample import TaskConfig

#: The rows of Table 1 in the paper's order (Overall, over all tasks, is not a row of one task).
TABLE1_ROWS: tuple[str, ...] = (
    "Algo+RNN", "Text+RNN", "Algo+Transformer", "Text+Transformer", "MNISTs+MLP", "MNISTs+CNN", "NQM",
)  # fmt: skip

#: Row of every family but the transformer, whose row depends on its dataset.
FAMILY_ROWS: dict[str, str] = {
    "rnn": "Algo+RNN",
    "text_rnn": "Text+RNN",
    "mlp": "MNISTs+MLP",
    "cnn": "MNISTs+CNN",
    "nqm": "NQM",
    "regression": "Regression+MLP",  # beyond the paper: a row after Table 1's (ROWS_BEYOND_TABLE1)
}

#: Rows of families the paper has no row for (tables list them after Table 1's, in order of appearance).
ROWS_BEYOND_TABLE1: tuple[str, ...] = ("Regression+MLP",)


def table1_row(task: TaskBase | TaskConfig) -> str:
    """The Table 1 row of a concrete task (``cfg.task``) or of a whole :class:`TaskConfig`.

    A family the paper has no row for is a row of its own, named after the family, so that it is
    reported beside the paper's rows rather than mixed into one of them.
    """
    if isinstance(task, TaskConfig):
        task = task.task
    if isinstance(task, TransformerTask):
        return "Algo+Transformer" if task.dataset in LM_ALGO_DATASETS else "Text+Transformer"
    return FAMILY_ROWS.get(task.family, task.family)
