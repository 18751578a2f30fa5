"""Committed notebooks carry no outputs, and each has a literal-only `parameters` cell."""
import ast
import json
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NB_DIR}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
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
