"""Judge a CLIP reward model as paper B does (its Appendix B.4 and Table 1), with scikit-learn.

- `binary_metrics`: AUROC, accuracy, precision, recall, F1 (class 1) at a threshold, the confusion
  matrix and the ROC curve of a set of scored pairs.
- `similarity_table`: Table 1's "Avg. Sim." (mean match probability) and "Match %" (share above the
  threshold) of each image against its ground-truth output text (`kit.labels.format_answer`), its
  action text and its reason text, plus an irrelevant control text (the paper noticed the pretrained
  CLIP rated "123" or "abc" as high as the true texts).
- `clip_summary`: CLIP score and match of a model's descriptions (notebook 05), with two checks
  that a higher score is honest.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from kit.labels import action_text, format_answer, reason_text

CONTROL_TEXT = "abc 123"
TABLE_ROWS = {
    "output": "Image vs. Output",
    "action": "Image vs. Action",
    "reason": "Image vs. Reason",
    "control": f"Image vs. '{CONTROL_TEXT}'",
}


def _roc_points(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200) -> dict:
    if len(fpr) > max_points:
        idx = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [round(float(x), 5) for x in fpr], "tpr": [round(float(x), 5) for x in tpr]}


def binary_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict:
    """Paper B's pair-classifier figures for one split."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
        roc_curve,
    )

    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"binary_metrics: expected equal-length non-empty label and score lists, "
                         f"got {y.shape} and {p.shape}")
    pred = (p > threshold).astype(int)
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, average="binary", pos_label=1, zero_division=0)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    both = len(set(y.tolist())) == 2
    out = {
        "n": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
        "auroc": float(roc_auc_score(y, p)) if both else None,
        "accuracy": float(accuracy_score(y, pred)), "precision": float(prec), "recall": float(rec), "f1": float(f1),
        "confusion": cm.tolist(),  # [[TN, FP], [FN, TP]]
        "tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1]),
        "mean_prob_pos": float(p[y == 1].mean()) if (y == 1).any() else None,
        "mean_prob_neg": float(p[y == 0].mean()) if (y == 0).any() else None,
    }
    if both:
        fpr, tpr, _ = roc_curve(y, p)
        out["roc"] = _roc_points(fpr, tpr)
    return out


def gt_texts(sample) -> dict[str, str]:
    """The ground-truth texts Table 1 pairs with an image."""
    return {"output": format_answer(sample.actions, sample.reasons), "action": action_text(sample.actions),
            "reason": reason_text(sample.reasons), "control": CONTROL_TEXT}


def similarity_table(rewards: Mapping[str, object], samples: Sequence, threshold: float = 0.5) -> dict:
    """{model: {row: {"avg_sim", "match_pct", "avg_cos", "n"}}} for `rewards` = {model name: CLIPReward}.

    Each sample contributes its annotated frame (single-frame, as the paper's CLIP fine-tune)."""
    from tqdm.auto import tqdm

    images = [s.load_images()[-1] for s in tqdm(samples, desc="Table 1 images", leave=False)]
    texts = [gt_texts(s) for s in samples]
    table: dict = {}
    for name, r in rewards.items():
        table[name] = {}
        for row in TABLE_ROWS:
            cos = r.clip_score(images, [t[row] for t in texts], kind="cosine")
            prob = r.clip_score(images, [t[row] for t in texts], kind="probability")
            table[name][row] = {"avg_sim": float(np.mean(prob)), "match_pct": 100.0 * float(np.mean(np.array(prob) > threshold)),
                                "avg_cos": float(np.mean(cos)), "n": len(prob)}
    return table


def table_frame(table: Mapping) -> "pandas.DataFrame":  # noqa: F821
    """Table 1 as a DataFrame: rows = pairing, columns = (model, Avg. Sim. / Match %)."""
    import pandas as pd

    cols = {}
    for model, rows in table.items():
        cols[(model, "Avg. Sim.")] = {TABLE_ROWS[r]: v["avg_sim"] for r, v in rows.items()}
        cols[(model, "Match %")] = {TABLE_ROWS[r]: v["match_pct"] for r, v in rows.items()}
    return pd.DataFrame(cols).round(4)


def clip_summary(recs: Sequence[Mapping]) -> dict:
    """CLIP score and match of greedy descriptions, and two checks that a higher score is honest:
    `specificity`, the mean score against the sample's own frames minus against another sample's
    (near 0: the descriptions could be of any image), and `distinct`, the share of different
    descriptions (low: one sentence for every image, the RL model has collapsed)."""
    n = len(recs)
    paired = [r for r in recs if r.get("clip_score_other_image") is not None]
    return {"clip_score": sum(r["clip_score"] for r in recs) / max(n, 1),
            "clip_match": sum(bool(r["clip_match"]) for r in recs) / max(n, 1),
            "specificity": (sum(r["clip_score"] - r["clip_score_other_image"] for r in paired) / len(paired)
                            if paired else None),
            "distinct": len({r["description"] for r in recs}) / max(n, 1), "n": n}
