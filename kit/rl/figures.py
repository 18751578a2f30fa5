"""Figures of paper B's stage 1 (RLOO) and stage 2 (action SFT), rebuilt from the run directory alone.

rloo/figures/:  reward_curves.png (its Fig. 6: per-epoch mean reward and mean best-of-k, per-step
                reward behind; other baselines dashed when trained), gradient_variance.png (the
                estimators' variance on the same batches), clip_scores.png (CLIP score of the eval
                split's descriptions, base model vs stage 1), reward_advantage.png (one group of k
                rewards and their leave-one-out advantages, Eq. 1)
action_sft/figures/: actions.png (action counts and per-action F1; stage 2 answers no reasons),
                kit.eval.figures' action confusion matrices and examples, train_loss.png
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kit import runs  # noqa: E402
from kit.eval.figures import plot_action_confusion, plot_examples, plot_train_loss  # noqa: E402
from kit.eval.metrics import best_on_val  # noqa: E402
from kit.labels import ACTIONS  # noqa: E402
from kit.reward.metrics import clip_summary  # noqa: E402
from kit.rl.results import (
    per_epoch,  # noqa: E402
    work_dir,  # noqa: E402
)

STAGES = ("rloo", "action_sft")
COLORS = {"rloo": "#4c72b0", "greedy": "#dd8452", "none": "#55a868", "a2c": "#8172b3"}
LABELS = {"rloo": "RLOO (leave-one-out)", "greedy": "SCST (greedy baseline)", "none": "REINFORCE (no baseline)",
          "a2c": "A2C (MLP critic)"}


_save = runs.save_figure


def plot_reward_curves(reward_log: Sequence[Mapping], per_epoch: Sequence[Mapping], path: Path, *,
                       baseline: str = "rloo", compare: Mapping[str, Sequence[Mapping]] | None = None) -> Path:
    """Paper B's Fig. 6: mean reward and mean best-of-k reward per epoch (+ per-step mean reward)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    c = COLORS.get(baseline, "#4c72b0")
    ep = [e["epoch"] + 1 for e in per_epoch]
    ax1.plot(ep, [e["mean_reward"] for e in per_epoch], marker="o", color=c, label="mean reward")
    ax1.fill_between(ep, [e["mean_reward"] - e.get("reward_sem", 0) for e in per_epoch],
                     [e["mean_reward"] + e.get("reward_sem", 0) for e in per_epoch], color=c, alpha=0.15)
    ax1.plot(ep, [e["best_of_k"] for e in per_epoch], marker="s", color="#c44e52", label="mean best-of-k reward")
    for b, rows in (compare or {}).items():
        if rows:
            ax1.plot([e["epoch"] + 1 for e in rows], [e["mean_reward"] for e in rows], marker="o", ls="--",
                     color=COLORS.get(b, "gray"), label=f"mean reward, {LABELS.get(b, b)}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("CLIP reward")
    ax1.set_xticks(ep)
    ax1.set_title(f"Stage 1 reward per epoch, {LABELS.get(baseline, baseline)} (band: ±1 s.e.m. over steps)",
                  fontsize=10)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    steps = [r["step"] for r in reward_log]
    mean_r = [r["mean_reward"] for r in reward_log]
    bok = [r["best_of_k"] for r in reward_log]
    ax2.plot(steps, mean_r, color=c, alpha=0.25, lw=0.8)
    ax2.plot(steps, bok, color="#c44e52", alpha=0.25, lw=0.8)
    # a moving average over a third of an epoch, so the trend shows through the per-batch noise
    w = max(1, (max((e["steps"] for e in per_epoch), default=1) if per_epoch else 1) // 3)
    for ys, col, lab in ((mean_r, c, "mean reward"), (bok, "#c44e52", "best-of-k")):
        if len(ys) >= w:
            avg = [sum(ys[i - w + 1:i + 1]) / w for i in range(w - 1, len(ys))]
            ax2.plot(steps[w - 1:], avg, color=col, lw=2, label=f"{lab} (moving average, {w} steps)")
    for e in per_epoch[1:]:
        first = next((r["step"] for r in reward_log if int(r["epoch"]) == e["epoch"]), None)
        if first is not None:
            ax2.axvline(first - 0.5, color="gray", lw=0.6, ls=":")
    ax2.set_xlabel("optimizer step (dotted: epoch boundaries)")
    ax2.set_ylabel("CLIP reward")
    ax2.set_title("per step (one batch of prompts x k samples; faint: raw)", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_variance(variance: Mapping, path: Path) -> Path:
    """Variance (trace of the covariance) of each estimator's gradient, same batches (linear axes from 0):
    within a prompt, across all groups, and (when recorded) within a prompt relative to the estimator's own
    squared mean gradient, which does not grow or shrink with the rewards' scale."""
    est = variance["estimators"]
    names = list(est)
    panels = [("within_prompt", "within a prompt (resampled k completions)", "gradient variance (trace of covariance)"),
              ("total", "across all groups (prompts too)", "gradient variance (trace of covariance)")]
    if all(est[n].get("relative_within") is not None for n in names):
        panels.append(("relative_within", "within a prompt / squared mean gradient\n(scale-free)",
                       "relative variance (1 / signal-to-noise)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 3.8))
    for ax, (key, title, ylabel) in zip(axes, panels):
        vals = [est[n][key] for n in names]
        bars = ax.bar([LABELS.get(n, n).replace(" (", "\n(") for n in names], vals,
                      color=[COLORS.get(n, "gray") for n in names])
        ref = est.get("rloo", {}).get(key)
        ax.bar_label(bars, labels=[f"{v:.3g}" + (f"\n(x{v / ref:.1f})" if ref else "") for v in vals], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.set_ylim(0, max(vals) * 1.25 if vals and max(vals) > 0 else 1)
    fig.suptitle(f"Policy-gradient estimator variance: {variance['n_prompts']} prompts x {variance['repeats']} "
                 f"resamples x k={variance['k']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_clip_scores(before: Sequence[Mapping] | None, after: Sequence[Mapping], path: Path,
                     threshold: float | None = None) -> Path:
    """Left: the CLIP score of the greedy descriptions, before and after stage 1. Right: each
    description's score against its own image minus against another sample's; a higher reward
    that leaves this near 0 came from text that fits any image (reward hacking), not from
    describing the image better."""
    runs_ = [(n, recs, clip_summary(recs), c)
             for n, recs, c in (("base model", before, "gray"), ("after stage 1", after, COLORS["rloo"])) if recs]
    has_gap = any(sm["specificity"] is not None for _, _, sm, _ in runs_)
    fig, axes = plt.subplots(1, 2 if has_gap else 1, figsize=(11.5 if has_gap else 6.5, 3.6), squeeze=False)
    ax = axes[0, 0]
    bins = [i / 20 for i in range(21)]  # the same bins for both, over the probability's range
    for name, recs, sm, color in runs_:
        ax.hist([r["clip_score"] for r in recs], bins=bins, histtype="stepfilled", alpha=0.35, color=color,
                edgecolor=color, lw=1.3, label=f"{name} (mean {sm['clip_score']:.3f})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls=":", lw=1, label=f"match threshold {threshold}")
    ax.set_xlabel("CLIP score of the greedy description (probability)")
    ax.set_ylabel("descriptions")
    ax.set_title("Stage-1 descriptions on the eval split", fontsize=10)
    ax.legend(fontsize=8)
    if has_gap:
        ax = axes[0, 1]
        gbins = [-1 + i / 10 for i in range(21)]
        for name, recs, sm, color in runs_:
            if sm["specificity"] is None:
                continue
            gaps = [r["clip_score"] - r["clip_score_other_image"] for r in recs
                    if r.get("clip_score_other_image") is not None]
            ax.hist(gaps, bins=gbins, histtype="stepfilled", alpha=0.35, color=color, edgecolor=color, lw=1.3,
                    label=f"{name} (mean {sm['specificity']:+.3f}, {sm['distinct']:.0%} distinct)")
            ax.axvline(sm["specificity"], color=color, lw=1.5)
        ax.axvline(0, color="k", ls=":", lw=1)
        ax.set_xlabel("score with its own image \u2212 with another sample's image")
        ax.set_title("Does the description fit its own image better than another?", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_group_advantage(rewards: Sequence[float], advantages: Sequence[float], path: Path,
                         title: str = "One group of k completions") -> Path:
    """The k rewards of one prompt, the leave-one-out baseline of each, and its advantage (Eq. 1)."""
    import numpy as np

    r = np.asarray(rewards, dtype=float)
    k = len(r)
    base = (r.sum() - r) / (k - 1)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(k)
    ax.bar(x - 0.2, r, 0.4, color=COLORS["rloo"], label="reward $r_i$")
    ax.bar(x + 0.2, np.asarray(advantages, dtype=float), 0.4, color="#c44e52", label="advantage $A_i$")
    ax.scatter(x - 0.2, base, marker="_", s=400, color="k", zorder=3,
               label=r"baseline $\frac{1}{k-1}\sum_{j\neq i} r_j$")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [f"sample {i + 1}" for i in range(k)], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _rloo_figures(rd: Path) -> list[Path]:
    sd = rd / "rloo"
    out = sd / "figures"
    paths: list[Path] = []

    m = runs.read_metrics(rd).get("rloo") or {}
    work = work_dir(rd)  # this run's training (its key's folder)
    log_path = work / "reward_log.jsonl"
    if log_path.is_file():
        log = runs.read_jsonl(log_path)
        if log:
            paths.append(plot_reward_curves(log, per_epoch(log), out / "reward_curves.png",
                                            baseline=log[-1].get("baseline", "rloo"),
                                            compare=m.get("compare_baselines") or {}))
    var = runs.read_json(work / "variance.json")
    if var:
        paths.append(plot_variance(var, out / "gradient_variance.png"))
    split = (m.get("eval") or {}).get("split", "test")
    after = sd / f"descriptions_{split}.jsonl"
    if after.is_file():
        base = sd / f"descriptions_{split}_base.jsonl"
        thr = (runs.read_metrics(rd).get("clip_finetune") or {}).get("test", {}).get("threshold")
        paths.append(plot_clip_scores(runs.read_jsonl(base) if base.is_file() else None, runs.read_jsonl(after),
                                      out / "clip_scores.png", threshold=thr))
    samples = work / "samples.jsonl"
    if samples.is_file():
        s = runs.read_jsonl(samples)
        if s:
            first = s[0]
            paths.append(plot_group_advantage(first["rewards"], first["advantages"], out / "reward_advantage.png",
                                              f"Eq. 1 at step {first['step']}: k={len(first['rewards'])} sampled "
                                              f"descriptions of one image ({first.get('id', '')})"))
    return paths


def plot_actions(recs: Sequence[Mapping], path: Path, title: str) -> Path:
    """Stage 2 answers actions only (`Action: <action>.`), so its figure has no reason panels:
    ground-truth vs predicted action counts, and per-action precision / recall / F1."""
    import numpy as np
    from sklearn.metrics import precision_recall_fscore_support

    gt = np.array([r["gt_actions"] for r in recs], dtype=int)
    pr = np.array([r["pred_actions"] for r in recs], dtype=int)
    p, r, f, _ = precision_recall_fscore_support(gt, pr, average=None, labels=list(range(len(ACTIONS))),
                                                 zero_division=0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(len(ACTIONS))
    b1 = ax1.bar(x - 0.2, gt.sum(0), 0.4, color="#4c72b0", label="ground truth")
    b2 = ax1.bar(x + 0.2, pr.sum(0), 0.4, color="#dd8452", label="predicted")
    ax1.bar_label(b1, fontsize=8)
    ax1.bar_label(b2, fontsize=8)
    ax1.set_xticks(x, ACTIONS)
    ax1.set_ylabel("# samples")
    ax1.set_title(f"actions: ground truth vs predicted (n = {len(recs)})", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.margins(y=0.15)
    for i, (vals, lab, col) in enumerate(((p, "precision", "#8172b3"), (r, "recall", "#64b5cd"),
                                          (f, "F1", "#4c72b0"))):
        bars = ax2.bar(x + (i - 1) * 0.27, 100 * vals, 0.27, color=col, label=lab)
        ax2.bar_label(bars, labels=[f"{100 * v:.0f}" for v in vals], fontsize=7)
    ax2.set_xticks(x, [f"{a}\n(n={int(n)})" for a, n in zip(ACTIONS, gt.sum(0))])
    ax2.set_ylim(0, 110)
    ax2.set_ylabel("%")
    ax2.set_title(f"per action; macro F1 {100 * f.mean():.1f}%", fontsize=10)
    ax2.legend(fontsize=8, ncol=3, loc="upper right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _action_sft_figures(rd: Path) -> list[Path]:
    sd = rd / "action_sft"
    paths: list[Path] = []
    if (sd / "predictions.jsonl").is_file():
        recs = runs.read_jsonl(sd / "predictions.jsonl")
        if recs:
            title = "Stage 2 (action SFT)"
            # kit.eval's label-distribution and per-class figures also plot reasons, which stage 2 never
            # answers (all zero); the action-only figure replaces them
            for stale in ("label_distribution.png", "per_class_f1.png"):
                (sd / "figures" / stale).unlink(missing_ok=True)
            paths += [plot_actions(recs, sd / "figures" / "actions.png", f"{title}: actions"),
                      plot_action_confusion(recs, sd / "figures" / "action_confusion.png", title),
                      plot_examples(recs, sd / "figures" / "examples.png", title)]
    m = runs.read_metrics(rd).get("action_sft") or {}
    if m.get("train_loss"):
        curve = m.get("val_curve") or []
        chosen = best_on_val(curve)["step"] if curve else None
        paths.append(plot_train_loss(m["train_loss"], sd / "figures" / "train_loss.png", "Stage 2 (action SFT)",
                                     val=[{"step": r["step"], "value": r["val_action_mF1"]} for r in curve],
                                     val_label="val action mF1", chosen_step=chosen))
    return paths


def figures_from_run(run_dir: str | os.PathLike, stages: Sequence[str] = STAGES) -> list[Path]:
    """Rebuild the rloo and action_sft figures from the run directory's files (no model, no training)."""
    rd = runs.resolve_run_dir(run_dir)
    paths: list[Path] = []
    if "rloo" in stages and (rd / "rloo").is_dir():
        paths += _rloo_figures(rd)
    if "action_sft" in stages and (rd / "action_sft").is_dir():
        paths += _action_sft_figures(rd)
    return paths
