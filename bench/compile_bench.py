"""Per family: compile time and inner training steps per second for typical sampled tasks.

    python bench/compile_bench.py [--spec task_specs/default.yaml] [--device cpu] [--per-family 3]

Typical tasks are the first samples of each family from the spec (seeds 0, 1, 2, ...). Each task
is compiled twice (the first compile of a dataset reads it from disk; later ones hit the
in-process cache), then trained with AdamW for a fixed number of steps after a short warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.tasks import compile_task, estimate_cost


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_task(cfg, device: str, steps: int) -> dict:
    t0 = time.perf_counter()
    task = compile_task(cfg, device)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    task = compile_task(cfg, device)
    warm = time.perf_counter() - t0
    opt = torch.optim.AdamW(task.params, lr=1e-3)

    def step() -> None:
        loss = task.train_loss(task.next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(task.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(task.device)
    rate = steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    task.valid_loss()
    valid = time.perf_counter() - t0
    cost = estimate_cost(cfg)
    return {"cold": cold, "warm": warm, "rate": rate, "valid": valid, "params": task.num_params,
            "gflops": cost.flops_per_run / 1e9, "run_s": cfg.task.inner_steps / rate + valid * cfg.task.outer_steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="task_specs/default.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--per-family", type=int, default=3, help="typical tasks per family")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per task")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    spec = load_spec(args.spec)
    picked: dict[str, list] = {}
    seed = 0
    while any(len(picked.get(f.family, [])) < args.per_family for f in spec.tasks.families) and seed < 5000:
        cfg = sample(spec, seed)
        if len(picked.setdefault(cfg.family, [])) < args.per_family:
            picked[cfg.family].append(cfg)
        seed += 1
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} spec={args.spec}")
    header = f"{'family':<12}{'compile cold s':>15}{'compile warm s':>15}{'steps/s':>10}{'valid pass s':>13}" \
             f"{'params':>10}{'GFLOP/run':>10}{'est. run s':>11}"
    print(header)
    for family, cfgs in picked.items():
        rows = [bench_task(c, args.device, args.steps) for c in cfgs]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{family:<12}{med['cold']:>15.3f}{med['warm']:>15.3f}{med['rate']:>10.1f}{med['valid']:>13.3f}"
              f"{int(med['params']):>10,}{med['gflops']:>10.1f}{med['run_s']:>11.1f}")
    print(f"(median over {args.per_family} typical tasks per family; steps/s with AdamW, batch as sampled)")


if __name__ == "__main__":
    main()
