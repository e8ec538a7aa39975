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
anything, larger than an episode's. PPO is ``lhopt train-level``'s own (:mod:`runners.level_train`: the same
network, draws and update, at its default settings), with batches of ``--batch`` episodes (256)
an update; the start is uniform over the choices. Each of 4 folds of tasks (fixed random order) is held out in turn; the greedy policy
trained on the other three is scored on it, as the forest is, and both are read as speedups over
the schedule's run (``lhopt_dsl.agent.reward.reward_speedups``: exp((reward - 1) * span), within the reward cap).
Rows: keep (1.0x), the forest (full information), PPO at each episode count (mean over
``--seeds``, [min, max]), and the per-task oracle. Sizes, learning rate and the entropy bonus are
fixed here, before any result; nothing is tuned on held-out folds.

``--observe`` adds what the schedule's run showed at 1/8 of the run (the raw policy features an
observing level reads, ``lhopt_dsl.agent.level.OBSERVED``) to each task's description, so the table
says what a level chosen there from both could earn. The rewards stay those of holding from the
start, which a level chosen at 1/8 cannot fully have; ``lhopt eval`` measures what it does have.
``--out POLICY`` then trains one network on every task (``--final-episodes``) and writes it as the
learned level of the start policy (``--policy``, the shipped default unless given), for ``lhopt
eval --policy`` and ``LHOPT(policy=...)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_value import _read, hold_matrix, relative_to_schedule, schedule_reward  # noqa: E402
from level_rule import speedup  # noqa: E402
from task_level import CHOICES, folds, held_out, training_table  # noqa: E402

from lhopt_dsl import load_spec, sample  # noqa: E402
from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES  # noqa: E402
from lhopt_dsl.agent.level import (OBSERVE_AT, OBSERVED, LearnedLevel, LevelNet, ObservedReader,  # noqa: E402
                                   finite_stats, observing_decision)  # fmt: skip
from lhopt_dsl.agent.policy import save_checkpoint  # noqa: E402
from lhopt_dsl.agent.policy_file import load_policy_file  # noqa: E402
from lhopt_dsl.spec.sample import train_seed  # noqa: E402
from runners.level_train import FACTORS, LevelSettings, draw, ppo_update  # noqa: E402


def observed(spec_path: str, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """(tasks, O) the :data:`OBSERVED` features of each measured row's schedule run at the decision an
    observing level chooses at (:func:`observing_decision` of :data:`OBSERVE_AT`), read as the level
    reads them (:class:`ObservedReader`), an unobserved one as the tasks' mean. These are the base
    schedule's own runs (``bench/held_value.py`` follows it); a deployed level reads the start
    policy's run, which is the same where that policy keeps (it does on nearly every task)."""
    reader = ObservedReader(OBSERVED, load_spec(spec_path).hparams)
    out = []
    for r in rows:
        at = observing_decision(OBSERVE_AT, int(r["outer_steps"]))
        features = r["features"].get(str(at))
        if features is None:
            raise SystemExit(f"task {r['task_id']} has no features at decision {at}: measure with bench/held_value.py's points")
        out.append(reader(np.asarray(features, dtype=np.float64))[0])
    seen = np.stack(out)
    return np.where(np.isnan(seen), finite_stats(seen)[0], seen)


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


def ppo_bandit(x: np.ndarray, rewards: np.ndarray, episodes: int, sigma: float, seed: int, *, batch: int = 256) -> LevelNet:
    """A level network trained for ``episodes`` episodes, as ``lhopt train-level`` trains it (the same
    network, draws and PPO update, :mod:`runners.level_train`), on the tasks described by ``x`` whose
    choices earn ``rewards`` (tasks x choices) plus N(0, sigma^2); standardised on ``x``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    settings = LevelSettings(episodes=batch)
    net = LevelNet(x.shape[1], rewards.shape[1], settings.hidden)
    net.standardise_by(x)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        tasks = rng.integers(len(x), size=n)
        picks, logp, values = draw(net, x[tasks], seed * 1_000_003 + done)
        r = rewards[tasks, picks] + rng.normal(0.0, sigma, n)
        ppo_update(net, opt, x[tasks], picks, logp, values, r, settings, seed * 1_000_003 + done)
        done += n
    return net


def ppo_held_out(x: np.ndarray, rewards: np.ndarray, episodes: int, sigma: float, seed: int, batch: int = 256) -> np.ndarray:
    """Per task, the reward of the greedy choice of a PPO policy trained on the other folds (the folds
    ``task_level.held_out`` scores the forest on)."""
    fold = folds(len(x))
    out = np.empty(len(x))
    for f in range(fold.max() + 1):
        test = fold == f
        net = ppo_bandit(x[~test], rewards[~test], episodes, sigma, seed * 10 + f, batch=batch)
        with torch.no_grad():
            pick = net(x[test])[0].argmax(1).numpy()
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
    ap.add_argument("--observe", action="store_true", help="add the features the run showed at 1/8 to the description")
    ap.add_argument("--out", type=Path, help="train on every task and write the start policy with this level here")
    ap.add_argument("--policy", type=Path, help="the start policy --out extends (default: the shipped one)")
    ap.add_argument("--final-episodes", type=int, default=20_000, help="episodes of the --out network")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = training_table(args.spec, args.held, args.whole, "params")
    x, rewards, spans, cap = data["x"], data["rewards"], data["spans"], data["cap"]
    if tuple(CHOICES) != FACTORS:
        raise SystemExit(f"the table's choices {CHOICES} are not train-level's {FACTORS}")
    if args.observe:
        x = np.hstack([x, observed(args.spec, data["rows"])])
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
          f"| {speedup(held_out(x, rewards), spans, cap):.3f}x |", flush=True)
    for episodes in (int(e) for e in args.episodes.split(",")):
        t0 = time.process_time()
        got = [speedup(ppo_held_out(x, rewards, episodes, sigma, s, args.batch), spans, cap) for s in range(args.seeds)]
        print(f"| PPO, greedy | {episodes:,} | {np.mean(got):.3f}x [{min(got):.3f}, {max(got):.3f}] "
              f"({time.process_time() - t0:.0f} CPU-s) |", flush=True)
    print(f"| oracle (each task's best choice) | | {speedup(rewards.max(1), spans, cap):.3f}x |")
    if args.out:
        write_policy(args, x, rewards, sigma, data["families"])


def write_policy(args: argparse.Namespace, x: np.ndarray, rewards: np.ndarray, sigma: float,
                 families: Sequence[str] | None = None) -> None:  # fmt: skip
    """One network trained on every task (as ``--episodes`` trained each fold's), as the start
    policy's level; for an observing one, also how often (per family) its choice on the training
    tasks changes when what the runs showed is replaced by its mean (what its observations decide)."""
    from lhopt_dsl.controller import DEFAULT_POLICY

    start = Path(args.policy or DEFAULT_POLICY)
    state = load_policy_file(start)
    net = ppo_bandit(x, rewards, args.final_episodes, sigma, 0, batch=args.batch).eval()
    fitted = {"by": "bench/level_bandit.py", "spec": args.spec, "tasks": len(x), "episodes": args.final_episodes,
              "sigma": sigma, "batch": args.batch, "policy": start.name}  # fmt: skip
    observe = (OBSERVED, OBSERVE_AT) if args.observe else ((), None)
    level = LearnedLevel(FACTORS, net, DESCRIPTOR_NAMES, fitted, *observe)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({**state, "level": level.to_data()}, args.out)
    load_policy_file(args.out)
    with torch.no_grad():
        picks = net(x)[0].argmax(1).numpy()
    print(f"\nwrote {args.out}: on its {len(x)} training tasks it chooses "
          + ", ".join(f"x{f:g} {np.mean(picks == k):.2f}" for k, f in enumerate(FACTORS)))
    if args.observe:
        d = len(DESCRIPTOR_NAMES)
        blind = x.copy()
        blind[:, d:] = net.mean.numpy()[d:]
        with torch.no_grad():
            changed = net(blind)[0].argmax(1).numpy() != picks
        fams = np.asarray(families if families is not None else ["all"] * len(x))
        print("its choice changes with what the runs showed replaced by its mean on "
              f"{np.mean(changed):.0%} of them (" + ", ".join(f"{f} {np.mean(changed[fams == f]):.0%}"
                                                          for f in sorted(set(fams))) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
