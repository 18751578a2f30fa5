"""kit's architecture as pyproject.toml's import-linter contracts state it: the layers (the CLI on top,
then the runner, the notebooks' helper, the stages, the domain packages, training, models and data,
the stage keys, the run folder, and parameters at the bottom) and no circles inside a package."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path = ROOT) -> subprocess.CompletedProcess:
    # the config is the project's pyproject.toml; `kit` is imported from `root` (a copy, below)
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layers_and_no_circles_hold():
    r = lint()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_the_contract_catches_a_climb_and_a_circle(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "kit", copy / "kit", ignore=shutil.ignore_patterns("__pycache__"))
    # a domain package reaching up into a stage, and two judge modules importing each other
    with open(copy / "kit" / "rl" / "figures.py", "a") as f:
        f.write("\nfrom kit.stages import rloo  # noqa\n")
    with open(copy / "kit" / "judge" / "request.py", "a") as f:
        f.write("\nfrom kit.judge import base  # noqa\n")
    r = lint(copy)
    assert r.returncode != 0
    assert "kit.rl is not allowed to import kit.stages" in r.stdout
    assert "No cycles are allowed in kit.judge" in r.stdout
