"""(e) GPU: CIAO's step against fused AdamW on 100M parameters, and population throughput.

    LHOPT_DATA_DIR=../shared/data python bench/gpu_bench.py [--width 4096] [--depth 6] [--steps 50]
        [--members 35,140,560] [--seconds 3]

Needs a CUDA device; without one it says so and exits with status 2 (the row is unmeasured).
Timed with CUDA events after warm-up; contenders alternate.

1. ``step()`` only, gradients fixed, on an MLP of ``--depth`` square Linear layers of ``--width``
   (4096 x 6: 100.7M parameters): ``torch.optim.AdamW(fused=True)`` against CIAO (foreach path,
   defaults: adamax, clipping and LAMB on, no statistics). Also printed: the memory bandwidth
   AdamW reaches (it reads parameter, gradient and both moments and writes three: 28 bytes per
   parameter). Goal: CIAO at most 1.5x fused AdamW.
2. Populations on ``bench/gpu_mlp.yaml`` (MLP 784-256-256-10 on MNIST, batch 128) with AdamW
   members, at each ``--members`` size: member-steps per second of the population step eagerly and
   compiled (``torch.compile`` with ``mode="reduce-overhead"``: the gradient kernel replays as a
   CUDA graph), against one model with eager AdamW; then the real evaluation path,
   ``run_population`` with that many members (T = 200, validation at 4 points). Goal: at least
   50k member-steps/s at 140 members or more, and the 35-member population at least 10x the
   sequential baselines.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from lhopt_dsl import load_spec, sample
from lhopt_dsl.optim import CIAO
from lhopt_dsl.spec.schedule import SHAPES, Schedule
from lhopt_dsl.tasks import compile_task
from lhopt_dsl.tasks.population import CIAOPopulation, adamw_settings, run_population
from lhopt_dsl.tasks.training import run_schedule


def _timed(fn, seconds: float) -> float:
    """Median seconds per call of ``fn`` over CUDA-event-timed blocks."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 5 / 1e3)
    times.sort()
    return times[len(times) // 2]


def optimizer_row(width: int, depth: int, seconds: float) -> None:
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)]).cuda()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    adamw = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ciao = CIAO(params, lr=1e-4)
    a = _timed(adamw.step, seconds)
    c = _timed(ciao.step, seconds)
    bandwidth = 28 * n / a / 1e9
    print(f"| {n:,} | {a * 1e3:.2f} | {bandwidth:,.0f} GB/s | {c * 1e3:.2f} | **{c / a:.2f}x** |")


def population_rows(members: list[int], seconds: float) -> None:
    spec = load_spec("bench/gpu_mlp.yaml")
    cfg = sample(spec, 0)
    one = compile_task(cfg, "cuda")
    opt = torch.optim.AdamW(one.params, lr=1e-3)

    def single() -> None:
        loss = one.train_loss(one.next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = 1.0 / _timed(single, seconds)
    print(f"one model, eager AdamW: {base:,.0f} steps/s\n")
    print("| members | eager member-steps/s | compiled + CUDA graph member-steps/s | run_population member-steps/s | vs one model |")
    print("|---:|---:|---:|---:|---:|")
    schedules = [Schedule(lr=lr, shape=shape) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2) for shape in SHAPES]
    for k in members:
        settings = [adamw_settings(schedules[i % len(schedules)]) for i in range(k)]
        eager = CIAOPopulation(compile_task(cfg, "cuda"), settings)
        compiled = CIAOPopulation(compile_task(cfg, "cuda"), settings, compiled=True)
        e = k / _timed(eager.train_step, seconds)
        c = k / _timed(compiled.train_step, seconds)
        grid = [schedules[i % len(schedules)] for i in range(k)]
        run_population(cfg, grid, device="cuda", compiled=True)  # compile and warm up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_population(cfg, grid, device="cuda", compiled=True)
        torch.cuda.synchronize()
        r = k * cfg.task.inner_steps / (time.perf_counter() - t0)
        print(f"| {k} | {e:,.0f} | {c:,.0f} | {r:,.0f} | {c / base:.1f}x |")
    t0 = time.perf_counter()
    for s in schedules:
        run_schedule(cfg, s, device="cuda")
    torch.cuda.synchronize()
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_population(cfg, schedules, device="cuda", compiled=True)
    torch.cuda.synchronize()
    pop = time.perf_counter() - t0
    print(f"\n35 baselines (T = {cfg.task.inner_steps}): sequential {seq:.2f} s, population {pop:.2f} s: **{seq / pop:.1f}x**")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--members", default="35,140,560")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per contender")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("(e) GPU rows: unmeasured, no CUDA device here (torch "
              f"{torch.__version__}). Run this script on a machine with one.")  # fmt: skip
        return 2
    print(f"(e) GPU: {torch.cuda.get_device_name()} torch={torch.__version__}\n")
    print("| parameters | AdamW fused ms | AdamW bandwidth | CIAO ms | CIAO / AdamW |")
    print("|---:|---:|---:|---:|---:|")
    optimizer_row(args.width, args.depth, args.seconds)
    print()
    population_rows([int(m) for m in args.members.split(",")], args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
