"""Can curvature tell a task's learning rate? Sharpness probes at a residual policy's decisions, against
the held offsets of ``bench/held_value.py``.

    LHOPT_DATA_DIR=../shared/data python bench/curvature_value.py \\
        --held results/branch_value/cpu-residual-sharp-held.jsonl [--workers 1] [--out results/branch_value/NAME.jsonl]

``held_value.py`` found that, per task, the best learning-rate offset from the base schedule held
for the rest of the run is worth a geometric-mean speedup of about 1.3x over the schedule, and
that nothing the policy observes, nor the task's description, tells which offset on held-out tasks.
The policy's features say nothing about curvature. The classical account of a learning rate's
upper limit does: gradient descent on a quadratic is stable while lr * lambda_max < 2, and Adam-like
methods train at the edge of stability of their *preconditioned* sharpness (the top eigenvalue of
P^-1/2 H P^-1/2, with P the denominator of the update). If the best offset is set by stability,
lr * sharpness at a decision predicts it.

For each task of ``--held`` this reruns the schedule's run (the same as there: a check compares its
validation curve) and, at the decisions where ``held_value.py`` started its holds, measures on the
first validation batch (evaluation mode, so no dropout draws, and the training data's order is
untouched) by power iteration with Hessian-vector products:

* ``sharpness``: the top eigenvalue of the loss's Hessian;
* ``precond_sharpness``: the same of P^-1/2 H P^-1/2 with P = the optimizer's Adamax denominator
  u + eps (u the running max of |g|; before any step, |g| of that batch; bias corrections and LAMB's
  trust ratio left out);

both on the first ``PROBE_ROWS`` (256) examples of the batch. It reports, per decision point, the rank correlation between log(lr * sharpness) and the log of the
best held factor, and what choosing the factor from it earns on held-out tasks (4 folds of tasks):
the rule ``factor = c / (lr * sharpness)`` (nearest held factor, or keep) with its one constant
chosen on the other folds, and a ridge regression of each factor's reward on the two probes and
the family, beside the same with outcomes shuffled.
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
from torch.nn.attention import SDPBackend, sdpa_kernel

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.residual import Residual
from lhopt_dsl.agent.rollout import run_episode
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.schedule import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from branch_value import read_rows, run_tasks  # noqa: E402
from held_value import (  # noqa: E402
    FACTORS, HOLD_POINTS, Score, Steer, fold_of, hold_matrix, model_line, relative_to_schedule, rule_best_factor,
    schedule_reward,
)  # fmt: skip

ITERATIONS = 20  # power iterations per eigenvalue (a Rayleigh quotient: low where the top eigenvalues crowd)
PROBE_ROWS = 256  # examples of the first validation batch the probes use


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def top_eigenvalue(hvp: Any, shapes: Sequence[torch.Tensor], iterations: int = ITERATIONS, seed: int = 0) -> float:
    """The largest eigenvalue of the symmetric operator ``hvp`` (lists of tensors shaped as ``shapes``).
    Power iteration gives a Rayleigh quotient and the spectral radius rho (the largest |H v| seen).
    Where the quotient has not reached +rho (the top eigenvalue is negative, or a positive and a
    negative one of about the same size mix), a second power iteration on H + rho I, whose spectrum
    is then (about) non-negative, finds its top, less rho. Both are Rayleigh quotients of H, so
    lower bounds on its top eigenvalue: the larger is returned."""
    value, rho = _power(hvp, shapes, iterations, seed)
    if not math.isfinite(rho) or rho == 0.0 or value >= (1.0 - 1e-3) * rho:
        return value if math.isfinite(rho) else math.nan
    shifted, _ = _power(lambda v: [h + rho * x for h, x in zip(hvp(v), v)], shapes, iterations, seed)
    return max(value, shifted - rho)


def _power(hvp: Any, shapes: Sequence[torch.Tensor], iterations: int, seed: int) -> tuple[float, float]:
    """Power iteration on ``hvp`` from a fixed random start: the Rayleigh quotient at the end, and
    the largest |H v| of a unit v seen (a lower bound on the spectral radius)."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(s.shape, generator=gen, dtype=s.dtype).to(s.device) for s in shapes]
    norm = math.sqrt(float(_dot(v, v)))
    v = [x / norm for x in v]
    value, radius = math.nan, 0.0
    for _ in range(iterations):
        hv = hvp(v)
        value = float(_dot(v, hv))
        norm = math.sqrt(float(_dot(hv, hv)))
        if not math.isfinite(norm):
            return math.nan, math.nan
        radius = max(radius, norm)
        if norm == 0.0:
            return value, 0.0
        v = [x / norm for x in hv]
    return value, radius


def probe(task: Any, optimizer: Any) -> dict[str, float]:
    """``sharpness`` and ``precond_sharpness`` (module docstring) of ``task``'s model as it is, with the
    learning rate; the model's mode, its gradients and the global random state are left as they were."""
    batch = task.valid_batches[0]
    if len(batch) > 1 or batch[0].ndim > 1:  # examples: the first PROBE_ROWS (a lone vector, NQM's noise draw, is one)
        batch = tuple(t[:PROBE_ROWS] for t in batch)
    rng, was_training = torch.get_rng_state(), task.model.training
    group = optimizer.param_groups[0]
    if group.get("denominator", "adamax") != "adamax":
        raise ValueError(f"the preconditioned probe reads CIAO's Adamax denominator; this optimizer's is "
                         f"'{group['denominator']}' (a space with denominator: adamax, as the CIAO spaces have)")  # fmt: skip
    task.model.eval()
    try:  # attention's fused CPU kernels have no second derivative: the probe runs the plain maths
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            loss = task.loss_fn(task.model, batch)
            grads = torch.autograd.grad(loss, task.params, create_graph=True, allow_unused=True)
            used = [(p, g) for p, g in zip(task.params, grads) if g is not None]
            params, grads = [p for p, _ in used], [g for _, g in used]
            curved = [g.requires_grad for g in grads]  # a gradient that does not depend on the weights: H = 0 there

            def hvp(v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
                out = torch.autograd.grad([g for g, c in zip(grads, curved) if c], params,
                                          [x for x, c in zip(v, curved) if c], retain_graph=True, allow_unused=True)  # fmt: skip
                return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(out, params)]

            sharp = top_eigenvalue(hvp, params) if any(curved) else 0.0
            denom = []
            for p, g in zip(params, grads):
                u = optimizer.state.get(p, {}).get("exp_avg_sq")
                u = g.detach().abs() if u is None or not bool(u.any()) else u
                denom.append((u + group["eps"]).rsqrt())
            pre = (top_eigenvalue(lambda v: [d * h for d, h in zip(denom, hvp([d * x for d, x in zip(denom, v)]))], params)
                   if any(curved) else 0.0)  # fmt: skip
    finally:
        task.model.train(was_training)
        torch.set_rng_state(rng)
    return {"lr": float(group["lr"]), "loss": float(loss.detach()), "sharpness": sharp, "precond_sharpness": pre}


class ProbedEnv(InnerTrainingEnv):
    """The training environment, probing (:func:`probe`) the model at the decisions in ``at`` before they are taken."""

    def __init__(self, *args: Any, at: Sequence[int] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.at, self.probes = set(at), {}

    def _probe(self) -> None:
        if self.k in self.at and self.k < self.task.outer_steps:
            self.probes[self.k] = probe(self.task, self.optimizer)

    def reset(self, *args: Any, **kwargs: Any):
        out = super().reset(*args, **kwargs)
        self.probes = {}
        self._probe()
        return out

    def step(self, action: Any):
        out = super().step(action)
        self._probe()
        return out


def task_probes(args: tuple[str, int, int, list[float]]) -> dict[str, Any]:
    """The schedule's run of one task of ``held_value.py``, probed at its hold points."""
    spec_path, iteration, slot, held_curve = args
    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    mt = spec.meta_train
    cfg = sample(spec, train_seed(spec.seed, iteration, slot))
    at = sorted({where(cfg.task.outer_steps) for where in HOLD_POINTS.values()})
    env = ProbedEnv(spec.hparams, max_valid=mt.max_valid, at=at)
    t0 = time.process_time()
    actor = Residual(Steer(spec.hparams), spec.hparams, Schedule.from_name(mt.residual))
    ep = run_episode(env, cfg, actor, log_improvement_reward, deterministic=True)
    same = bool(np.allclose(ep.valid_curve, held_curve, rtol=1e-6, atol=0.0))
    return {"iteration": iteration, "slot": slot, "task_id": cfg.task_id, "family": cfg.family,
            "base_lr": float(actor.base.lr), "same_run": same, "probes": {str(k): v for k, v in env.probes.items()},
            "cpu_seconds": time.process_time() - t0}  # fmt: skip


# ----------------------------------------------------------------------------------------------- analysis


def probe_features(held: list[dict[str, Any]], probes: dict[str, dict[str, Any]], point: str) -> np.ndarray:
    """Per task, log(lr * sharpness) and log(lr * precond_sharpness) at ``point``, with lr the base
    schedule's peak (the rate a held factor multiplies; the rate of the moment is a warm-up's at the
    first decisions); nan where not positive."""
    out = np.full((len(held), 2), np.nan)
    for i, r in enumerate(held):
        p = probes[r["task_id"]]["probes"].get(str(r["points"][point]))
        if p is None:
            continue
        for j, key in enumerate(("sharpness", "precond_sharpness")):
            value = probes[r["task_id"]]["base_lr"] * p[key]
            out[i, j] = math.log(value) if value > 0 and math.isfinite(value) else np.nan
    return out


def stability_rule(log_lr_sharp: np.ndarray, rewards: np.ndarray, folds: int = 4) -> np.ndarray:
    """Per task, the reward of holding the factor nearest ``c / (lr * sharpness)`` in log space (or
    keeping, x1, where that is nearest), with log c chosen on the other folds' tasks (by their mean
    reward over a grid); a task without a probe keeps."""
    choices = np.log(np.array((1.0, *FACTORS)))
    full = np.hstack([np.ones((len(rewards), 1)), rewards])  # column 0: keep

    def take(log_c: float, rows: np.ndarray) -> np.ndarray:
        want = log_c - log_lr_sharp[rows]
        k = np.argmin(np.abs(want[:, None] - choices[None]), 1)
        got = full[rows, k]
        return np.where(np.isfinite(want), got, 1.0)

    fold = fold_of(len(rewards), folds)
    grid = np.linspace(-8.0, 8.0, 161)
    out = np.ones(len(rewards))
    for f in range(folds):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        best = max(grid, key=lambda c: (take(c, train).mean(), -abs(c)))
        out[test] = take(best, test)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return math.nan
    ra, rb = np.argsort(np.argsort(a[ok])), np.argsort(np.argsort(b[ok]))
    return float(np.corrcoef(ra, rb)[0, 1])


def report(held: list[dict[str, Any]], probes: dict[str, dict[str, Any]], cap: float,
           spans: np.ndarray | None = None, permutations: int = 40) -> str:  # fmt: skip
    score = Score(spans, cap)
    differ = [r["task_id"] for r in held if not probes[r["task_id"]]["same_run"]]
    out = [f"{len(held)} tasks; rewards as held_value.py's (relative to the schedule's own, 1 = the schedule; in "
           "brackets the geometric-mean speedup)."]
    if differ:
        out.append(f"WARNING: the probed run differs from held_value.py's on {len(differ)} tasks.")
    families = sorted({r["family"] for r in held})
    onehot = np.array([[r["family"] == f for f in families] for r in held], dtype=np.float64)
    for point in HOLD_POINTS:
        rewards = hold_matrix(held, point)
        x = probe_features(held, probes, point)
        best = np.log2(np.where(rewards.max(1) > 1.0, np.array(FACTORS)[np.argmax(rewards, 1)], 1.0))
        finite = np.isfinite(x).all(1)
        out.append(f"\nFrom {point} ({finite.sum()} tasks probed): Spearman of the best held factor's log with "
                   f"log(lr * sharpness) {spearman(x[:, 0], best):+.2f}, with log(lr * preconditioned sharpness) "
                   f"{spearman(x[:, 1], best):+.2f}; median peak lr * sharpness {np.nanmedian(np.exp(x[:, 0])):.3g}, "
                   f"peak lr * preconditioned {np.nanmedian(np.exp(x[:, 1])):.3g}.")
        out.append(f"- oracle {score(np.maximum(rewards.max(1), 1.0))}; per family {score(rule_best_factor(rewards, [r['family'] for r in held]))}")
        for j, name in enumerate(("sharpness", "preconditioned sharpness")):
            out.append(f"- factor = c / (lr * {name}), c from the other folds: {score(stability_rule(x[:, j], rewards))}")
        filled = np.where(np.isfinite(x), x, np.nanmedian(x, 0))
        out.append(f"- ridge on both probes and the family: "
                   f"{model_line(np.hstack([filled, onehot]), rewards, (1.0, 10.0, 100.0), permutations, score)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", default="results/branch_value/cpu-residual-sharp-held.jsonl", help="held_value.py's results")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON lines, one task each; tasks already there are not rerun")
    args = ap.parse_args(argv)
    if not Path(args.held).exists():
        ap.error(f"{args.held} does not exist: run bench/held_value.py --out {args.held} first")
    held = [json.loads(line) for line in Path(args.held).read_text().splitlines() if line.strip()]
    specs = {r["spec"] for r in held}
    if len(specs) != 1:
        ap.error(f"{args.held} holds tasks of {len(specs)} specs; give one spec's results")
    if any(r.get("rerun", 0) or r.get("whole_run", False) for r in held):
        ap.error(f"{args.held} holds a rerun's or --whole-run results: probe the first seed's full held_value.py results")
    spec_path = specs.pop()
    spec = load_spec(spec_path)
    done = {r["task_id"]: r for r in read_rows(args.out, {"spec": (spec_path, "--held spec")})}
    jobs = [(spec_path, r["iteration"], r["slot"], r["schedule_valid_curve"]) for r in held if r["task_id"] not in done]
    for res in run_tasks(task_probes, jobs, args.workers, args.out, {"spec": spec_path},
                         lambda r: "probed" if r["same_run"] else "WARNING: not held_value.py's run"):  # fmt: skip
        done[res["task_id"]] = res
    spans, keeps = zip(*(schedule_reward(spec, sample(spec, train_seed(spec.seed, r["iteration"], r["slot"])),
                                          r["schedule_valid_curve"]) for r in held))  # fmt: skip
    print(report(relative_to_schedule(held, keeps), done, spec.meta_train.reward_cap, np.array(spans)))


if __name__ == "__main__":
    main()
