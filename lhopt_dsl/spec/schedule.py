"""Fixed schedules: the outer-step grid of a run, the paper's seven learning-rate shapes, the one
:class:`Schedule` type built from them (baselines, followed schedules, a residual policy's base) or
tabulated from a policy's choices (schedule export and replay) with its one serialised form and
file document, and the learning curves fixed runs record.

Pure arithmetic and plain data: the drop-in optimizer (:mod:`lhopt_dsl.controller`) imports this
module without pulling in the task compiler or gymnasium. Runs of fixed schedules on compiled tasks
are in :mod:`lhopt_dsl.tasks.training`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence, cast

import numpy as np


def segment_bounds(inner_steps: int, outer_steps: int) -> list[int]:
    """Inner-step indices where outer steps happen: ``outer_steps + 1`` values from 0 to T."""
    return [round(k * inner_steps / outer_steps) for k in range(outer_steps + 1)]


ScheduleShape = Literal["constant", "multi_step", "linear", "quadratic", "exponential", "cosine", "cosine_0.1"]
SHAPES: tuple[str, ...] = ("constant", "multi_step", "linear", "quadratic", "exponential", "cosine", "cosine_0.1")


def shape_factor(shape: str, p: float) -> float:
    """Learning-rate multiplier at progress ``p`` in [0, 1] for the paper's seven schedules (4.1).

    multi_step: x0.1 at 50% and x0.01 at 75% of the run; exponential: decays to 1% at the end.
    """
    if shape == "constant":
        return 1.0
    if shape == "multi_step":
        return 1.0 if p < 0.5 else (0.1 if p < 0.75 else 0.01)
    if shape == "linear":
        return 1.0 - p
    if shape == "quadratic":
        return (1.0 - p) ** 2
    if shape == "exponential":
        return 0.01**p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "cosine_0.1":
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule shape '{shape}'; known: {', '.join(SHAPES)}")


_NAME = re.compile(r"(?:(?P<optimizer>adamw|ciao)-)?(?P<shape>.+?)(?:-lr(?P<lr>[0-9.eE+-]+))?")
_TABLE_NAME = re.compile(r"(?:(?:adamw|ciao)-)?table-[0-9a-f]{8}")

#: The ``shape`` of a tabulated schedule: recorded rows of values, each in force from its progress on.
TABLE = "table"
OPTIMIZERS: tuple[str, ...] = ("adamw", "ciao")
#: The ``format`` and ``version`` of a schedule file (:func:`schedule_document`). Files without a
#: format are the column documents of earlier versions, read as tabulated schedules.
SCHEDULE_FORMAT = "lhopt-schedule"
SCHEDULE_VERSION = 1
_RESERVED = frozenset({"kind", "optimizer", "progress"})
_SHAPE_KEYS = frozenset({"kind", "optimizer", "lr", "shape", "weight_decay", "betas", "eps"})

#: The fixed schedule every learned policy is judged against (the shipped policy's residual base):
#: CIAO's learning rate following it, nothing else moving. ``lhopt check-dropin`` and ``lhopt
#: eval-ood`` run it as a row of their own.
REFERENCE_SCHEDULE = "linear-lr0.03"


@dataclass(frozen=True)
class Schedule:
    """The one schedule type: a run's progress in [0, 1] to hyperparameter values, named in one grammar
    and serialised in one form (:meth:`to_dict`, :meth:`from_dict`).

    A *shaped* schedule sets the learning rate at progress ``p`` to ``lr * shape(p)`` (:meth:`at`);
    ``lr=None`` is the run's own initial value. ``optimizer`` says what runs it on its own: ``adamw``
    (AdamW with constant ``betas``, ``eps`` and ``weight_decay``: the baselines), ``ciao`` (CIAO at
    the task's initial hyperparameters, the learning rate scaled by the shape), or None: a schedule
    a policy follows through its own actions (``lhopt eval --schedule``, imitation's targets, a
    residual policy's base), keeping its other hyperparameters.

    A *tabulated* schedule (``shape == "table"``, made by :meth:`tabulated`: what a policy chose,
    as ``lhopt schedule export`` and ``LHOPT.schedule()`` record it) holds rows: ``progress[i]`` is
    where row ``i`` takes effect, and each column of :attr:`columns` one hyperparameter's value in
    every row; at progress ``p`` the last row at or before ``p`` is in force (a step lookup; before
    the first row, the first). Its ``optimizer`` is the hyperparameter space its values are in
    (``adamw``: AdamW's own units; ``ciao``; None where a file of an early version did not record
    it, which were all CIAO's).

    Names (:attr:`name`, :meth:`from_name`): ``adamw-<shape>-lr<lr>``, ``ciao-<shape>``,
    ``<shape>-lr<lr>``, and ``keep`` (followed, the initial learning rate kept), with ``<shape>``
    one of :data:`SHAPES`; e.g. ``adamw-cosine-lr0.001``, ``linear-lr0.03``. A tabulated schedule is
    named ``[<optimizer>-]table-<digest of its rows>``, which identifies it but is read from its file.
    """

    optimizer: Literal["adamw", "ciao"] | None = "adamw"
    lr: float | None = 1e-3
    shape: str = "constant"
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    progress: tuple[float, ...] = ()  # a tabulated schedule's rows: where each takes effect
    columns: tuple[tuple[str, tuple[float, ...]], ...] = ()  # and (hyperparameter, its value in each row), by name

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown schedule optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)} or none")
        if self.shape == TABLE:
            self._check_table()
            return
        shape_factor(self.shape, 0.0)  # an unknown shape fails here, naming the known ones
        if self.progress or self.columns:
            raise ValueError(f"only a tabulated schedule (Schedule.tabulated) has rows, not a {self.shape} one")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"a schedule's learning rate must be positive, got {self.lr}")
        if self.optimizer == "adamw" and self.lr is None:
            raise ValueError("an AdamW schedule needs a learning rate")
        if self.optimizer is None and self.lr is None and self.shape != "constant":
            raise ValueError(f"a followed schedule without a learning rate keeps the initial one: 'keep', not {self.shape}")

    def _check_table(self) -> None:
        names = [n for n, _ in self.columns]
        if self.lr is not None:
            raise ValueError("a tabulated schedule keeps its learning rates in its 'lr' column, not in lr")
        if "lr" not in names or len(set(names)) != len(names) or _RESERVED & set(names):
            raise ValueError(f"a tabulated schedule needs one 'lr' column and distinct hyperparameter columns, got {names}")
        if any(len(values) != len(self.progress) for _, values in self.columns):
            raise ValueError(f"every column of a tabulated schedule needs a value per row ({len(self.progress)} rows)")
        if any(b < a for a, b in zip(self.progress, self.progress[1:])):
            raise ValueError("a schedule needs at least one row, in increasing progress")

    @classmethod
    def tabulated(cls, progress: Sequence[float], columns: Mapping[str, Sequence[float]],
                  optimizer: str | None = None) -> "Schedule":  # fmt: skip
        """The tabulated schedule of rows at ``progress`` with each hyperparameter's ``columns``, in
        the units of ``optimizer``'s space (see the class docstring; another name is a ValueError)."""
        return cls(optimizer=cast(Any, optimizer), lr=None, shape=TABLE, progress=tuple(float(p) for p in progress),
                   columns=tuple(sorted((str(n), tuple(float(v) for v in vs)) for n, vs in columns.items())))  # fmt: skip

    @property
    def is_table(self) -> bool:
        return self.shape == TABLE

    @property
    def rows(self) -> int:
        """How many rows a tabulated schedule has (0 for a shaped one)."""
        return len(self.progress)

    def column(self, name: str) -> tuple[float, ...]:
        """A tabulated schedule's values of ``name``, row by row (KeyError if it has none)."""
        for n, values in self.columns:
            if n == name:
                return values
        raise KeyError(name)

    def values_at(self, progress: float) -> dict[str, float]:
        """What the schedule sets at ``progress``: every column of a tabulated schedule's row in force
        there; a shaped one's learning rate (none where it keeps the run's own)."""
        if self.is_table:
            if not self.progress:
                return {}
            i = max(bisect.bisect_right(self.progress, progress) - 1, 0)
            return {n: values[i] for n, values in self.columns}
        lr = self.at(progress)
        return {} if lr is None else {"lr": lr}

    def at(self, progress: float) -> float | None:
        """The learning rate at ``progress``; None where it is the run's own (``lr=None``)."""
        if self.is_table:
            return self.values_at(progress).get("lr")
        return None if self.lr is None else self.lr * shape_factor(self.shape, progress)

    @property
    def name(self) -> str:
        prefix = "" if self.optimizer is None else f"{self.optimizer}-"
        if self.is_table:
            text = json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)
            return f"{prefix}table-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        if self.optimizer == "ciao":
            return f"ciao-{self.shape}"
        if self.lr is None:
            return "keep"
        return f"{prefix}{self.shape}-lr{self.lr:g}"

    @classmethod
    def from_name(cls, name: str) -> "Schedule":
        """The schedule of :attr:`name` (see the class docstring for the grammar)."""
        if name == "keep":
            return cls(optimizer=None, lr=None)
        if _TABLE_NAME.fullmatch(name):
            raise ValueError(f"'{name}' names a tabulated schedule, which is read from its file (load_schedule, or "
                             "ScheduleReplay(optimizer, 'schedule.yaml', total_steps)), not from its name")
        m = _NAME.fullmatch(name)
        if m is None or m["shape"] not in SHAPES:
            raise ValueError(f"unknown schedule '{name}': names look like linear-lr0.03, adamw-cosine-lr0.001, "
                             f"ciao-constant or keep, with a shape in {', '.join(SHAPES)}")  # fmt: skip
        optimizer, lr = m["optimizer"], m["lr"]
        if (optimizer == "ciao") != (lr is None):
            raise ValueError(f"schedule '{name}': " + ("a CIAO schedule runs at the task's initial learning rate "
                             "and takes no -lr" if optimizer == "ciao" else "needs a learning rate (-lr<value>)"))
        try:
            value = None if lr is None else float(lr)
        except ValueError:
            raise ValueError(f"schedule '{name}': '{lr}' is not a learning rate") from None
        return cls(optimizer=optimizer, lr=value, shape=m["shape"])

    def to_dict(self) -> dict[str, Any]:
        """The one serialised form, plain data (YAML or JSON): ``{"kind": "shape", "optimizer",
        "lr", "shape", "weight_decay", "betas", "eps"}``, or ``{"kind": "table", "optimizer",
        "progress": [...], "<hyperparameter>": [...], ...}``; :meth:`from_dict` reads it back."""
        if self.is_table:
            return {"kind": TABLE, "optimizer": self.optimizer, "progress": list(self.progress),
                    **{n: list(values) for n, values in self.columns}}  # fmt: skip
        return {"kind": "shape", "optimizer": self.optimizer, "lr": self.lr, "shape": self.shape,
                "weight_decay": self.weight_decay, "betas": list(self.betas), "eps": self.eps}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, source: str = "schedule") -> "Schedule":
        """The schedule of :meth:`to_dict`'s form; anything else is a ValueError naming ``source``."""
        if not isinstance(data, Mapping) or data.get("kind") not in ("shape", TABLE):
            kind = data.get("kind") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{source}: not a schedule (kind {kind!r}; a schedule has kind 'shape' or 'table')")
        try:
            if data["kind"] == TABLE:
                columns = {str(k): _numbers(v, f"{source}: column {k}") for k, v in data.items() if k not in _RESERVED}
                return cls.tabulated(_numbers(data.get("progress"), f"{source}: progress"), columns,
                                     data.get("optimizer"))  # fmt: skip
            unknown = sorted(set(data) - _SHAPE_KEYS)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(map(str, unknown))}")
            fields = {k: v for k, v in data.items() if k != "kind"}
            for key in ("lr", "weight_decay", "eps"):
                if fields.get(key) is not None:
                    fields[key] = _numbers([fields[key]], key)[0]
            if "betas" in fields:
                fields["betas"] = tuple(_numbers(fields["betas"], "betas"))
                if len(fields["betas"]) != 2:
                    raise ValueError("betas needs two values")
            return cls(**fields)
        except (TypeError, ValueError) as e:
            message = str(e)
            raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None


def _numbers(values: Any, what: str) -> list[float]:
    """``values`` as floats: a list of numbers, or a ValueError naming ``what``."""
    if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{what}: expected a list of numbers")
    return [float(v) for v in values]


#: The followed schedule that keeps the run's initial learning rate.
KEEP = Schedule(optimizer=None, lr=None)


def schedule_document(schedule: Schedule, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A schedule file's content: the schedule's one serialised form (:meth:`Schedule.to_dict`) under
    ``schedule``, with its format, version and ``meta`` (where it came from: policy, task, ...)."""
    return {"format": SCHEDULE_FORMAT, "version": SCHEDULE_VERSION, "meta": dict(meta or {}),
            "schedule": schedule.to_dict()}  # fmt: skip


def read_schedule_document(data: Any, source: str = "schedule") -> tuple[Schedule, dict[str, Any]]:
    """The schedule and metadata of a schedule file's content (:func:`schedule_document`), of a bare
    :meth:`Schedule.to_dict`, or of the column document earlier versions wrote, converted: ``{"meta":
    {"space": ...}, "schedule": {"progress": [...], "<hyperparameter>": [...]}}``, or its columns alone."""
    if isinstance(data, Mapping) and "format" in data:
        if data["format"] != SCHEDULE_FORMAT:
            raise ValueError(f"{source}: not a schedule file (format {data['format']!r}, not {SCHEDULE_FORMAT!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEDULE_VERSION:
            raise ValueError(f"{source}: a schedule file of version {version!r}; this lhopt reads versions up to "
                             f"{SCHEDULE_VERSION}: upgrade lhopt, or export the schedule again with this one "
                             "(`lhopt schedule export`)")  # fmt: skip
        meta = data.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise ValueError(f"{source}: its meta is not a mapping")
        return Schedule.from_dict(data.get("schedule"), source), dict(meta)
    if isinstance(data, Mapping) and "kind" in data:
        return Schedule.from_dict(data, source), {}
    document = data if isinstance(data, Mapping) and "schedule" in data else {"meta": {}, "schedule": data}
    columns, meta = document["schedule"], document.get("meta") or {}
    if isinstance(columns, Mapping) and "kind" in columns and isinstance(meta, Mapping):
        return Schedule.from_dict(columns, source), dict(meta)
    if not isinstance(columns, Mapping) or "progress" not in columns or "lr" not in columns or not isinstance(meta, Mapping):
        raise ValueError(f"{source}: not a schedule (needs 'progress' and 'lr' columns)")
    meta = dict(meta)
    space = meta.pop("space", None)  # the early files' one field of the schedule's own
    return Schedule.from_dict({**columns, "kind": TABLE, "optimizer": space}, source), meta


@dataclass
class LearningCurve:
    """Losses of a fixed run, measured at ``steps``; the test split is measured at the same points.

    The test loss is the score of evaluations (no run sees it: nothing decides on it), and its
    curve is what speedups are read from; ``test_loss`` is its last value.
    """

    steps: list[int]  # inner steps at which the losses were measured (0 first)
    valid_loss: list[float]
    train_loss: list[float] = field(default_factory=list)  # mean training loss of each segment
    test_loss: float = float("nan")
    test_curve: list[float] = field(default_factory=list)  # test loss at each of ``steps``

    def losses(self, score: str) -> list[float]:
        """The curve used to score: ``"test"`` (the test curve) or ``"valid"``."""
        if score == "test":
            return self.test_curve
        if score == "valid":
            return self.valid_loss
        raise ValueError(f"unknown score '{score}'; use 'test' or 'valid'")

    @property
    def progress(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.float64) / max(self.steps[-1], 1)
