"""Notebook 07 (Track B part): one table of every method beside paper B's numbers, from the run
directory alone (no model is loaded, nothing is trained)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from kit import runs

# Paper B's reported numbers (its poster table and sections 6.2-6.4),
# as fractions. None where the paper reports nothing (N/A). The poster's "Action F1" for RFT+SFT
# (84.12%) is the action accuracy of section 6.4; we file it under accuracy.
PAPER_B = {
    "Direct": {"action_macro_f1": 0.0, "reason_macro_f1": 0.0, "clip_score": None},
    "SFT baseline": {"action_macro_f1": 0.8015, "reason_macro_f1": 0.6675,
                     "action_accuracy": 0.9007, "reason_accuracy": 0.9689},
    "RLOO (stage 1)": {"clip_score": 0.4188, "clip_match": 0.4243},
    "RLOO + action SFT": {"action_accuracy": 0.8412, "reason_macro_f1": 0.0,
                          "clip_score": 0.4258, "clip_match": 0.4367},
    # the poster table's first row: the ground-truth answers, scored by the reward CLIP
    "Ground truth": {"action_macro_f1": 1.0, "reason_macro_f1": 1.0, "clip_score": 0.9132},
}

# method name -> metrics.json key holding {"eval": {...}}
METHODS = {"Majority class": ("sft_baseline", "majority"), "Direct": ("direct", "eval"),
           "SFT baseline": ("sft_baseline", "eval"), "RLOO (stage 1)": ("rloo", "eval"),
           "RLOO + action SFT": ("action_sft", "eval")}
COLUMNS = ["action_macro_f1", "reason_macro_f1", "action_accuracy", "reason_accuracy",
           "action_f1_all", "reason_f1_all", "clip_score", "clip_match"]


def _flat(ev: Mapping) -> dict:
    row = {}
    for fam in ("action", "reason"):
        m = ev.get(fam) or {}
        row[f"{fam}_macro_f1"] = m.get("macro_f1")
        row[f"{fam}_accuracy"] = m.get("accuracy")
        row[f"{fam}_f1_all"] = m.get("f1_all")
    row["clip_score"] = ev.get("clip_score")
    row["clip_match"] = ev.get("clip_match")
    row["n"] = ev.get("n")
    row["unparseable"] = ev.get("unparseable")
    return row


def track_b_rows(run_dir: str | os.PathLike) -> list[dict]:
    """One row per method found in metrics.json, with the paper's figure beside each of ours."""
    metrics = runs.read_metrics(run_dir)
    rows = []
    for method, (stage, key) in METHODS.items():
        ev = (metrics.get(stage) or {}).get(key)
        if not ev:
            continue
        row = {"method": method, **_flat(ev)}
        for col, v in PAPER_B.get(method, {}).items():
            row[f"paper_{col}"] = v
        rows.append(row)
    gt = _ground_truth(run_dir, metrics)
    if gt and rows:
        rows.insert(0, {"method": "Ground truth", **gt, **{f"paper_{c}": v for c, v in PAPER_B["Ground truth"].items()}})
    return rows


def _ground_truth(run_dir, metrics: Mapping) -> dict | None:
    """The poster's ground-truth row: the test answers themselves (mF1 1 by definition) and their CLIP score,
    the reward model's mean match probability with the full ground-truth answer (Table 1's "Image vs.
    Output" of the reward model notebook 02 kept), over Table 1's test images."""
    m = metrics.get("clip_finetune") or {}
    t = runs.read_json(runs.resolve_run_dir(run_dir) / "clip_finetune" / "table1.json") or {}
    out = ((t.get("table") or {}).get(f"{m.get('target', 'reason')}_ft") or {}).get("output")
    if not out:
        return None
    return {"action_macro_f1": 1.0, "reason_macro_f1": 1.0, "clip_score": out["avg_sim"],
            "clip_match": out["match_pct"] / 100, "n": out.get("n")}


def track_b_table(run_dir: str | os.PathLike):
    import pandas as pd

    rows = track_b_rows(run_dir)
    df = pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()
    ours = [c for c in COLUMNS if c in df]
    paper = [f"paper_{c}" for c in COLUMNS if f"paper_{c}" in df]
    return df[ours + ["n", "unparseable"] + paper] if rows else df


def comparison_figure(run_dir: str | os.PathLike, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = track_b_rows(run_dir)
    if not rows:
        return None
    cols = ["action_macro_f1", "reason_macro_f1", "action_accuracy", "clip_score"]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.6), sharey=True)
    for ax, col in zip(axes, cols):
        names = [r["method"] for r in rows]
        ours = [r.get(col) for r in rows]
        paper = [r.get(f"paper_{col}") for r in rows]
        y = np.arange(len(names))
        ax.barh(y + 0.2, [v if v is not None else 0 for v in ours], 0.4, label="this run", color="#3b75af")
        ax.barh(y - 0.2, [v if v is not None else 0 for v in paper], 0.4, label="paper B", color="#d9a441")
        for yi, v in zip(y, ours):
            ax.text(0.01, yi + 0.2, "n/a" if v is None else f"{v:.2f}", va="center", fontsize=7, color="white" if v else "black")
        ax.set_yticks(y, names)
        ax.set_xlim(0, 1)
        ax.set_title(col.replace("_", " "))
    axes[0].legend(loc="lower right", fontsize=7)
    fig.suptitle("Track B: this run vs paper B (toy data and tiny models are not comparable in level, only in shape)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def figures_from_run(run_dir: str | os.PathLike) -> list[Path]:
    out = runs.figures_dir(run_dir, "evaluate") / "track_b_comparison.png"
    p = comparison_figure(run_dir, out)
    return [p] if p else []


def run_evaluate(P: Mapping, run_dir: str | os.PathLike) -> dict:
    """Write the Track B table (CSV and Markdown) and record it under metrics.json["evaluate"]."""
    d = runs.stage_dir(run_dir, "evaluate")
    df = track_b_table(run_dir)
    runs.atomic_write_text(d / "track_b_table.csv", df.to_csv())
    runs.atomic_write_text(d / "track_b_table.md", df.to_markdown() if hasattr(df, "to_markdown") else df.to_string())
    rows = track_b_rows(run_dir)
    runs.record_metrics(run_dir, "evaluate", {"track_b": rows})
    return {"table": df, "rows": rows}
