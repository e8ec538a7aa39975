"""A learned level for a residual policy: after the first segment of a run, a ridge regression on
the policy's own features chooses one learning-rate offset from the base schedule (x1/8 ... x8, or
keep), and the policy holds it for the rest of the run.

Why this form (docs/RESULTS.md, "Room beyond one step"): on training tasks a per-task whole-run
factor of the base schedule's learning rate is worth about 1.36x over the schedule's run, two thirds
of it survives a change of seed (it belongs to the task), and of all the moves measured it is the
one a rule could choose from what the run shows after one segment. A :class:`LevelRule` is that
rule as data: per factor, the predicted reward of holding it relative to the schedule's own run
(1 = the schedule), from the policy's raw features standardised by the training tasks' mean and
spread (and clipped to :data:`Z_CLIP` spreads, so that a run unlike any training task cannot push a
prediction far out). It acts where the best prediction is above 1 and keeps elsewhere.

:class:`HoldLevel` is the rule as an :class:`~lhopt_dsl.agent.actor.Actor`, wrapped around an
inner actor (the network of a residual policy) inside :class:`~lhopt_dsl.agent.residual.Residual`:
until the rule's decision every action is the inner actor's; from then on its learning-rate
proposal moves the residual offset towards the chosen factor (times the offset in force when it
chose, 1 unless something moved it) as fast as the actions allow (x2 per decision at most) and
holds it there, and every other dimension stays the inner actor's. It tracks
the offset with :class:`Residual`'s arithmetic (the actions' product within the bounds, lowered
when the drop-in's guard lowers the learning rate), so the two agree on it. Log-probabilities and
proposals stay the inner actor's own. This module imports no task compiler, so the drop-in can use it.

:class:`DescribedRule` chooses the level before the first step instead, from what can be seen of the
model (:mod:`lhopt_dsl.agent.describe`: the parameters' shapes, the run's steps and decisions, each
:class:`~lhopt_dsl.agent.actor.Run`'s ``describe``), by a regression forest (:class:`TreeEnsemble`,
plain arrays, fitted with scikit-learn's ExtraTrees by ``bench/task_level.py``). docs/RESULTS.md
("The level is the task's") measured why: the level a task wants is a non-linear function of what
the task is, which linear rules on the run's features do not find. A run without a description (an
actor driven by hand) keeps the base schedule.

An *observing* :class:`LearnedLevel` (``observe`` names some of the policy's raw features, ``at`` a
fraction of the run) chooses later instead: at decision :func:`observing_decision` (1/8 of the run
by default), from the description and what the run has shown by then (the features it names, as
the drop-in reports them), and holds the level from there. Its choice depends on the run's
observations, not on its model alone; docs/RESULTS.md ("A level that observes") measures what that
adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from scipy.special import expit  # the logistic function, without overflow warnings at large log-odds

from ..spec.hparams import HyperparameterSpace
from .actor import Actor, Run, Step
from .residual import OFFSET_BOUNDS, _outer, clamp_offset, nearest_scale, offset_actions

#: The offsets a rule chooses among by default (keep, x1, is always a choice).
LEVEL_FACTORS: tuple[float, ...] = (0.125, 0.25, 0.5, 2.0, 4.0, 8.0)
#: Standardised features are clipped to this many training spreads before the regression reads them.
Z_CLIP = 5.0


@dataclass(frozen=True, eq=False)
class LevelRule:
    """Chooses the held offset of each run at decision ``decision`` (see the module's docstring).

    ``weights`` (P + 1, K): per factor of ``factors`` (K), the regression's weights on the P
    standardised features, bias last; it predicts reward - 1 of holding that factor."""

    decision: int
    factors: tuple[float, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    l2: float = 0.0
    fitted: dict[str, Any] = field(default_factory=dict)  # provenance: what it was fitted on

    def __post_init__(self) -> None:
        p, k = len(self.mean), len(self.factors)
        if self.decision < 0:
            raise ValueError(f"a level rule's decision is >= 0, got {self.decision}")
        if k < 1 or any(not OFFSET_BOUNDS[0] <= f <= OFFSET_BOUNDS[1] for f in self.factors):
            raise ValueError(f"a level rule's factors lie within {OFFSET_BOUNDS}, got {list(self.factors)}")
        if self.scale.shape != (p,) or self.weights.shape != (p + 1, k):
            raise ValueError(f"a level rule of {p} features and {k} factors needs scale ({p},) and weights "
                             f"({p + 1}, {k}), got {self.scale.shape} and {self.weights.shape}")  # fmt: skip
        if not (self.scale > 0).all():
            raise ValueError("a level rule's feature scales are positive")
        for name in ("mean", "scale", "weights"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"a level rule's {name} holds non-finite values")

    @property
    def policy_size(self) -> int:
        return len(self.mean)

    def decision_at(self, outer: int) -> int:
        """The decision at which it chooses in a run of ``outer`` decisions: its own, or the last."""
        return min(self.decision, outer - 1)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predicted reward of holding each factor, relative to the schedule's run (1 = keep), for
        raw feature rows (B, P); rows with non-finite entries predict 1 (keep) everywhere."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, self.policy_size)
        z = np.clip((x - self.mean) / self.scale, -Z_CLIP, Z_CLIP)
        out = np.hstack([z, np.ones((len(z), 1))]) @ self.weights + 1.0
        out[~np.isfinite(x).all(1)] = 1.0
        return out

    def choose(self, rows: np.ndarray) -> np.ndarray:
        """Per row, the factor predicted best, or 1 (keep) where none is predicted above 1."""
        pred = self.predict(rows)
        k = np.argmax(pred, 1)
        best = pred[np.arange(len(pred)), k]
        return np.where(best > 1.0, np.asarray(self.factors)[k], 1.0)

    @classmethod
    def fit(cls, x: np.ndarray, rewards: np.ndarray, l2: float, decision: int = 1,
            factors: Sequence[float] = LEVEL_FACTORS, fitted: dict[str, Any] | None = None) -> "LevelRule":  # fmt: skip
        """A ridge regression per factor (columns of ``rewards``, tasks x factors, each relative to
        the schedule's run) on the raw features ``x`` (tasks x P) read at ``decision``; the bias is
        not penalised. Constant features get scale 1."""
        x, rewards = np.asarray(x, dtype=np.float64), np.asarray(rewards, dtype=np.float64)
        if x.ndim != 2 or rewards.shape != (len(x), len(factors)):
            raise ValueError(f"need features (tasks, P) and rewards (tasks, {len(factors)}), got {x.shape} and {rewards.shape}")
        if not (np.isfinite(x).all() and np.isfinite(rewards).all()):
            raise ValueError("a level rule is fitted on finite features and rewards")
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        z = np.clip((x - mean) / scale, -Z_CLIP, Z_CLIP)
        weights = ridge(z, rewards - 1.0, l2)
        return cls(decision, tuple(float(f) for f in factors), mean, scale, weights, float(l2), dict(fitted or {}))

    def to_data(self) -> dict[str, Any]:
        """What a policy file records (the ``level`` entry): plain values and float64 tensors."""
        return {"decision": self.decision, "factors": list(self.factors), "l2": self.l2, "fitted": self.fitted,
                "mean": torch.as_tensor(self.mean), "scale": torch.as_tensor(self.scale),
                "weights": torch.as_tensor(self.weights)}  # fmt: skip

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "LevelRule":
        """The rule :meth:`to_data` wrote (a policy file's entry, checked by the loader first)."""
        return cls(int(data["decision"]), tuple(float(f) for f in data["factors"]),
                   *(_array(data[k]).astype(np.float64) for k in ("mean", "scale", "weights")),
                   float(data.get("l2", 0.0)), dict(data.get("fitted") or {}))  # fmt: skip


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A regression forest as plain arrays: the mean over its trees of the leaf each input reaches.

    All trees' nodes in one array: ``roots`` (trees,) the first node of each tree; per node ``left``
    and ``right`` (absolute indices of its children, -1 at a leaf), ``feature`` and ``threshold``
    (go left where ``x[feature] <= threshold``), and ``value`` (nodes, K) the leaf's outputs. Inputs
    are compared in float32, as scikit-learn's trees read them, so a forest converted from one
    (:meth:`from_sklearn`) predicts what it predicts."""

    roots: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    def __post_init__(self) -> None:
        problem = check_forest(self.roots, self.left, self.right, self.feature, self.threshold, self.value)
        if problem:
            raise ValueError(f"not a forest: {problem}")

    @property
    def inputs(self) -> int:
        """How many inputs its splits may read (one more than the largest feature index; 0 if none split)."""
        internal = self.left >= 0
        return int(self.feature[internal].max()) + 1 if internal.any() else 0

    def predict(self, x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """(B, K) predictions for inputs (B, D), compared with the thresholds in ``dtype`` (float32, as
        scikit-learn's forests read their inputs; float64 for its histogram gradient boosting)."""
        x = np.asarray(x, dtype=dtype).reshape(len(x), -1)
        rows, out = np.arange(len(x)), np.zeros((len(x), self.value.shape[1]))
        for root in self.roots:
            node = np.full(len(x), int(root))
            inner = self.left[node] >= 0
            while inner.any():
                go_left = x[rows, np.maximum(self.feature[node], 0)] <= self.threshold[node]
                node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
                inner = self.left[node] >= 0
            out += self.value[node]
        return out / len(self.roots)

    @classmethod
    def from_trees(cls, trees: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> "TreeEnsemble":
        """A forest of ``trees``, each (left, right, feature, threshold, value (nodes, K)) with its
        children indexed within the tree and negative at a leaf (whose feature and threshold are
        ignored)."""
        roots, lefts, rights, feats, thresholds, values, start = [], [], [], [], [], [], 0
        for left, right, feature, threshold, value in trees:
            leaf = np.asarray(left) < 0
            roots.append(start)
            lefts.append(np.where(leaf, -1, np.asarray(left, dtype=np.int64) + start))
            rights.append(np.where(leaf, -1, np.asarray(right, dtype=np.int64) + start))
            feats.append(np.where(leaf, -1, np.asarray(feature, dtype=np.int64)))
            thresholds.append(np.where(leaf, 0.0, threshold))
            values.append(np.asarray(value, dtype=np.float64).reshape(len(leaf), -1))
            start += len(leaf)
        cat = np.concatenate
        index = np.int32 if start < 2**31 else np.int64  # half the bytes in a policy file
        return cls(np.asarray(roots, dtype=index), cat(lefts).astype(index), cat(rights).astype(index),
                   cat(feats).astype(index), cat(thresholds).astype(np.float64), cat(values))  # fmt: skip

    @classmethod
    def from_sklearn(cls, forest: Any) -> "TreeEnsemble":
        """The arrays of a fitted scikit-learn forest of regression trees (``estimators_``)."""
        return cls.from_trees([(t.children_left, t.children_right, t.feature, t.threshold, t.value)
                               for t in (est.tree_ for est in forest.estimators_)])  # fmt: skip

    @classmethod
    def from_boosting(cls, model: Any) -> "TreeEnsemble":
        """A fitted binary scikit-learn ``HistGradientBoostingClassifier`` (numerical splits) as a
        forest whose mean is its decision function, the log-odds of the positive class: its trees'
        leaf values, and a one-leaf tree holding its baseline, each times the number of trees
        (predict with float64 inputs, as it reads them)."""
        trees = [t.nodes for per_iteration in model._predictors for t in per_iteration]
        if any(len(per_iteration) != 1 for per_iteration in model._predictors) or \
                any(bool(nodes["is_categorical"].any()) for nodes in trees):  # fmt: skip
            raise ValueError("a binary classifier with numerical splits only")
        count = len(trees) + 1
        leafless = [np.where(n["is_leaf"].astype(bool), -1, n["left"].astype(np.int64)) for n in trees]
        baseline = float(np.ravel(model._baseline_prediction)[0])
        return cls.from_trees([(left, n["right"], n["feature_idx"], n["num_threshold"], n["value"] * count)
                               for left, n in zip(leafless, trees)]
                              + [([-1], [-1], [-1], [0.0], [baseline * count])])  # fmt: skip

    def to_data(self) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(getattr(self, k)) for k in FOREST_KEYS}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "TreeEnsemble":
        return cls(*(_array(data[k]) for k in FOREST_KEYS))


FOREST_KEYS = ("roots", "left", "right", "feature", "threshold", "value")


def _array(value: Any) -> np.ndarray:
    """A copy of a file's tensor (or array) as numpy; a floating tensor of a dtype numpy lacks
    (bfloat16) becomes float64."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy().copy()
    return np.array(value, copy=True)


def check_forest(roots: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 value: np.ndarray) -> str | None:  # fmt: skip
    """What is wrong with these arrays as a :class:`TreeEnsemble` (None: nothing). Every child lies
    after its parent and inside its own tree, so that every path from a root ends at a leaf."""
    n = len(left)
    if roots.ndim != 1 or len(roots) < 1 or n < 1:
        return "it needs at least one tree and one node"
    if any(a.shape != (n,) for a in (right, feature, threshold)) or value.ndim != 2 or value.shape[0] != n:
        return f"its node arrays disagree in length ({n} nodes)"
    if any(a.dtype.kind != "i" for a in (roots, left, right, feature)):
        return "its indices are not signed integers"
    if int(roots[0]) != 0 or (np.diff(roots) <= 0).any() or int(roots[-1]) >= n:
        return "its trees' first nodes are not increasing from 0 within the nodes"
    if not (np.isfinite(threshold).all() and np.isfinite(value).all()):
        return "it holds non-finite thresholds or values"
    ends = np.append(roots[1:], n)
    tree_end = np.repeat(ends, np.diff(np.append(roots, n)))  # per node, the end of its tree
    node = np.arange(n)
    leaf = left < 0
    if ((left < 0) != (right < 0)).any():
        return "a node has one child"
    inner = ~leaf
    for child in (left, right):
        if ((child[inner] <= node[inner]) | (child[inner] >= tree_end[inner])).any():
            return "a child does not lie after its parent inside its tree"
    if (feature[inner] < 0).any():
        return "a split reads a negative feature index"
    return None


def ridge(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights (bias last) of a ridge regression of every column of ``y`` on ``x``; the bias is not penalised."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.full(xb.shape[1], float(l2))
    penalty[-1] = 0.0
    return np.linalg.solve(xb.T @ xb + np.diag(penalty + 1e-9), xb.T @ y)


def _check_choices(factors: Sequence[float], who: str) -> None:
    """The factors a rule that chooses before the first step picks among: keep (1) and offsets within the bounds."""
    if 1.0 not in factors or any(not OFFSET_BOUNDS[0] <= f <= OFFSET_BOUNDS[1] for f in factors):
        raise ValueError(f"{who}'s factors include 1 (keep) and lie within {OFFSET_BOUNDS}")


@dataclass(frozen=True, eq=False)
class DescribedRule:
    """Chooses each run's held offset before its first step, from its description (``Run.describe``,
    :func:`~lhopt_dsl.agent.describe.model_descriptor`), by a forest predicting each factor's reward
    relative to the base schedule's run (see the module's docstring); ``factors`` are its outputs'
    offsets, keep (1) among them. A run whose description is missing or of another length keeps."""

    factors: tuple[float, ...]
    forest: TreeEnsemble
    descriptor: tuple[str, ...]
    fitted: dict[str, Any] = field(default_factory=dict)

    def decision_at(self, outer: int) -> int:
        """-1: it chooses before the first step, from the runs."""
        return -1

    def __post_init__(self) -> None:
        _check_choices(self.factors, "a described rule")
        if self.forest.value.shape[1] != len(self.factors) or self.forest.inputs > len(self.descriptor):
            raise ValueError(f"the forest predicts {self.forest.value.shape[1]} outputs from up to {self.forest.inputs} "
                             f"inputs, but the rule has {len(self.factors)} factors and {len(self.descriptor)} inputs")

    def choose_runs(self, runs: Sequence[Run]) -> list[float]:
        out = []
        for run in runs:
            d = np.asarray(run.describe, dtype=np.float64)
            if d.shape != (len(self.descriptor),) or not np.isfinite(d).all():
                out.append(1.0)
                continue
            out.append(float(self.factors[int(np.argmax(self.forest.predict(d[None])[0]))]))
        return out

    def to_data(self) -> dict[str, Any]:
        """What a policy file records (the ``level`` entry, ``kind: described``)."""
        return {"kind": "described", "factors": list(self.factors), "descriptor": list(self.descriptor),
                "fitted": self.fitted, "forest": self.forest.to_data()}  # fmt: skip

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "DescribedRule":
        return cls(tuple(float(f) for f in data["factors"]), TreeEnsemble.from_data(data["forest"]),
                   tuple(str(n) for n in data["descriptor"]), dict(data.get("fitted") or {}))  # fmt: skip


#: Hidden units of each of a learned level's two layers, unless its file says otherwise.
LEVEL_HIDDEN = 64
#: The raw policy features an observing level reads by default: every feature that is a plain value
#: of the run's state (not an integral CDF, a flag or a previous action) and varies between the
#: training tasks of ``task_specs/cpu_residual_sharp.yaml`` at 1/8 of the run.
OBSERVED: tuple[str, ...] = (
    "loss_ratio/tanh", "log_hparam/lr", "log_param_norm_ratio/tanh", "log_update_ratio/tanh",
    "frac_clipped/value", "frac_sqrt_v_ge_eps/value", "update_magnitude/value", "log_scale/value",
    "log_update_param_ratio/value", "log_noise_scale/value", "log_lamb_trust/value", "cos_grad_momentum/value",
    "logit_cdf_cos_grad_momentum/value", "cos_grad_update/value", "logit_cdf_cos_grad_update/value",
    "cos_grad_param/value", "cdf_cos_grad_param/value",
)  # fmt: skip
#: Where in the run an observing level chooses by default (a fraction of its decisions).
OBSERVE_AT = 0.125


def observing_decision(at: float, outer: int) -> int:
    """The decision at which a level that observes at fraction ``at`` of a run of ``outer`` decisions
    chooses: the nearest, after the first segment at the earliest (the features of decision 0 are
    those of an untouched model), and within the run (decision 0 in a run of one decision)."""
    return min(outer - 1, max(1, round(at * outer)))


def fraction_decision(at: float | None, outer: int) -> int:
    """The decision of a level that chooses at fraction ``at`` of the run (:func:`observing_decision`),
    or -1 (before the first step) for one with no fraction."""
    return -1 if at is None else observing_decision(at, outer)


def _feature_names(space: HyperparameterSpace) -> list[str]:
    from .actions import ActionSpace
    from .observation import FeatureBuilder

    return FeatureBuilder(ActionSpace(space), space).policy_names()




class ObservedReader:
    """Reads an observing level's features (``names``) from raw policy feature rows of ``space``'s
    policies. The feature builder writes a default value where nothing was observed (a loss nobody
    reported, a statistic not computed) and flags it; a feature whose series has such a flag
    (``<series>/is_nan``, ``<series>/is_nan_or_inf``) reads as NaN where it is set, so that
    :meth:`LearnedLevel.inputs` reads it as the training tasks' mean rather than as the default.
    ``policy_size``: the policy's feature count, which must be the builder's (an older vocabulary of
    features would put the names elsewhere)."""

    def __init__(self, names: Sequence[str], space: HyperparameterSpace, policy_size: int | None = None):
        order = _feature_names(space)
        if policy_size is not None and policy_size != len(order):
            raise ValueError(f"an observing level reads features by name from {len(order)} features, but its policy "
                             f"reads {policy_size}: a policy of another feature vocabulary")  # fmt: skip
        missing = [n for n in names if n not in order]
        if missing:
            raise ValueError(f"an observing level reads the features {missing}, which this policy's features lack")
        self.index = [order.index(n) for n in names]  # where each name lies in the policy's raw features

        def flag(name: str) -> int:  # where its series' "nothing observed" flag lies, -1 if it has none
            series = name.rsplit("/", 1)[0]
            return next((order.index(f) for f in (f"{series}/is_nan", f"{series}/is_nan_or_inf") if f in order), -1)

        self.flag = np.asarray([flag(n) for n in names])
        self.size = len(order)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """(B, O) float64 observed features of raw feature rows (B, P), NaN where unobserved."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.size)
        out = rows[:, self.index]
        flagged = self.flag >= 0
        out[:, flagged] = np.where(rows[:, self.flag[flagged]] > 0.5, np.nan, out[:, flagged])
        return out


def finite_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x`` (rows, columns), the mean and spread of its finite entries (non-finite ones:
    nothing observed); 0 and 0 for a column with none."""
    x = np.asarray(x, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    x = np.where(np.isfinite(x).any(0), x, 0.0)
    return np.nanmean(x, 0), np.nanstd(x, 0)


class LevelNet(torch.nn.Module):
    """A learned level's network: from a run's description, standardised by ``mean`` and ``scale``
    (and clipped to :data:`Z_CLIP` spreads), two tanh layers, then the logits of choosing each of
    ``choices`` factors and the value (the expected reward) of the run. The logits start at zero, so
    an untrained network chooses uniformly."""

    def __init__(self, inputs: int, choices: int, hidden: int = LEVEL_HIDDEN):
        super().__init__()
        self.register_buffer("mean", torch.zeros(inputs, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(inputs, dtype=torch.float64))
        self.body = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.Tanh(),
                                        torch.nn.Linear(hidden, hidden), torch.nn.Tanh())  # fmt: skip
        self.logits, self.value = torch.nn.Linear(hidden, choices), torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.logits.weight)
        torch.nn.init.zeros_(self.logits.bias)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(inputs, choices, hidden)."""
        return self.body[0].in_features, self.logits.out_features, self.body[0].out_features

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "LevelNet":
        """The network whose ``state_dict`` is ``state`` (its sizes read from the tensors)."""
        weight = state["body.0.weight"]
        net = cls(weight.shape[1], state["logits.weight"].shape[0], weight.shape[0])
        net.load_state_dict(state)
        return net

    def standardise_by(self, x: np.ndarray, first: int = 0) -> None:
        """Standardise inputs ``first`` ... ``first + x.shape[1] - 1`` by the mean and spread of the
        rows ``x`` (a constant input gets spread 1); non-finite entries (nothing observed) are left out, and
        an input with none observed gets mean 0 and spread 1."""
        mean, std = finite_stats(x)
        with torch.no_grad():
            self.mean[first:first + x.shape[1]] = torch.as_tensor(mean)
            self.scale[first:first + x.shape[1]] = torch.as_tensor(np.where(std > 0, std, 1.0))

    def standardise(self, describe: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(describe, dtype=np.float64)).reshape(-1, len(self.mean))
        return ((x - self.mean) / self.scale).clamp(-Z_CLIP, Z_CLIP).float()

    def forward(self, describe: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, choices) logits and (B,) values of descriptions (B, inputs)."""
        h = self.body(self.standardise(describe))
        return self.logits(h), self.value(h).squeeze(-1)


def _observing_inputs(describes: Sequence[Sequence[float]], observed: np.ndarray, mean: np.ndarray,
                      width: int) -> np.ndarray:  # fmt: skip
    """(B, D + O): each run's description (D = ``width`` entries; NaN where missing or of another
    length) followed by its observed features (B, O), a NaN one read as ``mean``'s entry."""
    obs = np.asarray(observed, dtype=np.float64).reshape(len(describes), len(mean))
    obs = np.where(np.isfinite(obs), obs, mean)
    desc = np.array([d if len(d) == width else np.full(width, np.nan) for d in describes],
                    dtype=np.float64).reshape(len(describes), width)  # fmt: skip
    return np.hstack([desc, obs])


@dataclass(frozen=True, eq=False)
class LearnedLevel:
    """Chooses each run's held offset by a :class:`LevelNet` trained with PPO (``lhopt train-level``):
    the most probable of ``factors`` (keep, 1, among them).

    Without ``observe`` it chooses before the first step from the run's description, as
    :class:`DescribedRule` does. With ``observe`` (names of raw policy features) it chooses at
    :func:`observing_decision` of fraction ``at`` from the description followed by those features
    (:meth:`choose_observed`). A run whose description is missing or of another length keeps."""

    factors: tuple[float, ...]
    net: LevelNet
    descriptor: tuple[str, ...]
    fitted: dict[str, Any] = field(default_factory=dict)
    observe: tuple[str, ...] = ()
    at: float | None = None

    def __post_init__(self) -> None:
        _check_choices(self.factors, "a learned level")
        if self.net.shape[:2] != (len(self.descriptor) + len(self.observe), len(self.factors)):
            raise ValueError(f"the level network reads {self.net.shape[0]} inputs into {self.net.shape[1]} choices, but "
                             f"the rule has {len(self.descriptor)} + {len(self.observe)} inputs and {len(self.factors)} factors")  # fmt: skip
        if bool(self.observe) != (self.at is not None) or (self.at is not None and not 0.0 < self.at < 1.0):
            raise ValueError(f"an observing level names the features it reads and a fraction of the run in (0, 1) "
                             f"where it reads them, got {len(self.observe)} features at {self.at}")  # fmt: skip

    def decision_at(self, outer: int) -> int:
        """The decision at which it chooses in a run of ``outer`` decisions (-1: before the first step)."""
        return fraction_decision(self.at, outer)

    def _best(self, x: np.ndarray, ok: np.ndarray) -> list[float]:
        if not ok.any():
            return [1.0] * len(ok)
        with torch.no_grad():
            best = self.net(x[ok])[0].argmax(1).tolist()
        picks = iter(best)
        return [float(self.factors[next(picks)]) if good else 1.0 for good in ok]

    def choose_runs(self, runs: Sequence[Run]) -> list[float]:
        """Per run, the factor chosen before its first step (an observing level reads nothing observed
        yet: the training tasks' mean)."""
        return self.choose_observed([r.describe for r in runs], np.full((len(runs), len(self.observe)), np.nan))

    def inputs(self, describes: Sequence[Sequence[float]], observed: np.ndarray) -> np.ndarray:
        """The network's inputs (B, D + O): each run's description followed by its observed features
        (B, O, as :class:`ObservedReader` reads them); a NaN observation (a loss nobody reported)
        reads as the training tasks' mean. A missing description stays NaN (the run keeps)."""
        return _observing_inputs(describes, observed, self.net.mean.numpy()[len(self.descriptor):], len(self.descriptor))

    def choose_observed(self, describes: Sequence[Sequence[float]], observed: np.ndarray) -> list[float]:
        """Per run, the factor chosen from its description and its observed features (B, O)."""
        x = self.inputs(describes, observed)
        return self._best(np.nan_to_num(x), np.isfinite(x).all(1))

    def to_data(self) -> dict[str, Any]:
        """What a policy file records (the ``level`` entry, ``kind: learned``)."""
        inputs, choices, hidden = self.net.shape
        extra = {"observe": list(self.observe), "at": self.at} if self.observe else {}
        return {"kind": "learned", "factors": list(self.factors), "descriptor": list(self.descriptor),
                "hidden": hidden, "fitted": self.fitted, **extra,
                "net": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}  # fmt: skip

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "LearnedLevel":
        factors, names = tuple(float(f) for f in data["factors"]), tuple(str(n) for n in data["descriptor"])
        observe = tuple(str(n) for n in data.get("observe") or ())
        net = LevelNet(len(names) + len(observe), len(factors), int(data.get("hidden", LEVEL_HIDDEN)))
        net.load_state_dict({k: torch.as_tensor(v) for k, v in data["net"].items()})
        at = None if data.get("at") is None else float(data["at"])
        return cls(factors, net.eval(), names, dict(data.get("fitted") or {}), observe, at)


def likeliest_winner(p: np.ndarray, acting: Sequence[float], threshold: float) -> np.ndarray:
    """Per row of win probabilities ``p`` (B, acting factors): the likeliest winner where its
    probability reaches ``threshold``, else keep (1)."""
    return np.where(p.max(1) >= threshold, np.asarray(acting, dtype=np.float64)[p.argmax(1)], 1.0)


@dataclass(frozen=True, eq=False)
class CautiousLevel:
    """Holds a factor only where it usually won (``lhopt fit-level``): per factor other than keep, a
    forest (:class:`TreeEnsemble`, one output) whose mean is the log-odds that holding that factor
    beats keeping on a run with these inputs, fitted to a level run's paired episodes. At
    :func:`observing_decision` of fraction ``at`` it reads the run's description and the observed
    features ``observe`` (one nobody observed reads as ``mean``'s entry), and takes the factor most
    likely to win where that probability reaches ``threshold``, else keeps. ``factors``: keep (1)
    and the acting factors, whose forests are ``forests`` in the same order. A run whose description
    is missing or of another length keeps."""

    factors: tuple[float, ...]
    forests: tuple[TreeEnsemble, ...]
    threshold: float
    mean: np.ndarray
    descriptor: tuple[str, ...]
    observe: tuple[str, ...]
    at: float
    fitted: dict[str, Any] = field(default_factory=dict)

    @property
    def acting(self) -> tuple[float, ...]:
        return tuple(f for f in self.factors if f != 1.0)

    def __post_init__(self) -> None:
        _check_choices(self.factors, "a cautious level")
        if not self.acting or len(set(self.factors)) != len(self.factors):
            raise ValueError(f"a cautious level has keep (1) and at least one other factor, each once: {self.factors}")
        width = len(self.descriptor) + len(self.observe)
        if len(self.forests) != len(self.acting) or any(t.value.shape[1] != 1 or t.inputs > width for t in self.forests):
            raise ValueError(f"a cautious level needs one single-output forest per factor other than keep "
                             f"({len(self.acting)}) reading at most its {width} inputs")  # fmt: skip
        if not 0.5 <= self.threshold < 1.0 or not self.observe or not 0.0 < self.at < 1.0:
            raise ValueError(f"a cautious level acts at a win probability in [0.5, 1) (got {self.threshold}) and reads "
                             f"observed features at a fraction of the run in (0, 1) (got {len(self.observe)} at {self.at})")
        if np.shape(self.mean) != (width,) or not np.isfinite(self.mean).all():
            raise ValueError(f"a cautious level's mean has {width} finite entries")

    def decision_at(self, outer: int) -> int:
        return fraction_decision(self.at, outer)

    def win_probability(self, x: np.ndarray) -> np.ndarray:
        """(B, acting factors) probabilities that holding each factor wins, for inputs (B, D + O)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(self.mean))
        return expit(np.hstack([t.predict(x, np.float64) for t in self.forests]))

    def inputs(self, describes: Sequence[Sequence[float]], observed: np.ndarray) -> np.ndarray:
        """As :meth:`LearnedLevel.inputs`, an unobserved feature read as ``mean``'s entry."""
        return _observing_inputs(describes, observed, self.mean[len(self.descriptor):], len(self.descriptor))

    def choose_observed(self, describes: Sequence[Sequence[float]], observed: np.ndarray) -> list[float]:
        x = self.inputs(describes, observed)
        ok = np.isfinite(x).all(1)
        out = np.ones(len(x))
        if ok.any():
            out[ok] = likeliest_winner(self.win_probability(x[ok]), self.acting, self.threshold)
        return out.tolist()

    def choose_runs(self, runs: Sequence[Run]) -> list[float]:
        return self.choose_observed([r.describe for r in runs], np.full((len(runs), len(self.observe)), np.nan))

    def to_data(self) -> dict[str, Any]:
        """What a policy file records (the ``level`` entry, ``kind: cautious``)."""
        return {"kind": "cautious", "factors": list(self.factors), "descriptor": list(self.descriptor),
                "observe": list(self.observe), "at": self.at, "threshold": self.threshold,
                "mean": torch.as_tensor(np.asarray(self.mean, dtype=np.float64)), "fitted": self.fitted,
                "forests": [t.to_data() for t in self.forests]}  # fmt: skip

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "CautiousLevel":
        return cls(tuple(float(f) for f in data["factors"]), tuple(TreeEnsemble.from_data(t) for t in data["forests"]),
                   float(data["threshold"]), _array(data["mean"]).astype(np.float64),
                   tuple(str(n) for n in data["descriptor"]), tuple(str(n) for n in data["observe"]),
                   float(data["at"]), dict(data.get("fitted") or {}))  # fmt: skip


@dataclass(frozen=True)
class ChosenLevel:
    """A level chosen outside the actor (meta-training's sampled choice for an episode): every run
    holds ``factor``, from the first step (``at`` None) or from :func:`observing_decision` of ``at``."""

    factor: float
    at: float | None = None

    def __post_init__(self) -> None:
        if self.at is not None and not 0.0 < self.at < 1.0:
            raise ValueError(f"a chosen level's fraction of the run lies in (0, 1), got {self.at}")

    def decision_at(self, outer: int) -> int:
        """The decision at which it takes effect in a run of ``outer`` decisions (-1: before the first step)."""
        return fraction_decision(self.at, outer)

    def choose_runs(self, runs: Sequence[Run]) -> list[float]:
        return [float(self.factor)] * len(runs)

    def choose(self, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), float(self.factor))


def level_rule_from_data(data: dict[str, Any]) -> "LevelRule | DescribedRule | LearnedLevel | CautiousLevel":
    """The rule a policy file's ``level`` entry holds (checked by the loader first)."""
    kind = data.get("kind")
    if kind == "described":
        return DescribedRule.from_data(data)
    if kind == "learned":
        return LearnedLevel.from_data(data)
    if kind == "cautious":
        return CautiousLevel.from_data(data)
    if kind is not None:
        raise ValueError(f"a level of kind {str(kind)[:40]!r}, which this version of lhopt does not know")
    return LevelRule.from_data(data)


class LevelCarry(NamedTuple):
    """Per run (row): the offset it has and the offset it holds (1 until the rule has chosen); the inner actor's carry."""

    inner: Any
    offset: tuple[float, ...]
    goal: tuple[float, ...]
    t: int
    outer: int
    describe: tuple[tuple[float, ...], ...] = ()  # each run's description (an observing level reads it when it chooses)


class HoldLevel:
    """``inner`` with its learning-rate proposals replaced by the held level ``rule`` chooses (see the
    module's docstring): a :class:`LevelRule` at its decision from the run's features, a
    :class:`DescribedRule` or :class:`LearnedLevel` before the first step from the run's description,
    an observing :class:`LearnedLevel` or a :class:`CautiousLevel` at its fraction of the run from both. Goes inside
    :class:`~lhopt_dsl.agent.residual.Residual`."""

    kind = "level"

    def __init__(self, inner: Actor[Any], space: HyperparameterSpace, rule: Any):
        if isinstance(rule, LevelRule) and rule.policy_size != inner.policy_size:
            raise ValueError(f"the level rule reads {rule.policy_size} features, but its policy reads {inner.policy_size}")
        self.inner, self.rule = inner, rule
        _, self.lr_dim, self.values, self.keep = offset_actions(space, "a level rule")
        observe = getattr(rule, "observe", ())
        self.reader = ObservedReader(observe, space, inner.policy_size) if observe else None

    @property
    def policy_size(self) -> int:
        return self.inner.policy_size

    @property
    def nvec(self) -> tuple[int, ...]:
        return self.inner.nvec

    def start(self, runs: Sequence[Run]) -> LevelCarry:
        ones, outer = (1.0,) * len(runs), _outer(runs)
        goals = ones if self.at(outer) >= 0 else tuple(clamp_offset(f) for f in self.rule.choose_runs(runs))
        return LevelCarry(self.inner.start(runs), ones, goals, 0, outer, tuple(tuple(r.describe) for r in runs))

    def at(self, outer: int) -> int:
        """The decision at which the rule chooses, in a run of ``outer`` decisions (-1: before the first)."""
        return self.rule.decision_at(outer)

    def _chosen(self, carry: LevelCarry, features: np.ndarray) -> Sequence[float]:
        rows = np.asarray(features).reshape(len(carry.offset), -1)
        if self.reader is not None:
            return self.rule.choose_observed(carry.describe, self.reader(rows))
        return self.rule.choose(rows)

    def act(self, carry: LevelCarry, features: np.ndarray, generators: Sequence[torch.Generator | None],
            greedy: bool) -> tuple[Step, LevelCarry]:  # fmt: skip
        step, inner = self.inner.act(carry.inner, features, generators, greedy)
        at, goal = self.at(carry.outer), carry.goal
        if carry.t == at:  # the chosen factor, relative to the offset in force (1 unless the guard or the inner actor moved it)
            chosen = self._chosen(carry, features)
            goal = tuple(clamp_offset(float(f) * m) for f, m in zip(chosen, carry.offset))
        actions, offsets = np.array(step.actions, copy=True), []
        for b, m in enumerate(carry.offset):
            if carry.t >= max(at, 0):
                actions[b, self.lr_dim] = nearest_scale(self.values, m, goal[b], self.keep)
            offsets.append(clamp_offset(m * self.values[int(actions[b, self.lr_dim])]))
        return step._replace(actions=actions), carry._replace(inner=inner, offset=tuple(offsets), goal=goal, t=carry.t + 1)

    def guarded(self, carry: LevelCarry, row: int, lr_factor: float) -> LevelCarry:
        """The offset follows a learning rate lowered from outside, as :class:`Residual`'s does, and so
        does the level held: a run whose loss diverged at a level is not steered back up to it."""
        offset, goal = list(carry.offset), list(carry.goal)
        offset[row] = clamp_offset(offset[row] * lr_factor)
        goal[row] = clamp_offset(goal[row] * lr_factor)
        return carry._replace(inner=self.inner.guarded(carry.inner, row, lr_factor), offset=tuple(offset), goal=tuple(goal))
