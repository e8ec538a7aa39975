"""Does a policy hurt a user who drops it in? (``lhopt check-dropin``)

    lhopt check-dropin [--policy P] [--seeds 5] [--steps 200] [--out runs/dropin]

Small real training programs, trained the way a user first tries ``LHOPT``: a plain loop,
``LHOPT(model.parameters(), total_steps=T, model=model)``, and losses reported with each of the
reporting cadences of :data:`CADENCES` (training loss every step, every k steps or never;
validation loss every N steps or never). The same program with the same initial weights and batch
order trained by ``torch.optim.AdamW`` at its defaults is the bar: a user who drops the policy in
should never end worse than that. Scored on a test split no run reports.

The table gives, per cadence, the median and worst ratio of the policy's final test loss to
AdamW's, how many runs end more than 10% worse than AdamW (*hurt*) and how many end non-finite,
and beside it the fixed schedule every policy has to beat: CIAO with its learning rate on
:data:`REFERENCE_SCHEDULE` through the same ``LHOPT`` (it observes nothing), as a row of its own
and as the policy's median ratio to it and the count of runs that end exactly where it does (a
policy whose runs all end there acts as the schedule, whatever it was told).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lhopt_dsl import LHOPT
from lhopt_dsl.spec.schedule import REFERENCE_SCHEDULE, Schedule

from .jobs import write_json
from .ood_programs import report_losses

#: (training loss every k steps, validation loss every n steps); None: never reported.
CADENCES: tuple[tuple[int | None, int | None], ...] = (
    (1, None), (1, 20), (20, 20), (20, None), (None, 20), (None, None), (7, 50),
)  # fmt: skip


def cadence_label(cadence: tuple[int | None, int | None]) -> str:
    """How tables name a reporting cadence: 'train 1, valid never'."""
    return f"train {cadence[0] or 'never'}, valid {cadence[1] or 'never'}"


HURT = 1.1  # a run is hurt when its final test loss exceeds AdamW's by more than this factor


@dataclass
class Program:
    """A model and its data: ``batch_at(step)`` gives the step's training batch."""

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]
    valid: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    batch: int

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train
        start = (step * self.batch) % (len(x) - self.batch + 1)
        return x[start : start + self.batch], y[start : start + self.batch]

    @torch.no_grad()
    def score(self, split: tuple[torch.Tensor, torch.Tensor]) -> float:
        self.model.eval()
        value = float(self.loss(self.model(split[0]), split[1]))
        self.model.train()
        return value


def regression(seed: int) -> Program:
    """A 2-layer tanh MLP fitting a noisy sine of a random projection (8 inputs)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=g)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 8, generator=g)
        return x, torch.sin(x @ w) + 0.1 * torch.randn(n, 1, generator=g)

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    return Program(model, nn.functional.mse_loss, split(512), split(256), split(256), 32)


def digits(seed: int) -> Program:
    """A 2-layer ReLU MLP classifying scikit-learn's 8x8 digits (1,257 / 270 / 270)."""
    from lhopt_dsl.tasks.datasets import image_data

    data = image_data("digits")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.train.x), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return Program(model, nn.functional.cross_entropy, (data.train.x[order], data.train.y[order]),
                   (data.valid.x, data.valid.y), (data.test.x, data.test.y), 32)  # fmt: skip


PROGRAMS: dict[str, Callable[[int], Program]] = {"regression": regression, "digits": digits}


class Outcome(NamedTuple):
    """One run's final test loss (NaN: a non-finite training loss ended it) and LHOPT's learning rate
    at each decision (empty for AdamW)."""

    loss: float
    lrs: tuple[float, ...] = ()


def run(program: str, seed: int, steps: int, cadence: tuple[int | None, int | None] | None,
        policy: str | Path | Schedule | None = None) -> Outcome:  # fmt: skip
    """One run: ``cadence`` None trains with AdamW at its defaults, otherwise with LHOPT (driven by
    ``policy``: a policy file, a Schedule, None for the shipped default) reporting losses at that
    cadence. A non-finite training loss ends the run (loss NaN)."""
    p = PROGRAMS[program](seed)
    if cadence is None:
        opt: torch.optim.Optimizer = torch.optim.AdamW(p.model.parameters())
    else:
        opt = LHOPT(p.model.parameters(), policy, total_steps=steps, model=p.model)
    train_every, valid_every = cadence or (None, None)
    for step in range(steps):
        x, y = p.batch_at(step)
        loss = p.loss(p.model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return Outcome(math.nan, _lrs(opt))
        opt.zero_grad()
        loss.backward()
        report_losses(opt, step, train_loss=value, valid_loss=lambda: p.score(p.valid), train_every=train_every,
                      valid_every=valid_every)  # fmt: skip
        opt.step()
    return Outcome(p.score(p.test), _lrs(opt))


def _lrs(opt: torch.optim.Optimizer) -> tuple[float, ...]:
    """LHOPT's learning rate at each decision (the guard's rows, between decisions, left out)."""
    if not isinstance(opt, LHOPT):
        return ()
    return tuple(float(h["lr"]) for h in opt.history if h.get("restart") != "guard")


def check(policy: str | Path | None = None, *, programs: Sequence[str] = tuple(PROGRAMS), seeds: int = 5,
          steps: int = 200, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Every program x seed with AdamW and with the policy at every cadence; the record and its summary."""
    jobs = [(prog, s) for prog in programs for s in range(seeds)]
    runs: list[dict[str, Any]] = []
    reference = Schedule.from_name(REFERENCE_SCHEDULE)
    for prog, s in tqdm(jobs, desc="check-dropin", unit="program", disable=quiet):
        adamw = run(prog, s, steps, None).loss
        schedule = run(prog, s, steps, (None, None), reference)  # observes nothing: one run serves every cadence
        for cadence in CADENCES:
            mine = run(prog, s, steps, cadence, policy)
            runs.append({"program": prog, "seed": s, "train_every": cadence[0], "valid_every": cadence[1],
                         "adamw": adamw, "schedule": schedule.loss, "lhopt": mine.loss,
                         "lr_level": lr_level(mine.lrs, schedule.lrs)})  # fmt: skip
    return {"policy": str(policy) if policy else "default (shipped with lhopt)", "steps": steps, "seeds": seeds,
            "schedule": f"CIAO + {REFERENCE_SCHEDULE}", "runs": runs, "summary": summarise(runs)}  # fmt: skip


def lr_level(lrs: Sequence[float], base: Sequence[float]) -> float | None:
    """How far a run's learning rate stood from the reference schedule's run: the geometric mean of
    their ratio over the decisions of the run's second half (where a held level has been reached;
    decisions where the schedule's is 0 are left out). None without both paths."""
    pairs = [(a, b) for a, b in list(zip(lrs, base))[len(base) // 2:] if a > 0 and b > 0]
    return float(np.exp(np.mean([math.log(a / b) for a, b in pairs]))) if pairs else None


LEVELS_HEADING = f"learning-rate level held against {REFERENCE_SCHEDULE}'s, second half of the run:"


def levels_section(runs: Sequence[dict[str, Any]]) -> str:
    """The heading and :func:`levels_table` of ``runs`` ("" for a record from before levels were kept)."""
    return f"{LEVELS_HEADING}\n\n{levels_table(runs)}" if any("lr_level" in r for r in runs) else ""


def levels_table(runs: Sequence[dict[str, Any]]) -> str:
    """Per program and seed (rows) and cadence (columns), the learning-rate level each run held against
    the reference schedule's (:func:`lr_level`, x1: it followed the schedule's learning rate): what the
    policy did differently with what it was told."""
    cadences = [c for c in CADENCES if any((r["train_every"], r["valid_every"]) == c for r in runs)]
    cells = {(r["program"], r["seed"], (r["train_every"], r["valid_every"])): r.get("lr_level") for r in runs}
    keys = sorted({(r["program"], r["seed"]) for r in runs}, key=lambda k: (k[0], int(k[1])))
    lines = ["| program | seed | " + " | ".join(cadence_label(c) for c in cadences) + " |",
             "|---|---:|" + "---:|" * len(cadences)]  # fmt: skip
    for prog, seed in keys:
        vals = [cells.get((prog, seed, c)) for c in cadences]
        lines.append(f"| {prog} | {seed} | " + " | ".join("-" if v is None else f"x{v:.3g}" for v in vals) + " |")
    return "\n".join(lines)


def _ratio(loss: float, bar: float) -> float:
    """A final loss over the bar's (inf when the loss is non-finite; a bar of 0 is met only by 0). A
    non-finite bar (the run to compare with diverged) is beaten by any finite loss (0) and tied by a
    non-finite one (1): a diverged AdamW run does not count against the policy."""
    if not math.isfinite(bar):
        return 0.0 if math.isfinite(loss) else 1.0
    if not math.isfinite(loss):
        return math.inf
    return loss / bar if bar > 0 else (1.0 if loss <= bar else math.inf)


def _row(name: str, losses: np.ndarray, adamw: np.ndarray, schedule: np.ndarray | None) -> dict[str, Any]:
    ratios = np.asarray([_ratio(a, b) for a, b in zip(losses, adamw)])
    row = {"cadence": name, "runs": len(losses), "median_ratio": float(np.median(ratios)),
           "worst_ratio": float(np.max(ratios)), "better": int(np.sum(ratios <= 1.0)),
           "hurt": int(np.sum(ratios > HURT)), "non_finite": int(np.sum(~np.isfinite(losses)))}  # fmt: skip
    if schedule is not None and np.isfinite(schedule).any():  # records from before the schedule row have none
        row["median_vs_schedule"] = float(np.median([_ratio(a, b) for a, b in zip(losses, schedule)]))
        row["same_as_schedule"] = int(np.sum(losses == schedule))
    return row


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cadence and one for all runs (the policy's), then the reference schedule's row
    (one run per program and seed) when the runs have it."""
    rows = []
    for cadence in [*CADENCES, None]:
        mine = [r for r in runs if cadence is None or (r["train_every"], r["valid_every"]) == cadence]
        if not mine:
            continue
        name = "all" if cadence is None else cadence_label(cadence)
        col = {k: np.asarray([r.get(k, math.nan) for r in mine], dtype=np.float64) for k in ("lhopt", "adamw", "schedule")}
        rows.append(_row(name, col["lhopt"], col["adamw"], col["schedule"]))
    once = {(r["program"], r["seed"]): r for r in runs if "schedule" in r}
    if once:
        col = {k: np.asarray([r[k] for r in once.values()], dtype=np.float64) for k in ("schedule", "adamw")}
        rows.append(_row(f"CIAO + {REFERENCE_SCHEDULE} (observes nothing)", col["schedule"], col["adamw"], None))
    return rows


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = ["| reporting | runs | median LHOPT / AdamW | worst | better | hurt (> 1.1x) | non-finite | "
             f"median LHOPT / {REFERENCE_SCHEDULE} | ends where {REFERENCE_SCHEDULE} does |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in summary:
        vs = f"{row['median_vs_schedule']:.3g} | {row['same_as_schedule']}" if "median_vs_schedule" in row else "- | -"
        lines.append(f"| {row['cadence']} | {row['runs']} | {row['median_ratio']:.3g} | {row['worst_ratio']:.3g} "
                     f"| {row['better']} | {row['hurt']} | {row['non_finite']} | {vs} |")  # fmt: skip
    return "\n".join(lines)


def write(record: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dropin.json", record)  # strict JSON: NaN is null
    levels = levels_section(record["runs"])
    (out / "dropin.md").write_text(format_table(record["summary"]) + "\n" + (f"\n{levels}\n" if levels else ""))
