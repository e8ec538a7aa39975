"""Loading specs from YAML with errors that name file, line, column and field path.

``load_spec(path)`` reads an experiment spec (or a bare task distribution, a file whose top level
has ``families:``), resolves includes, and validates it. Includes:

* ``{include: relative/path.yaml, key: value...}`` anywhere: replaced by that file's content, with
  the other keys of the mapping laid over it (so one family file can be reused with another
  ``weight``);
* ``tasks: relative/path.yaml`` in an experiment: shorthand for ``tasks: {include: ...}``.

Paths are relative to the including file. Cycles and missing files are errors. Every YAML,
include or validation problem becomes a :class:`SpecError` listing each problem as
``file:line:col: dotted.path: message``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .experiment import ERROR_PATH, ExperimentSpec

PathT = tuple[Any, ...]


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecProblem:
    location: Location | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class SpecError(ValueError):
    """A spec could not be loaded; ``problems`` lists each one with its location."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def _loc(file: Path, mark: yaml.Mark) -> Location:
    return Location(_display(file), mark.line + 1, mark.column + 1)


def format_path(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Reader:
    """Reads YAML files into plain data plus a map from data path to source location."""

    def __init__(self) -> None:
        self.marks: dict[PathT, Location] = {}
        self.files: list[Path] = []  # every file read, in order

    def read(self, file: Path, at: PathT, stack: tuple[Path, ...], origin: Location | None) -> Any:
        file = file.resolve()
        if file in stack:
            chain = " -> ".join(_display(p) for p in (*stack, file))
            raise SpecError([SpecProblem(origin, format_path(at), f"include cycle: {chain}")])
        try:
            text = file.read_text(encoding="utf-8")
            if file not in self.files:
                self.files.append(file)
        except FileNotFoundError:
            what = "included file" if stack else "spec file"
            raise SpecError(
                [SpecProblem(origin, format_path(at), f"{what} not found: {_display(file)} (looked for {file})")]
            ) from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
            raise SpecError([SpecProblem(origin, format_path(at), f"cannot read {_display(file)}: {e}")]) from None
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            loc = _loc(file, mark) if mark else Location(_display(file), 1, 1)
            msg = " ".join(x for x in (e.context, e.problem) if x)
            raise SpecError([SpecProblem(loc, "", f"YAML syntax error: {msg}")]) from None
        except yaml.YAMLError as e:
            raise SpecError([SpecProblem(Location(_display(file), 1, 1), "", f"YAML error: {e}")]) from None
        finally:
            loader.dispose()
        if node is None:
            raise SpecError([SpecProblem(Location(_display(file), 1, 1), "", "the file is empty")])
        return self._convert(node, file, at, (*stack, file), loader)

    def _convert(self, node: yaml.Node, file: Path, at: PathT, stack: tuple[Path, ...], loader: _Loader) -> Any:
        self.marks.setdefault(at, _loc(file, node.start_mark))
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            include: tuple[Path, Location] | None = None
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                key_loc = _loc(file, key_node.start_mark)
                if not isinstance(key, (str, int, float, bool)):
                    raise SpecError([SpecProblem(key_loc, format_path(at), "mapping keys must be plain scalars")])
                if key in out or (key == "include" and include):
                    raise SpecError([SpecProblem(key_loc, format_path((*at, key)), f"duplicate key '{key}'")])
                if key == "include":
                    target = loader.construct_object(value_node, deep=True)
                    if not isinstance(target, str):
                        raise SpecError([SpecProblem(key_loc, format_path(at), "include: expects a file path")])
                    include = (file.parent / target, key_loc)
                    continue
                self.marks[(*at, key)] = key_loc
                out[key] = self._convert(value_node, file, (*at, key), stack, loader)
            if include is None:
                return out
            overrides = self._marks_below(at, out)
            base = self.read(include[0], at, stack, include[1])
            if not out:
                return base
            # The including file's keys win over the included file's, and so do their locations.
            for path in self._marks_below(at, out):
                del self.marks[path]
            self.marks.update(overrides)
            if not isinstance(base, dict):
                raise SpecError(
                    [SpecProblem(include[1], format_path(at), "an include with extra keys must name a mapping")]
                )
            return {**base, **out}
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, file, (*at, i), stack, loader) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    def _marks_below(self, at: PathT, keys: dict[Any, Any]) -> dict[PathT, Location]:
        """Locations recorded under ``at`` for any of ``keys`` (and everything below them)."""
        return {p: loc for p, loc in self.marks.items() if len(p) > len(at) and p[: len(at)] == at and p[len(at)] in keys}


def _nearest_location(marks: dict[PathT, Location], data: Any, loc: tuple[Any, ...]) -> tuple[PathT, Location | None]:
    """Follow a pydantic error location through the data; return the data path and its source."""
    path: PathT = ()
    current = data
    for part in loc:
        if isinstance(current, dict):
            if part in current:
                path, current = (*path, part), current[part]
            elif part not in (current.get("family"), current.get("dist"), current.get("space", "ciao"), "fixed"):
                # Not a union tag: a missing or unknown key, reported at its parent's location.
                path, current = (*path, part), None
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path, current = (*path, part), current[part]
    for cut in range(len(path), -1, -1):
        if path[:cut] in marks:
            return path, marks[path[:cut]]
    return path, None


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "missing":
        return f"missing required field '{err['loc'][-1]}'"
    if kind == "extra_forbidden":
        return f"unknown key '{err['loc'][-1]}'"
    if kind == "union_tag_not_found":
        return f"missing the '{err['ctx']['discriminator'].strip(chr(39))}:' tag that says what this entry is"
    if kind == "invalid_distribution" and isinstance(err.get("input"), dict) and "dist" in err["input"]:
        return f"unknown dist '{err['input']['dist']}'; {err['msg']}"
    msg = err["msg"]
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg


def _read_spec(file: Path) -> tuple[_Reader, Any]:
    """Read a spec and its includes, ``tasks: path.yaml`` included."""
    reader = _Reader()
    data = reader.read(file, (), (), None)
    if isinstance(data, dict) and isinstance(data.get("tasks"), str):
        at = ("tasks",)
        data["tasks"] = reader.read(file.parent / data["tasks"], at, (file.resolve(),), reader.marks.get(at))
    return reader, data


def spec_files(path: str | os.PathLike[str]) -> list[Path]:
    """The spec file and every file it includes (for archiving a run's exact inputs)."""
    return _read_spec(Path(path))[0].files


def load_spec(path: str | os.PathLike[str]) -> ExperimentSpec:
    """Load and validate an experiment spec from a YAML file.

    A file holding only a task distribution (top-level ``families:``) or a single family entry
    (top-level ``family:``) loads as an experiment named after the file, with default settings.
    """
    file = Path(path)
    reader, data = _read_spec(file)
    top = Location(_display(file.resolve()), 1, 1)
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(top, "", "the top level must be a mapping (key: value lines)")])
    marks = reader.marks
    if "tasks" not in data and ("families" in data or "family" in data):
        # A bare task distribution, or a single family: wrap it into an experiment with defaults.
        prefix: PathT = ("tasks",) if "families" in data else ("tasks", "families", 0)
        data = {"name": file.stem, "tasks": data if "families" in data else {"families": [data]}}
        marks = {(*prefix, *k): v for k, v in marks.items()} | {(): top}
    if isinstance(data.get("data_dir"), str):
        data["data_dir"] = str((file.parent / os.path.expanduser(data["data_dir"])).resolve())
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            # A validator may point below the field it validates (see ERROR_PATH).
            loc = (*err["loc"], *err.get("ctx", {}).get(ERROR_PATH, ()))
            p, where = _nearest_location(marks, data, loc)
            problems.append(SpecProblem(where, format_path(p), _message(err)))
        raise SpecError(problems) from None
