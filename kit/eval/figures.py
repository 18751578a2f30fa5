"""Track B figures from a predictions.jsonl alone (paper B's Fig. 4, 8, 9, Tables 2-3, confusion
matrices per action and per reason), reused by the SFT baseline, the action SFT stage and notebook 07.

    figures_for_predictions(pred_path, out_dir, title) -> [png, ...]
    figures_from_run(run_dir) -> [png, ...]     # Direct and SFT baseline, from files only
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kit import runs  # noqa: E402
from kit.eval.metrics import summary_row, track_b_metrics  # noqa: E402
from kit.labels import ACTIONS, REASONS  # noqa: E402

GREEN, RED, GRAY, LIGHT = "#2ca02c", "#d62728", "#8c8c8c", "#e0e0e0"
GT_COLOR, PRED_COLOR = "#4c72b0", "#dd8452"
STAGES = ("direct", "sft_baseline")  # the stages whose figures this module owns


def _records(pred_path) -> list[dict]:
    p = Path(pred_path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no predictions file (expected predictions.jsonl written by an evaluation stage)")
    recs = runs.read_jsonl(p)
    if not recs:
        raise ValueError(f"{p}: no prediction records (expected one JSON object per line)")
    return recs


_save = runs.save_figure


def per_class_table(family_metrics: Mapping, names: Sequence[str] | None = None):
    """Paper B's Tables 2/3 as a DataFrame: class, test GT (%), test GT (#), predicted (#), F1 (%)."""
    import pandas as pd

    names = list(names or family_metrics["per_class_f1"])
    n = max(int(family_metrics.get("n", 0)), 1)
    rows = [{"class": c, "test GT (%)": 100.0 * family_metrics["support"][c] / n,
             "test GT (#)": family_metrics["support"][c],
             "predicted (#)": family_metrics.get("predicted", {}).get(c, np.nan),
             "F1 (%)": 100.0 * family_metrics["per_class_f1"][c]} for c in names]
    return pd.DataFrame(rows).round(2)


def _matrices(recs):
    ga = np.array([r["gt_actions"] for r in recs], dtype=int)
    pa = np.array([r["pred_actions"] for r in recs], dtype=int)
    gr = np.array([r["gt_reasons"] for r in recs], dtype=int)
    pr = np.array([r["pred_reasons"] for r in recs], dtype=int)
    return ga, pa, gr, pr


def plot_distribution(recs, path: Path, title: str) -> Path:
    """Fig. 8: GT vs predicted label counts, actions and reasons."""
    ga, pa, gr, pr = _matrices(recs)
    fig, axes = plt.subplots(2, 1, figsize=(12, 7.5), gridspec_kw={"height_ratios": [1, 1.6]})
    for ax, names, g, p, fam in ((axes[0], ACTIONS, ga, pa, "Actions"), (axes[1], REASONS, gr, pr, "Reasons")):
        x = np.arange(len(names))
        w = 0.4
        bg = ax.bar(x - w / 2, g.sum(0), w, label="ground truth", color=GT_COLOR)
        bp = ax.bar(x + w / 2, p.sum(0), w, label="predicted", color=PRED_COLOR)
        for bars in (bg, bp):
            ax.bar_label(bars, fontsize=7, padding=1)
        ax.set_xticks(x, names, rotation=0 if fam == "Actions" else 55, ha="center" if fam == "Actions" else "right",
                      fontsize=9 if fam == "Actions" else 8)
        ax.set_ylabel("# samples")
        ax.set_title(f"{fam}: ground truth vs predicted (n = {len(recs)})", fontsize=10)
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
    fig.suptitle(f"{title}: label distribution", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_f1(recs, path: Path, title: str) -> Path:
    """Fig. 9 / Tables 2-3: per-class F1 with the support (# in the test split) under each bar."""
    m = track_b_metrics(recs)
    fig, axes = plt.subplots(2, 1, figsize=(12, 7.5), gridspec_kw={"height_ratios": [1, 1.6]})
    for ax, names, fam in ((axes[0], ACTIONS, "action"), (axes[1], REASONS, "reason")):
        fm = m[fam]
        f1 = np.array([fm["per_class_f1"][c] for c in names]) * 100
        sup = [fm["support"][c] for c in names]
        x = np.arange(len(names))
        colors = [GT_COLOR if s > 0 else LIGHT for s in sup]
        bars = ax.bar(x, f1, color=colors)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in f1], fontsize=7, padding=1)
        ax.set_xticks(x, [f"{c}\n(n={s})" if fam == "action" else f"{c} (n={s})" for c, s in zip(names, sup)],
                      rotation=0 if fam == "action" else 55, ha="center" if fam == "action" else "right",
                      fontsize=9 if fam == "action" else 8)
        ax.set_ylim(0, 110)
        ax.set_ylabel("F1 (%)")
        ax.set_title(f"{fam}s: mF1 {100 * fm['macro_f1']:.1f}%  F1_all {100 * fm['f1_all']:.1f}%  "
                     f"accuracy {100 * fm['accuracy']:.1f}%  (grey: class absent from this split)", fontsize=10)
    fig.suptitle(f"{title}: per-class F1 (n = {m['n']}, unparseable {m['unparseable']})", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _confusion_grid(gt, pred, titles: Sequence[str], cols: int, path: Path, suptitle: str) -> Path:
    """One 2x2 confusion matrix per label of a multi-label matrix (each label its own yes/no decision),
    `cols` to a row. Drawn with imshow and fixed margins: seaborn heatmaps under tight_layout took 5 s
    for the 21 reasons."""
    from sklearn.metrics import multilabel_confusion_matrix

    cms = multilabel_confusion_matrix(gt, pred, labels=list(range(len(titles))))
    rows = -(-len(titles) // cols)
    height = 2.4 * rows + 0.4
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.45 / height, top=1 - 0.55 / height, wspace=0.35, hspace=0.55)
    for k, ax in enumerate(axes.flat):
        if k >= len(titles):
            ax.axis("off")
            continue
        cm = cms[k]
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                    color="white" if v > 0.6 * cm.max() else "black")
        ax.set_xticks([0, 1], ["no", "yes"], fontsize=7)
        ax.set_yticks([0, 1], ["no", "yes"], fontsize=7)
        ax.set_title(titles[k], fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("predicted", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("ground truth", fontsize=8)
    fig.suptitle(suptitle, fontsize=12)
    return _save(fig, path)


def plot_action_confusion(recs, path: Path, title: str) -> Path:
    """One 2x2 confusion matrix per action (multi-label: each action is its own yes/no decision)."""
    ga, pa, _, _ = _matrices(recs)
    return _confusion_grid(ga, pa, ACTIONS, len(ACTIONS), path, f"{title}: confusion matrix per action")


def plot_reason_confusion(recs, path: Path, title: str) -> Path:
    """One 2x2 confusion matrix per reason (each of the 21 is its own yes/no decision, as for actions);
    a reason the split never holds shows an empty "yes" row, which is why the official mF1 scores it 0."""
    _, _, gr, pr = _matrices(recs)
    titles = [f"{k}: {n[:24]}{'…' if len(n) > 24 else ''}" for k, n in enumerate(REASONS)]
    return _confusion_grid(gr, pr, titles, 7, path, f"{title}: confusion matrix per reason")


# D-pad positions of the four actions, clockwise from the top as in paper B's Fig. 4:
# forward (up), stop/slow down (a bar at the bottom), left, right.
_ARROWS = {0: (0.0, 0.35, 0.0, 0.5), 2: (-0.35, 0.0, -0.5, 0.0), 3: (0.35, 0.0, 0.5, 0.0)}


def _draw_actions(ax, vec, other, label: str, x0: float) -> None:
    """Arrows for one action vector; green = executable, grey = not. Outline red where it
    disagrees with `other` (prediction vs ground truth)."""
    for i in range(4):
        on = bool(vec[i])
        color = GREEN if on else LIGHT
        edge = RED if vec[i] != other[i] else "none"
        if i == 1:  # stop: a horizontal bar below the centre
            ax.add_patch(plt.Rectangle((x0 - 0.3, -0.6), 0.6, 0.18, color=color, ec=edge, lw=2))
        else:
            dx0, dy0, dx, dy = _ARROWS[i]
            ax.arrow(x0 + dx0, dy0, dx * 0.8, dy * 0.8, width=0.12, head_width=0.3, head_length=0.22,
                     color=color, ec=edge, lw=1.5, length_includes_head=True)
    ax.text(x0, -0.95, label, ha="center", va="center", fontsize=11, fontweight="bold")


def plot_examples(recs, path: Path, title: str, n: int = 6) -> Path:
    """Fig. 4: image, actions as arrows (G = ground truth, P = prediction), reasons coloured
    green (true positive), red (false positive) and grey (false negative)."""
    from PIL import Image

    right = [r for r in recs if r["pred_actions"] == r["gt_actions"] and r["pred_reasons"] == r["gt_reasons"]]
    wrong = [r for r in recs if r not in right]
    pick = (wrong[: n - min(len(right), n // 2)] + right[: n // 2])[:n]
    pick = pick + [r for r in recs if r not in pick][: n - len(pick)]
    fig, axes = plt.subplots(len(pick), 3, figsize=(12, 2.3 * len(pick)),
                             gridspec_kw={"width_ratios": [1.5, 1.3, 2.2]}, squeeze=False)
    for row, r in zip(axes, pick):
        ax_img, ax_act, ax_txt = row
        paths = r.get("image_paths") or []
        img = None
        if paths and Path(paths[-1]).is_file():
            img = Image.open(paths[-1]).convert("RGB")
        if img is not None:
            ax_img.imshow(img)
        else:
            ax_img.text(0.5, 0.5, "image not available", ha="center", va="center", fontsize=9, color=GRAY)
        ax_img.set_title(str(r["id"]), fontsize=8)
        ax_img.axis("off")
        _draw_actions(ax_act, r["gt_actions"], r["pred_actions"], "G", -0.8)
        _draw_actions(ax_act, r["pred_actions"], r["gt_actions"], "P", 0.8)
        ax_act.set_xlim(-1.75, 1.75)
        ax_act.set_ylim(-1.1, 0.95)
        ax_act.set_aspect("equal")
        ax_act.axis("off")
        ax_txt.axis("off")
        lines = []
        for j, name in enumerate(REASONS):
            g, p = r["gt_reasons"][j], r["pred_reasons"][j]
            if g and p:
                lines.append((name, GREEN))
            elif p:
                lines.append((name, RED))
            elif g:
                lines.append((name, GRAY))
        if r.get("unparseable"):
            lines.append(("(answer unparseable)", RED))
        y = 0.95
        if len(lines) > 7:
            lines = lines[:6] + [(f"... {len(lines) - 6} more", GRAY)]
        for name, c in lines:
            ax_txt.text(0.0, y, name, color=c, fontsize=9, va="top", transform=ax_txt.transAxes)
            y -= 0.11
        out = str(r.get("output", ""))
        ax_txt.text(0.0, 0.02, "model: " + (out[:90] + ("..." if len(out) > 90 else "")), fontsize=7,
                    color="#444444", va="bottom", transform=ax_txt.transAxes, wrap=True)
    fig.suptitle(f"{title}: examples (G ground truth, P prediction; green arrow = executable action; "
                 f"reasons: green TP, red FP, grey FN)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def figures_for_predictions(pred_path: str | os.PathLike, out_dir: str | os.PathLike, title: str) -> list[Path]:
    """All Track B figures of one predictions.jsonl, written to out_dir; returns the PNG paths."""
    recs = _records(pred_path)
    out = Path(out_dir)
    return [plot_distribution(recs, out / "label_distribution.png", title),
            plot_per_class_f1(recs, out / "per_class_f1.png", title),
            plot_action_confusion(recs, out / "action_confusion.png", title),
            plot_reason_confusion(recs, out / "reason_confusion.png", title),
            plot_examples(recs, out / "examples.png", title)]


def plot_train_loss(train_loss: Sequence[Mapping], path: Path, title: str, *, val: Sequence[Mapping] = (),
                    val_label: str = "", chosen_step: int | None = None) -> Path:
    """The training loss per logged step; with `val` ({step, value} per checkpoint), that score on a
    second axis and a star on the checkpoint chosen by it (`chosen_step`)."""
    steps = [p["step"] for p in train_loss]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [p["loss"] for p in train_loss], marker=".", color=GT_COLOR)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(f"{title}: training loss" + (f" and {val_label}" if val else ""), fontsize=11)
    ax.grid(alpha=0.3)
    if val:
        bx = ax.twinx()
        bx.plot([v["step"] for v in val], [v["value"] for v in val], marker="o", color=PRED_COLOR, label=val_label)
        best = [v for v in val if v["step"] == chosen_step]
        if best:
            bx.scatter([chosen_step], [best[0]["value"]], marker="*", s=220, color=PRED_COLOR, edgecolor="k",
                       zorder=5, label="chosen (answers test)")
        bx.set_ylabel(val_label, color=PRED_COLOR)
        bx.set_ylim(0, 1)
        bx.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(rows: Sequence[Mapping], path: Path, title: str) -> Path:
    """Grouped bars of the headline metrics, one group per model (Direct, majority, SFT, ...)."""
    keys = ["action_acc", "action_mF1", "action_F1_all", "reason_acc", "reason_mF1", "reason_F1_all"]
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(keys))
    w = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * w, [100 * r[k] for k in keys], w, label=r["model"])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(x, keys)
    ax.set_ylabel("%")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def figures_from_run(run_dir: str | os.PathLike) -> list[Path]:
    """Rebuild Direct's and the SFT baseline's figures from the run directory's files alone."""
    rd = runs.resolve_run_dir(run_dir)
    m = runs.read_metrics(rd)
    paths: list[Path] = []
    titles = {"direct": "Direct (base model)", "sft_baseline": "SFT baseline"}
    for stage in STAGES:
        pred = rd / stage / "predictions.jsonl"
        if pred.is_file():
            paths += figures_for_predictions(pred, rd / stage / "figures", titles[stage])
    sft = m.get("sft_baseline") or {}
    if sft.get("train_loss"):
        paths.append(plot_train_loss(sft["train_loss"], rd / "sft_baseline" / "figures" / "train_loss.png",
                                     "SFT baseline"))
    rows = []
    if (m.get("direct") or {}).get("eval"):
        rows.append(summary_row(m["direct"]["eval"], "direct"))
    if sft.get("majority"):
        rows.append(summary_row(sft["majority"], "majority class"))
    if sft.get("eval"):
        rows.append(summary_row(sft["eval"], "SFT baseline"))
    if rows and (rd / "sft_baseline").is_dir():
        paths.append(plot_comparison(rows, rd / "sft_baseline" / "figures" / "comparison.png",
                                     "Direct vs majority class vs SFT baseline (test split)"))
    return paths
