"""Track B's results as the run folder holds them: paper B's per-class tables and the comparison of
Direct, the majority class and the SFT baseline (read by notebook 03 without loading a model)."""
from __future__ import annotations

import pandas as pd

from kit import runs
from kit.eval.figures import per_class_table
from kit.labels import ACTIONS, REASONS

STAGE = "sft_baseline"


def per_class_tables(run_dir, stage: str = STAGE, key: str = "eval"):
    """Paper B's Tables 2 and 3 (per-class test distribution and F1) from metrics.json."""
    m = runs.require_metrics(run_dir, stage, "the per-class tables")[key]
    return per_class_table(m["action"], ACTIONS), per_class_table(m["reason"], REASONS)


def comparison_table(run_dir):
    """Direct vs majority class vs SFT baseline, one row each (pandas)."""
    m = runs.require_metrics(run_dir, STAGE, "the comparison table")
    return pd.DataFrame(m["comparison"]).set_index("model").round(4)
