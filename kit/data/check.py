"""`kit data check`: load a split through the real loader, open every image, return a JSON summary.

Raises DataError (file, field, expectation) on malformed input: invalid JSON, a label vector of the
wrong length, an id with no annotation, an unreadable or truncated image, a region box outside its
image, a CODA-LM file whose image is missing.
"""
from __future__ import annotations

from pathlib import Path

from kit.data import DataError, bdd_oia, coda_lm
from kit.labels import ACTIONS, N_ACTIONS, N_REASONS, REASONS


def _open_image(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decodes the whole file: a truncated JPEG fails here
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e}); expected a complete JPEG") from None


def check_dataset(kind: str, root, split: str, *, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (kind {kind})")
    if kind in ("bdd-oia", "bdd_oia"):
        ds = bdd_oia.load_split(root, split)
        sizes = set()
        act = [0] * N_ACTIONS
        rea = [0] * N_REASONS
        for s in tqdm(ds.samples, desc=f"check BDD-OIA {split}", disable=not progress):
            for p in s.frame_paths:
                sizes.add(_open_image(p))
            act = [a + b for a, b in zip(act, s.actions)]
            rea = [a + b for a, b in zip(rea, s.reasons)]
        return {"kind": "bdd-oia", "root": str(root), "split": split, **ds.stats,
                "image_sizes": sorted([list(x) for x in sizes])[:10],
                "action_counts": dict(zip(ACTIONS, act)),
                "reason_counts": {f"{i} {n}": c for i, (n, c) in enumerate(zip(REASONS, rea))},
                "no_action": sum(1 for s in ds.samples if not any(s.actions))}
    if kind in ("coda-lm", "coda_lm"):
        ds = coda_lm.load_split(root, split)
        for s in tqdm(ds.samples, desc=f"check CODA-LM {split}", disable=not progress):
            W, H = _open_image(s.image_path)
            for r in s.regions:
                x, y, w, h = r["box"]
                if x + w > W + 0.5 or y + h > H + 0.5:
                    raise DataError(f"{s.json_path}: field 'region_perception.{r['region_id']}.box' = {r['box']}: "
                                    f"outside its image {s.image_path.name} ({W}x{H}); expected x+w <= {W}, y+h <= {H}")
        return {"kind": "coda-lm", "root": str(root), "split": split, **ds.stats}
    raise DataError(f"dataset kind {kind!r}: expected 'bdd-oia' or 'coda-lm'")
