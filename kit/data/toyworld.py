"""The toy world: a seeded procedural generator of driving scenes, written in the EXACT BDD-OIA and
CODA-LM layouts so that the real loaders are the ones exercised.

A scene is a scene graph (kit.data.scenes: sampled from a seed, with BDD-OIA's labels); its texts
come from kit.data.scene_text (a generic caption, CODA-LM's texts) and kit.data.render draws it with
PIL. This file writes the splits and reads back what the tiny models pretrain on. Everything is a
deterministic function of (seed, split, index): the same settings give the same bytes, and a split
whose files exist and whose `toy/meta.json` records the same settings is skipped on a rerun.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from kit.data import DataError
from kit.data.render import render_scene
from kit.data.scene_text import GENERAL_KEYS, REGION_NAME, caption, coda_annotation
from kit.data.scenes import file_name_for, labels, sample_scene
from kit.labels import (
    ACTION_PROMPT,
    ACTION_TEXTS,
    ANSWER_PROMPT,
    DESCRIBE_PROMPT,
    N_REASONS,
    REASONS,
    format_action_answer,
    format_answer,
)
from kit.runs import file_mode, read_json, read_jsonl, write_json, write_jsonl

TOY_VERSION = 1
BDD_SPLITS = ("train", "val", "test")
CODA_SPLITS = ("Train", "Val", "Test", "Mini")
# --- writers -----------------------------------------------------------------------------------

def _settings_hash(d: Mapping) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _save_jpeg(img, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())
    os.close(fd)
    try:
        img.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _meta(root: Path) -> dict:
    return read_json(root / "toy" / "meta.json", {}) or {}


def _split_current(root: Path, kind: str, split: str, h: str, files: list[Path]) -> bool:
    m = _meta(root)
    return (m.get("kind") == kind and (m.get("splits") or {}).get(split, {}).get("hash") == h
            and all(f.exists() for f in files))


def _mark_split(root: Path, kind: str, split: str, h: str, info: dict) -> None:
    m = _meta(root)
    if m.get("kind") != kind:
        m = {"kind": kind, "version": TOY_VERSION, "splits": {}}
    m.setdefault("splits", {})[split] = {"hash": h, **info}
    write_json(root / "toy" / "meta.json", m)


def _toy(cfg: Mapping, key: str, default: Any) -> Any:
    v = cfg.get(key, default)
    return default if v is None else v


def _scene_plan(seed: int, split: str, n: int, balance: str, ccr: float) -> list[dict]:
    """n graphs; scene i < 21 is rejection-sampled until it carries reason i, so every reason (hence
    every action) occurs in every split of 21 or more scenes; the rest follow the balance freely.
    (File names are hashes, so the forced scenes are spread through the sorted split.)"""
    return [sample_scene(seed, split, i, balance, ccr, want_reason=i if i < N_REASONS else None) for i in range(n)]


def generate_bdd_oia(root: str | os.PathLike, cfg: Mapping, *, progress: bool = True) -> dict:
    """Write the toy world in the BDD-OIA layout under `root` (params `data.toy`). Idempotent:
    returns {split: {"samples", "skipped": bool, "seconds"}}."""
    from tqdm.auto import tqdm

    root = Path(root)
    seed, W, H = int(_toy(cfg, "seed", 0)), int(_toy(cfg, "width", 192)), int(_toy(cfg, "height", 128))
    frames, q = int(_toy(cfg, "frames", 1)), int(_toy(cfg, "jpeg_quality", 90))
    balance, ccr = str(_toy(cfg, "balance", "uniform")), float(_toy(cfg, "corner_case_rate", 0.15))
    conf_rate = float(_toy(cfg, "confusing_rate", 0.0))
    if frames < 1:
        raise DataError(f"params data.toy.frames: expected an integer >= 1, got {frames}")
    out = {}
    for split, n in (cfg.get("splits") or {}).items():
        n = int(n)
        settings = {"version": TOY_VERSION, "seed": seed, "W": W, "H": H, "frames": frames, "q": q, "balance": balance,
                    "ccr": ccr, "conf": conf_rate, "n": n, "split": split}
        h = _settings_hash(settings)
        ann = [root / f"{split}_25k_images_actions.json", root / f"{split}_25k_images_reasons.json",
               root / "toy" / f"scenes_{split}.jsonl"]
        if _split_current(root, "bdd_oia", split, h, ann):
            out[split] = {"samples": n, "skipped": True, "seconds": 0.0}
            continue
        t0 = time.perf_counter()
        graphs = _scene_plan(seed, split, n, balance, ccr)
        images, annotations, reasons, side = [], [], [], []
        for i, g in enumerate(tqdm(graphs, desc=f"toy BDD-OIA {split}", disable=not progress)):
            fn = file_name_for(seed, split, i)
            stem = Path(fn).stem
            for k in range(frames - 1, -1, -1):  # earlier frames first; k = frames back from the last
                img, objs = render_scene(g, W, H, frame_back=k)
                path = root / "lastframe" / "data" / fn if k == 0 else root / "frames" / stem / f"{frames - 1 - k}.jpg"
                _save_jpeg(img, path, q)
            a, r = labels(g)
            cat = list(a)
            rng = random.Random(f"conf:{seed}:{split}:{i}")
            if conf_rate > 0 and i >= N_REASONS and rng.random() < conf_rate:
                cat = cat + [1]  # BDD-OIA's "confusing" flag: the loader drops these (counted)
            images.append({"file_name": fn, "id": i})
            annotations.append({"category": cat})
            reasons.append({"file_name": fn, "reason": r})
            side.append({"file_name": fn, "caption": caption(g), "actions": a, "reasons": r, "graph": g})
        images.sort(key=lambda d: d["file_name"])  # ids keep pointing at annotations[id]
        reasons.sort(key=lambda d: d["file_name"])
        write_jsonl(ann[2], side)
        write_json(ann[0], {"images": images, "annotations": annotations})
        write_json(ann[1], reasons)
        dt = time.perf_counter() - t0
        _mark_split(root, "bdd_oia", split, h, {"samples": n, "settings": settings})
        out[split] = {"samples": n, "skipped": False, "seconds": round(dt, 3)}
    return out


def coda_names(split: str, i: int, n_val: int) -> tuple[str, str]:
    """(json path relative to root, image path relative to root) of toy CODA-LM sample i of split."""
    if split == "Train":
        num = f"{i + 1:04d}"
        return f"CODA-LM/Train/val_{num}.json", f"val/images/{num}.jpg"
    if split in ("Val", "Mini"):  # Mini is a subset of Val: same images
        num = f"{i + 1:04d}"
    elif split == "Test":
        num = f"{n_val + i + 1:04d}"
    else:
        raise DataError(f"CODA-LM split {split!r}: expected one of {', '.join(CODA_SPLITS)}")
    return f"CODA-LM/{split}/test_{num}.json", f"test/images/{num}.jpg"


def generate_coda_lm(root: str | os.PathLike, cfg: Mapping, *, progress: bool = True) -> dict:
    """Write the toy world in the CODA-LM layout under `root` (params `data.toy`, `coda_splits`)."""
    from tqdm.auto import tqdm

    root = Path(root)
    seed, W, H = int(_toy(cfg, "seed", 0)), int(_toy(cfg, "width", 192)), int(_toy(cfg, "height", 128))
    q = int(_toy(cfg, "jpeg_quality", 90))
    balance = str(_toy(cfg, "balance", "uniform"))
    ccr = float(_toy(cfg, "coda_corner_case_rate", 0.6))
    sizes = {k: int(v) for k, v in (cfg.get("coda_splits") or {}).items()}
    for k in sizes:
        if k not in CODA_SPLITS:
            raise DataError(f"params data.toy.coda_splits: unknown split {k!r}; expected {', '.join(CODA_SPLITS)}")
    n_val = sizes.get("Val", 0)
    if sizes.get("Mini", 0) > n_val:
        raise DataError(f"params data.toy.coda_splits.Mini: expected <= Val ({n_val}) since Mini is a subset of Val, "
                        f"got {sizes['Mini']}")
    out = {}
    for split in [s for s in CODA_SPLITS if s in sizes]:
        n = sizes[split]
        settings = {"version": TOY_VERSION, "seed": seed, "W": W, "H": H, "q": q, "balance": balance, "ccr": ccr,
                    "n": n, "n_val": n_val, "split": split}
        h = _settings_hash(settings)
        names = [coda_names(split, i, n_val) for i in range(n)]
        files = [root / j for j, _ in names] + [root / "toy" / f"scenes_{split}.jsonl"]
        if _split_current(root, "coda_lm", split, h, files):
            out[split] = {"samples": n, "skipped": True, "seconds": 0.0}
            continue
        t0 = time.perf_counter()
        scene_split = "Val" if split == "Mini" else split
        side = []
        for i in tqdm(range(n), desc=f"toy CODA-LM {split}", disable=not progress):
            g = sample_scene(seed, f"coda:{scene_split}", i, balance, ccr)
            jrel, irel = names[i]
            img, objs = render_scene(g, W, H)
            if split != "Mini" or not (root / irel).exists():
                _save_jpeg(img, root / irel, q)
            write_json(root / jrel, coda_annotation(g, objs))
            side.append({"file_name": Path(irel).name, "json": jrel, "caption": caption(g), "graph": g})
        write_jsonl(root / "toy" / f"scenes_{split}.jsonl", side)
        _mark_split(root, "coda_lm", split, h, {"samples": n, "settings": settings})
        out[split] = {"samples": n, "skipped": False, "seconds": round(time.perf_counter() - t0, 3)}
    if int(_toy(cfg, "coda_unlabeled", 0)):
        out["Unlabeled"] = generate_coda_pool(root, cfg, progress=progress)
    return out


POOL_DIR = "unlabeled/images"          # the unlabeled pool, images only (paper A's "unlabeled driving images")
HIDDEN_POOL = "toy/hidden/unlabeled.jsonl"   # its scene graphs: read by measurements only (kit.synth.quality)


def generate_coda_pool(root: str | os.PathLike, cfg: Mapping, *, progress: bool = True) -> dict:
    """The toy world's unlabeled pool for Track A's synthesis (params `data.toy.coda_unlabeled`
    images): `<root>/unlabeled/images/<00001>.jpg`, drawn like CODA-LM's scenes (same corner-case
    rate) but from their own seed stream. Each scene's graph, drawn objects and the CODA-LM JSON it
    would have had are kept aside in `<root>/toy/hidden/unlabeled.jsonl`, for measuring the
    synthetic data against the truth; the synthesis itself never opens that file."""
    from tqdm.auto import tqdm

    root = Path(root)
    n = int(_toy(cfg, "coda_unlabeled", 0))
    if n < 0:
        raise DataError(f"params data.toy.coda_unlabeled: expected an integer >= 0, got {n}")
    seed, W, H = int(_toy(cfg, "seed", 0)), int(_toy(cfg, "width", 192)), int(_toy(cfg, "height", 128))
    q = int(_toy(cfg, "jpeg_quality", 90))
    balance, ccr = str(_toy(cfg, "balance", "uniform")), float(_toy(cfg, "coda_corner_case_rate", 0.6))
    settings = {"version": TOY_VERSION, "seed": seed, "W": W, "H": H, "q": q, "balance": balance, "ccr": ccr, "n": n}
    h = _settings_hash(settings)
    names = [f"{i + 1:05d}.jpg" for i in range(n)]
    hidden = root / HIDDEN_POOL
    if _split_current(root, "coda_lm", "Unlabeled", h, [hidden] + [root / POOL_DIR / f for f in names]):
        return {"samples": n, "skipped": True, "seconds": 0.0}
    t0 = time.perf_counter()
    side = []
    for i in tqdm(range(n), desc="toy unlabeled pool", disable=not progress):
        g = sample_scene(seed, "coda:Unlabeled", i, balance, ccr)
        img, objs = render_scene(g, W, H)
        _save_jpeg(img, root / POOL_DIR / names[i], q)
        side.append({"file_name": names[i], "graph": g, "objects": [{**o, "category_name": REGION_NAME[o["kind"]]}
                                                                    for o in objs],
                     "annotation": coda_annotation(g, objs)})
    write_jsonl(hidden, side)
    _mark_split(root, "coda_lm", "Unlabeled", h, {"samples": n, "settings": settings})
    return {"samples": n, "skipped": False, "seconds": round(time.perf_counter() - t0, 3)}


# --- readers for the tiny models' pretraining ---------------------------------------------------

def load_captions(root: str | os.PathLike, split: str) -> dict[str, str]:
    """file_name -> generic caption, from the toy sidecar `<root>/toy/scenes_<split>.jsonl`."""
    path = Path(root) / "toy" / f"scenes_{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: missing; captions exist only for toy-world data (generate it with notebook 00)")
    out = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        if "file_name" not in rec or "caption" not in rec:
            raise DataError(f"{path}:{i}: expected fields 'file_name' and 'caption'")
        out[rec["file_name"]] = rec["caption"]
    return out


def text_corpus(root: str | os.PathLike) -> list[str]:
    """Every text the toy world writes (captions, answers, CODA-LM texts, label and prompt texts),
    for training the tiny tokenizer. `root` is a toy BDD-OIA or CODA-LM root, or a folder holding
    them (e.g. run_dir/prepare/data)."""
    root = Path(root)
    texts: list[str] = list(ACTION_TEXTS) + list(REASONS) + [ANSWER_PROMPT, DESCRIBE_PROMPT, ACTION_PROMPT]
    sidecars = sorted(root.glob("toy/scenes_*.jsonl")) + sorted(root.glob("*/toy/scenes_*.jsonl"))
    if not sidecars:
        raise DataError(f"{root}: no toy/scenes_<split>.jsonl found; expected a toy-world root (run notebook 00)")
    for sc in sidecars:
        for rec in read_jsonl(sc):
            texts.append(rec["caption"])
            if "actions" in rec:
                texts.append(format_answer(rec["actions"], rec["reasons"]))
                texts.append(format_action_answer(rec["actions"]))
            if "json" in rec:
                p = sc.parent.parent / rec["json"]
                if p.exists():
                    d = json.loads(p.read_text())
                    gp = d["general_perception"]
                    for k in GENERAL_KEYS:
                        for item in gp.get(k, []):
                            texts += [item["description"], item["explanation"]]
                    texts.append(gp["description and explanation"])
                    texts += [r["description and explanation"] for r in d["region_perception"].values()]
                    texts.append(d["driving_suggestion"])
    return texts
