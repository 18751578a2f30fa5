"""Notebook 01's figures, redrawn from the run directory alone (synthesis/records.jsonl, card.json,
quality.json, the pool's images):

    steps.png     a few pool images through every step: proposals, named regions with their
                  similarities, the description found, the raw caption and the QA pairs written
    funnel.png    regions proposed, dropped at each step, named; QA pairs per task and per class
    quality.png   named-object precision and recall per class, and the judge's rating of the
                  synthetic answers against the hidden truth (toy world only)
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kit import runs  # noqa: E402
from kit.data.coda_lm import CLASSES, region_class  # noqa: E402

CLASS_COLOURS = dict(zip(CLASSES, plt.get_cmap("tab10").colors))


def _wrap(text: str, width: int, max_lines: int) -> str:
    lines = textwrap.wrap(text or "", width)
    return "\n".join(lines[:max_lines] + (["..."] if len(lines) > max_lines else []))


def pick(records: Sequence[Mapping], n: int) -> list[Mapping]:
    """The first n records with at least two named regions and an answer (the most to look at)."""
    good = [r for r in records if r.get("output") and len(r["objects"]) >= 2]
    return (good + [r for r in records if r not in good])[:n]


def plot_steps(records: Sequence[Mapping], pool_dir, path: Path, n: int = 4) -> Path:
    from PIL import Image

    shown = pick(records, n)
    fig, axes = plt.subplots(len(shown), 3, figsize=(17, 4.2 * len(shown)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.9]})
    for row, r in zip(axes, shown):
        with Image.open(Path(pool_dir) / r["file_name"]) as im:
            img = np.asarray(im.convert("RGB"))
        ax = row[0]
        ax.imshow(img)
        for b in r.get("proposal_boxes", []):
            ax.add_patch(patches.Rectangle(b[:2], b[2], b[3], fill=False, lw=0.8, ec="white", alpha=0.8))
        ax.set_title(f"{r['file_name']}: {r['proposals']} regions proposed", fontsize=9)
        ax = row[1]
        ax.imshow(img)
        for o in r["objects"]:
            c = CLASS_COLOURS.get(region_class(o["name"]), "grey")
            b = o["box"]
            ax.add_patch(patches.Rectangle(b[:2], b[2], b[3], fill=False, lw=1.8, ec=c))
            ax.text(b[0], b[1] - 1, f"{o['id']} {o['name']} {o['similarity']:.2f}", color="white", fontsize=7,
                    bbox={"fc": c, "ec": "none", "pad": 0.5})
        d = r.get("dropped", {})
        ax.set_title(f"named {len(r['objects'])}; dropped: no match {d.get('no_match', 0)}, "
                     f"background {d.get('background', 0)}, duplicate {d.get('duplicate', 0)}", fontsize=9)
        for a in row[:2]:
            a.axis("off")
        ax = row[2]
        ax.axis("off")
        o0 = r["objects"][0] if r["objects"] else None
        out = r.get("output") or {}
        parts = []
        if o0:
            parts.append(f"[knowledge] '{o0['name']}' -> {o0.get('doc_id')} (score {o0.get('doc_score')}): "
                         + _wrap(o0.get("description") or "(nothing found)", 110, 2))
        parts.append("[raw caption] " + _wrap(r.get("caption", ""), 110, 3))
        if out:
            parts.append("[Q general perception] " + _wrap(out["general_perception"], 110, 4))
            if o0:
                parts.append(f"[Q region {o0['id']}] " + _wrap(out["region_perception"][o0["id"]], 110, 2))
            parts.append("[Q driving suggestion] " + _wrap(out["driving_suggestion"], 110, 2))
        else:
            parts.append("(the writer gave no valid answer: left out)")
        ax.text(0, 1, "\n\n".join(parts), va="top", ha="left", fontsize=7.5, family="monospace",
                transform=ax.transAxes)
    fig.suptitle("Synthesis step by step: proposals -> named by CLIP retrieval -> description -> caption -> QA pairs")
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_funnel(card: Mapping, path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 3.8))
    d = card["regions_dropped"]
    names = ["proposed", "no match", "background", "duplicate", "named"]
    vals = [card["regions_proposed"], d["no_match"], d["background"], d["duplicate"], card["regions_named"]]
    a1.barh(names[::-1], vals[::-1], color=["tab:green", "tab:grey", "tab:grey", "tab:grey", "tab:blue"])
    for i, v in enumerate(vals[::-1]):
        a1.text(v, i, f" {v}", va="center", fontsize=8)
    a1.set_title(f"regions over {card['images_in']} images")
    qa = card["qa_pairs"]
    per = qa["region_per_class"]
    a2.bar(list(per), list(per.values()), color=[CLASS_COLOURS.get(c, "grey") for c in per])
    a2.set_title(f"{qa['total']} QA pairs ({card['ratio_to_train']}x Train's {card['train_qa_pairs']}): "
                 f"general {qa['general_perception']}, driving {qa['driving_suggestion']}, region per class:", fontsize=9)
    a2.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_quality(quality: Mapping, path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    pc = quality["named_objects"]["per_class"]
    x = np.arange(len(CLASSES))
    for off, k, c in ((-0.2, "precision", "tab:blue"), (0.2, "recall", "tab:orange")):
        a1.bar(x + off, [pc[cl][k] or 0 for cl in CLASSES], 0.4, label=k, color=c)
    for i, cl in enumerate(CLASSES):
        a1.text(i, 1.02, f"n={pc[cl]['tp'] + pc[cl]['fn']}", ha="center", fontsize=7)
    ov = quality["named_objects"]["overall"]
    a1.set_xticks(x, CLASSES, rotation=30, fontsize=8)
    a1.set_ylim(0, 1.1)
    a1.legend(fontsize=8)
    a1.set_title(f"named objects vs the hidden scene graphs (IoU>=0.5, same class): "
                 f"P {ov['precision']:.2f}, R {ov['recall']:.2f}", fontsize=9)
    ans = quality["answers"]
    tasks = [t for t in ("general_perception", "region_perception", "driving_suggestion") if ans[t]["judged"]]
    a2.bar(range(len(tasks)), [ans[t]["score_100"] for t in tasks], color="tab:purple", label="synthetic answer")
    a2.plot(range(len(tasks)), [ans[t]["truth_score_100"] for t in tasks], "k_", ms=30, label="the truth's own text")
    a2.set_xticks(range(len(tasks)), [t.replace("_", "\n") for t in tasks], fontsize=8)
    a2.set_ylim(0, 105)
    a2.set_title("judge score against the hidden truth (0-100)", fontsize=9)
    a2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return runs.save_figure(fig, path)


def figures_from_run(run_dir, stage: str = "synthesis") -> list[Path]:
    sd = runs.resolve_run_dir(run_dir) / stage
    if not (sd / "card.json").exists():
        return []
    card = runs.read_json(sd / "card.json")
    fd = sd / "figures"
    out = [plot_funnel(card, fd / "funnel.png")]
    records = runs.read_jsonl(sd / "records.jsonl")
    if Path(card["pool"]).is_dir():
        out.append(plot_steps(records, card["pool"], fd / "steps.png"))
    q = runs.read_json(sd / "quality.json")
    if q:
        out.append(plot_quality(q, fd / "quality.png"))
    return out
