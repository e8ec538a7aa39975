"""Where an observing level's choices come from, on programs outside its training tasks.

    python bench/level_attribution.py --policy results/level/level-observe-0be94dd1.pt \\
        --episodes results/ppo/level-observe/episodes.jsonl [--seeds 5] [--steps 200] [--out runs/attribution]

``lhopt check-dropin`` and ``lhopt eval-ood`` say whether a policy with an observing level helps or
hurts on ordinary PyTorch programs; they report the learning-rate level a run held against the
schedule's, not who chose it. A run's level is the product of two things: the moves the residual
network made before the level's decision (the *offset in force*), and the level's own factor, which
multiplies that offset. This bench trains every ``check-dropin`` program (each seed, with the
training loss every step and no validation loss, and with both every 20 steps) and every
``eval-ood`` program (seed 0, ``--ood-scale`` of its size) through ``LHOPT``, as a user runs them,
and records at the level's decision:

- the offset in force and the level's factor (and its probability, and keep's);
- which of the level's inputs lie outside the central 99% of its training episodes' inputs
  (``--episodes``: the ``episodes.jsonl`` of ``lhopt train-level``): is the program out of the
  level's training support, or inside it and chosen for;
- which inputs, each set alone to the training tasks' mean (what the level reads where nothing was
  observed), change its choice: what the choice rests on.

It changes nothing it measures: the runs are the programs' own (the same seeds, losses and
learning rates as ``check-dropin`` and ``eval-ood``); the decision is read where the level makes it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lhopt_dsl.agent.level import CautiousLevel, HoldLevel, LearnedLevel  # noqa: E402
from lhopt_dsl.agent.residual import clamp_offset  # noqa: E402

CADENCES = ((1, None), (20, 20))  # check-dropin's: the training loss every step and nothing else; both every 20


@dataclass(frozen=True)
class Decision:
    """An observing level's decision in one run: at decision ``t``, with the learning-rate ``offset``
    in force (the residual network's moves so far), from ``inputs`` (the level's network inputs)."""

    level: LearnedLevel | CautiousLevel
    t: int
    offset: float
    inputs: np.ndarray
    chosen: float  # the factor the run used (keep where its description was missing)


@contextmanager
def recording() -> Iterator[list[Decision]]:
    """Every observing level's decision made inside the block, one per run, in order."""
    seen: list[Decision] = []
    original = HoldLevel._chosen

    def chosen(self: HoldLevel, carry: Any, features: np.ndarray) -> Sequence[float]:
        chosen = original(self, carry, features)
        if self.reader is not None and isinstance(self.rule, (LearnedLevel, CautiousLevel)):
            rows = np.asarray(features).reshape(len(carry.offset), -1)
            x = self.rule.inputs(carry.describe, self.reader(rows))
            seen.extend(Decision(self.rule, carry.t, float(m), x[b].copy(), float(chosen[b]))
                        for b, m in enumerate(carry.offset))  # fmt: skip
        return chosen

    with mock.patch.object(HoldLevel, "_chosen", chosen):
        yield seen


def envelope(episodes: Path | str, width: int, quantile: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """The central ``1 - 2 quantile`` of each of the ``width`` level inputs over a ``train-level``
    run's episodes: the description, then the raw observations where recorded (``observed``; an
    unobserved entry, null, is left out rather than read as the mean the network was given)."""
    rows = []
    with open(episodes) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                x, seen = row["input"], row.get("observed")
                if seen is not None and len(seen) < len(x):
                    x = x[: len(x) - len(seen)] + seen
                rows.append([np.nan if v is None else v for v in x])
    x = np.array(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{episodes}: episodes with {x.shape[-1]} inputs, but the level reads {width}; "
                         "give the episodes of the run that trained this level")  # fmt: skip
    x = np.where(np.isfinite(x), x, np.nan)
    return np.nanquantile(x, quantile, 0), np.nanquantile(x, 1 - quantile, 0)


def explain(level: LearnedLevel | CautiousLevel, x: np.ndarray,
            bounds: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:  # fmt: skip
    """What ``level`` chooses from inputs ``x`` (D + O) and what that rests on. For a learned level
    ``p_factor`` and ``p_keep`` are its network's probabilities; for a cautious one, the chosen (or
    likeliest) factor's win probability and the threshold it must reach."""
    names = list(level.descriptor) + list(level.observe)
    x = np.asarray(x, dtype=np.float64).reshape(len(names))
    if isinstance(level, CautiousLevel):
        mean, factors = level.mean, list(level.factors)

        def pick_of(rows: np.ndarray) -> np.ndarray:  # one-hot choices; the win probability beside
            chosen = level.choose_observed(rows[:, : len(level.descriptor)].tolist(), rows[:, len(level.descriptor):])
            return np.eye(len(factors))[[factors.index(f) for f in chosen]]

        p_win = level.win_probability(x[None])[0] if np.isfinite(x).all() else np.full(len(level.acting), np.nan)
        p_factor, p_keep = float(p_win.max()), float(level.threshold)  # NaN: no description, it keeps
    else:
        mean, factors = level.net.mean.numpy(), list(level.factors)

        def pick_of(rows: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(level.net(np.nan_to_num(rows))[0], 1).numpy()

    probs = pick_of(x[None])[0]
    pick = int(np.argmax(probs))
    if not isinstance(level, CautiousLevel):
        p_factor, p_keep = float(probs[pick]), float(probs[factors.index(1.0)])
    swapped = np.repeat(x[None], len(names), 0)
    swapped[np.arange(len(names)), np.arange(len(names))] = mean
    alone = pick_of(swapped).argmax(1)
    out: dict[str, Any] = {
        "factor": float(factors[pick]), "p_factor": p_factor, "p_keep": p_keep,
        "flips_at_mean": {names[i]: float(factors[k]) for i, k in enumerate(alone) if k != pick},
    }
    if bounds is not None:
        lo, hi = bounds
        out["outside_training"] = {names[i]: [float(x[i]), float(lo[i]), float(hi[i])] for i in range(len(names))
                                   if np.isfinite(x[i]) and not lo[i] <= x[i] <= hi[i]}  # fmt: skip
    return out


def measure(policy: str, seeds: int, steps: int, ood_scale: float, data_dir: str | None,
            bounds: tuple[np.ndarray, np.ndarray] | None, quiet: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """One row per run: the program, its seed and cadence, its final test loss, and the decision."""
    from runners import dropin, ood
    from tqdm import tqdm

    cases: list[tuple[str, int, Any]] = [(p, s, c) for p in dropin.PROGRAMS for s in range(seeds) for c in CADENCES]
    cases += [(p, 0, "ood") for p in ood.PROGRAMS]
    rows = []
    for program, seed, cadence in tqdm(cases, desc="runs", unit="run", disable=quiet):
        with recording() as seen:
            if cadence == "ood":
                sizes = ood.PROGRAMS[program].scaled(ood_scale)
                loss = ood.run_job(ood.Job(program, "policy", 1, sizes, seed, policy, data_dir)).final_test
                how = "eval-ood's"
            else:
                loss = dropin.run(program, seed, steps, cadence, policy).loss
                how = dropin.cadence_label(cadence)
        if len(seen) > 1:
            raise RuntimeError(f"{program} seed {seed}: {len(seen)} level decisions in one run")
        if not seen:  # the run ended (a non-finite loss) before the level chose
            rows.append({"program": program, "seed": seed, "reporting": how, "test_loss": loss, "decision": None})
            continue
        d = seen[0]
        why = explain(d.level, d.inputs, bounds)
        rows.append({"program": program, "seed": seed, "reporting": how, "test_loss": loss, "decision": d.t,
                     "offset": d.offset, **why, "factor": d.chosen, "held": clamp_offset(d.offset * d.chosen)})  # fmt: skip
    return rows


def _factor(x: float) -> str:
    return f"x{x:.3g}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| program | seed | reporting | offset in force | level's factor (p; keep's p) | held | test loss "
             "| inputs outside training's 99% | inputs that alone change it |",
             "|---|---:|---|---:|---|---:|---:|---|---|"]  # fmt: skip
    for r in rows:
        if r["decision"] is None:
            lines.append(f"| {r['program']} | {r['seed']} | {r['reporting']} | ended before the level chose | | | "
                         f"{r['test_loss']:.4g} | | |")  # fmt: skip
            continue
        outside = ", ".join(r.get("outside_training", {})) or "none"
        flips = ", ".join(f"{n} ({_factor(f)})" for n, f in r["flips_at_mean"].items()) or "none"
        lines.append(f"| {r['program']} | {r['seed']} | {r['reporting']} | {_factor(r['offset'])} "
                     f"| {_factor(r['factor'])} ({r['p_factor']:.2f}; {r['p_keep']:.2f}) | {_factor(r['held'])} "
                     f"| {r['test_loss']:.4g} | {outside} | {flips} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="a policy file whose level observes (lhopt train-level --observe)")
    ap.add_argument("--episodes", help="the train-level run's episodes.jsonl, for the training envelope")
    ap.add_argument("--seeds", type=int, default=5, help="check-dropin seeds per program")
    ap.add_argument("--steps", type=int, default=200, help="check-dropin steps per run")
    ap.add_argument("--ood-scale", type=float, default=1.0, help="eval-ood sizes: T scaled by this")
    ap.add_argument("--data-dir", default=None, help="datasets (default: LHOPT_DATA_DIR)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write attribution.json and attribution.md here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lhopt_dsl.controller import load_policy

    policy, _ = load_policy(args.policy)
    level = getattr(getattr(policy, "inner", None), "rule", None)
    if not (isinstance(level, (LearnedLevel, CautiousLevel)) and level.observe):
        raise SystemExit(f"{args.policy}: its level does not observe; this bench reads an observing level's decision")
    bounds = envelope(args.episodes, len(level.descriptor) + len(level.observe)) if args.episodes else None
    rows = measure(args.policy, args.seeds, args.steps, args.ood_scale, args.data_dir, bounds)
    text = table(rows)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
        (args.out / "attribution.json").write_text(json.dumps({"policy": args.policy, "rows": clean}, indent=1) + "\n")
        (args.out / "attribution.md").write_text(text + "\n")
        print(f"wrote {args.out}/attribution.json and attribution.md")


if __name__ == "__main__":
    main()
