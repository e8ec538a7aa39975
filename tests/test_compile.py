"""The compiler: every family as a real torch task (learned_optimization-style smoke tests)."""

import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from lhopt_dsl import TaskConfig, load_spec, sample
from lhopt_dsl.spec import CIAOSpace
from lhopt_dsl.spec.sample import sample_initial_hparams
from lhopt_dsl.tasks import DataNotFoundError, compile_task, estimate_cost, find_file
from lhopt_dsl.tasks import datafiles
from lhopt_dsl.tasks.datasets import image_data, read_idx, sst2_data

from .conftest import SPECS

HP = sample_initial_hparams(CIAOSpace(), 0).model_dump()
COMMON = {"batch_size": 32, "inner_steps": 100, "outer_steps": 4}
SMALL_TASKS = {
    "mlp": {"family": "mlp", "dataset": "digits", "hidden": [32, 16], "activation": "prelu", "norm": "batch",
            "loss": "cross_entropy"},
    "mlp_huber": {"family": "mlp", "dataset": "digits", "hidden": [32], "activation": "elu", "norm": "layer",
                  "loss": "huber"},
    "mlp_mnist": {"family": "mlp", "dataset": "mnist", "hidden": [64], "activation": "very_leaky_relu",
                  "norm": "none", "loss": "mse"},
    "cnn": {"family": "cnn", "dataset": "digits", "channels": [8, 16], "kernel_size": 3, "pooling": "max",
            "activation": "relu", "norm": "batch"},
    "cnn_fashion": {"family": "cnn", "dataset": "fashion_mnist", "channels": [8], "kernel_size": 5,
                    "pooling": "stride", "activation": "leaky_relu", "norm": "layer"},
    "rnn_parity": {"family": "rnn", "task": "parity", "cell": "gru", "hidden_size": 32, "num_layers": 1, "seq_len": 8},
    "rnn_addition": {"family": "rnn", "task": "binary_addition", "cell": "lstm", "hidden_size": 32, "num_layers": 2,
                     "seq_len": 6},
    "text_rnn": {"family": "text_rnn", "dataset": "sst2", "cell": "lstm", "embed_dim": 32, "hidden_size": 32,
                 "num_layers": 1, "bidirectional": True, "max_len": 24, "vocab_size": 3000},
    "transformer": {"family": "transformer", "dataset": "copy", "d_model": 32, "num_layers": 2, "num_heads": 2,
                    "ff_mult": 2, "seq_len": 16, "norm_position": "pre", "positional": "learned"},
    "transformer_post": {"family": "transformer", "dataset": "sst2_chars", "d_model": 32, "num_layers": 1,
                         "num_heads": 4, "ff_mult": 1, "seq_len": 32, "norm_position": "post",
                         "positional": "sinusoidal"},
    "nqm": {"family": "nqm", "dim": 100, "spectrum_decay": 1.0, "noise_scale": 0.1},
    "regression": {"family": "regression", "inputs": 8, "target": "sine", "noise": 0.1, "examples": 512,
                   "hidden": [32], "activation": "tanh", "norm": "none", "loss": "mse"},
    "regression_teacher": {"family": "regression", "inputs": 20, "target": "teacher", "noise": 0.0, "examples": 256,
                           "hidden": [64, 32], "activation": "gelu", "norm": "layer", "loss": "huber"},
}  # fmt: skip


def make_cfg(name: str, seed: int = 0, **overrides) -> TaskConfig:
    task = {**SMALL_TASKS[name], **COMMON, **overrides}
    return TaskConfig.model_validate({"seed": seed, "task": task, "hparams": HP})


def train(task, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(task.params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.train_loss(task.next_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", SMALL_TASKS)
def test_smoke_family_trains(name):
    task = compile_task(make_cfg(name))
    loss = task.train_loss(task.next_batch())
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in task.model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"
    task.model.zero_grad()
    before = task.valid_loss()
    train(task, 80)
    after = task.valid_loss()
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before, (name, before, after)
    assert np.isfinite(task.test_loss())
    assert task.steps == 100 and task.outer_steps == 4 and task.num_params > 0


def test_sweep_default_spec_compiles_and_steps():
    spec = load_spec(SPECS / "default.yaml")
    families = set()
    for seed in range(100):
        cfg = sample(spec, seed)
        task = compile_task(cfg, max_valid=32, max_test=32)
        families.add(cfg.family)
        loss = task.train_loss(task.next_batch())
        loss.backward()
        assert torch.isfinite(loss), cfg.to_yaml()
        assert np.isfinite(task.valid_loss()), cfg.to_yaml()
    assert families == {"mlp", "cnn", "rnn", "text_rnn", "transformer", "nqm"}


@pytest.mark.parametrize("name", ["mlp", "cnn_fashion", "rnn_addition", "text_rnn", "transformer", "nqm", "regression"])
def test_same_config_same_weights_and_batches(name):
    cfg = make_cfg(name, seed=7)
    state = torch.get_rng_state()
    a, b = compile_task(cfg), compile_task(cfg)
    assert torch.equal(state, torch.get_rng_state()), "compiling must not touch the global RNG"
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for _ in range(3):
        for x, y in zip(a.next_batch(), b.next_batch()):
            assert torch.equal(x, y)
    c = compile_task(make_cfg(name, seed=8))
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))


def test_batch_order_depends_on_seed_and_covers_epochs():
    a, b = compile_task(make_cfg("mlp", seed=1)), compile_task(make_cfg("mlp", seed=2))
    assert not torch.equal(a.next_batch()[1], b.next_batch()[1])
    # Within an epoch, batches are consecutive slices of one permutation: no example repeats.
    x0, _ = a.next_batch()
    perm, (xs, _) = a.sampler.perm, a.sampler.tensors
    assert torch.equal(perm.sort().values, torch.arange(len(xs)))
    assert torch.equal(x0, xs[perm[32:64]])


def _row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x.flatten(1)}


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist"])
def test_image_splits_are_disjoint(dataset):
    data = image_data(dataset)
    train, valid, test = (_row_hashes(s.x) for s in (data.train, data.valid, data.test))
    assert not (train & valid) and not (valid & test)
    if dataset != "fashion_mnist":  # Fashion-MNIST's official splits share a few duplicate images
        assert not (train & test)
    assert len(data.train.x) > len(data.valid.x) > 0


def test_mnist_without_train_files_splits_the_test_set():
    data = image_data("mnist")
    assert [len(s.x) for s in (data.train, data.valid, data.test)] == [8000, 1000, 1000]
    assert data.train.x.shape[1:] == (1, 28, 28)
    assert abs(float(data.train.x.mean())) < 1e-3


def test_algorithmic_validation_set_is_fixed_and_distinct_from_training():
    task = compile_task(make_cfg("rnn_parity"))
    again = compile_task(make_cfg("rnn_parity"))
    assert torch.equal(task.valid_batches[0][0], again.valid_batches[0][0])
    assert not torch.equal(task.valid_batches[0][0][:32], task.next_batch()[0])
    x, y = task.valid_batches[0]
    assert torch.equal(y, x[..., 0].long().cumsum(1) % 2)


def test_binary_addition_targets_are_sums():
    task = compile_task(make_cfg("rnn_addition"))
    x, y = task.next_batch()
    weights = 2 ** torch.arange(x.shape[1])
    a, b = (x[..., 0].long() * weights).sum(1), (x[..., 1].long() * weights).sum(1)
    assert torch.equal((y * weights).sum(1), a + b)


def test_sst2_vocab_and_unknown_words():
    data = sst2_data(vocab_size=50, max_len=12)
    assert [len(s.x) for s in (data.train, data.valid, data.test)] == [6920, 872, 1821]
    assert int(data.train.x.max()) == 49
    assert (data.valid.x == 1).any(), "rare words map to <unk> = 1"
    assert data.train.x.shape == (6920, 12)


def test_idx_loader_on_generated_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    (tmp_path / "x.idx").write_bytes(header + images.tobytes())
    with gzip.open(tmp_path / "x.idx.gz", "wb") as f:
        f.write(header + images.tobytes())
    assert np.array_equal(read_idx(tmp_path / "x.idx"), images)
    assert np.array_equal(read_idx(tmp_path / "x.idx.gz"), images)
    ints = np.arange(6, dtype=">i4")
    (tmp_path / "i.idx").write_bytes(bytes([0, 0, 0x0C, 1]) + (6).to_bytes(4, "big") + ints.tobytes())
    assert read_idx(tmp_path / "i.idx").tolist() == list(range(6))
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="bytes follow"):
        read_idx(tmp_path / "short.idx")


def test_idx_files_read_through_the_image_loader(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "kmnist"
    folder.mkdir()
    for prefix, n in (("train", 6000), ("t10k", 100)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + arr.tobytes())
    data = image_data("kmnist", tmp_path)
    assert [len(s.x) for s in (data.train, data.valid, data.test)] == [1000, 5000, 100]


def test_missing_data_names_the_file_and_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LHOPT_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datafiles, "REMOTES", {})
    with pytest.raises(DataNotFoundError) as info:
        find_file("kmnist/t10k-images-idx3-ubyte.gz", tmp_path / "spec")
    msg = str(info.value)
    assert "kmnist/t10k-images-idx3-ubyte.gz" in msg
    for where in ("spec", "env", "cache"):
        assert str(tmp_path / where) in msg
    assert "LHOPT_DATA_DIR" in msg


@pytest.fixture
def local_mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_checks_the_checksum(tmp_path, monkeypatch, local_mirror):
    root, url = local_mirror
    monkeypatch.delenv("LHOPT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (root / "f.txt").write_bytes(b"real data")
    good = datafiles.Remote(url + "f.txt", sha256=hashlib.sha256(b"real data").hexdigest())
    bad = datafiles.Remote(url + "f.txt", md5="0" * 32)
    path = find_file("x/f.txt", remotes={"x/f.txt": good})
    assert path.read_bytes() == b"real data" and path.is_relative_to(tmp_path / "cache")
    with pytest.raises(DataNotFoundError, match="checksum mismatch"):
        find_file("y/f.txt", remotes={"y/f.txt": bad})
    assert not (tmp_path / "cache" / "lhopt" / "data" / "y" / "f.txt").exists()
    with pytest.raises(DataNotFoundError, match="failed"):
        find_file("z/f.txt", remotes={"z/f.txt": datafiles.Remote(url + "absent.txt")})


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_fashion", "rnn_addition", "text_rnn", "nqm", "regression_teacher"])
def test_cost_estimate_counts_the_real_parameters(name):
    cfg = make_cfg(name)
    cost = estimate_cost(cfg)
    assert cost.params == compile_task(cfg).num_params
    assert cost.flops_per_step > 0 and cost.flops_per_run > cost.flops_per_step * 100 - 1


def test_cost_grows_with_size():
    small, big = estimate_cost(make_cfg("mlp")), estimate_cost(make_cfg("mlp", hidden=[256, 256]))
    assert big.params > small.params and big.flops_per_step > small.flops_per_step
    longer = estimate_cost(make_cfg("mlp", inner_steps=200))
    assert longer.flops_per_run > small.flops_per_run


def test_budget_rejects_and_resamples(write):
    base = (SPECS / "families" / "mlp.yaml").read_text()
    text = "name: b\ntasks:\n  budget: {max_params: 20000}\n  families:\n    - " + base.replace("\n", "\n      ")
    spec = load_spec(write("b.yaml", text))
    for seed in range(15):
        assert estimate_cost(sample(spec, seed)).params <= 20000
    impossible = text.replace("max_params: 20000", "max_params: 5, max_tries: 3")
    with pytest.raises(ValueError, match="fits the budget"):
        sample(load_spec(write("c.yaml", impossible)), 0)


def test_closed_form_costs_agree_with_the_flop_counter():
    from lhopt_dsl.tasks.compiler import count_flops

    spec = load_spec(SPECS / "default.yaml")
    checked = set()
    for seed in range(60):
        cfg = sample(spec, seed)
        if cfg.family == "nqm":
            continue
        cost = estimate_cost(cfg)
        params, flops = count_flops(cfg.task)
        assert cost.params == params, cfg.to_yaml()
        # Recurrent closed forms are upper bounds within about 10% (text RNNs assume full-length sentences).
        assert 0.99 < cost.flops_per_step / flops < 1.15, (cfg.family, cost.flops_per_step / flops)
        checked.add(cfg.family)
    assert checked == {"mlp", "cnn", "rnn", "text_rnn", "transformer"}
