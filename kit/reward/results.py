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


def table1(run_dir):
    """Paper B's Table 1 (Avg. Sim. / Match %) from run_dir/clip_finetune/table1.json."""
    t = runs.read_json(runs.resolve_run_dir(run_dir) / STAGE / "table1.json")
    if not t:
        raise FileNotFoundError(f"{runs.resolve_run_dir(run_dir) / STAGE / 'table1.json'}: missing; run notebook 02")
    return table_frame(t["table"])


def pairs_preview(run_dir, target: str = "reason", split: str = "train", n: int = 8):
    """A few pairs with their label, as the fine-tune sees them."""
    recs = runs.read_jsonl(runs.resolve_run_dir(run_dir) / STAGE / target / f"pairs_{split}.jsonl")
    return pd.DataFrame(recs[:n])[["id", "text", "label", "anchor"]]
