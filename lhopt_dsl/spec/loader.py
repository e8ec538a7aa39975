"""Loading specs from YAML with errors that name file, line, column and field path.

``load_spec(path)`` reads an experiment spec (or a bare task distribution, a file whose top level
has ``families:``), resolves includes, and validates it. Includes:

* ``{include: relative/path.yaml, key: value...}`` anywhere: replaced by that file's content, with
  the other keys of the mapping laid over it (so one family file can be reused with another
  ``weight``);
* ``tasks: relative/path.yaml`` in an experiment: shorthand for ``tasks: {include: ...}``.

Paths are relative to the including file. An include must name a ``.yaml`` or ``.yml`` file
under the directory of the spec being loaded, or under a directory the user names explicitly
(``include_dirs=``, else the ``LHOPT_SPEC_PATH`` environment variable, a list of directories
separated like ``PATH``; ``lhopt --include-dir DIR`` adds to it). The rule is checked on the path
with every symbolic link followed, and before the file is opened: a file outside it is never read,
so nothing of it can reach a message. Cycles, missing files, loops of links and every other
filesystem error are errors located at the include. Every YAML, include or validation problem
becomes a :class:`SpecError` listing each problem as ``file:line:col: dotted.path: message``.

Specs are shared and run unattended, so reading one is bounded: files over ``MAX_YAML_BYTES``,
alias bombs (a few KB of nested ``*alias``es that expand to billions of values) and nesting
deeper than ``MAX_YAML_DEPTH`` are errors, and messages never quote more than a few dozen
characters of a value (a value may come from any file of the spec's tree). YAML 1.1's base-60 numbers are read as
strings: ``190:20:30`` is not the integer 685,230.
:func:`load_yaml` and :func:`parse_yaml` read other YAML inputs (task configs, schedules) the
same way.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .experiment import ERROR_PATH, ExperimentSpec

PathT = tuple[Any, ...]

#: Largest YAML file read (the shipped specs are about 2 KB); also stops ``include: /dev/zero``.
MAX_YAML_BYTES = 1 << 20
#: Most values a load may produce, each alias and include counted every time it is used (the
#: shipped default.yaml makes about 1,000): nine levels of nine aliases in 1 KB would make 9**9.
MAX_YAML_NODES = 100_000
#: Deepest nesting of mappings and lists (specs use fewer than 10 levels); also ends recursive aliases.
MAX_YAML_DEPTH = 64
#: Most values a *spec* may produce, counted as MAX_YAML_NODES is: 20 times the shipped default.yaml
#: and room for 16 entries of one family with long choices. PyYAML reads about 20,000 values a
#: second on a slow core, so this bounds reading any spec, not only its alias bombs; the file
#: is refused as soon as its parser passes the limit, not after reading it all.
MAX_SPEC_VALUES = 20_000
#: Environment variable listing directories (separated by os.pathsep) whose YAML files specs may include.
SPEC_PATH_ENV = "LHOPT_SPEC_PATH"
#: What an included file's name must end with.
INCLUDE_SUFFIXES = (".yaml", ".yml")
_MAX_ECHO = 60  # longest value quoted whole in a message; longer ones are shortened
_MAX_MESSAGE = 600  # longest message; a validator may quote a whole list of values


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

    def __post_init__(self) -> None:
        # Messages quote values, and an include may name any file: never echo much of one.
        object.__setattr__(self, "path", _clip(self.path, 200))
        object.__setattr__(self, "message", _clip(self.message, _MAX_MESSAGE))

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
    """Safe YAML loader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), and
    refuses nesting deeper than ``MAX_YAML_DEPTH`` as it scans: PyYAML's scanner is quadratic in
    the depth and its composer recursive, so 2 KB of ``[[[[...`` would take seconds and then
    overflow the stack. ``limit`` caps the values composed (aliases included), so a file with too
    many is refused without reading the rest."""

    def __init__(self, text: str, name: str = "<string>", limit: int = MAX_YAML_NODES) -> None:
        super().__init__(text)
        self.name, self.limit, self.composed = name, limit, 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # PyYAML's signature
        self.composed += 1
        if self.composed > self.limit:
            where = _loc(self.name, self.peek_event().start_mark)
            problem = f"{self.name} holds more than {self.limit:,} values; no spec or task needs that many: "
            problem += "shorten its lists"
            raise SpecError([SpecProblem(where, "", problem)])
        return super().compose_node(parent, index)  # type: ignore[no-any-return]

    def _too_deep(self) -> None:
        problem = f"nested more than {MAX_YAML_DEPTH} levels deep"
        raise yaml.scanner.ScannerError(None, None, problem, self.get_mark())

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # PyYAML's argument name
        if self.flow_level >= MAX_YAML_DEPTH:
            self._too_deep()
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_YAML_DEPTH:
            self._too_deep()
        return super().add_indent(column)  # type: ignore[misc]


# PyYAML's YAML 1.1 resolvers for plain numbers, with two changes: ``1e-3`` is a float (YAML 1.1
# wants ``1.0e-3``), and base-60 numbers are not numbers: ``190:20:30`` would be the integer
# 685230 and ``1:30.5`` the float 90.5, which no one writing a spec means. They stay strings, and a
# numeric field says so.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_NUMBERS = {"tag:yaml.org,2002:float": _FLOAT, "tag:yaml.org,2002:int": _INT}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, _NUMBERS.get(tag, regexp)) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def _loc(file: Path | str, mark: yaml.Mark) -> Location:
    return Location(_display(file) if isinstance(file, Path) else file, mark.line + 1, mark.column + 1)


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def _shorten(value: str) -> str:
    """A long value as quoted in messages: its start and its length, never all of it."""
    return value if len(value) <= _MAX_ECHO else f"{value[:24]}... ({len(value):,} characters)"


def _show(file: Path) -> str:
    """A file as named in messages (an include target is data, and may be anything)."""
    return _clip(_display(file), 200)


def format_path(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = _shorten(str(part))
            out += f".{part}" if out else part
    return out


_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as a line break


def _position(name: str, text: str, index: int) -> Location:
    """The location of character ``index`` of ``text``, counted as PyYAML counts its marks."""
    line, start = 1, 0
    for brk in _BREAK.finditer(text, 0, index):
        line, start = line + 1, brk.end()
    return Location(name, line, index - start + 1)


def _yaml_problem(e: BaseException, name: str, text: str, loader: yaml.SafeLoader | None) -> SpecProblem:
    """A PyYAML error (or the recursion error of a too deeply nested document) as a located problem."""
    if isinstance(e, yaml.reader.ReaderError):  # raised before parsing: it has a position, not a mark
        char = e.character if isinstance(e.character, int) else ord(e.character)
        return SpecProblem(
            _position(name, text, e.position),
            "",
            f"YAML error: non-printable character U+{char:04X} (a binary file? write control characters as "
            'escapes in a "double-quoted" string)',
        )
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = _loc(name, mark) if mark else Location(name, 1, 1)
        kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        return SpecProblem(where, "", _clip(f"{kind}: " + " ".join(x for x in (e.context, e.problem) if x), 300))
    if isinstance(e, RecursionError):
        where = _loc(name, loader.get_mark()) if loader is not None else Location(name, 1, 1)
        return SpecProblem(where, "", f"YAML error: nested too deeply (at most {MAX_YAML_DEPTH} levels)")
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return SpecProblem(Location(name, 1, 1), "", _clip(f"YAML error: {first}", 300))


def _limit_problem(where: Location, too_deep: bool, what: str = "", limit: int = MAX_YAML_NODES) -> SpecProblem:
    """The problem of a document (``what``, by default the file of ``where``) past a size limit."""
    if too_deep:
        problem = f"nested more than {MAX_YAML_DEPTH} levels deep (or a recursive alias, like &a [*a], nests forever)"
        return SpecProblem(where, "", problem)
    return SpecProblem(
        where,
        "",
        f"{what or where.file} expands to more than {limit:,} values: each alias (*name) and include "
        "repeats its content, so nested aliases multiply (an alias bomb?); no spec needs that many",
    )


def _check_size(root: yaml.Node, name: str, count: int = 0, limit: int = MAX_YAML_NODES) -> int:
    """Refuse a node graph that expands past ``limit`` values (``count`` of them already used by
    earlier documents) or ``MAX_YAML_DEPTH`` levels; return the values used.

    PyYAML resolves an alias to the very node of its anchor, so the graph stays small while every
    reader of the data (the converter below, pydantic, a sampler) walks each alias again. Walking
    it as they will, counting, costs at most ``MAX_YAML_NODES`` steps (a fraction of a second).
    """
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > limit or depth > MAX_YAML_DEPTH:
            raise SpecError([_limit_problem(_loc(name, node.start_mark), depth > MAX_YAML_DEPTH, "", limit)])
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
    return count


def _compose(
    text: str, name: str, documents: bool = False, limit: int = MAX_YAML_NODES
) -> tuple[list[yaml.Node], _Loader]:
    """The node graphs of ``text`` (every document if ``documents``, else the only one; none if
    empty), of at most ``limit`` values in all; any PyYAML error becomes a SpecError located in
    ``name``. The graphs are small however far their aliases expand: whoever walks them bounds the
    walk (:func:`_check_size`, ``_Reader``)."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text, name, limit)  # checks the whole text for non-printable characters first
        if documents:
            nodes = []
            while loader.check_node():
                nodes.append(loader.get_node())
        else:
            node = loader.get_single_node()
            nodes = [] if node is None else [node]
    except (yaml.YAMLError, RecursionError) as e:
        raise SpecError([_yaml_problem(e, name, text, loader)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return nodes, loader


def _construct(loader: _Loader, node: yaml.Node, name: Path | str) -> Any:
    """The data of ``node``; a value its tag cannot hold (``!!int abc``, a date ``2020-13-45``) is a SpecError."""
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as e:
        name = _display(name) if isinstance(name, Path) else name
        if isinstance(e, yaml.MarkedYAMLError):
            raise SpecError([_yaml_problem(e, name, "", loader)]) from None
        tag = node.tag.rsplit(":", 1)[-1] if node.tag.startswith("tag:yaml.org,2002:") else node.tag
        bad = _failing_scalar(node)
        raise SpecError([SpecProblem(_loc(name, bad.start_mark), "", f"YAML error: not a valid {_clip(tag, 60)}")])


def _failing_scalar(root: yaml.Node) -> yaml.Node:
    """The first scalar below ``root`` that cannot be constructed (where to point an error), else ``root``."""
    probe = _Loader("")
    stack = [root]
    while stack:  # the graph passed _check_size, so this ends soon
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            try:
                probe.construct_object(node)
            except Exception:  # noqa: BLE001 - any failure is the one being located
                return node
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(child for pair in reversed(node.value) for child in reversed(pair))
    return root


def _read_text(file: Path, origin: Location | None, at: str, what: str) -> str:
    """The text of ``file``: a regular UTF-8 file of at most ``MAX_YAML_BYTES``, else a SpecError
    that names it and says what is wrong, never quoting it."""
    problem: str | None = None
    raw = b""
    try:
        info = file.stat()
        if stat.S_ISDIR(info.st_mode):
            problem = f"{what} {_show(file)} is a directory, not a YAML file"
        elif not stat.S_ISREG(info.st_mode):  # a device or pipe may never end: /dev/zero, /dev/stdin
            problem = f"{what} {_show(file)} is not a regular file"
        elif info.st_size > MAX_YAML_BYTES:
            problem = f"{what} {_show(file)} is too large ({info.st_size:,} bytes; at most {MAX_YAML_BYTES:,})"
        else:
            with open(file, "rb") as f:
                raw = f.read(MAX_YAML_BYTES + 1)
            if len(raw) > MAX_YAML_BYTES:  # it grew since stat()
                problem = f"{what} {_show(file)} is too large (at most {MAX_YAML_BYTES:,} bytes)"
    except FileNotFoundError:
        problem = f"{what} not found: {_show(file)} (looked for {_clip(str(file), 200)})"
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL in the name
        problem = f"cannot read {_show(file)}: {getattr(e, 'strerror', None) or 'invalid file name'}"
    if problem is not None:
        raise SpecError([SpecProblem(origin, at, problem)])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start].decode("utf-8", "replace")
        bad = _position(_display(file), before, len(before))
        problem = f"{what} {_show(file)} is not UTF-8 text (a binary file?): byte 0x{raw[e.start]:02x} "
        problem += f"at line {bad.line}, column {bad.column} cannot be decoded"
        raise SpecError([SpecProblem(origin or bad, at, problem)]) from None


def include_dirs_from_env() -> list[Path]:
    """The directories of ``LHOPT_SPEC_PATH`` (separated by os.pathsep; empty entries ignored)."""
    return [Path(p) for p in os.environ.get(SPEC_PATH_ENV, "").split(os.pathsep) if p.strip()]


def _resolve_dirs(dirs: list[Path], spec: Path) -> tuple[Path, ...]:
    """``dirs`` with links followed; a directory that cannot be resolved is an error at the spec."""
    out = []
    for d in dirs:
        try:
            out.append(Path(os.path.expanduser(d)).resolve())
        except (OSError, ValueError, RuntimeError):  # a NUL in the name, a loop of links
            problem = f"include directory {_clip(str(d), 200)} (from include_dirs or {SPEC_PATH_ENV}) "
            problem += "is not a valid path"
            raise SpecError([SpecProblem(Location(_display(spec), 1, 1), "", problem)]) from None
    return tuple(out)


class _Reader:
    """Reads YAML files into plain data plus a map from data path to source location.

    ``include_dirs``: directories, besides the spec's own, whose YAML files may be included.
    """

    def __init__(self, include_dirs: list[Path] | None = None) -> None:
        self.include_dirs = include_dirs_from_env() if include_dirs is None else list(include_dirs)
        self.roots: tuple[Path, ...] = ()  # the spec's directory and the include directories, resolved
        self.marks: dict[PathT, Location] = {}
        # Each file is parsed once, however often it is included (an alias may repeat an include).
        self.parsed: dict[Path, tuple[yaml.Node | None, _Loader]] = {}
        self.names: dict[Path, str] = {}  # each file as messages name it (relpath is slow, and runs per value)
        self.values = 0  # values converted so far, in every file, each alias and include counted again

    @property
    def files(self) -> list[Path]:
        """Every file read, in the order first read."""
        return list(self.parsed)

    def read(self, file: Path, at: PathT, stack: tuple[Path, ...], origin: Location | None) -> Any:
        what = "included file" if stack else "spec file"
        named = file
        try:
            file = file.resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL in the name; a loop of links (RuntimeError before 3.13)
            problem = f"{what} {_show(named)}: invalid file name, or a loop of symbolic links"
            raise SpecError([SpecProblem(origin, format_path(at), problem)]) from None
        if not stack:
            self.roots = (file.parent, *_resolve_dirs(self.include_dirs, file))
        else:
            refused = self._refusal(named, file)
            if refused is not None:  # decided on names alone: the file is never opened
                raise SpecError([SpecProblem(origin, format_path(at), refused)])
        if file in stack:
            chain = " -> ".join(_display(p) for p in (*stack, file))
            raise SpecError([SpecProblem(origin, format_path(at), f"include cycle: {_clip(chain, 400)}")])
        if file not in self.parsed:
            text = _read_text(file, origin, format_path(at), what)
            self.names[file] = _display(file)
            nodes, loader = _compose(text, self.names[file], limit=MAX_SPEC_VALUES)
            # A bomb within one file is refused here, by a walk that only counts (a tenth of a
            # second); _convert counts again across every file, as includes multiply too.
            for node in nodes:
                _check_size(node, self.names[file], limit=MAX_SPEC_VALUES)
            self.parsed[file] = (nodes[0] if nodes else None, loader)
        node, loader = self.parsed[file]
        if node is None:
            raise SpecError([SpecProblem(Location(_display(file), 1, 1), "", "the file is empty")])
        if stack and isinstance(node, yaml.ScalarNode):  # /etc/passwd reads as one long string
            problem = f"{what} {_show(file)} is not a spec: it holds a single value, not key: value lines or a list"
            raise SpecError([SpecProblem(origin, format_path(at), problem)])
        return self._convert(node, file, at, (*stack, file), loader)

    def _refusal(self, named: Path, resolved: Path) -> str | None:
        """Why an include of ``named`` (``resolved`` once links are followed) is not allowed, or None.

        Only YAML files under the spec's directory or an include directory may be included, so a
        spec, however it was obtained, cannot make the loader read (and its messages quote) a
        file the user did not put in reach: ``/etc/shadow``, ``~/.aws/credentials``, a link to either.
        """
        if named.suffix.lower() not in INCLUDE_SUFFIXES or resolved.suffix.lower() not in INCLUDE_SUFFIXES:
            link = " (through a symbolic link)" if named.suffix.lower() in INCLUDE_SUFFIXES else ""
            return (
                f"included file {_show(named)} is not a .yaml or .yml file{link}: only YAML spec files may be "
                "included; rename it if it is one"
            )
        if any(resolved.is_relative_to(root) for root in self.roots):
            return None
        lexical = Path(os.path.normpath(named))
        through_link = any(lexical.is_relative_to(root) for root in self.roots)
        how = "is a symbolic link to a file outside" if through_link else "lies outside"
        where = _show(self.roots[0])
        more = f" and the include directories ({', '.join(_show(r) for r in self.roots[1:])})" if self.roots[1:] else ""
        return (
            f"included file {_show(named)} {how} the spec's directory {where}{more}: a spec may only include "
            f"files under them; if you trust the file's directory, add it to {SPEC_PATH_ENV} "
            "(or `lhopt --include-dir DIR`, or load_spec(..., include_dirs=[DIR]))"
        )

    def _convert(self, node: yaml.Node, file: Path, at: PathT, stack: tuple[Path, ...], loader: _Loader) -> Any:
        name = self.names[file]
        self.values += 1
        if self.values > MAX_SPEC_VALUES or len(at) >= MAX_YAML_DEPTH:  # includes can multiply, as aliases do
            where = _loc(name, node.start_mark)
            too_deep, spec = len(at) >= MAX_YAML_DEPTH, "the spec " + self.names[stack[0]]
            raise SpecError([_limit_problem(where, too_deep, spec, MAX_SPEC_VALUES)])
        if at not in self.marks:
            self.marks[at] = _loc(name, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            include: tuple[Path, Location] | None = None
            for key_node, value_node in node.value:
                key_loc = _loc(name, key_node.start_mark)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    problem = "YAML merge keys (<<) are not supported; use `include:` with keys to override"
                    raise SpecError([SpecProblem(key_loc, format_path(at), problem)])
                key = _construct(loader, key_node, name)
                if not isinstance(key, (str, int, float, bool)):
                    raise SpecError([SpecProblem(key_loc, format_path(at), "mapping keys must be plain scalars")])
                if key in out or (key == "include" and include):
                    problem = f"duplicate key '{_shorten(str(key))}'"
                    raise SpecError([SpecProblem(key_loc, format_path((*at, key)), problem)])
                if key == "include":
                    target = _construct(loader, value_node, name)
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
            if not isinstance(base, dict):
                raise SpecError(
                    [SpecProblem(include[1], format_path(at), "an include with extra keys must name a mapping")]
                )
            # The including file's keys win over the included file's, and so do their locations:
            # drop what the included file marked below the keys it loses, then restore ours.
            for path in self._marks_below(at, {k: base[k] for k in out if k in base}):
                self.marks.pop(path, None)
            self.marks.update(overrides)
            return {**base, **out}
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, file, (*at, i), stack, loader) for i, item in enumerate(node.value)]
        return _construct(loader, node, name)

    def _marks_below(self, at: PathT, data: dict[Any, Any]) -> dict[PathT, Location]:
        """Locations recorded for the values of ``data`` (and everything below them), which lies at ``at``.

        Marks are recorded only for paths into the data read, so walking ``data`` finds them all, in
        time proportional to ``data`` rather than to every mark of the spec (an include repeated by
        aliases would make that quadratic).
        """
        found: dict[PathT, Location] = {}
        stack: list[tuple[PathT, Any]] = [((*at, k), v) for k, v in data.items()]
        while stack:
            path, value = stack.pop()
            if path in self.marks:
                found[path] = self.marks[path]
            if isinstance(value, dict):
                stack.extend(((*path, k), v) for k, v in value.items())
            elif isinstance(value, list):
                stack.extend(((*path, i), v) for i, v in enumerate(value))
        return found


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


#: Allowed values a "not one of these" message lists before it says how many more there are.
LITERAL_SHOWN = 8


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "literal_error":  # a long vocabulary (the 88 datasets) would fill the message with every name
        options = [o for o in re.split(r",\s*|\s+or\s+", str((err.get("ctx") or {}).get("expected", ""))) if o]
        if len(options) > LITERAL_SHOWN:
            return (f"Input should be one of {len(options)} values: {', '.join(options[:LITERAL_SHOWN])}, ... "
                    "(every one is listed in docs/dsl.md and `lhopt schema`)")  # fmt: skip
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


def describe_error(err: dict[str, Any], data: Any) -> str:
    """One pydantic error of validating ``data`` as ``path: message``, as spec errors word it,
    with every long value of ``data`` it would quote shortened (a file's contents are never echoed)."""
    return f"{format_path(tuple(err['loc']))}: {_scrub(_message(err), _long_strings(data))}"


def _long_strings(data: Any) -> list[str]:
    """The keys and string values of ``data`` too long to quote whole, longest first."""
    found: set[str] = set()
    stack = [data]
    while stack:  # the data is bounded by MAX_YAML_NODES
        value = stack.pop()
        if isinstance(value, str) and len(value) > _MAX_ECHO:
            found.add(value)
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return sorted(found, key=len, reverse=True)


def _scrub(message: str, long: list[str]) -> str:
    """``message`` with every long value it quotes (validators quote values, pydantic quotes tags) shortened."""
    for value in long:
        for quoted in {value, repr(value)[1:-1]}:
            if quoted in message:
                message = message.replace(quoted, _shorten(value))
    return message


_MAX_PROBLEMS = 50  # more only hide the first ones (a broken list of thousands of entries)


def _read_spec(file: Path, include_dirs: list[Path] | None = None) -> tuple[_Reader, Any]:
    """Read a spec and its includes, ``tasks: path.yaml`` included."""
    reader = _Reader(include_dirs)
    data = reader.read(file, (), (), None)
    if isinstance(data, dict) and isinstance(data.get("tasks"), str):
        at = ("tasks",)
        top = reader.files[0]  # the spec file, links followed
        data["tasks"] = reader.read(top.parent / data["tasks"], at, (top,), reader.marks.get(at))
    return reader, data


def parse_yaml(text: str, name: str = "<string>", *, documents: bool = False) -> Any:
    """Plain data from YAML ``text`` read as specs are (``1e-3`` is a float), within the same limits.

    ``name`` says where the text comes from in messages. With ``documents`` the result is the list
    of every ``---``-separated document, else the only one (None for an empty text). Any problem,
    an alias bomb included, is a :class:`SpecError` located at ``name:line:col``.
    """
    nodes, loader = _compose(text, name, documents)
    count = 0
    for node in nodes:
        count = _check_size(node, name, count)
    data = [_construct(loader, node, name) for node in nodes]
    return data if documents else (data[0] if data else None)


def load_yaml(path: str | os.PathLike[str], *, documents: bool = False) -> Any:
    """:func:`parse_yaml` of a file (a sampled task, a schedule); a missing, binary or huge file is a SpecError too."""
    file = Path(path)
    return parse_yaml(_read_text(file, None, "", "YAML file"), _display(file), documents=documents)


def _dirs(include_dirs: list[str | os.PathLike[str]] | None) -> list[Path] | None:
    return None if include_dirs is None else [Path(d) for d in include_dirs]


def spec_files(path: str | os.PathLike[str], include_dirs: list[str | os.PathLike[str]] | None = None) -> list[Path]:
    """The spec file and every file it includes (for archiving a run's exact inputs)."""
    return _read_spec(Path(path), _dirs(include_dirs))[0].files


def load_spec(path: str | os.PathLike[str], include_dirs: list[str | os.PathLike[str]] | None = None) -> ExperimentSpec:
    """Load and validate an experiment spec from a YAML file.

    A file holding only a task distribution (top-level ``families:``) or a single family entry
    (top-level ``family:``) loads as an experiment named after the file, with default settings.
    ``include_dirs``: directories, besides the spec's own, whose ``.yaml``/``.yml`` files it may
    include; default: those of the ``LHOPT_SPEC_PATH`` environment variable.
    """
    file = Path(path)
    reader, data = _read_spec(file, _dirs(include_dirs))
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
        try:
            data["data_dir"] = str((file.parent / os.path.expanduser(data["data_dir"])).resolve())
        except (OSError, ValueError, RuntimeError):  # a NUL in the name, a loop of links
            raise SpecError([SpecProblem(marks.get(("data_dir",), top), "data_dir", "not a valid path")]) from None
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        problems = []
        errors = e.errors()
        long = _long_strings(data)
        for err in errors[:_MAX_PROBLEMS]:
            # A validator may point below the field it validates (see ERROR_PATH).
            loc = (*err["loc"], *err.get("ctx", {}).get(ERROR_PATH, ()))
            p, where = _nearest_location(marks, data, loc)
            problems.append(SpecProblem(where, format_path(p), _scrub(_message(err), long)))
        if len(errors) > _MAX_PROBLEMS:
            problems.append(SpecProblem(None, "", f"... and {len(errors) - _MAX_PROBLEMS:,} more problems"))
        raise SpecError(problems) from None
