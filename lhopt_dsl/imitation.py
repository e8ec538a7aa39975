"""Imitation warm-start: demonstrations from a grid of learning-rate schedules, and behaviour cloning.

PPO from scratch spends thousands of episodes discovering what a grid search finds in one: which
learning rate, and which decay, suits a task. Here each training task is run by a population of
*followers*, one per target schedule ``lr(p) = L * shape(p)`` (and one that keeps the initial
value). A follower plays the policy's part through the policy's own action space: at each decision
it takes the learning-rate action that brings the value nearest to its target, keeps every other
hyperparameter and never restarts. Its episode therefore holds exactly what a policy would have
seen and done, and the best follower of a task (lowest final validation loss, the reward's own
criterion) is a demonstration: observations and action labels. :func:`clone` fits the actor to the
demonstrations by maximum likelihood and the critic to their returns; PPO then starts from there
(``lhopt train --init``) instead of from a random walk.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from .observation import FULL_CADENCE, Cadence
from .actor import Actor
from .policy import ActorCritic
from .rollout import Episode, task_rollouts
from .sample import TaskConfig
from .residual import Follow, Residual
from .schedule import KEEP, Schedule, shape_factor
from .spec.hparams import HyperparameterSpace

#: The default grid: CIAO learning rates (a fraction of each layer's norm per step, under LAMB's
#: trust ratio) from 1e-4 to the bound 0.1, in half-decades, times three decays.
DEFAULT_LRS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_SHAPES: tuple[str, ...] = ("constant", "cosine", "linear")


def default_targets(lrs: Sequence[float] = DEFAULT_LRS, shapes: Sequence[str] = DEFAULT_SHAPES) -> list[Schedule]:
    """``keep`` first, then every learning rate with every shape."""
    for s in shapes:
        shape_factor(s, 0.0)  # unknown shapes fail here, with the known ones listed
    return [KEEP] + [Schedule(optimizer=None, lr=lr, shape=s) for lr in lrs for s in shapes]


@dataclass
class Demonstration:
    """The best follower's episode on one task, and how it compares with keeping the initial values."""

    task_id: str
    family: str
    target: str
    raw_policy: np.ndarray  # (T, Fp)
    raw_value: np.ndarray  # (T, Fv)
    actions: np.ndarray  # (T, D)
    rewards: np.ndarray  # (T,) shaped rewards against CIAO at the initial hyperparameters
    final_valid: float
    keep_valid: float  # final validation loss of keeping the initial hyperparameters
    reward_vs_initial: float
    seconds: float = math.nan  # what making it cost (all the followers' runs, or the relabelled run)
    #: every follower's final validation loss by target name (inf when it diverged); empty in a
    #: relabelled episode and in files written before it was recorded
    target_losses: dict[str, float] = field(default_factory=dict)
    #: soft labels of the learning-rate action (T, n): a distribution per decision (:func:`soft_labels`);
    #: None: the hard labels in :attr:`actions` alone
    soft: np.ndarray | None = None

    def to_data(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "Demonstration":
        arrays = {k: np.asarray(data[k]) for k in ("raw_policy", "raw_value", "actions", "rewards")}
        if data.get("soft") is not None:
            arrays["soft"] = np.asarray(data["soft"], dtype=np.float64)
        return cls(**{**data, **arrays})


def demonstrate(cfg: TaskConfig, learner: ActorCritic, space: HyperparameterSpace, targets: Sequence[Schedule], *,
                seed: int, device: str = "cpu", data_dir: str | None = None, max_valid: int = 512,
                population: bool = True, compiled: bool = False,
                cadence: Cadence = FULL_CADENCE) -> tuple[Demonstration, list[Episode]]:  # fmt: skip
    """Run every target on ``cfg`` (as one population where that pays) and return the best one's
    demonstration, with every follower's episode (in the order of ``targets``).

    The best is the lowest final validation loss; a non-finite one never wins. ``cadence``: which
    losses the runs report (the demonstrations then hold the observations a policy has under it).
    """
    t0 = time.perf_counter()
    follower = Follow(targets, space, learner.policy_norm)  # the learner's normalisers and critic
    result = task_rollouts(cfg, follower, None, space, rollouts=len(targets), seed=seed, device=device,
                           data_dir=data_dir, max_valid=max_valid, population=population, compiled=compiled,
                           cadence=cadence, critic=learner)  # fmt: skip
    finals = [e.valid_curve[-1] if math.isfinite(e.valid_curve[-1]) else math.inf for e in result.episodes]
    best = int(np.argmin(finals))
    ep = result.episodes[best]
    demo = Demonstration(cfg.task_id, cfg.family, targets[best].name, ep.raw_policy, ep.raw_value, ep.actions,
                         ep.rewards, ep.valid_curve[-1], result.initial_curve[-1], ep.reward_vs_initial,
                         time.perf_counter() - t0, {t.name: f for t, f in zip(targets, finals)})  # fmt: skip
    return demo, result.episodes


def relabel(cfg: TaskConfig, policy: ActorCritic, space: HyperparameterSpace, target: Schedule, *, device: str = "cpu",
            data_dir: str | None = None, max_valid: int = 512, cadence: Cadence = FULL_CADENCE,
            follow: Schedule | None = None, weights: dict[str, float] | None = None,
            residual: Residual | None = None) -> Demonstration:  # fmt: skip
    """A DAgger demonstration: ``policy``'s own greedy episode on ``cfg``, each decision labelled
    with the action the follower of ``target`` (the task's best schedule) takes from the learning
    rate the policy had reached there. Cloning these teaches the way back from the states the
    policy itself gets into, which the followers' episodes never visit. The episode's rewards are
    not the demonstrations' (there is no baseline run here), so they are NaN and the critic does
    not fit them.

    ``follow``: the episode is run by the follower of this schedule instead (``policy`` lends it
    only its normalisers): how a task gets a demonstration of a schedule other than its best.
    ``weights``: each schedule's weight (:func:`target_weights`); the demonstration then also
    carries :func:`soft_labels` from the learning rates the policy reached.
    ``residual``: ``policy`` wrapped around a base schedule (:class:`~lhopt_dsl.residual.Residual`);
    the episode is then its own, and the learning-rate labels are the offset actions from the
    offsets it had reached towards those that follow ``target``."""
    from .env import InnerTrainingEnv, log_improvement_reward
    from .rollout import run_episode

    t0 = time.perf_counter()
    env = InnerTrainingEnv(space, device=device, data_dir=data_dir, max_valid=max_valid)
    follower = Follow([target], space, policy.policy_norm)
    if residual is not None and (follow is not None or weights is not None):
        raise ValueError("a residual policy's episodes are relabelled with hard labels of its own task's schedule only")
    actor: Actor[Any] = policy if follow is None else Follow([follow], space, policy.policy_norm)
    if residual is not None:
        actor = residual
    ep = run_episode(env, cfg, actor, log_improvement_reward, deterministic=True, critic=policy, cadence=cadence)
    outer = cfg.task.outer_steps
    befores = [cfg.hparams.lr] + [ep.hparams[t]["lr"] for t in range(len(ep) - 1)]
    if residual is None:
        labels = np.stack([follower.choose(target, before, t, outer)[0] for t, before in enumerate(befores)])
    else:
        labels = np.tile(follower.keep, (len(ep), 1))
        wanted = residual.offsets(target, cfg.hparams.lr, len(ep))
        assert ep.proposed is not None
        labels[:, residual.lr_dim] = residual.labels(wanted, residual.offsets_before(ep.proposed[:, residual.lr_dim]))
    soft = None if weights is None else soft_labels(follower, weights, befores, outer)
    return Demonstration(cfg.task_id, cfg.family, target.name, ep.raw_policy, ep.raw_value, labels,
                         np.full(len(ep), np.nan), ep.valid_curve[-1], math.nan, math.nan,
                         time.perf_counter() - t0, soft=soft)  # fmt: skip


def residual_demo(demo: Demonstration, residual: Residual, target: Schedule, initial_lr: float) -> Demonstration:
    """``demo`` (a follower's episode of ``target``, from ``initial_lr``) labelled for a residual
    policy: its learning-rate labels become the offset actions from the base towards ``target``
    (:meth:`~lhopt_dsl.residual.Residual.labels`), the rest stays. Where the target is the
    base itself every label keeps."""
    if demo.soft is not None:
        raise ValueError("soft labels and residual labels do not combine; pass one of --soft and --base")
    actions = np.array(demo.actions, copy=True)
    actions[:, residual.lr_dim] = residual.labels(residual.offsets(target, initial_lr, len(actions)))
    return replace(demo, actions=actions)


#: A diverged follower's regret (log of its loss over the task's best) in :func:`consensus`: as if
#: it had ended 10x worse than the best.
DIVERGED_REGRET = math.log(10.0)


def _regret(loss: float, best: float) -> float:
    if not math.isfinite(loss):
        return DIVERGED_REGRET
    return min(math.log(max(loss, 1e-12) / max(best, 1e-12)), DIVERGED_REGRET)


def consensus(demos: Sequence[Demonstration], margin: float) -> tuple[str, dict[str, str]]:
    """Labels that trust one schedule unless a task clearly prefers another.

    A task's best follower wins by a hair as often as by a mile: the final losses of neighbouring
    schedules differ by run-to-run noise, so cloning each task's argmin teaches a policy to tell
    apart what no observation can. Here the *consensus* schedule is the one with the least mean
    regret over the tasks (regret: log of its final loss over the task's best; a diverged run
    counts as :data:`DIVERGED_REGRET`), and a task keeps its own best only where that beats the
    consensus by more than ``margin`` (relative; 0.05: a final loss 5% lower). ``margin=0`` is the
    plain argmin (ties go to the consensus), ``inf`` clones the one schedule everywhere.

    Returns the consensus target's name and each task's label (by task id). Every demonstration
    must carry :attr:`Demonstration.target_losses` for the same targets.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not demos or any(not d.target_losses for d in demos):
        raise ValueError("consensus labels need every follower's final loss, which demonstrations written before "
                         "it was recorded lack: collect them again into a new --run-dir")  # fmt: skip
    names = list(demos[0].target_losses)
    if any(list(d.target_losses) != names for d in demos):
        raise ValueError("the demonstrations were made with different schedule grids; use one --lrs/--shapes per run-dir")
    bests = [min(d.target_losses.values()) for d in demos]
    regrets = {n: float(np.mean([_regret(d.target_losses[n], b) for d, b in zip(demos, bests)])) for n in names}
    agreed = min(names, key=lambda n: regrets[n])
    labels = {}
    for d, best in zip(demos, bests):
        mine = d.target_losses[agreed]
        clearly = math.isfinite(best) and (not math.isfinite(mine) or best < (1.0 - margin) * mine)
        labels[d.task_id] = d.target if clearly and d.target != agreed else agreed
    return agreed, labels


def mean_lr(name: str, points: int = 64) -> float:
    """A target's learning rate averaged over the run (midpoints of ``points`` equal parts); ``keep``
    is -inf: it sets nothing, so it is never the bolder of two schedules."""
    target = Schedule.from_name(name)
    if target.lr is None:
        return -math.inf
    return float(np.mean([target.at((i + 0.5) / points) for i in range(points)]))


def bolder(demos: Sequence[Demonstration], tie: float) -> dict[str, str]:
    """Labels that break near-ties towards the larger learning rate.

    The schedules whose final validation losses are within ``tie`` (relative; 0.005: 0.5%) of a
    task's best are indistinguishable by the run-to-run noise of one run each; among them the label
    is the one with the largest :func:`mean_lr` (then the lower loss). On the training tasks of
    ``cpu.yaml`` such ties are common on Transformers, and on held-out tasks the cloned policy runs
    lower learning rates than the fixed schedule that beats it (docs/RESULTS.md). ``tie=0`` is each
    task's own best. Returns each task's label (by task id)."""
    if not tie >= 0:
        raise ValueError(f"tie must be >= 0, got {tie}")
    if not demos or any(not d.target_losses for d in demos):
        raise ValueError("tie-broken labels need every follower's final loss, which demonstrations written before "
                         "it was recorded lack: collect them again into a new --run-dir")  # fmt: skip
    labels = {}
    for d in demos:
        best = d.target_losses[d.target]
        near = [n for n, loss in d.target_losses.items() if math.isfinite(loss) and loss <= best * (1.0 + tie)]
        labels[d.task_id] = max(near, key=lambda n: (mean_lr(n), -d.target_losses[n], n == d.target))
    return labels


def target_weights(losses: dict[str, float], temperature: float) -> dict[str, float]:
    """Each schedule's weight in a task's soft label: ``exp(-regret / temperature)``, normalised to
    sum to 1, where regret is the log of its final loss over the task's best (a diverged run's is
    :data:`DIVERGED_REGRET`). A schedule 1% worse than the best weighs ``exp(-0.01 / temperature)``
    of the best's: with ``temperature=0.01``, about 0.37. Every schedule within the run-to-run noise
    of the best thereby votes, instead of the one that won by a hair."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    finite = [v for v in losses.values() if math.isfinite(v)]
    if not finite:
        raise ValueError("every schedule diverged on this task: there is nothing to weigh")
    best = min(finite)
    raw = {n: math.exp(-_regret(v, best) / temperature) for n, v in losses.items()}
    total = sum(raw.values())
    return {n: w / total for n, w in raw.items()}


def lr_trajectory(follower: Follow, actions: np.ndarray, initial_lr: float) -> list[float]:
    """The learning rate before each decision of an episode that took ``actions`` from
    ``initial_lr`` and never restarted (a follower's own episode)."""
    values = follower.lr_param.action.values
    lrs = [float(initial_lr)]
    for a in np.asarray(actions)[:-1, follower.lr_dim]:
        lrs.append(follower.lr_param.apply(lrs[-1], values[int(a)]))
    return lrs


def soft_labels(follower: Follow, weights: dict[str, float], lrs: Sequence[float], outer: int) -> np.ndarray:
    """Soft labels of the learning-rate action, (T, n): at decision ``t`` of ``outer``, from learning
    rate ``lrs[t]``, each schedule of ``weights`` puts its weight on the action its follower would
    take there (:meth:`~lhopt_dsl.residual.Follow.choose`). Where the near-best schedules agree the
    label is sharp; where they part, it spreads over their actions."""
    n = int(follower.nvec[follower.lr_dim])
    targets = [(Schedule.from_name(name), w) for name, w in weights.items() if w > 0]
    out = np.zeros((len(lrs), n), dtype=np.float64)
    for t, current in enumerate(lrs):
        for target, w in targets:
            out[t, follower.choose(target, current, t, outer)[0][follower.lr_dim]] += w
    return out / out.sum(axis=1, keepdims=True)


def _padded(rows: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    longest = max(len(r) for r in rows)
    out = np.zeros((longest, len(rows), *rows[0].shape[1:]), dtype=np.float64)
    for b, r in enumerate(rows):
        out[: len(r), b] = r
    return torch.as_tensor(out, dtype=dtype)


def _soft_or_hard(d: Demonstration, lr_dim: int, n: int) -> np.ndarray:
    """A demonstration's learning-rate labels as distributions: its soft labels, or its hard ones one-hot."""
    if d.soft is not None:
        if d.soft.shape != (len(d.actions), n):
            raise ValueError(f"soft labels of shape {d.soft.shape} for {len(d.actions)} decisions of {n} learning-rate actions")
        return d.soft
    return np.eye(n)[np.asarray(d.actions)[:, lr_dim]]


def returns_of(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted return from each step to the end of the episode."""
    return np.cumsum(np.asarray(rewards, dtype=np.float64)[::-1])[::-1].copy()


def clone(model: ActorCritic, demos: Sequence[Demonstration], *, epochs: int = 300, lr: float = 3e-3,
          holdout: float = 0.2, value_coef: float = 0.5, seed: int = 0, lr_dim: int = 0) -> dict[str, float]:  # fmt: skip
    """Behaviour cloning: fit ``model``'s actor to the demonstrations' actions (every action
    dimension's log-likelihood, over whole sequences from a zero state, as PPO evaluates them) and
    its critic to their returns; the normalisers first take every observation, as meta-training's
    do after each iteration.

    A ``holdout`` fraction of the tasks (with all their demonstrations) is kept out of the fit; the weights of the epoch with the
    lowest held-out loss are kept (early stopping), and the returned metrics are those of that
    epoch: per-step negative log-likelihood, the learning-rate dimension's accuracy (greedy action
    equals the label; ``lr_dim`` is its action dimension) on the fit and held-out tasks, and on the
    held-out tasks the accuracy of always taking the fit's most frequent learning-rate action.
    """
    if not demos:
        raise ValueError("no demonstrations to clone")
    rng = np.random.default_rng(seed)
    tasks = sorted({d.task_id for d in demos})  # a task's demonstrations (first and relabelled) stay together
    order = rng.permutation(len(tasks))
    n_hold = int(round(holdout * len(tasks))) if len(tasks) >= 5 else 0
    held_ids = {tasks[i] for i in order[:n_hold]}
    held, fit = [d for d in demos if d.task_id in held_ids], [d for d in demos if d.task_id not in held_ids]
    model.policy_norm(np.concatenate([d.raw_policy for d in fit]), update=True)
    model.value_norm(np.concatenate([d.raw_value for d in fit]), update=True)
    if all(np.isnan(d.rewards).all() for d in fit):
        value_coef = 0.0  # nothing for the critic to fit
    n_lr = int(model.shape.nvec[lr_dim])
    soft_mode = any(d.soft is not None for d in demos)

    def tensors(ds: Sequence[Demonstration]) -> tuple[torch.Tensor, ...]:
        x = _padded([model.policy_norm(d.raw_policy, update=False) for d in ds], torch.float32)
        v = _padded([model.value_norm(d.raw_value, update=False) for d in ds], torch.float32)
        a = _padded([d.actions for d in ds], torch.float64).long()
        mask = _padded([np.ones(len(d.actions)) for d in ds], torch.float32)
        ret = _padded([returns_of(d.rewards) for d in ds], torch.float32)
        known = mask * torch.isfinite(ret)  # DAgger's relabelled episodes have no returns
        soft = _padded([_soft_or_hard(d, lr_dim, n_lr) for d in ds], torch.float32) if soft_mode else None
        return x, v, a, mask, torch.nan_to_num(ret), known, soft

    def losses(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, v, a, mask, ret, known, soft = batch
        if soft is None:
            logprob, _, values = model.evaluate(x, v, a)
        else:  # cross-entropy with the soft labels on the learning-rate action, the hard ones elsewhere
            logits, _ = model.actor_forward(x)
            logprob = torch.zeros_like(mask)
            for i, chunk in enumerate(torch.split(logits, list(model.shape.nvec), dim=-1)):
                logp = torch.log_softmax(chunk, dim=-1)
                logprob = logprob + ((soft * logp).sum(-1) if i == lr_dim else logp.gather(-1, a[..., i : i + 1]).squeeze(-1))
            values, _ = model.critic_forward(x, v)
        nll = -(logprob * mask).sum() / mask.sum()
        v_loss = 0.5 * (((values - ret) ** 2) * known).sum() / known.sum().clamp(min=1)
        return nll, v_loss

    @torch.no_grad()
    def accuracy(batch: tuple[torch.Tensor, ...]) -> tuple[float, float]:
        """The greedy learning-rate action's accuracy, and always taking the fit's most frequent one's
        (a second actor pass, so only for the epochs that are kept)."""
        x, _, a, mask, _, _, _ = batch
        logits, _ = model.actor_forward(x)
        greedy = logits[..., : model.shape.nvec[lr_dim]].argmax(-1)
        n = mask.sum()
        return float(((greedy == a[..., lr_dim]).float() * mask).sum() / n), \
            float(((a[..., lr_dim] == majority).float() * mask).sum() / n)  # fmt: skip

    majority = int(np.bincount(np.concatenate([d.actions[:, lr_dim] for d in fit])).argmax())
    fit_t, held_t = tensors(fit), tensors(held) if held else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best: tuple[float, dict[str, Any], dict[str, float]] | None = None
    for epoch in range(epochs):
        opt.zero_grad()
        nll, v_loss = losses(fit_t)
        (nll + value_coef * v_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        nll, v_loss = nll.detach(), v_loss.detach()
        with torch.no_grad():
            h_nll, h_v = losses(held_t) if held_t is not None else (nll, v_loss)
        score = float(h_nll)
        if best is None or score < best[0]:
            acc, keep_acc = accuracy(fit_t)  # of the weights kept (the fit's losses are of those before the step)
            h_acc, h_keep = accuracy(held_t) if held_t is not None else (acc, keep_acc)
            metrics = {"bc/epoch": float(epoch + 1), "bc/nll": float(nll), "bc/value_loss": float(v_loss),
                       "bc/lr_accuracy": acc, "bc/holdout_nll": float(h_nll), "bc/holdout_value_loss": float(h_v),
                       "bc/holdout_lr_accuracy": h_acc, "bc/holdout_majority_accuracy": h_keep,
                       "bc/fit_tasks": float(len(tasks) - n_hold), "bc/holdout_tasks": float(n_hold)}  # fmt: skip
            best = (score, {k: t.detach().clone() for k, t in model.state_dict().items()}, metrics)
    assert best is not None
    model.load_state_dict(best[1])
    return best[2]
