"""Figures of notebook 02, rebuilt from the run directory alone (no model, no training):
paper B's Fig. 10 (loss and AUROC per epoch), Fig. 11 (confusion matrices and ROC curves, val and
test), its Table 1 as a heatmap, and the match-probability distributions before and after.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kit import runs  # noqa: E402
from kit.reward.metrics import TABLE_ROWS  # noqa: E402

STAGE = "clip_finetune"


_save = runs.save_figure


def training_curves(history: list[dict], title: str, path: Path) -> Path:
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    tr = [(h["epoch"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    if tr:
        a.plot(*zip(*tr), "o-", label="train loss (BCE)")
    a.plot(ep, [h["val_loss"] for h in history], "s-", label="validation loss")
    a.set_xlabel("epoch (0 = before fine-tuning)")
    a.set_ylabel("loss")
    a.legend()
    a.set_title("Loss")
    b.plot(ep, [h["val_auroc"] for h in history], "o-", color="C2", label="validation AUROC")
    best = max(history, key=lambda h: h["val_auroc"])
    b.axvline(best["epoch"], ls=":", color="gray", label=f"best epoch {best['epoch']} ({best['val_auroc']:.3f})")
    lrs = [h.get("lr") for h in history]
    for i in range(1, len(history)):
        if lrs[i] is not None and lrs[i - 1] is not None and lrs[i] < lrs[i - 1]:
            b.axvline(history[i]["epoch"], ls="--", color="C3", alpha=0.6)
    b.set_xlabel("epoch")
    b.set_ylabel("AUROC")
    b.set_ylim(min(0.45, min(h["val_auroc"] for h in history) - 0.02), 1.0)
    b.legend(loc="lower right")
    b.set_title("Validation AUROC (red dashes: lr reduced)")
    fig.suptitle(title, y=1.04)
    return _save(fig, path)


def _roc(y, p):
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    return fpr, tpr, roc_auc_score(y, p)


def confusion_and_roc(scores: dict[str, list[dict]], threshold: float, title: str, path: Path) -> Path:
    from sklearn.metrics import confusion_matrix

    splits = [s for s in ("val", "test") if scores.get(s)]
    fig, axes = plt.subplots(len(splits), 2, figsize=(9, 4 * len(splits)), squeeze=False)
    for row, sp in enumerate(splits):
        recs = scores[sp]
        y = np.array([r["label"] for r in recs])
        p = np.array([r["prob"] for r in recs])
        cm = confusion_matrix(y, (p > threshold).astype(int), labels=[0, 1])
        ax = axes[row, 0]
        ax.imshow(cm, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=14)
        ax.set_xticks([0, 1], ["no match (0)", "match (1)"])
        ax.set_yticks([0, 1], ["no match (0)", "match (1)"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{sp}: confusion at threshold {threshold}")
        ax = axes[row, 1]
        if len(set(y.tolist())) == 2:
            fpr, tpr, auc = _roc(y, p)
            ax.plot(fpr, tpr, color="C0", label=f"fine-tuned (AUROC {auc:.3f})")
            if "pretrained_prob" in recs[0]:
                pp = np.array([r["pretrained_cos"] for r in recs])  # cosine: probabilities saturate at 1
                fpr0, tpr0, auc0 = _roc(y, pp)
                ax.plot(fpr0, tpr0, color="C1", ls="--", label=f"pretrained (AUROC {auc0:.3f})")
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{sp}: ROC")
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def score_histograms(recs: list[dict], threshold: float, title: str, path: Path) -> Path:
    y = np.array([r["label"] for r in recs])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, key, name in ((axes[0], "pretrained_prob", "pretrained"), (axes[1], "prob", "fine-tuned")):
        p = np.array([r[key] for r in recs])
        bins = np.linspace(0, 1, 26)
        ax.hist(p[y == 1], bins=bins, alpha=0.6, label="true text (positive)", color="C2")
        ax.hist(p[y == 0], bins=bins, alpha=0.6, label="wrong text (negative)", color="C3")
        ax.axvline(threshold, color="k", ls=":")
        ax.set_title(f"{name}: match probability")
        ax.set_xlabel("sigmoid(cos x exp(logit_scale) [+ bias])")
    axes[0].set_ylabel("test pairs")
    axes[1].legend()
    fig.suptitle(title, y=1.04)
    return _save(fig, path)


def table1_heatmap(table: dict, threshold: float, path: Path) -> Path:
    models = list(table)
    rows = [r for r in TABLE_ROWS if all(r in table[m] for m in models)]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 2.2 * len(models), 0.6 * len(rows) + 2))
    for ax, key, fmt, name in ((axes[0], "avg_sim", "{:.3f}", "Avg. Sim."), (axes[1], "match_pct", "{:.1f}%", "Match %")):
        m = np.array([[table[mo][r][key] for mo in models] for r in rows], dtype=float)
        ax.imshow(m / (100.0 if key == "match_pct" else 1.0), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(models)):
                v = m[i, j] / (100.0 if key == "match_pct" else 1.0)
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", color="white" if v < 0.6 else "black")
        ax.set_xticks(range(len(models)), models)
        ax.set_yticks(range(len(rows)), [TABLE_ROWS[r] for r in rows])
        ax.set_title(name)
    fig.suptitle(f"Paper B Table 1 on this run's test images (match: probability > {threshold})")
    fig.tight_layout()
    return _save(fig, path)


def figures_from_run(run_dir) -> list[Path]:
    rd = runs.resolve_run_dir(run_dir)
    sd = rd / STAGE
    m = runs.read_metrics(rd).get(STAGE) or {}
    fd = runs.figures_dir(rd, STAGE)
    thr = float(m.get("test", {}).get("threshold", 0.5)) if m else 0.5
    out: list[Path] = []
    for tgt in m.get("targets") or []:
        td = sd / tgt
        # the fine-tune of this run's key lives beside its best model (kit.stages.clip_finetune)
        ckpt = (m.get("models") or {}).get(tgt, {}).get("checkpoint")
        hist = runs.read_json(Path(ckpt).parent / "history.json") if ckpt else None
        if hist and hist.get("history"):
            out.append(training_curves(hist["history"], f"CLIP fine-tune on image-{tgt} pairs (paper B Fig. 10)",
                                       fd / f"training_curves_{tgt}.png"))
        scores = {sp: runs.read_jsonl(td / f"scores_{sp}.jsonl") for sp in ("val", "test")
                  if (td / f"scores_{sp}.jsonl").exists()}
        if scores:
            out.append(confusion_and_roc(scores, thr, f"{tgt}-fine-tuned CLIP (paper B Fig. 11)",
                                         fd / f"confusion_roc_{tgt}.png"))
        if scores.get("test"):
            out.append(score_histograms(scores["test"], thr, f"test pairs, {tgt} target",
                                        fd / f"score_hist_{tgt}.png"))
    t1 = runs.read_json(sd / "table1.json")
    if t1 and t1.get("table"):
        out.append(table1_heatmap(t1["table"], float(t1.get("threshold", thr)), fd / "table1.png"))
    return out
