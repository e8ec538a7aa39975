"""Does a task's description tell its learning-rate level? A tree ensemble on the task vector, on
held-out training tasks and then on dev.

    LHOPT_DATA_DIR=../shared/data python bench/task_level.py \\
        --held results/branch_value/cpu-residual-sharp-held.jsonl \\
        --whole results/branch_value/cpu-residual-sharp-whole.jsonl \\
        [--eval-spec task_specs/cpu.yaml --tasks 300 --set dev --workers 2 --out runs/dev-task-level]
        [--describe params] [--write runs/described/policy.pt]

``bench/held_value.py`` found that a per-task whole-run factor of the residual base's learning rate
is worth about 1.36x on training tasks, two thirds of it the task's own, and that linear rules on the
task vector (``lhopt_dsl.agent.observation.task_vector``: the family and its settings, one-hot and
logged) earn nothing of it. This bench asks the same of a non-linear rule: scikit-learn's
``ExtraTreesRegressor`` (300 trees, at least 10 tasks a leaf) predicts, from the task vector, each
whole-run factor's reward relative to the schedule's run (x1/8 ... x8, and keep at 1), and the rule
holds the factor predicted best from the start of the run.

1. *Training tasks.* Every task of the ``--held`` and ``--whole`` files (their holds from the start),
   4 folds of tasks in a fixed random order: what the rule fitted on three earns on the fourth,
   beside the same with the tasks' outcomes shuffled (``--shuffles`` times).
2. *Dev* (with ``--out``). Fitted on every training task, the rule chooses a factor for each of the
   first ``--tasks`` dev tasks of ``--eval-spec`` (``--set test``: test tasks, once, for a rule that
   won on dev) from its task vector alone; the tasks then run as
   ``lhopt eval`` runs a policy (default initial hyperparameters, the same baseline grids), CIAO
   following linear-lr0.03 times the chosen factor from the first decision. ``lhopt compare
   results/evaluations/dev/schedule-linear-lr0.03 OUT`` reads the result. Nothing is chosen on the
   dev tasks: the model's settings are fixed above, before any dev task is run.

What this rule reads by default, a drop-in user's loop does not have: the task vector describes tasks
of this platform's families. It measures whether the level is a property of the task. ``--describe
params`` reads instead what any optimizer can see of its model before the first step
(:mod:`lhopt_dsl.agent.describe`: the parameters' shapes, the run's steps and decisions), the
description a drop-in policy would carry to any model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.actor import Step
from lhopt_dsl.agent.describe import model_descriptor
from lhopt_dsl.agent.observation import task_vector
from lhopt_dsl.agent.residual import Residual, clamp_offset, nearest_scale
from lhopt_dsl.spec.hparams import HyperparameterSpace
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.schedule import Schedule
from lhopt_dsl.tasks.compiler import parameter_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_value import FACTORS, Steer, _read, hold_matrix, relative_to_schedule, schedule_reward  # noqa: E402
from level_rule import speedup  # noqa: E402

CHOICES: tuple[float, ...] = (1.0, *FACTORS)  # column 0 keeps


def described(cfgs: Sequence[Any], how: str) -> np.ndarray:
    """Each task's description: its task vector (``task``), or what a drop-in optimizer can see of
    its model (``params``: :func:`~lhopt_dsl.agent.describe.model_descriptor` of its parameters'
    shapes, steps and decisions)."""
    if how == "task":
        return np.stack([task_vector(c.task) for c in cfgs]).astype(np.float64)
    if how == "params":
        return np.stack([model_descriptor(parameter_shapes(c.task), c.task.inner_steps, c.task.outer_steps)
                         for c in cfgs])  # fmt: skip
    raise ValueError(f"a description is 'task' or 'params', got {how!r}")


def training_table(spec_path: str, held: Sequence[str], whole: Sequence[str], how: str = "task") -> dict[str, Any]:
    """Per training task (a task in several files once): its description (:func:`described`), family,
    the rewards of keeping and of each whole-run factor relative to the schedule's run, its reward
    span, and its measured row (``rows``: the features the schedule's run showed at its points)."""
    spec = load_spec(spec_path)
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for path, whole_run in [(p, False) for p in held] + [(p, True) for p in whole]:
        for r in _read(path, spec_path, 0, whole_run):
            rows.setdefault((r["iteration"], r["slot"]), r)
    if not rows:
        raise SystemExit("no tasks in the given files: run bench/held_value.py first")
    keys = sorted(rows)
    cfgs = [sample(spec, train_seed(spec.seed, *k)) for k in keys]
    spans, keeps = zip(*(schedule_reward(spec, c, rows[k]["schedule_valid_curve"]) for c, k in zip(cfgs, keys)))
    relative = relative_to_schedule([rows[k] for k in keys], keeps)
    rewards = np.hstack([np.ones((len(keys), 1)), hold_matrix(relative, "start")])
    return {"x": described(cfgs, how), "rewards": rewards,
            "spans": np.asarray(spans), "cap": spec.meta_train.reward_cap,
            "families": [c.family for c in cfgs], "rows": [rows[k] for k in keys]}  # fmt: skip


def model(seed: int = 0) -> Any:
    from sklearn.ensemble import ExtraTreesRegressor

    return ExtraTreesRegressor(n_estimators=300, min_samples_leaf=10, random_state=seed, n_jobs=1)


def folds(n: int, k: int = 4, seed: int = 0) -> np.ndarray:
    """The fold (0 ... k - 1) of each of ``n`` tasks, in a random order fixed by ``seed``."""
    fold = np.empty(n, dtype=int)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) * k // n
    return fold


def held_out(x: np.ndarray, rewards: np.ndarray, k: int = 4, seed: int = 0) -> np.ndarray:
    """Per task, the reward of the choice a model fitted on the other folds (:func:`folds`) predicts best."""
    fold = folds(len(x), k, seed)
    out = np.empty(len(x))
    for f in range(k):
        test = fold == f
        pred = model(seed).fit(x[~test], rewards[~test]).predict(x[test])
        out[test] = rewards[test][np.arange(test.sum()), np.argmax(pred, 1)]
    return out


class TableSteer(Steer):
    """Holds, from the first decision, the factor ``factors[seed]`` of each run's seed (``lhopt eval``
    passes a task's index as its run's seed), reaching it as fast as the actions allow; keeps every
    other hyperparameter. Inside :class:`Residual`, as :class:`held_value.Steer`."""

    def __init__(self, space: HyperparameterSpace, factors: Sequence[float]):
        super().__init__(space)
        self.factors = tuple(factors)

    def start(self, runs: Sequence[Any]) -> tuple[int, tuple[float, ...], tuple[float, ...]]:  # type: ignore[override]
        if any(not 0 <= r.seed < len(self.factors) for r in runs):
            raise ValueError(f"this table has factors for tasks 0..{len(self.factors) - 1} only")
        return 0, (1.0,) * len(runs), tuple(self.factors[r.seed] for r in runs)

    def act(self, carry: Any, features: np.ndarray, generators: Sequence[Any], greedy: bool) -> tuple[Step, Any]:
        t, offsets, goals = carry
        rows = np.asarray(features, dtype=np.float32).reshape(-1, self.policy_size)
        actions = np.tile(self.identity, (len(rows), 1))
        moved = []
        for b, (m, goal) in enumerate(zip(offsets, goals)):
            actions[b, self.lr_dim] = a = nearest_scale(self.values, m, goal, self.keep)
            moved.append(clamp_offset(m * self.values[a]))
        return Step(actions, np.zeros(len(rows)), rows, actions), (t + 1, tuple(moved), goals)

    def guarded(self, carry: Any, row: int, lr_factor: float) -> Any:
        t, offsets, goals = carry
        moved, held = list(offsets), list(goals)
        moved[row], held[row] = clamp_offset(moved[row] * lr_factor), clamp_offset(held[row] * lr_factor)
        return t, tuple(moved), tuple(held)


@dataclass(frozen=True)
class TaskLevels:
    """A table of per-task factors evaluated as a policy (``runners.evaluate.run`` takes it as it takes a
    :class:`~lhopt_dsl.agent.residual.FixedSchedule`): plain data that travels to worker processes."""

    factors: tuple[float, ...]
    space: HyperparameterSpace
    base: str
    provenance: str  # what chose the table (hashed into its digest)

    @property
    def name(self) -> str:
        return f"task-levels:{self.digest()[:12]}"

    @property
    def stem(self) -> str:
        return f"task-levels-{self.digest()[:8]}"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.base, list(self.factors), self.provenance]).encode()).hexdigest()

    def load(self) -> tuple[Residual, HyperparameterSpace]:
        return Residual(TableSteer(self.space, self.factors), self.space, Schedule.from_name(self.base)), self.space


def write_policy(args: Any, x: np.ndarray, rewards: np.ndarray) -> None:
    """The rule fitted on every training task, as a :class:`~lhopt_dsl.agent.level.DescribedRule` in a
    copy of the residual policy ``args.policy``; its forest is checked to predict what scikit-learn's does."""
    from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES
    from lhopt_dsl.agent.level import DescribedRule, TreeEnsemble
    from lhopt_dsl.agent.policy import save_checkpoint
    from lhopt_dsl.agent.policy_file import load_policy_file

    state = load_policy_file(args.policy)
    if state.get("residual") is None:
        raise SystemExit(f"{args.policy} is not a residual policy: a level sets a residual policy's offset")
    fitted = model().fit(x, rewards)
    forest = TreeEnsemble.from_sklearn(fitted)
    if not np.allclose(forest.predict(x), fitted.predict(x), rtol=0, atol=1e-12):
        raise SystemExit("the converted forest does not predict what scikit-learn's does")
    sources = [{"file": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in [*args.held, *args.whole]]
    rule = DescribedRule(CHOICES, forest, DESCRIPTOR_NAMES,
                         {"spec": args.spec, "tasks": len(x), "model": "ExtraTreesRegressor(300, min_samples_leaf=10, "
                          "random_state=0)", "sources": sources})  # fmt: skip
    state["level"] = rule.to_data()
    Path(args.write).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, args.write)
    load_policy_file(args.write)  # what was written loads and checks
    counts = Counter(f"x{CHOICES[k]:g}" for k in np.argmax(forest.predict(x), 1))
    print(f"wrote {args.write}: {len(forest.roots)} trees, {len(forest.left):,} nodes; on the training tasks it "
          f"chooses {dict(sorted(counts.items(), key=lambda kv: float(kv[0][1:])))}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="task_specs/cpu_residual_sharp.yaml", help="the spec the measurements ran")
    ap.add_argument("--held", nargs="*", default=[], help="held_value.py results")
    ap.add_argument("--whole", nargs="*", default=[], help="held_value.py --whole-run results")
    ap.add_argument("--describe", default="task", choices=["task", "params"],
                    help="what the rule reads: the task vector, or what a drop-in sees (the parameters' shapes, "
                         "the run's steps and decisions)")
    ap.add_argument("--shuffles", type=int, default=5, help="outcome shuffles for the chance bar")
    ap.add_argument("--eval-spec", default="task_specs/cpu.yaml", help="the spec whose dev tasks judge the rule")
    ap.add_argument("--tasks", type=int, default=300, help="held-out tasks")
    ap.add_argument("--set", default="dev", choices=["dev", "test"],
                    help="the held-out set: dev (default), or test, once, for a rule that won on dev")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--storage", default=None, help="the baseline cache (default: lhopt eval's)")
    ap.add_argument("--out", default=None, help="evaluate on dev into this directory (none: training tasks only)")
    ap.add_argument("--write", default=None, metavar="POLICY",
                    help="with --describe params: write the rule fitted on every training task into a copy of "
                         "--policy (a residual policy file), which lhopt eval and the drop-in then run")
    ap.add_argument("--policy", default="lhopt_dsl/policies/default.pt", help="the residual policy --write extends")
    args = ap.parse_args(argv)
    if args.write and args.describe != "params":
        ap.error("--write needs --describe params: a policy can see its model's parameters, not the task's description")
    data = training_table(args.spec, args.held, args.whole, args.describe)
    x, rewards, spans, cap = data["x"], data["rewards"], data["spans"], data["cap"]
    print(f"{len(x)} training tasks; oracle (the run's own best factor): {speedup(rewards.max(1), spans, cap):.3f}x")
    got = held_out(x, rewards)
    rng = np.random.default_rng(1)
    null = []
    for _ in range(args.shuffles):
        p = rng.permutation(len(x))
        null.append(speedup(held_out(x, rewards[p]), spans[p], cap))
    print(f"held-out training tasks (4 folds): mean reward {got.mean():.4f}, {speedup(got, spans, cap):.3f}x, acts on "
          f"{np.mean(got != 1.0):.2f}; outcomes shuffled: {min(null, default=np.nan):.3f}x-{max(null, default=np.nan):.3f}x")  # fmt: skip
    for family in sorted(set(data["families"])):
        idx = np.array([f == family for f in data["families"]])
        print(f"  {family}: {idx.sum()} tasks, {speedup(got[idx], spans[idx], cap):.3f}x "
              f"(oracle {speedup(rewards[idx].max(1), spans[idx], cap):.3f}x)")
    if args.write:
        write_policy(args, x, rewards)
    if not args.out:
        return

    from runners.evaluate import eval_config, run, table1_row

    eval_spec = load_spec(args.eval_spec)
    configs = [eval_config(eval_spec, i, "default", args.set) for i in range(args.tasks)]
    fitted = model().fit(x, rewards)
    choice = np.argmax(fitted.predict(described(configs, args.describe)), 1)
    factors = tuple(float(CHOICES[k]) for k in choice)
    by_row: dict[str, Counter] = {}
    for cfg, f in zip(configs, factors):
        by_row.setdefault(table1_row(cfg), Counter())[f"x{f:g}"] += 1
    for row, counts in by_row.items():
        print(f"  {args.set} {row}: {dict(sorted(counts.items(), key=lambda kv: float(kv[0][1:])))}")
    sources = [hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16] for p in [*args.held, *args.whole]]
    base = load_spec(args.spec).meta_train.residual
    provenance = {"spec": args.spec, "sources": sources, **({"describe": args.describe} if args.describe != "task" else {})}
    levels = TaskLevels(factors, eval_spec.hparams, base, json.dumps(provenance))
    run(eval_spec, levels, num_tasks=args.tasks, storage=args.storage, out=Path(args.out), tracking_uri=None,
        workers=args.workers, task_set=args.set)


if __name__ == "__main__":
    main()
