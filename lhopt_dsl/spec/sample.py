"""Sampling concrete tasks from a spec, and counting the task space.

``sample(spec, seed)`` is a pure function of its arguments: the mixture entry and the task's
settings are drawn from one random stream, the noisy initial hyperparameters from another (so
editing the task mixture does not change the hyperparameter noise of a seed). The resulting
:class:`TaskConfig` is concrete, frozen, hashable, round-trips through YAML, and together with its
``seed`` fixes initial weights and data order when compiled.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator

import numpy as np
import yaml
from pydantic import Field

from .distributions import StrictModel
from .experiment import ExperimentSpec, TaskDistribution
from .families import FamilySpec, Task, TaskBase
from .hparams import HyperparameterSpace, InitialHParams, sample_hparams
from .loader import parse_yaml
from .space import iter_settings, union_size

_TASK_STREAM = 0
_HPARAM_STREAM = 1

#: Task seeds of meta-training and of evaluation come from disjoint ranges, so no evaluation task
#: can ever be a training task (enforced by :func:`eval_seed` and checked by evaluation code).
TRAIN_SEEDS = range(0, 2**40)
EVAL_SEEDS = range(2**40, 2**41)


def _derived(root: int, keys: tuple[int, ...], space: range) -> int:
    state = np.random.SeedSequence([root, *keys]).generate_state(2, np.uint64)
    return space.start + int(state[0]) % len(space)


def train_seed(root: int, *keys: int) -> int:
    """Seed of a meta-training task, e.g. ``train_seed(spec.seed, iteration, index)``."""
    return _derived(root, (0, *keys), TRAIN_SEEDS)


def eval_seed(root: int, *keys: int) -> int:
    """Seed of an evaluation task of the *dev* set; never equal to any training seed."""
    return _derived(root, (1, *keys), EVAL_SEEDS)


def test_seed(root: int, *keys: int) -> int:
    """Seed of an evaluation task of the frozen *test* set: drawn under a key of its own (2), so
    the test tasks are neither training tasks nor dev tasks (:func:`eval_seed`)."""
    return _derived(root, (2, *keys), EVAL_SEEDS)


#: The held-out task sets: ``dev`` chooses designs, settings and checkpoints; ``test`` judges the
#: final candidates once and chooses nothing.
TASK_SETS: dict[str, Callable[..., int]] = {"dev": eval_seed, "test": test_seed}


class TaskConfig(StrictModel):
    """One concrete inner task: its settings, its seed and its initial hyperparameters."""

    seed: Annotated[int, Field(ge=0, description="Fixes initial weights, data order and generated data.")]
    task: Task
    hparams: InitialHParams

    @property
    def family(self) -> str:
        return self.task.family

    @property
    def task_id(self) -> str:
        """Stable content hash: equal configs have equal ids on every machine and Python version."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        task = data["task"]
        common = [k for k in TaskBase.model_fields if k in task]
        # For readers: the tag first, then the family's own choices, then the shared training ones.
        data["task"] = {"family": task.pop("family"), **{k: v for k, v in task.items() if k not in common}}
        data["task"].update({k: task[k] for k in common})
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, name: str = "<task config>") -> "TaskConfig":
        """The config in ``text`` (from :meth:`to_yaml`); ``name`` says where it comes from in the
        SpecError (file:line:col) that bad YAML raises. Read as specs are, so ``1e-3`` is a float."""
        return cls.model_validate(parse_yaml(text, name))


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def sample_task(tasks: TaskDistribution, seed: int) -> Any:
    """Draw a mixture entry by weight, then a concrete task from it (within the budget, if any)."""
    rng = _rng(seed, _TASK_STREAM)
    index = int(rng.choice(len(tasks.families), p=np.asarray(tasks.weights)))
    entry = tasks.families[index]
    if tasks.budget is None:
        return entry.sample(rng)
    for _ in range(tasks.budget.max_tries):
        task = entry.sample(rng)
        if tasks.budget.admits(task):
            return task
    raise ValueError(
        f"seed {seed}: no '{entry.family}' task (tasks.families[{index}]) fits the budget "
        f"{tasks.budget.model_dump(exclude_none=True)} in {tasks.budget.max_tries} draws; "
        "raise the budget or make that family's choices smaller"
    )


def budget_acceptance(tasks: TaskDistribution, draws: int = 200, seed: int = 0) -> list[float]:
    """Monte-Carlo estimate, per mixture entry, of the fraction of settings within the budget."""
    if tasks.budget is None:
        return [1.0] * len(tasks.families)
    rng = _rng(seed, _TASK_STREAM)
    return [sum(tasks.budget.admits(e.sample(rng)) for _ in range(draws)) / draws for e in tasks.families]


def sample_initial_hparams(space: HyperparameterSpace, seed: int) -> InitialHParams:
    """Noisy initial hyperparameters for ``seed`` (paper Table 8's noise)."""
    return sample_hparams(space, _rng(seed, _HPARAM_STREAM))


def default_initial_hparams(space: HyperparameterSpace) -> InitialHParams:
    """The space's initial hyperparameters without noise (paper Table 7): what a user starts from."""
    quiet = space.model_copy(update={n: hp.model_copy(update={"noise": None}) for n, hp in space.controlled().items()})
    return sample_hparams(quiet, _rng(0, _HPARAM_STREAM))


INITIAL_CHOICES: tuple[str, ...] = ("noisy", "default")


def sample(
    spec: ExperimentSpec, seed: int, tasks: TaskDistribution | None = None, initial: str = "noisy"
) -> TaskConfig:
    """Sample one concrete task of ``tasks`` (default: the spec's training distribution).

    ``initial``: ``"noisy"`` initial hyperparameters (Table 8's noise, as in meta-training) or the
    space's ``"default"`` values (Table 7, as a user starts; evaluations use these by default).
    """
    tasks = tasks or spec.tasks
    if initial == "noisy":
        hparams = sample_initial_hparams(spec.hparams, seed)
    elif initial == "default":
        hparams = default_initial_hparams(spec.hparams)
    else:
        raise ValueError(f"initial must be one of {', '.join(INITIAL_CHOICES)}; got '{initial}'")
    return TaskConfig(seed=seed, task=sample_task(tasks, seed), hparams=hparams)


@dataclass(frozen=True)
class SpaceSize:
    """Distinct task settings: per family (overlapping entries counted once) and in total."""

    families: dict[str, int]
    entries: list[int]

    @property
    def total(self) -> int:
        return sum(self.families.values())


def _groups(tasks: TaskDistribution) -> dict[str, list[FamilySpec]]:
    groups: dict[str, list[FamilySpec]] = defaultdict(list)
    for entry in tasks.families:
        groups[entry.family].append(entry)
    return groups


def space_size(spec: ExperimentSpec | TaskDistribution) -> SpaceSize:
    """Count the distinct task settings of a distribution exactly (the seed is not a setting)."""
    tasks = spec.tasks if isinstance(spec, ExperimentSpec) else spec
    families = {name: union_size([e.axes() for e in entries]) for name, entries in _groups(tasks).items()}
    entries = [union_size([e.axes()]) for e in tasks.families]
    return SpaceSize(families, entries)


def enumerate_settings(spec: ExperimentSpec | TaskDistribution) -> Iterator[dict[str, Any]]:
    """Every distinct task setting, by brute force: only for small spaces (tests, inspection)."""
    tasks = spec.tasks if isinstance(spec, ExperimentSpec) else spec
    for name, entries in _groups(tasks).items():
        seen: set[str] = set()
        for entry in entries:
            for setting in iter_settings(entry.axes()):
                task = entry.task_cls(**setting).model_dump(mode="json")
                key = json.dumps(task, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    yield task
