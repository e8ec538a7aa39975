"""The library's import boundaries: what a user's ``import`` pulls in, what the library never imports, and its layers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(statement: str) -> set[str]:
    """Modules loaded by a fresh interpreter after running ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_drop_in_imports_neither_gymnasium_nor_the_task_compiler():
    loaded = _modules_after("from lhopt_dsl import LHOPT, ScheduleReplay\nassert LHOPT.__module__ == 'lhopt_dsl.controller'")
    assert "lhopt_dsl.controller" in loaded  # the statement did import the drop-in
    assert "gymnasium" not in loaded
    assert not {m for m in loaded if m == "lhopt_dsl.tasks" or m.startswith("lhopt_dsl.tasks.")}
    assert not {m for m in loaded if m.split(".")[0] in ("mlflow", "optuna")}


def test_validating_a_spec_does_not_import_the_drop_in():
    loaded = _modules_after("import lhopt_dsl")
    assert "lhopt_dsl.controller" not in loaded and "gymnasium" not in loaded


def test_unknown_names_still_raise_attribute_error():
    import lhopt_dsl

    try:
        lhopt_dsl.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("lhopt_dsl.NoSuchThing resolved")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_nothing_in_the_library_imports_tracking_or_tuning():
    """Side effects (MLflow tracking, Optuna studies) belong to ``runners``; the library is pure computation."""
    files = sorted((ROOT / "lhopt_dsl").rglob("*.py"))
    assert len(files) > 20  # the scan saw the library
    offenders = {str(f.relative_to(ROOT)): r for f in files if (r := _imported_roots(f) & {"mlflow", "optuna"})}
    assert not offenders


# ---- layering ----------------------------------------------------------------------------------
# A *unit* is a subpackage of ``lhopt_dsl`` (``lhopt_dsl.agent``) or a module directly under it
# (``lhopt_dsl.controller``); ``lhopt_dsl`` itself is the unit of the package's public names.
# Units sit in layers, lowest first. A module may import its own unit and units of lower layers,
# never a unit of its own layer or one above it. Every import counts: at module level, inside a
# function, under ``if TYPE_CHECKING`` (a type named upwards is a dependency upwards all the same).

LAYERS: tuple[tuple[str, ...], ...] = (
    ("lhopt_dsl.spec",),  # the DSL: specs, distributions, sampling to TaskConfigs, schedule names
    ("lhopt_dsl.optim",),  # CIAO: the reference, foreach and batched steps, their statistics
    ("lhopt_dsl.tasks",),  # TaskConfigs built into torch tasks; fixed runs, populations, baselines
    ("lhopt_dsl.agent",),  # features, actions, reward, policies, guard, environment, rollouts, cloning
    ("lhopt_dsl.controller", "lhopt_dsl.evaluation"),  # the drop-in LHOPT; Table 1 metrics and rows
    ("lhopt_dsl",),  # the package's public names (``lhopt_dsl/__init__.py``)
)

#: The one sanctioned import against the layers, with why. Sampling under a spec's ``budget:``
#: needs each task's cost, and the cost of a CNN or a transformer is counted by building it on the
#: meta device, which only the task builder can do. ``Budget.admits`` imports the estimator when
#: called, so ``import lhopt_dsl`` and validating a spec never load torch; it cycles back to the
#: spec only through that call, never while modules are being imported.
DEFERRED: dict[tuple[str, str], str] = {
    ("lhopt_dsl.spec.experiment", "lhopt_dsl.tasks.compiler"): "budget checks build tasks on the meta device",
}


def _modules(root: Path, package: str = "lhopt_dsl") -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` under ``root``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _import_edges(root: Path, package: str = "lhopt_dsl") -> dict[str, dict[str, bool]]:
    """module -> {imported module or package of ``package`` (or ``runners``): whether at module level}.

    ``from a.b import c`` names the module ``a.b.c`` when there is one and ``a.b`` otherwise; a
    string given to ``importlib.import_module`` counts as an import too.
    """
    modules = _modules(root, package)
    edges: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if n is not f}  # fmt: skip
        out: dict[str, bool] = {}

        def add(target: str, node: ast.AST) -> None:
            if target.split(".")[0] in (package, "runners"):
                out[target] = out.get(target, False) or id(node) not in in_function

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node)
            elif isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source, node)
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                    add(node.args[0].value, node)
        edges[name] = out
    return edges


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _against_the_layers(edges: dict[str, dict[str, bool]]) -> list[str]:
    """Every import of a unit of the importer's own layer or above (other than its own unit)."""
    bad = []
    for module, targets in edges.items():
        for target in targets:
            if target.split(".")[0] != "lhopt_dsl" or (module, target) in DEFERRED:
                continue
            mine, theirs = _unit(module), _unit(target)
            if mine != theirs and _layer_of(theirs) >= _layer_of(mine):
                bad.append(f"{module} imports {target} ({theirs} is not below {mine})")
    return bad


def _cycles(edges: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Import cycles among the library's modules (Tarjan's strongly connected components).

    Importing ``a.b.c`` runs the packages ``a.b`` and ``a`` first, so an import also reaches the
    target's packages, except those the importer is inside (Python runs those before the importer).
    """
    graph: dict[str, set[str]] = {m: set() for m in edges}
    for module, targets in edges.items():
        mine = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        for target in targets:
            if (module, target) in DEFERRED or target.split(".")[0] != "lhopt_dsl":
                continue
            parts = target.split(".")
            graph[module] |= {p for i in range(1, len(parts) + 1) if (p := ".".join(parts[:i])) in edges} - mine
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_part_of_the_library_has_a_layer():
    units = {_unit(m) for m in _modules(ROOT)}
    assert {"lhopt_dsl.spec", "lhopt_dsl.tasks", "lhopt_dsl.agent", "lhopt_dsl.controller"} <= units
    assert units == {u for layer in LAYERS for u in layer}, "place a new subpackage or module in LAYERS"


def test_nothing_in_the_library_imports_a_layer_above_its_own():
    bad = _against_the_layers(_import_edges(ROOT))
    assert not bad, "\n".join(bad)


def test_the_library_has_no_import_cycles():
    cycles = _cycles(_import_edges(ROOT))
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_library_never_imports_runners():
    edges = _import_edges(ROOT)
    offenders = {m: sorted(t) for m, ts in edges.items() if (t := {x for x in ts if x.split(".")[0] == "runners"})}
    assert not offenders


def test_the_one_deferred_import_is_still_needed_and_still_deferred():
    """An entry of DEFERRED that no module makes any more must go; one made at import time is a cycle."""
    edges = _import_edges(ROOT)
    for importer, target in DEFERRED:
        assert target in edges[importer], f"{importer} no longer imports {target}: remove it from DEFERRED"
        assert not edges[importer][target], f"{importer} imports {target} at import time"


def test_the_layer_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The checks above can fail: a small library that breaks each rule once."""
    files = {
        "lhopt_dsl/__init__.py": "",
        "lhopt_dsl/spec/__init__.py": "",
        "lhopt_dsl/spec/a.py": "def f():\n    from ..agent.b import g  # upward, even inside a function\n",
        "lhopt_dsl/agent/__init__.py": "from .b import g\n",
        "lhopt_dsl/agent/b.py": "from . import c\ng = 1\n",
        "lhopt_dsl/agent/c.py": "from lhopt_dsl.agent.b import g\nimport runners.cli\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = _import_edges(tmp_path)
    assert _against_the_layers(edges) == [
        "lhopt_dsl.spec.a imports lhopt_dsl.agent.b (lhopt_dsl.agent is not below lhopt_dsl.spec)"
    ]
    assert _cycles(edges) == [["lhopt_dsl.agent.b", "lhopt_dsl.agent.c"]]
    assert edges["lhopt_dsl.agent.c"]["runners.cli"]
