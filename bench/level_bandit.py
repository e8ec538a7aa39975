"""Could policy-gradient meta-training learn the level? PPO on the measured level bandit, before any run.

    python bench/level_bandit.py \\
        --held results/branch_value/cpu-residual-sharp-held.jsonl \\
        --whole results/branch_value/cpu-residual-sharp-whole.jsonl results/branch_value/cpu-residual-sharp-whole-2.jsonl \\
        --rerun results/branch_value/cpu-residual-sharp-held-rerun1.jsonl [--episodes 2000,5000,10000,20000,40000]

``bench/task_level.py`` found that the learning-rate level a task wants (a whole-run factor of the
residual base, x1/8 ... x8, or keep) can be read from what any optimizer sees of its model before the
first step (``lhopt_dsl.agent.describe``): a forest fitted on every measured outcome of 1,216 training
tasks earns about 1.10x over the schedule's run on held-out ones. That is *full-information*
learning: every choice's outcome of every task was measured. PPO sees one choice per episode, with
the noise of that episode's seed. This bench asks, without running a single inner task, how many
episodes PPO would need to learn the same rule, so that a meta-training run is sized before it starts.

The simulator is the measured table. An episode draws a training task (of the folds trained on),
the policy (an MLP on the standardised description, softmax over the 7 choices) samples a choice,
and the reward is the table's reward of that choice relative to the schedule's run plus Gaussian
noise of the size measured between two seeds of the same tasks (``--rerun``: the 216 held tasks run
again under other initial weights, data order and generated data; per (task, choice) the two
rewards differ by sqrt(2) sigma). On top of the table's own seed, so the bench's noise is, if
anything, larger than an episode's. PPO: batches of ``--batch`` episodes (256), a learned critic (the
same MLP's value head) as baseline, advantages normalised per batch, clipped ratio 0.2,
``--epochs`` passes of minibatches of 64, an entropy bonus, Adam; the start is uniform over the
choices. Each of 4 folds of tasks (fixed random order) is held out in turn; the greedy policy
trained on the other three is scored on it, as the forest is, and both are read as speedups over
the schedule's run (``held_value.speedups``: exp((reward - 1) * span), within the reward cap).
Rows: keep (1.0x), the forest (full information), PPO at each episode count (mean over
``--seeds``, [min, max]), and the per-task oracle. Sizes, learning rate and the entropy bonus are
fixed here, before any result; nothing is tuned on held-out folds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_value import _read, hold_matrix, relative_to_schedule, schedule_reward, speedups  # noqa: E402
from task_level import CHOICES, held_out, training_table  # noqa: E402

from lhopt_dsl import load_spec, sample  # noqa: E402
from lhopt_dsl.spec.sample import train_seed  # noqa: E402


def seed_noise(spec_path: str, first_path: str, rerun_path: str) -> tuple[float, int]:
    """Sigma of one episode's reward around its task's and choice's own, from tasks measured under two
    seeds: the standard deviation of (first - rerun) over (task, factor), divided by sqrt(2)."""
    spec = load_spec(spec_path)
    first = {(r["iteration"], r["slot"]): r for r in _read(first_path, spec_path, 0, None)}
    again = {(r["iteration"], r["slot"]): r for r in _read(rerun_path, spec_path, 1, None)}
    keys = sorted(set(first) & set(again))
    if not keys:
        raise SystemExit(f"{rerun_path} and {first_path} share no task")

    def table(rows: dict[tuple[int, int], dict[str, Any]]) -> np.ndarray:
        cfgs = [sample(spec, train_seed(spec.seed, *k)) for k in keys]
        keeps = [schedule_reward(spec, c, rows[k]["schedule_valid_curve"])[1] for c, k in zip(cfgs, keys)]
        return hold_matrix(relative_to_schedule([rows[k] for k in keys], keeps), "start")

    diff = table(first) - table(again)
    return float(np.std(diff) / np.sqrt(2.0)), len(keys)


class LevelNet(nn.Module):
    """Logits over the choices and a value, from a standardised description."""

    def __init__(self, inputs: int, choices: int, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.logits, self.value = nn.Linear(hidden, choices), nn.Linear(hidden, 1)
        nn.init.zeros_(self.logits.weight)  # the start is uniform over the choices
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.logits(h), self.value(h).squeeze(-1)


def ppo_bandit(x: np.ndarray, rewards: np.ndarray, episodes: int, sigma: float, seed: int, *, batch: int = 256,
               epochs: int = 4, lr: float = 3e-3, entropy: float = 0.01, clip: float = 0.2) -> LevelNet:  # fmt: skip
    """A policy trained by PPO for ``episodes`` episodes on the tasks ``x`` (standardised) whose choices
    earn ``rewards`` (tasks x choices) plus N(0, sigma^2)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = LevelNet(x.shape[1], rewards.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt = torch.as_tensor(x, dtype=torch.float32)
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        tasks = rng.integers(len(x), size=n)
        with torch.no_grad():
            logits, values = net(xt[tasks])
            dist = torch.distributions.Categorical(logits=logits)
            acts = dist.sample()
            old_logp = dist.log_prob(acts)
        r = torch.as_tensor(rewards[tasks, acts.numpy()] + rng.normal(0.0, sigma, n), dtype=torch.float32)
        adv = r - values
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        for _ in range(epochs):
            for idx in torch.randperm(n).split(64):
                logits, v = net(xt[tasks[idx.numpy()]])
                dist = torch.distributions.Categorical(logits=logits)
                ratio = torch.exp(dist.log_prob(acts[idx]) - old_logp[idx])
                pg = -torch.min(ratio * adv[idx], torch.clamp(ratio, 1 - clip, 1 + clip) * adv[idx]).mean()
                loss = pg + 0.5 * ((v - r[idx]) ** 2).mean() - entropy * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        done += n
    return net


def folds(n: int, k: int = 4, seed: int = 0) -> np.ndarray:
    """The fold of each task, as ``task_level.held_out`` draws them (the same random order)."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=int)
    fold[order] = np.arange(n) * k // n
    return fold


def geomean(rewards: np.ndarray, spans: np.ndarray, cap: float) -> float:
    return float(np.exp(np.mean(np.log(speedups(rewards, spans, cap)))))


def ppo_held_out(x: np.ndarray, rewards: np.ndarray, episodes: int, sigma: float, seed: int, batch: int = 256) -> np.ndarray:
    """Per task, the reward of the greedy choice of a PPO policy trained on the other folds."""
    fold = folds(len(x))
    out = np.empty(len(x))
    for f in range(4):
        test = fold == f
        mean, scale = x[~test].mean(0), x[~test].std(0)
        scale[scale == 0] = 1.0
        z = lambda a: np.clip((a - mean) / scale, -5, 5)  # noqa: E731
        net = ppo_bandit(z(x[~test]), rewards[~test], episodes, sigma, seed * 10 + f, batch=batch)
        with torch.no_grad():
            pick = net(torch.as_tensor(z(x[test]), dtype=torch.float32))[0].argmax(1).numpy()
        out[test] = rewards[test][np.arange(test.sum()), pick]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="task_specs/cpu_residual_sharp.yaml")
    ap.add_argument("--held", nargs="*", default=[])
    ap.add_argument("--whole", nargs="*", default=[])
    ap.add_argument("--rerun", required=True, help="held_value.py --rerun 1 results of the --held tasks")
    ap.add_argument("--episodes", default="2000,5000,10000,20000,40000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="episodes per PPO update")
    ap.add_argument("--noise", type=float, default=None, help="sigma of an episode's noise (default: measured)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = training_table(args.spec, args.held, args.whole, "params")
    x, rewards, spans, cap = data["x"], data["rewards"], data["spans"], data["cap"]
    if args.noise is None:
        sigma, pairs = seed_noise(args.spec, args.held[0], args.rerun)
        print(f"seed noise: sigma {sigma:.4f} of a reward, from {pairs} tasks run under two seeds")
    else:
        sigma = args.noise
    spread = np.std(rewards[:, 1:] - rewards[:, 1:].mean(1, keepdims=True))
    print(f"{len(x)} training tasks, {rewards.shape[1]} choices ({', '.join(f'x{c:g}' for c in CHOICES)}); the "
          f"choices' rewards spread {spread:.4f} around each task's mean; speedups over the schedule's run, "
          "geometric mean, on held-out folds\n")
    print(f"| rule | episodes | speedup |\n|---|---:|---:|\n| keep | | 1.000x |")
    print(f"| forest (every outcome of the training folds) | {len(x) * 3 // 4 * (rewards.shape[1] - 1):,} outcomes "
          f"| {geomean(held_out(x, rewards), spans, cap):.3f}x |", flush=True)
    for episodes in (int(e) for e in args.episodes.split(",")):
        t0 = time.process_time()
        got = [geomean(ppo_held_out(x, rewards, episodes, sigma, s, args.batch), spans, cap) for s in range(args.seeds)]
        print(f"| PPO, greedy | {episodes:,} | {np.mean(got):.3f}x [{min(got):.3f}, {max(got):.3f}] "
              f"({time.process_time() - t0:.0f} CPU-s) |", flush=True)
    print(f"| oracle (each task's best choice) | | {geomean(rewards.max(1), spans, cap):.3f}x |")


if __name__ == "__main__":
    main()
