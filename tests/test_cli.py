"""The `lhopt` command line, end to end, and the generated docs staying in sync."""

import json
import subprocess
import sys

import pytest
import yaml

from lhopt_dsl import SpecError, TaskConfig
from lhopt_dsl.spec.docgen import generate
from runners.cli import main

from .conftest import ROOT, SPECS


def test_space_prints_per_family_counts_and_total(capsys):
    assert main(["space", str(SPECS / "default.yaml")]) == 0
    out = capsys.readouterr().out
    for fam in ("mlp", "cnn", "rnn", "text_rnn", "transformer", "nqm"):
        assert f"] {fam} (" in out
    total_line = next(line for line in out.splitlines() if line.startswith("total"))
    total = int(total_line.split()[1].replace(",", ""))
    assert total >= 5 * 10**10


def test_sample_prints_yaml_documents_that_load_back(capsys):
    assert main(["sample", str(SPECS / "default.yaml"), "--seed", "4", "--count", "3"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["seed"] for d in docs] == [4, 5, 6]
    for d in docs:
        TaskConfig.model_validate(d)


def test_sample_json_lines(capsys):
    assert main(["sample", str(SPECS / "smoke.yaml"), "--count", "2", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(len(r["task_id"]) == 16 for r in rows)


def test_validate_reports_bad_files_and_fails(write, capsys):
    bad = write("bad.yaml", "name: x\ntasks:\n  families:\n    - family: nqm\n      dim: -3\n")
    assert main(["validate", str(SPECS / "smoke.yaml"), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "ok   " in captured.out
    assert "bad.yaml:5:7: tasks.families[0].dim" in captured.err


def test_space_on_invalid_spec_exits_2_with_message(write, capsys):
    bad = write("bad.yaml", "name: x\ntasks: missing.yaml\n")
    assert main(["space", str(bad)]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_schema_is_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "ExperimentSpec" and "tasks" in schema["properties"]


def test_docs_are_in_sync_with_the_models():
    assert (ROOT / "docs" / "dsl.md").read_text() == generate(), "run `make docs` to regenerate docs/dsl.md"


def test_every_spec_field_is_documented():
    text = generate()
    from lhopt_dsl.spec.docgen import SECTIONS

    for _, models in SECTIONS:
        for cls in models:
            for name, info in cls.model_fields.items():
                if name not in ("family", "dist"):
                    assert info.description, f"{cls.__name__}.{name} has no description"
                    assert f"`{name}`" in text


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "runners.cli", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    for cmd in ("validate", "space", "sample", "schema", "docs"):
        assert cmd in out


def test_readme_example_spec_is_valid(tmp_path):
    from lhopt_dsl import load_spec, sample

    text = (ROOT / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "task_specs").symlink_to(SPECS)
    path = tmp_path / "example.yaml"
    path.write_text(block)
    # The link leads out of the example's directory: its target must be named to be included.
    with pytest.raises(SpecError, match="symbolic link to a file outside"):
        load_spec(path, include_dirs=[])
    spec = load_spec(path, include_dirs=[SPECS])
    assert spec.hparams.lr.init == 3e-4 and spec.hparams.lr.action.type == "scale"
    assert [f.family for f in spec.tasks.families] == ["mlp", "nqm"]
    sample(spec, 0)
