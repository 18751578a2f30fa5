"""`kit figures RUN_DIR`: redraw every stage's figures from the run directory alone.

Each area owns a `figures_from_run(run_dir)` that reads only files (metrics.json, predictions.jsonl,
training histories); this module just calls those whose stage exists in the run.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Iterable

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


# stage folders in notebook order (where figures_in_run looks)
STAGE_ORDER = ["prepare", "synthesis", "clip_finetune", "direct", "sft_baseline", "spin", "rloo", "action_sft",
               "evaluate"]


def _run_dir(run_dir) -> Path:
    rd = runs.resolve_run_dir(run_dir)
    if not (rd / "metrics.json").exists():
        raise FileNotFoundError(f"{rd}: no metrics.json here; is this a run directory (runs/NAME)?")
    return rd


def figures_from_run(run_dir: str | os.PathLike, stages: Iterable[str] | None = None) -> list[Path]:
    """Redraw the figures of every stage in the run (or of `stages` only) from its files; returns their paths."""
    rd = _run_dir(run_dir)
    wanted = None if stages is None else set(stages)
    paths: list[Path] = []
    for stage, module in FIGURE_MODULES:
        if (rd / stage).is_dir() and (wanted is None or stage in wanted):
            paths += list(importlib.import_module(module).figures_from_run(rd))
    return paths


def figures_in_run(run_dir: str | os.PathLike) -> list[Path]:
    """Every figure the run directory holds (each stage's `*figures/*.png`), in notebook order, as drawn."""
    rd = _run_dir(run_dir)
    return [p for stage in STAGE_ORDER for p in sorted((rd / stage).glob("*figures/*.png"))]
