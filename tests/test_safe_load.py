"""Policies and training checkpoints are data: loading one runs no code from it.

A pickled object's ``__reduce__`` names a callable that a full unpickler calls while loading; the
payload below writes a marker file, so "no code ran" is checked by the marker never appearing.
"""

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lhopt_dsl import load_spec
from lhopt_dsl.agent.policy import (
    ActorCritic,
    PolicyFileError,
    UnsafeCheckpointError,
    convert_legacy_checkpoint,
    load_checkpoint,
    save_checkpoint,
    to_plain,
)
from lhopt_dsl.controller import DEFAULT_POLICY, LHOPT, load_policy
from runners.meta_train import Settings, policy_shape, train

from .conftest import SPECS

SMOKE = load_spec(SPECS / "smoke.yaml")
OFFLINE = "http://127.0.0.1:9"  # nothing listens there: tracking is skipped quickly


class Payload:
    """Unpickled by a full unpickler, this writes ``marker``: what a malicious policy could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _policy_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = ActorCritic(policy_shape(SMOKE))
    model.policy_norm(np.random.default_rng(seed).normal(size=(4, model.shape.policy_size)))
    return to_plain({"policy": model.to_checkpoint(), "spec": SMOKE.model_dump(mode="json")})


def _armed(tmp_path: Path, state: dict, name: str) -> tuple[Path, Path]:
    """``state`` saved with a payload in it, and the marker the payload would write.

    The same bytes loaded with the full unpickler do write a marker (elsewhere): the payload is live,
    so its marker staying absent below means the loader refused it, not that it was harmless.
    """
    marker = tmp_path / f"{name}.marker"
    path = tmp_path / name
    torch.save(state | {"extra": Payload(marker)}, path)
    live = tmp_path / "live.marker"
    torch.save({"extra": Payload(live)}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.read_text() == "code ran"
    return path, marker


def test_a_policy_carrying_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    path, marker = _armed(tmp_path, _policy_state(), "policy.pt")
    net = torch.nn.Linear(3, 1)
    with pytest.raises(UnsafeCheckpointError) as e:
        LHOPT(net.parameters(), policy=path, total_steps=8)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "as a policy" in message and "`exec`" in message, message
    # the conversion would refuse this file too, so the message does not advise it
    assert "arbitrary code" in message and "convert_legacy_checkpoint" not in message and "cannot be converted" in message
    with pytest.raises(UnsafeCheckpointError):
        load_policy(path)  # what the pyfunc model and `--policy models:/...` call once MLflow has the file
    with pytest.raises(UnsafeCheckpointError, match=r"not converted: it refers to `exec`"):
        convert_legacy_checkpoint(path)  # following the old advice anyway runs nothing either
    assert not marker.exists()


def test_a_training_checkpoint_carrying_a_pickle_payload_is_refused_on_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    state = {"iteration": 1, **_policy_state(), "torch_rng": torch.get_rng_state(), "history": [], "run_id": None}
    path, marker = _armed(run, state, "checkpoint.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"not loaded as a training checkpoint") as e:
        train(SMOKE, Settings(iterations=2, workers=0, resume=True, tracking_uri=OFFLINE, run_dir=run, quiet=True))
    assert str(path) in str(e.value)
    assert not marker.exists()
    assert not (run / "metrics.jsonl").exists()  # refused before anything ran


def test_non_plain_values_that_torch_would_build_are_refused_too(tmp_path):
    """torch's restricted unpickler builds a few objects besides tensors (devices, dtypes, sizes);
    they run no code, but a policy or checkpoint never holds them, so a file that does is not one."""
    path = tmp_path / "odd.pt"
    torch.save({**_policy_state(), "device": torch.device("cpu")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.device at \['device'\]"):
        load_policy(path)


def test_a_policy_saved_by_an_older_lhopt_is_refused_with_a_way_to_convert_it(tmp_path):
    """Older versions saved the normalisers' numpy arrays as pickled objects."""
    state = _policy_state()
    legacy = {**state, "policy": {**state["policy"]}}
    for norm in ("policy_norm", "value_norm"):
        legacy["policy"][norm] = {k: v.numpy() if torch.is_tensor(v) else v for k, v in state["policy"][norm].items()}
    path = tmp_path / "old.pt"
    torch.save(legacy, path)
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)numpy.*older lhopt.*convert_legacy_checkpoint"):
        load_policy(path)
    convert_legacy_checkpoint(path)  # an allow-list of numpy's array constructors: no full unpickler
    policy, _ = load_policy(path)
    fresh = ActorCritic.from_checkpoint(state["policy"])
    x = np.random.default_rng(1).normal(size=(3, fresh.shape.policy_size))
    assert np.array_equal(policy.policy_norm(x, update=False), fresh.policy_norm(x, update=False))


def test_the_shipped_default_policy_is_plain_data():
    state = torch.load(DEFAULT_POLICY, weights_only=True)  # torch's own restricted loader, no help from ours
    assert load_checkpoint(DEFAULT_POLICY)["spec"] == state["spec"]
    policy, space = load_policy(None)
    assert space.space == "ciao" and policy.kind == "residual" and policy.inner.shape.hidden_size == 64


def test_a_policy_round_trips_through_a_file(tmp_path):
    state = _policy_state(seed=3)
    path = tmp_path / "policy.pt"
    save_checkpoint(state, path)
    policy, space = load_policy(path)
    assert space.space == SMOKE.hparams.space
    model = ActorCritic.from_checkpoint(state["policy"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, policy.state_dict()[k]), k
    x = np.random.default_rng(2).normal(size=(3, model.shape.policy_size))
    assert np.array_equal(policy.policy_norm(x, update=False), model.policy_norm(x, update=False))
    net = torch.nn.Linear(3, 1)
    LHOPT(net.parameters(), policy=path, total_steps=8)


def test_a_training_checkpoint_round_trips_and_restores_optimizer_and_rng(tmp_path):
    """What resuming needs: optimizer state, the RNG state, history; and the values a checkpoint
    may be handed that are not plain (numpy, paths, tuples, pydantic models) come back as plain data."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-5)
    net(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    rng = torch.get_rng_state()
    path = tmp_path / "checkpoint.pt"
    extras = {"mean": np.float64(0.5), "where": tmp_path, "shape": torch.Size([2, 3]), "pair": (1, 2.0),
              "spec": SMOKE.hparams, "history": [{"iteration": 1, "reward/mean": float("nan")}]}  # fmt: skip
    save_checkpoint({"optimizer": opt.state_dict(), "weights": net.state_dict(), "torch_rng": rng, **extras}, path)
    state = load_checkpoint(path, "training checkpoint")
    assert state["mean"] == 0.5 and type(state["mean"]) is float and state["where"] == str(tmp_path)
    assert state["shape"] == [2, 3] and state["pair"] == [1, 2.0]
    assert state["spec"] == SMOKE.hparams.model_dump(mode="json") and np.isnan(state["history"][0]["reward/mean"])
    assert torch.equal(state["torch_rng"], rng)
    expected = torch.rand(5)
    torch.set_rng_state(state["torch_rng"])
    assert torch.equal(torch.rand(5), expected)

    def step(n: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        n(torch.ones(8, 4)).square().mean().backward()
        o.step()

    again = torch.nn.Linear(4, 2)
    again.load_state_dict(state["weights"])
    opt2 = torch.optim.Adam(again.parameters(), lr=1e-2, eps=1e-5)
    opt2.load_state_dict(state["optimizer"])
    step(net, opt), step(again, opt2)
    for a, b in zip(net.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_saving_refuses_what_loading_would_refuse(tmp_path):
    with pytest.raises(TypeError, match=r"cannot save a .*Payload at \['x'\]"):
        save_checkpoint({"x": Payload(tmp_path / "never")}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(TypeError, match="numpy array of Python objects"):
        to_plain(np.array([object()]))
    assert pickle.loads(pickle.dumps(to_plain({"a": (np.int64(1),)}))) == {"a": [1]}


# --- files checked before use ----------------------------------------------------------------------


def test_a_legacy_file_carrying_a_payload_is_neither_advised_nor_converted(tmp_path):
    """numpy arrays as an older lhopt saved them, plus an object that runs code: the conversion's
    allow-list admits the arrays only, so the file is refused and the advice to convert withheld."""
    state = _policy_state()
    legacy = {**state, "policy": {**state["policy"], "policy_norm": {
        k: v.numpy() if torch.is_tensor(v) else v for k, v in state["policy"]["policy_norm"].items()}}}  # fmt: skip
    path, marker = _armed(tmp_path, legacy, "old.pt")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_policy(path)
    assert "convert_legacy_checkpoint" not in str(e.value) and "cannot be converted" in str(e.value)
    with pytest.raises(UnsafeCheckpointError, match=r"not converted: it refers to `exec`"):
        convert_legacy_checkpoint(path, tmp_path / "converted.pt")
    assert not marker.exists() and not (tmp_path / "converted.pt").exists()


def _weights(state: dict) -> dict:
    return state["policy"]["weights"]


def _corrupt(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A policy file broken in one way, and a fragment of the message that must name what is wrong."""
    import copy
    import json
    import random

    path = tmp_path / f"{kind}.pt"
    good = _policy_state()
    state = copy.deepcopy(good)
    raw = None
    if kind == "empty":
        raw, expect = b"", "the file is empty"
    elif kind == "truncated zip":
        save_checkpoint(good, path)
        raw, expect = path.read_bytes()[:5000], "truncated or corrupted"
    elif kind == "random bytes":
        raw, expect = random.Random(0).randbytes(4000), "torch cannot read it"
    elif kind == "json":
        raw, expect = json.dumps({"policy": {"shape": {}}}).encode(), "torch cannot read it"
    elif kind == "a list":
        state, expect = [1, 2, 3], "the file's data is a list, not a mapping"
    elif kind == "no policy":
        state, expect = {"spec": good["spec"]}, "the file's data lacks 'policy'"
    elif kind == "no weights":
        del state["policy"]["weights"]
        expect = "['policy'] lacks 'weights'"
    elif kind == "missing tensor":
        del _weights(state)["actor.head.bias"]
        expect = "['policy']['weights'] lacks 'actor.head.bias'"
    elif kind == "NaN weights":
        _weights(state)["actor.head.bias"][0] = float("nan")
        expect = "['policy']['weights']['actor.head.bias'] holds NaN values"
    elif kind == "infinite statistics":
        state["policy"]["policy_norm"]["mean"][3] = float("inf")
        expect = "['policy']['policy_norm']['mean'] holds infinite values"
    elif kind == "huge hidden_size":  # a few hundred KB that would ask for gigabytes
        state["policy"]["shape"]["hidden_size"] = 2_000_000
        expect = "['policy']['shape']['hidden_size'] is 2000000, outside 1..8,192"
    elif kind == "boolean layers":
        state["policy"]["shape"]["num_layers"] = True
        expect = "['policy']['shape']['num_layers'] is True, not an integer"
    elif kind == "shape mismatch":
        state["policy"]["shape"]["hidden_size"] = 2 * good["policy"]["shape"]["hidden_size"]
        expect = "has shape"
    elif kind == "zero-stride tensor":  # one stored number standing for a whole matrix
        w = _weights(state)["actor.lstm.weight_hh_l0"]
        _weights(state)["actor.lstm.weight_hh_l0"] = torch.zeros(1).expand(w.shape)
        expect = "not a plain tensor whose values the file holds"
    elif kind == "integer weights":
        _weights(state)["actor.head.bias"] = _weights(state)["actor.head.bias"].long()
        expect = "holds torch.int64 values, not floating point"
    elif kind == "unknown space":
        state["spec"]["hparams"] = {"space": "sgd"}
        expect = "['spec']['hparams']"
    elif kind == "unknown residual base":
        state["residual"] = {"base": "zigzag-lr9"}
        expect = "['residual']['base'] 'zigzag-lr9' is not a schedule"
    elif kind == "bad ensemble member":
        member = copy.deepcopy(good["policy"])
        member["weights"]["critic.head.weight"][0, 0] = float("nan")
        state["policy"] = {"members": [good["policy"], member]}
        expect = "['policy']['members'][1]['weights']['critic.head.weight'] holds NaN"
    else:
        raise AssertionError(kind)
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(state, path)  # torch's own writer: these files are what a careless or hostile tool makes
    return path, expect


CORRUPT = ["empty", "truncated zip", "random bytes", "json", "a list", "no policy", "no weights", "missing tensor",
           "NaN weights", "infinite statistics", "huge hidden_size", "boolean layers", "shape mismatch",
           "zero-stride tensor", "integer weights", "unknown space", "unknown residual base", "bad ensemble member"]


@pytest.mark.parametrize("kind", CORRUPT)
def test_a_broken_policy_file_is_one_error_naming_the_file_and_what_is_wrong(tmp_path, kind):
    path, expect = _corrupt(kind, tmp_path)
    net = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError) as e:
        LHOPT(net.parameters(), policy=path, total_steps=8)
    assert isinstance(e.value, PolicyFileError)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and expect in message, message
    assert "\n" not in message and len(message) < 400, message
    with pytest.raises(PolicyFileError, match=re.escape(expect)):
        load_policy(path)


def test_a_declared_network_is_not_allocated_before_its_tensors_match(tmp_path):
    """Within the bounds, a shape that the file's tensors do not match is refused from the shapes
    alone: a 4 x 4096 LSTM pair (about 4 GB) is never built to find out."""
    import resource

    state = _policy_state()
    state["policy"]["shape"].update(hidden_size=4096, num_layers=4)
    path = tmp_path / "big.pt"
    torch.save(state, path)
    assert path.stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(PolicyFileError, match=r"lacks 'actor.lstm.weight_ih_l1'"):
        load_policy(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000


def test_a_broken_training_checkpoint_is_refused_before_resuming(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = {"iteration": 1, **_policy_state(), "torch_rng": torch.get_rng_state(), "history": [], "run_id": None}
    model = ActorCritic.from_checkpoint(good["policy"])
    good["ema"] = to_plain(model.to_checkpoint())
    good["optimizer"] = torch.optim.Adam(model.parameters()).state_dict()
    from lhopt_dsl.agent.policy_file import load_training_checkpoint

    save_checkpoint(good, run / "checkpoint.pt")
    assert load_training_checkpoint(run / "checkpoint.pt")["iteration"] == 1
    cases = {
        "['ema']['weights']['actor.head.bias'] holds NaN": lambda s: s["ema"]["weights"]["actor.head.bias"].fill_(math.nan),
        "['torch_rng'] is not a valid random generator state": lambda s: s.update(torch_rng=torch.zeros(7, dtype=torch.uint8)),
        "['optimizer'] has state for 0 parameters": lambda s: s["optimizer"].update(param_groups=[{"params": []}]),
        "['iteration'] is -1, outside": lambda s: s.update(iteration=-1),
    }  # fmt: skip
    for expect, corrupt in cases.items():
        import copy

        state = copy.deepcopy(good)
        corrupt(state)
        torch.save(state, run / "checkpoint.pt")
        with pytest.raises(PolicyFileError, match=re.escape(expect)) as e:
            train(SMOKE, Settings(iterations=2, workers=0, resume=True, tracking_uri=OFFLINE, run_dir=run, quiet=True))
        assert str(e.value).startswith(f"{run / 'checkpoint.pt'}: ")
        assert not (run / "metrics.jsonl").exists()  # refused before anything ran


def _cli_cases(bad: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that reads a policy file, given ``bad``; each must refuse it up front."""
    spec, offline = str(SPECS / "smoke.yaml"), ["--tracking-uri", OFFLINE]
    task = tmp_path / "task.yaml"
    task.write_text(sample_yaml())
    run_dir = tmp_path / "resume"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "checkpoint.pt").write_bytes(bad.read_bytes())
    sound = tmp_path / "sound.pt"
    save_checkpoint(_policy_state(), sound)
    return {
        "eval": ["eval", spec, "--policy", str(bad), "--tasks", "1", "--out", str(tmp_path / "eval"), *offline],
        "train --init": ["train", spec, "--init", str(bad), "--iterations", "1", "--run-dir", str(tmp_path / "t"),
                         *offline],
        "train --resume": ["train", spec, "--resume", "--iterations", "2", "--run-dir", str(run_dir), *offline],
        "schedule export": ["schedule", "export", "--policy", str(bad), "--task", str(task), "-o",
                            str(tmp_path / "s.yaml")],
        "schedule transfer": ["schedule", "transfer", "--policy", str(bad), "--small", str(task), "--large", str(task),
                              "--storage", f"sqlite:///{tmp_path / 'grid.db'}"],
        "ensemble": ["ensemble", str(sound), str(bad), "-o", str(tmp_path / "ens.pt")],
        "check-dropin": ["check-dropin", "--policy", str(bad), "--programs", "regression", "--seeds", "1",
                         "--steps", "2", "--out", str(tmp_path / "dropin")],
        "eval-ood": ["eval-ood", "--policy", str(bad), "--programs", "fashion_autoencoder", "--out",
                     str(tmp_path / "ood"), "--no-cache", *offline],
    }  # fmt: skip


def sample_yaml() -> str:
    from lhopt_dsl import sample

    return sample(SMOKE, 0).to_yaml()


@pytest.mark.parametrize("kind", ["NaN weights", "truncated zip", "pickle payload"])
def test_every_command_that_reads_a_policy_refuses_a_broken_one_with_exit_2(tmp_path, capsys, kind):
    from runners.cli import main

    if kind == "pickle payload":
        bad, marker = _armed(tmp_path, _policy_state(), "armed.pt")
        expect = "it refers to `exec`"
    else:
        (bad, expect), marker = _corrupt(kind, tmp_path), tmp_path / "no-payload"
    for command, argv in _cli_cases(bad, tmp_path).items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        named, what = str(bad), expect
        if command == "train --resume":  # a policy is not a whole training checkpoint, even a sound one
            named = str(tmp_path / "resume" / "checkpoint.pt")
            what = "lacks 'iteration'" if kind == "NaN weights" else expect
        assert f"error: {named}: " in err and what in err, (command, err)
        assert "Traceback" not in err, (command, err)
    assert not marker.exists()
