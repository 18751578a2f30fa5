"""Track A's results as the run folder holds them: every evaluated model's CODA-LM scores, and the
tables notebooks 03 and 07 show of them (this run beside paper A)."""
from __future__ import annotations

import pandas as pd

from kit import runs
from kit.coda.paper import PAPER_A_TABLE1
from kit.data.coda_vqa import TASKS


def evaluated_models(run_dir) -> dict[str, dict]:
    """{model name: its metrics `coda_lm` entry} for every Track A model of the run, in stage order."""
    out = {}
    for stage, m in runs.read_metrics(run_dir).items():
        entry = m.get("coda_lm") if isinstance(m, dict) else None
        if entry and entry.get("scores") and entry.get("name"):
            out[entry["name"]] = {**entry, "stage": stage}
    return out


def scores_table(run_dir):
    """One row per model: the three task scores and the overall, on 0-100, with coverage (pandas)."""
    rows = []
    for name, e in evaluated_models(run_dir).items():
        s = e["scores"]
        rows.append({"model": name, **{t: s[t]["score_100"] for t in TASKS}, "overall": s["overall_100"],
                     "coverage": s["coverage"]})
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def synthetic_gain_table(run_dir):
    """What the synthetic data adds, this run beside paper A: SFT + synthetic minus SFT on this run's
    judge (overall and per task), and paper A's gain from its 200k synthetic set (Table 1, Ours w/ 200k
    minus Ours w/ 30k) per base model (pandas)."""

    models = evaluated_models(run_dir)
    rows = []
    if "sft" in models and "sft+synth" in models:
        a, b = models["sft"]["scores"], models["sft+synth"]["scores"]
        rows.append({"source": "this run: sft+synth - sft", "overall": b["overall_100"] - a["overall_100"],
                     **{t: b[t]["score_100"] - a[t]["score_100"] for t in TASKS}})
    for base, t in PAPER_A_TABLE1.items():
        rows.append({"source": f"paper A, {base}: w/ 200k - w/ 30k", "overall": t["Ours w/ 200k"] - t["Ours w/ 30k"]})
    return pd.DataFrame(rows).set_index("source")
