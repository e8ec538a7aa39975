"""Where does leaving the schedule pay? One deviation from a residual policy's base, measured.

    LHOPT_DATA_DIR=../shared/data python bench/branch_value.py [--spec task_specs/cpu_residual_sharp.yaml]
        [--tasks 24] [--points 4] [--hparams lr] [--workers 1] [--out results/branch_value/NAME.jsonl]

A residual policy that keeps at every decision runs its base schedule (the spec's
``meta_train.residual``). For each of ``--tasks`` training tasks (drawn as ``lhopt train`` draws
them, from iterations no run here reaches) this runs that schedule once, then, for each of
``--points`` decisions spread over the run and each learning-rate action other than x1, the same
run (the same initial weights and data order) that takes that action once at that decision and
keeps from then on: the offset from the base it sets holds to the end, as a residual policy's does.

``--hparams`` branches on other hyperparameters' actions instead (a relative change that holds).
For each branch it reports what PPO's reward says (the spec's power-law reward against the
schedule's own run, 1 = the schedule, capped as ``meta_train.reward_cap`` caps it) and the ratio of
final test losses (schedule / branch: above 1, the branch ends lower; medians, since a loss near 0
makes ratios without bound). Then:

* by action and decision point, and by family: how often the branch beats the schedule, and by how much;
* the headroom: per task, the best single deviation (an oracle that knows the outcome);
* whether the policy could see it coming: the Spearman correlation, across (task, point), between
  each policy feature at the decision (as the schedule's run shows it) and the branch's reward,
  with the largest |rho| of 200 label permutations beside it (a family-wise bar: a feature above it
  is unlikely to be chance across all features); and whether "raising the learning rate pays here"
  can be told on held-out tasks, by a logistic regression on the policy's features (on progress
  alone; on the critic's task vector), beside the same with the outcomes shuffled, with what
  acting on its scores would earn;
* probes: whether a branch ahead of the schedule one segment (1/8, 1/4 of the run) after its
  deviation is ahead at the end, and what keeping the branch ahead then would earn.

What it is for: PPO can only learn to deviate where deviating pays and is visible. If few branches
pay, or none is predictable, more PPO will not find them; if some do, they are what a policy must
learn (and labels for imitating them).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.actor import Step
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.observation import FeatureBuilder, task_vector
from lhopt_dsl.agent.residual import Residual
from lhopt_dsl.agent.reward import PowerLawReward
from lhopt_dsl.agent.rollout import run_episode
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.schedule import Schedule, segment_bounds

FIRST_ITERATION = 1_000_000  # training tasks no meta-training run here reaches


class Deviate:
    """An :class:`~lhopt_dsl.agent.actor.Actor` that takes the identity action at every decision but
    decision ``at``, where its entry for dimension ``dim`` is ``action`` (the learning rate's, inside
    :class:`Residual`: an offset from the base that then holds; another's: a relative change that
    then holds). As built it never deviates (the base schedule); :meth:`branch` makes one that does."""

    kind = "probe"

    def __init__(self, space: Any):
        self.actions = ActionSpace(space)
        self.identity, self.at, self.dim, self.action = self.actions.identity(), -1, 0, 0
        self.policy_size = FeatureBuilder(self.actions, space).policy_size
        self.nvec = tuple(self.actions.nvec)

    def branch(self, at: int, name: str, action: int) -> "Deviate":
        """The same actor, deviating at decision ``at`` with ``action`` for hyperparameter ``name``."""
        out = copy.copy(self)
        out.at, out.dim, out.action = at, self.actions.names.index(name), action
        return out

    def start(self, runs: Sequence[Any]) -> int:
        return 0

    def act(self, carry: int, features: np.ndarray, generators: Sequence[Any], greedy: bool) -> tuple[Step, int]:
        rows = np.asarray(features, dtype=np.float32).reshape(-1, self.policy_size)
        actions = np.tile(self.identity, (len(rows), 1))
        if carry == self.at:
            actions[:, self.dim] = self.action
        return Step(actions, np.zeros(len(rows)), rows, actions), carry + 1

    def guarded(self, carry: int, row: int, lr_factor: float) -> int:
        return carry


def decision_points(outer: int, points: int) -> list[int]:
    """``points`` decisions spread over ``outer``, from the first, without repeats."""
    return sorted({min(outer - 1, round(k * outer / points)) for k in range(points)})


def _short(xs: Sequence[float]) -> list[float]:
    return [float(f"{x:.7g}") for x in xs]


def loss_ratio(a: float, b: float) -> float:
    """a / b for losses; a loss of exactly 0 (a task solved) counts as 1e-30, and 0 / 0 as a tie."""
    if a == b:
        return 1.0
    return float(max(a, 1e-30) / max(b, 1e-30))


def deviations(actions: ActionSpace, names: Sequence[str]) -> list[tuple[str, int, float, str]]:
    """(hyperparameter, action index, its value, label) of every action of ``names`` but the one that keeps."""
    out = []
    for name in names:
        hp = actions.hparams[name]
        keep = int(actions.identity()[actions.names.index(name)])
        for a, v in enumerate(hp.action.values):
            if a != keep:
                out.append((name, a, float(v), f"{name} x{v:g}" if hp.action.type == "scale" else f"{name} {v:+g}"))
    return out


def task_branches(args: tuple[str, int, int, int, tuple[str, ...]]) -> dict[str, Any]:
    """The schedule's run of one task and its branches (module docstring)."""
    spec_path, iteration, slot, points, names = args
    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    mt = spec.meta_train
    cfg = sample(spec, train_seed(spec.seed, iteration, slot))
    base_schedule = Schedule.from_name(mt.residual)
    env = InnerTrainingEnv(spec.hparams, max_valid=mt.max_valid)
    t0 = time.process_time()

    keeper = Deviate(spec.hparams)

    def run(inner: Deviate) -> Any:
        actor = Residual(inner, spec.hparams, base_schedule)
        return run_episode(env, cfg, actor, log_improvement_reward, deterministic=True)

    base = run(keeper)
    steps = segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps)
    reward = PowerLawReward(steps, base.valid_curve, mt.reward_cap)
    at_points = []
    for at in decision_points(cfg.task.outer_steps, points):
        branches = []
        for name, a, value, label in deviations(keeper.actions, names):
            ep = run(keeper.branch(at, name, a))
            branches.append({
                "hparam": name, "value": value, "action": label, "reward": float(reward(ep.valid_curve[-1])),
                "test_ratio": loss_ratio(base.test_loss, ep.test_loss),
                "same_before": ep.valid_curve[: at + 1] == base.valid_curve[: at + 1],
                "valid_next": float(ep.valid_curve[at + 1]),  # one segment after the deviation
                "valid_after": _short(ep.valid_curve[at + 1:]),  # every segment after it
            })  # fmt: skip
        features = [float(f"{x:.6g}") for x in base.raw_policy[at].tolist()]
        at_points.append({"at": at, "progress": at / cfg.task.outer_steps, "features": features, "branches": branches,
                          "schedule_valid_next": float(base.valid_curve[at + 1])})  # fmt: skip
    return {"iteration": iteration, "slot": slot, "task_id": cfg.task_id, "family": cfg.family,
            "outer_steps": cfg.task.outer_steps,
            "schedule_test_loss": float(base.test_loss), "schedule_valid_curve": _short(base.valid_curve),
            "points": at_points,
            "cpu_seconds": time.process_time() - t0}  # fmt: skip


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # ties share their mean rank
        r[x == v] = r[x == v].mean()
    return r


def spearman_table(features: np.ndarray, target: np.ndarray, permutations: int = 200,
                   seed: int = 0) -> tuple[np.ndarray, float]:  # fmt: skip
    """Per feature column, Spearman's rho with ``target`` (0 for a constant column), and the 95th
    percentile over ``permutations`` shuffles of ``target`` of the largest |rho| across columns
    (a constant ``target`` correlates with nothing: all 0)."""
    rf = np.stack([_ranks(c) for c in features.T], 1)
    rf = rf - rf.mean(0)
    norm = np.sqrt((rf**2).sum(0))
    ok = norm > 0

    def rho(t: np.ndarray) -> np.ndarray:
        rt = _ranks(t)
        rt = rt - rt.mean()
        out = np.zeros(features.shape[1])
        if (rt**2).sum() > 0:
            out[ok] = rf[:, ok].T @ rt / (norm[ok] * np.sqrt((rt**2).sum()))
        return out

    rng = np.random.default_rng(seed)
    null = [np.abs(rho(rng.permutation(target))).max() for _ in range(permutations)]
    return rho(target), float(np.quantile(null, 0.95))


def _branches(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every branch of one task, over its decision points."""
    return [b for pt in result["points"] for b in pt["branches"]]


def branch_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per branch: its outcome, where it was taken and the features the policy had there."""
    return [{**b, "task_id": r["task_id"], "point": k, "progress": pt["progress"], "features": pt["features"]}
            for r in results for k, pt in enumerate(r["points"]) for b in pt["branches"]]  # fmt: skip


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights (bias last) of an L2-penalised logistic regression, by Newton's method."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    penalty = np.full(len(w), l2)
    penalty[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def held_out_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 4,
                    l2: float = 10.0) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per fold, (which rows it holds, their scores by an L2 logistic regression on standardised
    features fitted on the other folds' tasks). ``groups`` (tasks) are split into ``folds`` by order
    of first appearance, so no task is both fitted and scored."""
    tasks = list(dict.fromkeys(groups.tolist()))
    fold_of = {t: k * folds // len(tasks) for k, t in enumerate(tasks)}
    fold = np.array([fold_of[g] for g in groups.tolist()])
    out = []
    for f in range(folds):
        test = fold == f
        if not test.any() or test.all():
            continue
        mu, sd = x[~test].mean(0), x[~test].std(0)
        sd[sd == 0] = 1.0
        w = _fit_logistic((x[~test] - mu) / sd, y[~test], l2)
        out.append((test, np.hstack([(x[test] - mu) / sd, np.ones((test.sum(), 1))]) @ w))
    return out


def held_out_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 4, l2: float = 10.0) -> list[float]:
    """Per fold, the AUC of :func:`held_out_scores`: whether the outcome is visible in the features
    of tasks not seen. The AUC is taken within a fold, one model scoring all of it (pooling scores
    of one model per task would rank them by models, not by features)."""
    return [auc(score, y[rows]) for rows, score in held_out_scores(x, y, groups, folds, l2)]


def acting_on(scored: list[tuple[np.ndarray, np.ndarray]], rewards: np.ndarray, share: float) -> float:
    """Mean reward per decision point of taking an action (``rewards``: its branch's reward at each
    point) at the ``share`` of each fold's points its model scores highest, and keeping elsewhere (1)."""
    got = np.ones(len(rewards))
    for rows, score in scored:
        idx = np.flatnonzero(rows)
        top = idx[np.argsort(-score, kind="stable")[: max(1, round(share * len(idx)))]]
        got[top] = rewards[top]
    return float(got.mean())


def _raises_lr(branch: dict[str, Any]) -> bool:
    return branch["hparam"] == "lr" and branch["value"] > 1.0


def visibility(results: list[dict[str, Any]], names: list[str], tasks: dict[str, np.ndarray] | None = None,
               permutations: int = 40) -> str:  # fmt: skip
    """Whether 'raising the learning rate pays here' can be told from the features, on held-out tasks,
    beside what the same procedure gives with the outcomes shuffled ``permutations`` times; with
    ``tasks`` (task id -> the critic's task vector), also from the task's description and progress."""
    pts = [(r["task_id"], pt) for r in results for pt in r["points"]]
    pts = [(t, pt) for t, pt in pts if any(_raises_lr(b) for b in pt["branches"])]
    if not pts:
        return "No branch raised the learning rate."
    y = np.array([max(b["reward"] for b in pt["branches"] if _raises_lr(b)) > 1.0 for _, pt in pts], float)
    x = np.array([pt["features"] for _, pt in pts], dtype=np.float64)
    groups = np.array([t for t, _ in pts])
    progress = x[:, [names.index("progress")]]
    rng = np.random.default_rng(0)

    def text(features: np.ndarray) -> str:
        aucs = held_out_auc(features, y, groups)
        if not np.isfinite(aucs).any():
            return "n/a (too few tasks, or one outcome only)"
        null = [np.nanmean(held_out_auc(features, rng.permutation(y), groups)) for _ in range(permutations)]
        lo, hi = np.quantile(null, [0.025, 0.975])
        return (f"{np.nanmean(aucs):.2f} (folds {', '.join(f'{a:.2f}' for a in aucs)}; "
                f"the same with the outcomes shuffled: 95% within [{lo:.2f}, {hi:.2f}])")

    scored = held_out_scores(x, y, groups)
    acting = []
    for action in sorted({b["action"] for _, pt in pts for b in pt["branches"] if _raises_lr(b)}):
        rewards = np.array([next((b["reward"] for b in pt["branches"] if b["action"] == action), 1.0) for _, pt in pts])
        acting.append(f"{action} {acting_on(scored, rewards, 0.1):.3f} / {acting_on(scored, rewards, 0.25):.3f} "
                      f"(always: {rewards.mean():.3f})")
    worth = ("\nActing on it, the mean reward per point of taking the action at the 10% / 25% of each fold's points "
             f"its model scores highest, keeping elsewhere: {', '.join(acting)}")
    described = ""
    if tasks:
        vectors = np.hstack([np.stack([tasks[t] for t in groups]), progress])
        described = f".\nFrom the task's description (the critic's task vector) and progress: {text(vectors)}"
    return (f"Raising the lr pays (some x>1 branch has reward > 1) at {y.mean():.2f} of {len(y)} decision points.\n"
            f"Told from the policy's features by an L2 logistic regression fitted on the other folds' tasks "
            f"(4 folds of tasks), mean AUC within a fold: {text(x)}{worth}.\nFrom progress alone: {text(progress)}"
            f"{described}.")


def probes(results: list[dict[str, Any]], fractions: Sequence[float] = (0.125, 0.25)) -> str:
    """Whether a deviation ahead of the schedule some segments later is ahead at the end, and what a
    probe worth that would earn: take the branch whose validation loss is lowest then if it is
    below the schedule's, else keep (the probe's own cost not charged). One segment later, and, where
    the results hold whole curves, ``fractions`` of the run later."""
    lines = [_probe_line(results, "one segment", lambda r: 1)]
    with_curves = [r for r in results if "schedule_valid_curve" in r]
    for frac in fractions:
        lines.append(_probe_line(with_curves, f"{frac:g} of the run", lambda r, f=frac: max(1, round(f * r["outer_steps"]))))
    return "\n".join(line for line in lines if line)


def _probe_line(results: list[dict[str, Any]], horizon: str, segments: Any) -> str:
    """:func:`probes` at one horizon (``segments(task)`` segments after the deviation)."""
    seen, probe = [], []
    for r in results:
        curve = r.get("schedule_valid_curve")
        for pt in r["points"]:
            h = segments(r)
            if "valid_next" not in pt["branches"][0]:
                continue
            at = min(pt["at"] + h, r["outer_steps"])  # the schedule's loss h segments after the deviation
            base = curve[at] if curve is not None else pt["schedule_valid_next"]
            later = [b["valid_after"][at - pt["at"] - 1] if curve is not None else b["valid_next"] for b in pt["branches"]]
            seen += [(v < base, b["reward"] > 1.0) for v, b in zip(later, pt["branches"])]
            k = int(np.argmin(later))
            probe.append(pt["branches"][k]["reward"] if later[k] < base else 1.0)
    if not probe:
        return ""
    ahead = [end for now, end in seen if now]
    return (f"{horizon} later: a branch ahead of the schedule then (lower validation loss) is ahead at the end "
            f"(reward > 1) on {np.mean(ahead) if ahead else float('nan'):.2f} of {len(ahead)} such branches; a probe "
            f"that takes the branch ahead then, else keeps: mean reward {np.mean(probe):.3f} over {len(probe)} "
            f"decision points (1 = keep; the probe's own cost not charged).")


def report(results: list[dict[str, Any]], names: list[str], cap: float, tasks: dict[str, np.ndarray] | None = None) -> str:
    rows = branch_rows(results)
    out = [f"{len(results)} tasks, {len(rows)} branches; reward 1 = the schedule's run, capped at {cap}x.", ""]
    broken = sum(not b["same_before"] for b in rows)
    if broken:
        out.append(f"WARNING: {broken} branches did not retrace the schedule's run before their decision.\n")
    out += ["| action | decision (mean progress) | branches | reward > 1 | reward > 1.1 | mean reward | test loss lower "
            "| median test ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    labels = sorted({(b["hparam"], b["value"], b["action"]) for b in rows})
    for _, _, action in labels:
        for where in [None, *sorted({b["point"] for b in rows})]:
            sel = [b for b in rows if b["action"] == action and where in (None, b["point"])]
            rw = np.array([b["reward"] for b in sel])
            tr = np.array([b["test_ratio"] for b in sel])
            label = "all" if where is None else f"point {where + 1} (at {np.mean([b['progress'] for b in sel]):.2f})"
            out.append(f"| {action} | {label} | {len(sel)} | {np.mean(rw > 1):.2f} | {np.mean(rw > 1.1):.2f} "
                       f"| {rw.mean():.3f} | {np.mean(tr > 1):.2f} | {np.median(tr):.3f} |")
    out += ["", "| family | tasks | branches with reward > 1 | best single deviation, mean reward | its most common best action |",
            "|---|---:|---:|---:|---|"]
    for family in sorted({r["family"] for r in results}):
        of_family = [r for r in results if r["family"] == family]
        bs = [b for r in of_family for b in _branches(r)]
        bests = [max(((b["reward"], b["action"]) for b in _branches(r)), default=(1.0, "")) for r in of_family]
        paying = [a for rw, a in bests if rw > 1.0]
        common = max(sorted(set(paying)), key=paying.count) if paying else "none pays"  # ties: the first by name
        out.append(f"| {family} | {len(of_family)} | {np.mean([b['reward'] > 1 for b in bs]):.2f} "
                   f"| {np.mean([max(1.0, rw) for rw, _ in bests]):.3f} | {common} |")
    per_task = [_branches(r) for r in results]
    best = [max([1.0] + [b["test_ratio"] for b in bs]) for bs in per_task]
    best_r = [max([1.0] + [b["reward"] for b in bs]) for bs in per_task]
    out += ["", f"Oracle (per task the best single deviation, or none): median test ratio "
            f"{np.median(best):.3f}, mean reward {np.mean(best_r):.3f}; a deviation lowers the test loss "
            f"by over 5% on {np.mean(np.array(best) > 1.05):.2f} of tasks.", ""]
    for _, _, action in labels:
        sel = [b for b in rows if b["action"] == action]
        x = np.array([b["features"] for b in sel], dtype=np.float64)
        rho, bar = spearman_table(x, np.array([b["reward"] for b in sel]))
        top = np.argsort(-np.abs(rho))[:5]
        listed = ", ".join(f"{names[i]} {rho[i]:+.2f}" for i in top)
        out.append(f"{action}: features most correlated with its reward (Spearman, n={len(sel)}): {listed}; "
                   f"chance bar (95% of the largest |rho| under permutation) {bar:.2f}.")
    out += ["", visibility(results, names, tasks), "", probes(results)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="task_specs/cpu_residual_sharp.yaml")
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--points", type=int, default=4, help="decision points per task, spread over the run")
    ap.add_argument("--hparams", default="lr",
                    help="comma-separated hyperparameters whose actions to branch on ('all': every one the policy controls)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=None,
                    help="JSON lines, one task each, written as tasks finish; tasks already there are not rerun")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    if not spec.meta_train.residual:
        ap.error(f"{args.spec} has no meta_train.residual: there is no base schedule to branch from")
    controlled = ActionSpace(spec.hparams).names
    names = tuple(controlled if args.hparams == "all" else [n.strip() for n in args.hparams.split(",") if n.strip()])
    unknown = sorted(set(names) - set(controlled))
    if unknown:
        ap.error(f"--hparams: {', '.join(unknown)} not among what the policy controls ({', '.join(controlled)})")
    per = spec.meta_train.tasks_per_iteration
    wanted = [(FIRST_ITERATION + k // per, k % per) for k in range(args.tasks)]
    done = {(r["iteration"], r["slot"]): r for r in _read(args.out, args.spec, args.points, names)}
    jobs = [(args.spec, it, slot, args.points, names) for it, slot in wanted if (it, slot) not in done]
    if done:
        print(f"{len(wanted) - len(jobs)} of {len(wanted)} tasks already in {args.out}")
    stamp = {"spec": args.spec, "points_per_task": args.points, "hparams": names}
    for res in run_tasks(task_branches, jobs, args.workers, args.out, stamp, lambda r: f"{len(branch_rows([r]))} branches"):
        done[(res["iteration"], res["slot"])] = res
    features = FeatureBuilder(ActionSpace(spec.hparams), spec.hparams).policy_names()
    tasks = {r["task_id"]: task_vector(sample(spec, train_seed(spec.seed, it, slot)).task) for (it, slot), r in done.items()}
    print(report([done[w] for w in wanted], features, spec.meta_train.reward_cap, tasks))


def run_tasks(work: Callable[[Any], dict[str, Any]], jobs: Sequence[Any], workers: int, out: str | None,
              stamp: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> Iterator[dict[str, Any]]:  # fmt: skip
    """``work`` on each of ``jobs`` in ``workers`` processes, in order; each result is appended to ``out``
    (JSON lines, ``stamp``'s entries first) as it comes, so a stopped run loses no finished task, and
    reported with ``describe(result)``."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(workers) as pool:
        for k, res in enumerate(pool.imap(work, jobs)):
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps({**stamp, **res}) + "\n")
            print(f"  task {k + 1}/{len(jobs)}: {res['family']}, {describe(res)}, {res['cpu_seconds']:.0f} CPU-s", flush=True)
            yield res


def read_rows(path: str | None, wanted: dict[str, tuple[Any, str]], defaults: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows (tasks) an earlier run wrote to ``path`` as JSON lines (none if there is no file), each
    of whose stamps ``key`` equals ``wanted[key][0]`` (a row without the key reads ``defaults[key]``;
    a wanted value of None accepts any). A file with another stamp stops the run, naming the option
    (``wanted[key][1]``) that wrote it, so that results of other settings are never mixed."""
    if not path or not Path(path).exists():
        return []
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    defaults = defaults or {}
    for key, (value, option) in wanted.items():
        seen = {json.dumps(r.get(key, defaults.get(key))) for r in rows}
        if value is not None and seen - {json.dumps(value)}:
            shown = ", ".join(sorted(seen - {json.dumps(value)}))[:80]
            raise SystemExit(f"{path} holds tasks written with another {option} ({shown}, here {json.dumps(value)}); "
                             "give another --out")  # fmt: skip
    return rows


def _read(path: str | None, spec: str, points: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """The tasks an earlier run wrote to ``path`` with the same spec, points and hyperparameters (none if no file)."""
    return read_rows(path, {"spec": (spec, "--spec"), "points_per_task": (points, "--points"),
                            "hparams": (list(names), "--hparams")})  # fmt: skip


if __name__ == "__main__":
    main()
