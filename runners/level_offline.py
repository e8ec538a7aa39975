"""``lhopt fit-level``: a cautious observing level, fitted offline to a level run's episodes.

    lhopt fit-level --episodes RUN/episodes.jsonl [MORE.jsonl ...] --start RUN/policy.pt --out DIR
                    [--threshold P] [--thresholds 0.6,0.65,...] [--folds 5] [--min-episodes 200] [--seed 0]

Every ``lhopt train-level --observe`` episode is a paired experiment on one training task: the start
policy's run, and the same run (same weights, same data) holding a factor of the learning rate from
the observing decision on. Its reward is the held run's against the start's run, so keeping has
reward 1 exactly, and a reward above 1 says the factor won on that task. PPO's level takes the
factor with the highest expected reward; where the wins and losses are close to even (x1/2 on
Transformers wins 55% of training episodes and loses 42%), that bets, and the bets it loses are
the harms of ``check-dropin`` and ``eval-ood`` (docs/RESULTS.md).

This fits a level that acts only where a factor *usually* wins: per factor drawn often enough
(``--min-episodes``), a gradient-boosted classifier (scikit-learn's ``HistGradientBoostingClassifier``)
of whether the held run won, from the same inputs the network reads (the description and the
observed features, as recorded in the episodes); the level takes the factor most likely to win
where that probability reaches the threshold, and keeps elsewhere. The threshold is chosen on
held-out folds of the episodes' tasks (``--folds``; all of a task's episodes on one side, and an
episode recorded twice counted once) by the off-policy value of the rule (inverse
propensity: an episode counts its reward over the probability its factor was drawn with where the
rule chooses that factor, 1 where the rule keeps, 0 otherwise), the highest value and, among equal
ones, the higher threshold; ``--threshold`` fixes it instead.

The level deploys the rule itself (:class:`~lhopt_dsl.agent.level.CautiousLevel`, a policy file's
``level`` of kind ``cautious``): the classifiers' trees as plain arrays, which predict what they
predict (checked on every episode when it is fitted), the threshold, and the start level's mean
for features nobody observed. An earlier version distilled the rule into a level network, which
followed it on 88% of inputs; the drop-in checks fell on either side of the difference.

Outputs in ``--out``: ``policy.pt`` (the start policy with the fitted level; its ``fitted`` entry
names the start, the episode files and the digests of the bytes read, and the threshold), ``fit.json`` and ``fit.md`` (per threshold: the share of held-out episodes acted on,
the off-policy value with its standard error and the effective number of episodes its acted part
rests on (inverse weights are large where PPO rarely drew the factor), the mean reward and the
share of losses (reward below 0.95) where the rule acted and the drawn factor was its own, the mean
reward of the factor episodes it declined; ``fit.json`` also scores the rule in sample).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lhopt_dsl.agent.level import CautiousLevel, LearnedLevel, TreeEnsemble, likeliest_winner
from lhopt_dsl.agent.policy import save_checkpoint
from lhopt_dsl.agent.policy_file import load_policy_file

from .jobs import write_json

THRESHOLDS: tuple[float, ...] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
LOSS = 0.95  # a reward below this counts as a loss (the held run clearly worse than the start's)


@dataclass(frozen=True)
class Episodes:
    """A level run's episodes: the network's inputs (N, D + O), the factor held, the reward against
    the start's run, the probability the factor was drawn with, the task family (for reports)."""

    x: np.ndarray
    factor: np.ndarray
    reward: np.ndarray
    prob: np.ndarray
    family: np.ndarray
    task: np.ndarray  # the task's id: runs on different specs draw some tasks alike

    def __len__(self) -> int:
        return len(self.reward)

    def take(self, idx: np.ndarray) -> "Episodes":
        return Episodes(self.x[idx], self.factor[idx], self.reward[idx], self.prob[idx], self.family[idx], self.task[idx])


def _number(row: dict[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: '{key}' is {value!r}, not a finite number")
    return float(value)


def read_episodes(paths: Sequence[str | Path], width: int, factors: Sequence[float]) -> tuple[Episodes, list[str]]:
    """The observing episodes of ``paths`` (``episodes.jsonl`` of ``train-level --observe`` runs)
    whose inputs have ``width`` entries and whose factors are among ``factors``, and the sha256 of
    each file's bytes as read. Within a file the last row of an (iteration, slot) counts, as
    ``train-level`` reads it (a resumed iteration draws its episodes again); an episode recorded
    twice (the same task, factor and inputs, e.g. in two runs whose specs draw some tasks alike)
    counts once; a last line cut by a kill is left out. Any other malformed row is refused with its
    file and line, as is a describing run's episode (no inputs recorded)."""
    seen: dict[tuple[Any, ...], tuple[list[float], float, float, float, str, str]] = {}
    digests = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such episodes file (a train-level run's episodes.jsonl)")
        data = path.read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        lines = data.decode().splitlines()
        last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
        mine: dict[tuple[Any, ...], tuple[list[float], float, float, float, str, str]] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if n == last:  # cut by a kill
                    continue
                raise ValueError(f"{where}: not a JSON line (an episodes.jsonl is written one episode a line)") from None
            if not isinstance(row, dict) or "input" not in row or "logp" not in row:
                raise ValueError(f"{where}: an episode without the level's inputs: fit-level reads "
                                 "the episodes of an observing run (lhopt train-level --observe)")  # fmt: skip
            x = row["input"]
            if not isinstance(x, list) or len(x) != width:
                raise ValueError(f"{where}: an episode with {len(x) if isinstance(x, list) else 'no list of'} inputs, but "
                                 f"the start level reads {width}; give the episodes of runs of that level")  # fmt: skip
            try:
                x = [float(v) for v in x]
            except (TypeError, ValueError):
                raise ValueError(f"{where}: the inputs are not all numbers") from None
            if not all(math.isfinite(v) for v in x):
                raise ValueError(f"{where}: non-finite inputs (the network was given finite inputs in every episode)")
            factor, reward = _number(row, "factor", where), _number(row, "reward", where)
            logp = _number(row, "logp", where)
            if factor not in factors:
                raise ValueError(f"{where}: factor {factor:g} is not among the start level's {list(factors)}")
            if not -50.0 < logp <= 1e-9:
                raise ValueError(f"{where}: 'logp' {logp} is not the log of a probability the factor could be drawn with")
            key = (row.get("iteration"), row.get("slot"), n if row.get("iteration") is None else 0)
            mine[key] = (x, factor, reward, min(math.exp(logp), 1.0), str(row.get("family", "")), str(row.get("task_id", where)))
        for ep in mine.values():
            seen.setdefault((ep[5], ep[1], tuple(ep[0])), ep)
    if not seen:
        raise ValueError(f"no episodes in {', '.join(map(str, paths))}")
    rows = list(seen.values())
    return Episodes(np.array([r[0] for r in rows], dtype=np.float64), np.array([r[1] for r in rows]),
                    np.array([r[2] for r in rows]), np.array([r[3] for r in rows]), np.array([r[4] for r in rows]),
                    np.array([r[5] for r in rows])), digests  # fmt: skip


def acting_factors(ep: Episodes, factors: Sequence[float], min_episodes: int) -> list[float]:
    """The factors other than keep drawn in at least ``min_episodes`` episodes."""
    return [f for f in factors if f != 1.0 and int((ep.factor == f).sum()) >= min_episodes]


def wins(reward: np.ndarray) -> np.ndarray:
    """Whether each held run won: beat the start's run (reward 1 is a tie, not a win)."""
    return np.asarray(reward) > 1.0


def win_models(ep: Episodes, acting: Sequence[float], seed: int) -> list[Any]:
    """Per acting factor, a classifier of whether holding it won (reward > 1), fitted on its episodes."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    models = []
    for f in acting:
        mine = ep.factor == f
        won = wins(ep.reward[mine])
        if won.all() or not won.any():
            raise ValueError(f"x{f:g} won on {'every' if won.all() else 'no'} episode: nothing to fit a win "
                             "probability to")  # fmt: skip
        model = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, min_samples_leaf=40,
                                               l2_regularization=1.0, random_state=seed)  # fmt: skip
        models.append(model.fit(ep.x[mine], won))
    return models


def win_probability(models: Sequence[Any], x: np.ndarray) -> np.ndarray:
    """(N, factors) probabilities that each acting factor wins on inputs ``x``."""
    return np.stack([m.predict_proba(x)[:, list(m.classes_).index(True)] for m in models], 1)


rule = likeliest_winner  # the factor chosen per row of win probabilities, as the deployed level chooses


def scores(chosen: np.ndarray, ep: Episodes) -> dict[str, float]:
    """How the choices ``chosen`` fare on episodes ``ep`` (module docstring)."""
    acts = chosen != 1.0
    same = acts & (chosen == ep.factor)
    declined = ~acts & (ep.factor != 1.0)
    weight = np.divide(1.0, ep.prob, out=np.zeros(len(ep)), where=same)  # 1 / p where the reward counts
    ips = np.where(acts, ep.reward * weight, 1.0)
    return {
        "acts": float(acts.mean()),
        "value": float(ips.mean()),
        "value_se": float(ips.std(ddof=1) / math.sqrt(len(ips))) if len(ips) > 1 else math.nan,
        "acted_episodes": int(same.sum()),
        "acted_reward": float(ep.reward[same].mean()) if same.any() else math.nan,
        "acted_losses": float((ep.reward[same] < LOSS).mean()) if same.any() else math.nan,
        "declined_episodes": int(declined.sum()),
        "declined_reward": float(ep.reward[declined].mean()) if declined.any() else math.nan,
        # how many episodes the acted part of the value rests on (the inverse weights' effective count)
        "effective_episodes": float(weight.sum() ** 2 / (weight**2).sum()) if same.any() else 0.0,
        "largest_weight": float(weight.max()) if same.any() else 0.0,
    }


def cross_validate(ep: Episodes, acting: Sequence[float], thresholds: Sequence[float], folds: int,
                   seed: int) -> list[dict[str, float]]:  # fmt: skip
    """Per threshold, :func:`scores` of the rule on held-out folds of the episodes' tasks (each fold's
    classifiers fitted on the other folds' tasks, so no task is on both sides)."""
    tasks = np.unique(ep.task)
    if not 2 <= folds <= len(tasks):
        raise ValueError(f"--folds {folds}: choosing a threshold needs 2 to {len(tasks)} folds (the episodes' tasks)")
    p = np.zeros((len(ep), len(acting)))
    for fold in np.array_split(np.random.default_rng(seed).permutation(tasks), folds):
        held = np.isin(ep.task, fold)  # a task's episodes are all held out together
        p[held] = win_probability(win_models(ep.take(np.flatnonzero(~held)), acting, seed), ep.x[held])
    return [{"threshold": float(t), **scores(rule(p, acting, t), ep)} for t in thresholds]


def chosen_threshold(table: Sequence[dict[str, float]]) -> float:
    """The threshold of the highest held-out value; the more cautious (higher) one among equals."""
    finite = [r for r in table if math.isfinite(r["value"])]
    if not finite:
        raise ValueError("no threshold has a finite held-out value")
    return float(max(finite, key=lambda r: (round(r["value"], 6), r["threshold"]))["threshold"])


def _sha256(path: Path) -> str:  # of a file read once, whole
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_md(table: Sequence[dict[str, float]], threshold: float) -> str:
    lines = ["| threshold | acts on | held-out value (IPS) | its effective episodes (largest weight) | acted: episodes | "
             "mean reward | losses (< 0.95) | declined: episodes | mean reward |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in table:
        mark = " (chosen)" if r["threshold"] == threshold else ""
        lines.append(f"| {r['threshold']:g}{mark} | {r['acts']:.1%} | {r['value']:.3f} +- {r['value_se']:.3f} | "
                     f"{r['effective_episodes']:.0f} ({r['largest_weight']:.0f}) | "
                     f"{r['acted_episodes']} | {r['acted_reward']:.3f} | {r['acted_losses']:.1%} | "
                     f"{r['declined_episodes']} | {r['declined_reward']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def fit_level(episodes: Sequence[str | Path], start: str | Path, out: str | Path, threshold: float | None = None,
              thresholds: Sequence[float] = THRESHOLDS, folds: int = 5, min_episodes: int = 200,
              seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Fit the cautious level (module docstring) and write ``out``/policy.pt, fit.json and fit.md;
    returns the report. Every input is checked before any work, and nothing is written unless all
    three files can be."""
    start_path, out = Path(start), Path(out)
    thresholds = sorted({float(t) for t in thresholds} | ({float(threshold)} if threshold is not None else set()))
    if not thresholds:
        raise ValueError("no threshold to choose among: give --thresholds or --threshold")
    if any(not 0.5 <= t < 1.0 for t in thresholds):
        raise ValueError(f"thresholds {thresholds}: win probabilities in [0.5, 1)")
    if folds < 2:
        raise ValueError(f"--folds {folds}: choosing a threshold needs at least 2 folds")
    if (out / "policy.pt").resolve() == start_path.resolve():
        raise ValueError(f"--out {out} would overwrite the start policy {start_path}: give another directory")
    policy = load_policy_file(start_path)
    level = policy.get("level") or {}
    if level.get("kind") != "learned" or not level.get("observe"):
        raise ValueError(f"{start_path}: its level does not observe; fit-level starts from an observing level "
                         "(the policy.pt of lhopt train-level --observe)")  # fmt: skip
    start_level = LearnedLevel.from_data(level)
    factors = start_level.factors
    ep, digests = read_episodes(episodes, start_level.net.shape[0], factors)
    acting = acting_factors(ep, factors, min_episodes)
    if not acting:
        raise ValueError(f"no factor but keep was drawn in {min_episodes} episodes or more; lower --min-episodes "
                         "or train the level longer")  # fmt: skip
    table = cross_validate(ep, acting, thresholds, folds, seed)
    picked = float(threshold) if threshold is not None else chosen_threshold(table)
    models = win_models(ep, acting, seed)
    forests = tuple(TreeEnsemble.from_boosting(m) for m in models)
    mean = start_level.net.mean.numpy().astype(np.float64)  # what an unobserved feature reads as, as the start's
    fitted = {
        "offline": "lhopt fit-level", "start": str(start_path), "start_sha256": _sha256(start_path),
        "episodes": [str(p) for p in episodes], "episodes_sha256": digests,
        "count": len(ep), "tasks": int(len(np.unique(ep.task))), "acting": list(acting), "threshold": picked,
        "chosen_by": "given" if threshold is not None else "held-out value", "folds": folds, "seed": seed,
        "start_fitted": start_level.fitted,
    }  # fmt: skip
    fitted_level = CautiousLevel((1.0, *acting), forests, picked, mean, start_level.descriptor, start_level.observe,
                                 start_level.at, fitted)  # fmt: skip
    p = win_probability(models, ep.x)
    gap = float(np.abs(fitted_level.win_probability(ep.x) - p).max())
    if gap > 1e-9:  # the level deploys the classifiers themselves
        raise RuntimeError(f"the classifiers' trees, read into the level, predict up to {gap:.2g} apart from them: "
                           "a scikit-learn whose boosting trees this version does not read")  # fmt: skip
    chosen = rule(p, acting, picked)
    families = {f: float((chosen[ep.family == f] != 1.0).mean()) for f in sorted(set(ep.family))}
    report = {**fitted, "table": table, "in_sample": scores(chosen, ep), "acts_by_family": families,
              "nodes": int(sum(len(t.left) for t in forests))}  # fmt: skip
    text = (f"# A cautious level fitted to {len(ep)} episodes of {fitted['tasks']} tasks\n\nStart: `{start_path}`. "
            "Acting factors: " + ", ".join(f"x{f:g}" for f in acting) + f". Threshold {picked:g} ({fitted['chosen_by']}); "
            f"the level carries the classifiers' trees ({report['nodes']:,} nodes).\n\n"
            f"Held-out folds ({folds}, by task):\n\n{table_md(table, picked)}\n\nActs on, by family (in sample): "
            + ", ".join(f"{f} {a:.0%}" for f, a in families.items()) + "\n")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    staged = {name: out / f".{name}.partial" for name in ("policy.pt", "fit.json", "fit.md")}
    try:
        save_checkpoint({**policy, "level": fitted_level.to_data()}, staged["policy.pt"])
        load_policy_file(staged["policy.pt"])  # it loads as any policy file
        write_json(staged["fit.json"], report)
        staged["fit.md"].write_text(text)
        for name, path in staged.items():
            path.replace(out / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    return report
