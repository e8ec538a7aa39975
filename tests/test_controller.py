"""The drop-in LHOPT optimizer and fixed schedules (export, replay)."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from lhopt_dsl import load_spec, sample
from lhopt_dsl.controller import DEFAULT_POLICY, LHOPT, ScheduleReplay, load_schedule
from lhopt_dsl.env import segment_bounds
from lhopt_dsl.policy import ActorCritic, PolicyShape
from runners.cli import main as cli
from runners.meta_train import policy_shape

from .conftest import ROOT, SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")


@pytest.fixture
def policy_file(tmp_path):
    torch.manual_seed(0)
    model = ActorCritic(policy_shape(SMOKE))
    path = tmp_path / "policy.pt"
    torch.save({"policy": model.to_checkpoint(), "spec": SMOKE.model_dump(mode="json")}, path)
    return path


def _regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    return x, y, net


def test_drop_in_trains_a_model_and_calls_the_policy_the_expected_number_of_times(policy_file):
    x, y, net = _regression()
    opt = LHOPT(net.parameters(), policy=policy_file, total_steps=200, outer_steps=10, initial={"lr": 3e-2})
    calls = []
    original = opt.policy.act
    opt.policy.act = lambda *a, **k: calls.append(1) or original(*a, **k)
    first = F.mse_loss(net(x), y).item()
    for step in range(200):
        idx = torch.arange(step * 32, step * 32 + 32) % 512
        loss = F.mse_loss(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.observe(train_loss=loss.item())
        if step % 20 == 0:
            opt.observe(valid_loss=F.mse_loss(net(x), y).item())
        opt.step()
    assert len(calls) == opt.decisions == 10
    assert [round(h["progress"], 3) for h in opt.history] == [k / 10 for k in range(10)]
    assert F.mse_loss(net(x), y).item() < first
    assert opt.schedule()["lr"] == [h["lr"] for h in opt.history]


def test_a_policy_for_another_space_is_refused_with_a_clear_message(tmp_path):
    wrong = ActorCritic(PolicyShape(policy_size=10, value_size=5, nvec=(3, 3)))
    path = tmp_path / "wrong.pt"
    torch.save({"policy": wrong.to_checkpoint()}, path)
    _, _, net = _regression()
    with pytest.raises(ValueError, match="policy does not match this optimizer"):
        LHOPT(net.parameters(), policy=path, total_steps=10)
    with pytest.raises(FileNotFoundError, match="not found"):
        LHOPT(net.parameters(), policy=tmp_path / "absent.pt", total_steps=10)


def test_export_then_replay_reproduces_the_exported_sequence(policy_file, tmp_path):
    cfg = next(c for c in (sample(SMOKE, s) for s in range(50)) if c.family == "nqm")
    task = tmp_path / "task.yaml"
    task.write_text(cfg.to_yaml())
    out = tmp_path / "schedule.yaml"
    assert cli(["schedule", "export", "--policy", str(policy_file), "--task", str(task), "-o", str(out)]) == 0
    schedule = load_schedule(out)
    k, T = cfg.task.outer_steps, cfg.task.inner_steps
    assert schedule["progress"] == [b / T for b in segment_bounds(T, k)[:-1]]  # where each decision took effect
    meta = yaml.safe_load(out.read_text())["meta"]
    assert meta["task_id"] == cfg.task_id
    for total in (cfg.task.inner_steps, 3 * cfg.task.inner_steps):  # replayed as recorded, then stretched
        p = torch.nn.Parameter(torch.zeros(2))
        adamw = torch.optim.AdamW([p])
        replay = ScheduleReplay(adamw, out, total_steps=total)
        seen = []
        for t in range(total):
            g = adamw.param_groups[0]
            seen.append((g["lr"], g["eps"], 1 - g["betas"][1], g["weight_decay"]))
            p.grad = torch.ones(2)
            adamw.step()
            replay.step()
        boundaries = [math.ceil(p * total - 1e-9) for p in schedule["progress"]]
        for i, t in enumerate(boundaries):
            expected = tuple(schedule[n][i] for n in ("lr", "eps", "one_minus_beta2", "weight_decay"))
            assert seen[t] == pytest.approx(expected, rel=1e-12), (total, i)
        assert adamw.param_groups[0]["betas"][0] == 0.9  # beta1 stays


def test_schedule_replay_validates_its_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: {progress: [0.0]}\n")
    with pytest.raises(ValueError, match="not a schedule"):
        load_schedule(bad)
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="increasing progress"):
        ScheduleReplay(torch.optim.AdamW([p]), {"progress": [0.5, 0.1], "lr": [1, 2]}, 10)


def test_shipped_default_policy_works_out_of_the_box():
    assert DEFAULT_POLICY.exists(), "the package ships a default policy"
    _, _, net = _regression()
    opt = LHOPT(net.parameters(), total_steps=20)
    x, y, _ = _regression()
    for _ in range(20):
        loss = F.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.observe(train_loss=loss.item())
        opt.step()
    assert opt.decisions == 20  # outer_steps defaults to min(32, total_steps)
    record = DEFAULT_POLICY.parent
    assert (record / "spec.yaml").exists() and (record / "metrics.jsonl").exists()


def test_example_script_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_with_lhopt.py"), "--steps", "120"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "lhopt: final validation loss" in out.stdout and "acted 32 times" in out.stdout
