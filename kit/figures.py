"""`kit figures RUN_DIR`: redraw every stage's figures from the run directory alone.

Each area owns a `figures_from_run(run_dir)` that reads only files (metrics.json, predictions.jsonl,
training histories); this module just calls those whose stage exists in the run.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from kit import runs

# (stage folder, module with figures_from_run(run_dir)), in notebook order
FIGURE_MODULES = [
    ("prepare", "kit.data.figures"),
    ("prepare", "kit.stages.prepare_vlm"),
    ("synthesis", "kit.synth.figures"),
    ("clip_finetune", "kit.reward.figures"),
    ("sft_baseline", "kit.eval.figures"),
    ("spin", "kit.coda.spin"),
    ("rloo", "kit.rl.figures"),
    ("evaluate", "kit.report"),
    ("evaluate", "kit.coda.figures"),
]


def figures_from_run(run_dir: str | os.PathLike) -> list[Path]:
    rd = runs.resolve_run_dir(run_dir)
    if not (rd / "metrics.json").exists():
        raise FileNotFoundError(f"{rd}: no metrics.json here; is this a run directory (runs/NAME)?")
    paths: list[Path] = []
    for stage, module in FIGURE_MODULES:
        if (rd / stage).is_dir():
            paths += list(importlib.import_module(module).figures_from_run(rd))
    return paths
