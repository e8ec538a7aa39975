"""Fit a level rule (:mod:`lhopt_dsl.agent.level`) on held-offset measurements of training tasks and
write it into a residual policy file, which ``lhopt eval --policy`` then evaluates like any other.

    LHOPT_DATA_DIR=../shared/data python bench/level_rule.py \\
        --held results/branch_value/cpu-residual-sharp-held.jsonl \\
        --whole results/branch_value/cpu-residual-sharp-whole.jsonl \\
        [--policy lhopt_dsl/policies/default.pt] [--l2 30 100 300 1000] --out runs/level/policy.pt

The rule reads the policy's raw features after the first segment (decision 1) and predicts, per
factor x1/8 ... x8, the reward of holding it relative to the schedule's own run. Its labels:

* ``--held`` files (``bench/held_value.py``): the reward of holding each factor *from decision 1*,
  which is what the rule does;
* ``--whole`` files (``held_value.py --whole-run``): the reward of holding it from the start, a
  proxy (on the 216 tasks that have both, the two correlate at 0.89-0.99 per factor) that costs a
  quarter of the runs.

Rewards are taken relative to each task's schedule run (``held_value.relative_to_schedule``). A task
in both kinds of file counts once, with its ``--held`` labels.

Before fitting on every task, it estimates on the training tasks themselves what each penalty of
``--l2`` earns on held-out tasks (4 folds, the rule as it ships: standardised, clipped, acting only
where a prediction is above 1), beside the same with outcomes shuffled, and fits the one that
earns most. That is the only choice made here; dev tasks judge the written policy
(``lhopt eval task_specs/cpu.yaml --policy OUT``), and the test set only a dev winner.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.level import LEVEL_FACTORS, LevelRule
from lhopt_dsl.agent.policy import save_checkpoint
from lhopt_dsl.agent.policy_file import load_policy_file
from lhopt_dsl.spec.sample import train_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_value import FACTORS, _read, fold_of, hold_matrix, relative_to_schedule, schedule_reward, speedups  # noqa: E402

assert tuple(FACTORS) == LEVEL_FACTORS, "held_value's factors are the level rule's"
DECISION_POINT = "segment 1"  # held_value's name of decision 1


def training_set(spec_path: str, held: Sequence[str], whole: Sequence[str]) -> dict[str, Any]:
    """Features at decision 1, rewards per factor relative to the schedule's run, reward spans, task ids
    and which file each task came from (a task in several files once, ``--held`` first)."""
    spec = load_spec(spec_path)
    rows: dict[tuple[int, int], tuple[dict[str, Any], str]] = {}
    for path, point in [(p, DECISION_POINT) for p in held] + [(p, "start") for p in whole]:
        for r in _read(path, spec_path, 0, point == "start"):
            rows.setdefault((r["iteration"], r["slot"]), (r, point))
    if not rows:
        raise SystemExit("no tasks in the given files: run bench/held_value.py first")
    keys = sorted(rows)
    cfgs = [sample(spec, train_seed(spec.seed, *k)) for k in keys]
    spans, keeps = zip(*(schedule_reward(spec, c, rows[k][0]["schedule_valid_curve"]) for c, k in zip(cfgs, keys)))
    relative = relative_to_schedule([rows[k][0] for k in keys], keeps)
    x = np.array([r["features"][str(r["points"][DECISION_POINT])] for r in relative], dtype=np.float64)
    rewards = np.vstack([hold_matrix([r], rows[k][1]) for r, k in zip(relative, keys)])
    return {"x": x, "rewards": rewards, "spans": np.asarray(spans), "cap": spec.meta_train.reward_cap,
            "tasks": [r["task_id"] for r in relative], "labels": [rows[k][1] for k in keys]}  # fmt: skip


def held_out(x: np.ndarray, rewards: np.ndarray, l2: float, folds: int = 4) -> np.ndarray:
    """Per task, the reward the rule fitted on the other folds earns: its chosen factor's, or 1 (keep)."""
    fold, out = fold_of(len(x), folds), np.ones(len(x))
    for f in range(folds):
        test = fold == f
        if test.all() or not test.any():
            continue
        rule = LevelRule.fit(x[~test], rewards[~test], l2)
        pred = rule.predict(x[test])
        k = np.argmax(pred, 1)
        acts = pred[np.arange(len(k)), k] > 1.0
        out[test] = np.where(acts, rewards[test][np.arange(len(k)), k], 1.0)
    return out


def speedup(rewards: np.ndarray, spans: np.ndarray, cap: float) -> float:
    """Geometric-mean speedup over the schedule's runs that ``rewards`` stand for (nan spans: 1x)."""
    return float(np.exp(np.mean(np.log(speedups(rewards, spans, cap)))))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="task_specs/cpu_residual_sharp.yaml", help="the spec the measurements ran")
    ap.add_argument("--held", nargs="*", default=[], help="held_value.py results (holds from decision 1)")
    ap.add_argument("--whole", nargs="*", default=[], help="held_value.py --whole-run results (holds from the start)")
    ap.add_argument("--policy", default="lhopt_dsl/policies/default.pt", help="the residual policy the rule joins")
    ap.add_argument("--l2", type=float, nargs="+", default=[30.0, 100.0, 300.0, 1000.0])
    ap.add_argument("--permutations", type=int, default=20, help="outcome shuffles for the chance bar")
    ap.add_argument("--out", required=True, help="the policy file to write")
    args = ap.parse_args(argv)
    state = load_policy_file(args.policy)
    if state.get("residual") is None:
        ap.error(f"{args.policy} is not a residual policy: a level rule sets a residual policy's offset")
    data = training_set(args.spec, args.held, args.whole)
    x, rewards, spans, cap = data["x"], data["rewards"], data["spans"], data["cap"]
    if x.shape[1] != state["policy"]["shape"]["policy_size"]:
        ap.error(f"the measurements have {x.shape[1]} features, {args.policy} reads {state['policy']['shape']['policy_size']}")
    n_held = sum(label == DECISION_POINT for label in data["labels"])
    print(f"{len(x)} training tasks ({n_held} labelled from decision 1, {len(x) - n_held} from the start)")
    oracle = np.maximum(rewards.max(1), 1.0)
    print(f"oracle (the run's own best factor): mean reward {oracle.mean():.3f}, {speedup(oracle, spans, cap):.3f}x")
    rng, scores = np.random.default_rng(0), {}
    for l2 in args.l2:
        got = held_out(x, rewards, l2)
        null = [held_out(x, rewards[p], l2).mean() for p in (rng.permutation(len(x)) for _ in range(args.permutations))]
        scores[l2] = got.mean()
        print(f"L2 {l2:g}: held-out mean reward {got.mean():.4f} ({speedup(got, spans, cap):.3f}x), acts on "
              f"{np.mean(got != 1.0):.2f} of tasks; outcomes shuffled: {np.min(null):.4f}-{np.max(null):.4f} "
              f"over {args.permutations}")  # fmt: skip
    l2 = max(scores, key=scores.get)
    sources = [{"file": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in [*args.held, *args.whole]]
    rule = LevelRule.fit(x, rewards, l2, fitted={"spec": args.spec, "tasks": len(x), "from_decision_1": n_held,
                                                 "sources": sources, "held_out_mean_reward": float(scores[l2])})  # fmt: skip
    chosen = rule.choose(x)
    counts = {f"x{f:g}": int(np.sum(chosen == f)) for f in (1.0, *rule.factors)}
    state["level"] = rule.to_data()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, args.out)
    load_policy_file(args.out)  # what was written loads and checks
    print(f"L2 {l2:g} fitted on all {len(x)} tasks; on them it chooses {counts}; wrote {args.out}")


if __name__ == "__main__":
    main()
