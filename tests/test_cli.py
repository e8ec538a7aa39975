"""The `lhopt` command line, end to end, and the generated docs staying in sync."""

import argparse
import json
import re
import subprocess
import sys

import pytest
import yaml

from lhopt_dsl import SpecError, TaskConfig
from lhopt_dsl.spec.docgen import generate
from runners.cli import RENAMED, build_parser, main

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


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by the name they are listed under (an old name maps to the same parser)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if p.prog.split()[-1] == name}


def _every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's, at every depth (schedule export, baselines import, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [q for p in (_commands(parser).values() if subs else ()) for q in _every_parser(p)]


def test_help_fits_one_screen_and_lists_every_command_in_a_group(monkeypatch):
    """`lhopt --help` lists each command on a line of its group, one screen in all: a command added
    without a group, or a group that grows past the screen, fails here."""
    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    lines = parser.format_help().splitlines()
    assert len(lines) <= 35, "\n".join(lines)
    assert max(map(len, lines)) <= 80
    listed = [line.split()[0] for line in lines if re.match(r"  [a-z][a-z-]+ {2,}\S", line)]
    assert sorted(listed) == sorted(_commands(parser)), listed
    titles = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["author specs:", "make policies:", "judge policies:", "run infrastructure:", "options:"]
    assert not set(RENAMED) & set(listed) and "trial" in listed


def test_no_help_shows_an_old_spelling(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for parser in _every_parser(build_parser()):
        text = parser.format_help()
        assert not re.search(r"(?<![\w-])--(output|compile)\b", text), (parser.prog, text)
        assert not re.search(r"\blhopt (%s)\b" % "|".join(RENAMED), text), parser.prog


def test_every_output_option_is_dash_o_out(monkeypatch):
    for parser in _every_parser(build_parser()):
        for action in parser._actions:
            if {"-o", "--out", "--output"} & set(action.option_strings):
                assert action.option_strings in (["-o", "--out"], ["--output"]), (parser.prog, action.option_strings)


def test_old_spellings_still_run_and_name_the_new_one(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "missing.yaml")]) == 2  # the trial command, on a missing spec
    err = capsys.readouterr().err
    assert "`lhopt compile` is now `lhopt trial`" in err and "missing.yaml" in err
    assert main(["schema", "--output", str(tmp_path / "s.json")]) == 0
    assert "--output is now -o/--out" in capsys.readouterr().err
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "ExperimentSpec"
    parser = build_parser()
    for argv in (["train", "x.yaml", "--compile"], ["eval", "x.yaml", "--policy", "p.pt", "--compile"]):
        assert parser.parse_args(argv).torch_compile is True
        assert "--compile is now --torch-compile" in capsys.readouterr().err
    args = parser.parse_args(["eval", "x.yaml", "--policy", "p.pt", "--output", "d"])
    assert args.out == "d" and not args.torch_compile
    args = parser.parse_args(["best-of", "a", "b", "-o", "c"])
    assert args.out == "c" and parser.parse_args(["curves", "r"]).output == "curves.png"
    with pytest.raises(SystemExit):
        parser.parse_args(["ensemble", "a.pt", "b.pt", "-o", "x.pt", "--output", "y.pt"])  # one or the other
    with pytest.raises(SystemExit):
        parser.parse_args(["ensemble", "a.pt", "b.pt"])  # --out is still required
    assert "-o/--out" in capsys.readouterr().err


def test_baselines_actions_are_subcommands():
    parser = build_parser()
    args = parser.parse_args(["baselines", "export", "d", "--storage", "sqlite:///x.db"])
    assert (args.baselines_command, args.directory, args.storage) == ("export", "d", "sqlite:///x.db")
    assert parser.parse_args(["baselines", "import", "d"]).func.__name__ == "cmd_baselines_import"
    for argv in (["baselines"], ["baselines", "copy", "d"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_trial_builds_a_task_and_trains_it(capsys):
    assert main(["trial", str(SPECS / "smoke.yaml"), "--seed", "3", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "# task_id:" in out and "training 3 of" in out and "test loss" in out


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
