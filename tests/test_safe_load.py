"""Policies and training checkpoints are data: loading one runs no code from it.

A pickled object's ``__reduce__`` names a callable that a full unpickler calls while loading; the
payload below writes a marker file, so "no code ran" is checked by the marker never appearing.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lhopt_dsl import load_spec
from lhopt_dsl.controller import DEFAULT_POLICY, LHOPT, load_policy
from lhopt_dsl.policy import (
    ActorCritic,
    UnsafeCheckpointError,
    convert_legacy_checkpoint,
    load_checkpoint,
    save_checkpoint,
    to_plain,
)
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
    assert str(path) in message and "as a policy" in message and "`exec`" in message, message
    assert "arbitrary code" in message and "convert_legacy_checkpoint" in message and "do not convert" in message
    with pytest.raises(UnsafeCheckpointError):
        load_policy(path)  # what the pyfunc model and `--policy models:/...` call once MLflow has the file
    assert not marker.exists()


def test_a_training_checkpoint_carrying_a_pickle_payload_is_refused_on_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    state = {"iteration": 1, **_policy_state(), "torch_rng": torch.get_rng_state(), "history": [], "run_id": None}
    path, marker = _armed(run, state, "checkpoint.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"was not loaded as a training checkpoint") as e:
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
    convert_legacy_checkpoint(path)
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
