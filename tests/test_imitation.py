"""Imitation warm-start: schedule followers, demonstrations, behaviour cloning, `lhopt imitate`, `train --init`."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lhopt_dsl import SpecError, load_spec, sample
from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.imitation import (
    DEFAULT_LRS,
    DEFAULT_SHAPES,
    DIVERGED_REGRET,
    BestOfTask,
    Consensus,
    Demonstration,
    ResidualOffsets,
    clone,
    consensus,
    demonstrate,
    residual_demo,
)
from lhopt_dsl.agent.observation import Cadence
from lhopt_dsl.agent.policy import ActorCritic, PolicyShape, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.residual import Follow, Residual
from lhopt_dsl.spec.schedule import KEEP, Schedule
from runners.meta_train import initial_policy, policy_shape

from .conftest import SPECS
from .test_population import smoke

#: Table 8's actions plus one that keeps each hyperparameter (as task_specs/cpu.yaml): a follower
#: changes only the learning rate, so every other dimension needs an action that keeps it.
KEEP_ACTIONS = """
hparams:
  grad_clip_fraction: {action: {type: logit_shift, values: [-1.0, -0.3, 0.0, 0.3, 1.0]}}
  weight_decay: {action: {type: scale, values: [0.5, 1.0, 2.0]}}
  eps: {action: {type: scale, values: [0.5, 1.0, 2.0]}}
  one_minus_beta1: {action: {type: scale, values: [0.5, 1.0, 2.0]}}
  one_minus_beta2: {action: {type: scale, values: [0.5, 1.0, 2.0]}}
"""


def keep_spec_file(directory: Path) -> Path:
    """The smoke spec with :data:`KEEP_ACTIONS` (cpu.yaml's hyperparameters, as :data:`SMOKE`), as a file."""
    path = directory / "smoke_keep.yaml"
    (directory / "smoke.yaml").write_text((SPECS / "smoke.yaml").read_text())  # includes stay in the spec's tree
    path.write_text(f"include: smoke.yaml\nname: smoke_keep\n{KEEP_ACTIONS}")
    return path


_SMOKE = load_spec(SPECS / "smoke.yaml")
SMOKE = _SMOKE.model_copy(update={"name": "smoke_keep", "hparams": load_spec(SPECS / "cpu.yaml").hparams})


def follower(targets):
    return Follow(targets, SMOKE.hparams, ActorCritic(policy_shape(SMOKE)).policy_norm)


def test_follower_reaches_its_target_with_the_policy_actions_and_keeps_the_rest():
    f = follower([Schedule.from_name("constant-lr0.001"), KEEP, Schedule.from_name("linear-lr0.003")])
    actions = ActionSpace(SMOKE.hparams)
    carry = f.start([Run({"lr": 1e-5}, 16, member=m) for m in range(3)])
    acts, lrs = [], []
    for _ in range(16):
        step, carry = f.act(carry, np.zeros((3, f.policy_size)), [None] * 3, False)
        acts.append(step.actions)
        lrs.append(carry.lr)
    acts, lrs = np.stack(acts), np.asarray(lrs)
    lr_param = actions.hparams["lr"]
    # Every step moves by one of lr's action values and the others keep theirs; no restart.
    assert (acts[..., 1:] == actions.identity()[1:]).all()
    # Constant 1e-3 from 1e-5: x2 per decision until the nearest value, then held within one step's ratio.
    assert lrs[0, 0] == pytest.approx(2e-5) and max(lr_param.action.values) == 2.0
    assert abs(math.log(lrs[-1, 0] / 1e-3)) < math.log(1.1) / 2 + 1e-9
    assert (lrs[:, 1] == 1e-5).all() and (acts[:, 1, 0] == actions.identity()[0]).all()
    # Linear decay: after reaching the target the follower goes down with it.
    assert lrs[-1, 2] < lrs[8, 2]
    # The guard's lowered learning rate is where it follows on from.
    assert f.guarded(carry, 2, 0.1).lr[2] == pytest.approx(lrs[-1, 2] * 0.1)
    with pytest.raises(ValueError, match="member 3 of a follower of 3 targets"):
        f.start([Run({"lr": 1e-5}, 16, member=3)])


def test_a_space_without_keep_actions_is_refused():
    from lhopt_dsl.spec.hparams import CIAOSpace

    with pytest.raises(ValueError, match="no action that keeps weight_decay, eps"):
        Follow([Schedule(optimizer=None, lr=1e-3)], CIAOSpace())  # Table 8's actions: x0.5 and x2 only
    from runners.cli import main

    assert main(["imitate", str(SPECS / "smoke.yaml"), "--tasks", "1"]) == 2  # the smoke spec has Table 8's


@pytest.mark.parametrize("family,cadence", [("mlp", Cadence(None, None)), ("nqm", Cadence(3, None))], ids=str)
def test_demonstration_is_the_best_follower_and_alike_batched_or_not(family, cadence):
    cfg = smoke(family, outer_steps=8)
    targets = [KEEP, *map(Schedule.from_name, ("constant-lr0.0001", "cosine-lr0.01", "constant-lr0.1"))]
    learner = ActorCritic(policy_shape(SMOKE))
    demo, eps = demonstrate(cfg, learner, SMOKE.hparams, targets, seed=5, population=True, cadence=cadence)
    seq_demo, seq_eps = demonstrate(cfg, learner, SMOKE.hparams, targets, seed=5, population=False, cadence=cadence)
    assert len(eps) == len(seq_eps) == len(targets)
    for p, s in zip(eps, seq_eps):
        assert (p.actions == s.actions).all()
        assert p.valid_curve == pytest.approx(s.valid_curve, rel=1e-4, abs=1e-6)
    finals = [e.valid_curve[-1] for e in eps]
    best = int(np.nanargmin(finals))
    assert demo.target == seq_demo.target == targets[best].name
    assert demo.final_valid == finals[best] and (demo.actions == eps[best].actions).all()
    assert demo.raw_policy.shape == (8, learner.shape.policy_size) and len(demo.rewards) == 8
    # The keep member's learning rate never moves; the others follow their own targets.
    assert {h["lr"] for h in eps[0].hparams} == {cfg.hparams.lr}
    assert len({round(h["lr"], 12) for h in eps[3].hparams}) > 1
    # Every follower's final loss is kept (what consensus labels are made from).
    assert list(demo.target_losses) == [t.name for t in targets]
    assert [demo.target_losses[t.name] for t in targets] == [f if math.isfinite(f) else math.inf for f in finals]
    # A round trip through a file keeps it.
    again = Demonstration.from_data(demo.to_data())
    assert (again.actions == demo.actions).all() and again.target == demo.target
    assert again.target_losses == demo.target_losses


def test_relabelled_decisions_head_for_the_tasks_best_schedule_from_where_the_policy_is():
    from lhopt_dsl.agent.imitation import relabel

    cfg = smoke("mlp", outer_steps=8)
    cfg = cfg.model_copy(update={"hparams": cfg.hparams.model_copy(update={"lr": 1e-5})})
    policy = ActorCritic(policy_shape(SMOKE))
    demo = relabel(cfg, policy, SMOKE.hparams, Schedule(optimizer=None, lr=0.1), cadence=Cadence(None, None))
    actions = ActionSpace(SMOKE.hparams)
    up = actions.hparams["lr"].action.values.index(2.0)
    assert demo.actions.shape == (8, len(actions.nvec)) and np.isnan(demo.rewards).all()
    assert (demo.actions[:, 0] == up).all()  # from 1e-5, 0.1 is more than 8 doublings away whatever the policy did
    assert (demo.actions[:, 1:] == actions.identity()[1:]).all()
    assert Schedule.from_name("cosine-lr0.03") == Schedule(optimizer=None, lr=0.03, shape="cosine")
    assert Schedule.from_name("keep") == KEEP


def test_following_another_schedule_records_that_followers_episode():
    from lhopt_dsl.agent.imitation import relabel

    cfg = smoke("mlp", outer_steps=8)
    cfg = cfg.model_copy(update={"hparams": cfg.hparams.model_copy(update={"lr": 1e-3})})
    learner = ActorCritic(policy_shape(SMOKE))
    target = Schedule(optimizer=None, lr=1e-2, shape="linear")
    demo = relabel(cfg, learner, SMOKE.hparams, target, follow=target, cadence=Cadence(None, None))
    _, eps = demonstrate(cfg, learner, SMOKE.hparams, [target], seed=0, population=False, cadence=Cadence(None, None))
    # The same episode as the follower's own run, labelled with its own actions.
    assert (demo.actions == eps[0].actions).all()
    assert demo.final_valid == pytest.approx(eps[0].valid_curve[-1], rel=1e-5)
    up = ActionSpace(SMOKE.hparams).hparams["lr"].action.values.index(2.0)
    assert demo.actions[0, 0] == up  # 1e-3 heads up to 1e-2 first


def _graded(task: str, losses: dict[str, float]) -> Demonstration:
    best = min(losses, key=lambda n: losses[n])
    z = np.zeros((2, 3))
    return Demonstration(task, "mlp", best, z, z, np.zeros((2, 2), dtype=np.int64), np.zeros(2), losses[best],
                         1.0, 1.0, target_losses=losses)  # fmt: skip


def test_consensus_labels_trust_one_schedule_unless_a_task_clearly_prefers_another():
    demos = [
        _graded("a", {"keep": 2.0, "constant-lr0.01": 1.00, "linear-lr0.03": 1.01}),  # a hair: consensus
        _graded("b", {"keep": 2.0, "constant-lr0.01": 1.20, "linear-lr0.03": 1.00}),
        _graded("c", {"keep": 1.0, "constant-lr0.01": math.inf, "linear-lr0.03": 1.50}),  # clearly keep
        _graded("d", {"keep": 3.0, "constant-lr0.01": 1.30, "linear-lr0.03": 1.00}),
    ]
    agreed, labels = consensus(demos, 0.05)
    assert agreed == "linear-lr0.03"  # least mean regret; the diverged run counts as 10x worse
    assert labels == {"a": "linear-lr0.03", "b": "linear-lr0.03", "c": "keep", "d": "linear-lr0.03"}
    assert consensus(demos, 0.0)[1] == {d.task_id: d.target for d in demos}  # margin 0: each task's best
    assert set(consensus(demos, math.inf)[1].values()) == {"linear-lr0.03"}
    assert DIVERGED_REGRET == pytest.approx(math.log(10))
    old = _graded("e", {"keep": 1.0})
    old.target_losses = {}  # a file written before every follower's loss was recorded
    with pytest.raises(ValueError, match="collect them again"):
        consensus([*demos, old], 0.05)
    with pytest.raises(ValueError, match="different schedule grids"):
        consensus([*demos, _graded("e", {"keep": 1.0})], 0.05)
    with pytest.raises(ValueError, match="margin"):
        consensus(demos, -0.1)


def synthetic_demos(n: int, length: int = 12, seed: int = 0) -> list[Demonstration]:
    """The label of the first action dimension is 0, 3 or 6 as the first feature is low, middle, high;
    the second feature is the progress, the rest are constant (features are not noise)."""
    rng = np.random.default_rng(seed)
    shape = policy_shape(SMOKE)
    demos = []
    for i in range(n):
        x = np.zeros((length, shape.policy_size))
        x[:, 0], x[:, 1] = rng.normal(size=length), np.arange(length) / length
        actions = np.zeros((length, len(shape.nvec)), dtype=np.int64)
        actions[:, 0] = np.where(x[:, 0] < -0.5, 0, np.where(x[:, 0] > 0.5, 6, 3))
        v = np.zeros((length, shape.value_size))
        v[:, 0] = x[:, 1]
        demos.append(Demonstration(f"t{i}", "mlp", "x", x, v, actions,
                                   np.full(length, 0.1), 1.0, 2.0, 1.5))  # fmt: skip
    return demos


def test_cloning_learns_the_labels_and_keeps_the_best_held_out_epoch():
    torch.manual_seed(0)
    model = ActorCritic(policy_shape(SMOKE))
    demos = synthetic_demos(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = clone(model, demos, epochs=150, lr=1e-2, seed=0)
    assert metrics["bc/holdout_tasks"] == 8 and metrics["bc/fit_tasks"] == 32
    assert metrics["bc/holdout_lr_accuracy"] > 0.85 > metrics["bc/holdout_majority_accuracy"] + 0.3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.policy_norm.count > 0  # the normalisers took the observations
    # The critic learned the returns (0.1 per remaining step).
    assert metrics["bc/holdout_value_loss"] < 0.05
    # Early stopping: with a huge step size the held-out loss gets worse, and the kept epoch is an early one.
    torch.manual_seed(0)
    wild = ActorCritic(policy_shape(SMOKE))
    late = clone(wild, synthetic_demos(10, seed=1), epochs=60, lr=0.3, seed=0)
    assert late["bc/epoch"] <= 60
    with pytest.raises(ValueError, match="no demonstrations"):
        clone(model, [])


def test_lhopt_imitate_resumes_and_refuses_another_runs_files(tmp_path, monkeypatch, capsys):
    from runners import imitate as imitate_mod

    calls = []
    real = imitate_mod._demo_job

    def counted(args):
        calls.append(args[0])
        return real(args)

    monkeypatch.setattr(imitate_mod, "_demo_job", counted)
    spec = SMOKE.model_copy(update={"tracking": SMOKE.tracking.model_copy(update={"registered_model": "imitated"})})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    small = dict(lrs=(1e-3, 1e-2), shapes=("constant",), epochs=5, tracking_uri=uri)
    run = tmp_path / "run"
    path = imitate_mod.imitate(spec, imitate_mod.ImitationSettings(tasks=2, run_dir=run, quiet=True, **small))
    assert sorted(calls) == [0, 1] and sorted(p.name for p in (run / "demos").iterdir()) == ["00000.pt", "00001.pt"]
    from mlflow import MlflowClient

    assert len(MlflowClient(uri).search_model_versions("name='imitated'")) == 1  # registered as training's are
    saved = load_checkpoint(path)
    assert saved["imitation"]["summary"]["tasks"] == 2
    ActorCritic.from_checkpoint(saved["policy"])
    calls.clear()
    path = imitate_mod.imitate(spec, imitate_mod.ImitationSettings(tasks=3, run_dir=run, quiet=True, dagger=1, **small))
    assert calls == [2]  # the two finished tasks were not run again
    # DAgger: one relabelled episode per task and round, then a second cloning.
    assert sorted(p.name for p in (run / "dagger-3" / "round1").iterdir()) == ["00000.pt", "00001.pt", "00002.pt"]
    assert len(load_checkpoint(path)["imitation"]["rounds"]) == 2
    # From the default initial values: other tasks' demonstrations, kept apart.
    calls.clear()
    path = imitate_mod.imitate(spec, imitate_mod.ImitationSettings(tasks=1, run_dir=run, quiet=True, initial="default",
                                                                   **small))  # fmt: skip
    assert calls == [0] and path.name == "imitation-default.pt"
    made = load_checkpoint(run / "demos-default" / "00000.pt")["demo"]["task_id"]
    assert made == sample(spec, imitate_mod.train_seed(spec.seed, imitate_mod.IMITATION_KEY, 0), initial="default").task_id
    assert made != load_checkpoint(run / "demos" / "00000.pt")["demo"]["task_id"]
    # Consensus labels: one schedule everywhere (margin inf); tasks whose best was another schedule
    # get that follower's episode, once.
    calls.clear()
    path = imitate_mod.imitate(spec, imitate_mod.ImitationSettings(tasks=3, run_dir=run, quiet=True, dagger=1,
                                                                   margin=math.inf, **small))  # fmt: skip
    assert calls == [] and path.name == "imitation-minf.pt"
    summary = load_checkpoint(path)["imitation"]["summary"]
    agreed = summary["consensus"]
    assert summary["labels"] == {agreed: 3}
    firsts = [load_checkpoint(run / "demos" / f"{j:05d}.pt")["demo"]["target"] for j in range(3)]
    switched = sorted(p.name for p in (run / "consensus-3-minf").iterdir()) if (run / "consensus-3-minf").exists() else []
    assert switched == [f"{j:05d}.pt" for j in range(3) if firsts[j] != agreed]
    for name in switched:
        assert load_checkpoint(run / "consensus-3-minf" / name)["demo"]["target"] == agreed
    assert len(list((run / "dagger-3-minf" / "round1").iterdir())) == 3
    # A cloning seed of its own: no new demonstrations or consensus runs; DAgger's rounds are its own.
    calls.clear()
    path = imitate_mod.imitate(spec, imitate_mod.ImitationSettings(tasks=3, run_dir=run, quiet=True, dagger=1,
                                                                   margin=math.inf, clone_seed=5, **small))  # fmt: skip
    assert calls == [] and path.name == "imitation-minf-c5.pt"
    record = load_checkpoint(path)["imitation"]
    assert record["clone_seed"] == 5 and record["margin"] == math.inf
    # The record's keys are those of the policies already shipped (the removed options' always None).
    shipped = load_checkpoint(Path(__file__).resolve().parent.parent / "lhopt_dsl" / "policies" / "default.pt")
    assert list(record) == list(shipped["imitation"]) and record["tie"] is None and record["soft"] is None
    assert len(list((run / "dagger-3-minf-c5" / "round1").iterdir())) == 3
    # A demonstration made for another seed (another spec, or --seed) is not mixed in.
    other = spec.model_copy(update={"seed": spec.seed + 1})
    with pytest.raises(ValueError, match="another spec or seed"):
        imitate_mod.imitate(other, imitate_mod.ImitationSettings(tasks=1, run_dir=run, quiet=True, **small))


def test_train_init_starts_from_the_given_policy_and_checks_its_shape(tmp_path):
    spec = SMOKE
    torch.manual_seed(1)
    given = ActorCritic(policy_shape(spec))
    given.policy_norm(np.random.default_rng(0).normal(size=(5, given.shape.policy_size)), update=True)
    save_checkpoint({"policy": given.to_checkpoint()}, tmp_path / "p.pt")
    got = initial_policy(spec, load_checkpoint(tmp_path / "p.pt"), tmp_path / "p.pt")
    for (k, a), b in zip(given.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    assert got.policy_norm.count == 5
    s = given.shape
    small = ActorCritic(PolicyShape(s.policy_size, s.value_size, s.nvec, hidden_size=s.hidden_size // 2))
    with pytest.raises(ValueError, match="LSTM units"):
        initial_policy(spec, {"policy": small.to_checkpoint()}, "small.pt")
    wrong = ActorCritic(PolicyShape(s.policy_size + 1, s.value_size, s.nvec, s.hidden_size))
    with pytest.raises(ValueError, match="does not match"):
        initial_policy(spec, {"policy": wrong.to_checkpoint()}, "wrong.pt")
    # Through meta-training: a new run saves the given policy untouched (no keep bias added on top).
    biased = spec.model_copy(update={"meta_train": spec.meta_train.model_copy(update={"keep_bias": 2.0})})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from runners.meta_train import Settings, train

    path = train(biased, Settings(iterations=0, workers=0, tracking_uri=uri, run_dir=tmp_path / "r", quiet=True,
                                  init=tmp_path / "p.pt"))  # fmt: skip
    trained = ActorCritic.from_checkpoint(load_checkpoint(path)["policy"])
    for (k, a), b in zip(given.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), k


def test_sigterm_stops_imitation_with_its_worker_pool_and_keeps_finished_demonstrations(tmp_path):
    import sys

    from .test_meta_train import sigterm_after

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "runners.cli", "imitate", str(keep_spec_file(tmp_path)), "--tasks", "40", "--workers", "2",
           "--run-dir", str(run), "--tracking-uri", "http://127.0.0.1:9"]  # fmt: skip
    err = sigterm_after(cmd, lambda: (run / "demos").exists() and any((run / "demos").glob("*.pt")), "demonstration")
    assert "rerun the same command" in err, err[-2000:]
    kept = list((run / "demos").glob("*.pt"))
    assert kept and all(load_checkpoint(p)["demo"]["task_id"] for p in kept)  # whole files only


#: The four tasks of :func:`test_consensus_labels_trust_one_schedule_unless_a_task_clearly_prefers_another`:
#: with margin 0.05 the consensus is linear-lr0.03, and only task "a" (best: constant-lr0.01 by a
#: hair) changes label.
GRADED = [("a", {"keep": 2.0, "constant-lr0.01": 1.00, "linear-lr0.03": 1.01}),
          ("b", {"keep": 2.0, "constant-lr0.01": 1.20, "linear-lr0.03": 1.00}),
          ("c", {"keep": 1.0, "constant-lr0.01": math.inf, "linear-lr0.03": 1.50}),
          ("d", {"keep": 3.0, "constant-lr0.01": 1.30, "linear-lr0.03": 1.00})]  # fmt: skip


#: The learning rate's action values (scales) in :data:`SMOKE`'s space.
LR_ACTIONS = list(ActionSpace(SMOKE.hparams).hparams["lr"].action.values)


def _hand_made() -> dict[int, Demonstration]:
    """The :data:`GRADED` tasks as followers' episodes of 8 decisions that double the learning rate."""
    actions = ActionSpace(SMOKE.hparams)
    climb = np.tile(actions.identity(), (8, 1))
    climb[:, 0] = actions.hparams["lr"].action.values.index(2.0)
    return {j: replace(_graded(task, losses), actions=climb.copy()) for j, (task, losses) in enumerate(GRADED)}


def test_labellings_label_hand_made_demonstrations_as_the_branches_they_replace():
    demos = _hand_made()
    best = BestOfTask()  # no --margin: each task's best follower, untouched
    assert best.tag == "" and best.summary() == {"consensus": None}
    assert list(best.label(demos)) == [0, 1, 2, 3] and all(best.label(demos)[j] is demos[j] for j in demos)

    asked = []

    def follow(labels):  # the runner's followers: an episode of the label, marked by its actions
        asked.append(dict(labels))
        return {j: replace(demos[j], target=t, actions=np.full_like(demos[j].actions, 9)) for j, t in labels.items()}

    agreed = Consensus(0.05, follow)
    assert agreed.tag == "-m0.05" and Consensus(math.inf, follow).tag == "-minf"
    out = agreed.label(demos)
    assert asked == [{0: "linear-lr0.03"}]  # only the task whose label changed is run again
    assert out[0].target == "linear-lr0.03" and (out[0].actions == 9).all()
    assert [out[j] for j in (1, 2, 3)] == [demos[j] for j in (1, 2, 3)]
    assert [d.target for d in out.values()] == ["linear-lr0.03", "linear-lr0.03", "keep", "linear-lr0.03"]
    assert agreed.summary() == {"consensus": "linear-lr0.03"}
    with pytest.raises(ValueError, match="margin must be >= 0"):
        Consensus(-0.1, follow)

    base = Schedule.from_name("linear-lr0.03")
    residual = Residual(ActorCritic(policy_shape(SMOKE)), SMOKE.hparams, base)
    initial = {0: 1e-3, 1: 1e-2, 2: 1e-4, 3: 3e-3}.__getitem__
    offsets = ResidualOffsets(Consensus(0.05, follow), residual, initial)
    assert offsets.tag == "-m0.05-blinear-lr0.03" and ResidualOffsets(best, residual, initial).tag == "-blinear-lr0.03"
    got = offsets.label(demos)
    assert offsets.summary() == {"consensus": "linear-lr0.03"}
    for j, d in out.items():  # what the --base branch did to the consensus labels
        want = residual_demo(d, residual, Schedule.from_name(d.target), initial(j))
        assert got[j].target == d.target and np.array_equal(got[j].actions, want.actions)
    keep, down = LR_ACTIONS.index(1.0), LR_ACTIONS.index(0.5)
    for j in (0, 1, 3):  # labelled with the base itself: every offset label keeps, the rest stays
        assert (got[j].actions[:, 0] == keep).all() and np.array_equal(got[j].actions[:, 1:], out[j].actions[:, 1:])
    assert got[2].actions[0, 0] == down  # "keep" from 1e-4 is far below the base's 1e-3 start: the offset falls
    assert (demos[2].actions[:, 0] == LR_ACTIONS.index(2.0)).all()  # the originals are untouched


def test_demonstration_files_written_while_soft_labels_existed_still_load():
    data = synthetic_demos(1)[0].to_data()
    assert "soft" not in data
    again = Demonstration.from_data({**data, "soft": None})  # a file of those days that held none
    assert again.task_id == "t0" and np.array_equal(again.actions, synthetic_demos(1)[0].actions)
    with pytest.raises(ValueError, match="soft labels.*removed.*new --run-dir"):
        Demonstration.from_data({**data, "soft": np.full((12, 7), 1 / 7)})
    root = Path(__file__).resolve().parent.parent  # the committed demonstrations of the shipped policy
    committed = load_checkpoint(root / "results" / "imitation" / "cpu-40" / "demos-default" / "00007.pt", "demonstration")
    assert Demonstration.from_data(committed["demo"]).target_losses


def test_lhopt_imitate_reads_the_spec_section_and_its_options_override_it(tmp_path, capsys):
    from runners.cli import build_parser, main
    from runners.imitate import ImitationSettings

    # Without a section: today's defaults; the workers are meta-training's.
    plain = load_spec(SPECS / "smoke.yaml")
    s = ImitationSettings.from_spec(plain)
    assert (s.tasks, s.epochs, s.dagger, s.initial, s.margin, s.clone_seed, s.base, s.run_dir) == \
        (100, 300, 0, "noisy", None, None, None, None)  # fmt: skip
    assert s.workers == plain.meta_train.workers and tuple(s.lrs) == DEFAULT_LRS and tuple(s.shapes) == DEFAULT_SHAPES
    given = build_parser().parse_args(["imitate", "x.yaml"])  # an option left out never hides the spec's value
    assert all(getattr(given, k) is None for k in ("tasks", "workers", "run_dir", "epochs", "dagger", "initial",
                                                   "margin", "clone_seed", "base"))  # fmt: skip

    spec = keep_spec_file(tmp_path)
    spec.write_text(spec.read_text() + f"imitation:\n  tasks: 1\n  epochs: 40\n  lrs: [0.001]\n  shapes: [linear]\n"
                                       f"  workers: 0\n  margin: 0.5\n  run_dir: {tmp_path / 'from_spec'}\n")  # fmt: skip
    run = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["imitate", str(spec), "--epochs", "2", "--run-dir", str(run), "--tracking-uri", uri]) == 0
    saved = load_checkpoint(run / "imitation-m0.5.pt")
    record = saved["imitation"]
    assert (record["tasks"], record["lrs"], record["shapes"], record["margin"]) == (1, [0.001], ["linear"], 0.5)
    assert record["epochs"] == 2 and record["metrics"]["bc/epoch"] <= 2  # the option's, not the spec's 40
    assert saved["spec"]["imitation"]["epochs"] == 2 and saved["spec"]["imitation"]["run_dir"] == str(run)
    assert len(list((run / "demos").iterdir())) == 1 and not (tmp_path / "from_spec").exists()
    capsys.readouterr()
    assert main(["imitate", str(spec), "--epochs", "-1", "--margin", "-2"]) == 2  # checked as the section is
    err = capsys.readouterr().err
    assert "--epochs -1: Input should be greater than or equal to 1" in err and "--margin -2.0" in err


def test_an_invalid_imitation_section_is_a_located_spec_error(tmp_path, capsys):
    from runners.cli import main

    (tmp_path / "smoke.yaml").write_text((SPECS / "smoke.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: smoke.yaml\nname: bad_imitation\nimitation:\n  tasks: 4\n  epochs: -3\n"
                   "  shapes: [constant, wiggly]\n  dager: 2\n  base: keep\n")  # fmt: skip
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err  # the file is named as the CLI shows it, relative to the working directory or not
    assert f"{bad.name}:5:3: imitation.epochs: Input should be greater than or equal to 1" in err
    assert f"{bad.name}:6:22: imitation.shapes[1]: unknown schedule shape 'wiggly'" in err
    assert f"{bad.name}:7:3: imitation.dager: unknown key 'dager'" in err
    assert f"{bad.name}:8:" in err and "imitation.base: a residual base is a learning-rate schedule" in err
    with pytest.raises(SpecError, match="imitation.epochs"):
        load_spec(bad)
