"""Stage 1's results as the run folder holds them: where its training is, and its reward log per epoch
(read by the stage, its figures and notebook 05 without loading the trainer)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from kit import runs


def work_dir(run_dir) -> Path:
    """The folder of this run's stage-1 training (reward_log.jsonl, samples.jsonl, variance.json, final/):
    the one metrics.json's `rloo.work_dir` names, else run_dir/rloo."""
    rd = runs.resolve_run_dir(run_dir)
    w = (runs.read_metrics(rd).get("rloo") or {}).get("work_dir")
    return Path(w) if w else rd / "rloo"


def per_epoch(reward_log: Sequence[Mapping]) -> list[dict]:
    """Per epoch: mean reward, mean best-of-k reward (paper B's Fig. 6), their spread, steps."""
    out: dict[int, dict] = {}
    for r in reward_log:
        e = out.setdefault(int(r["epoch"]), {"epoch": int(r["epoch"]), "_r": [], "_b": [], "_z": []})
        e["_r"].append(r["mean_reward"])
        e["_b"].append(r["best_of_k"])
        e["_z"].append(r.get("frac_zero_std", 0.0))
    rows = []
    for ep in sorted(out):
        e = out[ep]
        n = len(e["_r"])
        mean = sum(e["_r"]) / n
        rows.append({"epoch": ep, "mean_reward": mean, "best_of_k": sum(e["_b"]) / n,
                     "reward_sem": (sum((x - mean) ** 2 for x in e["_r"]) / max(n - 1, 1)) ** 0.5 / n ** 0.5,
                     "frac_zero_std": sum(e["_z"]) / n, "steps": n})
    return rows
