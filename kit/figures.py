"""`kit figures RUN_DIR`: redraw every stage's figures from the run directory alone.

Each area owns a `figures_from_run(run_dir)` that reads only files (metrics.json, predictions.jsonl,
training histories); this module just calls those of the stages (kit.pipeline.STAGES, its `figures`)
whose folder exists in the run.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Iterable

from kit import pipeline, runs


def _run_dir(run_dir) -> Path:
    rd = runs.resolve_run_dir(run_dir)
    if not (rd / "metrics.json").exists():
        raise FileNotFoundError(f"{rd}: no metrics.json here; is this a run directory (runs/NAME)?")
    return rd


def figures_from_run(run_dir: str | os.PathLike, stages: Iterable[str] | None = None) -> list[Path]:
    """Redraw the figures of every stage in the run (or of the stage folders `stages` only) from its files;
    returns their paths."""
    rd = _run_dir(run_dir)
    wanted = None if stages is None else set(stages)
    present = [f for f in pipeline.folders() if (rd / f).is_dir() and (wanted is None or f in wanted)]
    paths: list[Path] = []
    for module in pipeline.figure_modules(present):
        paths += list(importlib.import_module(module).figures_from_run(rd))
    return paths


def figures_in_run(run_dir: str | os.PathLike) -> list[Path]:
    """Every figure the run directory holds (each stage's `*figures/*.png`), in notebook order, as drawn."""
    rd = _run_dir(run_dir)
    return [p for folder in pipeline.folders() for p in sorted((rd / folder).glob("*figures/*.png"))]
