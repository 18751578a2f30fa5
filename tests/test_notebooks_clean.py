"""Committed notebooks carry no outputs, and each has a literal-only `parameters` cell.

In a git clone the check reads what a commit would hold (the index): a student's outputs saved into
the working copy are theirs, and the nbstripout filter (`make` sets it up) keeps them out of commits."""
import ast
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


IN_GIT = _git("rev-parse", "--git-dir").returncode == 0


def committed_text(nb: Path) -> str:
    """The notebook as staged (git's index) in a clone with the notebook tracked, else the file."""
    if IN_GIT:
        staged = _git("show", f":{nb.relative_to(ROOT).as_posix()}")
        if staged.returncode == 0:
            return staged.stdout
    return nb.read_text()


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NB_DIR}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs(nb):
    cells = json.loads(committed_text(nb))["cells"]
    dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{nb.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_literals(nb):
    cells = json.loads(nb.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: expected one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{nb.name}: parameters cell may only assign literals"
        ast.literal_eval(node.value)  # raises on anything but a literal
        names |= {t.id for t in node.targets}
    assert {"profile", "run_dir", "overrides"} <= names


@pytest.mark.skipif(not IN_GIT, reason="not a git clone")
def test_the_output_filter_is_set_up():
    """`make` configured the filter that .gitattributes names for notebooks (a staged notebook loses
    its outputs), and it keeps the cell ids."""
    attr = _git("check-attr", "filter", "notebooks/00_prepare.ipynb").stdout
    assert attr.strip().endswith("nbstripout"), f".gitattributes: notebooks not filtered ({attr.strip()!r})"
    clean = _git("config", "--get", "filter.nbstripout.clean").stdout
    assert "nbstripout" in clean and "--keep-id" in clean, (
        f"git config filter.nbstripout.clean is {clean.strip()!r}; run `make venv` to set it up")
