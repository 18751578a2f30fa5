"""Stage 1's results as the run folder holds them."""
from __future__ import annotations

from pathlib import Path

from kit import runs


def work_dir(run_dir) -> Path:
    """The folder of this run's stage-1 training (reward_log.jsonl, samples.jsonl, variance.json, final/):
    the one metrics.json's `rloo.work_dir` names, else run_dir/rloo."""
    rd = runs.resolve_run_dir(run_dir)
    w = (runs.read_metrics(rd).get("rloo") or {}).get("work_dir")
    return Path(w) if w else rd / "rloo"
