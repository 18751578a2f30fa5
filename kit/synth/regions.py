"""Region proposals: boxes of candidate objects in an image (paper A, step 2's segmentation).

- `classical` (the offline default): scikit-image's graph-based segmentation (felzenszwalb), one box
  per segment from `regionprops`, filtered by area and fill.
- `sam`: segment-anything's `SamAutomaticMaskGenerator` with the user's checkpoint (vit_b/l/h); its
  masks go through the same filters.
- a detector's boxes (`synth.regions.detections`, a JSONL the user's detector wrote) join either;
  they carry the detector's names and skip naming by retrieval (paper A's step 1).

A proposal is `{"box": [x, y, w, h], "area": pixels, "source": "classical"|"sam"|"detector", ...}`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from kit.data import DataError
from kit.runs import read_jsonl

BACKENDS = ("classical", "sam")


def iou(a, b) -> float:
    """Intersection over union of two xywh boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _keep(area: float, fill: float, box, W: int, H: int, cfg: Mapping) -> bool:
    w, h = box[2], box[3]
    return (w > 0 and h > 0 and area >= float(cfg["min_area"]) and w * h <= float(cfg["max_area_frac"]) * W * H
            and fill >= float(cfg["min_fill"]))


class ClassicalProposer:
    """felzenszwalb segments -> regionprops boxes."""

    name = "classical"

    def __init__(self, cfg: Mapping):
        self.cfg = cfg

    def __call__(self, img) -> list[dict]:
        from PIL import Image
        from skimage.measure import regionprops
        from skimage.segmentation import felzenszwalb

        W, H = img.size
        # segment a copy whose longer side is at most max_side (cost grows with the pixels; boxes are
        # scaled back), with min_size in the copy's pixels
        f = min(1.0, float(self.cfg.get("max_side") or max(W, H)) / max(W, H))
        small = img.convert("RGB") if f == 1.0 else img.convert("RGB").resize((round(W * f), round(H * f)), Image.BILINEAR)
        seg = felzenszwalb(np.asarray(small), scale=float(self.cfg["scale"]), sigma=float(self.cfg["sigma"]),
                           min_size=max(1, int(self.cfg["min_size"] * f * f)))
        out = []
        for r in regionprops(seg + 1):  # label 0 is background to regionprops
            y0, x0, y1, x1 = r.bbox
            box = [int(round(x0 / f)), int(round(y0 / f)), int(round((x1 - x0) / f)), int(round((y1 - y0) / f))]
            area, fill = float(r.area) / (f * f), float(r.area) / ((x1 - x0) * (y1 - y0))
            if _keep(area, fill, box, W, H, self.cfg):
                out.append({"box": box, "area": int(area), "source": self.name})
        return out


class SamProposer:
    """segment-anything's automatic mask generator; masks -> boxes (SAM's own xywh `bbox`)."""

    name = "sam"

    def __init__(self, cfg: Mapping, device: str = "cpu", model=None):
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

        kind = str(cfg.get("sam_model") or "vit_b")
        if kind not in ("vit_b", "vit_l", "vit_h"):
            raise ValueError(f"params synth.regions.sam_model: expected vit_b, vit_l or vit_h, got {kind!r}")
        if model is None:  # `model`: a built SAM (the tests pass one with random weights)
            ck = cfg.get("sam_checkpoint")
            if not ck:
                raise FileNotFoundError(
                    "params synth.regions.sam_checkpoint: the sam backend needs a SAM checkpoint for "
                    f"{kind} (e.g. sam_vit_h_4b8939.pth from the segment-anything release); set its path, "
                    "or use synth.regions.backend=classical")
            ck = Path(ck).expanduser()
            if not ck.is_file():
                raise FileNotFoundError(f"params synth.regions.sam_checkpoint: {ck} does not exist; expected the "
                                        f"SAM {kind} checkpoint file")
            model = sam_model_registry[kind](checkpoint=str(ck))
        model.to(device)
        self.cfg = cfg
        self.generator = SamAutomaticMaskGenerator(
            model, points_per_side=int(cfg["sam_points_per_side"]), pred_iou_thresh=float(cfg["sam_pred_iou_thresh"]),
            stability_score_thresh=float(cfg["sam_stability_score_thresh"]))

    def __call__(self, img) -> list[dict]:
        a = np.asarray(img.convert("RGB"))
        H, W = a.shape[:2]
        out = []
        for m in self.generator.generate(a):
            box = [int(round(v)) for v in m["bbox"]]
            if box[2] > 0 and box[3] > 0 and _keep(float(m["area"]), m["area"] / (box[2] * box[3]), box, W, H, self.cfg):
                out.append({"box": box, "area": int(m["area"]), "source": self.name,
                            "predicted_iou": round(float(m["predicted_iou"]), 4)})
        return out


def make_proposer(cfg: Mapping, device: str = "cpu"):
    backend = cfg.get("backend")
    if backend == "classical":
        return ClassicalProposer(cfg)
    if backend == "sam":
        return SamProposer(cfg, device)
    raise ValueError(f"params synth.regions.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")


def load_detections(path) -> dict[str, list[dict]]:
    """file_name -> the detector's objects, from `synth.regions.detections` (validated row by row)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"params synth.regions.detections: {path} does not exist; expected a JSONL of "
                                '{"file_name", "objects": [{"box": [x, y, w, h], "name", "score"}]}')
    out: dict[str, list[dict]] = {}
    for i, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("file_name"), str) or not isinstance(row.get("objects"), list):
            raise DataError(f"{path}:{i}: expected fields 'file_name' (string) and 'objects' (list)")
        objs = []
        for j, o in enumerate(row["objects"]):
            box = o.get("box") if isinstance(o, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                    and box[2] > 0 and box[3] > 0):
                raise DataError(f"{path}:{i}: field 'objects[{j}].box': expected [x, y, w, h] with w, h > 0, got {box!r}")
            if not isinstance(o.get("name"), str) or not o["name"]:
                raise DataError(f"{path}:{i}: field 'objects[{j}].name': expected the object's category name")
            objs.append({"box": [float(v) for v in box], "name": o["name"], "score": float(o.get("score", 1.0)),
                         "source": "detector"})
        out[row["file_name"]] = objs
    return out
