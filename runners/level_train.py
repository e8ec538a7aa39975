"""``lhopt train-level``: PPO meta-training of a learned level (:class:`~lhopt_dsl.agent.level.LearnedLevel`).

A residual policy acts around a base schedule; a level is the factor of the base's learning rate it
holds for the whole run. docs/RESULTS.md measured that the level is the task's (a forest fitted on
every outcome of 1,216 training tasks earns about 1.10x over the schedule's run on held-out ones,
from what any optimizer sees of its model before the first step), and ``bench/level_bandit.py``
that PPO learns the same from single sampled choices in a few thousand episodes, where PPO on the
residual network's per-decision actions found no signal. This runner does it on real inner runs.

One episode: a training task drawn from the spec (iterations from :data:`FIRST_ITERATION`, so the
draws are meta-training's own), its description (:func:`~lhopt_dsl.agent.rollout.described`), a
factor sampled from the level network's softmax, and two runs of the task with the same initial
weights and data order: the start policy as it is (its network, keeping the base's learning rate)
and the same holding the sampled factor from the first step
(:class:`~lhopt_dsl.agent.level.HoldLevel`); keep (1) needs the first run only. The reward is PPO's
power-law reward of the held run's final validation loss against the first run's curve, relative
to that run's own (1 = as the start policy; ``held_value.relative_to_schedule``'s reading). The
episodes of an iteration run on ``--workers`` processes; then PPO updates the network (clipped
ratio, its value head as the baseline, advantages normalised over the iteration, minibatches of
64, an entropy bonus), and the run saves its checkpoint, every episode (``episodes.jsonl``), its
metrics (``metrics.jsonl`` and MLflow) and ``policy.pt``: the start policy with the learned level,
for ``lhopt eval --policy`` and ``LHOPT(policy=...)``. A killed run resumes (``--resume``) at the
iteration it was in, reusing the episodes that iteration had finished: an iteration's choices are
drawn from its own seed by the network as the checkpoint saved it, so they are drawn again the same.
A run killed in its first iteration, before any checkpoint, resumes from its provenance
(``level_run.json``, written before the first episode): the network starts from the spec's seed, so
it is built again the same; a run dir with episodes and no provenance or checkpoint is refused.

``--observe`` trains an *observing* level instead (:class:`~lhopt_dsl.agent.level.LearnedLevel` with
``observe``): the episode's first run is the start policy's, and at :func:`~lhopt_dsl.agent.level.observing_decision`
(1/8 of the run) the network reads the task's description and the features that run showed there
(:data:`~lhopt_dsl.agent.level.OBSERVED`); the second run, with the same weights and data, follows
the first until then (the same policy, the same data: the same run) and holds the sampled factor
from there. The choice is drawn in the episode's worker, from the network the iteration started
with and a seed of the episode's own, so a resumed iteration draws it again the same. The observed
features are standardised by the first iteration's episodes (drawn before any update, so the draws
do not depend on it). ``--start-level`` starts from a trained (describing) level: its network reads
the description as before and the new inputs with zero weights, so the start chooses as it did. It
may also name a trained *observing* level (another run's ``policy.pt``): the network is its own,
standardisation included, so a level goes on training on another task distribution (a new run
directory, iterations counted from 0) from the network the other run left (its optimizer's state
starts afresh).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.describe import DESCRIPTOR_NAMES
from lhopt_dsl.agent.env import InnerTrainingEnv, log_improvement_reward
from lhopt_dsl.agent.level import (OBSERVE_AT, OBSERVED, ChosenLevel, HoldLevel, LearnedLevel, LevelNet, ObservedReader,
                                   level_rule_from_data, observing_decision)  # fmt: skip
from lhopt_dsl.agent.observation import FULL_CADENCE, draw_cadence
from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.policy_file import load_policy_file
from lhopt_dsl.agent.residual import Residual
from lhopt_dsl.agent.reward import PowerLawReward, reward_speedups
from lhopt_dsl.agent.rollout import described, run_episode
from lhopt_dsl.spec.hparams import validate_space
from lhopt_dsl.spec.sample import train_seed
from lhopt_dsl.spec.schedule import Schedule, segment_bounds

from .jobs import strict_json, write_json
from .lifeline import worker_pool
from .meta_train import has_dev_point
from .tracking import Tracker

#: The factors of the base's learning rate a level chooses among, keep first.
FACTORS: tuple[float, ...] = (1.0, 0.125, 0.25, 0.5, 2.0, 4.0, 8.0)
#: Iterations of the training draws: far from meta-training's and the measurement benches' (1,000,000 on).
FIRST_ITERATION = 3_000_000
CHECKPOINT = "level_checkpoint.pt"
#: What a run was started with (spec, start policy, options), written before its first episode.
RUN_FILE = "level_run.json"


@dataclass
class LevelSettings:
    """How a level is trained (``lhopt train-level``'s options)."""

    iterations: int = 40
    episodes: int = 256  # per iteration: one PPO update's batch (bench/level_bandit.py: 64 learned more slowly)
    workers: int = 1
    max_minutes: float | None = None
    resume: bool = False
    run_dir: Path | None = None
    policy: Path | None = None  # the residual policy whose level is learned (None: the shipped default)
    lr: float = 3e-3
    epochs: int = 4
    minibatch: int = 64
    clip: float = 0.2
    entropy: float = 0.01
    hidden: int = 64
    describe_draws: int = 512  # training draws whose descriptions standardise the network's inputs
    tracking_uri: str | None = None
    dev_every: int = 2  # iterations between learning-curve points on dev tasks (0: none)
    dev_tasks: int | None = None  # how many (None: the spec's meta_train.dev_tasks)
    storage: str | None = None  # the baseline cache the dev points read (None: lhopt eval's default)
    quiet: bool = False
    observe: bool = False  # choose at 1/8 of the run from the description and what the run showed (module docstring)
    start_level: Path | None = None  # a policy file whose learned level the network starts from
    cadences: bool = False  # draw each task's reporting cadence (the spec's meta_train.reporting), as meta-training does

    def recipe(self) -> dict[str, Any]:
        """What a resumed run must share with the run it resumes."""
        keys = ("episodes", "lr", "epochs", "minibatch", "clip", "entropy", "hidden", "describe_draws", "observe", "cadences")
        return {k: getattr(self, k) for k in keys}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=2)
def _setup(spec_path: str, policy_path: str) -> tuple[Any, ActorCritic, Any, Schedule]:
    """The spec, the start policy's network, its space and base schedule (once per process)."""
    spec = load_spec(spec_path)
    state = load_policy_file(policy_path)
    if state.get("residual") is None:
        raise ValueError(f"{policy_path} is not a residual policy: a level is a factor of a residual policy's base")
    if "members" in state["policy"]:
        raise ValueError(f"{policy_path} is an ensemble: a level goes with a single residual policy")
    space = validate_space((state.get("spec") or {}).get("hparams", {}))
    if space.model_dump() != spec.hparams.model_dump():
        raise ValueError(f"{policy_path} acts in another hyperparameter space than {spec_path}'s: train its level on "
                         "a spec of its own space")  # fmt: skip
    return spec, ActorCritic.from_checkpoint(state["policy"]), space, Schedule.from_name(state["residual"]["base"])


@functools.lru_cache(maxsize=2)
def _reader(spec_path: str, policy_path: str) -> ObservedReader:
    """The observing level's reader of the start policy's features (once per process, as :func:`_setup`)."""
    _, network, space, _ = _setup(spec_path, policy_path)
    return ObservedReader(OBSERVED, space, network.policy_size)


class Job(NamedTuple):
    """One episode's work, as plain data (it travels to worker processes)."""

    spec: str
    policy: str
    iteration: int
    slot: int
    choice: Any  # the sampled factor, or for an observing level (network state, draw seed)
    cadences: bool = False  # the task's runs report at a cadence drawn from the spec (else every loss)


def episode(job: Job | tuple[Any, ...]) -> dict[str, Any]:
    """One episode (module docstring): ``(spec, policy, iteration, slot, choice[, cadences])`` -> its
    record. ``choice`` is the sampled factor, or for an observing level ``(network state, draw seed)``:
    the network that draws the factor in the episode, from what the start's run showed. With
    ``cadences`` both runs tell the policy the losses at the task's cadence drawn from the spec's
    ``meta_train.reporting`` (as meta-training's runs do; the reward uses every loss), recorded as
    ``cadence`` ([training-loss, validation-loss] interval; null: never)."""
    spec_path, policy_path, iteration, slot, choice, cadences = Job(*job)
    torch.set_num_threads(1)
    t0 = time.process_time()
    spec, network, space, base = _setup(spec_path, policy_path)
    mt = spec.meta_train
    cfg = sample(spec, train_seed(spec.seed, iteration, slot))
    env = InnerTrainingEnv(spec.hparams, max_valid=mt.max_valid)
    at = OBSERVE_AT if isinstance(choice, tuple) else None
    told = draw_cadence(mt.reporting, cfg.seed, cfg.task.inner_steps) if cadences else FULL_CADENCE

    def run(f: float) -> Any:
        actor = Residual(HoldLevel(network, space, ChosenLevel(f, at)), space, base)
        return run_episode(env, cfg, actor, log_improvement_reward, deterministic=True, cadence=told)

    start = run(1.0)
    drawn: dict[str, Any] = {}
    if at is None:
        factor = float(choice)
    else:
        state, seed = choice
        level = LearnedLevel(FACTORS, LevelNet.from_state(state), DESCRIPTOR_NAMES, {}, OBSERVED, at)
        seen = _reader(spec_path, policy_path)(start.raw_policy[observing_decision(at, cfg.task.outer_steps)])
        x = level.inputs([described(cfg)], seen)[0]  # as the deployed level reads the same run
        pick, logp, value = draw(level.net, x[None], seed)
        factor = FACTORS[int(pick[0])]
        drawn = {"input": x.tolist(), "observed": seen[0].tolist(), "pick": int(pick[0]), "logp": float(logp[0]),
                 "value": float(value[0])}  # observed: NaN (null) where nothing was
    held = start if factor == 1.0 else run(factor)
    law = PowerLawReward(segment_bounds(cfg.task.inner_steps, cfg.task.outer_steps), start.valid_curve, mt.reward_cap)
    reward = float(law(held.valid_curve[-1])) - float(law(start.valid_curve[-1])) + 1.0
    return {"iteration": iteration, "slot": slot, "task_id": cfg.task_id, "family": cfg.family,
            "factor": float(factor), "reward": reward, "start_test_loss": float(start.test_loss),
            "test_loss": float(held.test_loss), "span": None if law.flat else float(law.span), **drawn,
            **({"cadence": [told.train_every, told.valid_every]} if cadences else {}),
            "cpu_seconds": time.process_time() - t0}  # fmt: skip


def descriptions(spec: Any, iteration: int, count: int) -> np.ndarray:
    """(count, D) descriptions of the draws of ``iteration`` (slots 0 ... count - 1)."""
    return np.stack([described(sample(spec, train_seed(spec.seed, iteration, slot))) for slot in range(count)])


def draw(net: LevelNet, x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choices (indices of :data:`FACTORS`) sampled for descriptions ``x`` from ``seed``, their
    log-probabilities and the network's values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, values = net(x)
        logp = torch.log_softmax(logits.double(), 1)
        picks = torch.multinomial(logp.exp(), 1, generator=gen)[:, 0]
    return picks.numpy(), logp.gather(1, picks[:, None])[:, 0].numpy(), values.double().numpy()


def ppo_update(net: LevelNet, opt: torch.optim.Optimizer, x: np.ndarray, picks: np.ndarray, old_logp: np.ndarray,
               values: np.ndarray, rewards: np.ndarray, settings: LevelSettings, seed: int) -> dict[str, float]:  # fmt: skip
    """PPO's clipped update of ``net`` on one iteration's episodes; returns its diagnostics."""
    z = torch.as_tensor(x)
    acts, old = torch.as_tensor(picks), torch.as_tensor(old_logp, dtype=torch.float32)
    r = torch.as_tensor(rewards, dtype=torch.float32)
    adv = r - torch.as_tensor(values, dtype=torch.float32)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv * 0
    gen = torch.Generator().manual_seed(seed)
    kls, clipped, ents, vls = [], [], [], []
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(r), generator=gen).split(settings.minibatch):
            logits, v = net(z[idx])
            logp_all = torch.log_softmax(logits, 1)
            logp = logp_all.gather(1, acts[idx, None])[:, 0]
            ratio = torch.exp(logp - old[idx])
            a = adv[idx]
            pg = -torch.min(ratio * a, torch.clamp(ratio, 1 - settings.clip, 1 + settings.clip) * a).mean()
            entropy = -(logp_all.exp() * logp_all).sum(1).mean()
            value_loss = ((v - r[idx]) ** 2).mean()
            loss = pg + 0.5 * value_loss - settings.entropy * entropy
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                kls.append(float((old[idx] - logp).mean()))
                clipped.append(float(((ratio - 1).abs() > settings.clip).float().mean()))
                ents.append(float(entropy))
                vls.append(float(value_loss))
    return {"ppo/approx_kl": float(np.mean(kls)), "ppo/clip_frac": float(np.mean(clipped)),
            "ppo/entropy": float(np.mean(ents)), "ppo/value_loss": float(np.mean(vls))}  # fmt: skip


def _read_episodes(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The episodes an earlier piece of the run wrote (a last line cut by a kill is dropped)."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[(row["iteration"], row["slot"])] = row
    return out


def _same_run(run_dir: Path, was: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume a run begun with another spec, start policy or options."""
    was = {**was, "recipe": {"observe": False, "cadences": False, **was.get("recipe", {})}}  # runs from before them
    changed = [k for k in ("spec", "spec_seed", "policy_sha256", "recipe", "start_level_sha256") if was.get(k) != now[k]]
    if changed:
        raise ValueError(f"{run_dir} was trained with other {', '.join(changed)}: resume with the same spec, start "
                         "policy and options, or start a new --run-dir")  # fmt: skip


def _drawn_by(net: LevelNet, row: dict[str, Any] | None, seed: int) -> bool:
    """Whether an episode a killed piece of the run recorded was drawn by ``net`` from ``seed`` (an
    observing level's episode is reused only then; a row of other options is run again)."""
    if row is None or "pick" not in row:
        return False
    pick, logp, _ = draw(net, np.asarray([row["input"]], dtype=np.float64), seed)
    return int(pick[0]) == int(row["pick"]) and abs(float(logp[0]) - float(row["logp"])) < 1e-6


def policy_with_level(start: dict[str, Any], net: LevelNet, fitted: dict[str, Any], observe: bool = False) -> dict[str, Any]:
    """The start policy's file data ``start`` with ``net`` as its learned level (an observing one
    with ``observe``)."""
    observe = (OBSERVED, OBSERVE_AT) if observe else ()
    return {**start, "level": LearnedLevel(FACTORS, net, DESCRIPTOR_NAMES, fitted, *observe).to_data()}


def start_from_level(net: LevelNet, path: Path) -> bool:
    """Copy into ``net`` the network of the learned level in the policy file ``path``. A describing
    level gives the same description's weights and standardisation, zero weights on inputs it did not
    read; an observing one (of train-level's observed features and fraction; ``net`` must observe)
    gives its whole network. Returns whether the observed inputs' standardisation came with it."""
    state = load_policy_file(path)
    rule = level_rule_from_data(state["level"]) if state.get("level") is not None else None
    if not isinstance(rule, LearnedLevel) or rule.factors != FACTORS or rule.descriptor != DESCRIPTOR_NAMES:
        raise ValueError(f"{path} has no learned level of train-level's factors and description to start from")
    old, d = rule.net, len(DESCRIPTOR_NAMES)
    if old.shape[2] != net.shape[2]:
        raise ValueError(f"{path}'s level has {old.shape[2]} hidden units, this run {net.shape[2]}: pass the same --hidden")
    if rule.observe:
        if rule.observe != OBSERVED or rule.at != OBSERVE_AT or net.shape[0] != d + len(OBSERVED):
            raise ValueError(f"{path}'s level observes {len(rule.observe)} features at {rule.at:g} of the run; it can start "
                             f"only an observing run (--observe) of train-level's {len(OBSERVED)} at {OBSERVE_AT:g}")  # fmt: skip
        net.load_state_dict(old.state_dict())
        return True
    with torch.no_grad():
        for name, value in old.state_dict().items():
            target = net.state_dict()[name]
            if name == "body.0.weight":
                target.zero_()
                target[:, :d] = value
            elif name in ("mean", "scale"):
                target[:d] = value
            else:
                target.copy_(value)
    return False


def _speedup(rows: Iterable[dict[str, Any]], cap: float) -> float:
    """Geometric-mean speedup over the start's run that rewards stand for
    (:func:`~lhopt_dsl.agent.reward.reward_speedups`; a run without a span has a nan one)."""
    rows = list(rows)
    if not rows:
        return float("nan")
    rewards = np.array([r["reward"] for r in rows], dtype=np.float64)
    spans = np.array([math.nan if r["span"] is None else r["span"] for r in rows], dtype=np.float64)
    return float(np.exp(np.mean(np.log(reward_speedups(rewards, spans, cap)))))


def level_dev(spec: Any, policy: dict[str, Any], run_dir: Path, iteration: int, settings: LevelSettings,
              tracker: Any) -> dict[str, float] | None:  # fmt: skip
    """A learning-curve point (:func:`runners.meta_train.dev_point`) of the policy file data ``policy``
    after ``iteration`` iterations, on the first dev tasks (always the same ones), into
    ``dev/iter-NNNNNN`` (``lhopt compare`` reads any two points). Skipped where the curve has the point."""
    from .evaluate import default_storage
    from .meta_train import dev_point

    if has_dev_point(run_dir, iteration):
        return None
    out = run_dir / "dev" / f"iter-{iteration:06d}"
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(policy, out / "policy.pt")
    return dev_point(spec, out, iteration, tasks=settings.dev_tasks or spec.meta_train.dev_tasks,
                     storage=settings.storage or default_storage(spec), workers=settings.workers, tracker=tracker,
                     quiet=settings.quiet)  # fmt: skip


def learning_curve(run_dir: Path, tracker: Any) -> Path:
    """The run's one-figure learning curve (``learning_curve.png``, and in MLflow): the sampled
    episodes' mean reward against the start's run by iteration above, the dev points below."""
    from .meta_train import _dev_rows, learning_curve_figure

    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    history = [{"iteration": r["step"], "reward/mean": r["reward/mean"], "speed/cpu_hours": r["cpu_hours"]}
               for r in rows if "reward/mean" in r]  # fmt: skip
    fig = learning_curve_figure(history, _dev_rows(run_dir))
    fig.savefig(run_dir / "learning_curve.png", dpi=100)
    tracker.log_figure(fig, "learning_curve.png")
    return run_dir / "learning_curve.png"


def train_level(spec_path: str, settings: LevelSettings) -> Path:
    """Train a learned level (module docstring); returns the run's ``policy.pt``."""
    from lhopt_dsl.controller import DEFAULT_POLICY

    spec = load_spec(spec_path)
    if not spec.meta_train.residual:
        raise ValueError(f"{spec_path} has no meta_train.residual: a level is a factor of a residual policy's base")
    policy = Path(settings.policy or DEFAULT_POLICY)
    _setup(spec_path, str(policy))  # the start policy fits the spec, or a clear error before any work
    start_state = load_policy_file(policy)
    run_dir = Path(settings.run_dir or Path("runs") / f"{Path(spec_path).stem}-level")
    ckpt_path = run_dir / CHECKPOINT
    with torch.random.fork_rng(devices=[]):  # the same network for the same spec: a first iteration resumes
        torch.manual_seed(spec.seed)
        net = LevelNet(len(DESCRIPTOR_NAMES) + (len(OBSERVED) if settings.observe else 0), len(FACTORS), settings.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    start_level = Path(settings.start_level) if settings.start_level else None
    standardised = False  # whether the observed inputs' standardisation came with the start level
    provenance = {"spec": spec_path, "spec_seed": spec.seed, "policy": str(policy), "policy_sha256": _digest(policy),
                  "recipe": settings.recipe(), "start_level_sha256": _digest(start_level) if start_level else None}  # fmt: skip
    run_file, episodes_path = run_dir / RUN_FILE, run_dir / "episodes.jsonl"
    if not settings.resume and (ckpt_path.exists() or episodes_path.exists()):
        raise FileExistsError(f"{run_dir} already holds a level run: pass --resume to go on with it, or another --run-dir")
    if settings.resume and not ckpt_path.exists() and not run_file.exists():
        raise FileNotFoundError(f"no level run to resume in {run_dir} ({CHECKPOINT} and {RUN_FILE} are missing)")
    if settings.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, "level training checkpoint")
        _same_run(run_dir, ckpt["provenance"], provenance)
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["optimizer"])
        iteration, cpu_seconds, wall_hours = int(ckpt["iteration"]), float(ckpt["cpu_seconds"]), float(ckpt["wall_hours"])
    else:  # a new run, or one killed in its first iteration (built again the same)
        if settings.resume:
            _same_run(run_dir, json.loads(run_file.read_text()), provenance)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_file, provenance)
        if start_level is not None:
            standardised = start_from_level(net, start_level)
        else:
            net.standardise_by(descriptions(spec, FIRST_ITERATION - 1, settings.describe_draws))  # draws no iteration trains on
        iteration, cpu_seconds, wall_hours, ckpt = 0, 0.0, 0.0, {}
    done = _read_episodes(episodes_path)
    tracker = Tracker(settings.tracking_uri or spec.tracking.uri, f"{spec.tracking.experiment}-level", run_dir.name,
                      run_dir, run_id=ckpt.get("run_id") if settings.resume else None)  # fmt: skip
    tracker.keep_metrics_through(iteration)
    tracker.log_params({"spec": spec_path, "policy": str(policy), **settings.recipe()})
    def fitted(at: int, cpu: float) -> dict[str, Any]:  # what a policy file says of its level's training
        return {**provenance, "iterations": at, "episodes": at * settings.episodes, "cpu_hours": cpu / 3600}

    def missing_dev_point() -> None:  # the point of the iteration the run is at, where a killed run lacks it
        if settings.dev_every and not has_dev_point(run_dir, iteration):
            level_dev(spec, policy_with_level(start_state, net, fitted(iteration, cpu_seconds), settings.observe), run_dir, iteration,
                      settings, tracker)  # fmt: skip

    began = time.monotonic()
    pool = worker_pool(settings.workers) if settings.workers > 1 else None
    try:
        if settings.dev_every and not has_dev_point(run_dir, 0):  # the start, also for a run resumed without it
            start = LevelNet(*net.shape)  # zero logits: keeps
            start.load_state_dict({**start.state_dict(), "mean": net.mean, "scale": net.scale})
            if start_level is not None:  # the level it starts from
                start_from_level(start, start_level)
            level_dev(spec, policy_with_level(start_state, start, provenance, settings.observe), run_dir, 0, settings, tracker)
        if settings.dev_every and iteration % settings.dev_every == 0:
            missing_dev_point()  # killed before this iteration's point
        while iteration < settings.iterations:
            if settings.max_minutes is not None and time.monotonic() - began > 60 * settings.max_minutes:
                break
            t0 = time.monotonic()
            it = FIRST_ITERATION + iteration
            seed = spec.seed * 1_000_003 + iteration
            if settings.observe:  # drawn in the episodes, from what the start's run showed
                state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                jobs: list[Job] = [Job(spec_path, str(policy), it, slot, (state, seed * 100_003 + slot), settings.cadences)
                                   for slot in range(settings.episodes)]  # fmt: skip
                todo = [j for j in jobs if not _drawn_by(net, done.get((j[2], j[3])), j[4][1])]
            else:
                x = descriptions(spec, it, settings.episodes)
                picks, logp, values = draw(net, x, seed)
                jobs = [Job(spec_path, str(policy), it, slot, FACTORS[int(k)], settings.cadences) for slot, k in enumerate(picks)]
                todo = [j for j in jobs if (j[2], j[3]) not in done or done[(j[2], j[3])]["factor"] != j[4]]
            again = {(j[2], j[3]) for j in todo}
            cpu_seconds += sum(done[(j[2], j[3])]["cpu_seconds"] for j in jobs if (j[2], j[3]) not in again)  # a killed piece's
            results = pool.imap_unordered(episode, todo) if pool else map(episode, todo)
            bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"iteration {iteration + 1}/{settings.iterations}",
                       unit="episode", disable=settings.quiet, leave=False,
                       mininterval=1.0 if sys.stderr.isatty() else 60.0)  # a log file gets a line a minute  # fmt: skip
            with episodes_path.open("a") as f, bar:
                for row in results:
                    done[(row["iteration"], row["slot"])] = row
                    cpu_seconds += row["cpu_seconds"]
                    f.write(json.dumps(strict_json(row)) + "\n")
                    f.flush()
                    bar.update()
            rows = [done[(j[2], j[3])] for j in jobs]
            rewards = np.array([r["reward"] for r in rows], dtype=np.float64)
            if settings.observe:
                x = np.array([r["input"] for r in rows], dtype=np.float64)
                picks, logp = np.array([r["pick"] for r in rows]), np.array([r["logp"] for r in rows])
                if iteration == 0 and not standardised:  # the observed inputs', from draws that did not depend on it
                    d = len(DESCRIPTOR_NAMES)
                    seen = np.array([r.get("observed", r["input"][d:]) for r in rows], dtype=np.float64)  # None: NaN
                    net.standardise_by(seen, d)  # what was not observed is left out of the mean, then reads as it
                    x[:, d:] = np.where(np.isfinite(seen), seen, net.mean.numpy()[d:])
                with torch.no_grad():
                    values = net(x)[1].double().numpy()
            diag = ppo_update(net, opt, x, picks, logp, values, rewards, settings, seed)
            iteration += 1
            wall_hours += (time.monotonic() - t0) / 3600
            with torch.no_grad():
                greedy = net(x)[0].argmax(1).numpy()
            metrics = {
                "reward/mean": float(rewards.mean()), "reward/speedup": _speedup(rows, spec.meta_train.reward_cap),
                **{f"choice/x{f:g}": float(np.mean(picks == k)) for k, f in enumerate(FACTORS)},
                **{f"greedy/x{f:g}": float(np.mean(greedy == k)) for k, f in enumerate(FACTORS)},
                **diag, "episodes": iteration * settings.episodes, "cpu_hours": cpu_seconds / 3600,
            }  # fmt: skip
            tracker.log_metrics(metrics, iteration)
            save_checkpoint({"provenance": provenance, "iteration": iteration, "net": net.state_dict(),
                             "optimizer": opt.state_dict(), "cpu_seconds": cpu_seconds, "wall_hours": wall_hours,
                             "run_id": tracker.run_id,
                             "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}},
                            ckpt_path)  # fmt: skip
            state = policy_with_level(start_state, net, fitted(iteration, cpu_seconds), settings.observe)
            save_checkpoint(state, run_dir / "policy.pt")
            load_policy_file(run_dir / "policy.pt")
            if settings.dev_every and iteration % settings.dev_every == 0:
                level_dev(spec, state, run_dir, iteration, settings, tracker)
            if not settings.quiet:
                print(f"iteration {iteration}: reward {metrics['reward/mean']:.4f} "
                      f"({metrics['reward/speedup']:.3f}x the start's run), greedy "
                      + " ".join(f"x{f:g} {metrics[f'greedy/x{f:g}']:.2f}" for f in FACTORS) + f", {cpu_seconds / 3600:.2f} CPU-h",
                      flush=True)  # fmt: skip
        if iteration > 0:
            missing_dev_point()  # where the run stopped
        learning_curve(run_dir, tracker)
    finally:
        if pool is not None:
            pool.terminate()
        tracker.end()
    return run_dir / "policy.pt"


def by_family(rows: Iterable[dict[str, Any]]) -> str:
    """A Markdown table of a run's episodes: per family (rows) and level (columns), the mean reward
    against the start's run and how many episodes sampled it (what PPO explored and where it paid)."""
    cells: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        cells.setdefault((r["family"], float(r["factor"])), []).append(float(r["reward"]))
    families = sorted({f for f, _ in cells})
    head = "| family | " + " | ".join(f"x{f:g}" for f in sorted(FACTORS)) + " |"
    lines = [head, "|---|" + "---:|" * len(FACTORS)]
    for fam in families:
        parts = [f"{np.mean(cells[(fam, f)]):.3f} ({len(cells[(fam, f)])})" if (fam, f) in cells else "-"
                 for f in sorted(FACTORS)]  # fmt: skip
        lines.append(f"| {fam} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m runners.level_train RUN_DIR: what a run's episodes explored, by family
    print(by_family(_read_episodes(Path(sys.argv[1]) / "episodes.jsonl").values()))
