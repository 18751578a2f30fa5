"""Track A's results as the run folder holds them: every evaluated model's CODA-LM scores."""
from __future__ import annotations

from kit import runs


def evaluated_models(run_dir) -> dict[str, dict]:
    """{model name: its metrics `coda_lm` entry} for every Track A model of the run, in stage order."""
    out = {}
    for stage, m in runs.read_metrics(run_dir).items():
        entry = m.get("coda_lm") if isinstance(m, dict) else None
        if entry and entry.get("scores") and entry.get("name"):
            out[entry["name"]] = {**entry, "stage": stage}
    return out
