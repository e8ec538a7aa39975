"""Evaluation of a policy against tuned baselines on held-out tasks (paper Section 4.1).

    lhopt eval SPEC --policy P [--tasks N] [--storage URL] [--tracking-uri URI]

Held-out tasks are sampled from the spec's evaluation distribution (``evaluation.tasks``, else the
training one) with seeds from the evaluation namespace, which is disjoint from every training
seed. On each task the policy runs for T steps (greedy actions), and the 35 AdamW baselines run at
T and 2T steps on exactly the same task, weights and data order, plus Schedule-Free AdamW and
Prodigy at their defaults. Baselines run as a resumable Optuna grid in an RDB storage, so an
interrupted evaluation picks up where it stopped and a re-evaluation of another policy reuses
every baseline curve.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lhopt_dsl import ExperimentSpec, TaskConfig
from lhopt_dsl.controller import load_policy
from lhopt_dsl.env import InnerTrainingEnv, log_improvement_reward, segment_bounds
from lhopt_dsl.metrics import (
    best_baseline,
    format_table1,
    performance_profile,
    plot_performance_profile,
    speedup,
    table1,
)
from lhopt_dsl.rollout import run_episode
from lhopt_dsl.sample import EVAL_SEEDS, eval_seed, sample

from .baselines import ADAMW_BASELINES, BASELINES, TUNING_FREE, run_grid
from .tracking import Tracker



def eval_config(spec: ExperimentSpec, index: int) -> TaskConfig:
    """The ``index``-th held-out task; its seed is checked to lie in the evaluation namespace."""
    seed = eval_seed(spec.seed, index)
    if seed not in EVAL_SEEDS:
        raise AssertionError(f"evaluation seed {seed} outside the evaluation namespace")
    return sample(spec, seed, spec.evaluation.tasks)


@dataclass
class TaskEval:
    cfg: TaskConfig
    policy_curve: list[float]
    policy_hparams: list[dict[str, float]]
    curves: dict[tuple[str, int], Any]  # (baseline, horizon) -> LearningCurve

    @property
    def T(self) -> int:  # noqa: N802 (the paper's name)
        return self.cfg.task.inner_steps


def evaluate_task(cfg: TaskConfig, policy: Any, space: Any, storage: str, device: str, data_dir: str | None,
                  max_valid: int, compile: bool = False) -> TaskEval:  # fmt: skip
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    episode = run_episode(env, cfg, policy, log_improvement_reward, deterministic=True)
    curves = run_grid(cfg, storage, names=BASELINES, horizons=(1, 2), device=device, data_dir=data_dir,
                      max_valid=max_valid, compile=compile)  # fmt: skip
    return TaskEval(cfg, episode.valid_curve, episode.hparams, curves)


def _final(curve: Any) -> float:
    return float(curve.valid_loss[-1])


def summarise(results: list[TaskEval]) -> dict[str, Any]:
    """Table 1, speedups against each task's best baseline, and the performance profile."""
    adamw = ADAMW_BASELINES
    policy_final = {r.cfg.task_id: float(r.policy_curve[-1]) for r in results}
    at_t = {r.cfg.task_id: {n: _final(r.curves[(n, 1)]) for n in adamw} for r in results}
    at_2t = {r.cfg.task_id: {n: _final(r.curves[(n, 2)]) for n in adamw} for r in results}
    families = {r.cfg.task_id: r.cfg.family for r in results}
    t1 = table1(policy_final, at_t, at_2t, families)

    speedups = {}
    for r in results:
        best = best_baseline({n: (r.curves[(n, 1)].steps, r.curves[(n, 1)].valid_loss) for n in adamw}, r.T)
        long = r.curves[(best, 2)]
        value, capped = speedup(policy_final[r.cfg.task_id], r.T, long.steps, long.valid_loss)
        speedups[r.cfg.task_id] = {"speedup": value, "capped": capped, "best_baseline": best, "family": r.cfg.family}

    methods: dict[str, dict[str, float]] = {"policy": policy_final, "best baseline": {}, "median baseline": {}}
    for name in TUNING_FREE:
        methods[name] = {r.cfg.task_id: _final(r.curves[(name, 1)]) for r in results}
    for tid, finals in at_t.items():
        values = np.asarray([v if math.isfinite(v) else np.inf for v in finals.values()])
        methods["best baseline"][tid] = float(values.min())
        methods["median baseline"][tid] = float(np.median(values))
    values = np.asarray([s["speedup"] for s in speedups.values()])
    return {
        "table1": t1,
        "speedups": speedups,
        "speedup_median": float(np.nanmedian(values)) if len(values) else math.nan,
        "speedup_capped_fraction": float(np.mean([s["capped"] for s in speedups.values()])) if speedups else math.nan,
        "final_losses": methods,
    }


def _plots(results: list[TaskEval], summary: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    adamw = ADAMW_BASELINES
    shown = results[:6]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for ax, r in zip(axes.flat, shown):
        finals = {n: _final(r.curves[(n, 1)]) for n in adamw}
        ranked = sorted(finals, key=lambda n: finals[n] if math.isfinite(finals[n]) else math.inf)
        for name, style in ((ranked[0], "-"), (ranked[-1], ":")):
            c = r.curves[(name, 2)]
            ax.plot(c.steps, c.valid_loss, style, label=f"{name} (2T)")
        steps = segment_bounds(r.T, r.cfg.task.outer_steps)
        ax.plot(steps, r.policy_curve, "k-", lw=2, label="policy")
        ax.set_yscale("log")
        ax.set_title(f"{r.cfg.family} {r.cfg.task_id[:8]}")
        ax.set_xlabel("inner step")
        ax.legend(fontsize=7)
    fig.suptitle("Validation loss: policy vs best and worst AdamW baseline")
    fig.tight_layout()
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=100)

    names = list(results[0].policy_hparams[0]) if results and results[0].policy_hparams else []
    fig, axes = plt.subplots(2, 4, figsize=(15, 7), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for r in results:
            k = len(r.policy_hparams)
            ax.plot(np.arange(k) / k, [h[name] for h in r.policy_hparams], alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("progress")
    fig.suptitle("Hyperparameters chosen by the policy")
    fig.tight_layout()
    paths.append(out / "hparams.png")
    fig.savefig(paths[-1], dpi=100)

    fig, ax = plt.subplots(figsize=(6, 4))
    values = [v["speedup"] for v in summary["speedups"].values()]
    ax.hist(values, bins=np.linspace(0, 2, 21), color="tab:blue", alpha=0.8)
    ax.axvline(1.0, color="k", ls=":")
    ax.set_xlabel("speedup vs the task's best AdamW baseline (capped at 2)")
    ax.set_ylabel("tasks")
    ax.set_title(f"median {summary['speedup_median']:.2f}x over {len(values)} tasks")
    fig.tight_layout()
    paths.append(out / "speedups.png")
    fig.savefig(paths[-1], dpi=100)

    taus = np.logspace(0, 1, 60)
    fig = plot_performance_profile(performance_profile(summary["final_losses"], taus), taus)
    paths.append(out / "performance_profile.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close("all")
    return paths


def run(spec: ExperimentSpec, policy_path: Path, *, num_tasks: int, storage: str | None, out: Path,
        tracking_uri: str | None, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Evaluate and report; returns the summary (also written to ``out/results.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'baselines.db').resolve()}"
    policy, space = load_policy(policy_path)
    tracker = Tracker(tracking_uri or spec.tracking.uri, spec.tracking.experiment, f"eval-{spec.name}", out)
    tracker.log_params({"policy": str(policy_path), "num_tasks": num_tasks, "spec": spec.name, "storage": storage})
    results = []
    for i in tqdm(range(num_tasks), desc="evaluate", unit="task", disable=quiet):
        cfg = eval_config(spec, i)
        results.append(evaluate_task(cfg, policy, space, storage, spec.device, spec.data_dir,
                                     spec.meta_train.max_valid, spec.evaluation.compile))  # fmt: skip
    summary = summarise(results)
    text = format_table1(summary["table1"])
    markdown = format_table1(summary["table1"], markdown=True)
    lines = [
        text,
        f"\nmedian speedup vs each task's best AdamW baseline: {summary['speedup_median']:.2f}x "
        f"({summary['speedup_capped_fraction']:.0%} of tasks capped at 2x: the baseline never got there in 2T)",
    ]
    (out / "table1.md").write_text(markdown + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    overall = summary["table1"]["overall"]
    tracker.log_metrics({"eval/frac_ge_1x": overall["ge_1x"], "eval/frac_ge_2x": overall["ge_2x"],
                         "eval/speedup_median": summary["speedup_median"]}, step=0)  # fmt: skip
    for path in [out / "table1.md", out / "results.json", *_plots(results, summary, out)]:
        tracker.log_artifact(path)
    tracker.end()
    print("\n".join(lines))
    return summary
