"""`lhopt eval` end to end on small held-out tasks: test scoring, the baseline cache, resuming, workers."""

import gzip
import json
import math
import shutil

import pytest

from lhopt_dsl import TABLE1_ROWS, load_spec
from lhopt_dsl.controller import DEFAULT_POLICY
from lhopt_dsl.tasks.baselines import BASELINES

from .test_imitation import KEEP_ACTIONS
from lhopt_dsl.spec.sample import default_initial_hparams
from runners.cli import main
from runners.evaluate import eval_config, summarise, task_scores

from .conftest import SPECS

SMOKE = str(SPECS / "smoke.yaml")
#: Held-out tasks small enough that a grid of 74 baseline runs takes seconds.
TINY = """
name: tiny-eval
tasks:
  families:
    - family: mlp
      dataset: digits
      hidden: {depth: 1, width: 16}
      activation: relu
      norm: none
      loss: cross_entropy
      batch_size: 32
      inner_steps: {dist: choice, values: [24, 32]}
      outer_steps: 4
    - family: nqm
      dim: 10
      spectrum_decay: 1.0
      noise_scale: 0.5
      batch_size: 4
      inner_steps: {dist: choice, values: [24, 32]}
      outer_steps: 4
"""
OFFLINE = ["--tracking-uri", "http://127.0.0.1:9"]  # unreachable: tracking degrades to local files


def lhopt(*args):
    with pytest.warns(UserWarning, match="tracking disabled"):
        return main([*args, *OFFLINE])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluation of 2 smoke tasks; its baseline cache is shared by the tests below."""
    root = tmp_path_factory.mktemp("eval")
    storage = f"sqlite:///{root / 'baselines.db'}"
    (root / "tiny.yaml").write_text(TINY)
    with pytest.warns(UserWarning, match="tracking disabled"):
        code = main(["eval", str(root / "tiny.yaml"), "--policy", str(DEFAULT_POLICY), "--tasks", "2", "--out", str(root / "a"),
                     "--storage", storage, *OFFLINE])  # fmt: skip
    assert code == 0
    return root, storage, str(root / "tiny.yaml")


def test_eval_scores_on_test_and_writes_results_and_plots(evaluated, capsys):
    root, _, _ = evaluated
    out = root / "a"
    results = json.loads((out / "results.json").read_text())
    assert results["score"] == "test" and results["manifest"]["initial"] == "default"
    overall = results["overall"]
    assert overall["tasks"] == 2 and overall["pairs"] == 70
    for key in ("pairs_ge_1x", "pairs_ge_2x", "best_ge_1x", "best_ge_2x", "speedup_median", "speedup_geomean"):
        lo, hi = overall[key]["ci"]
        assert lo <= overall[key]["value"] <= hi
    assert results["rows"] and set(results["rows"]) <= set(TABLE1_ROWS)
    assert results["other_score"]["score"] == "valid"  # both splits are reported
    assert results["cost"]["pairs_run"] == 2 * 2 * len(BASELINES) and results["cost"]["pairs_cached"] == 0
    split_checked = 0
    for i in range(2):
        record = json.loads((out / "tasks" / f"{i:05d}.json").read_text())
        assert math.isfinite(record["policy"]["test"]) and math.isfinite(record["policy"]["valid"])
        if record["family"] != "nqm":  # an NQM's loss is exact: its "splits" are one and the same
            assert record["policy"]["test"] != record["policy"]["valid"]  # two different splits
            split_checked += 1
        assert set(record["finals"]) == set(BASELINES)
        for name in BASELINES:
            for h in ("1", "2"):
                assert set(record["finals"][name][h]) == {"test", "valid"}
        assert {"schedulefree", "prodigy"} <= set(record["curves_T"])
        for name, curve in record["curves_T"].items():
            assert len(curve["steps"]) == len(curve["valid"]) == len(curve["test"])
            assert curve["test"][-1] == record["finals"][name]["1"]["test"]  # the T run's final test loss
    assert split_checked > 0, "both tasks were NQMs: nothing showed the test split is not the validation one"
    for name in ("curves.png", "hparams.png", "performance_profile.png", "speedups.png", "summary.png", "table1.md"):
        assert (out / name).stat().st_size > 0


def test_a_second_policy_reuses_every_cached_baseline_and_a_rerun_resumes(evaluated, tmp_path, capsys):
    root, storage, spec = evaluated
    # Another output directory (as for another policy): only the policy runs, every baseline is cached.
    assert lhopt("eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "2", "--out", str(tmp_path / "b"),
                 "--storage", storage) == 0  # fmt: skip
    cost = json.loads((tmp_path / "b" / "results.json").read_text())["cost"]
    assert cost["pairs_run"] == 0 and cost["pairs_cached"] == 2 * 2 * len(BASELINES)
    a = json.loads((root / "a" / "tasks" / "00001.json").read_text())
    b = json.loads((tmp_path / "b" / "tasks" / "00001.json").read_text())
    assert a["policy"]["test"] == pytest.approx(b["policy"]["test"], rel=1e-6)
    assert a["finals"] == b["finals"]
    # A killed evaluation resumes: finished tasks are read back, not run again.
    (tmp_path / "b" / "tasks" / "00001.json").unlink()
    before = json.loads((tmp_path / "b" / "tasks" / "00000.json").read_text())
    assert lhopt("eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "3", "--out", str(tmp_path / "b"),
                 "--storage", storage) == 0  # fmt: skip
    assert json.loads((tmp_path / "b" / "tasks" / "00000.json").read_text()) == before
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["overall"]["tasks"] == 3
    assert results["cost"]["pairs_run"] == 2 * len(BASELINES)  # only the new third task's grid


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_fixed_schedule_is_evaluated_in_a_policys_place(evaluated, tmp_path, capsys, workers):
    """`--schedule linear-lr0.03`: from the default lr 1e-3 the follower doubles it each decision
    until the target is near, then follows the decay; the cached baselines score it."""
    root, storage, spec = evaluated
    # A follower changes only the learning rate: the spec needs an action that keeps each other one.
    assert main(["eval", spec, "--schedule", "linear-lr0.03", "--tasks", "1", *OFFLINE]) == 2
    assert "no action that keeps weight_decay" in capsys.readouterr().err
    keep = tmp_path / "tiny_keep.yaml"
    keep.write_text(TINY + KEEP_ACTIONS)
    out = tmp_path / "s"
    assert lhopt("eval", str(keep), "--schedule", "linear-lr0.03", "--tasks", "2", "--out", str(out), "--storage",
                 storage, "--workers", workers) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["manifest"]["policy"] == "schedule:linear-lr0.03" and results["cost"]["pairs_run"] == 0
    for i in range(2):
        record = json.loads((out / "tasks" / f"{i:05d}.json").read_text())
        lrs = [h["lr"] for h in record["policy"]["hparams"]]
        assert lrs[0] == pytest.approx(2e-3) and max(lrs) <= 0.03 * 1.42
        assert all(kind == "none" for kind, _ in record["policy"]["restarts"])
    assert main(["eval", str(keep), "--schedule", "zigzag-lr0.1", "--tasks", "1", *OFFLINE]) == 2
    assert "zigzag" in capsys.readouterr().err


def test_workers_give_the_same_records(evaluated, tmp_path):
    root, storage, spec = evaluated
    assert lhopt("eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "2", "--out", str(tmp_path / "w"),
                 "--storage", storage, "--workers", "2") == 0  # fmt: skip
    for i in range(2):
        a = json.loads((root / "a" / "tasks" / f"{i:05d}.json").read_text())
        w = json.loads((tmp_path / "w" / "tasks" / f"{i:05d}.json").read_text())
        assert w["task_id"] == a["task_id"] and w["finals"] == a["finals"]
        assert w["policy"]["test"] == pytest.approx(a["policy"]["test"], rel=1e-6)


def test_an_output_directory_of_another_evaluation_is_refused(evaluated, tmp_path, capsys):
    root, storage, spec = evaluated
    shutil.copytree(root / "a", tmp_path / "a")
    code = main(["eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "2", "--out", str(tmp_path / "a"),
                 "--storage", storage, "--initial", "noisy", *OFFLINE])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "another initial" in err and "--fresh" in err
    # ... and --fresh discards it: the directory then holds this evaluation alone
    assert lhopt("eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "1", "--out", str(tmp_path / "a"),
                 "--storage", storage, "--initial", "noisy", "--fresh") == 0  # fmt: skip
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["initial"] == "noisy"
    assert [p.name for p in (tmp_path / "a" / "tasks").glob("*.json")] == ["00000.json"]


def test_a_directory_of_another_decoding_is_refused_and_a_greedy_one_resumes(evaluated, tmp_path, capsys):
    """Directories written while `lhopt eval --decode mean|sample` existed record their decoding:
    a greedy one resumes as it is, the others are never mixed with greedy acting."""
    root, storage, spec = evaluated
    for decode in ("mean", "greedy"):
        old = tmp_path / decode
        shutil.copytree(root / "a", old)
        manifest = json.loads((old / "manifest.json").read_text())
        (old / "manifest.json").write_text(json.dumps(manifest | {"decode": decode}))
    assert main(["eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "2", "--out", str(tmp_path / "mean"),
                 "--storage", storage, *OFFLINE]) == 2  # fmt: skip
    assert "another decode (decode: 'mean' -> 'greedy')" in capsys.readouterr().err
    before = [(tmp_path / "greedy" / "tasks" / f"{i:05d}.json").read_text() for i in range(2)]
    assert lhopt("eval", spec, "--policy", str(DEFAULT_POLICY), "--tasks", "2", "--out", str(tmp_path / "greedy"),
                 "--storage", storage) == 0  # fmt: skip
    assert [(tmp_path / "greedy" / "tasks" / f"{i:05d}.json").read_text() for i in range(2)] == before
    assert "decode" not in json.loads((tmp_path / "greedy" / "manifest.json").read_text())


def test_valid_scores_differ_from_test_scores(evaluated):
    root, _, _ = evaluated
    records = [json.loads((root / "a" / "tasks" / f"{i:05d}.json").read_text()) for i in range(2)]
    test, valid = summarise(records, "test", resamples=50), summarise(records, "valid", resamples=50)
    assert test["score"] == "test" and valid["score"] == "valid"
    # the summaries are computed from their own split's losses, not merely labelled
    assert test["final_losses"]["policy"] == {r["task_id"]: r["policy"]["test"] for r in records}
    assert valid["final_losses"]["policy"] == {r["task_id"]: r["policy"]["valid"] for r in records}
    assert test["final_losses"]["best AdamW"] != valid["final_losses"]["best AdamW"]
    t, v = task_scores(records[0], "test"), task_scores(records[0], "valid")
    assert t.policy == records[0]["policy"]["test"] and v.policy == records[0]["policy"]["valid"]
    assert t.at_T != v.at_T
    with pytest.raises(ValueError, match="score"):
        task_scores(records[0], "train")


def test_evaluation_tasks_start_from_default_hyperparameters_unless_noisy():
    spec = load_spec(SMOKE)
    defaults = default_initial_hparams(spec.hparams)
    assert eval_config(spec, 0).hparams == defaults == eval_config(spec, 1).hparams
    assert eval_config(spec, 0).task == eval_config(spec, 0, "noisy").task
    assert eval_config(spec, 0, "noisy").hparams != defaults
    with pytest.raises(ValueError, match="initial"):
        eval_config(spec, 0, "random")


def test_compare_pairs_two_evaluations_task_by_task(evaluated, tmp_path, capsys):
    """`lhopt compare A B`: B against A on the tasks both finished, with a JSON record; directories
    that are not comparable are refused with a reason."""
    root, storage, spec = evaluated
    keep = tmp_path / "tiny_keep.yaml"
    keep.write_text(TINY + KEEP_ACTIONS)
    assert lhopt("eval", str(keep), "--schedule", "constant-lr0.01", "--tasks", "2", "--out", str(tmp_path / "s"),
                 "--storage", storage) == 0  # fmt: skip
    capsys.readouterr()
    out_json = tmp_path / "cmp.json"
    assert main(["compare", str(root / "a"), str(tmp_path / "s"), "-o", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "vs a" in text and "sign test" in text and "acts differently" in text
    result = json.loads(out_json.read_text())
    assert result["deviations"]["s"]["Overall"]["differ"] == 2  # another schedule: different on every task
    assert result["reference"] == "a" and result["tasks"] == 2 and result["task_indices"] == [0, 1]
    h = result["comparisons"]["s"]["head_to_head"]
    a = [json.loads((root / "a" / "tasks" / f"{i:05d}.json").read_text())["policy"]["test"] for i in range(2)]
    s = [json.loads((tmp_path / "s" / "tasks" / f"{i:05d}.json").read_text())["policy"]["test"] for i in range(2)]
    assert h["wins"] == sum(y < x for x, y in zip(a, s)) and h["losses"] == sum(y > x for x, y in zip(a, s))
    assert sum(c["wins"] + c["ties"] + c["losses"] for c in result["by_row"]["s"].values()) == 2
    # An evaluation with one task more: only the common tasks are compared.
    shutil.copytree(root / "a", tmp_path / "a3")
    record = json.loads((tmp_path / "a3" / "tasks" / "00001.json").read_text())
    (tmp_path / "a3" / "tasks" / "00002.json").write_text(json.dumps(record | {"index": 2}))
    assert main(["compare", str(tmp_path / "a3"), str(tmp_path / "s"), "--markdown"]) == 0
    assert "| vs a3 |" in capsys.readouterr().out
    # Not comparable: another task under the same index, one directory, no evaluation at all.
    (tmp_path / "a3" / "tasks" / "00001.json").write_text(json.dumps(record | {"task_id": "0123456789abcdef"}))
    assert main(["compare", str(tmp_path / "a3"), str(tmp_path / "s")]) == 2
    assert "task 1 is not the same task" in capsys.readouterr().err
    (tmp_path / "a3" / "tasks" / "00001.json").write_text(json.dumps({"version": record["version"], "index": 1}))
    assert main(["compare", str(tmp_path / "a3"), str(tmp_path / "s")]) == 2
    assert "00001.json is not a task record" in capsys.readouterr().err
    assert main(["compare", str(root / "a")]) == 2
    assert "at least two" in capsys.readouterr().err
    # a published evaluation (each task record gzipped, as under results/evaluations/) reads the same
    shutil.copytree(root / "a", tmp_path / "published")
    for f in (tmp_path / "published" / "tasks").glob("*.json"):
        f.with_suffix(".json.gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    assert main(["compare", str(tmp_path / "published"), str(tmp_path / "s"), "-o", str(tmp_path / "pub.json")]) == 0
    published = json.loads((tmp_path / "pub.json").read_text())
    assert published["tasks"] == 2 and published["comparisons"]["s"]["head_to_head"] == h
    capsys.readouterr()
    # dev and test are never compared with each other
    shutil.copytree(root / "a", tmp_path / "a-test")
    manifest = json.loads((tmp_path / "a-test" / "manifest.json").read_text())
    (tmp_path / "a-test" / "manifest.json").write_text(json.dumps(manifest | {"set": "test"}))
    assert main(["compare", str(tmp_path / "a-test"), str(tmp_path / "s")]) == 2
    assert "different task sets" in capsys.readouterr().err
    assert main(["compare", str(root / "a"), str(tmp_path)]) == 2
    assert "not an evaluation directory" in capsys.readouterr().err


def test_best_of_takes_each_tasks_lowest_validation_loss_as_an_evaluation_of_its_own(evaluated, tmp_path, capsys):
    """`lhopt best-of A B --out C`: per task the record of the evaluation with the lowest final
    validation loss (not test loss), which compare and the tables then read like any evaluation."""
    root, storage, _ = evaluated
    keep = tmp_path / "tiny_keep.yaml"
    keep.write_text(TINY + KEEP_ACTIONS)
    for name in ("constant-lr0.01", "linear-lr0.1"):
        assert lhopt("eval", str(keep), "--schedule", name, "--tasks", "2", "--out", str(tmp_path / name),
                     "--storage", storage) == 0  # fmt: skip
    dirs = [root / "a", tmp_path / "constant-lr0.01", tmp_path / "linear-lr0.1"]
    # the choice on one task is rigged: the first directory's record there gets a lower validation
    # loss than every other, and a higher test loss (choosing by test would pick another)
    shutil.copytree(dirs[0], tmp_path / "rigged")
    dirs[0] = tmp_path / "rigged"
    records = {d: [json.loads((d / "tasks" / f"{i:05d}.json").read_text()) for i in range(2)] for d in dirs}
    low = min(r[1]["policy"]["valid"] for r in records.values()) / 2
    high = max(r[1]["policy"]["test"] for r in records.values()) * 2
    rigged = records[dirs[0]][1]
    rigged["policy"] |= {"valid": low, "test": high}
    (dirs[0] / "tasks" / "00001.json").write_text(json.dumps(rigged))
    capsys.readouterr()
    out = tmp_path / "best"
    assert main(["best-of", *map(str, dirs), "--out", str(out)]) == 0
    assert "chosen:" in capsys.readouterr().out
    chosen = [json.loads((out / "tasks" / f"{i:05d}.json").read_text()) for i in range(2)]
    finite = lambda x: x if x is not None and math.isfinite(x) else math.inf  # noqa: E731
    want0 = min(dirs, key=lambda d: finite(records[d][0]["policy"]["valid"]))
    assert chosen[0]["selected_from"] == want0.name and chosen[0]["policy"] == records[want0][0]["policy"]
    assert chosen[1]["selected_from"] == "rigged" and chosen[1]["policy"]["test"] == high
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(e["chosen"] for e in manifest["best_of"]["evaluations"]) == 2
    assert (out / "table1.md").exists() and json.loads((out / "results.json").read_text())["overall"]
    # by test: the rigged record is never chosen on task 1
    assert main(["best-of", *map(str, dirs), "--out", str(out), "--by", "test"]) == 0
    assert json.loads((out / "tasks" / "00001.json").read_text())["selected_from"] != "rigged"
    # it is an evaluation directory that compare reads
    assert main(["compare", str(root / "a"), str(out)]) == 0
    assert "vs a" in capsys.readouterr().out
    # refused: one directory, an output that holds an evaluation of lhopt eval
    assert main(["best-of", str(dirs[1]), "--out", str(tmp_path / "x")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["best-of", *map(str, dirs), "--out", str(dirs[2])]) == 2
    assert "holds an evaluation of lhopt eval" in capsys.readouterr().err


def test_test_set_evaluations_get_their_own_default_directory(tmp_path):
    from lhopt_dsl.agent.residual import FixedSchedule
    from lhopt_dsl.spec.schedule import Schedule
    from runners.evaluate import default_out

    spec = load_spec(SPECS / "cpu.yaml")
    schedule = FixedSchedule(Schedule.from_name("linear-lr0.03"), spec.hparams)
    dev, test = default_out(spec, schedule), default_out(spec, schedule, task_set="test")
    assert test.name == dev.name + "-test" and test.parent == dev.parent
    assert default_out(spec, DEFAULT_POLICY, task_set="test").name.endswith("-test")


def _record(row: str, test: float, lrs: list[float], restarts: list | None = None) -> dict:
    hparams = [{"lr": lr, "weight_decay": 0.01} for lr in lrs]
    return {"row": row, "outer_steps": len(lrs), "policy": {"test": test, "valid": test, "hparams": hparams,
            "restarts": restarts or [["none", -1]] * len(lrs)}}  # fmt: skip


def test_where_a_policy_acts_differently_from_its_reference_is_counted_by_row():
    """Hand-made records: the table says on which tasks the candidate left the reference's
    hyperparameters (or restarted where it did not), when, and how it fared there and elsewhere."""
    from runners.evaluate import first_difference, where_it_acts_differently

    ref = [_record("Algo+RNN", 1.0, [0.1, 0.2, 0.4, 0.8]), _record("Algo+RNN", 2.0, [0.1, 0.2]),
           _record("MNISTs+MLP", 3.0, [0.1, 0.2]), _record("MNISTs+MLP", 4.0, [0.1, 0.2])]  # fmt: skip
    cand = [_record("Algo+RNN", 0.5, [0.1, 0.2, 0.8, 0.8]),           # leaves it at decision 2 and wins
            _record("Algo+RNN", 2.0, [0.1, 0.2 * (1 + 1e-12)]),       # the same up to JSON round-off
            _record("MNISTs+MLP", 3.5, [0.1, 0.2], [["none", -1], ["restart", 0]]),  # a restart: differs, loses
            _record("MNISTs+MLP", 4.0, [0.1, 0.2])]  # fmt: skip
    assert [first_difference(r, c) for r, c in zip(ref, cand)] == [2, None, 1, None]
    table = where_it_acts_differently(ref, cand)
    assert list(table) == ["Algo+RNN", "MNISTs+MLP", "Overall"]
    rnn, mlp, overall = table["Algo+RNN"], table["MNISTs+MLP"], table["Overall"]
    assert (rnn["tasks"], rnn["differ"], rnn["first_difference_progress_median"]) == (2, 1, 0.5)
    assert (rnn["where_different"]["wins"], rnn["where_same"]["ties"]) == (1, 1)
    assert (mlp["differ"], mlp["where_different"]["losses"], mlp["where_same"]["ties"]) == (1, 1, 1)
    assert (overall["tasks"], overall["differ"]) == (4, 2)
    assert overall["where_different"] | {"sign_test_p": 0} == {"wins": 1, "ties": 0, "losses": 1, "sign_test_p": 0}
    assert overall["where_same"]["ties"] == 2
