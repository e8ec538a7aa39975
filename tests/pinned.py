"""What the library does, recorded once and compared exactly: episodes of every kind of policy on
fixed tasks and seeds, meta-training rollouts, imitation demonstrations and the drop-in optimizer.

A refactoring of the policy layer must not change an action, a hyperparameter or a restart of
these, nor move any other float beyond round-off (:data:`REL`, :data:`ABS`: CPUs differ in
float32 round-off). The record lives in ``tests/pinned_behaviour.json``; ``python -m tests.pinned`` writes it again from the code as it is
(do that only for a change that is meant to alter behaviour, and say so in its commit).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lhopt_dsl import load_spec, sample
from lhopt_dsl.agent.imitation import default_targets, demonstrate, relabel
from lhopt_dsl.agent.policy import ActorCritic, load_checkpoint, save_checkpoint
from lhopt_dsl.agent.residual import FixedSchedule
from lhopt_dsl.agent.rollout import Episode, task_rollouts
from lhopt_dsl.controller import DEFAULT_POLICY, LHOPT, load_policy
from lhopt_dsl.spec.sample import TaskConfig
from lhopt_dsl.spec.schedule import Schedule
from runners.dropin import PROGRAMS
from runners.evaluate import policy_run
from runners.ood_programs import report_losses

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).parent / "pinned_behaviour.json"
SEEDS = (1, 2, 5)  # smoke-sized tasks in the shipped policy's space: an MLP, an NQM and an RNN


def tasks() -> list[TaskConfig]:
    """Smoke-sized tasks in the hyperparameter space of the shipped policy (that of ``cpu.yaml``)."""
    cpu, smoke = load_spec(ROOT / "task_specs" / "cpu.yaml"), load_spec(ROOT / "task_specs" / "smoke.yaml")
    spec = smoke.model_copy(update={"hparams": cpu.hparams})
    return [sample(spec, s) for s in SEEDS]


def shipped() -> tuple[Any, Any]:
    return load_policy(DEFAULT_POLICY)


def network() -> ActorCritic:
    """The shipped policy's network acting on its own, without its base schedule."""
    return ActorCritic.from_checkpoint(load_checkpoint(DEFAULT_POLICY, "policy", map_location="cpu")["policy"])


def _digest(a: np.ndarray) -> dict[str, Any]:
    """An observation array by its shape and its sums over rows and over columns: small enough to
    keep, and a change to any feature at any step moves a sum beyond round-off."""
    a = np.asarray(a, dtype=np.float64)
    a = a.reshape(len(a), -1) if a.ndim != 2 else a
    return {"shape": list(a.shape), "rows": a.sum(1).tolist(), "cols": a.sum(0).tolist()}


def episode(ep: Episode, critic: bool = True) -> dict[str, Any]:
    """An episode's record: every number, with the observation arrays by digest. ``critic=False``:
    an episode that only acted (evaluation), whose critic values mean nothing and are left out."""
    values = {"values": ep.values.tolist()} if critic else {}
    return {"actions": ep.actions.tolist(), "logprobs": ep.logprobs.tolist(), **values,
            "rewards": ep.rewards.tolist(), "valid_curve": list(ep.valid_curve), "test_loss": ep.test_loss,
            "hparams": ep.hparams, "restarts": [list(r) for r in ep.restarts], "raw_policy": _digest(ep.raw_policy),
            "policy_obs": _digest(ep.policy_obs), "raw_value": _digest(ep.raw_value),
            "value_obs": _digest(ep.value_obs), "final_reward": ep.final_reward,
            "reward_vs_initial": ep.reward_vs_initial}  # fmt: skip


def evaluations() -> dict[str, Any]:
    """Greedy evaluation episodes (``runners.evaluate.policy_run``) of every kind of policy."""
    residual, space = shipped()
    net = network()
    out: dict[str, Any] = {}
    for cfg in tasks():
        kinds: dict[str, Any] = {
            "residual": residual,
            "network": net,
            "schedule": FixedSchedule(Schedule.from_name("linear-lr0.03"), space).load()[0],
        }
        for kind, actor in kinds.items():
            out[f"{kind}/{cfg.task_id}"] = episode(policy_run(actor, space, cfg), critic=False)
    return out


def rollouts() -> dict[str, Any]:
    """Meta-training's rollouts (sampled episodes and the greedy self-play baseline), batched and not."""
    _, space = shipped()
    net = network()
    out: dict[str, Any] = {}
    for cfg in tasks()[:2]:
        for population in (True, False):
            r = task_rollouts(cfg, net, net, space, rollouts=2, seed=3, population=population, critic=net)
            out[f"{population}/{cfg.task_id}"] = {"baseline": r.baseline_curve, "initial": r.initial_curve,
                                                   "episodes": [episode(e) for e in r.episodes]}  # fmt: skip
    return out


def imitation() -> dict[str, Any]:
    """Followers' demonstrations (a population of schedules) and DAgger relabelling, plain and residual."""
    residual, space = shipped()
    net = network()
    targets = default_targets()[:4] + [Schedule.from_name("linear-lr0.03")]
    out: dict[str, Any] = {}
    cfg = tasks()[0]
    demo, eps = demonstrate(cfg, net, space, targets, seed=0)
    out["demonstrate"] = {"target": demo.target, "losses": demo.target_losses, "actions": demo.actions.tolist(),
                          "episodes": [episode(e) for e in eps]}  # fmt: skip
    out["relabel"] = relabel(cfg, net, space, Schedule.from_name("constant-lr0.01")).actions.tolist()
    out["relabel-residual"] = relabel(cfg, net, space, Schedule.from_name("constant-lr0.01"),
                                      residual=residual).actions.tolist()  # fmt: skip
    return out


def dropin_run(program: str, cadence: tuple[int | None, int | None], steps: int = 150,
               initial: dict[str, float] | None = None, policy: Any = None, spike: int = -1) -> dict[str, Any]:  # fmt: skip
    """A user's loop with the shipped policy (or ``policy``): every step's training loss and the
    hyperparameters applied; at step ``spike`` the loss reported is 1e6 (the guard steps in)."""
    p = PROGRAMS[program](0)
    opt = LHOPT(p.model.parameters(), policy, total_steps=steps, model=p.model, initial=initial, seed=3,
                deterministic=policy is None)  # fmt: skip
    losses = []
    for step in range(steps):
        x, y = p.batch_at(step)
        loss = p.loss(p.model(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        if step == spike:
            opt.observe(train_loss=1e6)
        report_losses(opt, step, train_loss=losses[-1], valid_loss=lambda: p.score(p.valid),
                      train_every=cadence[0], valid_every=cadence[1])  # fmt: skip
        opt.step()
    return {"losses": losses, "test": p.score(p.test), "history": opt.history}


def dropin() -> dict[str, Any]:
    out = {f"regression/{c}": dropin_run("regression", c) for c in ((1, None), (20, 20), (None, None), (7, 50))}
    out["regression/spike"] = dropin_run("regression", (1, 10), spike=60)
    with tempfile.TemporaryDirectory() as tmp:  # the network alone, sampling its actions
        path = Path(tmp) / "network.pt"
        save_checkpoint({"policy": network().to_checkpoint(), "spec": load_checkpoint(DEFAULT_POLICY)["spec"]}, path)
        out["digits/network"] = dropin_run("digits", (1, 25), steps=120, policy=path, spike=70)
    return out


SECTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "evaluations": evaluations, "rollouts": rollouts, "imitation": imitation, "dropin": dropin,
}  # fmt: skip


def plain(obj: Any) -> Any:
    """JSON's view of ``obj`` (tuples as lists, numpy numbers as Python's), floats unchanged."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def write() -> None:
    torch.set_num_threads(1)
    RECORD.write_text(json.dumps({name: plain(make()) for name, make in SECTIONS.items()}, indent=0))


#: How far a float may move and still be the same behaviour: float32 round-off, which differs between
#: CPUs and their vector units. Measured against this record with other kernels (MKL_CBWR=COMPATIBLE,
#: ATEN_CPU_CAPABILITY=default): log-probabilities, values and losses moved by at most 2e-6 of
#: themselves; rewards (log-ratios of nearly equal losses) and observation sums, which carry a run's
#: round-off through its hundreds of steps, by up to 2.7e-4. Actions, hyperparameters chosen,
#: restarts, counts and shapes never moved, and are compared exactly.
REL, ABS = 1e-5, 1e-6
LOOSE = ("rewards", "final_reward", "reward_vs_initial", "rows", "cols")  # within LOOSE_TOL, relative or absolute
LOOSE_TOL = 1e-3
EXACT = ("/hparams", "/actions", "/restarts")  # chosen, not computed: no round-off


def _close(a: float, b: float, where: str) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if any(k in where for k in EXACT):
        return False
    if where.rsplit("/", 1)[-1].split("[", 1)[0] in LOOSE:
        return math.isclose(a, b, rel_tol=LOOSE_TOL, abs_tol=LOOSE_TOL)
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


def same(a: Any, b: Any, where: str = "") -> str | None:
    """Where ``a`` and ``b`` first differ (floats beyond :data:`REL` / :data:`ABS`, NaN equal to NaN;
    everything else exactly), or None."""
    if isinstance(a, float) and isinstance(b, float):
        return None if a == b or _close(a, b, where) else f"{where}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)} != {list(b)}"
        return next((d for k in a if (d := same(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := same(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where}: {a!r} != {b!r}"


if __name__ == "__main__":
    write()
    sys.exit(0)
