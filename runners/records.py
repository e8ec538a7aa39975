"""The per-task record of an evaluation (``<out>/tasks/NNNNN.json``, one per finished task).

Running (:mod:`runners.evaluate`) writes records, reporting (:mod:`runners.report`) and comparing
(:mod:`runners.compare`) read them: this module holds what all three agree on, the record's version,
the splits it is scored on and the metrics' view of a record (records are written with
:func:`runners.jobs.write_json`).
"""

from __future__ import annotations

import math
from typing import Any

from lhopt_dsl.evaluation.metrics import TaskScores

SCORES: tuple[str, ...] = ("test", "valid")
RECORD_VERSION = 1  # of the per-task files under <out>/tasks/


class EvaluationError(ValueError):
    """An evaluation that cannot go on as asked (the message says what to do)."""


def unfloat(x: float | None) -> float:
    """A float read back from strict JSON, where non-finite values were stored as null."""
    return math.nan if x is None else float(x)


def task_scores(record: dict[str, Any], score: str) -> TaskScores:
    """The metrics' view of a task record on one scoring split."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got '{score}'")
    finals = record["finals"]
    at = lambda h: {n: unfloat(finals[n][h][score]) for n in finals}  # noqa: E731
    curves = {n: (c["steps"], [unfloat(x) for x in c[score]]) for n, c in record["curves_T"].items()}
    return TaskScores(record["task_id"], record["row"], record["T"], unfloat(record["policy"][score]),
                      at("1"), at("2"), curves)  # fmt: skip
