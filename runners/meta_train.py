"""Meta-training: PPO over inner training runs, in one readable loop (after CleanRL).

    lhopt train SPEC [--iterations N] [--workers N] [--resume] [--tracking-uri URI]

Each iteration samples tasks from the spec's training distribution (seeds from the training
namespace, derived from the spec's seed and the iteration, so runs are reproducible), runs the
self-play baseline (an EMA of the policy, greedy) and several policy rollouts per task in worker
processes, computes GAE with discount 1 over whole episodes, and takes PPO steps on minibatches of
whole episodes (padded and masked, since episodes have 2 to 128 outer steps). Everything needed to
continue (policy, critic, optimizer, normalisers, EMA weights, counters, metric history) is
written atomically at the end of every iteration; ``--resume`` continues from there, and a kill at
any moment loses at most the iteration in progress.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lhopt_dsl import ExperimentSpec, sample
from lhopt_dsl.agent.actions import ActionSpace
from lhopt_dsl.agent.actor import Actor
from lhopt_dsl.agent.observation import FeatureBuilder, draw_cadence
from lhopt_dsl.agent.policy import PRESETS, ActorCritic, PolicyFileError, PolicyShape, save_checkpoint
from lhopt_dsl.agent.policy_file import load_policy_file, load_training_checkpoint
from lhopt_dsl.agent.residual import Follow, Residual
from lhopt_dsl.agent.rollout import Episode, TaskResult, gae, task_rollouts
from lhopt_dsl.spec.loader import spec_files
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.schedule import Schedule

from .distributed import Group, grads_vector, set_grads, setup
from .jobs import write_json
from .lifeline import worker_pool
from .tracking import NullTracker, Tracker


@dataclass
class Settings:
    iterations: int
    workers: int
    resume: bool = False
    tracking_uri: str | None = None
    run_dir: Path | None = None
    quiet: bool = False
    max_minutes: float | None = None  # stop (after a whole iteration) once this much time has passed
    init: Path | None = None  # a new run starts from this policy (e.g. lhopt imitate's) instead of a random one
    allow_spec_change: bool = False  # resume a checkpoint trained with another spec (the changes are printed)


#: Spec fields a run may be resumed with changed: how long and on how many processes it runs, how
#: each task's runs are batched or compiled (the same results), what it is called and where it logs.
RESUMABLE_CHANGES = ("description", "meta_train.iterations", "meta_train.workers", "meta_train.population",
                     "meta_train.compile", "tracking")


def _differences(a: Any, b: Any, at: str = "") -> list[str]:
    """The dotted paths where two plain-data trees differ (lists compared whole)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{at}.{k}" if at else str(k))]  # fmt: skip
    return [] if a == b else [at]


def spec_changes(saved: dict[str, Any] | None, spec: ExperimentSpec) -> list[str]:
    """Where ``spec`` differs from the spec a checkpoint was trained with (``saved``, its plain data;
    read with today's defaults, so fields added since compare as their defaults), except
    :data:`RESUMABLE_CHANGES`. A checkpoint that records no spec has nothing to compare."""
    if saved is None:
        return []
    try:
        saved = ExperimentSpec.model_validate(saved).model_dump(mode="json")
    except ValueError:  # a spec of another version: compared as it was written
        pass
    changed = _differences(saved, spec.model_dump(mode="json"))
    return [c for c in changed if not any(c == f or c.startswith(f + ".") for f in RESUMABLE_CHANGES)]


def policy_shape(spec: ExperimentSpec) -> PolicyShape:
    actions = ActionSpace(spec.hparams)
    features = FeatureBuilder(actions, spec.hparams)
    mt = spec.meta_train
    hidden, layers = PRESETS[mt.preset] if mt.preset else (mt.hidden_size, mt.num_layers)
    return PolicyShape(features.policy_size, features.value_size, tuple(actions.nvec), hidden, layers)


def initial_policy(spec: ExperimentSpec, init: dict[str, Any] | None, source: Any = "") -> ActorCritic:
    """A new run's policy: a fresh one of the spec's shape, or the policy saved in ``init`` (the
    contents of the file ``source``; it must have the spec's features, actions and size)."""
    shape = policy_shape(spec)
    if init is None:
        return ActorCritic(shape)
    wanted = spec.meta_train.residual
    around = (init.get("residual") or {}).get("base")
    if around is not None and wanted is None:
        raise PolicyFileError(f"{source}: acts around the base schedule {around}; to train it with PPO, set "
                              f"meta_train.residual: {around} in the spec (its actions are offsets from that schedule)")
    if around is None and wanted is not None:
        raise PolicyFileError(f"{source}: a plain policy, but the spec trains a residual policy around {wanted}, which "
                              "would read its learning-rate actions as offsets from the schedule; start from a policy "
                              f"made around it (lhopt imitate --base {wanted}) or from none")
    if around is not None and Schedule.from_name(around).name != Schedule.from_name(wanted).name:
        raise PolicyFileError(f"{source}: acts around the base schedule {around}, but the spec's meta_train.residual is "
                              f"{wanted}; make them the same")
    if init.get("level") is not None:
        raise PolicyFileError(f"{source}: holds a level rule (a learning-rate level chosen outside the network), which "
                              "PPO does not train and would silently drop; start from the policy it was made from "
                              "(its 'fitted' record names the spec and data)")
    model = ActorCritic.from_checkpoint(init["policy"])
    if model.kind == "ensemble":
        raise PolicyFileError(f"{source}: an ensemble of {len(model.members)} policies, which cannot be trained on; "
                              "start from one of its members (the files it was combined from)")
    try:
        model.check_compatible(shape.policy_size, shape.value_size, shape.nvec)
    except ValueError as e:
        raise PolicyFileError(f"{source}: {e}") from None
    if (model.shape.hidden_size, model.shape.num_layers) != (shape.hidden_size, shape.num_layers):
        raise PolicyFileError(f"{source}: {model.shape.num_layers} x {model.shape.hidden_size} LSTM units, but the spec "
                              f"asks for {shape.num_layers} x {shape.hidden_size}; start from a policy made with this spec")
    if spec.meta_train.init_temperature != 1:
        model.sharpen(spec.meta_train.init_temperature)
    return model


# --- rollout workers -----------------------------------------------------------------------------


def actors(spec: ExperimentSpec, policy: ActorCritic, ema: ActorCritic | None) -> tuple[Actor[Any], Actor[Any] | None]:
    """What acts in a task's rollouts: the policy (around the spec's residual base, if any) and the
    reward's baseline (``meta_train.baseline``): the EMA policy acting as the policy does, the base
    schedule's follower, or None for CIAO at the initial hyperparameters."""
    mt = spec.meta_train
    base = Schedule.from_name(mt.residual) if mt.residual else None

    def acting(net: ActorCritic) -> Actor[Any]:
        return Residual(net, spec.hparams, base) if base is not None else net

    if mt.baseline == "schedule":
        assert base is not None  # the spec's validator requires it
        return acting(policy), Follow([base], spec.hparams)
    return acting(policy), (acting(ema) if ema is not None and mt.baseline == "self_play" else None)


def _job(args: tuple) -> TaskResult:
    cfg, policy_ckpt, ema_ckpt, spec_json, rollouts, seed, device, data_dir = args
    spec = ExperimentSpec.model_validate_json(spec_json)
    policy = ActorCritic.from_checkpoint(policy_ckpt)
    actor, baseline = actors(spec, policy, ActorCritic.from_checkpoint(ema_ckpt) if ema_ckpt is not None else None)
    cadence = draw_cadence(spec.meta_train.reporting, seed, cfg.task.inner_steps)
    cpu = time.process_time()
    result = task_rollouts(cfg, actor, baseline, spec.hparams, rollouts=rollouts, seed=seed, device=device,
                         data_dir=data_dir, max_valid=spec.meta_train.max_valid, population=spec.meta_train.population,
                         compiled=spec.meta_train.compile, cadence=cadence, critic=policy,
                         reward_cap=spec.meta_train.reward_cap,
                         reward_reference=spec.meta_train.reward_reference)  # fmt: skip
    result.cpu_seconds, result.pid = time.process_time() - cpu, os.getpid()
    return result


def _pad(episodes: list[Episode], key: str) -> torch.Tensor:
    """(T_max, B, ...) tensor of one field, zero-padded at the end of shorter episodes."""
    longest = max(len(e) for e in episodes)
    rows = []
    for e in episodes:
        x = np.asarray(getattr(e, key) if isinstance(key, str) else key(e))
        pad = np.zeros((longest - len(x), *x.shape[1:]), dtype=x.dtype)
        rows.append(np.concatenate([x, pad]))
    return torch.as_tensor(np.stack(rows, axis=1))


def normalise_advantages(episodes: list[Episode], how: str = "batch") -> dict[int, np.ndarray]:
    """Each episode's GAE advantages (``e.advantages``) standardised, by ``id(episode)``: over the
    whole batch (``batch``) or over the rollouts of the episode's own task (``task``, grouped by
    task id), so that a task whose rollouts all did about as well still says which did better."""
    if how not in ("batch", "task"):
        raise ValueError(f"advantage_norm must be 'batch' or 'task'; got {how!r}")
    groups: dict[str, list[Episode]] = {}
    for e in episodes:
        groups.setdefault(e.task_id if how == "task" else "", []).append(e)
    out: dict[int, np.ndarray] = {}
    for group in groups.values():
        adv = np.concatenate([e.advantages for e in group])
        mean, std = adv.mean(), adv.std() + 1e-8
        out.update({id(e): ((e.advantages - mean) / std).astype(np.float32) for e in group})
    return out


def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    episodes: list[Episode],
    mt: Any,
    rng: np.random.Generator,
    group: Group | None = None,
    *,
    train_actor: bool = True,
    start: ActorCritic | None = None,
) -> dict[str, float]:
    """GAE (discount 1) per episode, then clipped-PPO epochs over minibatches of whole episodes.

    The actions PPO scores are the innermost policy's own choices (``Episode.proposed``), whose
    log-probabilities the episode recorded: a residual policy's offsets, not the learning-rate
    actions they were carried out as. ``train_actor`` False trains the critic alone (the actor's
    terms are left out of the loss, so its weights get no gradient: the critic's warm-up).
    ``start``: the policy the run started from; with ``mt.kl_to_start`` > 0 the loss adds that weight
    times the mean KL divergence from its action distributions to the model's, per decision.

    With a ``group`` of several ranks (every rank holding the same ``episodes`` and ``rng``), each
    rank computes the gradient of its share of every minibatch's loss and the gradients are summed
    over the ranks before the step, so every rank takes the step one process would take.
    """
    group = group or Group()
    params = list(model.parameters())
    for e in episodes:
        e.advantages, e.returns = gae(e.rewards, e.values, 1.0, mt.gae_lambda)
    normalised = normalise_advantages(episodes, mt.advantage_norm)
    kl_weight = float(getattr(mt, "kl_to_start", 0.0)) if start is not None and train_actor else 0.0
    kls, clips, entropies, pg_losses, v_losses, start_kls = [], [], [], [], [], []
    for _epoch in range(mt.update_epochs):
        order = rng.permutation(len(episodes))
        for k in range(0, len(order), mt.minibatch_episodes):
            batch = [episodes[i] for i in order[k : k + mt.minibatch_episodes]]
            # The minibatch's loss is a mean over all its steps; this rank adds its share's terms.
            n = torch.tensor(float(sum(len(e) for e in batch)))
            mine = [batch[i] for i in group.share(len(batch))]
            optimizer.zero_grad()
            sums = [0.0] * 6  # kl, clip fraction, entropy, policy loss, value loss, KL from the start: this share's terms
            if mine:
                x, v = _pad(mine, "policy_obs").float(), _pad(mine, "value_obs").float()  # (T, B, F)
                acts = _pad(mine, _chosen).long()  # (T, B, D)
                mask = _pad(mine, lambda e: np.ones(len(e), dtype=np.float32)).float()  # (T, B)
                old_lp = _pad(mine, "logprobs").float()
                adv = _pad(mine, lambda e: normalised[id(e)]).float()
                ret = _pad(mine, "returns").float()
                new_lp, entropy, values = model.evaluate(x, v, acts)
                log_ratio = new_lp - old_lp
                ratio = log_ratio.exp()
                clipped = ratio.clamp(1 - mt.clip_coef, 1 + mt.clip_coef)
                pg_loss = (torch.max(-adv * ratio, -adv * clipped) * mask).sum() / n
                v_loss = 0.5 * (((values - ret) ** 2) * mask).sum() / n
                ent = (entropy * mask).sum() / n
                loss = mt.value_coef * v_loss
                start_kl = (kl_from(start, model, x) * mask).sum() / n if kl_weight else torch.zeros(())
                if train_actor:
                    loss = loss + pg_loss - mt.entropy_coef * ent + kl_weight * start_kl
                loss.backward()
                with torch.no_grad():
                    sums = [float((((ratio - 1) - log_ratio) * mask).sum() / n),
                            float((((ratio - 1).abs() > mt.clip_coef).float() * mask).sum() / n),
                            float(ent), float(pg_loss), float(v_loss), float(start_kl)]  # fmt: skip
            if group.world > 1:  # one collective: the summed gradients and the summed metric terms
                sums = set_grads(params, group.all_reduce(grads_vector(params, sums)))
            torch.nn.utils.clip_grad_norm_(params, mt.max_grad_norm)
            optimizer.step()
            for series, value in zip((kls, clips, entropies, pg_losses, v_losses, start_kls), sums):
                series.append(value)
    return {
        "ppo/kl_to_start": float(np.mean(start_kls)),
        "ppo/actor_trained": float(train_actor),
        "ppo/approx_kl": float(np.mean(kls)),
        "ppo/clip_frac": float(np.mean(clips)),
        "ppo/entropy": float(np.mean(entropies)),
        "ppo/policy_loss": float(np.mean(pg_losses)),
        "ppo/value_loss": float(np.mean(v_losses)),
    }


def policy_data(spec: ExperimentSpec, model: ActorCritic) -> dict[str, Any]:
    """What a policy file of ``model`` trained on ``spec`` holds: the network, the spec (its
    hyperparameter space) and, for a residual policy, its base schedule, so that
    :func:`~lhopt_dsl.controller.load_policy` acts with it as it was trained to act."""
    data: dict[str, Any] = {"policy": model.to_checkpoint(), "spec": spec.model_dump(mode="json")}
    if spec.meta_train.residual:
        data["residual"] = Residual(model, spec.hparams, Schedule.from_name(spec.meta_train.residual)).to_data()
    return data


def acting_metrics(episodes: Sequence[Episode], spec: ExperimentSpec) -> dict[str, float]:
    """What the sampled episodes did: the fraction of decisions whose own learning-rate action was
    not x1 (for a residual policy: an offset move away from following the schedule), the fraction
    that saved a checkpoint and the fraction that went back to one (load or swap; an empty slot's
    counts too, though it does nothing)."""
    actions = ActionSpace(spec.hparams)
    lr, keep = actions.names.index("lr"), int(actions.identity()[actions.names.index("lr")])
    chosen = np.concatenate([_chosen(e) for e in episodes])
    restarts = [kind for e in episodes for kind, _ in e.restarts]
    return {"policy/lr_moves": float(np.mean(chosen[:, lr] != keep)),
            "policy/saves": float(np.mean([k == "save" for k in restarts])) if restarts else 0.0,
            "policy/restores": float(np.mean([k in ("load", "swap") for k in restarts])) if restarts else 0.0}


def _chosen(e: Episode) -> np.ndarray:
    """The actions an episode's log-probabilities belong to: the innermost policy's own."""
    return e.proposed if e.proposed is not None else e.actions


def kl_from(reference: ActorCritic, model: ActorCritic, x: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of the actors' action distributions at every step of the (T, B, Fp)
    sequences ``x``, summed over the action dimensions: (T, B), differentiable in ``model``."""
    with torch.no_grad():
        ref_logits, _ = reference.actor_forward(x)
    logits, _ = model.actor_forward(x)
    return sum(torch.distributions.kl_divergence(p, q) for p, q in zip(reference.dists(ref_logits), model.dists(logits)))


def save_atomic(obj: Any, path: Path) -> None:
    """Tensors and plain data only (see :func:`save_checkpoint`), so that resuming, and anyone given
    the policy, loads it without unpickling code."""
    save_checkpoint(obj, path)


#: The dev-set metrics of the learning curve (:func:`dev_evaluation`), from the evaluation summary.
DEV_METRICS = ("pairs_ge_2x", "best_ge_1x", "speedup_median", "speedup_geomean")


def dev_evaluation(spec: ExperimentSpec, model: ActorCritic, run_dir: Path, iteration: int, *, workers: int,
                   tracker: Tracker | NullTracker, quiet: bool = False, last: bool = False) -> dict[str, float] | None:  # fmt: skip
    """The learning curve on held-out tasks: every ``meta_train.dev_every`` iterations (and at the
    start, and at the ``last`` iteration of a run), the policy as it is after ``iteration`` iterations acts greedily on the first
    ``dev_tasks`` dev tasks (always the same ones) against the cached AdamW grids, scored on test
    loss as ``lhopt eval`` scores; the row goes to ``run_dir/dev_curve.jsonl`` and MLflow
    (``dev/...`` at step ``iteration``). Resumable: an iteration already in the curve is skipped,
    and a half-finished evaluation picks up its finished tasks (``run_dir/dev/iter-NNNNNN``). The
    grids are read from (and computed into) the spec's baseline cache, ``<run_dir>/baselines.db``
    as ``lhopt eval`` uses by default; import ``results/baselines`` there first and it costs only
    the policy's runs."""
    mt = spec.meta_train
    if not mt.dev_every or (iteration % mt.dev_every and not last) or has_dev_point(run_dir, iteration):
        return None
    from .evaluate import default_storage

    out = run_dir / "dev" / f"iter-{iteration:06d}"
    out.mkdir(parents=True, exist_ok=True)
    save_atomic(policy_data(spec, model), out / "policy.pt")
    return dev_point(spec, out, iteration, tasks=mt.dev_tasks, storage=default_storage(spec), workers=workers,
                     tracker=tracker, quiet=quiet)  # fmt: skip


def has_dev_point(run_dir: Path, iteration: int) -> bool:
    """Whether the run's learning curve (``dev_curve.jsonl``) has its point at ``iteration``."""
    curve = run_dir / "dev_curve.jsonl"
    return curve.exists() and any(json.loads(line).get("step") == iteration
                                  for line in curve.read_text().splitlines() if line.strip())  # fmt: skip


def dev_point(spec: ExperimentSpec, out: Path, iteration: int, *, tasks: int, storage: str, workers: int,
              tracker: Tracker | NullTracker, quiet: bool) -> dict[str, float]:  # fmt: skip
    """One learning-curve point: the policy file ``out/policy.pt``, greedy, on the first ``tasks`` dev
    tasks against their cached AdamW grids, scored on test loss as ``lhopt eval`` scores; records in
    ``out`` (resumable), the row in the run's ``dev_curve.jsonl`` and MLflow (``dev/...`` at ``iteration``)."""
    from .evaluate import eval_config, evaluate_tasks, manifest_of, summarise

    policy_path = out / "policy.pt"
    # A manifest as lhopt eval writes one, so that `lhopt compare` reads any two points of the curve.
    manifest = manifest_of(spec, policy_path, initial="default", task_set="dev", storage=storage, out=out)
    write_json(out / "manifest.json", {**manifest, "iteration": iteration})
    configs = [eval_config(spec, i) for i in range(tasks)]
    records = evaluate_tasks(configs, policy_path, out, storage=storage, device=spec.device, data_dir=spec.data_dir,
                             max_valid=spec.meta_train.max_valid, compiled=False, workers=workers, threads=1,
                             quiet=quiet)  # fmt: skip
    overall = summarise(records, "test", resamples=500)["overall"]
    row = {f"dev/{k}": float(overall[k]["value"]) for k in DEV_METRICS}
    row["dev/tasks"] = float(len(records))
    tracker.log_metrics(row, step=iteration, local_file="dev_curve.jsonl")
    return row


def cpu_seconds(results: Sequence[TaskResult], main_seconds: float, ranks: int) -> float:
    """An iteration's CPU time: every task's runs, wherever they ran, plus the learner's own (this
    process's, less the tasks it ran itself, counted once per rank as every rank learns alike)."""
    here = sum(r.cpu_seconds for r in results if r.pid == os.getpid())
    return float(sum(r.cpu_seconds for r in results) + ranks * max(main_seconds - here, 0.0))


def _cpu_hours(history: Sequence[dict[str, Any]]) -> float:
    """CPU-hours of PPO so far: the last iteration's running total (0 before any, or in a history
    written before the total was kept)."""
    return float(history[-1].get("speed/cpu_hours", 0.0)) if history else 0.0


def _dev_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "dev_curve.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def learning_curve_figure(history: Sequence[dict[str, Any]], dev_rows: Sequence[dict[str, Any]], window: int = 5):
    """One figure of a run's learning: above, the sampled episodes' reward (against the schedule
    where that is the baseline) by iteration with its moving average; below, the dev-set metrics
    at their points. The title gives the CPU-hours of PPO where the history records them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "reward/vs_schedule" if any("reward/vs_schedule" in h for h in history) else "reward/mean"
    steps = np.asarray([h["iteration"] for h in history], dtype=float)
    values = np.asarray([h.get(key, np.nan) for h in history], dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    top.plot(steps, values, alpha=0.3, color="tab:blue")
    w = max(1, min(window, len(values)))
    if len(values):
        top.plot(steps[w - 1 :], np.convolve(values, np.ones(w) / w, mode="valid"), color="tab:blue",
                 label=f"{key}, moving average of {w}")  # fmt: skip
    top.axhline(1.0, color="gray", lw=0.8, ls="--")
    top.set_ylabel(key)
    top.legend(fontsize=8)
    hours = [h["speed/cpu_hours"] for h in history if "speed/cpu_hours" in h]
    top.set_title(f"{len(history)} PPO iterations" + (f", {hours[-1]:.2f} CPU-hours" if hours else ""))
    for metric, color in (("dev/speedup_geomean", "tab:red"), ("dev/pairs_ge_2x", "tab:green"), ("dev/best_ge_1x", "tab:purple")):
        pts = [(r["step"], r[metric]) for r in dev_rows if metric in r]
        if pts:
            bottom.plot(*zip(*pts), marker="o", color=color, label=metric)
    bottom.axhline(1.0, color="gray", lw=0.8, ls="--")
    bottom.set_xlabel("PPO iteration")
    bottom.set_ylabel("dev tasks (greedy)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _hparam_figure(episodes: list[Episode], names: Sequence[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = (len(names) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.5 * cols, 6))
    for ax, name in zip(axes.flat, names):
        for e in episodes[:12]:
            progress = (np.arange(len(e)) + 1) / len(e)
            ax.plot(progress, [h[name] for h in e.hparams], alpha=0.6)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("progress")
    fig.suptitle("Hyperparameters chosen by the policy (sampled episodes)")
    fig.tight_layout()
    return fig


def train(spec: ExperimentSpec, settings: Settings, spec_path: str | None = None) -> Path:
    """Meta-train a policy on ``spec``; return the path of the final checkpoint."""
    group = setup(spec.device)  # one process, or one rank of a torchrun job (runners/distributed.py)
    try:
        with terminate_as_interrupt():
            return _train(spec, settings, spec_path, group)
    finally:
        group.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt; ``signum`` gives the command its exit status, 128 + signum
    (143), as a process ended by the signal would have, while what is saved on interrupt is saved."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's time limit, torchrun stopping a job) unwinds like Ctrl-C: the
    worker pool is terminated (it would outlive a killed parent) and the MLflow run marked KILLED;
    the checkpoint of the last finished iteration stays as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@dataclass
class _Learner:
    """What PPO trains and carries from one iteration to the next (all of it in the checkpoint)."""

    model: ActorCritic
    ema: ActorCritic  # the self-play baseline: an exponential moving average of the model
    origin: ActorCritic | None  # the policy the run started from (for the KL penalty), or None
    optimizer: torch.optim.Optimizer
    start: int  # the iteration to run next
    history: list[dict[str, float]]
    run_id: str | None  # MLflow's run, continued on resume


def _learner(spec: ExperimentSpec, settings: Settings, state: dict[str, Any] | None, group: Group) -> _Learner:
    """A new run's policy (random, or ``settings.init``'s) or a resumed run's whole state."""
    mt = spec.meta_train
    # A new run may start from a given policy, read by rank 0 (the others may not see the file).
    init = load_policy_file(settings.init) if group.main and settings.init and not state else None
    init = group.broadcast(init) if settings.init and not state else None
    torch.manual_seed(spec.seed)
    model = ActorCritic.from_checkpoint(state["policy"]) if state else initial_policy(spec, init, settings.init)
    if not state and init is None and mt.keep_bias:
        actions = ActionSpace(spec.hparams)
        model.favour(actions.identity(), actions.keeps(), mt.keep_bias)
    ema = ActorCritic.from_checkpoint(state["ema"]) if state else copy.deepcopy(model)
    origin = None
    if mt.kl_to_start > 0:
        saved = state.get("start") if state else None
        origin = ActorCritic.from_checkpoint(saved) if saved is not None else copy.deepcopy(model)
        origin.requires_grad_(False)
    if not mt.update_normalisers and model.policy_norm.count == 0:
        raise ValueError("meta_train.update_normalisers: false keeps the feature normalisers of the policy the run "
                         "starts from, but this one's have seen no data; start from a trained policy (--init) or "
                         "set update_normalisers: true")
    actors(spec, model, ema)  # a space the base schedule cannot be followed in fails here, not in a worker
    optimizer = torch.optim.Adam(model.parameters(), lr=mt.learning_rate, eps=1e-5)
    learner = _Learner(model, ema, origin, optimizer, 0, [], None)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        for group_ in optimizer.param_groups:  # the spec's rate (a resume --allow-spec-change may have changed it)
            group_["lr"] = mt.learning_rate
        torch.set_rng_state(state["torch_rng"])
        learner.start, learner.history, learner.run_id = state["iteration"], state["history"], state.get("run_id")
    return learner


def _tracker(spec: ExperimentSpec, settings: Settings, spec_path: str | None, group: Group, run_dir: Path,
             learner: _Learner) -> Tracker | NullTracker:
    """Rank 0's MLflow run (new, or the resumed one); the other ranks log nothing."""
    if not group.main:
        return NullTracker(learner.run_id)
    tracker = Tracker(settings.tracking_uri or spec.tracking.uri, spec.tracking.experiment, spec.name, run_dir,
                      learner.run_id)  # fmt: skip
    tracker.keep_metrics_through(learner.start)  # rows written after the checkpoint was (a kill between the two)
    if learner.run_id is None:
        tracker.log_params(spec.model_dump(mode="json"))
        if settings.init:
            tracker.log_params({"init_policy": str(settings.init)})
        if spec_path:
            for path in spec_files(spec_path):  # the spec and every file it includes
                tracker.log_artifact(path, "spec")
    return tracker


def _rollouts(spec: ExperimentSpec, spec_json: str, learner: _Learner, iteration: int, pool: Any,
              group: Group) -> list[TaskResult]:  # fmt: skip
    """Every task's baseline runs and policy episodes of one iteration, on every rank in task order
    (``spec_json``: the spec as the workers read it)."""
    mt = spec.meta_train
    policy_ckpt = learner.model.to_checkpoint()
    ema_ckpt = learner.ema.to_checkpoint() if mt.baseline == "self_play" else None
    jobs = []
    for j in group.share(mt.tasks_per_iteration):  # this rank's tasks; the job's are those of one process
        seed = train_seed(spec.seed, iteration, j)
        jobs.append((sample(spec, seed), policy_ckpt, ema_ckpt, spec_json, mt.rollouts_per_task, seed,
                     spec.device, spec.data_dir))  # fmt: skip
    results = pool.map(_job, jobs) if pool else [_job(a) for a in jobs]
    return group.gather(results)


def _learn(spec: ExperimentSpec, learner: _Learner, episodes: list[Episode], iteration: int, group: Group) -> dict[str, float]:
    """The PPO update, then the normalisers and the self-play baseline; returns PPO's metrics."""
    mt, model, ema = spec.meta_train, learner.model, learner.ema
    ppo = ppo_update(model, learner.optimizer, episodes, mt, np.random.default_rng([spec.seed, iteration]), group,
                     train_actor=iteration >= mt.critic_warmup, start=learner.origin)  # fmt: skip
    if mt.update_normalisers:
        model.policy_norm(np.concatenate([e.raw_policy for e in episodes]), update=True)
        model.value_norm(np.concatenate([e.raw_value for e in episodes]), update=True)
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(mt.ema_decay).add_(pm, alpha=1 - mt.ema_decay)
    ema.policy_norm.load_state_dict(model.policy_norm.state_dict())
    ema.value_norm.load_state_dict(model.value_norm.state_dict())
    return ppo


def iteration_metrics(spec: ExperimentSpec, results: Sequence[TaskResult], episodes: Sequence[Episode],
                      elapsed: float, rollout_time: float) -> dict[str, float]:
    """One iteration's rewards, acting and speed (PPO's own metrics come from :func:`ppo_update`)."""
    mt = spec.meta_train
    values = np.concatenate([e.values for e in episodes])
    returns = np.concatenate([e.returns for e in episodes])
    var = returns.var()
    # Each task also ran CIAO at its initial hyperparameters and, unless the baseline is that run, the baseline's.
    inner = sum(e.inner_steps for e in episodes) + sum(r.inner_steps * (1 if mt.baseline == "fixed" else 2) for r in results)
    metrics = {
        "ppo/explained_variance": float(1 - np.var(returns - values) / var) if var > 0 else math.nan,
        "reward/mean": float(np.mean([e.final_reward for e in episodes])),
        "reward/vs_initial_hparams": float(np.mean([e.reward_vs_initial for e in episodes])),
        "reward/shaped_return": float(np.mean([e.rewards.sum() for e in episodes])),
        **({"reward/vs_schedule": float(np.mean([e.final_reward for e in episodes]))}
           if mt.baseline == "schedule" else {}),
        **acting_metrics(episodes, spec),
        "speed/episodes_per_s": len(episodes) / elapsed,
        "speed/inner_steps_per_s": inner / elapsed,
        "speed/rollout_share": rollout_time / elapsed,
        "speed/population_share": float(np.mean([r.population for r in results])),
    }
    for fam in sorted({e.family for e in episodes}):
        metrics[f"reward_by_family/{fam}"] = float(np.mean([e.reward_vs_initial for e in episodes if e.family == fam]))
    for told, kind in ((True, "full"), (False, "sparse")):  # the tasks whose runs were told every loss, or not
        mine = [e.reward_vs_initial for r in results if r.cadence.full == told for e in r.episodes]
        if mine:
            metrics[f"reward_by_reporting/{kind}"] = float(np.mean(mine))
    return metrics


def _checkpoint(spec: ExperimentSpec, learner: _Learner, iteration: int, run_id: str | None) -> dict[str, Any]:
    """Everything a resumed run needs to go on as if never stopped (tensors and plain data only)."""
    origin = learner.origin
    return {
        **policy_data(spec, learner.model),
        "iteration": iteration,
        "ema": learner.ema.to_checkpoint(),
        "optimizer": learner.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": learner.history,
        "run_id": run_id,
        **({"start": origin.to_checkpoint()} if origin is not None else {}),
    }


def _check_resumed_spec(state: dict[str, Any] | None, spec: ExperimentSpec, settings: Settings, ckpt_path: Path) -> None:
    """Refuse to resume a checkpoint under a spec that changes what it trains on or how, unless
    ``settings.allow_spec_change`` (then the changes are printed and the run goes on)."""
    changes = spec_changes(state.get("spec"), spec) if state else []
    if not changes:
        return
    listed = ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "")
    if not settings.allow_spec_change:
        raise ValueError(f"{ckpt_path} was trained with another spec than this one ({listed} differ); resume with the "
                         "spec it was trained with, start a new run (another spec name or --run-dir), or continue "
                         "under the new spec on purpose with --allow-spec-change")  # fmt: skip
    print(f"resuming {ckpt_path} under a changed spec ({listed}), as --allow-spec-change asks")


def _train(spec: ExperimentSpec, settings: Settings, spec_path: str | None, group: Group) -> Path:
    mt = spec.meta_train
    run_dir = settings.run_dir or Path(mt.run_dir) / spec.name
    ckpt_path = run_dir / "checkpoint.pt"
    state = None
    if group.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = load_training_checkpoint(ckpt_path) if settings.resume and ckpt_path.exists() else None
        if settings.resume and state is None:
            print(f"no checkpoint at {ckpt_path}; starting a new run")
        _check_resumed_spec(state, spec, settings, ckpt_path)
    state = group.broadcast(state)  # the job's whole state, whatever number of ranks wrote it
    learner = _learner(spec, settings, state, group)
    model, history, start = learner.model, learner.history, learner.start
    tracker = _tracker(spec, settings, spec_path, group, run_dir, learner)
    spec_json = spec.model_dump_json()
    pool = worker_pool(settings.workers, torch.set_num_threads, (1,)) if settings.workers > 1 else None
    bar = tqdm(range(start, settings.iterations), initial=start, total=settings.iterations, desc="meta-train",
               unit="it", disable=settings.quiet or not group.main)  # fmt: skip
    started = time.perf_counter()

    def dev(iteration: int, last: bool = False) -> None:
        if group.main:
            dev_evaluation(spec, model, run_dir, iteration, workers=max(settings.workers, 1), tracker=tracker,
                           quiet=settings.quiet, last=last)  # fmt: skip

    try:
        for iteration in bar:
            dev(iteration)  # the learning curve on dev tasks, at the start and every dev_every iterations
            # Rank 0's clock decides, so that every rank stops together (no message without a limit).
            late = settings.max_minutes is not None and time.perf_counter() - started > 60 * settings.max_minutes
            if settings.max_minutes is not None and group.broadcast(late):
                if group.main:
                    print(f"time limit of {settings.max_minutes:g} min reached after {iteration} iterations")
                break
            t0, comm0, cpu0 = time.perf_counter(), group.comm_seconds, time.process_time()
            results = _rollouts(spec, spec_json, learner, iteration, pool, group)
            episodes = [e for r in results for e in r.episodes]
            rollout_time = time.perf_counter() - t0
            ppo = _learn(spec, learner, episodes, iteration, group)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(results, time.process_time() - cpu0, group.world)
            metrics = {**ppo, **iteration_metrics(spec, results, episodes, elapsed, rollout_time),
                       "speed/ranks": group.world,  # gathering episodes, summing gradients:
                       "speed/comm_share": (group.comm_seconds - comm0) / elapsed,
                       "speed/cpu_seconds": cpu, "speed/cpu_hours": _cpu_hours(history) + cpu / 3600}  # fmt: skip
            history.append({"iteration": iteration + 1, **metrics})
            tracker.log_metrics(metrics, step=iteration + 1)
            if not group.main:
                continue
            save_atomic(_checkpoint(spec, learner, iteration + 1, tracker.run_id), ckpt_path)
            bar.set_postfix(episodes=len(episodes) * (iteration + 1), reward=f"{metrics['reward/vs_initial_hparams']:.3f}")
            if (iteration + 1) % 10 == 0 or iteration + 1 == settings.iterations:
                tracker.log_figure(_hparam_figure(episodes, spec.hparams.hparam_names()), "hparams.png")
                tracker.log_figure(learning_curve_figure(history, _dev_rows(run_dir)), "learning_curve.png")
                import matplotlib.pyplot as plt

                plt.close("all")
    except BaseException:
        tracker.end("KILLED")
        raise
    finally:
        if pool:
            pool.terminate()
    policy_path = run_dir / "policy.pt"
    if not group.main:
        return policy_path  # written by rank 0
    dev(int(history[-1]["iteration"]) if history else start, last=True)  # the curve's end: the policy as saved
    if history:
        tracker.log_figure(learning_curve_figure(history, _dev_rows(run_dir)), "learning_curve.png")
    save_atomic({**policy_data(spec, model), "history": history}, policy_path)
    tracker.log_policy(policy_path, spec.tracking.registered_model)
    tracker.end()
    return policy_path
