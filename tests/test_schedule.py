"""The one schedule type and its name grammar (lhopt_dsl.spec.schedule.Schedule)."""

import pytest

from lhopt_dsl.agent.residual import Follow
from lhopt_dsl.spec.hparams import CIAOSpace
from lhopt_dsl.spec.schedule import KEEP, SHAPES, Schedule
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
