"""The `lhopt` command line: author task specs, make policies, judge them, run the infrastructure.

One function per command (``cmd_*``) and one per group of commands in `lhopt --help` (``_*_commands``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from lhopt_dsl import SpecError, load_spec, sample, space_size
from lhopt_dsl.spec.experiment import ExperimentSpec
from lhopt_dsl.spec.loader import SPEC_PATH_ENV
from lhopt_dsl.spec.sample import budget_acceptance
from lhopt_dsl.spec.space import LayerAxis, axis_size

if TYPE_CHECKING:
    from lhopt_dsl import TaskConfig


def _summarise(axis: object) -> str:
    if isinstance(axis, LayerAxis):
        kind = "each layer its own width" if axis.independent else "one width for all layers"
        return f"depth {_summarise(axis.depths)} x width {_summarise(axis.widths)} ({kind})"
    if isinstance(axis, range) and len(axis) > 3:  # an integer range: read at its ends, never listed
        return f"{axis[0]}..{axis[-1]}"
    values = sorted(axis, key=lambda v: (type(v).__name__, v))  # type: ignore[call-overload]
    if len(values) > 3 and all(type(v) is int for v in values) and values[-1] - values[0] + 1 == len(values):
        return f"{values[0]}..{values[-1]}"
    text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(n: int) -> str:
    return f"{n:,}" if n < 10**6 else f"{n:,} ({n:.2e})"


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path)
        except SpecError as e:
            failed += 1
            print(f"FAIL {path}\n{e}", file=sys.stderr)
            continue
        print(f"ok   {path} ({spec.name}: {len(spec.tasks.families)} families, {space_size(spec).total:.3g} settings)")
    return 1 if failed else 0


def cmd_space(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    size = space_size(spec)
    print(f"{args.spec}: {spec.tasks.description or spec.description or spec.name}\n")
    width = max(len(fam.family) for fam in spec.tasks.families) + 2
    print(f"{'family':<{width}}{'weight':>8}{'share':>8}  settings")
    for fam, w, n in zip(spec.tasks.families, spec.tasks.weights, size.entries):
        print(f"{fam.family:<{width}}{fam.weight:>8.3g}{w:>8.1%}  {_fmt(n)}")
    if len(size.families) < len(size.entries):
        print("(entries of one family overlap; per-family totals count shared settings once)")
        for name, n in size.families.items():
            print(f"  {name:<{width}}  {_fmt(n)}")
    print(f"{'total':<{width}}{'':>16}  {_fmt(size.total)}\n")
    if spec.tasks.budget is not None:
        shares = budget_acceptance(spec.tasks, draws=args.budget_draws)
        print(f"budget {spec.tasks.budget.model_dump(exclude_none=True)}: settings above it are redrawn.")
        print(f"Share of each entry's settings within it (from {args.budget_draws} draws each):")
        for fam, share in zip(spec.tasks.families, shares):
            print(f"  {fam.family:<{width}}{share:>7.0%}")
        print()
    for i, (fam, n) in enumerate(zip(spec.tasks.families, size.entries)):
        print(f"[{i}] {fam.family} ({_fmt(n)} settings)")
        axes = fam.axes()
        name_w = max(len(k) for k in axes) + 2
        for name, axis in axes.items():
            print(f"    {name:<{name_w}}{axis_size(axis):>8,}  {_summarise(axis)}")
        print()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    docs = []
    for k in range(args.count):
        cfg = sample(spec, args.seed + k)
        if args.format == "json":
            docs.append(json.dumps({"task_id": cfg.task_id, **cfg.model_dump(mode="json")}))
        else:
            docs.append(f"# task_id: {cfg.task_id}\n{cfg.to_yaml()}")
    print(("\n" if args.format == "json" else "---\n").join(docs), end="" if args.format == "yaml" else "\n")
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    import time

    import torch

    from lhopt_dsl.tasks import compile_task, estimate_cost

    spec = load_spec(args.spec)
    cfg = sample(spec, args.seed)
    t0 = time.perf_counter()
    task = compile_task(cfg, args.device or spec.device, spec.data_dir)
    print(f"# task_id: {cfg.task_id} (seed {cfg.seed})\n{cfg.to_yaml()}")
    cost = estimate_cost(cfg)
    print(f"compiled in {time.perf_counter() - t0:.2f}s on {task.device}: {task.num_params:,} parameters, "
          f"{cost.flops_per_step / 1e6:.1f} MFLOP per step, {cost.flops_per_run / 1e9:.1f} GFLOP per run")
    steps = min(args.steps, task.steps)
    opt = torch.optim.AdamW(task.params, lr=args.lr)
    print(f"valid loss {task.valid_loss():.4f} at step 0; training {steps} of {task.steps} steps with AdamW(lr={args.lr})")
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        loss = task.train_loss(task.next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(steps // 5, 1) == 0 or step == steps:
            print(f"  step {step:>5}: train loss {loss.item():.4f}")
    rate = steps / (time.perf_counter() - t0)
    print(f"valid loss {task.valid_loss():.4f}, test loss {task.test_loss():.4f} ({rate:.0f} steps/s)")
    return 0


def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import RankLost, launched, torchrun_command
    from .meta_train import Settings, train

    if args.nproc is not None and args.nproc > 1 and not launched():
        import signal

        from .lifeline import death_signal_on_exec

        # Ranks on this machine: torchrun starts them, each running this command without --nproc. Told
        # SIGTERM when this process dies however it dies, torchrun stops its ranks (they run in
        # sessions of their own, which a signal to this process's group would not reach).
        return subprocess.call(torchrun_command(args.nproc, _without_nproc(args.argv)),
                               preexec_fn=death_signal_on_exec(signal.SIGTERM))  # fmt: skip

    spec = load_spec(args.spec)
    if args.seed is not None:
        spec = spec.model_copy(update={"seed": args.seed})
    if args.no_population or args.torch_compile:
        update = {"population": False} if args.no_population else {"compile": True}
        spec = spec.model_copy(update={"meta_train": spec.meta_train.model_copy(update=update)})
    settings = Settings(
        max_minutes=args.max_minutes,
        iterations=args.iterations or spec.meta_train.iterations,
        workers=spec.meta_train.workers if args.workers is None else args.workers,
        resume=args.resume,
        tracking_uri=args.tracking_uri,
        run_dir=Path(args.run_dir) if args.run_dir else None,
        init=Path(args.init) if args.init else None,
        allow_spec_change=args.allow_spec_change,
    )
    try:
        path = train(spec, settings, spec_path=args.spec)
    except RankLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the last finished iteration's checkpoint is intact
        print("\ninterrupted: continue from the last checkpoint with --resume", file=sys.stderr)
        return _interrupted_status(e)
    if launched() and int(os.environ.get("RANK", "0")) > 0:
        return 0  # rank 0 reports for the job
    print(f"\npolicy: {path}\nlocal metrics and checkpoints: {path.parent}")
    print(_ui_hint(args.tracking_uri or spec.tracking.uri))
    return 0


def cmd_train_level(args: argparse.Namespace) -> int:
    from .level_train import LevelSettings, train_level

    settings = LevelSettings(
        iterations=args.iterations, episodes=args.episodes, workers=args.workers, max_minutes=args.max_minutes,
        resume=args.resume, run_dir=Path(args.run_dir) if args.run_dir else None,
        policy=Path(args.policy) if args.policy else None, tracking_uri=args.tracking_uri,
        dev_every=args.dev_every, dev_tasks=args.dev_tasks, storage=args.storage, observe=args.observe,
        start_level=Path(args.start_level) if args.start_level else None, cadences=args.cadences,
    )  # fmt: skip
    try:
        path = train_level(args.spec, settings)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # another space, a run already there, none to resume
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the last finished iteration's checkpoint is intact; its episodes are kept
        print("\ninterrupted: continue from the last checkpoint with --resume", file=sys.stderr)
        return _interrupted_status(e)
    print(f"\npolicy: {path}\nlocal metrics, episodes and checkpoint: {path.parent}")
    print(_ui_hint(args.tracking_uri or load_spec(args.spec).tracking.uri))
    return 0


def cmd_fit_level(args: argparse.Namespace) -> int:
    from .level_offline import THRESHOLDS, fit_level

    try:
        thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else list(THRESHOLDS)
        report = fit_level(args.episodes, args.start, args.out, threshold=args.threshold, thresholds=thresholds,
                           folds=args.folds, min_episodes=args.min_episodes, seed=args.seed)  # fmt: skip
    except (ValueError, FileNotFoundError) as e:  # episodes of another level, too few, a start that does not observe
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "fit.md").read_text())
    print(f"policy: {Path(args.out) / 'policy.pt'} (threshold {report['threshold']:g})")
    return 0


def cmd_imitate(args: argparse.Namespace) -> int:
    from .imitate import ImitationSettings, imitate, with_overrides

    spec = load_spec(args.spec)
    if args.seed is not None:
        spec = spec.model_copy(update={"seed": args.seed})
    flags = ("tasks", "workers", "run_dir", "epochs", "dagger", "initial", "margin", "clone_seed", "base")
    try:  # the options given override the spec's imitation section; the policy file records the result
        spec = with_overrides(spec, {name: getattr(args, name) for name in flags})
        path = imitate(spec, ImitationSettings.from_spec(spec, tracking_uri=args.tracking_uri), spec_path=args.spec)
    except ValueError as e:  # a space whose actions cannot keep a hyperparameter, files of another run
        print(f"error: {args.spec}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("\ninterrupted: the finished demonstrations are kept; rerun the same command to go on", file=sys.stderr)
        return _interrupted_status(e)
    print(f"\nwarm-start policy: {path}\nstart PPO from it: lhopt train {args.spec} --init {path}")
    return 0


def _interrupted_status(e: KeyboardInterrupt) -> int:
    """The shell's convention for a command stopped by a signal: 128 + its number (130 for Ctrl-C,
    143 for SIGTERM, as `lhopt ui` returns), so schedulers and scripts can tell the two apart."""
    import signal

    return 128 + getattr(e, "signum", signal.SIGINT)


def _ui_hint(uri: str | None) -> str:
    if uri and uri.startswith(("http://", "https://")):
        return f"browse the runs: open {uri}"
    store = f" --backend-store-uri {uri}" if uri else ""
    return f"browse the runs: lhopt ui{store}  (then open http://127.0.0.1:5000)"


def cmd_ui(args: argparse.Namespace) -> int:
    """Run the MLflow server until it exits or we get SIGINT/SIGTERM/SIGHUP; either way its whole
    process group (server and uvicorn worker) goes down with us. Exit status: 128 + the signal's
    number when stopped by one, else the server's own."""
    import signal
    import subprocess

    from .tracking import default_uri, start_ui

    caught: list[int] = []
    stops = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in stops}
    try:
        backend = args.backend_store_uri or default_uri()
        artifacts = args.artifacts or str(Path("mlartifacts").resolve())
        print(f"MLflow UI on http://{args.host}:{args.port} (store {backend}); Ctrl-C stops it", flush=True)
        proc = start_ui(backend, artifacts, args.host, args.port)
        try:
            while not caught:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
        finally:
            code = proc.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        print(f"stopped the MLflow UI ({signal.Signals(caught[0]).name})", file=sys.stderr)
        return 128 + caught[0]
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _policy_path(policy: str, tracking_uri: str | None) -> Path:
    """A checkpoint path, or an MLflow model URI (models:/NAME/VERSION, runs:/ID/policy) to download."""
    if "://" in policy or policy.startswith(("models:", "runs:")):
        from .tracking import load_policy_uri

        return load_policy_uri(policy, tracking_uri)
    return Path(policy)


def _task_file(path: str) -> TaskConfig:
    """The first task of a `lhopt sample` YAML file; a file that holds none raises ValueError saying why."""
    from pydantic import ValidationError

    from lhopt_dsl import TaskConfig
    from lhopt_dsl.spec.loader import describe_error, load_yaml

    # Read like a spec: bad YAML, a binary file or an alias bomb is a SpecError with file:line:col (see main).
    docs = [d for d in load_yaml(path, documents=True) if d]
    if not docs:
        raise ValueError(f"{path} holds no task")
    try:
        return TaskConfig.model_validate(docs[0])
    except ValidationError as e:  # its str() would quote the file's values (input_value=...)
        raise ValueError(f"{path} is not a task of `lhopt sample`: {describe_error(e.errors()[0], docs[0])}") from None


def cmd_schedule_export(args: argparse.Namespace) -> int:
    from lhopt_dsl.controller import load_policy, require_adamw_space, save_schedule

    from .evaluate import policy_run
    from .transfer import export_schedule

    path = _policy_path(args.policy, args.tracking_uri)
    policy, space = load_policy(path)
    try:
        cfg = _task_file(args.task)
        # Before any training: the schedule must mean the same thing on torch.optim.AdamW.
        require_adamw_space(space.space, f"policy {path}")
        space.check_initial(cfg.hparams)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    episode = policy_run(policy, space, cfg, device=args.device)
    k = len(episode)
    restarts = sum(kind in ("load", "swap") for kind, _ in episode.restarts)
    save_schedule(export_schedule(episode, cfg, space), args.output,
                  meta={"policy": str(path), "task_id": cfg.task_id, "outer_steps": k,
                        "final_valid_loss": episode.valid_curve[-1], "restarts": restarts})  # fmt: skip
    print(f"wrote {args.output}: {k} decisions on task {cfg.task_id} (final valid loss {episode.valid_curve[-1]:.4g})")
    if restarts:
        print(f"warning: the run restarted from a checkpoint {restarts} time(s); a schedule cannot replay "
              "restarts, so replaying it will not reproduce this run (train the policy with restarts off)",
              file=sys.stderr)  # fmt: skip
    return 0


def cmd_schedule_transfer(args: argparse.Namespace) -> int:
    from lhopt_dsl.controller import load_policy

    from .transfer import format_record, save_record, transfer

    path = _policy_path(args.policy, args.tracking_uri)
    policy, space = load_policy(path)
    try:
        small, large = _task_file(args.small), _task_file(args.large)
        record = transfer(policy, space, small, large, _baseline_storage(args), device=args.device,
                          data_dir=os.environ.get("LHOPT_DATA_DIR"))  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record["policy"] = str(path)
    if args.output:
        save_record(record, Path(args.output))
    print(format_record(record))
    return 0


def _baseline_storage(args: argparse.Namespace) -> str:
    """``--storage``, or the one default cache of every command, ``runs/baselines.db`` (made if needed)."""
    from .baselines import default_storage

    if args.storage:
        return args.storage
    Path("runs").mkdir(exist_ok=True)
    return default_storage()


def cmd_baselines_export(args: argparse.Namespace) -> int:
    from .baselines import export_grids

    storage = _baseline_storage(args)
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).exists():
        print(f"error: no baseline cache at {storage}; pass --storage", file=sys.stderr)
        return 2
    c = export_grids(storage, args.directory)
    print(f"{args.directory}: {c['written']} task grids written, {c['unchanged']} unchanged ({c['runs']} runs)")
    return 0


def cmd_baselines_import(args: argparse.Namespace) -> int:
    from .baselines import import_grids

    storage = _baseline_storage(args)
    try:
        c = import_grids(args.directory, storage)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{storage}: {c['runs']} runs added to {c['tasks']} task grids; {c['present']} were already there")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvaluationError, run

    spec = load_spec(args.spec)
    if args.torch_compile:
        spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"compile": True})})
    if args.schedule:
        from lhopt_dsl.agent.residual import FixedSchedule
        from lhopt_dsl.spec.schedule import Schedule

        try:
            target = Schedule.from_name(args.schedule)
        except ValueError as e:
            print(f"error: --schedule {args.schedule}: {e} (names look like linear-lr0.03, cosine-lr0.01, keep)",
                  file=sys.stderr)  # fmt: skip
            return 2
        try:
            policy: Path | FixedSchedule = FixedSchedule(target, spec.hparams)
        except ValueError as e:
            print(f"error: {args.spec}: {e}", file=sys.stderr)
            return 2
    else:
        policy = _policy_path(args.policy, args.tracking_uri)
    try:
        summary = run(spec, policy, num_tasks=args.tasks or spec.evaluation.num_tasks, storage=args.storage,
                      out=Path(args.out) if args.out else None, tracking_uri=args.tracking_uri, score=args.score,
                      initial=args.initial, workers=args.workers, threads=args.threads, fresh=args.fresh,
                      task_set=args.task_set)  # fmt: skip
    except (EvaluationError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nresults, table and plots: {summary['manifest']['out']}")
    print(_ui_hint(args.tracking_uri or spec.tracking.uri))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_outputs, format_comparison
    from .jobs import write_json
    from .records import EvaluationError

    try:
        result = compare_outputs([Path(d) for d in args.dirs], args.score)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(result, markdown=args.markdown))
    if args.output:
        write_json(Path(args.output), result)
        print(f"\nwritten: {args.output}")
    return 0


def cmd_best_of(args: argparse.Namespace) -> int:
    from .compare import best_of
    from .records import EvaluationError

    try:
        best_of([Path(d) for d in args.dirs], Path(args.out), by=args.by, score=args.score)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nwritten: {args.out} (an evaluation directory: lhopt compare reads it)")
    return 0


def cmd_eval_ood(args: argparse.Namespace) -> int:
    from .ood import run_suite

    if args.steps_scale <= 0:
        print(f"error: --steps-scale must be positive, got {args.steps_scale}", file=sys.stderr)
        return 2
    policy = _policy_path(args.policy, args.tracking_uri) if args.policy else None
    try:
        run_suite(args.programs or (), policy=policy, seed=args.seed, steps_scale=args.steps_scale,
                  data_dir=args.data_dir, out=args.out, tracking_uri=args.tracking_uri, workers=args.workers,
                  storage=None if args.no_cache else _baseline_storage(args), old_cache=args.cache)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:  # a missing data file, a policy that cannot drive LHOPT
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nresults, table and plots: {args.out}")
    print(_ui_hint(args.tracking_uri))
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from lhopt_dsl.controller import combine_policies
    from lhopt_dsl.agent.policy import UnsafeCheckpointError

    try:
        ensemble = combine_policies(args.policies, args.output)
    except (FileNotFoundError, ValueError, UnsafeCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: an ensemble of {len(ensemble.members)} policies (mean of their log-probabilities); "
          f"use it as any policy, e.g. lhopt eval SPEC --policy {args.output}")
    return 0


def cmd_check_dropin(args: argparse.Namespace) -> int:
    from .dropin import PROGRAMS, check, format_table, levels_section, write

    policy = _policy_path(args.policy, args.tracking_uri) if args.policy else None
    unknown = [p for p in args.programs or () if p not in PROGRAMS]
    if unknown:
        print(f"error: unknown program(s) {', '.join(unknown)}; known: {', '.join(PROGRAMS)}", file=sys.stderr)
        return 2
    try:
        record = check(policy, programs=args.programs or tuple(PROGRAMS), seeds=args.seeds, steps=args.steps)
    except (FileNotFoundError, ValueError) as e:  # a policy that cannot drive LHOPT
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(record, Path(args.out))
    print(format_table(record["summary"]))
    print(f"\n{levels_section(record['runs'])}")
    print(f"\nevery run: {Path(args.out) / 'dropin.json'}")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    import numpy as np

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    print(f"{'run':<40}{'iterations':>11}{'first ' + str(args.window):>12}{'last ' + str(args.window):>12}")
    for run in args.runs:
        rows = [json.loads(line) for name in ("metrics.jsonl", "dev_curve.jsonl") if (Path(run) / name).exists()
                for line in (Path(run) / name).read_text().splitlines() if line.strip()]  # fmt: skip
        rows = sorted((r for r in rows if args.metric in r), key=lambda r: r["step"])
        if not rows:
            print(f"error: {run} has no metric {args.metric!r} in metrics.jsonl or dev_curve.jsonl", file=sys.stderr)
            return 2
        steps = np.asarray([r["step"] for r in rows])
        values = np.asarray([r.get(args.metric, np.nan) for r in rows], dtype=float)
        w = max(1, min(args.window, len(values)))
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        ax.plot(steps, values, alpha=0.2)
        ax.plot(steps[w - 1 :], smooth, label=run, color=ax.lines[-1].get_color())
        print(f"{run:<40}{len(values):>11}{np.nanmean(values[:w]):>12.3f}{np.nanmean(values[-w:]):>12.3f}")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel(args.metric)
    ax.set_title(f"{args.metric} (moving average over {args.window} iterations)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(ExperimentSpec.model_json_schema(), indent=2) + "\n"
    _write(text, args.output)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from lhopt_dsl.spec.docgen import generate

    _write(generate(), args.output)
    return 0


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


RENAMED = {"compile": "trial"}  # old command names: they still run, say the new name, and are hidden from --help


class _OldSpelling(argparse.Action):
    """An option's old spelling, kept so that scripts keep running: hidden from --help, it does what
    the new spelling does and says the new name on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, nargs: int | None = None,
                 const: object = None, **kwargs: object) -> None:  # fmt: skip
        super().__init__(option_strings, dest, nargs=nargs, const=const, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]  # fmt: skip
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:  # fmt: skip
        print(f"lhopt: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def _out(p: argparse.ArgumentParser, dest: str, help: str, *, metavar: str = "FILE", required: bool = False,
         default: str | None = None) -> None:  # fmt: skip
    """-o/--out, the one output option of every command (into ``dest``); --output still works."""
    either = p.add_mutually_exclusive_group(required=required)
    either.add_argument("-o", "--out", dest=dest, metavar=metavar, default=default, help=help)
    either.add_argument("--output", dest=dest, action=_OldSpelling, new="-o/--out")


def _torch_compile(p: argparse.ArgumentParser, help: str) -> None:
    """--torch-compile (torch.compile, not lhopt_dsl.tasks, the task builder); --compile still works."""
    p.add_argument("--torch-compile", action="store_true", help=help)
    p.add_argument("--compile", dest="torch_compile", action=_OldSpelling, new="--torch-compile", nargs=0, const=True)


class _Group:
    """Commands for one thing a user does: `lhopt --help` lists them under its title, a line each."""

    def __init__(self, sub: argparse._SubParsersAction, title: str, threads: argparse.ArgumentParser) -> None:
        self.sub, self.title, self.threads, self.lines = sub, title, threads, [f"{title}:"]

    def command(self, name: str, summary: str, about: str = "", example: str = "", threads: bool = False,
                **kwargs: object) -> argparse.ArgumentParser:  # fmt: skip
        """A subcommand: ``summary`` is its line in `lhopt --help`; ``about`` (else the summary) and
        ``example`` head and end its own --help; ``threads`` adds --threads."""
        self.lines.append(f"  {name:<14}{summary}")
        return self.sub.add_parser(
            name, help=summary, description=about or summary, epilog=f"example: {example}" if example else None,
            aliases=[old for old, new in RENAMED.items() if new == name], parents=[self.threads] if threads else [],
            **kwargs,
        )  # fmt: skip


def _spec_commands(g: _Group) -> None:
    p = g.command("validate", "check spec files; every problem as file:line:col",
                  about="check spec files and report every problem with file:line:col",
                  example="lhopt validate task_specs/*.yaml")  # fmt: skip
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML spec files")
    p.set_defaults(func=cmd_validate)

    p = g.command("space", "count the distinct task settings, per family and per field",
                  example="lhopt space task_specs/default.yaml")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument(
        "--budget-draws", type=int, default=200, help="draws per entry to estimate the share within the budget"
    )
    p.set_defaults(func=cmd_space)

    p = g.command("sample", "sample concrete tasks (YAML documents, or JSON lines)",
                  example="lhopt sample task_specs/default.yaml --seed 7 --count 3")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("--seed", type=int, default=0, help="seed of the first task (default: 0)")
    p.add_argument("--count", type=int, default=1, help="number of tasks, with seeds SEED, SEED+1, ... (default: 1)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output format (default: yaml)")
    p.set_defaults(func=cmd_sample)

    p = g.command("trial", "sample one task, build it and train it briefly with AdamW", threads=True,
                  about="sample one task, build it as a torch model with data (lhopt_dsl.tasks), and train it "
                        "briefly with AdamW: a spec's tasks, tried by hand",
                  example="lhopt trial task_specs/smoke.yaml --seed 1 --steps 100")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("--seed", type=int, default=0, help="task seed (default: 0)")
    p.add_argument("--steps", type=int, default=50, help="AdamW steps to take, at most the task's T (default: 50)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--device", help="torch device (default: the spec's)")
    p.set_defaults(func=cmd_trial)

    p = g.command("schema", "print the JSON schema of experiment specs (for editors)",
                  example="lhopt schema -o lhopt.schema.json")  # fmt: skip
    _out(p, "output", "write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = g.command("docs", "print the DSL field reference (docs/dsl.md) from the models",
                  example="lhopt docs -o docs/dsl.md")  # fmt: skip
    _out(p, "output", "write to this file instead of stdout")
    p.set_defaults(func=cmd_docs)


def _policy_commands(g: _Group) -> None:
    p = g.command("train", "meta-train a policy with PPO (resumable: --resume)", threads=True,
                  about="meta-train a policy with PPO (checkpoints every iteration; --resume continues)",
                  example="lhopt train task_specs/smoke.yaml --iterations 20")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("--iterations", type=int, help="PPO iterations in total (default: the spec's meta_train.iterations)")
    p.add_argument("--workers", type=int, help="rollout worker processes (default: the spec's; 0 runs in-process)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--allow-spec-change", action="store_true",
                   help="with --resume: continue a checkpoint under a spec that differs from the one it was trained "
                        "with (refused otherwise; the differences are printed)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db here)")
    p.add_argument("--run-dir", help="checkpoint directory (default: <meta_train.run_dir>/<spec name>)")
    p.add_argument("--seed", type=int, help="root seed (default: the spec's)")
    p.add_argument("--max-minutes", type=float, help="stop after the iteration that passes this much wall time")
    p.add_argument("--no-population", action="store_true",
                   help="run each task's runs one after another instead of as one batched population")
    _torch_compile(p, "torch.compile the populations' steps (once per architecture; pays on long runs)")
    p.add_argument("--nproc", type=int, metavar="M",
                   help="run M ranks on this machine through torchrun (decentralised PPO; for several machines "
                        "start torchrun yourself, see docs/CLUSTER.md)")
    p.add_argument("--init", metavar="POLICY",
                   help="start a new run from this policy (e.g. lhopt imitate's imitation.pt) instead of a random one")
    p.set_defaults(func=cmd_train)

    p = g.command("train-level", "meta-train a residual policy's level with PPO (--resume)",
                  about="meta-train, with PPO on real inner runs, the level a residual policy holds: the factor of its "
                        "base schedule's learning rate, chosen before the first step from what it sees of the model "
                        "(checkpoints every iteration; --resume continues)",
                  example="lhopt train-level task_specs/cpu_residual_sharp.yaml --workers 2 --max-minutes 120")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file with meta_train.residual (its training tasks)")
    p.add_argument("--policy", metavar="POLICY", help="the residual policy whose level is learned (default: the shipped one)")
    p.add_argument("--iterations", type=int, default=40, help="PPO iterations in total (default: 40)")
    p.add_argument("--episodes", type=int, default=256, help="episodes per iteration (default: 256)")
    p.add_argument("--workers", type=int, default=1, help="episode worker processes (default: 1, in-process)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--run-dir", help="run directory (default: runs/<spec file name>-level)")
    p.add_argument("--max-minutes", type=float, help="stop after the iteration that passes this much wall time")
    p.add_argument("--dev-every", type=int, default=2,
                   help="a learning-curve point on dev tasks every N iterations, at the start and at the end (0: none)")
    p.add_argument("--dev-tasks", type=int, help="dev tasks per point (default: the spec's meta_train.dev_tasks)")
    p.add_argument("--storage", help="baseline cache the dev points read (default: lhopt eval's, runs/baselines.db)")
    p.add_argument("--observe", action="store_true",
                   help="choose the level at 1/8 of the run, from the model and what the run has shown by then")
    p.add_argument("--start-level", metavar="POLICY",
                   help="start the network from this policy file's learned level (a describing one with --observe: its "
                        "new inputs at zero; an observing one: all of it, to go on training on another spec)")
    p.add_argument("--cadences", action="store_true",
                   help="each task's runs tell the policy the losses at a cadence drawn from the spec's meta_train.reporting, "
                        "as meta-training's do and a drop-in user's may (default: every loss, as evaluation)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db here)")
    p.set_defaults(func=cmd_train_level)

    p = g.command("fit-level", "fit a cautious observing level to a level run's episodes",
                  about="fit, offline, an observing level that holds a factor only where it usually won in a "
                        "train-level --observe run's episodes (a win-probability threshold chosen on held-out folds), "
                        "as a policy file",
                  example="lhopt fit-level --episodes results/ppo/level-wide/episodes.jsonl "
                          "--start results/ppo/level-wide/dev/iter-000008/policy.pt --out runs/level-cautious")  # fmt: skip
    p.add_argument("--episodes", nargs="+", required=True, metavar="JSONL",
                   help="episodes.jsonl of train-level --observe runs of the start level's inputs")
    p.add_argument("--start", required=True, metavar="POLICY", help="an observing level's policy file (its network's "
                   "inputs, standardisation and residual policy are kept)")
    _out(p, "out", "directory for policy.pt, fit.json and fit.md", metavar="DIR", required=True)
    p.add_argument("--threshold", type=float, help="the win probability to act at (default: chosen on held-out folds)")
    p.add_argument("--thresholds", help="comma-separated candidates (default: 0.6,0.65,...,0.9)")
    p.add_argument("--folds", type=int, default=5, help="held-out folds (default: 5)")
    p.add_argument("--min-episodes", type=int, default=200, help="episodes a factor needs to be fitted (default: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fit_level)

    _imitate_command(g)

    p = g.command("ensemble", "combine policies into one that acts on their mean",
                  about="combine policies (e.g. imitate --clone-seed S for several S) into one policy file that "
                        "acts on the mean of their log-probabilities",
                  example="lhopt ensemble a.pt b.pt c.pt -o ensemble.pt")  # fmt: skip
    p.add_argument("policies", nargs="+", metavar="POLICY", help="two or more policy files of one hyperparameter space")
    _out(p, "output", "the ensemble's policy file", required=True)
    p.set_defaults(func=cmd_ensemble)

    _schedule_command(g)


def _imitate_command(g: _Group) -> None:
    p = g.command("imitate", "warm-start a policy by cloning the best of a schedule grid", threads=True,
                  about="warm-start a policy: follow a grid of learning-rate schedules on training tasks and clone "
                        "the best (resumable; then lhopt train --init)",
                  example="lhopt imitate task_specs/cpu.yaml --tasks 40 --initial default --dagger 4")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    # Every option below defaults to the spec's imitation section (docs/dsl.md), whose defaults are shown.
    p.add_argument("--tasks", type=int, help="training tasks to demonstrate on (default: the spec's; 100)")
    p.add_argument("--workers", type=int, help="worker processes (default: the spec's imitation.workers, else meta_train.workers)")
    p.add_argument("--run-dir", help="directory of the demonstrations and the policy (default: the spec's; "
                                     "<meta_train.run_dir>/<spec name>-imitation)")
    p.add_argument("--epochs", type=int, help="cloning epochs; the best held-out epoch is kept (default: the spec's; 300)")
    p.add_argument("--dagger", type=int, metavar="R",
                   help="rounds of DAgger: run the cloned policy on the same tasks, label its own decisions with "
                        "each task's label, clone again (one run per task and round; default: the spec's; 0)")
    p.add_argument("--initial", choices=("noisy", "default"),
                   help="the tasks' initial hyperparameters: meta-training's noise (noisy), or the space's defaults "
                        "as a user starts (and evaluation does); kept apart in demos-default/, imitation-default.pt "
                        "(default: the spec's; noisy)")
    p.add_argument("--margin", type=float, metavar="M",
                   help="consensus labels: every task follows the one schedule with the least mean regret over the "
                        "tasks, unless its own best ends more than M lower (relative; 0.05 = 5%%); default: the "
                        "spec's, else each task's best (kept apart in imitation-mM.pt)")
    p.add_argument("--base", metavar="SCHEDULE",
                   help="a residual policy around this learning-rate schedule (e.g. linear-lr0.03): its learning-rate "
                        "action scales an offset from the schedule, so keeping follows it; labels are the offsets "
                        "towards each task's schedule (kept apart in *-bSCHEDULE.pt; default: the spec's, else none)")
    p.add_argument("--clone-seed", type=int, metavar="S",
                   help="seed of the cloning alone (the policy's initial weights and the held-out tasks), the tasks "
                        "kept: how much the recipe itself varies (default: the spec's, else its seed; kept apart in *-cS.pt)")
    p.add_argument("--seed", type=int, help="root seed (default: the spec's)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db here)")
    p.set_defaults(func=cmd_imitate)


def _schedule_command(g: _Group) -> None:
    p = g.command("schedule", "export a policy's choices as an AdamW schedule; transfer it",
                  about="fixed schedules: export the hyperparameters a policy chooses on a task, or replay them on "
                        "a larger task",
                  example="lhopt schedule export --policy runs/smoke_adamw/policy.pt --task task.yaml")  # fmt: skip
    ssub = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    about = "run an AdamW-space policy on one task and write the schedule it chose, for torch.optim.AdamW (YAML)"
    e = ssub.add_parser("export", parents=[g.threads], help=about, description=about)
    e.add_argument("--policy", required=True,
                   help="AdamW-space policy checkpoint (policy.pt) or MLflow model URI")
    e.add_argument("--task", required=True,
                   help="a task YAML sampled from the policy's spec, e.g. by `lhopt sample SPEC --seed N`")
    _out(e, "output", "output file (default: schedule.yaml)", default="schedule.yaml")
    e.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    e.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")
    e.set_defaults(func=cmd_schedule_export)
    about = ("replay an AdamW-space policy's schedule from a small task on torch.optim.AdamW for a >= 4x larger, "
             ">= 4x longer task, against its tuned AdamW grid (paper 4.5)")  # fmt: skip
    e = ssub.add_parser("transfer", parents=[g.threads], help=about, description=about)
    e.add_argument("--policy", required=True, help="AdamW-space policy checkpoint (policy.pt) or MLflow model URI")
    e.add_argument("--small", required=True, help="task YAML the schedule is exported from")
    e.add_argument("--large", required=True, help="task YAML of the same family, >= 4x the parameters and steps")
    e.add_argument("--storage", help="Optuna storage of the baseline grid cache (default: SQLite runs/baselines.db, as lhopt eval's)")
    _out(e, "output", "write the full record (schedule, curves, grid) as JSON here")
    e.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    e.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")
    e.set_defaults(func=cmd_schedule_transfer)


def _judge_commands(g: _Group) -> None:
    _eval_command(g)

    p = g.command("compare", "compare finished evaluations task by task (paired intervals)",
                  about="is one policy better than another? finished evaluations (lhopt eval --out directories) "
                        "against the first, task by task, with paired intervals",
                  example="lhopt compare runs/eval-smoke-OLD runs/eval-smoke-NEW")  # fmt: skip
    p.add_argument("dirs", nargs="+", metavar="DIR", help="evaluation output directories; the first is the reference")
    p.add_argument("--score", choices=("test", "valid"), default="test", help="split to compare on (default: test)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    _out(p, "output", "also write the comparison as JSON here")
    p.set_defaults(func=cmd_compare)

    p = g.command("best-of", "per task, the best of several evaluations, as an evaluation",
                  about="per task, whichever of several finished evaluations ends lowest on validation (e.g. a set "
                        "of --schedule evaluations tuned per task), as an evaluation of its own",
                  example="lhopt best-of runs/eval-linear runs/eval-cosine -o runs/eval-best")  # fmt: skip
    p.add_argument("dirs", nargs="+", metavar="DIR", help="two or more output directories of lhopt eval")
    _out(p, "out", "directory to write the selection to (then: lhopt compare REF OUT)", metavar="DIR", required=True)
    p.add_argument("--by", default="valid", choices=("valid", "test"),
                   help="the split that chooses (default: valid; test is an optimistic bound, not a result)")
    p.add_argument("--score", default="test", choices=("test", "valid"), help="the split that scores (default: test)")
    p.set_defaults(func=cmd_best_of)

    p = g.command("eval-ood", "run a policy via drop-in LHOPT on programs no family covers", threads=True,
                  about="run a policy through the drop-in LHOPT on ordinary PyTorch programs no task family covers, "
                        "against 35 AdamW baselines, Schedule-Free AdamW and Prodigy, scored on test loss",
                  example="lhopt eval-ood --programs mnist_vit --steps-scale 0.25")  # fmt: skip
    p.add_argument("--policy", help="policy checkpoint (policy.pt) or MLflow model URI (default: the shipped policy)")
    p.add_argument("--programs", nargs="+", metavar="PROGRAM",
                   help="programs to run: wikitext2_lm, mnist_vit, fashion_autoencoder (default: all)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every program's T by this (e.g. 0.25 for a quick look; default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batch order (default: 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes the runs are spread over, each with --threads torch threads (default: 1)")
    p.add_argument("--data-dir", help="dataset directory (default: $LHOPT_DATA_DIR, then the user cache)")
    _out(p, "out", "output directory (default: runs/ood)", metavar="DIR", default="runs/ood")
    p.add_argument("--storage", help="Optuna storage of the baseline cache, the one lhopt eval and lhopt baselines "
                                     "use: finished baseline runs are reused by later evaluations (default: SQLite "
                                     "runs/baselines.db)")  # fmt: skip
    p.add_argument("--cache", default="runs/ood-baselines", metavar="DIR",
                   help="eval-ood's cache directory of earlier versions: runs found there are copied into --storage "
                        "(default: runs/ood-baselines)")  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="run every baseline, reading and writing no cache")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    p.set_defaults(func=cmd_eval_ood)

    p = g.command("check-dropin", "does dropping LHOPT in hurt? small programs vs default AdamW", threads=True,
                  about="does the policy hurt a user who drops LHOPT in? small programs x every reporting cadence "
                        "against AdamW at its defaults, on test loss",
                  example="lhopt check-dropin --seeds 2")  # fmt: skip
    p.add_argument("--policy", help="policy checkpoint (policy.pt) or MLflow model URI (default: the shipped policy)")
    p.add_argument("--programs", nargs="+", metavar="PROGRAM", help="regression, digits (default: both)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per program (default: 5)")
    p.add_argument("--steps", type=int, default=200, help="training steps T (default: 200)")
    _out(p, "out", "output directory (default: runs/dropin)", metavar="DIR", default="runs/dropin")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")
    p.set_defaults(func=cmd_check_dropin)

    p = g.command("curves", "plot and summarise a metric over training iterations",
                  about="plot and summarise a metric over iterations for training run directories",
                  example="lhopt curves runs/smoke -o curves.png")  # fmt: skip
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories with a metrics.jsonl")
    p.add_argument("--metric", default="reward/vs_initial_hparams", help="metric name (default: %(default)s)")
    p.add_argument("--window", type=int, default=25, help="moving-average window (default: 25)")
    _out(p, "output", "PNG file (default: curves.png)", default="curves.png")
    p.set_defaults(func=cmd_curves)


def _eval_command(g: _Group) -> None:
    p = g.command("eval", "evaluate a policy on held-out tasks against tuned AdamW", threads=True,
                  about="evaluate a policy on held-out tasks against 35 tuned AdamW baselines",
                  example="lhopt eval task_specs/smoke.yaml --policy runs/smoke/policy.pt --tasks 5")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="YAML spec file (its evaluation section)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", help="policy checkpoint (policy.pt) or MLflow model URI")
    which.add_argument("--schedule", metavar="NAME",
                       help="evaluate a fixed learning-rate schedule instead, followed through the spec's actions from "
                            "the default initial values (e.g. linear-lr0.03: the bar a learned policy must clear)")
    p.add_argument("--tasks", type=int, help="held-out tasks (default: the spec's evaluation.num_tasks)")
    p.add_argument("--set", choices=("dev", "test"), default="dev", dest="task_set",
                   help="held-out task set: dev (default; it chooses designs and checkpoints) or test (frozen tasks "
                        "under a key of their own: run each final candidate once, choose nothing there)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes the tasks are spread over, each with --threads torch threads (default: 1)")
    p.add_argument("--score", choices=("test", "valid"), default="test",
                   help="split the runs are scored on (default: test, which no run observes; both are stored)")
    p.add_argument("--initial", choices=("default", "noisy"), default="default",
                   help="initial hyperparameters: the space's defaults, as a user starts (default), or with "
                        "meta-training's noise")
    p.add_argument("--storage", help="Optuna RDB storage URL of the baseline cache, shared by every evaluation "
                                     "(default: SQLite <run_dir>/baselines.db)")
    _out(p, "out", "output directory; finished tasks there are not re-run "
                   "(default: <run_dir>/eval-<spec name>-<policy hash>[-test])", metavar="DIR")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="discard finished tasks in --out (cached baselines are kept)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db here)")
    _torch_compile(p, "torch.compile the baseline populations' steps (once per task; pays on long runs)")
    p.set_defaults(func=cmd_eval)


def _infra_commands(g: _Group) -> None:
    p = g.command("ui", "start the MLflow UI on 127.0.0.1 with lean settings", example="lhopt ui")
    p.add_argument("--backend-store-uri", help="tracking store (default: sqlite:///mlflow.db in this directory)")
    p.add_argument("--artifacts", help="artifact directory (default: ./mlartifacts)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.set_defaults(func=cmd_ui)

    p = g.command("baselines", "export or import the baseline cache as plain files",
                  about="copy the baseline cache (task grids and eval-ood runs) to or from a directory of plain files "
                        "(to share it, or keep it under version control)",
                  example="lhopt baselines import results/baselines --storage sqlite:///runs/baselines.db")  # fmt: skip
    bsub = p.add_subparsers(dest="baselines_command", required=True, metavar="ACTION")
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument("--storage", help="Optuna storage of the cache (default: SQLite runs/baselines.db, as lhopt eval's)")
    for name, about, directory, func in (
        ("export", "write each task grid's and eval-ood program's finished runs as DIR/<scope>.json.gz (unchanged "
                   "files are left as they are)", "directory to write the task grids to", cmd_baselines_export),
        ("import", "add the runs of DIR's files that the storage lacks", "a directory of lhopt baselines export",
         cmd_baselines_import),
    ):  # fmt: skip
        e = bsub.add_parser(name, parents=[storage], help=about, description=about)
        e.add_argument("directory", metavar="DIR", help=directory)
        e.set_defaults(func=func)


GROUPS = {"author specs": _spec_commands, "make policies": _policy_commands, "judge policies": _judge_commands,
          "run infrastructure": _infra_commands}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """`lhopt`'s parser: one subcommand per task a user does, listed in `lhopt --help` by group."""
    parser = argparse.ArgumentParser(
        prog="lhopt", usage="lhopt [-h] [--include-dir DIR] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(  # joins $LHOPT_SPEC_PATH (docs/dsl.md): one line here, so that --help fits a screen
        "--include-dir", action="append", default=[], metavar="DIR",
        help="specs may include .yaml files from DIR too (repeatable)",
    )  # fmt: skip
    # The listing is the description, by group; argparse's own (one flat list) is suppressed.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="lhopt",
                                help=argparse.SUPPRESS)  # fmt: skip
    # Small inner models run fastest on one thread; more threads oversubscribe shared cores.
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    listing = ["Learned hyperparameter optimizers. Options and an example: lhopt COMMAND --help"]
    for title, add_commands in GROUPS.items():
        group = _Group(sub, title, threads)
        add_commands(group)
        listing.append("\n".join(group.lines))
    parser.description = "\n\n".join(listing)
    return parser


def _policy_file_error(e: BaseException) -> bool:
    """Whether ``e`` says a policy or checkpoint file is unsafe, unreadable or inconsistent. Only
    commands that read policies import their module (and torch), so `validate` and `sample` stay light."""
    policy = sys.modules.get("lhopt_dsl.agent.policy")
    return policy is not None and isinstance(e, policy.PolicyFileError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given (lhopt train --nproc re-runs it)
    if args.command in RENAMED:
        print(f"lhopt: `lhopt {args.command}` is now `lhopt {RENAMED[args.command]}`", file=sys.stderr)
    if args.include_dir:  # every spec this process (and its workers) loads may include from them
        given = [os.path.abspath(d) for d in args.include_dir]
        os.environ[SPEC_PATH_ENV] = os.pathsep.join([*given, *filter(None, [os.environ.get(SPEC_PATH_ENV)])])
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    for flag in ("count", "iterations", "tasks", "steps", "nproc"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1")
    if (getattr(args, "seed", None) or 0) < 0:
        parser.error("--seed must be >= 0")
    try:
        return args.func(args)
    except SpecError as e:
        print(f"error: invalid spec\n{e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a dataset file that is neither on disk nor downloadable
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        if not _policy_file_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)  # "<file>: <what is wrong with it>"
        return 2
    except BrokenPipeError:  # e.g. `lhopt sample ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
