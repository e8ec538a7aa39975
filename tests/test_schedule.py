"""The one schedule type and its name grammar (lhopt_dsl.spec.schedule.Schedule)."""

import pytest

from lhopt_dsl.agent.residual import Follow
from lhopt_dsl.spec.hparams import CIAOSpace
from lhopt_dsl.spec.schedule import KEEP, SHAPES, Schedule, read_schedule_document
from lhopt_dsl.tasks.baselines import ADAMW_BASELINES, schedule_of


@pytest.mark.parametrize("name", ["adamw-linear-lr0.03", "adamw-cosine_0.1-lr0.0003", "ciao-constant",
                                  "ciao-multi_step", "linear-lr0.03", "cosine_0.1-lr1e-05", "keep"])  # fmt: skip
def test_every_name_the_project_uses_reads_back_as_written(name):
    assert Schedule.from_name(name).name == name


def test_the_baselines_and_followed_schedules_share_shapes_and_values():
    assert len(ADAMW_BASELINES) == 35 and all(schedule_of(n).name == n for n in ADAMW_BASELINES)
    baseline, followed = Schedule.from_name("adamw-linear-lr0.03"), Schedule.from_name("linear-lr0.03")
    assert (baseline.optimizer, followed.optimizer) == ("adamw", None)
    assert [baseline.at(p) for p in (0, 0.5, 0.9)] == [followed.at(p) for p in (0, 0.5, 0.9)] == pytest.approx([0.03, 0.015, 0.003])
    assert KEEP.at(0.5) is None and Schedule.from_name("keep") == KEEP
    assert {Schedule.from_name(f"{s}-lr0.1").shape for s in SHAPES} == set(SHAPES)


@pytest.mark.parametrize("name,message", [
    ("adamw-linear", "needs a learning rate"),
    ("ciao-linear-lr0.1", "takes no -lr"),
    ("linear-lrx", "unknown schedule"),
    ("linear-lr1e", "'1e' is not a learning rate"),
    ("linear-lr-1", "must be positive"),
    ("wavy-lr0.1", "unknown schedule 'wavy-lr0.1'"),
    ("linear-lr0", "must be positive"),
    ("cosine", "needs a learning rate"),
])  # fmt: skip
def test_a_bad_name_says_what_it_needs(name, message):
    with pytest.raises(ValueError, match=message):
        Schedule.from_name(name)


def test_a_baseline_is_not_a_schedule_a_policy_follows():
    with pytest.raises(ValueError, match="name it 'linear-lr0.03'"):
        Follow([Schedule.from_name("adamw-linear-lr0.03")], CIAOSpace())
    with pytest.raises(ValueError, match="unknown baseline 'linear-lr0.03'"):
        schedule_of("linear-lr0.03")


# --- the one serialised form: every kind round-trips; files of earlier versions still load ---------

TABLE = Schedule.tabulated([0.0, 0.25, 0.5], {"lr": [1e-3, 3e-3, 1e-4], "eps": [1e-8, 1e-7, 1e-8],
                                              "one_minus_beta2": [1e-3, 1e-2, 1e-3], "weight_decay": [0.0, 0.01, 0.1]},
                           "adamw")  # fmt: skip

#: A schedule file exactly as `lhopt schedule export` wrote it before schedule files had a format.
OLD_EXPORT = """\
meta:
  space: adamw
  policy: runs/smoke_adamw/policy.pt
  task_id: 0123456789abcdef
  outer_steps: 3
  final_valid_loss: 0.4213
  restarts: 0
schedule:
  progress:
  - 0.0
  - 0.25
  - 0.5
  lr:
  - 0.001
  - 0.003
  - 0.0001
  eps:
  - 1.0e-08
  - 1.0e-07
  - 1.0e-08
  one_minus_beta2:
  - 0.001
  - 0.01
  - 0.001
  weight_decay:
  - 0.0
  - 0.01
  - 0.1
"""


@pytest.mark.parametrize("schedule", [
    Schedule.from_name("adamw-cosine_0.1-lr0.0003"), Schedule.from_name("ciao-multi_step"),
    Schedule.from_name("linear-lr0.03"), KEEP, Schedule(lr=2e-3, shape="quadratic", weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6),
    TABLE, Schedule.tabulated([0.0, 0.5], {"lr": [0.1, 0.01], "one_minus_beta1": [0.1, 0.1]}, "ciao"),
    Schedule.tabulated([], {"lr": []}, "ciao"), Schedule.tabulated([0.0], {"lr": [1e-3]}),
], ids=lambda s: s.name)  # fmt: skip
def test_every_kind_of_schedule_round_trips_through_its_one_form(schedule, tmp_path):
    import json

    import yaml

    from lhopt_dsl.controller import read_schedule, save_schedule

    data = schedule.to_dict()
    assert Schedule.from_dict(json.loads(json.dumps(data))) == schedule
    assert Schedule.from_dict(yaml.safe_load(yaml.safe_dump(data))) == schedule
    save_schedule(schedule, tmp_path / "s.yaml", meta={"task_id": "t"})
    assert read_schedule(tmp_path / "s.yaml") == (schedule, {"task_id": "t"})
    for p in (0.0, 0.3, 0.5, 0.99, 1.0):
        assert Schedule.from_dict(data).values_at(p) == schedule.values_at(p)


def test_a_tabulated_schedule_is_a_step_lookup_over_progress():
    assert TABLE.is_table and TABLE.rows == 3 and TABLE.name.startswith("adamw-table-")
    assert [TABLE.at(p) for p in (0.0, 0.2, 0.25, 0.49, 0.5, 1.0)] == [1e-3, 1e-3, 3e-3, 3e-3, 1e-4, 1e-4]
    assert TABLE.values_at(0.3) == {"lr": 3e-3, "eps": 1e-7, "one_minus_beta2": 1e-2, "weight_decay": 0.01}
    other = Schedule.tabulated([0.0, 0.25, 0.5], {**dict(TABLE.columns), "lr": [1e-3, 3e-3, 2e-4]}, "adamw")
    assert other.name != TABLE.name  # the name identifies the rows
    with pytest.raises(ValueError, match="read from its file"):
        Schedule.from_name(TABLE.name)
    with pytest.raises(ValueError, match="increasing progress"):
        Schedule.tabulated([0.5, 0.1], {"lr": [1, 2]})
    with pytest.raises(ValueError, match="a value per row"):
        Schedule.tabulated([0.0, 0.1], {"lr": [1.0]})
    with pytest.raises(ValueError, match="'lr' column"):
        Schedule.tabulated([0.0], {"eps": [1.0]})
    with pytest.raises(ValueError, match="unknown schedule optimizer 'sgd'"):
        Schedule.tabulated([0.0], {"lr": [1.0]}, "sgd")


def test_an_exported_file_of_the_old_column_format_still_loads_and_replays(tmp_path):
    import torch
    import yaml

    from lhopt_dsl.controller import ScheduleReplay, load_schedule, read_schedule, save_schedule

    old = tmp_path / "old.yaml"
    old.write_text(OLD_EXPORT)
    schedule, meta = read_schedule(old)
    assert schedule == TABLE  # the space recorded in the old metadata is the schedule's optimizer
    assert meta == {"policy": "runs/smoke_adamw/policy.pt", "task_id": "0123456789abcdef", "outer_steps": 3,
                    "final_valid_loss": 0.4213, "restarts": 0}  # fmt: skip
    seen = {}
    for source in (old, str(old), yaml.safe_load(OLD_EXPORT), schedule):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p])
        replay = ScheduleReplay(opt, source, total_steps=8)
        lrs = []
        for _ in range(8):
            lrs.append(opt.param_groups[0]["lr"])
            replay.step()
        seen[type(source).__name__] = (lrs, replay.state_dict())
    assert seen["Schedule"][0] == [1e-3, 1e-3, 3e-3, 3e-3, 1e-4, 1e-4, 1e-4, 1e-4]
    assert all(v == seen["Schedule"] for v in seen.values())  # the same replay and the same state from each
    save_schedule(load_schedule(old), tmp_path / "new.yaml", meta=meta)  # re-saved in the one form
    new = yaml.safe_load((tmp_path / "new.yaml").read_text())
    assert new["format"] == "lhopt-schedule" and new["version"] == 1 and new["schedule"]["kind"] == "table"
    assert read_schedule(tmp_path / "new.yaml") == (schedule, meta)
    bare = yaml.safe_load(OLD_EXPORT)["schedule"]  # the columns alone: no space recorded
    assert read_schedule_document(bare)[0].optimizer is None


@pytest.mark.parametrize("data,message", [
    ({"format": "lhopt-schedule", "version": 2, "schedule": TABLE.to_dict()}, "version 2.*`lhopt schedule export`"),
    ({"format": "something-else", "version": 1}, "not a schedule file"),
    ({"format": "lhopt-schedule", "version": 1, "schedule": {"kind": "wavy"}}, "kind 'wavy'"),
    ({"format": "lhopt-schedule", "version": 1, "schedule": {**TABLE.to_dict(), "lr": ["a", 1, 2]}}, "column lr"),
    ({"kind": "shape", "optimizer": "adamw", "lr": 0.1, "shape": "linear", "momentum": 0.9}, "unknown field.*momentum"),
    ({"kind": "shape", "optimizer": "adamw", "lr": -1.0, "shape": "linear"}, "must be positive"),
    ({"schedule": {"progress": [0.0]}}, "not a schedule .needs 'progress' and 'lr'"),
])  # fmt: skip
def test_a_bad_schedule_document_says_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        read_schedule_document(data, "f.yaml")
