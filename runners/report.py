"""Reporting a finished evaluation: Table 1 rows and per-task comparisons from its task records,
what it cost, and the files, metrics and printout that ``lhopt eval`` ends with.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lhopt_dsl import TABLE1_ROWS
from lhopt_dsl.evaluation.metrics import evaluation_summary, format_summary
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES, TUNING_FREE

from .plots import plot_evaluation
from .jobs import write_json
from .records import SCORES, task_scores

if TYPE_CHECKING:
    from .tracking import Tracker


def summarise(records: list[dict[str, Any]], score: str = "test", *, resamples: int = 2000) -> dict[str, Any]:
    """Table 1 rows and per-task comparisons with intervals, plus the final losses of every method."""
    scores = [task_scores(r, score) for r in records]
    summary = evaluation_summary(scores, ADAMW_BASELINES, TUNING_FREE, TABLE1_ROWS, resamples=resamples)
    methods: dict[str, dict[str, float]] = {"policy": {}, "best AdamW": {}, "median AdamW": {}}
    methods.update({m: {} for m in TUNING_FREE})
    for t in scores:
        grid = np.asarray([t.at_T[n] if math.isfinite(t.at_T[n]) else np.inf for n in ADAMW_BASELINES])
        methods["policy"][t.task_id] = t.policy
        methods["best AdamW"][t.task_id] = float(grid.min())
        methods["median AdamW"][t.task_id] = float(np.median(grid))
        for m in TUNING_FREE:
            methods[m][t.task_id] = t.at_T[m]
    summary["final_losses"] = methods
    summary["score"] = score
    return summary


def evaluation_cost(records: list[dict[str, Any]], wall: float, workers: int) -> dict[str, Any]:
    """Seconds spent on the tasks (policy and baselines), runs made and read from the cache."""
    return {
        "wall_seconds_this_session": round(wall, 1),
        "task_seconds": round(sum(r["seconds"]["policy"] + r["seconds"]["baselines"] for r in records), 1),
        "policy_seconds": round(sum(r["seconds"]["policy"] for r in records), 1),
        "baseline_seconds": round(sum(r["seconds"]["baselines"] for r in records), 1),
        "pairs_run": sum(r["pairs"]["run"] for r in records),
        "pairs_cached": sum(r["pairs"]["cached"] for r in records),
        "workers": workers,
    }


def tracked_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's headline numbers as MLflow metrics (``eval/...``, ``eval/<row>/...``), finite ones only."""
    o = summary["overall"]
    metrics = {f"eval/{k}": o[k]["value"] for k in ("pairs_ge_1x", "pairs_ge_2x", "best_ge_1x", "best_ge_2x",
                                                     "speedup_median", "speedup_geomean")}  # fmt: skip
    for row, r in summary["rows"].items():
        metrics.update({f"eval/{row}/{k}": r[k]["value"] for k in ("pairs_ge_2x", "best_ge_1x", "speedup_median")})
    return {k.replace("+", "_"): v for k, v in metrics.items() if math.isfinite(v)}


def report(records: list[dict[str, Any]], out: Path, tracker: Tracker, *, manifest: dict[str, Any], score: str,
           wall: float, workers: int) -> dict[str, Any]:  # fmt: skip
    """Summarise ``records`` on ``score`` (and the other split), write ``table1.md``, ``results.json``
    and the plots to ``out``, log them to ``tracker`` (and end it), print the table; return the summary."""
    summary = summarise(records, score)
    other = summarise(records, SCORES[1 - SCORES.index(score)])
    summary["other_score"] = {k: v for k, v in other.items() if k in ("overall", "rows", "score")}
    summary["cost"] = cost = evaluation_cost(records, wall, workers)
    summary["manifest"] = manifest
    initial, task_set = manifest["initial"], manifest["set"]
    (out / "table1.md").write_text(f"{len(records)} {task_set} tasks, scored on the {score} split; "
                                   f"initial hyperparameters: {initial}.\n\n{format_summary(summary, markdown=True)}\n")
    write_json(out / "results.json", summary)
    tracker.log_metrics(tracked_metrics(summary), step=0)
    for path in [out / "table1.md", out / "results.json", *plot_evaluation(records, summary, out)]:
        tracker.log_artifact(path)
    tracker.end()
    print(f"\n{len(records)} held-out {task_set} tasks, scored on the {score} split, initial hyperparameters: {initial}\n")
    print(format_summary(summary))
    print(f"\ncost: {cost['task_seconds']:.0f} s of task time ({cost['policy_seconds']:.0f} s policy, "
          f"{cost['baseline_seconds']:.0f} s baselines: {cost['pairs_run']} runs, {cost['pairs_cached']} read from "
          f"the cache); {wall:.0f} s wall time this session with {workers} worker(s)")  # fmt: skip
    return summary
