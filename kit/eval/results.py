"""Track B's results as the run folder holds them: paper B's per-class tables and the comparison of
Direct, the majority class and the SFT baseline (read by notebook 03 without loading a model)."""
from __future__ import annotations

import pandas as pd

from kit import runs
from kit.eval.figures import per_class_table
from kit.labels import ACTIONS, REASONS

STAGE = "sft_baseline"


# Paper B's Tables 2 and 3 (its SFT baseline on BDD-OIA's test split): per class, the share and count of
# test samples that carry it, and the F1 (%).
PAPER_B_TABLE2 = {"forward": (10.17, 41, 27.16), "stop": (84.12, 339, 89.24), "left": (2.98, 12, 14.29),
                  "right": (2.73, 11, 0.00)}
PAPER_B_TABLE3 = {
    "Follow traffic": (3.47, 14, 16.7), "Road is clear": (4.96, 20, 12.5), "Traffic light is green": (1.99, 8, 0.0),
    "Obstacle: car": (18.11, 73, 75.2), "Obstacle: person": (5.71, 23, 37.0), "Obstacle: rider": (1.49, 6, 0.0),
    "Obstacle: others": (0.00, 0, 0.0), "Traffic light is not green": (51.61, 208, 86.3),
    "Traffic sign": (6.45, 26, 52.2), "Front car turning left": (0.25, 1, 0.0), "On the left-turn lane": (1.99, 8, 0.0),
    "Traffic light allows to turn left": (0.50, 2, 0.0), "Front car turning right": (0.00, 0, 0.0),
    "On the right-turn lane": (0.25, 1, 0.0), "Traffic light allows to turn right": (0.00, 0, 0.0),
    "Obstacles on the left lane": (0.25, 1, 0.0), "No lane on the left": (1.74, 7, 0.0),
    "Solid line on the left": (0.50, 2, 0.0), "Obstacles on the right lane": (0.25, 1, 0.0),
    "No lane on the right": (0.50, 2, 0.0), "Solid line on the right": (0.00, 0, 0.0)}


def _with_paper(table, paper):
    table["paper B: test GT (%)"] = [paper[c][0] for c in table["class"]]
    table["paper B: F1 (%)"] = [paper[c][2] for c in table["class"]]
    return table


def per_class_tables(run_dir, stage: str = STAGE, key: str = "eval"):
    """Paper B's Tables 2 and 3 (per-class test distribution and F1) from metrics.json, with the paper's
    own test share and F1 of each class beside this run's."""
    m = runs.require_metrics(run_dir, stage, "the per-class tables")[key]
    return (_with_paper(per_class_table(m["action"], ACTIONS), PAPER_B_TABLE2),
            _with_paper(per_class_table(m["reason"], REASONS), PAPER_B_TABLE3))


def comparison_table(run_dir):
    """Direct vs majority class vs SFT baseline, one row each (pandas)."""
    m = runs.require_metrics(run_dir, STAGE, "the comparison table")
    return pd.DataFrame(m["comparison"]).set_index("model").round(4)
