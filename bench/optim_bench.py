"""CIAO's cost: its optimizer step against AdamW, and the share of an inner run spent on features.

    LHOPT_DATA_DIR=../shared/data .venv/bin/python bench/optim_bench.py \\
        [--part a|b|both] [--threads 1] [--clock cpu|wall]
        (a) [--sizes 512x4,2048x6] [--block 4] [--seconds-a 15] [--min-rounds 8]
        (b) [--spec task_specs/default.yaml] [--families mlp,cnn,rnn,text_rnn,transformer,nqm]
            [--max-inner 300] [--stats-every 4] [--reps 3] [--seconds-b 4] [--max-reps 15] [--no-split]

Every figure is a ratio of contenders measured side by side in one process, interleaved (the order
rotates from round to round) and repeated; medians are reported, so that a shared, noisy machine
slows all contenders alike. By default contenders run on one torch thread and are timed by this
process's CPU time (``--threads 1 --clock cpu``), which stays meaningful while other processes
time-slice the cores: with two threads on a busy machine every parallel region can stall for a
scheduler quantum, and CIAO runs many more short kernels than AdamW, so wall-clock ratios swing
wildly. On a quiet machine, ``--threads 0 --clock wall`` measures torch's default threading. The
load average is printed at the start and the end.

(a) Optimizer ``step()`` only, on CPU, for MLPs of square Linear layers (``WIDTHxDEPTH``, with
    biases; the defaults have 1,050,624 and 25,178,112 parameters). Gradients are set once to fixed
    random tensors and reused; all optimizers step the same parameters. A round times one block of
    ``--block`` consecutive steps of each contender: ``torch.optim.AdamW(foreach=True)``; CIAO with
    its defaults (foreach, adamax, clipping and LAMB on, no statistics); CIAO with statistics on
    every step (``step(stats=True, loss=...)``); CIAO with statistics on the last step of each
    block (every 4th step, as in training); and the same three with ``CIAO(compiled=True)`` (its
    compile, both kernels, is timed once before the rounds and printed). The CIAO contenders of one
    path share one CIAO instance (same state). Printed: AdamW's median ms/step and, per CIAO
    contender, the median over rounds of (CIAO block time / AdamW block time of the same round)
    with its quartiles. Goals (issue 29): CIAO step <= 1.2x AdamW, statistics every 4th step
    (amortised) <= 1.3x, a statistics step <= 2x. (With fixed gradients every step is clipped: the
    moving maximum equals |g| and the threshold is a fraction of it, so the clipping path is always
    taken.) CIAO's foreach path allocates several model-sized temporaries per step where AdamW
    allocates one, so its ratio also depends on whether the allocator reuses memory or hands out
    fresh pages (page faults: system time, which ``--clock cpu`` counts too).

(b) Per family, the first sampled task of that family from the spec (seeds 0, 1, 2, ...), inner
    steps capped at ``--max-inner`` (its validation passes scaled alike, so they come as often per
    step as in the task). One inner run is a user's plain training loop, timed from building the
    task to its last validation pass: forward, backward, ``float(loss)``, ``step()``, and a validation
    pass at each of the task's outer steps. Contenders, run in rotating order at least ``--reps``
    times and until the family has taken ``--seconds-b``:
    (1) ``LHOPT(params, total_steps=T, model=model)`` at the drop-in's defaults (the shipped
        policy, 32 decisions, statistics every ``--stats-every`` steps, the guard on), told every
        training loss and every validation loss with ``observe``;
    (2) the same with ``guard=False``;
    (3) CIAO replaying the hyperparameters the policy chose in (1), at the same steps: the same
        arithmetic on the same numbers (the policy's choices change how fast the model's own
        passes run, e.g. through denormal floats, so a run at fixed hyperparameters is no baseline),
        without features or decisions;
    (4) unless ``--no-split``: (3) with statistics every ``--stats-every`` steps, which splits the
        share into optimizer statistics (t4 - t3) and the rest of the decisions (t2 - t4):
        observation vectors, the policy's forward pass, carrying out its action.
    Feature share (the issue's "features and decisions") = (t2 - t3) / t2, the median over the
    paired repetitions [min, max]; the drop-in's whole overhead with its guard, (t1 - t3) / t1,
    beside it. Split columns are medians of their own per-repetition values (over t2), so they
    need not add up. Goal (issue 29): features and decisions <= 5% of the run on every family.

Defaults take about 6 minutes (one thread, so about the same on a busy machine; part (a)
compiles CIAO's two kernels per model, up to a minute each); raise ``--seconds-a``,
``--seconds-b``, ``--reps`` or ``--max-inner`` to run longer.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from lhopt_dsl import LHOPT, TaskConfig, load_spec, sample
from lhopt_dsl.optim import CIAO, HYPERPARAMETERS
from lhopt_dsl.spec.schedule import segment_bounds
from lhopt_dsl.tasks import compile_task

FAMILIES = ("mlp", "cnn", "rnn", "text_rnn", "transformer", "nqm")
STEP_GOAL = 1.2
AMORTISED_GOAL = 1.3
STATS_GOAL = 2.0
FEATURE_GOAL = 0.05
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["cpu"]  # what the contenders are timed with (set by --clock)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


# --------------------------------------------------------------------------- (a) optimizer step


def make_mlp(width: int, depth: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def bench_step(width: int, depth: int, block: int, seconds: float, min_rounds: int) -> dict[str, Any]:
    model = make_mlp(width, depth)
    params = [p for p in model.parameters()]
    gen = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    adamw = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, foreach=True)
    ciao = CIAO(params)  # defaults: foreach, adamax denominator, clipping and LAMB on
    fused = CIAO(params, compiled=True)  # the same, torch.compiled once for this layout

    def run_adamw() -> None:
        for _ in range(block):
            adamw.step()

    def ciao_with(opt: CIAO, pattern: Callable[[int], bool]) -> Callable[[], None]:
        def run() -> None:
            for i in range(block):
                want = pattern(i)
                opt.step(stats=want, loss=1.0 if want else None)

        return run

    contenders: dict[str, Callable[[], None]] = {"adamw": run_adamw}
    for prefix, opt in (("ciao", ciao), ("compiled", fused)):
        contenders[prefix] = ciao_with(opt, lambda i: False)
        contenders[f"{prefix}_stats"] = ciao_with(opt, lambda i: True)
        contenders[f"{prefix}_amortised"] = ciao_with(opt, lambda i: i == block - 1)
    names = list(contenders)
    t0 = time.perf_counter()
    fused.step()
    fused.step(stats=True, loss=1.0)
    compile_s = time.perf_counter() - t0  # both kernels (with and without statistics), wall clock
    for _ in range(2):  # warm-up: state allocation, first-call overheads
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < min_rounds or time.perf_counter() - start < seconds:
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = clock()
            contenders[name]()
            times[name].append((clock() - t0) / block)
        r += 1
    per_round = {n: [c / a for c, a in zip(times[n], times["adamw"])] for n in names if n != "adamw"}
    ratios = {n: _median(v) for n, v in per_round.items()}
    out = {
        "params": sum(p.numel() for p in params),
        "tensors": len(params),
        "rounds": r,
        "adamw_ms": 1e3 * _median(times["adamw"]),
        "ms": {n: 1e3 * _median(times[n]) for n in names},
        "ratio": ratios,
        "iqr": {n: _quartiles(v) for n, v in per_round.items()},
        "compile_s": compile_s,
    }
    del adamw, ciao, fused, model, params
    gc.collect()
    return out


def part_a(args: argparse.Namespace) -> None:
    sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    print("## (a) CIAO step vs torch.optim.AdamW(foreach=True), CPU, step() only\n")
    results = [(w, d, bench_step(w, d, args.block, args.seconds_a, args.min_rounds)) for w, d in sizes]
    print("| model (MLP) | params | tensors | rounds | AdamW ms/step | CIAO step | CIAO stats every step "
          f"| CIAO stats every {args.block}th |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w, d, res in results:
        ratio, ms, iqr = res["ratio"], res["ms"], res["iqr"]
        for prefix, label in (("ciao", "foreach"), ("compiled", "compiled")):
            cells = [f"**{ratio[n]:.2f}x** [{iqr[n][0]:.2f}, {iqr[n][1]:.2f}] ({ms[n]:.2f} ms)"
                     for n in (prefix, f"{prefix}_stats", f"{prefix}_amortised")]
            print(f"| {d}x Linear({w},{w}), {label} | {res['params']:,} | {res['tensors']} | {res['rounds']} "
                  f"| {res['adamw_ms']:.2f} | " + " | ".join(cells) + " |")
    print(f"\nRatios: median over rounds of CIAO / AdamW block time ({args.block} steps each, same round), "
          f"[quartiles]; (median ms per step). Goals: CIAO step <= {STEP_GOAL}x AdamW, statistics every "
          f"{args.block}th step (amortised) <= {AMORTISED_GOAL}x, a statistics step <= {STATS_GOAL}x.")
    for w, d, res in results:
        for prefix, label in (("ciao", "foreach"), ("compiled", "compiled")):
            verdicts = []
            for n, goal in ((prefix, STEP_GOAL), (f"{prefix}_amortised", AMORTISED_GOAL), (f"{prefix}_stats", STATS_GOAL)):
                r = res["ratio"][n]
                verdicts.append(f"{n.removeprefix(prefix).strip('_') or 'step'} {r:.2f}x ({'meets' if r <= goal else 'MISSES'})")
            print(f"- {res['params']:,} params, {label}: " + "; ".join(verdicts))
        print(f"- {res['params']:,} params: compiling both kernels took {res['compile_s']:.1f} s (wall clock)")
    print()


# --------------------------------------------------------------------------- (b) feature share


def typical_tasks(spec_path: str, families: list[str], max_inner: int) -> dict[str, TaskConfig]:
    spec = load_spec(spec_path)
    picked: dict[str, TaskConfig] = {}
    seed = 0
    while len(picked) < len(families) and seed < 5000:
        cfg = sample(spec, seed)
        if cfg.family in families and cfg.family not in picked:
            picked[cfg.family] = cap_steps(cfg, max_inner)
        seed += 1
    return {f: picked[f] for f in families if f in picked}


def cap_steps(cfg: TaskConfig, max_inner: int) -> TaskConfig:
    if cfg.task.inner_steps <= max_inner:
        return cfg
    outer = max(1, min(round(cfg.task.outer_steps * max_inner / cfg.task.inner_steps), max_inner))  # as often per step
    task = cfg.task.model_copy(update={"inner_steps": max_inner, "outer_steps": outer})
    return TaskConfig.model_validate(cfg.model_dump() | {"task": task.model_dump()})


def drop_in_run(cfg: TaskConfig, contender: str, schedule: list[tuple[int, dict[str, float]]] | None = None,
                stats_every: int = 4, history: list | None = None) -> float:  # fmt: skip
    """One inner run of ``cfg`` in a user's plain loop (CPU time, from building the task to its last
    validation pass): ``lhopt``: the drop-in at its defaults (the shipped policy, 32 decisions,
    statistics every ``stats_every`` steps, the guard on), told every training loss and the
    validation losses; ``noguard``: the same with ``guard=False``; ``replay``: CIAO stepping with the
    hyperparameters the policy chose (``schedule``: (step, values) from an ``lhopt`` run), so the
    same arithmetic on the same numbers without features or decisions; ``stats``: ``replay`` with
    statistics every ``stats_every`` steps. Validation passes at the task's own outer steps."""
    start = drop_in_start()
    t0 = clock()
    task = compile_task(cfg, "cpu", None, max_valid=512)
    if contender in ("lhopt", "noguard"):
        opt: CIAO = LHOPT(task.params, total_steps=task.steps, model=task.model, guard=contender == "lhopt",
                          stats_every=stats_every)  # fmt: skip
        tell = opt.observe
    else:
        opt, tell = CIAO(task.params, **start), None
    changes = dict(schedule or [])
    bounds = segment_bounds(task.steps, task.outer_steps)
    valid = task.valid_loss()
    if tell:
        tell(valid_loss=valid)
    for a, b in zip(bounds, bounds[1:]):
        for i in range(a, b):
            for group in opt.param_groups if i in changes else ():
                group.update(changes[i])
            loss = task.train_loss(task.next_batch())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if tell:
                tell(train_loss=value)
                opt.step()
            else:
                want = contender == "stats" and (i + 1) % stats_every == 0
                opt.step(stats=want, loss=value if want else None)
        valid = task.valid_loss()
        if tell:
            tell(valid_loss=valid)
    if history is not None and tell:
        history.extend(opt.history)
    return clock() - t0


@functools.lru_cache(maxsize=1)
def drop_in_start() -> dict[str, Any]:
    """The hyperparameters LHOPT (the shipped policy) starts CIAO with (built once, outside the timings)."""
    start = LHOPT([nn.Parameter(torch.zeros(1))], total_steps=1)
    return {n: start.defaults[n] for n in HYPERPARAMETERS}


def replay_schedule(cfg: TaskConfig, history: list[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """(step, hyperparameters) of the decisions in an LHOPT run's ``history`` (no restarts or guard events)."""
    kinds = {h["restart"] for h in history}
    if kinds - {"none"}:
        raise RuntimeError(f"the policy restarted ({sorted(kinds)}): a replay would not retrace its run")
    names = [n for n in history[0] if n not in ("progress", "restart")]
    return [(round(h["progress"] * cfg.task.inner_steps), {n: h[n] for n in names}) for h in history]


def bench_family(
    cfg: TaskConfig, reps: int, seconds: float, max_reps: int, stats_every: int, split: bool
) -> dict[str, Any]:  # fmt: skip
    history: list[dict[str, Any]] = []
    drop_in_run(cfg, "lhopt", stats_every=stats_every, history=history)  # warm-up; the policy's choices
    schedule = replay_schedule(cfg, history)
    contenders = ["lhopt", "noguard", "replay"] + (["stats"] if split else [])
    for name in contenders[1:]:
        drop_in_run(cfg, name, schedule, stats_every)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in contenders}
    start = time.perf_counter()
    r = 0
    while r < reps or (time.perf_counter() - start < seconds and r < max_reps):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for name in order:
            gc.collect()
            times[name].append(drop_in_run(cfg, name, schedule, stats_every))
        r += 1
    t = {n: times[n] for n in contenders}
    share = [(f - p) / f for f, p in zip(t["noguard"], t["replay"])]
    out = {
        "s": {n: _median(v) for n, v in t.items()},
        "share": _median(share),
        "share_lo": min(share),
        "share_hi": max(share),
        "dropin": _median([(d - p) / d for d, p in zip(t["lhopt"], t["replay"])]),
        "guard": _median([(d - f) / d for d, f in zip(t["lhopt"], t["noguard"])]),
        "reps": r,
        "decisions": len(schedule),
    }
    if split:
        out["stats_share"] = _median([(s - p) / f for f, p, s in zip(t["noguard"], t["replay"], t["stats"])])
        out["decide_share"] = _median([(f - s) / f for f, s in zip(t["noguard"], t["stats"])])
    return out


def part_b(args: argparse.Namespace) -> None:
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    tasks = typical_tasks(args.spec, families, args.max_inner)
    print(f"## (b) Share of an inner run spent on the policy's features and decisions (LHOPT drop-in, defaults)\n")
    head = ("| family | seed | params | T x K | decisions | reps | LHOPT s | without guard s | replay s "
            "| features and decisions | drop-in with guard |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if args.split:
        head += " of which statistics | of which decisions |"
        sep += "---:|---:|"
    print(head)
    print(sep)
    results = {}
    for family, cfg in tasks.items():
        res = bench_family(cfg, args.reps, args.seconds_b, args.max_reps, args.stats_every, args.split)
        results[family] = res
        t, s = cfg.task, res["s"]
        params = sum(p.numel() for p in compile_task(cfg, "cpu", None, max_valid=1).params)
        line = (f"| {family} | {cfg.seed} | {params:,} | {t.inner_steps} x {t.outer_steps} | {res['decisions']} "
                f"| {res['reps']} | {s['lhopt']:.2f} | {s['noguard']:.2f} | {s['replay']:.2f} "
                f"| **{100 * res['share']:.1f}%** [{100 * res['share_lo']:.1f}, {100 * res['share_hi']:.1f}] "
                f"| {100 * res['dropin']:.1f}% |")
        if args.split:
            line += f" {100 * res['stats_share']:.1f}% | {100 * res['decide_share']:.1f}% |"
        print(line, flush=True)
    print(f"\nFeatures and decisions = (t_without_guard - t_replay) / t_without_guard, median over the paired "
          f"repetitions [min, max]; drop-in with guard = (t_LHOPT - t_replay) / t_LHOPT; times are medians. "
          f"T x K: inner steps x validation passes (capped at {args.max_inner} inner steps, K scaled alike).")
    worst = max(results.items(), key=lambda kv: kv[1]["share"], default=None)
    if worst is not None:
        verdict = "meets" if worst[1]["share"] <= FEATURE_GOAL else "MISSES"
        print(f"Goal (issue 29): features and decisions <= {100 * FEATURE_GOAL:.0f}% of the run on every family: "
              f"worst {worst[0]} {100 * worst[1]['share']:.1f}%, {verdict} the goal.")
    print()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("a", "b", "both"), default="both")
    ap.add_argument("--sizes", default="512x4,2048x6", help="MLPs for (a), WIDTHxDEPTH, comma-separated")
    ap.add_argument("--block", type=int, default=4, help="(a) steps per timed block (the amortised statistics period)")
    ap.add_argument("--seconds-a", type=float, default=15.0, help="(a) seconds of timed rounds per model")
    ap.add_argument("--min-rounds", type=int, default=8, help="(a) at least this many rounds per model")
    ap.add_argument("--spec", default="task_specs/default.yaml")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--max-inner", type=int, default=300, help="(b) cap on a task's inner steps")
    ap.add_argument("--reps", type=int, default=3, help="(b) at least this many repetitions of each contender")
    ap.add_argument("--seconds-b", type=float, default=4.0, help="(b) repeat until a family has taken this long")
    ap.add_argument("--max-reps", type=int, default=15, help="(b) at most this many repetitions")
    ap.add_argument("--stats-every", type=int, default=4, help="(b) statistics every this many inner steps")
    ap.add_argument("--no-split", dest="split", action="store_false",
                    help="(b) skip contender (3), which splits the share into statistics and environment work")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                    help="time contenders by this process's CPU time (default; with one thread it is robust to "
                         "other processes time-slicing the cores) or by wall clock (quiet machines only)")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} clock={args.clock} device=cpu, {_load()}\n")
    t0 = time.perf_counter()
    if args.part in ("a", "both"):
        part_a(args)
    if args.part in ("b", "both"):
        part_b(args)
    print(f"(total {time.perf_counter() - t0:.0f} s; at the end: {_load()})")


if __name__ == "__main__":
    main()
