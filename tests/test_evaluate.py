"""`lhopt eval` end to end on one small held-out task."""

import json

import pytest

from lhopt_dsl import load_spec
from lhopt_dsl.controller import DEFAULT_POLICY
from runners.cli import main

from .conftest import SPECS


def test_eval_prints_table1_and_writes_results_and_plots(tmp_path, capsys):
    spec = load_spec(SPECS / "smoke.yaml")
    with pytest.warns(UserWarning, match="tracking disabled"):
        code = main(["eval", str(SPECS / "smoke.yaml"), "--policy", str(DEFAULT_POLICY), "--tasks", "2",
                     "--out", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert ">=1x" in out and ">=2x" in out and "Overall" in out and "median speedup" in out
    results = json.loads((tmp_path / "results.json").read_text())
    overall = results["table1"]["overall"]
    assert overall["tasks"] == 2 and 0 <= overall["ge_2x"] <= overall["ge_1x"] <= 1
    assert len(results["speedups"]) == 2
    for name in ("curves.png", "hparams.png", "performance_profile.png", "speedups.png", "table1.md"):
        assert (tmp_path / name).stat().st_size > 0
    # the baseline grid is kept in an Optuna storage beside the results, for later evaluations
    assert (tmp_path / "baselines.db").exists()
    assert spec.evaluation.num_tasks == 20
