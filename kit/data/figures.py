"""Data figures (notebook 00): a grid of scenes with their labels, the label distribution per split,
CODA-LM region boxes. All are drawn from the dataset files alone (the real loaders read them)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kit import runs  # noqa: E402
from kit.data import bdd_oia, coda_lm  # noqa: E402
from kit.labels import ACTIONS, N_ACTIONS, N_REASONS, REASONS, action_text  # noqa: E402

_save = runs.save_figure


def _short_label(actions, reasons) -> str:
    act = action_text(actions)
    rs = [f"{i} {REASONS[i]}" for i, v in enumerate(reasons) if v]
    return "\n".join([act] + [textwrap.shorten(r, 30, placeholder="...") for r in rs])


def scene_grid(root, split: str, out_path, n: int = 12, cols: int = 4) -> Path:
    """The first n scenes of a BDD-OIA split with their actions and reasons."""
    samples = bdd_oia.load_split(root, split, max_samples=n).samples
    if not samples:
        raise ValueError(f"{root}: split {split!r} has no samples to draw")
    rows = (len(samples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        ax.imshow(s.load_images()[-1])
        ax.set_title(_short_label(s.actions, s.reasons), fontsize=7, loc="left")
    fig.suptitle(f"BDD-OIA layout, split {split}: scenes with their action and reason labels", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


def label_counts(root, splits: Sequence[str]) -> dict[str, dict]:
    """{split: {"n", "actions": [4 counts], "reasons": [21 counts]}} through the real loader."""
    out = {}
    for sp in splits:
        ss = bdd_oia.load_split(root, sp).samples
        out[sp] = {"n": len(ss), "actions": [sum(s.actions[i] for s in ss) for i in range(N_ACTIONS)],
                   "reasons": [sum(s.reasons[i] for s in ss) for i in range(N_REASONS)]}
    return out


def label_distribution(root, splits: Sequence[str], out_path) -> Path:
    """Share of samples with each action and each reason, one bar colour per split."""
    import numpy as np

    counts = label_counts(root, splits)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 4]})
    width = 0.8 / max(1, len(splits))
    for j, sp in enumerate(splits):
        c = counts[sp]
        n = max(1, c["n"])
        xa = np.arange(N_ACTIONS) + j * width
        xr = np.arange(N_REASONS) + j * width
        a1.bar(xa, np.array(c["actions"]) / n, width, label=f"{sp} (n={c['n']})")
        a2.bar(xr, np.array(c["reasons"]) / n, width, label=f"{sp} (n={c['n']})")
    a1.set_xticks(np.arange(N_ACTIONS) + 0.4 - width / 2, ACTIONS)
    a1.set_ylabel("share of samples")
    a1.set_title("actions")
    a2.set_xticks(np.arange(N_REASONS) + 0.4 - width / 2, [f"{i} {r}" for i, r in enumerate(REASONS)],
                  rotation=60, ha="right", fontsize=7)
    a2.set_title("reasons")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_path)


def coda_regions(root, split: str, out_path, n: int = 6, cols: int = 3) -> Path:
    """CODA-LM samples with their region boxes (red, width 2, as the region questions draw them)."""
    from PIL import ImageDraw

    samples = coda_lm.load_split(root, split, max_samples=n).samples
    if not samples:
        raise ValueError(f"{root}: CODA-LM split {split!r} has no samples to draw")
    rows = (len(samples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        im = s.load_image()
        d = ImageDraw.Draw(im)
        for r in s.regions:
            x, y, w, h = r["box"]
            d.rectangle([x, y, x + w, y + h], outline=(255, 0, 0), width=2)
            d.text((x + 2, y + 1), r["region_id"], fill=(255, 0, 0))
        ax.imshow(im)
        names = ", ".join(f"{r['region_id']}:{r['category_name']} ({coda_lm.region_class(r['category_name'])})" for r in s.regions)
        ax.set_title(textwrap.fill(f"{s.id}: {names}", 55) + "\n" + textwrap.fill(s.suggestion, 55), fontsize=6.5,
                     loc="left")
    fig.suptitle(f"CODA-LM layout, split {split}: region boxes and driving suggestions", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


def figures_from_run(run_dir) -> list[Path]:
    """Rebuild the data figures of notebook 00 from the run's datasets (no models)."""
    rd = runs.resolve_run_dir(run_dir)
    ds = (runs.read_metrics(rd).get("prepare") or {}).get("datasets")
    if not ds:
        return []
    fd = runs.figures_dir(rd, "prepare")
    out = []
    broot = ds.get("bdd_oia_root")
    bsplits = [s for s in ("train", "val", "test") if s in ((ds.get("sizes") or {}).get("bdd_oia") or {})]
    if broot and bsplits:
        out.append(scene_grid(broot, bsplits[0], fd / "data_scene_grid.png"))
        out.append(label_distribution(broot, bsplits, fd / "data_label_distribution.png"))
    croot = ds.get("coda_lm_root")
    csplits = list(((ds.get("sizes") or {}).get("coda_lm") or {}))
    if croot and csplits:
        out.append(coda_regions(croot, csplits[0], fd / "data_coda_regions.png"))
    return out
