"""The drop-in LHOPT optimizer and fixed schedules (export, replay)."""

import copy
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.policy import ActorCritic, PolicyShape, save_checkpoint
from lhopt_dsl.agent.rollout import run_episode
from lhopt_dsl.controller import DEFAULT_POLICY, LHOPT, ScheduleReplay, load_policy, load_schedule, read_schedule
from lhopt_dsl.spec.schedule import segment_bounds
from lhopt_dsl.tasks import compile_task
from runners.cli import main as cli
from runners.meta_train import policy_shape

from .conftest import ROOT, SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
SMOKE_ADAMW = load_spec(SPECS / "smoke_adamw.yaml")
ADAMW_COLUMNS = ("lr", "eps", "one_minus_beta2", "weight_decay")


def _policy_file(spec, path):
    """An untrained policy with a fixed seed, saved as meta-training saves one (with its spec)."""
    torch.manual_seed(0)
    model = ActorCritic(policy_shape(spec))
    save_checkpoint({"policy": model.to_checkpoint(), "spec": spec.model_dump(mode="json")}, path)
    return path


@pytest.fixture
def policy_file(tmp_path):
    return _policy_file(SMOKE, tmp_path / "policy.pt")


@pytest.fixture
def adamw_policy_file(tmp_path):
    return _policy_file(SMOKE_ADAMW, tmp_path / "adamw_policy.pt")


def _task_file(spec, family, path):
    cfg = next(c for c in (sample(spec, s) for s in range(50)) if c.family == family)
    path.write_text(cfg.to_yaml())
    return cfg, path


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
    original = opt.actor.act
    opt.actor.act = lambda *a, **k: calls.append(1) or original(*a, **k)
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
    assert list(opt.schedule().column("lr")) == [h["lr"] for h in opt.history]


def test_a_policy_for_another_space_is_refused_with_a_clear_message(tmp_path):
    wrong = ActorCritic(PolicyShape(policy_size=10, value_size=5, nvec=(3, 3)))
    path = tmp_path / "wrong.pt"
    save_checkpoint({"policy": wrong.to_checkpoint()}, path)
    _, _, net = _regression()
    with pytest.raises(ValueError, match="policy does not match this optimizer"):
        LHOPT(net.parameters(), policy=path, total_steps=10)
    with pytest.raises(FileNotFoundError, match="not found"):
        LHOPT(net.parameters(), policy=tmp_path / "absent.pt", total_steps=10)


def test_export_then_replay_reproduces_the_exported_sequence(adamw_policy_file, tmp_path):
    cfg, task = _task_file(SMOKE_ADAMW, "nqm", tmp_path / "task.yaml")
    out = tmp_path / "schedule.yaml"
    assert cli(["schedule", "export", "--policy", str(adamw_policy_file), "--task", str(task), "-o", str(out)]) == 0
    schedule, meta = read_schedule(out)
    k, T = cfg.task.outer_steps, cfg.task.inner_steps
    assert list(schedule.progress) == [b / T for b in segment_bounds(T, k)[:-1]]  # where each decision took effect
    assert schedule.is_table and schedule.optimizer == "adamw"
    assert meta["task_id"] == cfg.task_id and meta["restarts"] == 0
    assert yaml.safe_load(out.read_text())["format"] == "lhopt-schedule"
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
        boundaries = [math.ceil(p * total - 1e-9) for p in schedule.progress]
        for i, t in enumerate(boundaries):
            expected = tuple(schedule.column(n)[i] for n in ADAMW_COLUMNS)
            assert seen[t] == pytest.approx(expected, rel=1e-12), (total, i)
        assert adamw.param_groups[0]["betas"][0] == 0.9  # beta1 stays


class _RecordingEnv(InnerTrainingEnv):
    """The environment, keeping every inner step's training loss of its run."""

    def reset(self, **kwargs):
        out = super().reset(**kwargs)
        self.train_losses, train_loss = [], self.task.train_loss

        def recorded(batch):
            loss = train_loss(batch)
            self.train_losses.append(float(loss.detach()))
            return loss

        self.task.train_loss = recorded
        return out


@pytest.mark.parametrize("family", ["mlp", "rnn"])
def test_exported_adamw_space_schedule_replayed_on_adamw_reproduces_the_run(adamw_policy_file, tmp_path, family):
    """The policy's run (CIAO in the AdamW space, hyperparameters changed at every decision) and
    torch.optim.AdamW driven by the exported schedule, from the same weights and data order, give
    the same training loss at every inner step and the same validation losses."""
    cfg, task_file = _task_file(SMOKE_ADAMW, family, tmp_path / "task.yaml")
    out = tmp_path / "schedule.yaml"
    assert cli(["schedule", "export", "--policy", str(adamw_policy_file), "--task", str(task_file), "-o", str(out)]) == 0
    schedule, meta = read_schedule(out)
    assert all(len(set(schedule.column(c))) > 1 for c in ("eps", "one_minus_beta2", "weight_decay"))  # it acts

    policy, space = load_policy(adamw_policy_file)
    env = _RecordingEnv(space)
    episode = run_episode(env, cfg, policy, log_improvement_reward, deterministic=True)  # the exported run
    assert episode.valid_curve[-1] == meta["final_valid_loss"]

    task = compile_task(cfg)
    adamw = torch.optim.AdamW(task.params)
    replay = ScheduleReplay(adamw, out, total_steps=task.steps)
    losses, valid = [], [task.valid_loss()]
    bounds = segment_bounds(task.steps, task.outer_steps)
    for a, b in zip(bounds, bounds[1:]):
        for _ in range(a, b):
            loss = task.train_loss(task.next_batch())
            adamw.zero_grad()
            loss.backward()
            adamw.step()
            replay.step()
            losses.append(float(loss.detach()))
        valid.append(task.valid_loss())
    assert len(losses) == len(env.train_losses) == task.steps
    for step, (mine, theirs) in enumerate(zip(losses, env.train_losses)):
        assert mine == pytest.approx(theirs, rel=1e-4), step
    assert valid == pytest.approx(episode.valid_curve, rel=1e-4)


def test_drop_in_adamw_space_policy_runs_adamw_and_its_schedule_replays_the_run(adamw_policy_file):
    x, y, net = _regression()
    replayed = copy.deepcopy(net)
    opt = LHOPT(net.parameters(), policy=adamw_policy_file, total_steps=120, outer_steps=6)
    g = opt.param_groups[0]
    assert (g["denominator"], g["use_clip"], g["use_lamb"], g["bias_correction"]) == ("adam", False, False, "power")
    assert (g["lr"], g["eps"], g["one_minus_beta2"], g["weight_decay"]) == (1e-3, 1e-8, 1e-3, 1e-2)  # AdamW's defaults

    def run(model, step):
        losses = []
        for i in range(120):
            idx = torch.arange(i * 32, i * 32 + 32) % 512
            loss = F.mse_loss(model(x[idx]), y[idx])
            model.zero_grad()
            loss.backward()
            step(loss)
            losses.append(loss.item())
        return losses

    def lhopt_step(loss):
        opt.observe(train_loss=loss.item())
        opt.step()

    mine = run(net, lhopt_step)
    schedule = opt.schedule()
    assert schedule.optimizer == "adamw" and len(schedule.column("lr")) == 6
    adamw = torch.optim.AdamW(replayed.parameters())
    replay = ScheduleReplay(adamw, schedule, total_steps=120)
    theirs = run(replayed, lambda loss: (adamw.step(), replay.step()))
    assert theirs == pytest.approx(mine, rel=1e-4)


def test_ciao_space_policies_and_schedules_are_refused_for_adamw(policy_file, tmp_path, capsys):
    cfg, task = _task_file(SMOKE, "nqm", tmp_path / "task.yaml")
    out = tmp_path / "schedule.yaml"
    assert cli(["schedule", "export", "--policy", str(policy_file), "--task", str(task), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "comes from the ciao space" in err and "LAMB trust ratio" in err and "hparams: {space: adamw}" in err
    assert not out.exists()

    p = torch.nn.Parameter(torch.zeros(2))
    columns = {"progress": [0.0], **{c: [1e-3] for c in ADAMW_COLUMNS}}
    for schedule, why in [({"meta": {"space": "ciao"}, "schedule": columns}, "comes from the ciao space"),
                          (columns, "records no hyperparameter space")]:  # fmt: skip
        with pytest.raises(ValueError, match=why) as info:
            ScheduleReplay(torch.optim.AdamW([p]), schedule, total_steps=10)
        assert "not torch.optim.AdamW's" in str(info.value) and "`hparams: {space: adamw}`" in str(info.value)
    _, _, net = _regression()
    ciao = LHOPT(net.parameters(), total_steps=10)  # the shipped default: a CIAO-space policy
    with pytest.raises(ValueError, match="ciao space"):
        ScheduleReplay(torch.optim.AdamW([p]), ciao.schedule(), total_steps=10)


def test_export_refuses_a_task_of_another_space(adamw_policy_file, tmp_path, capsys):
    _, task = _task_file(SMOKE, "nqm", tmp_path / "task.yaml")
    assert cli(["schedule", "export", "--policy", str(adamw_policy_file), "--task", str(task)]) == 2
    assert "sample the task from a spec with `hparams: {space: adamw}`" in capsys.readouterr().err


def test_schedule_replay_validates_its_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: {progress: [0.0]}\n")
    with pytest.raises(ValueError, match="not a schedule"):
        load_schedule(bad)
    p = torch.nn.Parameter(torch.zeros(1))
    rows = {"progress": [0.5, 0.1], **{c: [1e-3, 1e-3] for c in ADAMW_COLUMNS}}
    with pytest.raises(ValueError, match="increasing progress"):
        ScheduleReplay(torch.optim.AdamW([p]), {"meta": {"space": "adamw"}, "schedule": rows}, 10)
    partial = {"meta": {"space": "adamw"}, "schedule": {"progress": [0.0], "lr": [1e-3]}}
    with pytest.raises(ValueError, match="lacks the column"):
        ScheduleReplay(torch.optim.AdamW([p]), partial, 10)
    with pytest.raises(ValueError, match="drives torch.optim.AdamW"):
        ScheduleReplay(torch.optim.SGD([p], lr=0.1), {"meta": {"space": "adamw"}, "schedule": {**rows, "progress": [0.0, 0.5]}}, 10)


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
    assert opt.space.space == "ciao"  # made with task_specs/cpu.yaml, a CIAO-space spec
    record = DEFAULT_POLICY.parent
    assert (record / "spec.yaml").exists() and (record / "metrics.jsonl").exists()


def test_compiled_drop_in_makes_the_same_decisions_and_run():
    """LHOPT(compiled=True) runs CIAO's compiled step: the policy sees the same statistics, so it
    makes the same decisions, and the parameters end where the multi-tensor path puts them."""
    runs = []
    for compiled in (False, True):
        x, y, net = _regression()
        opt = LHOPT(net.parameters(), total_steps=12, outer_steps=6, compiled=compiled)
        for _ in range(12):
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.observe(train_loss=loss.item())
            opt.step()
        runs.append((opt.history, [p.detach().clone() for p in net.parameters()], opt._kernels))
    (h0, p0, k0), (h1, p1, k1) = runs
    assert not k0 and len(k1) == 2  # the compiled path ran, with statistics and without
    assert [h["lr"] for h in h0] == pytest.approx([h["lr"] for h in h1], rel=1e-6)
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_drop_in_compiles_by_default_only_where_the_run_is_long_enough_to_pay_back(monkeypatch):
    """compiled=None (the default) compiles when parameters x total_steps reach COMPILE_WORK,
    counting every parameter group; an explicit True or False is obeyed either way."""
    import lhopt_dsl.controller as controller

    net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 1))  # 121 parameters
    groups = [{"params": net[0].parameters()}, {"params": net[1].parameters(), "weight_decay": 0.0}]
    monkeypatch.setattr(controller, "COMPILE_WORK", 121 * 100)
    assert not LHOPT(net.parameters(), total_steps=99).compiled
    assert LHOPT(net.parameters(), total_steps=100).compiled
    opt = LHOPT(groups, total_steps=100)  # groups' generators are not used up before torch reads them
    assert opt.compiled and [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert LHOPT([{"params": net[0].weight}, {"params": [net[0].bias]}], total_steps=10**5).compiled
    assert not LHOPT(net.parameters(), total_steps=1000, compiled=False).compiled
    assert LHOPT(net.parameters(), total_steps=1, compiled=True).compiled
    monkeypatch.undo()
    assert controller.compile_pays([torch.zeros(25_000_000)], 2000)
    assert not controller.compile_pays([torch.zeros(1_000_000)], 10_000)


def test_example_script_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_with_lhopt.py"), "--steps", "120"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "lhopt: final validation loss" in out.stdout and "acted 32 times" in out.stdout


def test_acting_never_runs_the_critic(policy_file, monkeypatch):
    """The drop-in and evaluation act with the actor alone: a critic that fails when run is never run."""
    from runners.evaluate import policy_run

    def refuse(*args, **kwargs):
        raise AssertionError("the critic ran while acting")

    monkeypatch.setattr(ActorCritic, "critic_forward", refuse)
    x, y, net = _regression()
    opt = LHOPT(net.parameters(), policy=policy_file, total_steps=40, outer_steps=8)
    for step in range(40):
        loss = F.mse_loss(net(x[:64]), y[:64])
        opt.zero_grad()
        loss.backward()
        opt.observe(train_loss=loss.item())
        opt.step()
    assert opt.decisions == 8
    policy, space = load_policy(policy_file)
    cfg = next(c for c in (sample(SMOKE, s) for s in range(50)) if c.family == "nqm")
    episode = policy_run(policy, space, cfg)
    assert len(episode) == cfg.task.outer_steps and all(math.isnan(v) for v in episode.values)


def test_a_policy_file_is_read_once_per_version_and_each_lhopt_has_its_own_network(tmp_path, monkeypatch):
    """Many LHOPTs from one file read and check it once; each still gets a network of its own (no
    tensor or normaliser array shared), and a file rewritten on disk (same size) is read again."""
    import numpy as np

    from lhopt_dsl.agent import policy_file

    path = _policy_file(SMOKE, tmp_path / "cached.pt")
    reads, read = [], policy_file.load_policy_file
    monkeypatch.setattr(policy_file, "load_policy_file", lambda p: reads.append(p) or read(p))
    net = torch.nn.Linear(4, 1)
    a, b = (LHOPT(net.parameters(), policy=path, total_steps=10) for _ in range(2))
    assert len(reads) == 1
    weights = lambda opt: dict(opt.actor.named_parameters())  # noqa: E731
    assert all(w.data_ptr() != weights(b)[k].data_ptr() for k, w in weights(a).items())
    assert not np.shares_memory(a.actor.policy_norm.mean, b.actor.policy_norm.mean)
    with torch.no_grad():  # someone fine-tunes one optimizer's policy in place
        for w in weights(a).values():
            w.add_(1.0)
    a.actor.policy_norm.mean += 1.0
    c = LHOPT(net.parameters(), policy=path, total_steps=10)
    assert all(torch.equal(w, weights(b)[k]) for k, w in weights(c).items())
    assert np.array_equal(c.actor.policy_norm.mean, b.actor.policy_norm.mean)
    size = path.stat().st_size
    torch.manual_seed(1)
    other = ActorCritic(policy_shape(SMOKE))
    save_checkpoint({"policy": other.to_checkpoint(), "spec": SMOKE.model_dump(mode="json")}, path)
    assert path.stat().st_size == size  # only the modification time tells the versions apart
    d = LHOPT(net.parameters(), policy=path, total_steps=10)
    assert len(reads) == 2
    assert all(torch.equal(w, dict(other.named_parameters())[k]) for k, w in weights(d).items())


def test_schedule_replay_follows_a_named_schedule_per_group_and_resumes():
    """A fixed schedule of the platform's grammar replays on AdamW like a torch LR scheduler: the
    name's lr where it gives one, else each group's own initial lr, times the shape."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], weight_decay=0.05)
    replay = ScheduleReplay(opt, "adamw-linear-lr0.002", total_steps=10)
    assert [g["lr"] for g in opt.param_groups] == [0.002, 0.002]
    for _ in range(5):
        replay.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups)  # the rest stays as built
    state = replay.state_dict()

    opt2 = torch.optim.AdamW([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    with pytest.raises(ValueError, match="needs a learning rate"):
        ScheduleReplay(opt2, "cosine", total_steps=4)
    own = ScheduleReplay(opt2, "keep", total_steps=10)
    assert [g["lr"] for g in opt2.param_groups] == [0.1, 0.01]
    own.step()
    assert [g["lr"] for g in opt2.param_groups] == [0.1, 0.01]
    with pytest.raises(ValueError, match="resume with the schedule of the saved run"):
        own.load_state_dict(state)

    opt3 = torch.optim.AdamW([a], lr=0.1)
    again = ScheduleReplay(opt3, "adamw-linear-lr0.002", total_steps=10)
    again.load_state_dict(state)
    assert opt3.param_groups[0]["lr"] == pytest.approx(0.001)
    for _ in range(10):  # past the end the last value holds
        again.step()
    assert opt3.param_groups[0]["lr"] == 0.0
    with pytest.raises(ValueError, match="CIAO"):
        ScheduleReplay(torch.optim.AdamW([a]), "ciao-cosine", total_steps=10)
