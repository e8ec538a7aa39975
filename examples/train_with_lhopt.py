"""Train an ordinary PyTorch model with the LHOPT drop-in optimizer, next to AdamW.

    python examples/train_with_lhopt.py [--steps 600] [--policy path/to/policy.pt]

The model is a small MLP on scikit-learn's bundled 8x8 digits (no download). The optimizer only
needs what any training loop has: ``step()`` after ``backward()``, and ``observe()`` with the
training loss and, now and then, the validation loss.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from lhopt_dsl import LHOPT


def data():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    return (x[perm[:1400]], y[perm[:1400]]), (x[perm[1400:]], y[perm[1400:]])


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def train(opt_name: str, steps: int, policy: str | None) -> float:
    (xt, yt), (xv, yv) = data()
    net = model()
    if opt_name == "lhopt":
        opt = LHOPT(net.parameters(), policy=policy, total_steps=steps, model=net)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=g)
        loss = F.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        if opt_name == "lhopt":
            opt.observe(train_loss=loss.item())  # before step(): the policy's statistics use it
            if step % 50 == 0:
                with torch.no_grad():
                    opt.observe(valid_loss=F.cross_entropy(net(xv), yv).item())
        opt.step()
    with torch.no_grad():
        valid = F.cross_entropy(net(xv), yv).item()
    if opt_name == "lhopt":
        print(f"  the policy acted {opt.decisions} times; final lr {opt.param_groups[0]['lr']:.3g}")
    return valid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--policy", help="policy checkpoint (default: the one shipped with lhopt)")
    args = ap.parse_args()
    for name in ("adamw", "lhopt"):
        print(f"{name}: final validation loss {train(name, args.steps, args.policy):.4f}")


if __name__ == "__main__":
    main()
