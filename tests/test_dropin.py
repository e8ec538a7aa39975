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


def test_runs_share_weights_and_batches_and_the_cli_writes_strict_json(tmp_path, capsys):
    a = dropin.run("regression", 0, 30, None)
    assert a == dropin.run("regression", 0, 30, None)  # AdamW twice: the same program, the same loss
    assert math.isfinite(dropin.run("digits", 0, 30, (1, 10)))
    out = tmp_path / "d"
    assert main(["check-dropin", "--programs", "regression", "--seeds", "1", "--steps", "30", "--out", str(out)]) == 0
    record = json.loads((out / "dropin.json").read_text())
    assert len(record["runs"]) == len(dropin.CADENCES) and record["runs"][0]["adamw"] == pytest.approx(a)
    assert "| all | 7 |" in capsys.readouterr().out
    assert main(["check-dropin", "--programs", "nope"]) == 2
    assert main(["check-dropin", "--policy", str(tmp_path / "missing.pt"), "--seeds", "1", "--steps", "5",
                 "--out", str(out)]) == 2  # fmt: skip
