"""The library's import boundaries: what a user's ``import`` pulls in, and what the library never imports."""

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
    assert not {m for m in loaded if m == "lhopt_dsl.compile" or m.startswith("lhopt_dsl.compile.")}
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
