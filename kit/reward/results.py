"""The CLIP reward's results as the run folder holds them: the tables notebook 02 shows (paper B's
Table 1, the fine-tuned and pretrained models' metrics, the pairs the fine-tune sees)."""
from __future__ import annotations

import pandas as pd

from kit import runs
from kit.reward.metrics import table_frame

STAGE = "clip_finetune"


def results_table(run_dir):
    """Val/test AUROC, accuracy, precision, recall, F1 of each fine-tuned model and of the pretrained
    CLIP on the same pairs (paper B, Appendix B.4)."""
    m = runs.require_metrics(run_dir, STAGE, "results_table")
    rows = []
    for tgt, res in m["models"].items():
        for who, block in ((f"pretrained (on {tgt} pairs)", res["pretrained"]), (f"{tgt}-fine-tuned", res)):
            for sp in ("val", "test"):
                b = block[sp]
                rows.append({"model": who, "split": sp, "pairs": b["n"], "AUROC": b["auroc"], "accuracy": b["accuracy"],
                             "precision": b["precision"], "recall": b["recall"], "F1": b["f1"],
                             "TP": b["tp"], "TN": b["tn"], "FP": b["fp"], "FN": b["fn"]})
    return pd.DataFrame(rows).set_index(["model", "split"]).round(4)


# Paper B's Table 1 (real BDD-OIA, ViT-B/32): Avg. Sim. and Match % per model and pairing. Its pretrained
# CLIP gave 1.0 / 100% for every text, "the same ... with completely irrelevant texts (e.g. "123" or "abc")"
# (Section 5.2), which is the control row; it reports the control for no fine-tuned model.
PAPER_B_TABLE1 = {
    "pretrained": {"output": (1.0, 100.0), "action": (1.0, 100.0), "reason": (1.0, 100.0), "control": (1.0, 100.0)},
    "action_ft": {"output": (0.8533, 87.41), "action": (0.8682, 87.76), "reason": (0.4007, 22.39)},
    "reason_ft": {"output": (0.9113, 93.33), "action": (0.5525, 56.67), "reason": (0.9289, 94.43)},
}


def table1(run_dir, paper: bool = True):
    """Paper B's Table 1 (Avg. Sim. / Match %) from run_dir/clip_finetune/table1.json; with `paper`, the
    paper's own values beside each model this run has (columns "paper B: <model>")."""
    t = runs.read_json(runs.resolve_run_dir(run_dir) / STAGE / "table1.json")
    if not t:
        raise FileNotFoundError(f"{runs.resolve_run_dir(run_dir) / STAGE / 'table1.json'}: missing; run notebook 02")
    ours = t["table"]
    if not paper:
        return table_frame(ours)
    both = {}
    for model, rows in ours.items():
        both[model] = rows
        both[f"paper B: {model}"] = {r: {"avg_sim": v[0], "match_pct": v[1]}
                                     for r, v in PAPER_B_TABLE1.get(model, {}).items()}
    return table_frame(both)


def pairs_preview(run_dir, target: str = "reason", split: str = "train", n: int = 8):
    """A few pairs with their label, as the fine-tune sees them."""
    recs = runs.read_jsonl(runs.resolve_run_dir(run_dir) / STAGE / target / f"pairs_{split}.jsonl")
    return pd.DataFrame(recs[:n])[["id", "text", "label", "anchor"]]
