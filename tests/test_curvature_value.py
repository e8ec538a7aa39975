"""bench/curvature_value.py: sharpness probes at a residual policy's decisions, against held offsets."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from lhopt_dsl.optim import CIAO

from .test_residual_ppo import residual_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import curvature_value  # noqa: E402
import held_value  # noqa: E402


def _matrix_hvp(m: torch.Tensor):
    return lambda v: [m @ v[0]]


@pytest.mark.parametrize("diagonal, top", [([5.0, 1.0, -2.0], 5.0), ([3.0, -5.0, 1.0], 3.0), ([-1.0, -4.0], -1.0),
                                           ([5.0, -5.0, 1.0], 5.0), ([0.0, 0.0], 0.0)])
def test_top_eigenvalue_is_the_largest_not_the_largest_in_magnitude(diagonal, top):
    q, _ = torch.linalg.qr(torch.randn(len(diagonal), len(diagonal), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))  # fmt: skip
    m = q @ torch.diag(torch.tensor(diagonal, dtype=torch.float64)) @ q.T
    got = curvature_value.top_eigenvalue(_matrix_hvp(m), [torch.zeros(len(diagonal), dtype=torch.float64)], iterations=200)
    assert got == pytest.approx(top, rel=1e-4, abs=1e-9)
    # a positive and a negative eigenvalue of the same size, at the default iterations: not mixed into their mean
    if diagonal == [5.0, -5.0, 1.0]:
        assert curvature_value.top_eigenvalue(_matrix_hvp(m), [torch.zeros(3, dtype=torch.float64)]) == pytest.approx(5.0, rel=0.05)


def test_the_probe_measures_a_known_hessian_and_leaves_the_model_as_it_was():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, generator=gen), torch.randn(64, 1, generator=gen)
    torch.manual_seed(0)  # the weights set the preconditioner: on about 1 in 12 draws its top two eigenvalues crowd
    model = torch.nn.Linear(3, 1, bias=False)  # and 20 power iterations stop short of 1e-3 (a known limit of the probe)
    model.train()
    task = SimpleNamespace(model=model, params=list(model.parameters()), valid_batches=[(x, y)],
                           loss_fn=lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).mean())  # fmt: skip
    optimizer = CIAO(task.params, lr=0.1)
    before = torch.get_rng_state()
    got = curvature_value.probe(task, optimizer)
    hessian = 2.0 * (x.T @ x).double().numpy() / len(x)  # of mean squared error in the weights
    assert got["sharpness"] == pytest.approx(np.linalg.eigvalsh(hessian).max(), rel=1e-3)
    # before any step the preconditioner is |g| of the batch (plus eps): D H D with D = (|g| + eps)^-1/2
    with torch.enable_grad():
        g = torch.autograd.grad(task.loss_fn(model, (x, y)), task.params)[0].abs().double().numpy().ravel()
    d = np.diag((g + optimizer.param_groups[0]["eps"]) ** -0.5)
    assert got["precond_sharpness"] == pytest.approx(np.linalg.eigvalsh(d @ hessian @ d).max(), rel=1e-3)
    assert got["lr"] == 0.1 and model.training and model.weight.grad is None
    assert torch.equal(torch.get_rng_state(), before)
    adam = CIAO(task.params, lr=0.1, denominator="adam")
    with pytest.raises(ValueError, match="Adamax denominator"):
        curvature_value.probe(task, adam)


def test_probed_runs_are_the_held_runs_and_the_report_reads_them(tmp_path):
    spec = residual_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    held = held_value.task_holds((str(path), 0, 0))
    probed = curvature_value.task_probes((str(path), 0, 0, held["schedule_valid_curve"]))
    assert probed["same_run"]  # probing changed nothing in the run
    assert set(probed["probes"]) == {str(at) for at in held["points"].values()}
    assert all(np.isfinite([p["sharpness"], p["precond_sharpness"]]).all() for p in probed["probes"].values())
    held["task_id"] = probed["task_id"]
    text = curvature_value.report([held] * 8, {held["task_id"]: probed}, spec.meta_train.reward_cap, permutations=3)
    assert "WARNING" not in text and "From segment 1 (8 tasks probed)" in text
    other = dict(held, schedule_valid_curve=[v * 1.01 for v in held["schedule_valid_curve"]])
    assert not curvature_value.task_probes((str(path), 0, 0, other["schedule_valid_curve"]))["same_run"]


def test_the_stability_rule_earns_a_planted_law_and_keeps_without_a_probe():
    rng = np.random.default_rng(0)
    n = 40
    best = rng.integers(0, len(held_value.FACTORS), size=n)  # each task's best held factor
    rewards = np.full((n, len(held_value.FACTORS)), 0.9)
    rewards[np.arange(n), best] = 1.3
    log_lr_sharp = np.log(0.7) - np.log(np.array(held_value.FACTORS)[best])  # factor = 0.7 / (lr * sharpness)
    assert curvature_value.stability_rule(log_lr_sharp, rewards).tolist() == pytest.approx([1.3] * n)
    shuffled = curvature_value.stability_rule(rng.permutation(log_lr_sharp), rewards)
    assert shuffled.mean() < 1.1
    assert curvature_value.stability_rule(np.full(n, np.nan), rewards).tolist() == [1.0] * n


def test_a_lone_vector_batch_is_one_example_and_used_whole():
    """NQM's batch is one noise draw as long as the parameters: cutting it to PROBE_ROWS would break the loss."""

    class Quadratic(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.h = torch.cat([torch.linspace(0.1, 1.0, n - 1), torch.tensor([3.0])])  # a top eigenvalue apart
            self.theta = torch.nn.Parameter(torch.ones(n))

        def forward(self, noise):
            return 0.5 * (self.h * self.theta.square()).sum() + (noise * self.theta).sum()

    n = curvature_value.PROBE_ROWS + 44
    model = Quadratic(n)
    task = SimpleNamespace(model=model, params=list(model.parameters()), valid_batches=[(torch.randn(n),)],
                           loss_fn=lambda m, batch: m(batch[0]))  # fmt: skip
    got = curvature_value.probe(task, CIAO(task.params, lr=0.1))
    assert got["sharpness"] == pytest.approx(3.0, rel=1e-3)  # the Hessian is diag(h)
