"""The runnable examples in kit's docstrings (`>>>`, as TRL's docstrings have them) are checked: every
module of kit that holds one is run through doctest, so an example a student copies still works."""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "kit"
WITH_EXAMPLES = sorted(".".join(p.relative_to(KIT.parent).with_suffix("").parts)
                       for p in KIT.rglob("*.py") if ">>> " in p.read_text())


def test_the_student_facing_entry_points_have_examples():
    # the stage table, paper B's Eq. 1, the answer format and its parser, the Elo update
    assert {"kit.pipeline", "kit.rl.advantages", "kit.labels", "kit.eval.parse", "kit.judge.elo"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("module", WITH_EXAMPLES)
def test_docstring_examples_run(module):
    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0, f"{module}: {res.failed} of {res.attempted} examples failed"
