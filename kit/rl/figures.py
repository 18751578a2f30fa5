"""Figures of paper B's stage 1 (RLOO) and stage 2 (action SFT), rebuilt from the run directory alone.

rloo/figures/:  reward_curves.png (its Fig. 6: per-epoch mean reward and mean best-of-k, per-step
                reward behind; other baselines dashed when trained), gradient_variance.png (the
                estimators' variance on the same batches), clip_scores.png (CLIP score of the eval
                split's descriptions, base model vs stage 1), reward_advantage.png (one group of k
                rewards and their leave-one-out advantages, Eq. 1)
action_sft/figures/: kit.eval.figures' Track B figures of predictions.jsonl + train_loss.png
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kit import runs  # noqa: E402

STAGES = ("rloo", "action_sft")
COLORS = {"rloo": "#4c72b0", "greedy": "#dd8452", "none": "#55a868"}
LABELS = {"rloo": "RLOO (leave-one-out)", "greedy": "SCST (greedy baseline)", "none": "REINFORCE (no baseline)"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


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
    ax1.set_title(f"Stage 1 reward per epoch ({LABELS.get(baseline, baseline)})", fontsize=10)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    steps = [r["step"] for r in reward_log]
    ax2.plot(steps, [r["mean_reward"] for r in reward_log], color=c, alpha=0.5, lw=1, label="mean reward")
    ax2.plot(steps, [r["best_of_k"] for r in reward_log], color="#c44e52", alpha=0.5, lw=1, label="best-of-k")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("CLIP reward")
    ax2.set_title("per step (one batch of prompts x k samples)", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_variance(variance: Mapping, path: Path) -> Path:
    """Variance (trace of the covariance) of each estimator's gradient, same batches; log scale."""
    est = variance["estimators"]
    names = list(est)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((ax1, "within_prompt", "within a prompt (resampled k completions)"),
                           (ax2, "total", "across all groups (prompts too)")):
        vals = [est[n][key] for n in names]
        bars = ax.bar([LABELS.get(n, n).replace(" (", "\n(") for n in names], vals,
                      color=[COLORS.get(n, "gray") for n in names])
        ref = est.get("rloo", {}).get(key)
        ax.bar_label(bars, labels=[f"{v:.3g}" + (f"\n(x{v / ref:.1f})" if ref else "") for v in vals], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("gradient variance (trace)")
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.3)
    fig.suptitle(f"Policy-gradient estimator variance: {variance['n_prompts']} prompts x {variance['repeats']} "
                 f"resamples x k={variance['k']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_clip_scores(before: Sequence[Mapping] | None, after: Sequence[Mapping], path: Path,
                     threshold: float | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bins = 20
    if before:
        ax.hist([r["clip_score"] for r in before], bins=bins, alpha=0.55, color="gray",
                label=f"base model (mean {sum(r['clip_score'] for r in before) / len(before):.3f})")
    ax.hist([r["clip_score"] for r in after], bins=bins, alpha=0.55, color=COLORS["rloo"],
            label=f"after stage 1 (mean {sum(r['clip_score'] for r in after) / max(len(after), 1):.3f})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls=":", lw=1, label=f"match threshold {threshold}")
    ax.set_xlabel("CLIP score of the greedy description (probability)")
    ax.set_ylabel("descriptions")
    ax.set_title("Stage-1 descriptions on the eval split", fontsize=10)
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
    log_path = sd / "reward_log.jsonl"
    if log_path.is_file():
        from kit.rl.rloo import per_epoch

        log = runs.read_jsonl(log_path)
        if log:
            compare = {}
            for d in sorted(sd.glob("baseline_*")):
                if (d / "reward_log.jsonl").is_file():
                    compare[d.name[len("baseline_"):]] = per_epoch(runs.read_jsonl(d / "reward_log.jsonl"))
            paths.append(plot_reward_curves(log, per_epoch(log), out / "reward_curves.png",
                                            baseline=log[-1].get("baseline", "rloo"), compare=compare))
    var = runs.read_json(sd / "variance.json")
    if var:
        paths.append(plot_variance(var, out / "gradient_variance.png"))
    split = (m.get("eval") or {}).get("split", "test")
    after = sd / f"descriptions_{split}.jsonl"
    if after.is_file():
        base = sd / f"descriptions_{split}_base.jsonl"
        paths.append(plot_clip_scores(runs.read_jsonl(base) if base.is_file() else None, runs.read_jsonl(after),
                                      out / "clip_scores.png"))
    samples = sd / "samples.jsonl"
    if samples.is_file():
        s = runs.read_jsonl(samples)
        if s:
            first = s[0]
            paths.append(plot_group_advantage(first["rewards"], first["advantages"], out / "reward_advantage.png",
                                              f"Step {first['step']}: k={len(first['rewards'])} samples of one image"))
    return paths


def _action_sft_figures(rd: Path) -> list[Path]:
    from kit.eval.figures import figures_for_predictions, plot_train_loss

    sd = rd / "action_sft"
    paths: list[Path] = []
    if (sd / "predictions.jsonl").is_file():
        paths += figures_for_predictions(sd / "predictions.jsonl", sd / "figures", "Stage 2 (action SFT)")
    m = runs.read_metrics(rd).get("action_sft") or {}
    if m.get("train_loss"):
        paths.append(plot_train_loss(m["train_loss"], sd / "figures" / "train_loss.png", "Stage 2 (action SFT)"))
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
