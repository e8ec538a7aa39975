"""The plots of a finished evaluation (written beside its ``results.json`` and logged to MLflow).

One function per figure, each reading the task records and the summary of
:func:`runners.report.summarise`; :func:`plot_evaluation` draws and writes them all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lhopt_dsl.evaluation.metrics import performance_profile, plot_performance_profile
from lhopt_dsl.spec.schedule import segment_bounds
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES

from .records import unfloat


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(records: list[dict[str, Any]], score: str) -> Any:
    """The first six tasks: the policy's validation curve and final test loss against the best
    AdamW baseline's curves at T (best by ``score``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for ax, r in zip(axes.flat, records[:6]):
        finals = {n: unfloat(r["finals"][n]["1"][score]) for n in r["curves_T"] if n in ADAMW_BASELINES}
        best = min(finals, key=lambda n: finals[n] if math.isfinite(finals[n]) else math.inf)
        c = r["curves_T"][best]
        ax.plot(c["steps"], [unfloat(x) for x in c["valid"]], "-", color="tab:blue", label=f"{best} (valid)")
        ax.plot(c["steps"], [unfloat(x) for x in c["test"]], ":", color="tab:blue", label=f"{best} (test)")
        steps = segment_bounds(r["T"], len(r["policy"]["valid_curve"]) - 1)
        ax.plot(steps, [unfloat(x) for x in r["policy"]["valid_curve"]], "k-", lw=2, label="policy (valid)")
        ax.plot([r["T"]], [unfloat(r["policy"]["test"])], "k*", ms=12, label="policy (final test)")
        ax.set_yscale("log")
        ax.set_title(f"{r['row']} {r['task_id'][:8]}")
        ax.set_xlabel("inner step")
        ax.legend(fontsize=7)
    fig.suptitle(f"Policy vs the best AdamW baseline at T (best by {score} loss)")
    fig.tight_layout()
    return fig


def hparams_figure(records: list[dict[str, Any]]) -> Any:
    """Every task's hyperparameters as the policy chose them, against the run's progress."""
    plt = _pyplot()
    hps = [r["policy"]["hparams"] for r in records if r["policy"]["hparams"]]
    names = list(hps[0][0]) if hps else []
    fig, axes = plt.subplots(2, 4, figsize=(15, 7), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for h in hps:
            ax.plot(np.arange(len(h)) / len(h), [x[name] for x in h], alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("progress")
    fig.suptitle("Hyperparameters chosen by the policy")
    fig.tight_layout()
    return fig


def summary_figure(summary: dict[str, Any]) -> Any:
    """Table 1's fractions and speedups by row, with their bootstrap intervals."""
    plt = _pyplot()
    rows = [*summary["rows"].items(), ("Overall", summary["overall"])]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2), sharey=True)
    ys = np.arange(len(rows))[::-1]
    for ax, keys, xlabel in ((ax1, [("best_ge_1x", "<= best AdamW at T"), ("best_ge_2x", "<= best AdamW at 2T"),
                                    ("pairs_ge_1x", "pairs >=1x"), ("pairs_ge_2x", "pairs >=2x")], "fraction"),
                             (ax2, [("speedup_median", "median"), ("speedup_geomean", "geometric mean")],
                              "speedup vs the best AdamW baseline")):  # fmt: skip
        for j, (key, label) in enumerate(keys):
            v = np.asarray([r[key]["value"] for _, r in rows])
            lo = np.asarray([r[key]["ci"][0] for _, r in rows])
            hi = np.asarray([r[key]["ci"][1] for _, r in rows])
            off = (j - (len(keys) - 1) / 2) * 0.15
            ax.errorbar(v, ys + off, xerr=[v - lo, hi - v], fmt="o", capsize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax2.axvline(1.0, color="k", ls=":")
    ax1.set_yticks(ys, [f"{name} ({r['tasks']})" for name, r in rows])
    fig.suptitle(f"{summary['level']:.0%} bootstrap intervals over tasks ({summary['score']} loss)")
    fig.tight_layout()
    return fig


def speedups_figure(summary: dict[str, Any]) -> Any:
    """The histogram of per-task speedups against each task's best AdamW baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [t["speedup"] for t in summary["tasks"]]
    ax.hist(values, bins=np.linspace(0, 2, 21), color="tab:blue", alpha=0.8)
    ax.axvline(1.0, color="k", ls=":")
    ax.set_xlabel("speedup vs the task's best AdamW baseline (censored at 2)")
    ax.set_ylabel("tasks")
    ax.set_title(f"median {summary['overall']['speedup_median']['value']:.2f}x over {len(values)} tasks")
    fig.tight_layout()
    return fig


def plot_evaluation(records: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> list[Path]:
    """Draw every figure of the evaluation into ``out``; return the files written."""
    plt = _pyplot()
    taus = np.logspace(0, 1, 60)
    figures = {
        "curves.png": lambda: curves_figure(records, summary["score"]),
        "hparams.png": lambda: hparams_figure(records),
        "summary.png": lambda: summary_figure(summary),
        "speedups.png": lambda: speedups_figure(summary),
        "performance_profile.png": lambda: plot_performance_profile(
            performance_profile(summary["final_losses"], taus), taus),
    }  # fmt: skip
    paths = []
    for name, draw in figures.items():
        paths.append(out / name)
        draw().savefig(paths[-1], dpi=100)
    plt.close("all")
    return paths
