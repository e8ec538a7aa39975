"""Policy files and training checkpoints, checked before anything is built from them.

Policies are shared between users, so a file is input, not a trusted object: :func:`load_checkpoint`
already refuses anything but tensors and plain data; this module checks what that data says before
a network is allocated or a tensor copied. The declared shape must be within bounds (a few bytes
declaring ``hidden_size: 2000000`` would otherwise ask for gigabytes), every weight tensor must be
present with exactly the shape that shape implies, its data really in the file (no zero-stride
views that stand for more than they hold) and finite. A file that fails gets one
:class:`~lhopt_dsl.agent.policy.PolicyFileError` naming the file and the first thing wrong with it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import torch

from .describe import DESCRIPTOR_NAMES
from .policy import ActorCritic, PolicyFileError, PolicyShape, load_checkpoint

#: Inclusive bounds of a policy's shape fields: far above any policy the platform trains (the
#: "large" preset is 2 x 512; the default features number a few hundred), far below sizes that
#: cannot be allocated.
SHAPE_BOUNDS: dict[str, tuple[int, int]] = {
    "policy_size": (1, 65_536),
    "value_size": (1, 65_536),
    "hidden_size": (1, 8_192),
    "num_layers": (1, 16),
}
MAX_ACTION_DIMS = 256  # entries of ``nvec``
MAX_CHOICES = 4_096  # choices of one action dimension
MAX_MEMBERS = 64  # policies of an ensemble
NORM_KEYS = ("size", "beta", "clip", "eps", "count", "mean", "var_ema")


class _Problem(Exception):
    """What is wrong and where inside the file's data; :func:`_checked` adds the file's name."""


def _int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise _Problem(f"{where} is {_kind(value)}, not an integer")
    if not low <= value <= high:
        raise _Problem(f"{where} is {value}, outside {low}..{high:,}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{value!r}"[:40] if type(value) in (int, float, bool) or value is None else f"a {type(value).__name__}"


def _dict(value: Any, where: str, required: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Problem(f"{where} is {_kind(value)}, not a mapping")
    missing = [k for k in required if k not in value]
    if missing:
        raise _Problem(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    return value


def _finite_tensor(value: Any, where: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``value`` as a floating tensor of ``shape`` whose data the file holds, every entry finite."""
    if not isinstance(value, torch.Tensor):
        raise _Problem(f"{where} is {_kind(value)}, not a tensor")
    if tuple(value.shape) != shape:
        raise _Problem(f"{where} has shape {list(value.shape)}, but the declared shape needs {list(shape)}")
    if not value.dtype.is_floating_point:
        raise _Problem(f"{where} holds {value.dtype} values, not floating point")
    if value.is_sparse or not value.is_contiguous() or \
            value.untyped_storage().nbytes() < (value.storage_offset() + value.numel()) * value.element_size():
        raise _Problem(f"{where} is not a plain tensor whose values the file holds")  # fmt: skip
    if not bool(torch.isfinite(value).all()):
        bad = "NaN" if bool(torch.isnan(value).any()) else "infinite"
        raise _Problem(f"{where} holds {bad} values")
    return value


def _number(value: Any, where: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Problem(f"{where} is {_kind(value)}, not a finite number")
    return float(value)


def check_shape(data: Any, where: str) -> PolicyShape:
    """The :class:`PolicyShape` ``data`` declares, each field an integer within :data:`SHAPE_BOUNDS`."""
    data = _dict(data, where, ("policy_size", "value_size", "nvec"))
    unknown = sorted(set(data) - set(SHAPE_BOUNDS) - {"nvec"})
    if unknown:
        raise _Problem(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    sizes = {k: _int(data[k], f"{where}['{k}']", *SHAPE_BOUNDS[k]) for k in SHAPE_BOUNDS if k in data}
    nvec = data["nvec"]
    if not isinstance(nvec, (list, tuple)) or not 1 <= len(nvec) <= MAX_ACTION_DIMS:
        raise _Problem(f"{where}['nvec'] must be a list of 1..{MAX_ACTION_DIMS} action sizes, got {_kind(nvec)}")
    choices = tuple(_int(n, f"{where}['nvec'][{i}]", 1, MAX_CHOICES) for i, n in enumerate(nvec))
    return PolicyShape(**sizes, nvec=choices)  # type: ignore[arg-type]


def expected_weights(shape: PolicyShape) -> dict[str, tuple[int, ...]]:
    """The weight tensors a policy of ``shape`` has and their shapes, read off the network itself
    built on the meta device (shapes without storage: nothing is allocated)."""
    with torch.device("meta"):
        model = ActorCritic(shape)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_norm(data: Any, where: str, size: int) -> None:
    data = _dict(data, where, NORM_KEYS)
    if data["size"] != size or type(data["size"]) is not int:
        raise _Problem(f"{where}['size'] is {_kind(data['size'])}, but the policy has {size} such features")
    if not 0.0 < _number(data["beta"], f"{where}['beta']") < 1.0:
        raise _Problem(f"{where}['beta'] is {data['beta']}, outside (0, 1)")
    if _number(data["clip"], f"{where}['clip']") <= 0.0 or _number(data["eps"], f"{where}['eps']") < 0.0:
        raise _Problem(f"{where} needs clip > 0 and eps >= 0, got {data['clip']} and {data['eps']}")
    _int(data["count"], f"{where}['count']", 0, 2**62)
    for k in ("mean", "var_ema"):
        _finite_tensor(data[k], f"{where}['{k}']", (size,))


def check_policy_data(data: Any, where: str = "['policy']") -> None:
    """Raise :class:`_Problem` unless ``data`` is what :meth:`ActorCritic.to_checkpoint` writes (a
    single policy, or an ensemble's ``members``), consistent and finite; allocates nothing."""
    data = _dict(data, where)
    if "members" in data:
        members = data["members"]
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
            raise _Problem(f"{where}['members'] must be a list of 1..{MAX_MEMBERS} policies, got {_kind(members)}")
        for i, member in enumerate(members):
            if isinstance(member, dict) and "members" in member:
                raise _Problem(f"{where}['members'][{i}] is an ensemble; members must be single policies")
            check_policy_data(member, f"{where}['members'][{i}]")
        return
    data = _dict(data, where, ("shape", "weights", "policy_norm", "value_norm"))
    shape = check_shape(data["shape"], f"{where}['shape']")
    weights = _dict(data["weights"], f"{where}['weights']")
    expected = expected_weights(shape)
    missing = [k for k in expected if k not in weights]
    unknown = [k for k in weights if k not in expected]
    if missing or unknown:
        detail = f"lacks {missing[0]!r}" if missing else f"has the unknown tensor {str(unknown[0])[:60]!r}"
        raise _Problem(f"{where}['weights'] {detail} (a policy of its declared shape has {len(expected)} tensors)")
    for k, dims in expected.items():
        _finite_tensor(weights[k], f"{where}['weights']['{k}']", dims)
    _check_norm(data["policy_norm"], f"{where}['policy_norm']", shape.policy_size)
    _check_norm(data["value_norm"], f"{where}['value_norm']", shape.value_size)


MAX_FOREST_NODES = 4_000_000  # nodes of a level's forest, or of a cautious level's forests in all (fitted ones: tens of thousands)
MAX_DESCRIPTOR = 256  # entries of a model description


def _level_factors(factors: Any) -> list[float]:
    """A level rule's factors: a list of offsets within the residual offset bounds."""
    from .residual import OFFSET_BOUNDS

    if not isinstance(factors, list) or not 1 <= len(factors) <= MAX_LEVEL_FACTORS:
        raise _Problem(f"['level']['factors'] must be a list of 1..{MAX_LEVEL_FACTORS} offsets, got {_kind(factors)}")
    for i, f in enumerate(factors):
        if not OFFSET_BOUNDS[0] <= _number(f, f"['level']['factors'][{i}]") <= OFFSET_BOUNDS[1]:
            raise _Problem(f"['level']['factors'][{i}] is {f}, outside the offset bounds {OFFSET_BOUNDS}")
    return factors


def _check_forest(data: Any, where: str, outputs: int, inputs: int, columns: str, read: str) -> None:
    """A forest's arrays (:class:`~lhopt_dsl.agent.level.TreeEnsemble`'s ``to_data``): plain tensors
    of a bounded size whose every path ends at a leaf, ``outputs`` per node, splitting on fewer than
    ``inputs`` inputs (``columns`` and ``read`` name them in a refusal)."""
    from .level import FOREST_KEYS, _array, check_forest

    forest = _dict(data, where, FOREST_KEYS)
    arrays = {}
    for k in FOREST_KEYS:
        t = forest[k]
        at = f"{where}['{k}']"
        if not isinstance(t, torch.Tensor) or t.is_sparse or not t.is_contiguous() or \
                t.untyped_storage().nbytes() < (t.storage_offset() + t.numel()) * t.element_size():
            raise _Problem(f"{at} is {_kind(t)}, not a plain tensor whose values the file holds")  # fmt: skip
        most = MAX_FOREST_NODES * (outputs if k == "value" else 1)
        if t.numel() > most:
            raise _Problem(f"{at} has {t.numel():,} entries, more than a forest of {MAX_FOREST_NODES:,} nodes holds")
        if t.dim() != (2 if k == "value" else 1) or t.is_complex() or t.dtype == torch.bool:
            raise _Problem(f"{at} is a {t.dim()}-dimensional {t.dtype} tensor, not a "
                           f"{'table of real values' if k == 'value' else 'list of real numbers'}")  # fmt: skip
        arrays[k] = _array(t)
    if arrays["value"].ndim != 2 or arrays["value"].shape[1] != outputs:
        raise _Problem(f"{where}['value'] has shape {list(arrays['value'].shape)}, but needs {columns}")
    problem = check_forest(*(arrays[k] for k in FOREST_KEYS))
    if problem:
        raise _Problem(f"{where} is not a forest: {problem}")
    if (arrays["feature"][arrays["left"] >= 0] >= inputs).any():
        raise _Problem(f"{where} splits on an input beyond its {inputs} {read}")


def _check_described(level: Mapping[str, Any]) -> None:
    """A described level rule (:class:`~lhopt_dsl.agent.level.DescribedRule`'s ``to_data``): its factors
    (keep among them) within the offset bounds, its description's names, and a forest whose every path
    ends at a leaf, with one output per factor."""
    level = _dict(level, "['level']", ("factors", "descriptor", "forest"))
    factors, names = _level_names(level)
    _check_forest(level["forest"], "['level']['forest']", len(factors), len(names),
                  f"one column per factor ({len(factors)})", "described ones")  # fmt: skip


def _check_observing(level: Mapping[str, Any]) -> list[str]:
    """An observing level's feature names and its fraction of the run (none for a level that does not observe)."""
    observe = level.get("observe") or []
    if not isinstance(observe, list) or len(observe) > MAX_DESCRIPTOR or not all(isinstance(n, str) for n in observe):
        raise _Problem(f"['level']['observe'] must be a list of up to {MAX_DESCRIPTOR} feature names, got {_kind(observe)}")
    if observe:
        at = _number(level.get("at"), "['level']['at']")
        if not 0.0 < at < 1.0:
            raise _Problem(f"['level']['at'] is {at}, not a fraction of the run in (0, 1)")
    elif level.get("at") is not None:
        raise _Problem("['level']['at'] is set, but the level observes no feature (['level']['observe'] is empty)")
    return observe


def _check_cautious(level: Mapping[str, Any]) -> None:
    """A cautious level (:class:`~lhopt_dsl.agent.level.CautiousLevel`'s ``to_data``): factors and
    description as a described one's, the features it observes and where, its threshold, the mean its
    unobserved inputs read as, and one single-output forest per factor other than keep."""
    level = _dict(level, "['level']", ("factors", "descriptor", "observe", "at", "threshold", "mean", "forests"))
    factors, names = _level_names(level)
    observe = _check_observing(level)
    if not observe:
        raise _Problem("['level']['observe'] is empty: a cautious level reads observed features")
    if not 0.5 <= _number(level["threshold"], "['level']['threshold']") < 1.0:
        raise _Problem(f"['level']['threshold'] is {level['threshold']}, not a win probability in [0.5, 1)")
    _finite_tensor(level["mean"], "['level']['mean']", (len(names) + len(observe),))
    acting = [f for f in factors if f != 1.0]
    if not acting or len(set(factors)) != len(factors):
        raise _Problem(f"['level']['factors'] is {factors}: a cautious level has keep (1) and at least one other "
                       "factor, each once")  # fmt: skip
    forests = level["forests"]
    if not isinstance(forests, list) or len(forests) != len(acting):
        raise _Problem(f"['level']['forests'] must be a list of one forest per factor other than keep "
                       f"({len(acting)}), got {_kind(forests)}")  # fmt: skip
    for i, forest in enumerate(forests):
        _check_forest(forest, f"['level']['forests'][{i}]", 1, len(names) + len(observe), "one column", "inputs")
    nodes = sum(int(f["left"].numel()) for f in forests)
    if nodes > MAX_FOREST_NODES:
        raise _Problem(f"['level']['forests'] hold {nodes:,} nodes in all, more than {MAX_FOREST_NODES:,}")


MAX_LEVEL_HIDDEN = 1024  # hidden units of a learned level's layers


def _level_names(level: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """A described, learned or cautious level's factors (keep among them) and its description's names."""
    factors = _level_factors(level["factors"])
    if 1.0 not in factors:
        raise _Problem("['level']['factors'] lacks 1 (keep the base schedule)")
    names = level["descriptor"]
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_DESCRIPTOR or not all(isinstance(n, str) for n in names):
        raise _Problem(f"['level']['descriptor'] must be a list of 1..{MAX_DESCRIPTOR} names, got {_kind(names)}")
    if names != list(DESCRIPTOR_NAMES):
        raise _Problem(f"['level']['descriptor'] names {len(names)} description entries that are not this version's "
                       f"{len(DESCRIPTOR_NAMES)} ({', '.join(DESCRIPTOR_NAMES[:3])}, ...): a level made for another "
                       "description of the model")  # fmt: skip
    if not isinstance(level.get("fitted", {}), (dict, type(None))):
        raise _Problem(f"['level']['fitted'] is {_kind(level['fitted'])}, not a mapping")
    return factors, names


def _check_learned(level: Mapping[str, Any]) -> None:
    """A learned level (:class:`~lhopt_dsl.agent.level.LearnedLevel`'s ``to_data``): factors and
    description as a described one's, an observing one's feature names and fraction of the run, and
    the tensors of a network of its declared size, each of the shape such a network has, finite, with
    positive scales. Whether the names are the policy's features is checked where the level is built."""
    from .level import LevelNet

    level = _dict(level, "['level']", ("factors", "descriptor", "hidden", "net"))
    factors, names = _level_names(level)
    hidden = _int(level["hidden"], "['level']['hidden']", 1, MAX_LEVEL_HIDDEN)
    observe = _check_observing(level)
    inputs = len(names) + len(observe)
    expected = {k: tuple(v.shape) for k, v in LevelNet(inputs, len(factors), hidden).state_dict().items()}
    net = _dict(level["net"], "['level']['net']", tuple(expected))
    unknown = [k for k in net if k not in expected]
    if unknown:
        raise _Problem(f"['level']['net'] has the unknown tensor {str(unknown[0])[:60]!r}")
    for k, dims in expected.items():
        _finite_tensor(net[k], f"['level']['net']['{k}']", dims)
    if not bool((net["scale"] > 0).all()):
        raise _Problem("['level']['net']['scale'] holds values that are not positive")


def _check_observed(state: Mapping[str, Any]) -> None:
    """An observing level's feature names are features of its policy, which reads the features of
    its spec's space (the level reads them by name)."""
    from .level import ObservedReader
    from ..spec.hparams import validate_space

    observe = state["level"].get("observe") or []
    if observe:
        try:
            ObservedReader(observe, validate_space((state.get("spec") or {}).get("hparams", {})),
                           state["policy"]["shape"]["policy_size"])  # fmt: skip
        except ValueError as e:
            raise _Problem(f"['level']['observe']: {e}") from None


def _check_extras(state: Mapping[str, Any]) -> None:
    """What a policy file records beside the network: its spec's hyperparameter space and, for a
    residual policy, the base schedule (the two things :func:`~lhopt_dsl.controller.load_policy` reads)."""
    from pydantic import ValidationError

    from .residual import check_followable
    from ..spec.schedule import Schedule
    from ..spec.hparams import validate_space

    spec = state.get("spec", {})
    if spec is not None:
        hparams = _dict(spec, "['spec']").get("hparams", {})
        try:
            validate_space(hparams)
        except ValidationError as e:
            first = e.errors()[0]
            at = "".join(f"[{p!r}]" for p in first["loc"])
            raise _Problem(f"['spec']['hparams']{at} is not a valid hyperparameter space: {first['msg']}") from None
    residual = state.get("residual")
    if residual is not None:
        base = _dict(residual, "['residual']", ("base",))["base"]
        if not isinstance(base, str):
            raise _Problem(f"['residual']['base'] is {_kind(base)}, not a schedule's name")
        try:
            schedule = Schedule.from_name(base)
            if schedule.lr is None:
                raise ValueError("a residual policy's base must be a schedule with a learning rate, not 'keep'")
            check_followable(schedule)
        except ValueError as e:
            raise _Problem(f"['residual']['base'] {base[:60]!r} is not a schedule: {e}") from None


def _checked(path: str | os.PathLike[str], check: Any, state: Any) -> Any:
    try:
        check(state)
    except _Problem as e:
        raise PolicyFileError(f"{os.fspath(path)}: {e}") from None
    return state


def check_policy_state(state: Any) -> None:
    """Raise :class:`_Problem` unless ``state`` (a file's data) holds a usable policy."""
    _dict(state, "the file's data", ("policy",))
    check_policy_data(state["policy"])
    _check_extras(state)
    if state.get("level") is not None:
        _check_level(state)


MAX_LEVEL_FACTORS = 64  # factors a level rule chooses among


def _check_level(state: Mapping[str, Any]) -> None:
    """A level rule (:class:`~lhopt_dsl.agent.level.LevelRule`'s ``to_data``) fits the residual single
    policy it goes with: its decision and factors in range, its tensors of the policy's feature
    count, finite, with positive scales."""
    if state.get("residual") is None:
        raise _Problem("['level'] chooses a residual policy's offset, but the file has no ['residual'] base")
    if "members" in state["policy"]:
        raise _Problem("['level'] goes with a single policy, not an ensemble")
    kind = state["level"].get("kind") if isinstance(state["level"], dict) else None
    if kind not in (None, "described", "learned", "cautious"):
        raise _Problem(f"['level']['kind'] is {str(kind)[:40]!r}, a kind of level this version of lhopt does not know "
                       "(a file from a newer version?)")  # fmt: skip
    if kind == "described":
        _check_described(state["level"])
        return
    if kind in ("learned", "cautious"):
        (_check_learned if kind == "learned" else _check_cautious)(state["level"])
        _check_observed(state)
        return
    level = _dict(state["level"], "['level']", ("decision", "factors", "mean", "scale", "weights"))
    _int(level["decision"], "['level']['decision']", 0, 1_000_000)
    factors = _level_factors(level["factors"])
    if "l2" in level:
        _number(level["l2"], "['level']['l2']")
    if not isinstance(level.get("fitted", {}), (dict, type(None))):
        raise _Problem(f"['level']['fitted'] is {_kind(level['fitted'])}, not a mapping")
    p = state["policy"]["shape"]["policy_size"]
    _finite_tensor(level["mean"], "['level']['mean']", (p,))
    if not bool((_finite_tensor(level["scale"], "['level']['scale']", (p,)) > 0).all()):
        raise _Problem("['level']['scale'] holds values that are not positive")
    _finite_tensor(level["weights"], "['level']['weights']", (p + 1, len(factors)))


def load_policy_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The data of a policy file (``policy.pt``, an ensemble, or a training ``checkpoint.pt``),
    read without running code and checked: a policy whose network can be built as declared.

    Raises :class:`~lhopt_dsl.agent.policy.PolicyFileError` (a ValueError) ``"<file>: <what is wrong>"``.
    """
    return _checked(path, check_policy_state, load_checkpoint(path, "policy", map_location="cpu"))


#: Checked policy files by what identifies a version of a file (:func:`_file_version`), most recent last.
_CHECKED: dict[tuple[Any, ...], dict[str, Any]] = {}
_CHECKED_MAX = 8  # versions kept (a policy file is about 1 MB)


def _file_version(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """The resolved path, device, inode, size and modification and change times (ns) of ``path``:
    a file rewritten, replaced or touched gets another key."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def checked_policy_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`load_policy_file`'s data, read and checked once per version of the file in a process
    (a process building many optimizers from one policy reads it once; a file changed on disk is
    read again). The data is shared between callers: build from it (``ActorCritic.from_checkpoint``
    copies every tensor and array it takes) and never modify it; :func:`load_policy_file` gives a
    copy of one's own."""
    try:
        key = _file_version(path)
    except OSError:  # missing or unreadable: load_policy_file says so by name
        return load_policy_file(path)
    state = _CHECKED.pop(key, None)
    if state is None:
        state = load_policy_file(path)
        while len(_CHECKED) >= _CHECKED_MAX:
            del _CHECKED[next(iter(_CHECKED))]
    _CHECKED[key] = state
    return state


def _check_optimizer(data: Any, shapes: list[tuple[int, ...]]) -> None:
    """The PPO optimizer's state (``torch.optim.Adam``) fits the policy's parameters ``shapes``."""
    data = _dict(data, "['optimizer']", ("state", "param_groups"))
    groups, per_param = data["param_groups"], _dict(data["state"], "['optimizer']['state']")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups):  # fmt: skip
        raise _Problem("['optimizer']['param_groups'] is not a list of parameter groups")
    if sum(len(g["params"]) for g in groups) != len(shapes):
        raise _Problem(f"['optimizer'] has state for {sum(len(g['params']) for g in groups)} parameters, "
                       f"but the policy has {len(shapes)}")  # fmt: skip
    for i, entry in per_param.items():
        _int(i, "a key of ['optimizer']['state']", 0, len(shapes) - 1)
        entry = _dict(entry, f"['optimizer']['state'][{i}]")
        for k in ("exp_avg", "exp_avg_sq"):
            if k in entry:
                _finite_tensor(entry[k], f"['optimizer']['state'][{i}]['{k}']", shapes[i])


def check_training_state(state: Any) -> None:
    """Raise :class:`_Problem` unless ``state`` is a whole training checkpoint of ``lhopt train``."""
    _dict(state, "the file's data", ("iteration", "policy", "ema", "optimizer", "torch_rng", "history"))
    _int(state["iteration"], "['iteration']", 0, 2**62)
    for key in ("policy", "ema"):
        check_policy_data(state[key], f"['{key}']")
        if "members" in state[key]:
            raise _Problem(f"['{key}'] is an ensemble, which is not trained")
    if state["ema"]["shape"] != state["policy"]["shape"]:
        raise _Problem("['ema'] has another shape than ['policy']")
    _check_extras(state)
    shape = check_shape(state["policy"]["shape"], "['policy']['shape']")
    _check_optimizer(state["optimizer"], list(expected_weights(shape).values()))
    rng = state["torch_rng"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise _Problem(f"['torch_rng'] is {_kind(rng)}, not a random generator's state")
    try:
        torch.Generator().set_state(rng)
    except RuntimeError:
        raise _Problem("['torch_rng'] is not a valid random generator state") from None
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise _Problem("['history'] is not a list of per-iteration metrics")
    if not isinstance(state.get("run_id"), (str, type(None))):
        raise _Problem(f"['run_id'] is {_kind(state['run_id'])}, not an MLflow run id")


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The data of a training ``checkpoint.pt`` (what ``lhopt train --resume`` continues from),
    read without running code and checked as :func:`load_policy_file` checks a policy, plus the
    optimizer state, random state, iteration and history it needs."""
    return _checked(path, check_training_state, load_checkpoint(path, "training checkpoint"))
