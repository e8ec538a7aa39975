"""The out-of-distribution suite (runners/ood_programs.py, runners/ood.py, `lhopt eval-ood`).

The programs read WikiText-2, MNIST and Fashion-MNIST from $LHOPT_DATA_DIR (set by the test
runner); every test uses tiny sizes so that it takes seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lhopt_dsl.tasks import datafiles
from lhopt_dsl.tasks.datafiles import DataNotFoundError
from runners import ood
from runners.cli import main
from runners.ood_programs import (
    PROGRAMS,
    AutoencoderSizes,
    LMSizes,
    Run,
    ViTSizes,
    adamw,
    fashion_splits,
    mnist_test_splits,
    policy,
    run_program,
    spaced_windows,
    train,
    wikitext2,
)

TINY = {
    "wikitext2_lm": LMSizes(steps=16, batch=4, context=8, vocab=200, width=16, depth=1, heads=2, eval_windows=8),
    "mnist_vit": ViTSizes(steps=16, batch=8, patch=14, width=16, depth=1, heads=2, eval_size=64),
    "fashion_autoencoder": AutoencoderSizes(steps=16, batch=8, channels=4, latent=8, eval_size=64),
}
OFFLINE = "http://127.0.0.1:9"  # nothing listens there: tracking falls back to local files quickly


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the programs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_builds_from_its_seed_and_trains_to_a_finite_test_loss(name):
    program, sizes = PROGRAMS[name], TINY[name]
    a, b, other = program.build(3, sizes, None), program.build(3, sizes, None), program.build(4, sizes, None)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k
    assert any(not torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), other.model.state_dict().values()))
    for x, y in zip(a.next_batch(), b.next_batch()):
        assert torch.equal(x, y)  # the same batch order
    for x, y in zip(a.test, other.test):
        assert torch.equal(x, y)  # the splits do not depend on the seed

    run = train(a, adamw(1e-3, "cosine"))
    assert run.steps == list(range(0, 17))  # before the first step, then every T/16 steps
    assert len(run.valid_loss) == len(run.test_loss) == 17 and len(run.train_loss) == 16
    assert run.finite and run.diverged_at is None
    assert run.final_test < run.test_loss[0]  # it learned something in 16 steps
    again = train(b, adamw(1e-3, "cosine"))
    assert again.test_loss == run.test_loss  # deterministic: runs in other processes agree


def test_twice_the_steps_measures_at_the_same_cadence():
    run = run_program("wikitext2_lm", adamw(1e-3, "linear"), sizes=TINY["wikitext2_lm"], steps=32)
    assert run.steps == list(range(0, 33))


def test_policy_runs_through_the_drop_in_and_records_its_decisions():
    run = run_program("fashion_autoencoder", policy(), sizes=TINY["fashion_autoencoder"])
    assert run.finite
    assert len(run.history) == 16  # min(32, T) decisions
    assert [h["progress"] for h in run.history] == [i / 16 for i in range(16)]
    assert all(h["lr"] > 0 for h in run.history)


def test_a_diverging_run_stops_and_is_padded_with_nan():
    run = run_program("mnist_vit", adamw(1e6, "constant"), sizes=TINY["mnist_vit"])
    assert run.diverged_at is not None and not run.finite
    assert len(run.steps) == len(run.valid_loss) == len(run.test_loss) == 17
    assert math.isnan(run.final_test)


# --- the splits -----------------------------------------------------------------------------------


def _window_hashes(windows: np.ndarray) -> np.ndarray:
    """An int64 hash per row (collisions are negligible for these sizes)."""
    weights = np.random.default_rng(0).integers(1, 2**62, size=windows.shape[1], dtype=np.int64)
    with np.errstate(over="ignore"):
        return (windows.astype(np.int64) * weights).sum(axis=1)


def test_wikitext_held_out_windows_never_appear_in_training_text():
    data = wikitext2(1000)
    length = 33
    train_windows = np.lib.stride_tricks.sliding_window_view(data.train.numpy(), length)
    seen = _window_hashes(train_windows)
    valid = spaced_windows(data.valid, length, 64).numpy()
    test = spaced_windows(data.test, length, 64).numpy()
    assert len(valid) == len(test) == 64
    assert not np.isin(_window_hashes(valid), seen).any()
    assert not np.isin(_window_hashes(test), seen).any()
    assert not np.isin(_window_hashes(test), _window_hashes(np.lib.stride_tricks.sliding_window_view(
        data.valid.numpy(), length))).any()  # fmt: skip
    assert data.vocab[:2] == ("<unk>", "<eos>") and len(data.vocab) == 1000
    assert int(data.train.max()) < 1000


def _image_hashes(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.flatten(1).numpy()}


@pytest.mark.parametrize("splits", [mnist_test_splits, fashion_splits], ids=["mnist", "fashion"])
def test_image_splits_are_disjoint(splits):
    data = splits()
    train, valid, test = (_image_hashes(s[0]) for s in data)
    assert not train & test and not train & valid and not valid & test
    if splits is mnist_test_splits:
        assert [len(s[0]) for s in data] == [8000, 1000, 1000]


def test_a_missing_data_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LHOPT_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(remote, target, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(datafiles, "_download", offline)
    with pytest.raises(DataNotFoundError, match="text/wikitext-2/valid.txt"):
        PROGRAMS["wikitext2_lm"].build(0, TINY["wikitext2_lm"], tmp_path / "data")


# --- scoring, by hand -----------------------------------------------------------------------------


def _run(steps: list[int], valid: list[float], test: list[float], history: list | None = None) -> Run:
    return Run(steps=steps, valid_loss=valid, test_loss=test, train_loss=[1.0] * (len(steps) - 1),
               history=history or [])  # fmt: skip


A, B = "adamw-constant-lr0.001", "adamw-cosine-lr0.01"
T_STEPS, LONG = [0, 8, 16], [0, 8, 16, 24, 32]


def _hand_checked_runs() -> dict[tuple[str, int], Run]:
    nan = math.nan
    return {
        (A, 1): _run(T_STEPS, [2.0, 1.5, 1.0], [2.0, 1.6, 1.2]),
        (A, 2): _run(LONG, [2.0, 1.5, 1.2, 1.0, 0.9], [2.0, 1.6, 1.4, 1.2, 1.1]),
        (B, 1): _run(T_STEPS, [2.0, 1.5, 1.1], [2.0, 1.5, 1.0]),
        (B, 2): _run(LONG, [2.0, 1.5, 1.2, 0.9, 0.7], [2.0, 1.5, 1.1, 0.9, 0.8]),
        ("schedulefree", 1): _run(T_STEPS, [2.0, 1.6, 1.3], [2.0, 1.6, 1.3]),
        ("schedulefree", 2): _run(LONG, [2.0, 1.6, nan, nan, nan], [2.0, 1.6, nan, nan, nan]),
        ("prodigy", 1): _run(T_STEPS, [2.0, 1.4, 1.0], [2.0, 1.4, 1.04]),
        ("prodigy", 2): _run(LONG, [2.0, 1.4, 1.0, 0.9, 0.85], [2.0, 1.4, 1.0, 0.95, 0.9]),
    }


def test_summary_on_a_hand_checked_case():
    history = [{"progress": 0.0, "lr": 1e-3, "restart": "none"}, {"progress": 0.5, "lr": 2e-3, "restart": "load"}]
    policy_run = _run(T_STEPS, [2.0, 1.3, 1.0], [2.0, 1.3, 1.05], history)
    s = ood.summarise("p", policy_run, _hand_checked_runs(), 16)

    # The best AdamW (lowest test loss): B at T (1.0) and at 2T (0.8); the policy's 1.05 loses to both.
    assert (s["best_baseline"], s["best_T"], s["best_baseline_2T"], s["best_2T"]) == (B, 1.0, B, 0.8)
    assert not s["beats_best_1x"] and not s["beats_best_2x"]
    # Picked by validation: A at T (valid 1.0 < 1.1; its test 1.2 is beaten), B at 2T (valid 0.7; test 0.8).
    picked = s["vs"][ood.PICKED]
    assert (s["picked_T"], picked["T"], picked["beats_1x"]) == (A, 1.2, True)
    assert (s["picked_2T"], picked["2T"], picked["beats_2x"]) == (B, 0.8, False)
    # Pairs: A is beaten at T (1.2) and at 2T (1.1), B at neither.
    assert (s["pairs"], s["pair_wins_1x"], s["pair_wins_2x"]) == (2, 1, 1)
    # Speedup: 1.05 lies above B's final 1.0, so it is read off B's T test curve (2.0, 1.5, 1.0):
    # crossed between steps 8 and 16, interpolated in log loss.
    frac = (math.log(1.5) - math.log(1.05)) / (math.log(1.5) - math.log(1.0))
    assert s["speedup"] == pytest.approx((8 + 8 * frac) / 16) and not s["capped"]
    # Tuning-free: Schedule-Free diverged over 2T (beaten there); Prodigy's 1.04 beats the policy at T.
    assert s["vs"]["schedulefree"]["beats_1x"] and s["vs"]["schedulefree"]["beats_2x"]
    assert not s["vs"]["prodigy"]["beats_1x"] and not s["vs"]["prodigy"]["beats_2x"]
    assert s["median_adamw_T"] == pytest.approx(1.1)
    assert s["nonfinite"] == {"policy": False, "baselines": ["schedulefree@2T"], "runs": 8}
    assert s["policy_restarts"] == 1

    row = ood.format_table({"p": s}).splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["p", "16", "1.05", "1 (cosine 1e-2) / 0.8 (cosine 1e-2)", "no / no"]
    assert cells[5] == f"{(8 + 8 * frac) / 16:.2f}x"
    assert cells[6:9] == ["1.2 (constant 1e-3) / 0.8 (cosine 1e-2)", "yes / no", "0.50 / 0.50"]
    assert cells[-1] == "1/8 baselines"


def test_a_policy_better_than_every_run_is_censored_and_wins():
    policy_run = _run(T_STEPS, [2.0, 1.0, 0.5], [2.0, 1.0, 0.5])
    s = ood.summarise("p", policy_run, _hand_checked_runs(), 16)
    assert s["beats_best_1x"] and s["beats_best_2x"] and s["vs"][ood.PICKED]["beats_2x"]
    assert (s["speedup"], s["capped"]) == (2.0, True)
    assert ">=2.00x" in ood.format_table({"p": s})


def test_a_diverged_policy_beats_nothing():
    nan = math.nan
    s = ood.summarise("p", _run(T_STEPS, [2.0, nan, nan], [2.0, nan, nan]), _hand_checked_runs(), 16)
    assert not s["beats_best_1x"] and not s["vs"]["schedulefree"]["beats_2x"] and s["pair_wins_2x"] == 0
    assert s["nonfinite"]["policy"] and s["speedup"] == 0.0


# --- the suite end to end -------------------------------------------------------------------------


def test_tiny_suite_writes_table_json_plot_and_metrics(tmp_path, capsys):
    out = tmp_path / "ood"
    report = ood.run_suite(["wikitext2_lm"], sizes=TINY, learning_rates=(1e-3, 1e-2), shapes=("constant", "cosine"),
                           tuning_free=("prodigy",), out=out, tracking_uri=OFFLINE, quiet=True)  # fmt: skip
    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    saved = json.loads(text)
    assert saved["settings"]["scored_on"] == "test loss" and saved["settings"]["learning_rates"] == [1e-3, 1e-2]
    assert set(report["programs"]) == {"wikitext2_lm"}
    record = saved["programs"]["wikitext2_lm"]
    assert set(record) == {"sizes", "seconds", "summary", "policy", "baselines"}
    grid = {f"adamw-{shape}-lr{lr}" for shape in ("constant", "cosine") for lr in ("0.001", "0.01")}
    assert set(record["baselines"]) == grid | {"prodigy", ood.REFERENCE_SCHEDULE}
    assert all(set(r) == {"1T", "2T"} for r in record["baselines"].values())
    assert len(record["policy"]["history"]) == 16

    # The summary agrees with the stored curves: the best AdamW is the lowest final test loss at T.
    finals = {n: r["1T"]["test_loss"][-1] for n, r in record["baselines"].items() if n.startswith("adamw-")}
    summary = record["summary"]
    assert summary["best_baseline"] == min(finals, key=finals.get)
    assert summary["best_T"] == finals[summary["best_baseline"]]
    assert summary["beats_best_1x"] == (record["policy"]["test_loss"][-1] <= summary["best_T"])

    # The fixed schedule's row: CIAO following it through LHOPT, compared with the policy as the others are.
    schedule = record["baselines"][ood.REFERENCE_SCHEDULE]["1T"]
    assert summary["vs"][ood.REFERENCE_SCHEDULE]["T"] == schedule["test_loss"][-1]
    assert {h["restart"] for h in schedule["history"]} == {"none"} and len(schedule["history"]) == 16
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == ood.TABLE_HEADER and table[2].startswith("| wikitext2_lm | 16 |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[-3] == f"{schedule['test_loss'][-1]:.4g}"
    assert cells[-2] == ("yes" if record["policy"]["test_loss"][-1] <= schedule["test_loss"][-1] else "no")
    assert (out / "wikitext2_lm.png").stat().st_size > 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("ood/wikitext2_lm/speedup" in row for row in logged)
    assert any("ood/wikitext2_lm/hparams/lr" in row for row in logged)


def _counting_runs(monkeypatch) -> list:
    ran = []
    real = ood.run_job

    def counted(job):
        ran.append((job.optimizer, job.horizon))
        return real(job)

    monkeypatch.setattr(ood, "run_job", counted)
    return ran


CACHED = dict(sizes=TINY, learning_rates=(1e-3,), shapes=("constant",), tuning_free=(), schedule=None, tracking_uri=OFFLINE,
              quiet=True)  # fmt: skip
ONE_PAIR = [("adamw-constant-lr0.001", 1), ("adamw-constant-lr0.001", 2), ("policy", 1)]


def test_baseline_cache_reruns_only_the_policy(tmp_path, monkeypatch):
    """A second suite with the same baseline cache runs the policy alone and reports the same
    baselines; an entry that cannot be read is run again and stored anew."""
    from runners.baselines import BaselineStore

    ran = _counting_runs(monkeypatch)
    url = f"sqlite:///{tmp_path / 'cache' / 'baselines.db'}"
    store = BaselineStore(url)
    job = ood.Job("wikitext2_lm", "adamw-constant-lr0.001", 1, TINY["wikitext2_lm"], 0, None, None)
    store.put(ood.scope_of(job), ("adamw-constant-lr0.001", 1), 1.0, {"run": "not a run"})  # a broken entry first
    args = dict(CACHED, storage=url)
    first = ood.run_suite(["wikitext2_lm"], out=tmp_path / "a", **args)
    assert sorted(ran) == ONE_PAIR
    entries = store.entries(ood.scope_of(job))
    assert set(entries) == {("adamw-constant-lr0.001", 1), ("adamw-constant-lr0.001", 2)}  # never the policy
    assert len(store.entries(ood.scope_of(job), ood._usable)) == 2  # the broken one was run again
    ran.clear()
    second = ood.run_suite(["wikitext2_lm"], out=tmp_path / "b", **args)
    assert ran == [("policy", 1)]

    def curves(report):  # what the runs measured (their wall times differ)
        runs = report["programs"]["wikitext2_lm"]["baselines"]["adamw-constant-lr0.001"]
        return {h: {k: v for k, v in r.items() if k != "seconds"} for h, r in runs.items()}

    assert curves(first) == curves(second)
    ran.clear()
    ood.run_suite(["wikitext2_lm"], out=tmp_path / "c", **{**args, "seed": 1})  # another seed: other runs
    assert len(ran) == 3


def test_an_old_cache_directory_is_read_and_copied_into_the_store(tmp_path, monkeypatch, capsys):
    """eval-ood's per-run JSON files of earlier versions keep working: a run found there is served
    and copied into the baseline cache, with a message saying so."""
    import hashlib
    from dataclasses import asdict

    from runners.jobs import write_json

    ran = _counting_runs(monkeypatch)
    sizes = TINY["wikitext2_lm"]
    old = tmp_path / "ood-baselines"
    old.mkdir()
    made = {}
    for h in (1, 2):  # files named and keyed as the old BaselineCache wrote them
        run = run_program("wikitext2_lm", adamw(1e-3, "constant"), sizes=sizes, steps=h * sizes.steps)
        key = json.dumps([1, "wikitext2_lm", asdict(sizes), "adamw-constant-lr0.001", h, 0, None, torch.__version__])
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        write_json(old / f"wikitext2_lm-adamw-constant-lr0.001-{h}T-{digest}.json", asdict(run), indent=None)
        made[h] = run
    url = f"sqlite:///{tmp_path / 'baselines.db'}"
    report = ood.run_suite(["wikitext2_lm"], out=tmp_path / "a", storage=url, old_cache=old, **CACHED)
    assert ran == [("policy", 1)]  # the baselines came from the old files
    err = capsys.readouterr().err
    assert "2 baseline run(s) copied from the old cache directory" in err and url in err
    stored = report["programs"]["wikitext2_lm"]["baselines"]["adamw-constant-lr0.001"]
    assert stored["1T"]["test_loss"] == made[1].test_loss
    for path in old.iterdir():
        path.unlink()  # now in the store: the directory is not needed any more
    ran.clear()
    ood.run_suite(["wikitext2_lm"], out=tmp_path / "b", storage=url, old_cache=old, **CACHED)
    assert ran == [("policy", 1)] and "copied" not in capsys.readouterr().err


def test_export_and_import_carry_eval_ood_runs_with_the_task_grids(tmp_path, monkeypatch, capsys):
    from runners.baselines import BaselineStore

    ran = _counting_runs(monkeypatch)
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b' / 'b.db'}"
    first = ood.run_suite(["wikitext2_lm"], out=tmp_path / "o1", storage=a, **CACHED)
    out = tmp_path / "export"
    assert main(["baselines", "export", str(out), "--storage", a]) == 0
    (path,) = out.iterdir()
    assert path.name.startswith("ood-v1-wikitext2_lm-") and "1 task grids written" in capsys.readouterr().out
    blob = path.read_bytes()
    assert main(["baselines", "export", str(out), "--storage", a]) == 0 and path.read_bytes() == blob
    assert main(["baselines", "import", str(out), "--storage", b]) == 0
    assert "2 runs added to 1 task grids" in capsys.readouterr().out
    assert main(["baselines", "import", str(out), "--storage", b]) == 0
    assert "0 runs added" in capsys.readouterr().out  # importing again adds nothing
    assert BaselineStore(b).scopes() == BaselineStore(a).scopes()
    ran.clear()
    second = ood.run_suite(["wikitext2_lm"], out=tmp_path / "o2", storage=b, **CACHED)
    assert ran == [("policy", 1)]  # served from the imported runs
    one = first["programs"]["wikitext2_lm"]["baselines"]
    two = second["programs"]["wikitext2_lm"]["baselines"]
    assert one == two


def test_cli_help_and_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["eval-ood", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--policy", "--programs", "--steps-scale", "--out", "--tracking-uri", "--threads", "--seed"):
        assert flag in text
    assert main(["eval-ood", "--programs", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "known: wikitext2_lm" in capsys.readouterr().err
    assert main(["eval-ood", "--policy", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "absent.pt" in capsys.readouterr().err
