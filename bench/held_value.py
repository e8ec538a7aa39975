"""Room beyond one step: learning-rate offsets from a residual policy's base held for the rest of the
run (or for a window), measured against the base's own run, and whether a policy could choose them.

    LHOPT_DATA_DIR=../shared/data python bench/held_value.py [--spec task_specs/cpu_residual_sharp.yaml]
        [--tasks 72] [--workers 1] [--out results/branch_value/NAME-held.jsonl]
        [--rerun K --choices results/branch_value/NAME-held.jsonl] [--whole-run] [--first N]

``bench/branch_value.py`` measured one decision's action (x0.5 ... x2 of the base, then kept): per
task the best of them is worth a mean reward of about 1.065 and no policy feature tells where. A
policy can do more than one step: it can move its offset from the base further (x8 takes three
decisions of x2) and hold it, or raise the learning rate for a while and come back. This bench
measures that room on the same training tasks (the same draws as ``branch_value.py``), with the same
runs (the same initial weights and data order as the schedule's run):

* **hold** ``f`` **from** ``p``: from decision ``p`` the offset moves to ``f`` (as fast as the
  learning-rate actions allow) and stays there; ``f`` in x1/8 ... x8, ``p`` at the start (before
  any training: a whole-run factor, what a tuner or a per-task prior chooses), after the first
  segment, and at 1/8 and 1/4 of the run;
* **window**: x1/4 or x4 for the first quarter of the run, or for its second quarter, then back to
  the base (a warm-up, a boost, and what the paper's restarts are for).

Each branch is scored as ``branch_value.py`` scores it: PPO's reward against the schedule's run
(1 = the schedule, capped as ``meta_train.reward_cap`` caps it) and schedule/branch test loss.
Then, per task, the oracle over each kind of branch, and what a rule that does not know the
outcome earns, chosen on held-out tasks (4 folds of tasks): the single best factor for all tasks,
the best factor per family, and a ridge regression per factor of its reward on what a policy sees
at that decision (the policy's features as the schedule's run shows them, the critic's task vector,
or both), acting on the factor it predicts best (keeping where none is predicted above 1); beside
the last, the same with tasks' outcomes shuffled against their features, so that luck has a bar.

An oracle's best of many branches is biased upwards by the runs' own noise. ``--rerun K`` asks how
much of it belongs to the task: it runs the same tasks (settings and initial hyperparameters) under
another seed (other initial weights, data order and generated data) with the whole-run factors
only, and reports what each task's best choice under the first seed (``--choices``) earns under
the second, beside the second's own oracle. No observation can earn more than the first.

``--whole-run`` runs the whole-run holds alone (7 runs a task instead of 29), for the many tasks
a task-level rule needs; ``--first N`` starts at the N-th task of the draws (to add new tasks
beside those another file holds).

Rewards are in the reward's own units (1 + log(speedup) / span, span the log of the schedule's
steps from its first to its best loss, about 3.7-5.4 on most tasks here), so the report also gives the geometric-mean
speedup over the schedule's run that they stand for: a mean reward of 1.05 is a speedup of about 1.25x.
They are taken relative to the schedule's own reward (:func:`relative_to_schedule`), which is below
1 where its run ends above its best loss.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.actor import Step
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.level import ridge
from lhopt_dsl.agent.observation import FeatureBuilder, task_vector
from lhopt_dsl.agent.residual import Residual, clamp_offset, nearest_scale, offset_actions
from lhopt_dsl.agent.reward import PowerLawReward
from lhopt_dsl.agent.reward import reward_speedups as speedups
from lhopt_dsl.agent.rollout import run_episode
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.schedule import Schedule, segment_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from branch_value import FIRST_ITERATION, _short, loss_ratio, read_rows, run_tasks  # noqa: E402

#: Held offsets from the base, x1/8 ... x8 (x1 is the schedule's own run).
FACTORS: tuple[float, ...] = (0.125, 0.25, 0.5, 2.0, 4.0, 8.0)
#: Window offsets: a quarter of the run at x1/4 or x4, then back to the base.
WINDOW_FACTORS: tuple[float, ...] = (0.25, 4.0)
#: Where a held offset starts, by name: decision index from the number of decisions.
HOLD_POINTS: dict[str, Any] = {
    "start": lambda outer: 0,
    "segment 1": lambda outer: min(1, outer - 1),
    "1/8": lambda outer: min(outer - 1, round(outer / 8)),
    "1/4": lambda outer: min(outer - 1, round(outer / 4)),
}


class Steer:
    """An :class:`~lhopt_dsl.agent.actor.Actor` inside :class:`Residual` that steers the offset from the
    base: ``factor`` from decision ``start`` until decision ``stop`` (None: to the end), 1 elsewhere,
    reaching it as fast as the learning-rate actions allow; every other hyperparameter kept. Built
    without a plan it always keeps (the base schedule). It tracks the offset as :class:`Residual` does
    (the actions' product within the bounds, lowered when the guard lowers the learning rate)."""

    kind = "probe"

    def __init__(self, space: Any, plan: tuple[int, int | None, float] | None = None):
        self.actions, self.lr_dim, self.values, self.keep = offset_actions(space, "a steered residual")
        self.identity = self.actions.identity()
        self.policy_size = FeatureBuilder(self.actions, space).policy_size
        self.nvec = tuple(self.actions.nvec)
        self.plan = plan

    def with_plan(self, start: int, stop: int | None, factor: float) -> "Steer":
        out = object.__new__(Steer)
        out.__dict__.update(self.__dict__, plan=(start, stop, factor))
        return out

    def wanted(self, t: int) -> float:
        if self.plan is None:
            return 1.0
        start, stop, factor = self.plan
        return factor if start <= t and (stop is None or t < stop) else 1.0

    def start(self, runs: Sequence[Any]) -> tuple[int, tuple[float, ...]]:
        return 0, (1.0,) * len(runs)

    def act(self, carry: tuple[int, tuple[float, ...]], features: np.ndarray, generators: Sequence[Any],
            greedy: bool) -> tuple[Step, tuple[int, tuple[float, ...]]]:  # fmt: skip
        t, offsets = carry
        rows = np.asarray(features, dtype=np.float32).reshape(-1, self.policy_size)
        actions = np.tile(self.identity, (len(rows), 1))
        moved = []
        for b, m in enumerate(offsets):
            a = nearest_scale(self.values, m, self.wanted(t), self.keep)
            actions[b, self.lr_dim] = a
            moved.append(clamp_offset(m * self.values[a]))
        return Step(actions, np.zeros(len(rows)), rows, actions), (t + 1, tuple(moved))

    def guarded(self, carry: tuple[int, tuple[float, ...]], row: int, lr_factor: float) -> tuple[int, tuple[float, ...]]:
        t, offsets = carry
        moved = list(offsets)
        moved[row] = clamp_offset(moved[row] * lr_factor)
        return t, tuple(moved)


def plans(outer: int, whole_run_only: bool = False) -> list[tuple[str, str, int, int | None, float]]:
    """(kind, label, start, stop, factor) of every branch of a task of ``outer`` decisions; a hold
    that starts at the same decision under two names is run once (under the first).
    ``whole_run_only``: the holds from the start alone (a rerun's, :func:`task_holds`)."""
    out, seen = [], set()
    for name, where in list(HOLD_POINTS.items())[:1] if whole_run_only else HOLD_POINTS.items():
        at = where(outer)
        if at in seen:
            continue
        seen.add(at)
        out += [("hold", f"x{f:g} from {name}", at, None, f) for f in FACTORS]
    q = max(1, round(outer / 4))
    for lo, label in () if whole_run_only else ((0, "first quarter"), (q, "second quarter")):
        if lo + q <= outer:
            out += [("window", f"x{f:g} for the {label}", lo, lo + q, f) for f in WINDOW_FACTORS]
    return out


def task_holds(args: tuple[Any, ...]) -> dict[str, Any]:
    """The schedule's run of one task and its held and windowed branches (module docstring).
    With a fourth argument ``rerun`` > 0, the same task (settings, initial hyperparameters) with
    another seed (:func:`rerun_seed`: other initial weights, data order and generated data), and
    only its whole-run holds; with a fifth, ``whole_run`` true, the whole-run holds alone under the task's own seed."""
    spec_path, iteration, slot, rerun, whole_run = (*args, 0, False, False)[:5]
    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    mt = spec.meta_train
    cfg = sample(spec, train_seed(spec.seed, iteration, slot))
    if rerun:
        cfg = cfg.model_copy(update={"seed": rerun_seed(cfg.seed, rerun)})
    base_schedule = Schedule.from_name(mt.residual)
    env = InnerTrainingEnv(spec.hparams, max_valid=mt.max_valid)
    t0 = time.process_time()
    keeper = Steer(spec.hparams)

    def run(inner: Steer) -> Any:
        return run_episode(env, cfg, Residual(inner, spec.hparams, base_schedule), log_improvement_reward,
                           deterministic=True)  # fmt: skip

    base = run(keeper)
    outer = cfg.task.outer_steps
    reward = PowerLawReward(segment_bounds(cfg.task.inner_steps, outer), base.valid_curve, mt.reward_cap)
    branches = []
    for kind, label, start, stop, factor in plans(outer, whole_run_only=bool(rerun) or whole_run):
        ep = run(keeper.with_plan(start, stop, factor))
        branches.append({"kind": kind, "label": label, "start": start, "stop": stop, "factor": factor,
                         "reward": float(reward(ep.valid_curve[-1])),
                         "test_ratio": loss_ratio(base.test_loss, ep.test_loss),
                         "same_before": ep.valid_curve[: start + 1] == base.valid_curve[: start + 1],
                         "valid_curve": _short(ep.valid_curve)})  # fmt: skip
    points = {name: where(outer) for name, where in HOLD_POINTS.items()}
    features = {str(at): [float(f"{x:.6g}") for x in base.raw_policy[at].tolist()] for at in sorted(set(points.values()))}
    return {"iteration": iteration, "slot": slot, "rerun": rerun, "seed": cfg.seed, "task_id": cfg.task_id,
            "family": cfg.family, "outer_steps": outer, "points": points, "features": features, "schedule_test_loss": float(base.test_loss),
            "schedule_valid_curve": _short(base.valid_curve), "branches": branches,
            "cpu_seconds": time.process_time() - t0}  # fmt: skip


def rerun_seed(seed: int, rerun: int) -> int:
    """The seed of a task's ``rerun``-th rerun: a training seed of its own, derived from the task's."""
    return train_seed(seed, 0x5EED, rerun)


# ----------------------------------------------------------------------------------------------- analysis


def hold_matrix(results: list[dict[str, Any]], point: str) -> np.ndarray:
    """Per task (rows) and factor of :data:`FACTORS` (columns), the reward of holding it from ``point``."""
    out = np.ones((len(results), len(FACTORS)))
    for i, r in enumerate(results):
        at = r["points"][point]
        for b in r["branches"]:
            if b["kind"] == "hold" and b["start"] == at:
                out[i, FACTORS.index(b["factor"])] = b["reward"]
    return out


def fold_of(n: int, folds: int = 4) -> np.ndarray:
    """Fold of each of ``n`` tasks, by order."""
    return np.arange(n) * folds // n


def predicted(x: np.ndarray, rewards: np.ndarray, l2: float, folds: int = 4) -> np.ndarray:
    """Held-out predictions of ``rewards`` (tasks x choices) from ``x`` (tasks x features): each fold's
    tasks by a ridge regression fitted on the other folds'."""
    fold = fold_of(len(x), folds)
    out = np.empty_like(rewards, dtype=np.float64)
    for f in range(folds):
        test = fold == f
        if not test.any() or test.all():
            out[test] = rewards[~test].mean(0) if (~test).any() else 1.0
            continue
        mu, sd = x[~test].mean(0), x[~test].std(0)
        sd[sd == 0] = 1.0
        w = ridge((x[~test] - mu) / sd, rewards[~test] - 1.0, l2)
        out[test] = np.hstack([(x[test] - mu) / sd, np.ones((test.sum(), 1))]) @ w + 1.0
    return out


def earned(pred: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per task, the reward of the choice predicted best, or 1 (keep) where none is predicted above 1."""
    k = np.argmax(pred, 1)
    best = pred[np.arange(len(pred)), k]
    return np.where(best > 1.0, rewards[np.arange(len(pred)), k], 1.0)


def rule_best_factor(rewards: np.ndarray, groups: Sequence[Any] | None = None, folds: int = 4) -> np.ndarray:
    """Per task, the reward of the choice (a factor, or keep) with the best mean reward over the other
    folds' tasks (of the same group, where ``groups`` is given; keep if there are none)."""
    fold = fold_of(len(rewards), folds)
    groups = np.zeros(len(rewards)) if groups is None else np.asarray(groups)
    out = np.ones(len(rewards))
    for i in range(len(rewards)):
        peers = (fold != fold[i]) & (groups == groups[i])
        if peers.any():
            means = rewards[peers].mean(0)
            if means.max() > 1.0:
                out[i] = rewards[i, int(np.argmax(means))]
    return out


class Score:
    """How per-task rewards read: their mean and, with each task's span (:func:`speedups`), the
    geometric-mean speedup over the schedule's run they stand for."""

    def __init__(self, spans: np.ndarray | None, cap: float):
        self.spans, self.cap = spans, cap

    def __call__(self, rewards: np.ndarray) -> str:
        text = f"{np.mean(rewards):.3f}"
        if self.spans is not None:
            text += f" ({np.exp(np.mean(np.log(speedups(rewards, self.spans, self.cap)))):.3f}x)"
        return text


def model_line(x: np.ndarray, rewards: np.ndarray, l2s: Sequence[float], permutations: int, score: Score,
               seed: int = 0) -> str:  # fmt: skip
    """What acting on held-out ridge predictions earns at each penalty, beside the same with tasks'
    outcomes shuffled against their features (95% of ``permutations`` shuffles, mean reward)."""
    rng = np.random.default_rng(seed)
    parts = []
    for l2 in l2s:
        got = earned(predicted(x, rewards, l2), rewards)
        null = []
        for _ in range(permutations):
            shuffled = rewards[rng.permutation(len(rewards))]
            null.append(earned(predicted(x, shuffled, l2), shuffled).mean())
        lo, hi = np.quantile(null, [0.025, 0.975])
        parts.append(f"L2 {l2:g}: {score(got)} (shuffled [{lo:.3f}, {hi:.3f}]; acts on {np.mean(got != 1.0):.2f})")
    return "; ".join(parts)


def report(results: list[dict[str, Any]], tasks: dict[str, np.ndarray] | None, cap: float,
           spans: dict[str, float] | None = None, l2s: Sequence[float] = (10.0, 100.0, 1000.0),
           permutations: int = 40) -> str:  # fmt: skip
    """The tables and lines of the module's docstring. ``spans`` (task id -> the span of the schedule's
    run, nan where it did not improve) adds the speedups the rewards stand for."""
    score = Score(None if spans is None else np.array([spans[r["task_id"]] for r in results]), cap)
    rows = [b | {"family": r["family"]} for r in results for b in r["branches"]]
    out = [f"{len(results)} tasks, {len(rows)} branches; reward 1 = the schedule's run, capped at {cap}x; test ratio "
           "= schedule / branch test loss (above 1: the branch ends lower)."]
    if "schedule_reward" in results[0]:
        below = np.mean([r["schedule_reward"] < 1.0 - 1e-9 for r in results])
        out.append(f"Rewards are relative to the schedule's own (reward - the schedule's + 1): its run ends above its best "
                   f"validation loss, so its own reward is below 1, on {below:.2f} of tasks.")
    if spans is not None:
        out.append("In brackets: the geometric-mean speedup over the schedule's run that the rewards stand for "
                   f"(exp((reward - 1) * span), within [1/{cap:g}, {cap:g}]).")
    out.append("")
    broken = sum(not b["same_before"] for b in rows)
    if broken:
        out.append(f"WARNING: {broken} branches did not retrace the schedule's run before they left it.\n")
    out += ["| branch | tasks | reward > 1 | reward > 1.1 | mean reward | test loss lower | median test ratio |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    starts = {name: i for i, name in enumerate(HOLD_POINTS)}

    def order(label: str) -> tuple[bool, int, float, str]:  # ties (two windows of one factor): by label
        b = next(b for b in rows if b["label"] == label)
        where = next((starts[n] for n in HOLD_POINTS if label.endswith(f"from {n}")), len(starts))
        return (b["kind"] != "hold", where, b["factor"], label)

    for label in sorted({b["label"] for b in rows}, key=order):
        sel = [b for b in rows if b["label"] == label]
        rw, tr = np.array([b["reward"] for b in sel]), np.array([b["test_ratio"] for b in sel])
        out.append(f"| {label} | {len(sel)} | {np.mean(rw > 1):.2f} | {np.mean(rw > 1.1):.2f} | {rw.mean():.3f} "
                   f"| {np.mean(tr > 1):.2f} | {np.median(tr):.3f} |")

    def oracle(select: Any) -> tuple[np.ndarray, float]:
        best_r = np.array([max([1.0] + [b["reward"] for b in r["branches"] if select(b)]) for r in results])
        best_t = [max([1.0] + [b["test_ratio"] for b in r["branches"] if select(b)]) for r in results]
        return best_r, float(np.median(best_t))

    out += ["", "Oracle, per task the best branch of a kind or keep (mean reward / median of the best test ratio, "
            "taken on its own):"]
    for name, select in [("hold from the start (a whole-run factor)", lambda b: b["kind"] == "hold" and b["start"] == 0),
                         ("x0.5 or x2 from any of the hold points (branch_value.py's kind of single step)",
                          lambda b: b["kind"] == "hold" and b["factor"] in (0.5, 2.0)),
                         ("any hold", lambda b: b["kind"] == "hold"), ("any window", lambda b: b["kind"] == "window"),
                         ("anything here", lambda b: True)]:  # fmt: skip
        r, t = oracle(select)
        out.append(f"- {name}: {score(r)} / {t:.3f}")
    out += ["", "| family | tasks | oracle: whole-run factor | its best factors | oracle: anything |", "|---|---:|---:|---|---:|"]
    start = hold_matrix(results, "start")
    for family in sorted({r["family"] for r in results}):
        idx = [i for i, r in enumerate(results) if r["family"] == family]
        best = [("x1" if start[i].max() <= 1 else f"x{FACTORS[int(np.argmax(start[i]))]:g}") for i in idx]
        counts = ", ".join(f"{k} {best.count(k)}" for k in sorted(set(best), key=lambda s: float(s[1:])))
        anything = np.array([max([1.0] + [b["reward"] for b in results[i]["branches"]]) for i in idx])
        of = Score(None if score.spans is None else score.spans[idx], cap)
        out.append(f"| {family} | {len(idx)} | {of(np.maximum(start[idx].max(1), 1.0))} | {counts} | {of(anything)} |")

    early = early_picks(results)
    if early:
        out += ["", "Choosing the whole-run factor by the validation loss early in the run (each factor's own run to "
                "that point, as short trials would; no trial's cost counted):"]
        out += [f"- {name}, best loss up to {p:g} of the run: {score(got)}" for (name, p), got in early.items()]
        out += ["", "A ridge rule on those losses (each factor's log validation loss over the schedule's at that "
                "point) with the family, fitted on held-out folds as below:"]
        families = sorted({r["family"] for r in results})
        onehot = np.array([[r["family"] == f for f in families] for r in results], dtype=np.float64)
        start = hold_matrix(results, "start")
        for p in EARLY_POINTS:
            x = np.hstack([early_losses(results, p), onehot])
            out.append(f"- at {p:g}: {model_line(x, start, l2s, permutations, score)}")
    families = [r["family"] for r in results]
    out += ["", "Choosing a held factor without knowing the outcome, on held-out tasks (4 folds of tasks; mean reward, "
            "1 = keep):"]
    held_from = [p for p in HOLD_POINTS
                 if all(any(b["kind"] == "hold" and b["start"] == r["points"][p] for b in r["branches"]) for r in results)]
    for point in held_from:
        rewards = hold_matrix(results, point)
        line = [f"- from {point}: oracle {score(np.maximum(rewards.max(1), 1.0))}; one factor for all "
                f"{score(rule_best_factor(rewards))}; per family {score(rule_best_factor(rewards, families))}"]
        feats = np.array([r["features"][str(r["points"][point])] for r in results], dtype=np.float64)
        line.append(f"  - ridge on the policy's features there: {model_line(feats, rewards, l2s, permutations, score)}")
        if tasks:
            vectors = np.stack([tasks[r["task_id"]] for r in results])
            line.append(f"  - on the task vector: {model_line(vectors, rewards, l2s, permutations, score)}")
            line.append(f"  - on both: {model_line(np.hstack([feats, vectors]), rewards, l2s, permutations, score)}")
        out += line
    return "\n".join(out)


def seed_transfer(first: list[dict[str, Any]], again: list[dict[str, Any]], cap: float,
                  spans: np.ndarray | None = None) -> str:  # fmt: skip
    """Whether each task's best whole-run factor is the task's or its seed's: ``first`` and ``again``
    are the same tasks (row by row) under two seeds. What the best choice of one seed (a factor, or
    keep) earns on the other, beside the other's own oracle; how often the two agree; and the rank
    correlation of the factors' rewards between the seeds."""
    a, b = hold_matrix(first, "start"), hold_matrix(again, "start")
    full_a, full_b = np.hstack([np.ones((len(a), 1)), a]), np.hstack([np.ones((len(b), 1)), b])  # column 0: keep
    pick_a, pick_b = full_a.argmax(1), full_b.argmax(1)
    rows = np.arange(len(a))
    score = Score(spans, cap)
    from_a, from_b = full_b[rows, pick_a], full_a[rows, pick_b]
    ra, rb = (np.argsort(np.argsort(x.ravel())) for x in (a, b))
    choices = ["x1", *(f"x{f:g}" for f in FACTORS)]
    agree = ", ".join(f"{c} {int(((pick_a == k) & (pick_b == k)).sum())}/{int((pick_a == k).sum())}"
                      for k, c in enumerate(choices) if (pick_a == k).any())  # fmt: skip
    return "\n".join([
        f"{len(a)} tasks, each run under its own seed and again under another (other initial weights, data order "
        "and generated data; the same settings and initial hyperparameters), with the whole-run factors x1/8 ... x8.",
        f"- The rerun's own oracle (its best factor, or keep): {score(np.maximum(b.max(1), 1.0))}; the first seed's: "
        f"{Score(None, cap)(np.maximum(a.max(1), 1.0))}.",
        f"- The first seed's best choice, taken on the rerun: {score(from_a)}, better / equal / worse than the "
        f"schedule on {(from_a > 1).sum()} / {(from_a == 1).sum()} / {(from_a < 1).sum()} tasks; the rerun's best, taken "
        f"on the first seed: {Score(None, cap)(from_b)} (mean reward; the speedup in brackets is on the rerun's spans).",
        f"- The two seeds pick the same choice on {np.mean(pick_a == pick_b):.2f} of tasks (by the first seed's pick: "
        f"{agree}).",
        f"- Spearman correlation of the factors' rewards between the seeds, over all (task, factor): "
        f"{np.corrcoef(ra, rb)[0, 1]:+.2f}; of each factor's reward minus the task's mean over factors: "
        f"{_within_task_rho(a, b):+.2f}.",
    ])  # fmt: skip


def _within_task_rho(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation between two seeds' rewards of the same (task, factor), after removing each task's
    mean: whether a factor's standing *within* a task carries over to another seed."""
    da, db = (x - x.mean(1, keepdims=True) for x in (a, b))
    ra, rb = (np.argsort(np.argsort(x.ravel())) for x in (da, db))
    return float(np.corrcoef(ra, rb)[0, 1])


#: Candidate sets and points of :func:`early_picks`.
EARLY_CANDIDATES: dict[str, tuple[float, ...]] = {"x1/2, x1, x2": (0.5, 1.0, 2.0), "x1/8 ... x8": (1.0, *FACTORS)}
EARLY_POINTS: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def _whole_run_curves(results: list[dict[str, Any]]) -> list[dict[float, list[float]]] | None:
    """Per task, the validation curve of the schedule's run (x1) and of each whole-run factor's; None
    where the results lack the branches' curves (the committed held file leaves them out)."""
    curves = []
    for r in results:
        c = {1.0: r["schedule_valid_curve"]}
        c.update({b["factor"]: b.get("valid_curve") for b in r["branches"] if b["kind"] == "hold" and b["start"] == 0})
        if any(c.get(f) is None for f in (1.0, *FACTORS)):
            return None
        curves.append(c)
    return curves


def early_picks(results: list[dict[str, Any]]) -> dict[tuple[str, float], np.ndarray]:
    """Per candidate set and point p of :data:`EARLY_CANDIDATES` x :data:`EARLY_POINTS`: per task,
    the reward of the whole-run factor whose run has the lowest validation loss up to p of the run
    (ties: the first candidate; a run that diverged before p is never picked). Empty where the
    results lack the whole-run branches' validation curves."""
    curves = _whole_run_curves(results)
    if curves is None:
        return {}
    rewards = np.hstack([np.ones((len(results), 1)), hold_matrix(results, "start")])  # columns: x1, then FACTORS
    column = {f: i for i, f in enumerate((1.0, *FACTORS))}
    out = {}
    for name, cands in EARLY_CANDIDATES.items():
        for p in EARLY_POINTS:
            got = np.empty(len(results))
            for i, (r, c) in enumerate(zip(results, curves)):
                k = max(1, round(p * r["outer_steps"]))
                best = [min(c[f][: k + 1]) if np.isfinite(c[f][: k + 1]).all() else math.inf for f in cands]
                got[i] = rewards[i, column[cands[int(np.argmin(best))]]]
            out[(name, p)] = got
    return out


def early_losses(results: list[dict[str, Any]], p: float) -> np.ndarray | None:
    """Per task (rows) and factor of :data:`FACTORS`, log(the factor's validation loss / the schedule's)
    at p of the run, within [-5, 5] (5 where the factor's run is not finite there): what a probe of each
    level up to p would show. None where the results lack the curves."""
    curves = _whole_run_curves(results)
    if curves is None:
        return None
    out = np.empty((len(results), len(FACTORS)))
    for i, (r, c) in enumerate(zip(results, curves)):
        k = max(1, round(p * r["outer_steps"]))
        for j, f in enumerate(FACTORS):
            ratio = c[f][k] / c[1.0][k] if c[1.0][k] > 0 else math.nan
            out[i, j] = min(max(math.log(ratio), -5.0), 5.0) if math.isfinite(ratio) and ratio > 0 else 5.0
    return out


def schedule_reward(spec: Any, cfg: Any, valid_curve: Sequence[float]) -> tuple[float, float]:
    """The span of the reward against the schedule's run of ``cfg`` (:func:`speedups`; nan where the
    run did not improve), and the reward of that run's own final loss: 1 where it ends at its best,
    less where it ends above it (the reward reads the best-so-far envelope)."""
    law = PowerLawReward(segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps), valid_curve,
                         spec.meta_train.reward_cap)  # fmt: skip
    return (math.nan if law.flat else float(law.span)), float(law(valid_curve[-1]))


def relative_to_schedule(results: list[dict[str, Any]], keeps: Sequence[float]) -> list[dict[str, Any]]:
    """``results`` with each branch's reward taken relative to its schedule's run's own (``keeps``,
    task by task): reward - keep + 1, so that keeping is 1 on every task and a branch that ends where
    the schedule ends is 1 too. (The reward is 1 at the schedule's *best* loss; on a run that ends
    above it, raw rewards count a branch equal to the schedule as a loss.) In speedup terms
    (:func:`speedups`), exp((reward - keep) * span): the branch against the schedule's final loss."""
    return [{**r, "schedule_reward": keep,
             "branches": [{**b, "reward": b["reward"] - keep + 1.0} for b in r["branches"]]}
            for r, keep in zip(results, keeps)]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="task_specs/cpu_residual_sharp.yaml")
    ap.add_argument("--tasks", type=int, default=72)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=None,
                    help="JSON lines, one task each, written as tasks finish; tasks already there are not rerun")
    ap.add_argument("--rerun", type=int, default=0,
                    help="K > 0: run the same tasks under their K-th rerun seed, whole-run holds only, and "
                         "compare with --choices")  # fmt: skip
    ap.add_argument("--choices", default=None, help="with --rerun: the first seed's results (an earlier --out)")
    ap.add_argument("--whole-run", action="store_true", help="the whole-run holds alone (7 runs a task instead of 29)")
    ap.add_argument("--first", type=int, default=0, help="start at this task of the draws")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    if not spec.meta_train.residual:
        ap.error(f"{args.spec} has no meta_train.residual: there is no base schedule to hold an offset from")
    if args.rerun < 0 or (args.rerun and not args.choices):
        ap.error("--rerun takes K > 0 and needs --choices, the first seed's results")
    per = spec.meta_train.tasks_per_iteration
    wanted = [(FIRST_ITERATION + k // per, k % per) for k in range(args.first, args.first + args.tasks)]
    first = {}
    if args.rerun:
        first = {(r["iteration"], r["slot"]): r for r in _read(args.choices, args.spec, 0, None)}
        missing = [w for w in wanted if w not in first]
        if missing:
            ap.error(f"{args.choices} lacks {len(missing)} of the {len(wanted)} tasks; run them there first")
    done = {(r["iteration"], r["slot"]): r for r in _read(args.out, args.spec, args.rerun, args.whole_run)}
    jobs = [(args.spec, it, slot, args.rerun, args.whole_run) for it, slot in wanted if (it, slot) not in done]
    if done:
        print(f"{len(wanted) - len(jobs)} of {len(wanted)} tasks already in {args.out}")
    stamp = {"spec": args.spec, "whole_run": args.whole_run}
    for res in run_tasks(task_holds, jobs, args.workers, args.out, stamp, lambda r: f"{len(r['branches'])} branches"):
        done[(res["iteration"], res["slot"])] = res
    cfgs = {w: sample(spec, train_seed(spec.seed, *w)) for w in wanted}

    def relative(rows: dict[tuple[int, int], dict[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray]:
        spans, keeps = zip(*(schedule_reward(spec, cfgs[w], rows[w]["schedule_valid_curve"]) for w in wanted))
        return relative_to_schedule([rows[w] for w in wanted], keeps), np.array(spans)

    results, spans = relative(done)
    cap = spec.meta_train.reward_cap
    if args.rerun:
        print(seed_transfer(relative(first)[0], results, cap, spans))
        return
    tasks = {done[w]["task_id"]: task_vector(cfgs[w].task) for w in wanted}
    print(report(results, tasks, cap, {r["task_id"]: s for r, s in zip(results, spans)}))


def _read(path: str | None, spec: str, rerun: int, whole_run: bool | None) -> list[dict[str, Any]]:
    """The tasks an earlier run wrote to ``path`` with the same spec, rerun and ``whole_run`` (None:
    either; a rerun's choices may be either) (none if no file)."""
    return read_rows(path, {"spec": (spec, "--spec"), "rerun": (rerun, "--rerun"), "whole_run": (whole_run, "--whole-run")},
                     defaults={"rerun": 0, "whole_run": False})  # fmt: skip


if __name__ == "__main__":
    main()
