"""PPO on a toy problem, checkpoint/resume, MLflow tracking (local store, unreachable server, UI)."""

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from lhopt_dsl import load_spec
from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.policy import ActorCritic, PolicyShape, load_checkpoint
from lhopt_dsl.agent.rollout import Episode
from lhopt_dsl.controller import load_policy
from runners.meta_train import Settings, policy_shape, ppo_update, train
from runners.tracking import Tracker, default_uri, load_policy_uri, start_ui

from .conftest import SPECS


def toy_episode(model: ActorCritic, gen: torch.Generator, length: int = 3) -> Episode:
    """Observations are random; reward 1 when the first action dimension picks 2, else 0."""
    carry = model.start([Run({"lr": 1e-3}, length)])
    rows = {k: [] for k in ("p", "v", "a", "lp", "r")}
    for _ in range(length):
        p = torch.randn(model.shape.policy_size, generator=gen).numpy()
        v = torch.randn(model.shape.value_size, generator=gen).numpy()
        step, carry = model.act(carry, p[None], [gen], False)
        a = step.actions[0]
        for key, x in (("p", step.seen[0]), ("v", v), ("a", a), ("lp", step.logprobs[0]), ("r", float(a[0] == 2))):
            rows[key].append(x)
    stack = lambda k: np.stack(rows[k])  # noqa: E731
    values = model.values(stack("p"), stack("v"))
    return Episode(stack("p"), stack("v"), stack("p"), stack("v"), stack("a"), np.asarray(rows["lp"]),
                   values, np.asarray(rows["r"]), [], [], [])  # fmt: skip


def test_ppo_learns_the_best_action_of_a_toy_problem():
    torch.manual_seed(0)
    model = ActorCritic(PolicyShape(policy_size=4, value_size=2, nvec=(4, 3), hidden_size=16))
    mt = load_spec(SPECS / "smoke.yaml").meta_train.model_copy(update={"learning_rate": 3e-3, "minibatch_episodes": 4})
    opt = torch.optim.Adam(model.parameters(), lr=mt.learning_rate)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def success() -> float:
        return float(np.mean([toy_episode(model, gen).rewards.mean() for _ in range(30)]))

    before = success()
    for _ in range(40):
        stats = ppo_update(model, opt, [toy_episode(model, gen) for _ in range(8)], mt, rng)
    after = success()
    assert before < 0.4 and after > 0.9, (before, after)
    assert stats["ppo/approx_kl"] >= 0 and 0 <= stats["ppo/clip_frac"] <= 1


def test_advantages_are_normalised_over_the_batch_or_over_each_tasks_rollouts():
    """Hand-computed: two tasks whose advantages differ in scale by 1000. Over the batch the small
    task's advantages are all but zero; over each task both tasks' spread is 1."""
    from runners.meta_train import normalise_advantages

    small = [np.array([1e-3, -1e-3]), np.array([3e-3, -3e-3])]
    large = [np.array([1.0, -1.0]), np.array([3.0, -3.0])]
    episodes = []
    for task, advs in (("a", small), ("b", large)):
        for adv in advs:
            e = Episode(*[np.zeros((2, 1))] * 5, np.zeros(2), np.zeros(2), np.zeros(2), [], [], [], task_id=task)
            e.advantages = adv
            episodes.append(e)
    batch = normalise_advantages(episodes, "batch")
    task = normalise_advantages(episodes, "task")
    everything = np.concatenate(small + large)
    for e in episodes:
        np.testing.assert_allclose(batch[id(e)], (e.advantages - everything.mean()) / (everything.std() + 1e-8), rtol=1e-6)
    assert max(abs(batch[id(e)]).max() for e in episodes[:2]) < 2e-3
    scale = np.sqrt(np.mean(np.concatenate(small) ** 2))
    np.testing.assert_allclose(task[id(episodes[1])], small[1] / scale, rtol=1e-4)
    np.testing.assert_allclose(task[id(episodes[3])], large[1] / np.sqrt(5.0), rtol=1e-6)
    with pytest.raises(ValueError, match="advantage_norm"):
        normalise_advantages(episodes, "episode")


def test_ppo_with_advantages_normalised_per_task_learns_the_toy_problem():
    torch.manual_seed(0)
    model = ActorCritic(PolicyShape(policy_size=4, value_size=2, nvec=(4, 3), hidden_size=16))
    mt = load_spec(SPECS / "smoke.yaml").meta_train.model_copy(
        update={"learning_rate": 3e-3, "minibatch_episodes": 4, "advantage_norm": "task"})
    opt = torch.optim.Adam(model.parameters(), lr=mt.learning_rate)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def batch() -> list[Episode]:
        episodes = [toy_episode(model, gen) for _ in range(8)]
        for k, e in enumerate(episodes):  # two tasks of four rollouts; the second's rewards 1000x smaller
            e.task_id = "ab"[k // 4]
            e.rewards = e.rewards * (1e-3 if k >= 4 else 1.0)
        return episodes

    before = float(np.mean([toy_episode(model, gen).rewards.mean() for _ in range(30)]))
    for _ in range(40):
        ppo_update(model, opt, batch(), mt, rng)
    after = float(np.mean([toy_episode(model, gen).rewards.mean() for _ in range(30)]))
    assert before < 0.4 and after > 0.9, (before, after)


def test_policy_checkpoint_round_trip():
    spec = load_spec(SPECS / "smoke.yaml")
    model = ActorCritic(policy_shape(spec))
    model.policy_norm(np.random.default_rng(0).normal(size=(5, model.shape.policy_size)))
    model.value_norm(np.random.default_rng(2).normal(size=(5, model.shape.value_size)))
    again = ActorCritic.from_checkpoint(model.to_checkpoint())
    x = np.random.default_rng(1).normal(size=model.shape.policy_size)
    v = np.random.default_rng(3).normal(size=model.shape.value_size)
    assert np.array_equal(model.policy_norm(x, update=False), again.policy_norm(x, update=False))
    assert np.array_equal(model.value_norm(v, update=False), again.value_norm(v, update=False))
    assert model.state_dict().keys() == again.state_dict().keys()  # zip below would stop at the shorter one
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="policy does not match"):
        again.check_compatible(model.shape.policy_size + 1, model.shape.value_size, model.shape.nvec)


def _tiny_spec(tmp_path: Path):
    spec = load_spec(SPECS / "smoke.yaml")
    mt = spec.meta_train.model_copy(update={"tasks_per_iteration": 2, "rollouts_per_task": 2, "hidden_size": 16})
    tasks = spec.tasks.model_copy(update={"families": [f for f in spec.tasks.families if f.family in ("nqm", "rnn")]})
    return spec.model_copy(update={"meta_train": mt, "tasks": tasks})


def test_adamw_space_meta_training_saves_a_policy_that_records_its_space(tmp_path):
    from lhopt_dsl.controller import LHOPT

    spec = load_spec(SPECS / "smoke_adamw.yaml")
    mt = spec.meta_train.model_copy(update={"tasks_per_iteration": 2, "rollouts_per_task": 2, "hidden_size": 16})
    tasks = spec.tasks.model_copy(update={"families": [f for f in spec.tasks.families if f.family in ("nqm", "mlp")]})
    spec = spec.model_copy(update={"meta_train": mt, "tasks": tasks})
    with pytest.warns(UserWarning, match="tracking disabled"):
        path = train(spec, Settings(iterations=1, workers=0, tracking_uri="http://127.0.0.1:9", run_dir=tmp_path,
                                    quiet=True))  # fmt: skip
    policy, space = load_policy(path)
    assert space.space == "adamw" and load_checkpoint(path)["spec"]["hparams"]["space"] == "adamw"
    assert list(policy.shape.nvec) == [7, 2, 2, 2, 1]
    net = torch.nn.Linear(3, 1)
    assert LHOPT(net.parameters(), policy=path, total_steps=8).param_groups[0]["denominator"] == "adam"


WALL_CLOCK = {"speed/episodes_per_s", "speed/inner_steps_per_s", "speed/rollout_share", "speed/cpu_seconds",
              "speed/cpu_hours"}  # differ run to run (timings)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    spec = _tiny_spec(tmp_path)
    offline = "http://127.0.0.1:9"  # nothing listens there: tracking is skipped quickly
    with pytest.warns(UserWarning, match="tracking disabled"):
        train(spec, Settings(iterations=3, workers=0, tracking_uri=offline, run_dir=tmp_path / "a", quiet=True))
    with pytest.warns(UserWarning):
        train(spec, Settings(iterations=2, workers=0, tracking_uri=offline, run_dir=tmp_path / "b", quiet=True))
    with pytest.warns(UserWarning):
        train(spec, Settings(iterations=3, workers=0, resume=True, tracking_uri=offline, run_dir=tmp_path / "b",
                             quiet=True))  # fmt: skip
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt", "training checkpoint")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt", "training checkpoint")
    assert a["iteration"] == b["iteration"] == 3
    assert a["policy"]["weights"].keys() == b["policy"]["weights"].keys()
    for k, v in a["policy"]["weights"].items():
        assert torch.equal(v, b["policy"]["weights"][k]), k
    # Every metric of every iteration is the same, exactly, except the wall-clock ones listed here
    # (they are in the history, so the list cannot go stale unnoticed); NaN equals NaN.
    assert len(a["history"]) == len(b["history"]) == 3
    for x, y in zip(a["history"], b["history"]):
        assert x.keys() == y.keys() and WALL_CLOCK <= x.keys()
        for key in x.keys() - WALL_CLOCK:
            assert x[key] == y[key] or (math.isnan(x[key]) and math.isnan(y[key])), (x["iteration"], key)
    # the unreachable server cost nothing: metrics are in the local file
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "ppo/approx_kl" in json.loads(lines[0])


def test_resuming_under_a_changed_spec_is_refused_unless_asked_for(tmp_path, capsys):
    from runners.meta_train import spec_changes

    spec = _tiny_spec(tmp_path)
    offline = "http://127.0.0.1:9"
    with pytest.warns(UserWarning):
        train(spec, Settings(iterations=1, workers=0, tracking_uri=offline, run_dir=tmp_path / "r", quiet=True))
    saved = load_checkpoint(tmp_path / "r" / "checkpoint.pt", "training checkpoint")["spec"]
    mt = spec.meta_train
    longer = spec.model_copy(update={"meta_train": mt.model_copy(update={"iterations": 9, "workers": 2})})
    assert spec_changes(saved, spec) == [] and spec_changes(saved, longer) == []  # how long, on how many processes
    changed = spec.model_copy(update={"meta_train": mt.model_copy(update={"learning_rate": 1e-2, "reward_cap": 2.0})})
    assert spec_changes(saved, changed) == ["meta_train.learning_rate", "meta_train.reward_cap"]
    old = {**saved, "meta_train": {k: v for k, v in saved["meta_train"].items() if k != "reward_cap"}}
    assert spec_changes(old, spec) == []  # a field added since compares as its default
    settings = dict(iterations=2, workers=0, resume=True, tracking_uri=offline, run_dir=tmp_path / "r", quiet=True)
    with pytest.raises(ValueError, match="learning_rate, meta_train.reward_cap differ.*--allow-spec-change"):
        train(changed, Settings(**settings))
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt", "training checkpoint")["iteration"] == 1  # untouched
    with pytest.warns(UserWarning):
        train(changed, Settings(**settings, allow_spec_change=True))
    assert "under a changed spec (meta_train.learning_rate" in capsys.readouterr().out
    resumed = load_checkpoint(tmp_path / "r" / "checkpoint.pt", "training checkpoint")
    assert resumed["iteration"] == 2
    # the changed learning rate is the one the resumed iterations stepped with, not the checkpoint's
    assert [g["lr"] for g in resumed["optimizer"]["param_groups"]] == [1e-2] * len(resumed["optimizer"]["param_groups"])


def test_tracking_logs_to_sqlite_and_the_run_is_found_with_mlflows_client(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    spec = _tiny_spec(tmp_path)
    spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"registered_model": "smoke-policy",
                                                                                "experiment": "test-exp"})})  # fmt: skip
    spec_file = tmp_path / "tiny_smoke.yaml"  # the spec as run, from a file, so that the run archives it
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert load_spec(spec_file) == spec
    uri = default_uri(tmp_path)
    path = train(spec, Settings(iterations=2, workers=0, tracking_uri=uri, quiet=True), spec_path=str(spec_file))
    assert path.exists()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("test-exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("ppo/approx_kl", "ppo/clip_frac", "ppo/entropy", "ppo/explained_variance", "reward/mean",
                "reward/vs_initial_hparams", "speed/episodes_per_s", "speed/inner_steps_per_s"):  # fmt: skip
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    assert run.data.params["meta_train.rollouts_per_task"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec", "plots"} <= artifacts, artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "spec")] == ["spec/tiny_smoke.yaml"]
    archived = Path(client.download_artifacts(run.info.run_id, "spec/tiny_smoke.yaml", str(tmp_path / "dl")))
    assert archived.read_bytes() == spec_file.read_bytes()
    versions = client.search_model_versions("name='smoke-policy'")
    assert len(versions) == 1
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/smoke-policy/1")
    feats = np.zeros((3, policy_shape(spec).policy_size), dtype=np.float32)
    assert model.predict(feats).shape == (3, len(policy_shape(spec).nvec))
    # what the CLI does with `--policy models:/...`: download the checkpoint and load it as data
    policy, _ = load_policy(load_policy_uri("models:/smoke-policy/1", uri))
    trained, _ = load_policy(path)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, policy.state_dict()[k]), k


def test_tracker_survives_a_server_that_disappears(tmp_path):
    tracker = Tracker(default_uri(tmp_path), "e", "r", tmp_path / "local")
    assert tracker.enabled
    from mlflow.tracking import MlflowClient

    tracker.client = MlflowClient(tracking_uri="http://127.0.0.1:9")  # the server goes away mid-run
    with pytest.warns(UserWarning, match="tracking disabled"):
        tracker.log_metrics({"a": 1.0}, step=1)
    assert not tracker.enabled
    tracker.log_metrics({"a": 2.0}, step=2)  # warns once, keeps writing locally
    assert len((tmp_path / "local" / "metrics.jsonl").read_text().splitlines()) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_run_over_its_rest_api(tmp_path):
    uri = default_uri(tmp_path)
    tracker = Tracker(uri, "ui-exp", "ui-run", tmp_path / "local")
    tracker.log_metrics({"reward/mean": 0.5}, step=1)
    tracker.end()
    port = _free_port()
    proc = start_ui(uri, str(tmp_path / "artifacts"), port=port)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("the MLflow UI did not come up")
                time.sleep(0.5)
        with urllib.request.urlopen(base + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-exp") as r:
            exp = json.load(r)["experiment"]
        body = json.dumps({"experiment_ids": [exp["experiment_id"]]}).encode()
        req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req) as r:
            runs = json.load(r)["runs"]
        assert len(runs) == 1 and runs[0]["info"]["run_name"] == "ui-run"
        assert runs[0]["data"]["metrics"][0]["key"] == "reward/mean"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


TINY = """\
name: tiny
seed: 3
tasks:
  families:
    - family: nqm
      dim: 10
      spectrum_decay: 1.0
      noise_scale: 0.5
      batch_size: 4
      inner_steps: 30
      outer_steps: {dist: choice, values: [3, 5]}
meta_train:
  iterations: 200
  workers: 0
  tasks_per_iteration: 1
  rollouts_per_task: 2
  hidden_size: 8
"""


def test_kill_9_loses_at_most_the_iteration_in_progress(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "runners.cli", "train", str(spec), "--run-dir", str(run),
           "--tracking-uri", "http://127.0.0.1:9"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoint.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.exists() and load_checkpoint(ckpt, "training checkpoint")["iteration"] >= 3:
                break
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL, mid-iteration
        proc.wait()
    done = load_checkpoint(ckpt, "training checkpoint")["iteration"]  # the checkpoint is whole, never half-written
    assert 3 <= done < 200
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= done
    out = subprocess.run(cmd + ["--resume", "--iterations", str(done + 2)], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    state = load_checkpoint(ckpt, "training checkpoint")
    assert state["iteration"] == done + 2 and len(state["history"]) == done + 2


def test_worker_processes_give_the_same_run_as_in_process(tmp_path):
    spec = _tiny_spec(tmp_path)
    offline = "http://127.0.0.1:9"
    with pytest.warns(UserWarning):
        train(spec, Settings(iterations=2, workers=0, tracking_uri=offline, run_dir=tmp_path / "w0", quiet=True))
    with pytest.warns(UserWarning):
        train(spec, Settings(iterations=2, workers=2, tracking_uri=offline, run_dir=tmp_path / "w2", quiet=True))
    a = load_checkpoint(tmp_path / "w0" / "checkpoint.pt", "training checkpoint")
    b = load_checkpoint(tmp_path / "w2" / "checkpoint.pt", "training checkpoint")
    assert a["policy"]["weights"].keys() == b["policy"]["weights"].keys()
    for k, v in a["policy"]["weights"].items():
        assert torch.equal(v, b["policy"]["weights"][k]), k


@pytest.mark.parametrize("flag,share", [("--no-population", 0.0), (None, None), ("--torch-compile", None)])
def test_train_cli_population_switch(tmp_path, flag, share):
    """Populations are the default where tasks allow it; --no-population runs members one at a time."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "runners.cli", "train", str(spec), "--run-dir", str(run), "--iterations", "2",
           "--tracking-uri", "http://127.0.0.1:9"] + ([flag] if flag else [])  # fmt: skip
    out = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    history = load_checkpoint(run / "checkpoint.pt", "training checkpoint")["history"]
    shares = [h["speed/population_share"] for h in history]
    assert len(shares) == 2  # all() below holds for an empty list
    if share is not None:
        assert shares == [share, share]
    else:
        assert all(s > 0 for s in shares)


def test_keep_bias_starts_the_policy_near_keeping_the_hyperparameters(tmp_path):
    """With meta_train.keep_bias, a new policy picks, in every dimension that has one, the action
    that keeps its hyperparameter (and no restart) with the probability the bias gives."""
    from lhopt_dsl.agent.actions import ActionSpace

    smoke = load_spec(SPECS / "smoke.yaml")
    spec = smoke.model_copy(update={"meta_train": smoke.meta_train.model_copy(update={"keep_bias": 2.0})})
    actions = ActionSpace(spec.hparams)
    keep, exact = actions.identity(), actions.keeps()
    assert exact[0] and exact[-1] and not exact[1]  # lr has x1.0, restarts "none"; weight decay only x0.5, x2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = train(spec, Settings(iterations=0, workers=0, tracking_uri=uri, run_dir=tmp_path, quiet=True))
    model = ActorCritic.from_checkpoint(load_checkpoint(path)["policy"])
    with torch.no_grad():
        logits, _ = model.actor_forward(torch.zeros(1, 1, model.shape.policy_size))
    start = 0
    for d, n in enumerate(model.shape.nvec):
        probs = torch.softmax(logits[0, 0, start : start + n], -1)
        want = math.exp(2.0) / (math.exp(2.0) + n - 1) if exact[d] else 1.0 / n
        assert float(probs[keep[d]]) == pytest.approx(want, abs=0.02), d
        start += n


def _tracker_process(uri: str, experiment: str, name: str, local: str) -> None:
    tracker = Tracker(uri, experiment, name, Path(local))
    assert tracker.enabled
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.end()


def test_tracking_on_postgresql_and_concurrent_runs_on_a_new_experiment(tmp_path, postgres_url):
    """MLflow with a PostgreSQL backend store: meta-training logs its run there, and runs that start
    at once on a new experiment all land in it (the loser of the race to create it finds it)."""
    import multiprocessing as mp

    from mlflow.tracking import MlflowClient

    spec = _tiny_spec(tmp_path)
    spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"experiment": "pg-exp"})})
    train(spec, Settings(iterations=1, workers=0, tracking_uri=postgres_url, run_dir=tmp_path / "run", quiet=True))
    client = MlflowClient(tracking_uri=postgres_url)
    (run,) = client.search_runs([client.get_experiment_by_name("pg-exp").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "reward/mean")) == 1

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_tracker_process, args=(postgres_url, "new-exp", f"r{i}", str(tmp_path / f"l{i}")))
             for i in range(3)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    exp = client.get_experiment_by_name("new-exp")
    assert sorted(r.info.run_name for r in client.search_runs([exp.experiment_id])) == ["r0", "r1", "r2"]
    default = client.get_experiment_by_name("Default")
    assert not client.search_runs([default.experiment_id])  # none strayed into "Default"


def sigterm_after(cmd: list[str], ready: Any, what: str) -> str:
    """Start the CLI command ``cmd``, wait (up to 240 s) until ``ready()`` (``what`` names it in the
    failure), SIGTERM it, and check that it exits with 143 (128 + SIGTERM, as `lhopt ui` does) leaving
    none of its worker processes (at least two) alive; returns its stderr."""
    import os
    import signal

    from .test_distributed import _descendants

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, cwd=SPECS.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ready():
        assert time.monotonic() < deadline and proc.poll() is None, f"no {what} finished"
        time.sleep(0.5)
    workers = _descendants(proc.pid)
    assert len(workers) >= 2  # the pool's processes
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM == 143, err[-2000:]
    time.sleep(1.0)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "(Z)" not in _state(pid)]
    assert not alive, f"worker processes outlived the run: {alive}"
    return err


def test_sigterm_stops_training_with_its_worker_pool_and_keeps_the_checkpoint(tmp_path):
    """A killed run (kill, a scheduler's time limit) takes its worker processes down with it and
    loses at most the iteration in progress; --resume continues."""
    spec = _tiny_spec(tmp_path)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "runners.cli", "train", str(spec_file), "--iterations", "200", "--workers", "2",
           "--run-dir", str(run_dir), "--tracking-uri", "http://127.0.0.1:9"]  # fmt: skip
    err = sigterm_after(cmd, (run_dir / "checkpoint.pt").exists, "iteration")
    assert "--resume" in err, err[-2000:]
    done = load_checkpoint(run_dir / "checkpoint.pt", "training checkpoint")["iteration"]
    assert 1 <= done < 200


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0].join("()")
    except OSError:
        return "(gone)"


def test_the_dev_learning_curve_is_measured_at_the_start_every_n_iterations_and_at_the_end(tmp_path):
    """meta_train.dev_every: the policy after 0, 2 and 3 iterations (the last), then after a resume
    to 4, each on the same dev tasks against the cached grid; no point is measured twice, and
    lhopt curves plots it."""
    from runners.cli import main as cli

    spec = load_spec(SPECS / "smoke.yaml").model_copy(deep=True)
    nqm = [f for f in spec.tasks.families if f.family == "nqm"]
    tasks = spec.tasks.model_copy(update={"families": nqm})
    mt = spec.meta_train.model_copy(update={"tasks_per_iteration": 1, "rollouts_per_task": 2, "hidden_size": 8,
                                            "dev_every": 2, "dev_tasks": 2, "run_dir": str(tmp_path)})  # fmt: skip
    spec = spec.model_copy(update={"meta_train": mt, "tasks": tasks,
                                   "evaluation": spec.evaluation.model_copy(update={"tasks": tasks})})  # fmt: skip
    run = tmp_path / "run"
    offline = "http://127.0.0.1:9"
    with pytest.warns(UserWarning, match="tracking disabled"):
        train(spec, Settings(iterations=3, workers=0, tracking_uri=offline, run_dir=run, quiet=True))
    rows = [json.loads(line) for line in (run / "dev_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]
    assert all(r["dev/tasks"] == 2 and 0 <= r["dev/pairs_ge_2x"] <= 1 for r in rows)
    assert sorted(p.name for p in (run / "dev").iterdir()) == ["iter-000000", "iter-000002", "iter-000003"]
    assert len(list((run / "dev" / "iter-000002" / "tasks").glob("*.json"))) == 2
    # the dev rows stay out of the per-iteration metrics
    assert all("dev/pairs_ge_2x" not in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    with pytest.warns(UserWarning):
        train(spec, Settings(iterations=4, workers=0, resume=True, tracking_uri=offline, run_dir=run, quiet=True))
    rows = [json.loads(line) for line in (run / "dev_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3, 4]
    # CPU time of every iteration, its running total carried across the resume, and the one-figure curve
    its = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in its] == [1, 2, 3, 4] and all(m["speed/cpu_seconds"] > 0 for m in its)
    totals = [m["speed/cpu_hours"] for m in its]
    assert totals == sorted(totals) and totals[-1] == pytest.approx(sum(m["speed/cpu_seconds"] for m in its) / 3600)
    assert (run / "learning_curve.png").stat().st_size > 0
    # the grids were computed once (first point) and read from the cache after
    first = json.loads((run / "dev" / "iter-000000" / "tasks" / "00000.json").read_text())
    later = json.loads((run / "dev" / "iter-000004" / "tasks" / "00000.json").read_text())
    assert first["pairs"]["run"] > 0 and later["pairs"]["run"] == 0
    assert cli(["curves", str(run), "--metric", "dev/speedup_geomean", "--window", "1", "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
    assert cli(["curves", str(run), "--metric", "dev/nothing", "-o", str(tmp_path / "d.png")]) == 2
    # any two points of the curve compare task by task, as two lhopt eval outputs do
    assert cli(["compare", str(run / "dev" / "iter-000000"), str(run / "dev" / "iter-000004"),
                "-o", str(tmp_path / "cmp.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "cmp.json").read_text())["tasks"] == 2


def test_cpu_seconds_count_every_tasks_runs_once_and_the_learner_per_rank():
    import os

    from lhopt_dsl.agent.rollout import TaskResult
    from runners.meta_train import cpu_seconds

    def result(cpu: float, pid: int) -> TaskResult:
        return TaskResult([], [], [], "nqm", "t", cpu_seconds=cpu, pid=pid)

    here, worker = os.getpid(), os.getpid() + 1
    # in a worker pool: the tasks' time, and all of the learner's own
    assert cpu_seconds([result(3.0, worker), result(2.0, worker)], 1.5, 1) == pytest.approx(6.5)
    # in process: the tasks ran inside the learner's time, so they are not counted twice
    assert cpu_seconds([result(3.0, here), result(2.0, here)], 5.5, 1) == pytest.approx(5.5)
    # two ranks: each learns alike
    assert cpu_seconds([result(3.0, here), result(2.0, worker)], 4.0, 2) == pytest.approx(5.0 + 2 * 1.0)
