"""lhopt train-level: PPO of a learned level on real inner runs, the network it trains, and its policy file."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from lhopt_dsl.agent.actor import Run
from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES, model_descriptor
from lhopt_dsl.agent.level import HoldLevel, LearnedLevel, LevelNet
from lhopt_dsl.agent.policy import PolicyFileError, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.residual import OFFSET_BOUNDS, Residual
from lhopt_dsl.controller import LHOPT, load_policy
from runners import level_train
from runners.level_train import FACTORS, LevelSettings, ppo_update, train_level

from .test_residual_ppo import BASE, OFFLINE, keeper, residual_spec

D = len(DESCRIPTOR_NAMES)
SMALL = tuple(model_descriptor([(8, 8)], 1000, 50))
BIG = tuple(model_descriptor([(512, 512)], 1000, 50))


def planted_net(small: float, big: float) -> LevelNet:
    """A level network that chooses ``small`` for models under 1,000 parameters and ``big`` above."""
    torch.manual_seed(0)
    net = LevelNet(D, len(FACTORS), hidden=4)
    at = DESCRIPTOR_NAMES.index("log_params")
    with torch.no_grad():
        net.mean[at] = math.log(1000.0)
        for layer in (net.body[0], net.body[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        net.body[0].weight[0, at] = 5.0
        net.body[2].weight[0, 0] = 5.0
        net.logits.weight[FACTORS.index(small), 0] = -10.0
        net.logits.weight[FACTORS.index(big), 0] = 10.0
    return net


def test_a_learned_level_holds_the_most_probable_factor_for_each_model_and_keeps_without_a_description():
    from .test_residual import LR_VALUES, SPACE, Scripted

    rule = LearnedLevel(FACTORS, planted_net(small=2.0, big=0.5), DESCRIPTOR_NAMES)
    assert rule.choose_runs([Run({}, 4, describe=SMALL), Run({}, 4, describe=BIG), Run({}, 4)]) == [2.0, 0.5, 1.0]
    actor = HoldLevel(Scripted([LR_VALUES.index(1.0)] * 4), SPACE, rule)
    carry = actor.start([Run({"lr": 1e-3}, 4, describe=SMALL), Run({"lr": 1e-3}, 4, describe=(math.nan,) * D)])
    for _ in range(3):
        _, carry = actor.act(carry, np.zeros((2, actor.policy_size)), [None] * 2, True)
    assert carry.offset == pytest.approx((2.0, 1.0))  # a non-finite description keeps
    again = LearnedLevel.from_data(rule.to_data())
    assert again.choose_runs([Run({}, 4, describe=SMALL), Run({}, 4, describe=BIG)]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="include 1"):
        LearnedLevel(FACTORS[1:], LevelNet(D, len(FACTORS) - 1), DESCRIPTOR_NAMES)
    with pytest.raises(ValueError, match="reads 12 inputs into 7 choices"):
        LearnedLevel(FACTORS[:3], LevelNet(D, len(FACTORS)), DESCRIPTOR_NAMES)


def _start_policy(tmp_path, spec):
    path = tmp_path / "start.pt"
    save_checkpoint({"policy": keeper(spec).to_checkpoint(), "spec": spec.model_dump(mode="json"),
                     "residual": {"base": BASE, "offset_bounds": list(OFFSET_BOUNDS)}}, path)  # fmt: skip
    return path


def _learned_file(tmp_path, spec, net, name="learned.pt"):
    state = load_checkpoint(_start_policy(tmp_path, spec))
    state["level"] = LearnedLevel(FACTORS, net, DESCRIPTOR_NAMES, {"note": "planted"}).to_data()
    path = tmp_path / name
    save_checkpoint(state, path)
    return path


def test_a_policy_file_with_a_learned_level_runs_in_the_dropin_and_acts_on_the_model(tmp_path):
    spec = residual_spec(tmp_path)
    path = _learned_file(tmp_path, spec, planted_net(small=4.0, big=0.25))
    policy, _ = load_policy(path)
    assert isinstance(policy, Residual) and isinstance(policy.inner.rule, LearnedLevel)
    torch.manual_seed(0)
    small = torch.nn.Linear(8, 8)  # 72 parameters: the planted rule's x4
    opt = LHOPT(small.parameters(), path, total_steps=200, outer_steps=20)
    keep = LHOPT(torch.nn.Linear(8, 8).parameters(), _start_policy(tmp_path, spec), total_steps=200, outer_steps=20)
    for o in (opt, keep):
        for _ in range(100):
            o.step()
    # the base's warm-up takes the learning-rate moves (x2 a decision at most) first; then the level is x4
    ratios = [h["lr"] / k["lr"] for h, k in zip(opt.history, keep.history)]
    assert ratios[0] == 1.0 and ratios[-1] == pytest.approx(4.0)


@pytest.mark.parametrize("mend, expect", [
    (lambda lv: lv["net"].__setitem__("mean", torch.zeros(3, dtype=torch.float64)), "['level']['net']['mean'] has shape [3]"),
    (lambda lv: lv["net"]["logits.weight"].__setitem__((0, 0), math.nan), "holds NaN"),
    (lambda lv: lv["net"]["scale"].__setitem__(0, 0.0), "not positive"),
    (lambda lv: lv["net"].pop("value.bias"), "lacks 'value.bias'"),
    (lambda lv: lv["net"].__setitem__("extra", torch.zeros(1)), "unknown tensor 'extra'"),
    (lambda lv: lv.__setitem__("hidden", 0), "['level']['hidden'] is 0"),
    (lambda lv: lv.__setitem__("factors", [0.5, 2.0, 4.0, 8.0, 0.25, 0.125, 3.0]), "lacks 1"),
])
def test_a_learned_level_that_does_not_fit_is_refused_by_name(tmp_path, mend, expect):
    spec = residual_spec(tmp_path)
    path = _learned_file(tmp_path, spec, planted_net(2.0, 0.5))
    state = load_checkpoint(path)
    mend(state["level"])
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(PolicyFileError, match=r"bad\.pt: .*" + __import__("re").escape(expect)):
        load_policy(tmp_path / "bad.pt")


def test_ppo_learns_a_planted_level_from_single_noisy_choices_and_not_from_noise_alone():
    """A bandit where the model's size says which factor pays: PPO's update, fed one sampled choice per
    episode with noise, comes to choose it; fed rewards that ignore the choice, it does not prefer one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, D))
    best = np.where(x[:, 0] > 0, FACTORS.index(2.0), FACTORS.index(0.5))
    settings = LevelSettings(hidden=16)

    def trained(signal: float) -> np.ndarray:
        torch.manual_seed(0)
        net = LevelNet(D, len(FACTORS), settings.hidden)
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        for it in range(8):
            rows = rng.integers(len(x), size=256)
            picks, logp, values = level_train.draw(net, x[rows], it)
            rewards = 1.0 + signal * (picks == best[rows]) + 0.1 * rng.normal(size=len(rows))
            ppo_update(net, opt, x[rows], picks, logp, values, rewards, settings, it)
        with torch.no_grad():
            return net(x)[0].argmax(1).numpy()

    assert np.mean(trained(0.3) == best) > 0.9
    null = trained(0.0)
    assert max(np.mean(null == k) for k in range(len(FACTORS))) < 0.9  # no choice taken over by noise


def test_train_level_runs_episodes_checkpoints_resumes_and_writes_a_policy_that_loads(tmp_path, capsys):
    spec = residual_spec(tmp_path)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    start = _start_policy(tmp_path, spec)
    run = tmp_path / "run"
    settings = LevelSettings(iterations=1, episodes=4, workers=1, run_dir=run, policy=start, tracking_uri=OFFLINE,
                             describe_draws=8, quiet=True, dev_every=1, dev_tasks=1,
                             storage=f"sqlite:///{tmp_path / 'baselines.db'}")  # fmt: skip
    with pytest.warns(UserWarning, match="tracking disabled"):
        path = train_level(str(spec_path), settings)
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(math.isfinite(r["reward"]) for r in rows)
    assert all(r["reward"] == 1.0 and r["test_loss"] == r["start_test_loss"] for r in rows if r["factor"] == 1.0)
    assert any(r["factor"] != 1.0 and r["test_loss"] != r["start_test_loss"] for r in rows)
    policy, _ = load_policy(path)
    assert isinstance(policy.inner.rule, LearnedLevel) and policy.inner.rule.fitted["episodes"] == 4
    # a new run in the same directory is refused; another recipe cannot resume it
    with pytest.raises(FileExistsError, match="--resume"):
        train_level(str(spec_path), settings)
    with pytest.raises(ValueError, match="recipe"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "episodes": 5}))
    # killed during its second iteration after two episodes: the resumed run reuses them and draws the rest
    ckpt = load_checkpoint(run / level_train.CHECKPOINT)
    net = LevelNet(D, len(FACTORS), settings.hidden)
    net.load_state_dict(ckpt["net"])
    x = level_train.descriptions(spec, level_train.FIRST_ITERATION + 1, 4)
    picks, _, _ = level_train.draw(net, x, spec.seed * 1_000_003 + 1)
    done = [level_train.episode((str(spec_path), str(start), level_train.FIRST_ITERATION + 1, s, FACTORS[picks[s]]))
            for s in range(2)]  # fmt: skip
    with (run / "episodes.jsonl").open("a") as f:
        for row in done:
            f.write(json.dumps({**row, "cpu_seconds": 1e6}) + "\n")  # marked: a rerun episode would not carry this
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "iterations": 2}))
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert [r["iteration"] - level_train.FIRST_ITERATION for r in rows] == [0] * 4 + [1] * 4
    assert sum(r["cpu_seconds"] == 1e6 for r in rows) == 2
    ckpt = load_checkpoint(run / level_train.CHECKPOINT)
    assert ckpt["iteration"] == 2 and ckpt["cpu_seconds"] > 2e6
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    # the learning curve: the start (which keeps), each iteration, once each; and its figure
    curve = [json.loads(line) for line in (run / "dev_curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [0, 1, 2] and all(c["dev/tasks"] == 1.0 for c in curve)
    assert (run / "learning_curve.png").stat().st_size > 0
    # killed after its last iteration but before that iteration's point: resumed, it makes the point and nothing else
    (run / "dev_curve.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve[:2]))
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "iterations": 2}))
    assert [json.loads(line)["step"] for line in (run / "dev_curve.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert len((run / "episodes.jsonl").read_text().splitlines()) == 8
    first, _ = load_policy(run / "dev" / "iter-000000" / "policy.pt")
    assert first.inner.rule.choose_runs([Run({}, 4, describe=SMALL), Run({}, 4, describe=BIG)]) == [1.0, 1.0]


def test_train_level_refuses_a_start_policy_that_does_not_fit_the_spec(tmp_path):
    spec = residual_spec(tmp_path)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    plain = tmp_path / "plain.pt"
    save_checkpoint({"policy": keeper(spec).to_checkpoint(), "spec": spec.model_dump(mode="json")}, plain)
    with pytest.raises(ValueError, match="not a residual policy"):
        train_level(str(spec_path), LevelSettings(policy=plain, run_dir=tmp_path / "r", tracking_uri=OFFLINE))


def test_the_episode_table_reads_mean_reward_and_count_per_family_and_level():
    rows = [{"family": "mlp", "factor": 2.0, "reward": 1.2}, {"family": "mlp", "factor": 2.0, "reward": 1.0},
            {"family": "rnn", "factor": 1.0, "reward": 1.0}]
    table = level_train.by_family(rows).splitlines()
    assert table[0].startswith("| family | x0.125 |") and len(table) == 4
    assert "1.100 (2)" in table[2] and table[3].count("-") == len(FACTORS) - 1


def _one_iteration(tmp_path, episodes):
    """A describing level run of one iteration in ``tmp_path / "run"``: (spec path, run dir, settings)."""
    spec = residual_spec(tmp_path)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    run = tmp_path / "run"
    settings = LevelSettings(iterations=1, episodes=episodes, workers=1, run_dir=run, policy=_start_policy(tmp_path, spec),
                             tracking_uri=OFFLINE, describe_draws=8, quiet=True, dev_every=0)  # fmt: skip
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), settings)
    return spec_path, run, settings


def test_a_level_run_from_before_observe_resumes(tmp_path):
    """Checkpoints written before train-level had --observe lack it in their recipe: they resume as describing runs."""
    spec_path, run, settings = _one_iteration(tmp_path, episodes=2)
    ckpt = load_checkpoint(run / level_train.CHECKPOINT)
    del ckpt["provenance"]["recipe"]["observe"], ckpt["provenance"]["start_level_sha256"]
    save_checkpoint(ckpt, run / level_train.CHECKPOINT)
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "iterations": 2}))
    assert load_checkpoint(run / level_train.CHECKPOINT)["iteration"] == 2
    with pytest.raises(ValueError, match="recipe"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "observe": True}))


def test_a_level_run_killed_in_its_first_iteration_resumes_from_its_provenance(tmp_path):
    """Killed before its first checkpoint: a new run in its directory is refused (it would mix its
    episodes with the old ones); --resume builds the same network from the spec's seed, reuses every
    episode and ends where the run would have; another recipe, or no provenance, is refused."""
    spec_path, run, settings = _one_iteration(tmp_path, episodes=3)
    whole = load_checkpoint(run / level_train.CHECKPOINT)
    (run / level_train.CHECKPOINT).unlink()
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    (run / "episodes.jsonl").write_text("".join(json.dumps({**r, "cpu_seconds": 1e6}) + "\n" for r in rows))
    with pytest.raises(FileExistsError, match="--resume"):
        train_level(str(spec_path), settings)
    with pytest.raises(ValueError, match="recipe"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True, "lr": 0.1}))
    with pytest.warns(UserWarning, match="tracking disabled"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True}))
    again = load_checkpoint(run / level_train.CHECKPOINT)
    assert len((run / "episodes.jsonl").read_text().splitlines()) == 3 and again["cpu_seconds"] == pytest.approx(3e6)
    assert all(torch.equal(again["net"][k], whole["net"][k]) for k in whole["net"])
    (run / level_train.CHECKPOINT).unlink()
    (run / level_train.RUN_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="level_run.json"):
        train_level(str(spec_path), LevelSettings(**{**settings.__dict__, "resume": True}))


def test_a_levels_standardisation_leaves_out_what_was_not_observed():
    net = LevelNet(3, len(FACTORS), hidden=4)
    x = np.array([[1.0, np.nan, np.nan], [3.0, 4.0, np.inf], [5.0, 8.0, np.nan]])
    net.standardise_by(x)
    assert net.mean.tolist() == pytest.approx([3.0, 6.0, 0.0]) and net.scale.tolist() == pytest.approx([math.sqrt(8 / 3), 2.0, 1.0])
