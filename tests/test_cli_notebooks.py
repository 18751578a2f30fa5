"""`kit notebooks copy` (a student's own copies of the notebooks, pointed at their own run folder) and the
CLI's help: every argument of every command says what it is."""
from __future__ import annotations

import argparse
import ast
import io
import json
import re
import tokenize
from contextlib import redirect_stderr, redirect_stdout

import pytest

from kit import runner
from kit.cli import build_parser, main
from kit.params import PROJECT_ROOT

NOTEBOOKS = runner.list_notebooks()


def kit(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def load(path) -> dict:
    return json.loads(path.read_text())


def params_cell(doc: dict) -> tuple[int, dict]:
    tagged = [(i, c) for i, c in enumerate(doc["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    return tagged[0]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def literals(cell: dict) -> dict:
    """The parameters cell's assignments; asserts the cell holds nothing else (papermill's contract)."""
    out = {}
    for node in ast.parse(source(cell)).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            ast.dump(node)
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def comments(cell: dict) -> list[str]:
    toks = tokenize.generate_tokens(io.StringIO(source(cell)).readline)
    return [t.string for t in toks if t.type == tokenize.COMMENT]


def test_copy_sets_run_dir_and_keeps_everything_else(tmp_path):
    dest = tmp_path / "copies"
    rc, out, err = kit("notebooks", "copy", "runs/mine", "--to", str(dest))
    assert rc == 0, err
    assert sorted(p.name for p in dest.iterdir()) == [nb.name for nb in NOTEBOOKS] and len(NOTEBOOKS) == 8
    assert out.count("wrote ") == 8 and "jupyter lab" in out and str(dest.name) in out
    for nb in NOTEBOOKS:
        orig, copy = load(nb), load(dest / nb.name)
        i, cell = params_cell(copy)
        j, orig_cell = params_cell(orig)
        assert i == j
        lits, orig_lits = literals(cell), literals(orig_cell)
        assert lits["run_dir"] == "runs/mine"
        assert {k: v for k, v in lits.items() if k != "run_dir"} == {k: v for k, v in orig_lits.items() if k != "run_dir"}
        assert comments(cell) == comments(orig_cell)  # the comments stay
        # the parameters cell's id, tags and metadata; every other cell, and the notebook's metadata: unchanged
        assert {k: v for k, v in cell.items() if k != "source"} == {k: v for k, v in orig_cell.items() if k != "source"}
        assert copy["cells"][:i] + copy["cells"][i + 1:] == orig["cells"][:i] + orig["cells"][i + 1:]
        assert {k: v for k, v in copy.items() if k != "cells"} == {k: v for k, v in orig.items() if k != "cells"}
        # only the run_dir line differs, byte for byte
        changed = [(a, b) for a, b in zip(nb.read_text().splitlines(), (dest / nb.name).read_text().splitlines())
                   if a != b]
        assert len(changed) == 1 and "run_dir = " in changed[0][1]


def test_profile_is_set_when_given(tmp_path):
    rc, _, err = kit("notebooks", "copy", "/somewhere/else/run", "--to", str(tmp_path), "--profile", "smolvlm")
    assert rc == 0, err
    for nb in NOTEBOOKS:
        lits = literals(params_cell(load(tmp_path / nb.name))[1])
        assert lits["run_dir"] == "/somewhere/else/run" and lits["profile"] == "smolvlm"
    # a profile that is not there stops before anything is written, as every command says it
    rc, _, err = kit("notebooks", "copy", "runs/x", "--to", str(tmp_path / "other"), "--profile", "nope")
    assert rc == 2 and "profile 'nope' not found" in err and not (tmp_path / "other").exists()


def test_a_students_copy_is_never_overwritten_without_force(tmp_path):
    assert kit("notebooks", "copy", "runs/mine", "--to", str(tmp_path))[0] == 0
    mine = tmp_path / NOTEBOOKS[3].name
    doc = load(mine)
    doc["cells"].append({"cell_type": "markdown", "id": "mynotes1", "metadata": {}, "source": ["my notes"]})
    mine.write_text(json.dumps(doc, indent=1))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    rc, out, err = kit("notebooks", "copy", "runs/other", "--to", str(tmp_path))
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--force" in err and NOTEBOOKS[0].name in err
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # nothing written, none of the 8

    # one copy there is enough to refuse: the error names it
    for p in tmp_path.iterdir():
        if p != mine:
            p.unlink()
    rc, _, err = kit("notebooks", "copy", "runs/other", "--to", str(tmp_path))
    assert rc == 1 and str(mine) in err and len(list(tmp_path.iterdir())) == 1

    rc, _, err = kit("notebooks", "copy", "runs/other", "--to", str(tmp_path), "--force")
    assert rc == 0, err
    assert "my notes" not in mine.read_text()
    assert literals(params_cell(load(mine))[1])["run_dir"] == "runs/other"


def test_default_folder_is_named_after_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "COPIES_DIR", tmp_path / "my-notebooks")
    rc, out, _ = kit("notebooks", "copy", "runs/mine/")
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "my-notebooks" / "mine").iterdir()) == [nb.name for nb in NOTEBOOKS]
    assert re.search(r"jupyter lab \S*my-notebooks/mine$", out.strip().splitlines()[-1])


def test_the_default_folder_is_ignored_by_git():
    assert "my-notebooks/" in (PROJECT_ROOT / ".gitignore").read_text().split()


def test_the_kits_own_notebooks_are_never_the_destination():
    rc, _, err = kit("notebooks", "copy", "runs/mine", "--to", "notebooks", "--force")
    assert rc == 1 and "the kit's own notebooks" in err


def test_a_run_made_with_other_settings_is_named(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "manifest.json").write_text(json.dumps({"profile": "tiny", "overrides": {"seed": 1}}))
    rc, _, err = kit("notebooks", "copy", str(rd), "--to", str(tmp_path / "nb"))
    assert rc == 0 and "note:" in err and '{"seed": 1}' in err
    (rd / "manifest.json").write_text(json.dumps({"profile": "tiny", "overrides": {}}))
    rc, _, err = kit("notebooks", "copy", str(rd), "--to", str(tmp_path / "nb"), "--force")
    assert rc == 0 and err == ""


@pytest.mark.parametrize("line, expected", [
    ('run_dir = "runs/tiny"   # a comment', 'run_dir = "runs/a-much-longer-name"  # a comment'),
    ('run_dir = "runs/tiny"   # a comment', 'run_dir = "r"' + " " * 11 + "# a comment"),  # the comment's column
    ("run_dir='runs/tiny'", 'run_dir="x \\"quoted\\" #"'),
])
def test_set_parameters_rewrites_the_literal_only(line, expected):
    value = ast.literal_eval(expected.split("=", 1)[1].split("  #")[0].strip())
    assert runner.set_parameters(line + "\nseed = 3  # kept\n", {"run_dir": value}) == expected + "\nseed = 3  # kept\n"


def _walk(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name)  # the line `kit --help` lists it with
                yield from _walk(sub, f"{path} {name}")


def test_every_argument_has_help():
    seen = list(_walk(build_parser(), "kit"))
    assert len(seen) > 60
    missing = [where for where, text in seen if not (text == argparse.SUPPRESS or (text or "").strip())]
    assert not missing, f"no help text: {missing}"
    assert "kit notebooks copy" in {w for w, _ in seen}


def test_params_show_points_at_params_explain(capsys):
    with pytest.raises(SystemExit):
        main(["params", "show", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "`kit params explain KEY` gives base.yaml's comment for a key" in text


def test_a_stage_run_before_what_it_reads_says_so_in_one_line(tmp_path):
    """`kit stage rloo` in a folder where notebook 02 never ran: a user's ordering mistake, told in one
    line naming the file, what is missing and what to run first; exit status 1, no traceback."""
    rc, _, err = kit("stage", "rloo", "--run-dir", str(tmp_path / "run"))
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kit stage rloo: ") and "metrics.json" in lines[0] and "notebook 02" in lines[0]
