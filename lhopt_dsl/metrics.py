"""Evaluation metrics against baselines: paper Table 1, per-task speedups, performance profiles.

Pure functions of numbers (numpy only; matplotlib is imported lazily by the one plotting helper).
The inputs are final validation losses of a policy and of baselines run on exactly the same tasks
(see ``runners/baselines.py``), keyed by :attr:`~lhopt_dsl.sample.TaskConfig.task_id`.

Our reading of the paper (Section 4.1) and of the unstated details:

* *Table 1*: "the fraction of tasks where the model gets a >=2x speedup" is computed "by running
  each baseline with twice as many updates, and compare the model's performance on every task to
  that of every baseline on that task". So the unit is a (task, baseline) pair: the policy, run for
  T steps, "gets a >=2x speedup" over a baseline when its final validation loss is at most that of
  the baseline run for 2T steps (its schedule stretched over 2T), and ">=1x" when it is at most
  that of the baseline run for T steps. Ties count for the policy.
* *Failures*: a NaN (or infinite) policy loss never beats anything; a NaN baseline loss (a diverged
  baseline) is beaten by any finite policy loss.
* *Speedup* (:func:`speedup`): an honest per-task number against the single best baseline, read off
  the best baseline's 2T curve (its best-so-far envelope, interpolated linearly in
  (step, log loss)); it is censored at the length of that run and flagged when censored.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Hashable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "best_baseline", "format_table1", "loss_at", "performance_profile", "plot_performance_profile",
    "speedup", "steps_to_reach", "table1",
]  # fmt: skip


def _finite(x: float) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


# --- curves ---------------------------------------------------------------------------------------


def steps_to_reach(steps: Sequence[float], losses: Sequence[float], target: float) -> float:
    """Inner steps a curve needs to reach ``target`` (its best-so-far envelope <= ``target``).

    ``losses[i]`` is the validation loss measured after ``steps[i]`` steps (steps increasing).
    Non-finite measurements are ignored (they reach nothing). Between two consecutive finite
    measurements the envelope is interpolated linearly in (step, log loss) (linearly in loss where
    a loss or the target is not positive). Returns the step of the first finite measurement
    (0 for a curve that starts at step 0) if it already reaches the target, ``inf`` if the curve
    never does (or the target is NaN).
    """
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"steps and losses differ in length: {s.shape} vs {y.shape}")
    target = float(target)
    if math.isnan(target):
        return math.inf
    keep = np.isfinite(y) & np.isfinite(s)
    s, y = s[keep], y[keep]
    if not len(y):
        return math.inf
    best = np.minimum.accumulate(y)
    hit = np.flatnonzero(best <= target)
    if not len(hit):
        return math.inf
    i = int(hit[0])
    if i == 0:
        return float(s[0])
    # best[i - 1] > target >= best[i] == y[i]: the envelope crosses the target on (s[i-1], s[i]].
    hi, lo = float(best[i - 1]), float(best[i])
    if hi > 0 and lo > 0 and target > 0:
        frac = (math.log(hi) - math.log(target)) / (math.log(hi) - math.log(lo))
    else:
        frac = (hi - target) / (hi - lo)
    return float(s[i - 1] + frac * (s[i] - s[i - 1]))


def loss_at(steps: Sequence[float], losses: Sequence[float], at: float) -> float:
    """The last measured loss at a step <= ``at`` (NaN if there is none)."""
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    idx = np.flatnonzero(s <= at)
    return float(y[idx[-1]]) if len(idx) else math.nan


def best_baseline(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], T: float) -> str:
    """Name of the baseline with the lowest validation loss at step ``T``.

    ``curves`` maps names to ``(steps, losses)``; the loss "at T" is the last measurement at a step
    <= T, i.e. the final loss of a run of T steps (pass the T-step runs here, then use the chosen
    baseline's 2T run in :func:`speedup`). Non-finite losses rank last; ties go to the first name.
    """
    if not curves:
        raise ValueError("no baseline curves")
    scores = {name: loss_at(s, y, T) for name, (s, y) in curves.items()}
    return min(scores, key=lambda n: scores[n] if math.isfinite(scores[n]) else math.inf)


def speedup(
    policy_final: float,
    T: float,
    best_curve_steps: Sequence[float],
    best_curve_losses: Sequence[float],
    cap: float = 2.0,
) -> tuple[float, bool]:
    """Speedup of a policy run of ``T`` steps over the best baseline's (2T-step) curve.

    = (steps the baseline curve needs to reach the policy's final validation loss) / T. When the
    baseline never reaches it within its run, or would need more than ``cap * T`` steps, the value
    is censored: ``(cap, True)``; otherwise ``(value, False)``. A non-finite policy loss is no
    speedup at all: ``(0.0, False)``.
    """
    if not _finite(policy_final):
        return 0.0, False
    if T <= 0:
        raise ValueError(f"T must be positive, got {T}")
    needed = steps_to_reach(best_curve_steps, best_curve_losses, float(policy_final))
    ratio = needed / T
    if not math.isfinite(ratio) or ratio > cap:
        return float(cap), True
    return float(ratio), False


# --- Table 1 ---------------------------------------------------------------------------------------


def _beats(policy: float, baseline: float) -> bool:
    """The policy's loss is at most the baseline's; NaN policy loses, NaN baseline is beaten."""
    if not _finite(policy):
        return False
    if baseline is None or math.isnan(float(baseline)):
        return True
    return float(policy) <= float(baseline)


def _fractions(wins1: int, wins2: int, pairs: int, tasks: int) -> dict[str, float | int]:
    frac = (lambda w: w / pairs) if pairs else (lambda w: math.nan)  # noqa: E731
    return {"ge_1x": frac(wins1), "ge_2x": frac(wins2), "tasks": tasks, "pairs": pairs}


def table1(
    policy_final: Mapping[Hashable, float],
    baselines_T: Mapping[Hashable, Mapping[str, float]],
    baselines_2T: Mapping[Hashable, Mapping[str, float]],
    families: Mapping[Hashable, str],
) -> dict:
    """Paper Table 1: fractions of (task, baseline) pairs where the policy gets a >=1x / >=2x speedup.

    ``policy_final[task]`` is the policy's final validation loss after T steps,
    ``baselines_T[task][name]`` / ``baselines_2T[task][name]`` the baseline's final validation
    loss after T / 2T steps, ``families[task]`` the row the task belongs to. Every task of
    ``policy_final`` must have both baseline dicts, with the same names.

    Returns ``{"overall": row, "families": {family: row}}`` with
    ``row = {"ge_1x": fraction, "ge_2x": fraction, "tasks": n_tasks, "pairs": n_pairs}``
    (fractions are NaN for a row without pairs); families in order of first appearance.
    """
    counts: dict[str, list[int]] = {}  # family -> [wins1, wins2, pairs, tasks]
    for task, p in policy_final.items():
        if task not in baselines_T or task not in baselines_2T:
            raise KeyError(f"task {task!r} has no baseline losses at T and 2T")
        at_t, at_2t = baselines_T[task], baselines_2T[task]
        if set(at_t) != set(at_2t):
            raise ValueError(f"task {task!r}: baselines at T and 2T differ: {sorted(set(at_t) ^ set(at_2t))}")
        c = counts.setdefault(families[task], [0, 0, 0, 0])
        c[3] += 1
        for name, loss_t in at_t.items():
            c[0] += _beats(p, loss_t)
            c[1] += _beats(p, at_2t[name])
            c[2] += 1
    total = [sum(c[i] for c in counts.values()) for i in range(4)]
    return {"overall": _fractions(*total), "families": {f: _fractions(*c) for f, c in counts.items()}}


def format_table1(result: Mapping, markdown: bool = False) -> str:
    """Table 1 as text: rows Overall then each family; columns >=1x, >=2x, tasks."""
    rows = [("Overall", result["overall"])] + list(result["families"].items())
    cells = [(name, f"{r['ge_1x']:.3f}", f"{r['ge_2x']:.3f}", str(r["tasks"])) for name, r in rows]
    header = ("", ">=1x", ">=2x", "tasks")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    fmt = lambda r: "  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 4)])  # noqa: E731
    return "\n".join(fmt(r).rstrip() for r in [header, *cells])


# --- performance profiles -------------------------------------------------------------------------


def performance_profile(losses: Mapping[str, Mapping[Hashable, float]], taus: np.ndarray) -> dict[str, np.ndarray]:
    """Performance profiles (Dolan & Moré 2002, as in AlgoPerf) of final losses.

    For each task (the union over methods), L* is the lowest finite final loss of any method. A
    method's ratio on a task is ``L_method / L*`` (>= 1; 1 where both are 0; ``inf`` where the
    method's loss is NaN/inf or missing, or no method has a finite loss). The profile of a method at
    ``tau`` is the fraction of tasks on which its ratio is <= ``tau``: non-decreasing in ``tau``,
    1 at ``tau = 1`` for a method that is best everywhere. Losses must be >= 0.
    (AlgoPerf uses steps-to-target instead of losses; with final losses, tau reads as "within a
    factor tau of the best final loss".)
    """
    taus = np.asarray(taus, dtype=np.float64)
    methods = list(losses)
    tasks = list(dict.fromkeys(t for m in methods for t in losses[m]))
    table = np.array([[float(losses[m].get(t, math.nan)) for t in tasks] for m in methods], dtype=np.float64)
    table = table.reshape(len(methods), len(tasks))
    if np.any(table[np.isfinite(table)] < 0):
        raise ValueError("performance profiles need non-negative losses")
    table[~np.isfinite(table)] = np.inf
    best = table.min(axis=0) if len(methods) else np.zeros(len(tasks))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = table / best
    ratio[table == best] = 1.0  # also 0 / 0
    ratio[~np.isfinite(table) | ~np.isfinite(best)] = np.inf
    if not tasks:
        return {m: np.full(taus.shape, math.nan) for m in methods}
    return {m: (ratio[i][None, :] <= taus[:, None]).mean(axis=1) for i, m in enumerate(methods)}


def plot_performance_profile(profiles: Mapping[str, np.ndarray], taus: np.ndarray) -> "Figure":
    """One line per method (fraction of tasks within ``tau`` of the best), on a log tau axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    for method, prof in profiles.items():
        ax.plot(taus, prof, drawstyle="steps-post", label=method)
    ax.set_xscale("log")
    ax.set_xlabel(r"$\tau$ (final loss / best final loss)")
    ax.set_ylabel("fraction of tasks")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
