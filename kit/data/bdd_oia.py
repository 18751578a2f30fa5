"""BDD-OIA in its original layout:

    <root>/lastframe/data/<file_name>            (file_name ends in .jpg; .jpg is added if not)
    <root>/{split}_25k_images_actions.json       {"images": [{"file_name", "id"}], "annotations": [{"category"}]}
    <root>/{split}_25k_images_reasons.json       [{"file_name", "reason": [21 ints]}]
    <root>/frames/<stem>/<i>.jpg                 (kit extension, toy world only: earlier frames of the clip)

`annotations[k]` belongs to the image whose id == k; reasons are matched by file_name (the official
loaders align both lists by sorting on file_name). A 5-element category whose 5th entry is 1 marks
a "confusing" sample: dropped and counted. Images missing on disk are skipped and counted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kit.data import DataError
from kit.labels import N_ACTIONS, N_REASONS

SPLITS = ("train", "val", "test")


@dataclass
class BddSample:
    id: str
    file_name: str
    image_path: Path
    frame_paths: list[Path]
    actions: list[int]
    reasons: list[int]

    def load_images(self) -> list:
        """All frames of the clip as RGB PIL images (the last is the annotated frame)."""
        from PIL import Image

        out = []
        for p in self.frame_paths:
            try:
                with Image.open(p) as im:
                    out.append(im.convert("RGB"))
            except OSError as e:
                raise DataError(f"{p}: unreadable or truncated image ({e}); expected a JPEG") from None
        return out


@dataclass
class BddSplit:
    split: str
    root: Path
    samples: list[BddSample]
    stats: dict = field(default_factory=dict)


def read_json_file(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); expected JSON") from None


def _labels(vec, n: int, path: Path, where: str, field_name: str, allow=()) -> list[int]:
    if not isinstance(vec, list) or not (len(vec) == n or len(vec) in allow):
        got = f"{len(vec)} values" if isinstance(vec, list) else type(vec).__name__
        expected = f"a list of {n}" + (f" (or {', '.join(map(str, allow))})" if allow else "") + " ints 0/1"
        raise DataError(f"{path}: {where}: field '{field_name}': expected {expected}, got {got}")
    try:
        out = [int(v) for v in vec]
    except (TypeError, ValueError):
        raise DataError(f"{path}: {where}: field '{field_name}': expected ints 0/1, got {vec!r}") from None
    if any(v not in (0, 1) for v in out):
        raise DataError(f"{path}: {where}: field '{field_name}': expected ints 0/1, got {vec!r}")
    return out


def load_split(root, split: str, max_samples: int | None = None) -> BddSplit:
    """Read one split. Raises DataError (file, field, expectation) on malformed annotations."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"BDD-OIA split {split!r}: expected one of {', '.join(SPLITS)}")
    apath = root / f"{split}_25k_images_actions.json"
    rpath = root / f"{split}_25k_images_reasons.json"
    actions = read_json_file(apath)
    reasons = read_json_file(rpath)
    if not isinstance(actions, dict) or not isinstance(actions.get("images"), list) \
            or not isinstance(actions.get("annotations"), list):
        raise DataError(f"{apath}: expected an object with lists 'images' and 'annotations'")
    if not isinstance(reasons, list):
        raise DataError(f"{rpath}: expected a JSON list of {{'file_name', 'reason'}} records")
    anns = actions["annotations"]
    reason_by_name: dict[str, list[int]] = {}
    for k, rec in enumerate(reasons):
        if not isinstance(rec, dict) or "file_name" not in rec or "reason" not in rec:
            raise DataError(f"{rpath}: record {k}: expected fields 'file_name' and 'reason'")
        reason_by_name[rec["file_name"]] = _labels(rec["reason"], N_REASONS, rpath,
                                                   f"record {k} ({rec['file_name']})", "reason")
    stats = {"samples": 0, "images_listed": len(actions["images"]), "skipped_missing_image": 0,
             "dropped_confusing": 0, "multi_frame": 0}
    samples: list[BddSample] = []
    for k, im in enumerate(sorted(actions["images"], key=lambda d: str(d.get("file_name", "")))):
        if not isinstance(im, dict) or "file_name" not in im or "id" not in im:
            raise DataError(f"{apath}: images[{k}]: expected fields 'file_name' and 'id'")
        fn, iid = str(im["file_name"]), im["id"]
        if not isinstance(iid, int) or not 0 <= iid < len(anns):
            raise DataError(f"{apath}: images entry {fn!r}: field 'id' = {iid!r} has no annotation; expected an "
                            f"integer index into 'annotations' (0..{len(anns) - 1})")
        ann = anns[iid]
        if not isinstance(ann, dict) or "category" not in ann:
            raise DataError(f"{apath}: annotations[{iid}] (image {fn!r}): expected a field 'category'")
        cat = _labels(ann["category"], N_ACTIONS, apath, f"annotations[{iid}] (image {fn!r})", "category", allow=(5,))
        if fn not in reason_by_name:
            raise DataError(f"{rpath}: no record with file_name {fn!r} (listed in {apath.name}); expected one "
                            "'reason' entry per image")
        if len(cat) == 5:
            if cat[4] == 1:
                stats["dropped_confusing"] += 1
                continue
            cat = cat[:4]
        name = fn if fn.lower().endswith(".jpg") else fn + ".jpg"
        img = root / "lastframe" / "data" / name
        if not img.exists():
            stats["skipped_missing_image"] += 1
            continue
        stem = Path(name).stem
        fdir = root / "frames" / stem
        extra = sorted(fdir.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem) if fdir.is_dir() else []
        if extra:
            stats["multi_frame"] += 1
        samples.append(BddSample(id=stem, file_name=fn, image_path=img, frame_paths=[*extra, img],
                                 actions=cat, reasons=reason_by_name[fn]))
    if max_samples is not None and len(samples) > max_samples:
        samples = samples[:int(max_samples)]
        stats["capped_to"] = int(max_samples)
    stats["samples"] = len(samples)
    stats["reasons_without_image"] = len(set(reason_by_name) - {str(i.get("file_name")) for i in actions["images"]})
    return BddSplit(split=split, root=root, samples=samples, stats=stats)
