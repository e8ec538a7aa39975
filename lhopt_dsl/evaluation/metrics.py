"""Evaluation metrics against baselines: paper Table 1, per-task comparisons, speedups, profiles.

Pure functions of numbers (numpy only; matplotlib is imported lazily by the one plotting helper).
The inputs are final losses of a policy and of baselines run on exactly the same tasks (see
``lhopt_dsl/tasks/baselines.py``, grid in ``runners/baselines.py``) on the scoring split: the test
split by default, which no run observes (the policy sees training and validation losses, and may
return to checkpoints chosen on them).

Our reading of the paper (Section 4.1) and of the unstated details:

* *Table 1*: "the fraction of tasks where the model gets a >=2x speedup" is computed "by running
  each baseline with twice as many updates, and compare the model's performance on every task to
  that of every baseline on that task". So the unit is a (task, baseline) pair: the policy, run for
  T steps, "gets a >=2x speedup" over a baseline when its final loss is at most that of the
  baseline run for 2T steps (its schedule stretched over 2T), and ">=1x" when it is at most that of
  the baseline run for T steps. Ties count for the policy.
* *Per task*, a user's question: is the policy at least as good as the *best* of the 35 tuned
  baselines (at T, and at 2T)? And how many steps would that best baseline need to match it
  (:func:`speedup`)? Both with bootstrap intervals over tasks (:func:`evaluation_summary`).
* *Failures*: a NaN (or infinite) policy loss never beats anything; a NaN baseline loss (a diverged
  baseline) is beaten by any finite policy loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "SPEEDUP_FLOOR", "TaskScores", "bootstrap_interval", "compare_task", "evaluation_summary", "format_summary",
    "format_estimate", "geometric_mean", "head_to_head", "paired_comparison", "performance_profile",
    "plot_performance_profile", "render_table", "sign_test", "speedup",
    "steps_to_reach",
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


def speedup(
    policy_final: float,
    T: float,
    final_T: float,
    final_2T: float,
    curve_steps: Sequence[float],
    curve_losses: Sequence[float],
    horizon: float = 2.0,
) -> tuple[float, bool]:
    """Speedup of a policy run of ``T`` steps over a baseline run for ``T`` and for ``horizon * T`` steps.

    = (steps the baseline needs to reach the policy's final loss) / T, read as follows:

    * ``L1 = final_T`` is the baseline's final loss after a run of T steps and
      ``L2 = min(L1, final_2T)`` the best it reaches within ``horizon * T`` steps (a user with that
      budget may also stop at T). Non-finite finals (diverged runs) count as ``inf``.
    * policy <= L2: the baseline needs more than ``horizon * T`` steps: censored, ``(horizon, True)``.
    * L2 < policy <= L1: between T and ``horizon * T`` steps, interpolated between the two run ends
      linearly in (log steps, log loss) (in loss where a loss is not positive): no intermediate
      point of a run is used, so the baseline's schedule is always complete where it is measured.
    * policy > L1: fewer than T steps, read off the T run's curve (``curve_steps``, ``curve_losses``;
      its best-so-far envelope, see :func:`steps_to_reach`). These points are mid-schedule, so this
      reading can only overstate the steps a baseline tuned for the shorter budget would need: values
      below 1 flatter the policy slightly; values >= 1 do not.
    * A non-finite policy loss is no speedup at all: ``(0.0, False)``.
    """
    if not _finite(policy_final):
        return 0.0, False
    if T <= 0:
        raise ValueError(f"T must be positive, got {T}")
    p = float(policy_final)
    l1 = float(final_T) if _finite(final_T) else math.inf
    l2 = min(l1, float(final_2T) if _finite(final_2T) else math.inf)
    if p <= l2:
        return float(horizon), True
    if p <= l1:  # l2 < p <= l1 < inf
        if p > 0 and l2 > 0:
            frac = (math.log(l1) - math.log(p)) / (math.log(l1) - math.log(l2))
        else:
            frac = (l1 - p) / (l1 - l2)
        return float(horizon**frac), False
    needed = steps_to_reach(curve_steps, curve_losses, p)
    return float(min(needed, T) / T), False


def geometric_mean(values: Sequence[float] | np.ndarray, floor: float = 0.0, axis: int = -1) -> np.ndarray | float:
    """exp(mean(log(max(v, floor)))) along ``axis``; ``floor`` keeps zeros (failed runs) finite."""
    v = np.maximum(np.asarray(values, dtype=np.float64), floor)
    with np.errstate(divide="ignore"):
        out = np.exp(np.log(v).mean(axis=axis))
    return float(out) if np.ndim(out) == 0 else out


def bootstrap_interval(
    values: Sequence | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over tasks.

    ``values`` has one row per task (any trailing shape); ``statistic`` maps a stack of resamples
    of shape ``(resamples, n, ...)`` to ``(resamples,)`` (so it must reduce over axis 1). Tasks are
    the resampling unit, also for the pairs fraction, whose pairs within a task are not independent.
    Returns ``(nan, nan)`` without tasks. Reproducible: the resamples come from ``seed``.
    """
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))
    stats = np.asarray(statistic(v[idx]), dtype=np.float64)
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(stats, [alpha, 1.0 - alpha]) if np.isfinite(stats).any() else (math.nan, math.nan)
    return float(lo), float(hi)


# --- Table 1 and per-task comparisons ----------------------------------------------------------------


def _beats(policy: float, baseline: float) -> bool:
    """The policy's loss is at most the baseline's; NaN policy loses, NaN baseline is beaten."""
    if not _finite(policy):
        return False
    if baseline is None or not _finite(baseline):
        return True
    return float(policy) <= float(baseline)


def _best(losses: Mapping[str, float], names: Sequence[str]) -> tuple[str, float]:
    """The name and loss of the lowest finite loss among ``names`` (``inf`` if none is finite)."""
    finite = [(float(losses[n]), n) for n in names if _finite(losses[n])]
    if not finite:
        return names[0], math.inf
    loss, name = min(finite)  # ties: the alphabetically first name
    return name, loss


@dataclass(frozen=True)
class TaskScores:
    """One evaluation task's final losses on the scoring split (the test split unless asked otherwise).

    ``at_T[m]`` / ``at_2T[m]`` are the final losses of method ``m``'s runs of T and 2T steps (its
    schedule stretched over the run); ``curves_T[m] = (steps, losses)`` is the curve of its T run.
    """

    task_id: str
    row: str
    T: int
    policy: float
    at_T: Mapping[str, float]
    at_2T: Mapping[str, float]
    curves_T: Mapping[str, tuple[Sequence[float], Sequence[float]]]


def compare_task(task: TaskScores, adamw: Sequence[str], others: Sequence[str] = ()) -> dict[str, Any]:
    """Every per-task number of the evaluation (see :func:`evaluation_summary`)."""
    missing = [m for m in [*adamw, *others] if m not in task.at_T or m not in task.at_2T]
    if missing:
        raise KeyError(f"task {task.task_id}: no losses at T and 2T for {missing}")
    p = task.policy
    best_name, best_T = _best(task.at_T, adamw)
    _, best_2T = _best(task.at_2T, adamw)
    steps, losses = task.curves_T[best_name]
    value, capped = speedup(p, task.T, best_T, best_2T, steps, losses)
    out: dict[str, Any] = {
        "task_id": task.task_id, "row": task.row, "T": task.T, "policy": p,
        "pairs": len(adamw),
        "pair_wins_1x": sum(_beats(p, task.at_T[n]) for n in adamw),
        "pair_wins_2x": sum(_beats(p, task.at_2T[n]) for n in adamw),
        "best_baseline": best_name, "best_T": best_T, "best_2T": best_2T,
        "beats_best_1x": _beats(p, best_T), "beats_best_2x": _beats(p, best_2T),
        "speedup": value, "capped": capped, "policy_failed": not _finite(p), "vs": {},
    }  # fmt: skip
    for m in others:
        steps, losses = task.curves_T[m]
        v, c = speedup(p, task.T, task.at_T[m], task.at_2T[m], steps, losses)
        out["vs"][m] = {"T": task.at_T[m], "2T": task.at_2T[m], "beats_1x": _beats(p, task.at_T[m]),
                        "beats_2x": _beats(p, task.at_2T[m]), "speedup": v, "capped": c}  # fmt: skip
    return out


#: Geometric means treat a speedup below this as this (a failed policy run has speedup 0).
SPEEDUP_FLOOR = 1e-2


def _estimate(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], **boot: Any) -> dict[str, Any]:
    if not len(values):
        return {"value": math.nan, "ci": [math.nan, math.nan]}
    value = float(stat(values[None])[0])
    return {"value": value, "ci": list(bootstrap_interval(values, stat, **boot))}


def _mean(v: np.ndarray) -> np.ndarray:
    return v.mean(axis=1)


def _ratio(v: np.ndarray) -> np.ndarray:
    return v[..., 0].sum(axis=1) / np.maximum(v[..., 1].sum(axis=1), 1)


def _median(v: np.ndarray) -> np.ndarray:
    return np.median(v, axis=1)


def _geomean(v: np.ndarray) -> np.ndarray:
    return geometric_mean(v, SPEEDUP_FLOOR, axis=1)


def _aggregate(per_task: list[dict[str, Any]], others: Sequence[str], **boot: Any) -> dict[str, Any]:
    arr = lambda key: np.asarray([t[key] for t in per_task], dtype=np.float64)  # noqa: E731
    pairs = arr("pairs")
    row: dict[str, Any] = {
        "tasks": len(per_task), "pairs": int(pairs.sum()),
        "pairs_ge_1x": _estimate(np.stack([arr("pair_wins_1x"), pairs], -1).reshape(-1, 2), _ratio, **boot),
        "pairs_ge_2x": _estimate(np.stack([arr("pair_wins_2x"), pairs], -1).reshape(-1, 2), _ratio, **boot),
        "best_ge_1x": _estimate(arr("beats_best_1x"), _mean, **boot),
        "best_ge_2x": _estimate(arr("beats_best_2x"), _mean, **boot),
        "speedup_median": _estimate(arr("speedup"), _median, **boot),
        "speedup_geomean": _estimate(arr("speedup"), _geomean, **boot),
        "speedup_capped": float(arr("capped").mean()) if per_task else math.nan,
        "policy_failed": int(arr("policy_failed").sum()),
        "vs": {},
    }  # fmt: skip
    for m in others:
        col = lambda key: np.asarray([t["vs"][m][key] for t in per_task], dtype=np.float64)  # noqa: E731
        row["vs"][m] = {"ge_1x": _estimate(col("beats_1x"), _mean, **boot),
                        "ge_2x": _estimate(col("beats_2x"), _mean, **boot),
                        "speedup_median": _estimate(col("speedup"), _median, **boot)}  # fmt: skip
    return row


def evaluation_summary(
    tasks: Sequence[TaskScores],
    adamw: Sequence[str],
    others: Sequence[str] = (),
    rows: Sequence[str] = (),
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The evaluation's numbers, per Table 1 row and overall, each with a bootstrap interval.

    Against the grid ``adamw`` (the 35 tuned AdamW baselines):

    * ``pairs_ge_1x`` / ``pairs_ge_2x``: the paper's Table 1 (Section 4.1): over (task, baseline)
      pairs, the fraction where the policy's loss at T is at most the baseline's at T / at 2T;
    * ``best_ge_1x`` / ``best_ge_2x``: over tasks, the fraction where the policy at T is at least as
      good as the *best* of the grid at T / the best of the grid at 2T (the best is picked on the
      scoring split itself: the strongest baseline a tuning procedure could find). The 2x fraction
      can exceed the 1x one, since a baseline can diverge over 2T and not over T;
    * ``speedup_*``: the speedup against the grid's best (:func:`speedup` with the best final
      losses at T and 2T, and the curve of the best T run), its median and geometric mean
      (speedups floored at :data:`SPEEDUP_FLOOR`), and the fraction censored at 2x.

    Against each method of ``others`` (Schedule-Free AdamW, Prodigy): the fractions of tasks where
    the policy at T is at least as good at T / at 2T, and the median speedup.

    Intervals: percentile bootstrap over tasks (``resamples``, ``seed``), ``level`` coverage.
    ``rows`` fixes the order of rows (others follow in order of appearance). Ties count for the
    policy; a non-finite policy loss never wins, a non-finite baseline loss is beaten by any finite one.
    """
    boot = {"level": level, "resamples": resamples, "seed": seed}
    per_task = [compare_task(t, adamw, others) for t in tasks]
    order = [r for r in rows if any(t["row"] == r for t in per_task)]
    order += [r for r in dict.fromkeys(t["row"] for t in per_task) if r not in order]
    return {
        "overall": _aggregate(per_task, others, **boot),
        "rows": {r: _aggregate([t for t in per_task if t["row"] == r], others, **boot) for r in order},
        "tasks": per_task,
        "level": level,
    }


def format_estimate(est: Mapping[str, Any], digits: int = 2, suffix: str = "", signed: bool = False) -> str:
    """``value [lo, hi]`` of an estimate with its interval (``signed``: each with its sign, for
    differences), ``-`` when it has no value."""
    lo, hi = est["ci"]
    if not math.isfinite(est["value"]):
        return "-"
    f = f"+.{digits}f" if signed else f".{digits}f"
    return f"{est['value']:{f}}{suffix} [{lo:{f}}, {hi:{f}}]"


def render_table(head: Sequence[str], body: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """A table of strings: Markdown, or plain text with the first column left-aligned, the rest right."""
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|",
                          *("| " + " | ".join(c) + " |" for c in body)])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(r))])  # noqa: E731
    return "\n".join(fmt(r).rstrip() for r in [head, *body])


def format_summary(summary: Mapping[str, Any], markdown: bool = False) -> str:
    """The summary as two tables (vs the AdamW grid; vs the tuning-free optimizers), rows then Overall."""
    rows = [*summary["rows"].items(), ("Overall", summary["overall"])]
    header = ["row", "tasks", "pairs >=1x", "pairs >=2x", "<=best@T", "<=best@2T", "speedup median", "speedup geomean"]
    est = format_estimate
    cells = [[name, str(r["tasks"]), est(r["pairs_ge_1x"]), est(r["pairs_ge_2x"]), est(r["best_ge_1x"]),
              est(r["best_ge_2x"]), est(r["speedup_median"], suffix="x"), est(r["speedup_geomean"], suffix="x")]
             for name, r in rows]  # fmt: skip
    tables = [(header, cells)]
    others = list(summary["overall"]["vs"])
    if others:
        header2 = ["row", "tasks"]
        for m in others:
            header2 += [f"<={m}@T", f"<={m}@2T", f"{m} speedup"]
        cells2 = []
        for name, r in rows:
            line = [name, str(r["tasks"])]
            for m in others:
                v = r["vs"][m]
                line += [est(v["ge_1x"]), est(v["ge_2x"]), est(v["speedup_median"], suffix="x")]
            cells2.append(line)
        tables.append((header2, cells2))
    out = [render_table(head, body, markdown) for head, body in tables]
    failed = summary["overall"]["policy_failed"]
    if failed:
        out.append(f"{failed} of {summary['overall']['tasks']} policy runs ended with a non-finite loss (counted as losses).")
    level = summary.get("level", 0.95)
    note = (f"{level:.0%} bootstrap intervals over tasks. pairs: fraction of (task, AdamW baseline) pairs the policy "
            "matches at T / at 2T (paper Table 1); <=best: fraction of tasks where the policy at T is at least as "
            "good as the best of the 35 AdamW baselines at T / at 2T; speedup: steps the best baseline needs to "
            "reach the policy's loss, over T (censored at 2x).")  # fmt: skip
    return "\n\n".join(out) + "\n\n" + note


# --- two policies on the same tasks ---------------------------------------------------------------


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the probability, if neither side were better (each non-tied task
    a fair coin), of a split at least as uneven as ``wins`` : ``losses``. Ties are left out."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def head_to_head(reference: Sequence[float], candidate: Sequence[float]) -> dict[str, Any]:
    """Tasks where the candidate's final loss is lower / equal / higher than the reference's (a
    non-finite loss is higher than any finite one; two non-finite ones tie), and the sign test."""
    wins = sum(_beats(y, x) and not _beats(x, y) for x, y in zip(reference, candidate))
    losses = sum(_beats(x, y) and not _beats(y, x) for x, y in zip(reference, candidate))
    return {"wins": wins, "ties": len(reference) - wins - losses, "losses": losses,
            "sign_test_p": sign_test(wins, losses)}  # fmt: skip


def _paired(values: np.ndarray, **boot: Any) -> dict[str, Any]:
    """Reference mean, candidate mean and their difference (candidate - reference) with a paired
    bootstrap interval: ``values`` is ``(n, 2)``, tasks resampled as units, columns together."""
    diff = lambda v: v[..., 1].mean(axis=1) - v[..., 0].mean(axis=1)  # noqa: E731
    return {"reference": float(values[:, 0].mean()), "candidate": float(values[:, 1].mean()),
            "difference": _estimate(values, diff, **boot)}  # fmt: skip


def paired_comparison(
    reference: Sequence[TaskScores],
    candidate: Sequence[TaskScores],
    adamw: Sequence[str],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Is ``candidate`` better than ``reference``? Both evaluated on the same tasks, in the same order.

    Two evaluations on the same tasks share their baselines and their task-to-task variation, so the
    question is answered per task and the intervals come from a *paired* bootstrap (tasks resampled
    as units, both methods together): far narrower than comparing two independent intervals.

    * ``head_to_head``: tasks where the candidate's final loss is lower / equal / higher than the
      reference's (a non-finite loss loses to a finite one), and the sign test's p-value;
    * ``log_loss_ratio``: median over tasks of log(candidate loss / reference loss) (negative: the
      candidate ends lower), with an interval; only tasks where both losses are finite and positive;
    * ``pairs_ge_2x``, ``best_ge_1x``: the evaluation's fractions for each, and their difference;
    * ``speedup_log_ratio``: mean over tasks of log(candidate speedup / reference speedup), speedups
      floored at :data:`SPEEDUP_FLOOR` (exp of it: the ratio of their geometric means).
    """
    if [t.task_id for t in reference] != [t.task_id for t in candidate]:
        raise ValueError("paired_comparison needs the same tasks in the same order")
    boot = {"level": level, "resamples": resamples, "seed": seed}
    a = [compare_task(t, adamw) for t in reference]
    b = [compare_task(t, adamw) for t in candidate]
    col = lambda rows, f: np.asarray([f(r) for r in rows], dtype=np.float64)  # noqa: E731
    frac2x = lambda r: r["pair_wins_2x"] / r["pairs"]  # noqa: E731
    best = lambda r: r["beats_best_1x"]  # noqa: E731
    both = [(x.policy, y.policy) for x, y in zip(reference, candidate)
            if _finite(x.policy) and _finite(y.policy) and x.policy > 0 and y.policy > 0]  # fmt: skip
    log_ratio = np.asarray([math.log(y / x) for x, y in both], dtype=np.float64)
    floor = lambda v: np.log(np.maximum(v, SPEEDUP_FLOOR))  # noqa: E731
    log_speedups = np.stack([floor(col(a, lambda r: r["speedup"])), floor(col(b, lambda r: r["speedup"]))], -1)
    return {
        "tasks": len(a),
        "head_to_head": head_to_head([t.policy for t in reference], [t.policy for t in candidate]),
        "log_loss_ratio": {"tasks": len(log_ratio), **_estimate(log_ratio, _median, **boot)},
        "pairs_ge_2x": _paired(np.stack([col(a, frac2x), col(b, frac2x)], -1), **boot),
        "best_ge_1x": _paired(np.stack([col(a, best), col(b, best)], -1), **boot),
        "speedup_log_ratio": _paired(log_speedups, **boot),
        "level": level,
    }  # fmt: skip


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


def gradient_signal(grads: np.ndarray) -> dict[str, float]:
    """How much of a gradient is signal: ``grads`` (N, P) holds N independent gradient samples
    (e.g. one per task). With their mean m and covariance S:

    * ``signal``: |m|^2 - tr(S)/N, an unbiased estimate of |E g|^2 (negative when the samples
      show no common direction);
    * ``noise``: tr(S) (unbiased), the spread of one sample around the mean; the signal-to-noise
      ratio of a mean over B samples is ``signal / (noise / B)``;
    * ``cos``: the mean cosine between each sample and the mean of the others.
    """
    g = np.asarray(grads, dtype=np.float64)
    n = g.shape[0]
    if g.ndim != 2 or n < 2:
        raise ValueError(f"gradient_signal needs at least two gradient samples as rows of an (N, P) array; got {g.shape}")
    mean = g.mean(axis=0)
    noise = float(((g - mean) ** 2).sum() / (n - 1))
    signal = float(mean @ mean) - noise / n
    total = g.sum(axis=0)
    cos = []
    for row in g:
        others = (total - row) / (n - 1)
        denom = np.linalg.norm(row) * np.linalg.norm(others)
        cos.append(float(row @ others / denom) if denom > 0 else 0.0)
    return {"signal": signal, "noise": noise, "cos": float(np.mean(cos))}
