"""Naming by retrieval (paper A, step 2): each proposed region's crop, embedded by the kit's CLIP,
looks up its nearest entries in a visual-text database; the entries vote for its name.

The database is built from CODA-LM Train, the only labelled data Track A has:
- one entry per labelled region crop (its `category_name`);
- one per category name, the CLIP text embedding of "a photo of a <name>";
- `background_per_image` crops of proposals lying outside every labelled region of a Train image,
  labelled `background`: a region whose vote says background is dropped (counted), which is how
  the pipeline tells road, sky and lane paint from objects without a second model.

A region is dropped when its best similarity is below `threshold` (matches nothing), when it votes
background, or when it overlaps a better-matched named region by more than `nms_iou`. Every drop
is counted by reason.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kit.runs import atomic_write_text, read_jsonl, write_jsonl
from kit.synth.regions import iou

BACKGROUND = "background"
TEXT_TEMPLATE = "a photo of a {name}"

# a small colour vocabulary for the region's main colour: the "small recognition model" of paper A's
# step 1 at its simplest (nearest palette colour of the crop's central pixels)
PALETTE = {"red": (220, 40, 40), "orange": (240, 130, 20), "yellow": (240, 210, 20), "green": (40, 190, 70),
           "blue": (40, 70, 200), "white": (235, 235, 235), "black": (30, 30, 35), "silver": (170, 170, 180),
           "brown": (130, 85, 50), "magenta": (220, 40, 200), "cyan": (20, 200, 230)}


def main_colour(img, box) -> str:
    """The palette colour nearest to the median of the box's central half."""
    x, y, w, h = box
    c = img.crop((int(x + w / 4), int(y + h / 4), int(max(x + w / 4 + 1, x + 3 * w / 4)),
                  int(max(y + h / 4 + 1, y + 3 * h / 4))))
    m = np.median(np.asarray(c.convert("RGB")).reshape(-1, 3), axis=0)
    return min(PALETTE, key=lambda k: float(((np.array(PALETTE[k]) - m) ** 2).sum()))


def crop_pixels(bundle, img, boxes: Sequence, pad: float) -> torch.Tensor:
    """The CLIP input of each box's crop (with `pad` context), as one batch [n, 3, h, w].

    torchvision's roi_align resizes every crop straight from the image tensor (bilinear, to the CLIP's
    input size, squashed like the tiny CLIP's own preprocess); cropping and resizing each crop in PIL
    costs more than the tiny CLIP's forward pass. The database and the queries go the same way."""
    from torchvision.ops import roi_align

    cfg = bundle.preprocess_cfg
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    W, H = img.width, img.height
    rois = []
    for bx, by, bw, bh in boxes:
        px, py = bw * pad, bh * pad
        rois.append([0.0, max(0.0, bx - px), max(0.0, by - py), min(W, bx + bw + px), min(H, by + bh + py)])
    out = roi_align(x, torch.tensor(rois, dtype=torch.float32), output_size=bundle.image_hw, spatial_scale=1.0,
                    sampling_ratio=1, aligned=True)
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))[None, :, None, None]
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))[None, :, None, None]
    return (out - mean) / std


def lamp_colour(img, box) -> str | None:
    """The lit lamp of a traffic light: the hue of the box's bright, saturated pixels (red, yellow,
    green), None when none is lit. A housing is dark, so its median colour says nothing."""
    x, y, w, h = box
    hsv = np.asarray(img.crop((int(x), int(y), int(x + w + 0.999), int(y + h + 0.999))).convert("HSV"), dtype=float)
    lit = hsv[(hsv[..., 1] > 128) & (hsv[..., 2] > 150)]
    if len(lit) < 3:
        return None
    hue = float(np.median(lit[:, 0])) * 360 / 255
    return "red" if hue < 25 or hue > 330 else "yellow" if hue < 70 else "green" if hue < 170 else None


@torch.no_grad()
def embed_pixels(bundle, pixels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Normalized CLIP image embeddings of a batch of CLIP inputs, as float32 [n, d]."""
    outs = [bundle.encode_images(pixels[i:i + batch_size]).float().cpu().numpy()
            for i in range(0, len(pixels), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 1), dtype=np.float32)


@dataclass
class VisualTextDB:
    embeddings: np.ndarray        # [n, d], normalized
    labels: list[str]             # category name or "background" per entry
    kinds: list[str]              # "crop" | "text" | "background"

    @property
    def label_array(self) -> np.ndarray:
        if getattr(self, "_labels_np", None) is None:
            self._labels_np = np.asarray(self.labels)
        return self._labels_np

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".embeddings.tmp.npy"
        np.save(tmp, self.embeddings)
        tmp.replace(folder / "embeddings.npy")
        write_jsonl(folder / "entries.jsonl", [{"label": l, "kind": k} for l, k in zip(self.labels, self.kinds)])
        atomic_write_text(folder / ".complete", "")

    @classmethod
    def load(cls, folder: Path) -> "VisualTextDB | None":
        if not (folder / ".complete").exists():
            return None
        e = read_jsonl(folder / "entries.jsonl")
        return cls(np.load(folder / "embeddings.npy"), [r["label"] for r in e], [r["kind"] for r in e])

    def stats(self) -> dict:
        return {"entries": len(self.labels), "by_kind": dict(Counter(self.kinds)),
                "names": len({l for l, k in zip(self.labels, self.kinds) if k != "background"})}


def build_database(bundle, train_samples, proposer, cfg: Mapping, *, seed: int = 0, progress: bool = True) -> VisualTextDB:
    """The visual-text database from CODA-LM Train samples (kit.data.coda_lm.CodaSample)."""
    rng = random.Random(seed)
    pad = float(cfg["crop_pad"])
    pixels, labels, kinds = [], [], []
    n_bg = cfg.get("background_per_image")
    for s in tqdm(train_samples, desc="database: Train crops", disable=not progress, leave=False):
        img = s.load_image()
        boxes = [r["box"] for r in s.regions]
        bg = [p["box"] for p in proposer(img) if max([iou(p["box"], b) for b in boxes] + [0.0]) < 0.1]
        if n_bg is not None:
            bg = rng.sample(bg, min(len(bg), int(n_bg)))
        if boxes or bg:
            pixels.append(crop_pixels(bundle, img, boxes + bg, pad))
        labels += [r["category_name"] for r in s.regions] + [BACKGROUND] * len(bg)
        kinds += ["crop"] * len(boxes) + ["background"] * len(bg)
    emb = embed_pixels(bundle, torch.cat(pixels), int(cfg["batch_size"])) if pixels else np.zeros((0, 1), np.float32)
    names = sorted({l for l, k in zip(labels, kinds) if k == "crop"})
    if names:
        with torch.no_grad():
            t = bundle.encode_texts([TEXT_TEMPLATE.format(name=n.replace("_", " ")) for n in names]).float().cpu().numpy()
        emb = np.concatenate([emb, t])
        labels += names
        kinds += ["text"] * len(names)
    return VisualTextDB(emb.astype(np.float32), labels, kinds)


def embed_regions(bundle, imgs: Sequence, proposals: Sequence[Sequence[Mapping]], cfg: Mapping) -> list[np.ndarray]:
    """The CLIP embeddings of every image's proposals still to be named (not a detector's), in one
    batched pass over all the images (the tiny CLIP is cheap per crop, costly per call)."""
    todo = [[p["box"] for p in ps if p.get("source") != "detector"] for ps in proposals]
    px = [crop_pixels(bundle, im, boxes, float(cfg["crop_pad"])) for im, boxes in zip(imgs, todo) if boxes]
    e = embed_pixels(bundle, torch.cat(px), int(cfg["batch_size"])) if px else None
    out, i = [], 0
    for boxes in todo:
        out.append(e[i:i + len(boxes)] if boxes else np.zeros((0, 1), np.float32))
        i += len(boxes)
    return out


def name_regions(db: VisualTextDB, bundle, img, proposals: Sequence[Mapping], cfg: Mapping,
                 embeddings: np.ndarray | None = None) -> tuple[list[dict], Counter]:
    """(named regions, drop counts). Named: the proposal plus `name`, `similarity` (best entry's
    cosine), `votes` ({name: count} among the k nearest) and `colour`; sorted by similarity.
    `embeddings`: the proposals' (embed_regions), computed here when not given."""
    dropped: Counter = Counter()
    fixed = [dict(p) for p in proposals if p.get("source") == "detector"]  # named by the detector already
    props = [p for p in proposals if p.get("source") != "detector"]
    named = []
    if props:
        e = embed_regions(bundle, [img], [props], cfg)[0] if embeddings is None else embeddings
        S = e @ db.embeddings.T
        k = max(1, int(cfg["k"]))
        labels = db.label_array
        for i, p in enumerate(props):
            top = np.argpartition(-S[i], min(k, S.shape[1]) - 1)[:k] if S.shape[1] > k else np.arange(S.shape[1])
            top = top[np.argsort(-S[i, top])]
            best = float(S[i, top[0]])
            votes = Counter(labels[top].tolist())
            name = max(votes, key=lambda n: (votes[n], -min(j for j, t in enumerate(top) if labels[t] == n)))
            if best < float(cfg["threshold"]):
                dropped["no_match"] += 1
            elif name == BACKGROUND:
                dropped["background"] += 1
            else:
                named.append({**p, "name": str(name), "similarity": round(best, 4), "votes": dict(votes)})
    for d in fixed:
        d.setdefault("similarity", d.get("score", 1.0))
    named = sorted(fixed + named, key=lambda r: -r["similarity"])
    kept: list[dict] = []
    for r in named:
        if any(iou(r["box"], q["box"]) > float(cfg["nms_iou"]) for q in kept):
            dropped["duplicate"] += 1
        else:
            kept.append(r)
    for r in kept:
        r["colour"] = (lamp_colour(img, r["box"]) or "unlit") if r["name"] == "traffic_light" else main_colour(img, r["box"])
    return kept, dropped
