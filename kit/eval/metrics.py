"""Track B label metrics, computed with scikit-learn exactly as BDD-OIA's official test code does.

Official definitions (BDD-OIA's metric code, paper B section 5.1):
- per-class F1 = `f1_score(T, P, average=None)`; **macro_f1** (mF1) = the mean of those, over ALL
  classes (4 actions, 21 reasons), present in the test split or not;
- **f1_all** = mean over samples of `f1_score(T_j, P_j, average='samples')` (their loop runs with
  batch size 1), i.e. `f1_score(T, P, average='samples')` over the whole matrix;
- **accuracy** = (TP + TN) / (TP + FP + TN + FN) over the label matrix (paper B's "accuracy").

Zero division. The official code calls sklearn's `f1_score` with its defaults; sklearn's default
`zero_division="warn"` yields 0.0 (with a warning) whenever an F1 is undefined. We pass
`zero_division=0` explicitly: the same numbers, no warnings, and no dependence on sklearn's
default staying the same. What it means:
- a class absent from the test split (support 0) that is never predicted scores F1 = 0 and still
  counts in macro_f1 (BDD-OIA's test split has such classes; see paper B's Table 3 "0 / 0.0");
  a class absent but predicted also scores 0 (all its predictions are false positives);
- a sample with no true label and no predicted label scores 0 in f1_all.
So macro_f1 is the official, comparable number, and it is capped below 1 when classes are absent.
We also report `n_classes_present` and `macro_f1_present` (mean over classes with support > 0),
which is the number to read when judging a model on a small split.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

from kit.eval.parse import parse_answer
from kit.labels import ACTIONS, N_ACTIONS, N_REASONS, REASONS

ZERO_DIVISION = 0  # = sklearn's default ("warn" -> 0.0), which the official BDD-OIA code relies on


def _matrix(y, n: int, what: str) -> np.ndarray:
    a = np.asarray(y, dtype=int)
    if a.ndim == 1 and a.size == 0:
        a = a.reshape(0, n)
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"{what}: expected a matrix of shape (n_samples, {n}), got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{what}: expected 0/1 labels, got values {sorted(set(np.unique(a)) - {0, 1})}")
    return a


def label_metrics(y_true, y_pred, names: Sequence[str]) -> dict:
    """Official BDD-OIA metrics for one label family (see module doc), plus extras.

    Returns accuracy, macro_f1, f1_all, per_class_f1 / per_class_precision / per_class_recall
    (name -> value), support (name -> # true), predicted (name -> # predicted), exact_match
    (share of samples whose whole label vector is right), n_classes_present, macro_f1_present, n.
    """
    n = len(names)
    T = _matrix(y_true, n, "y_true")
    Pm = _matrix(y_pred, n, "y_pred")
    if T.shape != Pm.shape:
        raise ValueError(f"y_true has shape {T.shape} but y_pred has shape {Pm.shape}; expected the same")
    if T.shape[0] == 0:
        raise ValueError("label_metrics: no samples (expected at least one row)")
    zd = ZERO_DIVISION
    per = f1_score(T, Pm, average=None, zero_division=zd)
    prec = precision_score(T, Pm, average=None, zero_division=zd)
    rec = recall_score(T, Pm, average=None, zero_division=zd)
    support = T.sum(axis=0)
    present = support > 0
    return {
        "accuracy": float((T == Pm).mean()),
        "macro_f1": float(per.mean()),
        "f1_all": float(f1_score(T, Pm, average="samples", zero_division=zd)),
        "exact_match": float((T == Pm).all(axis=1).mean()),
        "per_class_f1": {nm: float(v) for nm, v in zip(names, per)},
        "per_class_precision": {nm: float(v) for nm, v in zip(names, prec)},
        "per_class_recall": {nm: float(v) for nm, v in zip(names, rec)},
        "support": {nm: int(v) for nm, v in zip(names, support)},
        "predicted": {nm: int(v) for nm, v in zip(names, Pm.sum(axis=0))},
        "n_classes_present": int(present.sum()),
        "macro_f1_present": float(per[present].mean()) if present.any() else 0.0,
        "n": int(T.shape[0]),
    }


def track_b_metrics(records: Sequence[Mapping]) -> dict:
    """Metrics of Track B prediction records (id, output, pred_actions, pred_reasons, gt_actions,
    gt_reasons[, unparseable]) -> {"action": ..., "reason": ..., "n", "unparseable",
    "exact_match" (actions and reasons both right)}.

    A record without an `unparseable` field is re-parsed from its `output` to count it.
    """
    if not records:
        raise ValueError("track_b_metrics: no prediction records (expected at least one)")

    for i, r in enumerate(records):
        for k in ("pred_actions", "pred_reasons", "gt_actions", "gt_reasons"):
            if k not in r:
                raise ValueError(f"prediction record {i} (id {r.get('id')!r}): missing field '{k}'")
    ga = _matrix([r["gt_actions"] for r in records], N_ACTIONS, "gt_actions")
    pa = _matrix([r["pred_actions"] for r in records], N_ACTIONS, "pred_actions")
    gr = _matrix([r["gt_reasons"] for r in records], N_REASONS, "gt_reasons")
    pr = _matrix([r["pred_reasons"] for r in records], N_REASONS, "pred_reasons")
    unp = 0
    for r in records:
        u = r.get("unparseable")
        if u is None:
            u = parse_answer(r.get("output", "")).unparseable
        unp += bool(u)
    return {
        "action": label_metrics(ga, pa, ACTIONS),
        "reason": label_metrics(gr, pr, REASONS),
        "n": len(records),
        "unparseable": int(unp),
        "exact_match": float(((ga == pa).all(axis=1) & (gr == pr).all(axis=1)).mean()),
    }


def summary_row(metrics: Mapping, name: str) -> dict:
    """One flat table row (for comparing Direct / majority / SFT / later stages)."""
    a, r = metrics["action"], metrics["reason"]
    return {"model": name, "n": metrics["n"], "unparseable": metrics.get("unparseable", 0),
            "action_acc": a["accuracy"], "action_mF1": a["macro_f1"], "action_F1_all": a["f1_all"],
            "reason_acc": r["accuracy"], "reason_mF1": r["macro_f1"], "reason_F1_all": r["f1_all"],
            "exact_match": metrics.get("exact_match", float("nan"))}


def majority_labels(label_rows) -> list[int]:
    """Per label, the majority value (1 when more than half the rows have it) of a training split."""
    M = np.asarray(label_rows, dtype=int)
    if M.ndim != 2 or M.shape[0] == 0:
        raise ValueError(f"majority_labels: expected a non-empty (n_samples, n_labels) matrix, got shape {M.shape}")
    return [int(v) for v in (M.mean(axis=0) > 0.5)]


def best_on_val(curve: Sequence[Mapping], score: str = "val_action_mF1") -> Mapping:
    """The checkpoint of `curve` ({step, `score`, ...} per checkpoint) with the highest val score; ties
    go to the later step (the longer-trained model)."""
    return max(curve, key=lambda r: (r[score], r["step"]))
