"""lhopt check-dropin: a policy dropped into small programs, every reporting cadence, against AdamW."""

import json
import math

import pytest

from runners import dropin
from runners.cli import main


def test_summary_counts_by_hand():
    runs = [
        {"program": "p", "seed": 0, "train_every": 1, "valid_every": None, "adamw": 1.0, "lhopt": 0.5},
        {"program": "p", "seed": 1, "train_every": 1, "valid_every": None, "adamw": 1.0, "lhopt": 1.05},
        {"program": "p", "seed": 2, "train_every": 1, "valid_every": None, "adamw": 1.0, "lhopt": 2.0},
        {"program": "p", "seed": 0, "train_every": None, "valid_every": None, "adamw": 2.0, "lhopt": math.nan},
    ]
    rows = {r["cadence"]: r for r in dropin.summarise(runs)}
    every = rows["train 1, valid never"]
    assert (every["runs"], every["better"], every["hurt"], every["non_finite"]) == (3, 1, 1, 0)
    assert every["median_ratio"] == pytest.approx(1.05) and every["worst_ratio"] == pytest.approx(2.0)
    never = rows["train never, valid never"]
    assert (never["hurt"], never["non_finite"], never["worst_ratio"]) == (1, 1, math.inf)
    assert rows["all"]["runs"] == 4 and "train 20, valid 20" not in rows
    assert "median_vs_schedule" not in every and len(rows) == 3  # a record from before the schedule row


def test_a_diverged_bar_does_not_count_against_the_policy():
    """AdamW (or the schedule) diverging is not the policy's harm: a finite loss beats it, a diverged
    one ties it, and the non-finite column still counts the policy's own."""
    def r(seed, lhopt, adamw):
        return {"program": "p", "seed": seed, "train_every": 1, "valid_every": None, "adamw": adamw,
                "schedule": math.nan, "lhopt": lhopt}  # fmt: skip

    row = {x["cadence"]: x for x in dropin.summarise([r(0, 0.5, math.nan), r(1, math.nan, math.nan), r(2, 2.0, 1.0)])}
    every = row["train 1, valid never"]
    assert (every["better"], every["hurt"], every["non_finite"], every["worst_ratio"]) == (2, 1, 1, 2.0)


def test_the_schedule_row_and_the_policy_against_the_schedule_by_hand():
    def r(seed, every, lhopt, schedule):
        return {"program": "p", "seed": seed, "train_every": every, "valid_every": None, "adamw": 1.0,
                "schedule": schedule, "lhopt": lhopt}  # fmt: skip

    runs = [r(0, 1, 0.5, 0.5), r(1, 1, 0.9, 0.6), r(0, 20, 0.5, 0.5), r(1, 20, 1.2, 0.6)]
    rows = {row["cadence"]: row for row in dropin.summarise(runs)}
    assert rows["train 1, valid never"]["same_as_schedule"] == 1
    assert rows["train 1, valid never"]["median_vs_schedule"] == pytest.approx((1.0 + 1.5) / 2)
    assert rows["all"]["same_as_schedule"] == 2 and rows["all"]["median_vs_schedule"] == pytest.approx(1.25)
    schedule = rows[f"CIAO + {dropin.REFERENCE_SCHEDULE} (observes nothing)"]
    assert schedule["runs"] == 2  # once per program and seed, not per cadence
    assert schedule["median_ratio"] == pytest.approx(0.55) and schedule["better"] == 2
    table = dropin.format_table(dropin.summarise(runs))
    assert "| 1.25 | 1 |" in table and "(observes nothing) | 2 | 0.55 | 0.6 | 2 | 0 | 0 | - | - |" in table


def test_runs_share_weights_and_batches_and_the_cli_writes_strict_json(tmp_path, capsys):
    a = dropin.run("regression", 0, 30, None)
    assert a == dropin.run("regression", 0, 30, None) and a.lrs == ()  # AdamW twice: the same program, the same loss
    digits = dropin.run("digits", 0, 30, (1, 10))
    assert math.isfinite(digits.loss) and len(digits.lrs) > 1 and all(lr > 0 for lr in digits.lrs)
    out = tmp_path / "d"
    assert main(["check-dropin", "--programs", "regression", "--seeds", "1", "--steps", "30", "--out", str(out)]) == 0
    record = json.loads((out / "dropin.json").read_text())
    assert len(record["runs"]) == len(dropin.CADENCES) and record["runs"][0]["adamw"] == pytest.approx(a.loss)
    from lhopt_dsl.spec.schedule import Schedule

    assert record["runs"][0]["schedule"] == dropin.run("regression", 0, 30, (None, None), Schedule.from_name("linear-lr0.03")).loss
    printed = capsys.readouterr().out
    assert "| all | 7 |" in printed and "| regression | 0 | x" in printed  # the level table, a row per program and seed
    assert all(r["lr_level"] is not None and r["lr_level"] > 0 for r in record["runs"])
    assert main(["check-dropin", "--programs", "nope"]) == 2
    assert main(["check-dropin", "--policy", str(tmp_path / "missing.pt"), "--seeds", "1", "--steps", "5",
                 "--out", str(out)]) == 2  # fmt: skip


def test_lhopt_driven_by_a_schedule_moves_only_the_learning_rate_towards_it():
    """The reference row's optimizer: ``LHOPT(params, Schedule)`` is CIAO whose learning rate
    follows the schedule (as near as the actions reach) and nothing else moves."""
    import torch

    from lhopt_dsl import LHOPT
    from lhopt_dsl.spec.schedule import Schedule

    model = torch.nn.Linear(4, 1)
    schedule = Schedule.from_name("linear-lr0.03")
    opt = LHOPT(model.parameters(), schedule, total_steps=64, outer_steps=8)
    for _ in range(64):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lrs = [h["lr"] for h in opt.history]
    assert len(lrs) == 8 and lrs[:4] == sorted(lrs[:4]) and lrs[4:] == sorted(lrs[4:], reverse=True)
    for h in opt.history[4:]:  # reached: within one action of the linear decay from 0.03
        assert 0.8 < h["lr"] / (0.03 * (1 - h["progress"])) < 1.25
    others = [{k: v for k, v in h.items() if k not in ("lr", "progress")} for h in opt.history]
    assert all(o == others[0] for o in others) and others[0]["restart"] == "none"


def test_the_learning_rates_of_a_run_are_its_decisions_not_the_guards_rows():
    import torch

    from lhopt_dsl import LHOPT

    opt = LHOPT(torch.nn.Linear(2, 1).parameters(), total_steps=8, outer_steps=4)
    opt.history[:] = [{"lr": 1.0, "restart": "none"}, {"lr": 0.1, "restart": "guard"}, {"lr": 2.0, "restart": "none"}]
    assert dropin._lrs(opt) == (1.0, 2.0)
    assert dropin._lrs(torch.optim.AdamW(torch.nn.Linear(2, 1).parameters())) == ()


def test_the_level_a_run_held_is_its_second_halfs_learning_rate_over_the_schedules():
    base = [1.0, 2.0, 4.0, 4.0, 2.0, 0.0]
    assert dropin.lr_level([1.0, 2.0, 8.0, 2.0, 1.0, 0.0], base) == pytest.approx(0.5)  # decisions 3-4; 0 left out
    assert dropin.lr_level([1.0, 2.0, 4.0, 8.0, 8.0, 0.0], base) == pytest.approx(math.sqrt(2.0 * 4.0))
    assert dropin.lr_level([], base) is None
    runs = [{"program": "regression", "seed": s, "train_every": c[0], "valid_every": c[1], "lr_level": lv}
            for s in (1, 0) for c, lv in zip(dropin.CADENCES, (0.5, 1.0, None, 2.0, 1.0, 1.0, 0.25))]  # fmt: skip
    table = dropin.levels_table(runs).splitlines()
    assert table[0].startswith("| program | seed | train 1, valid never |") and len(table) == 4
    assert table[2] == "| regression | 0 | x0.5 | x1 | - | x2 | x1 | x1 | x0.25 |"
