"""The unlabeled pool through every synthesis step, chunk by chunk, into a CODA-LM split.

    records = synthesize(P, run_dir, steps, pool, work_dir)      # resumable: one file per finished chunk
    write_split(records, out_root)                               # <out_root>/CODA-LM/Train/synth_<n>.json + images
    card = dataset_card(records, ...)                            # what each step kept and dropped, and its time

A record per image: the proposals counted, the named regions (name, similarity, votes, colour, place,
the retrieved description and its score), the drops by reason, the raw caption, the writer's output
(None where the LLM never answered validly) and the seconds of each step. Chunks are written
atomically once every step has run on them, under a folder named by the synthesis key, so a rerun
after a crash redoes only the chunks that were missing, and a changed setting starts a new folder.
"""
from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from kit import dist, runs
from kit.data import DataError, coda_lm_root
from kit.data.coda_lm import CLASSES, GENERAL_KEYS, SUMMARY_KEY, region_class
from kit.data.coda_vqa import TASKS
from kit.data.toyworld import POOL_DIR
from kit.eval.generate import generate
from kit.synth.naming import embed_regions, name_regions
from kit.synth.writer import place

STEPS = ("regions", "naming", "knowledge", "caption", "writer")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SPLIT_PREFIX = "synth"          # CODA-LM/Train/synth_00001.json -> synth/images/00001.jpg
GENERAL_KEY_OF_CLASS = {"vehicle": "vehicles", "vru": "vulnerable_road_users", "traffic_sign": "traffic signs",
                        "traffic_light": "traffic lights", "traffic_cone": "traffic cones", "barrier": "barriers",
                        "miscellaneous": "other objects"}


def pool_images(P: Mapping, run_dir) -> list[Path]:
    """The unlabeled images: `synth.pool_dir`, else the toy world's pool; sorted, capped by `synth.max_images`."""
    s = P["synth"]
    d = Path(s["pool_dir"]).expanduser() if s.get("pool_dir") else coda_lm_root(P["data"], run_dir) / POOL_DIR
    if not d.is_dir():
        if s.get("pool_dir"):
            why = "params synth.pool_dir"
        elif P["data"].get("coda_lm_root"):  # CODA-LM's download holds no unlabeled pool: only the toy world has one
            why = (f"params synth.pool_dir is null, and data.coda_lm_root {P['data']['coda_lm_root']} is real CODA-LM, "
                   "which has none: set synth.pool_dir to your unlabeled driving images")
        else:
            why = "params synth.pool_dir is null and the toy world has no pool: data.toy.coda_unlabeled"
        raise DataError(f"{d}: no folder of unlabeled images ({why}); expected a folder of .jpg/.png driving images")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if s.get("max_images") is not None:
        files = files[:int(s["max_images"])]
    if not files:
        raise DataError(f"{d}: no .jpg/.jpeg/.png images; expected the unlabeled pool (params synth.pool_dir)")
    return files


@dataclass
class Steps:
    """What each step runs with. `captioner` is (model, processor) or None to skip captioning."""
    proposer: Any
    bundle: Any                   # the CLIP naming embeds with
    db: Any                       # naming.VisualTextDB
    kb: Any                       # knowledge.KnowledgeBase
    captioner: tuple | None
    writer: Any
    cfg: Mapping                  # params synth
    detections: dict = field(default_factory=dict)


def _open(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise DataError(f"{path}: unreadable image ({e}); expected a JPEG or PNG") from None


def process_chunk(steps: Steps, paths: Sequence[Path], progress: bool = False) -> list[dict]:
    """Every step on a few images; one record per image (see the module docstring)."""
    cfg = steps.cfg
    imgs = [_open(p) for p in paths]
    recs = [{"file_name": p.name, "width": im.width, "height": im.height, "seconds": {}} for p, im in zip(paths, imgs)]
    t = time.perf_counter()
    props = []
    for p, im in zip(paths, imgs):
        pr = steps.proposer(im) + [dict(d) for d in steps.detections.get(p.name, [])]
        props.append(pr)
    dt = (time.perf_counter() - t) / len(paths)
    for r, pr in zip(recs, props):
        r["proposals"] = len(pr)
        r["proposal_boxes"] = [p["box"] for p in pr]
        r["seconds"]["regions"] = dt
    t = time.perf_counter()
    embs = embed_regions(steps.bundle, imgs, props, cfg["naming"])
    for r, im, pr, e in zip(recs, imgs, props, embs):
        named, dropped = name_regions(steps.db, steps.bundle, im, pr, cfg["naming"], e)
        for i, o in enumerate(named, 1):
            o["id"] = str(i)
            o["place"] = place(o["box"], im.width, im.height, o["name"])
        r["objects"], r["dropped"] = named, dict(dropped)
    dt = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    min_score = float(cfg["knowledge"].get("min_score") or 0.0)
    for r in recs:
        r["seconds"]["naming"] = dt
        for o in r["objects"]:
            doc, score = steps.kb.search(o["name"], 1)[0]
            found = score > min_score
            o.update(description=doc["text"] if found else None, doc_id=doc["id"] if found else None, doc_score=score)
    dt = (time.perf_counter() - t) / len(paths)
    for r in recs:
        r["seconds"]["knowledge"] = dt
    caption_and_write(steps, imgs, recs, progress)
    return recs


def caption_and_write(steps: Steps, imgs: Sequence, recs: Sequence[dict], progress: bool = False) -> None:
    """The last two steps on records whose regions are named and described: the captioner's raw
    caption, then the writer's refined caption and QA pairs (in place; `seconds` updated)."""
    cfg = steps.cfg
    t = time.perf_counter()
    if steps.captioner is not None:
        model, processor = steps.captioner
        c = cfg["caption"]
        caps = generate(model, processor, [([im], c["prompt"]) for im in imgs], batch_size=int(c["batch_size"]),
                        max_new_tokens=int(c["max_new_tokens"]), progress=progress, desc="caption")
    else:
        caps = [""] * len(imgs)
    dt = (time.perf_counter() - t) / max(1, len(imgs))
    for r, cap in zip(recs, caps):
        r["seconds"]["caption"] = dt
        r["caption"] = cap
    t = time.perf_counter()
    outs = steps.writer.write_many(recs, progress=False)
    dt = (time.perf_counter() - t) / max(1, len(imgs))
    for r, o in zip(recs, outs):
        r["output"] = o
        r["seconds"]["writer"] = dt


def rewrite(steps: Steps, records: Sequence[Mapping], pool: Sequence[Path], work_dir: Path, *,
            desc: str = "rewrite") -> list[dict]:
    """SPIN's regeneration (paper A, Section 2.2): the caption and writer steps again on finished
    records, with `steps.captioner` now the current round's model; regions, names and descriptions
    are kept. Resumable chunk by chunk in `work_dir`, like `synthesize`."""
    by_name = {p.name: p for p in pool}

    def one(part: list[dict]) -> list[dict]:
        part = [dict(r, seconds=dict(r["seconds"])) for r in part]
        caption_and_write(steps, [_open(by_name[r["file_name"]]) for r in part], part)
        return part

    return _by_chunk(steps, list(records), work_dir, one, lambda r: r["file_name"], desc)


def synthesize(steps: Steps, pool: Sequence[Path], work_dir: Path, *, desc: str = "synthesis") -> list[dict]:
    """Records for the whole pool, from `work_dir`'s finished chunks plus the rest, processed now.
    Chunk i holds images [i*chunk_size, (i+1)*chunk_size) and is written once all its steps ran."""
    return _by_chunk(steps, list(pool), work_dir, lambda part: process_chunk(steps, part), lambda p: p.name, desc)


def writer_counts(work_dir: Path) -> dict:
    """The writer's counts (images, requests sent, cached, malformed, failed) summed over the finished
    chunks of `work_dir`: what writing that dataset took, the same whether this run wrote or reused them."""
    total: Counter = Counter()
    for f in sorted(Path(work_dir).glob("chunk_*.writer.json")):
        if f.with_name(f.name.replace(".writer.json", ".jsonl")).exists():
            total.update(runs.read_json(f) or {})
    return dict(sorted(total.items()))


def _by_chunk(steps: Steps, items: list, work_dir: Path, process: Callable[[list], list[dict]],
              name: Callable[[Any], str], desc: str) -> list[dict]:
    """`process` over `items` in chunks of `synth.chunk_size`, each chunk's records saved as
    `work_dir/chunk_<i>.jsonl` once done (a rerun reuses a chunk whose file names match). Under several
    processes each takes a block of chunks (kit.dist) and every process gets every record, in order;
    each chunk's writer counts are saved beside it (`writer_counts` sums them)."""
    n = max(1, int(steps.cfg["chunk_size"]))
    work_dir.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(items), n))
    mine = [starts[i] for i in dist.my_share(len(starts))]
    out: list[dict] = []
    with tqdm(total=len(items), desc=desc, disable=not dist.is_main()) as bar:
        for ci in mine:
            part = items[ci:ci + n]
            f = work_dir / f"chunk_{ci // n:05d}.jsonl"
            recs = runs.read_jsonl(f) if f.exists() else None
            if recs is None or [r["file_name"] for r in recs] != [name(x) for x in part]:
                was = dict(steps.writer.stats)
                recs = process(part)
                # what writing this chunk took (requests, cache hits, malformed answers): the dataset's
                # writer counts are the sum over its chunks, whichever run or process wrote each
                runs.write_json(f.with_suffix(".writer.json"), {k: v - was.get(k, 0) for k, v in
                                                                steps.writer.stats.items()}, every_rank=True)
                runs.write_jsonl(f, recs, every_rank=True)  # this process's chunk, last: it marks the chunk done
            out += recs
            bar.update(len(part) * dist.num_processes())
    return dist.gather_in_order(out)


# --- the CODA-LM split -------------------------------------------------------------------------

def _split_sentences(text: str) -> tuple[str, str]:
    import re

    parts = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def annotation(rec: Mapping) -> dict:
    """One CODA-LM JSON (exact key spelling) from a record with a writer output."""
    o = rec["output"]
    gp: dict[str, Any] = {k: [] for k in GENERAL_KEYS}
    regions = {}
    for obj in rec["objects"]:
        text = o["region_perception"][str(obj["id"])]
        d, e = _split_sentences(text)
        gp[GENERAL_KEY_OF_CLASS.get(region_class(obj["name"]) or "miscellaneous", "other objects")].append(
            {"description": d, "explanation": e})
        regions[str(obj["id"])] = {SUMMARY_KEY: text, "box": [int(round(v)) for v in obj["box"]],
                                   "category_name": obj["name"]}
    gp[SUMMARY_KEY] = o["general_perception"]
    return {"general_perception": gp, "region_perception": regions, "driving_suggestion": o["driving_suggestion"]}


def write_split(records: Sequence[Mapping], pool: Sequence[Path], out_root: Path) -> dict:
    """The synthetic set in CODA-LM's layout: `<out_root>/CODA-LM/Train/synth_<n>.json` and
    `<out_root>/synth/images/<n>.jpg` (a hard link to the pool image where the file system allows,
    else a copy; PNGs are converted). Written to a fresh folder, then moved into place."""
    from PIL import Image

    tmp = out_root.with_name(f".{out_root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "CODA-LM" / "Train").mkdir(parents=True)
    (tmp / SPLIT_PREFIX / "images").mkdir(parents=True)
    by_name = {p.name: p for p in pool}
    n = 0
    for rec in records:
        if rec.get("output") is None:
            continue
        n += 1
        num = f"{n:05d}"
        src, dst = by_name[rec["file_name"]], tmp / SPLIT_PREFIX / "images" / f"{num}.jpg"
        if src.suffix.lower() in (".jpg", ".jpeg"):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        else:
            with Image.open(src) as im:
                im.convert("RGB").save(dst, format="JPEG", quality=95)
        runs.write_json(tmp / "CODA-LM" / "Train" / f"{SPLIT_PREFIX}_{num}.json",
                        {**annotation(rec), "source_image": rec["file_name"]})
    if out_root.exists():
        shutil.rmtree(out_root)
    os.replace(tmp, out_root)
    return {"images": n}


def qa_counts(records: Sequence[Mapping]) -> dict:
    ok = [r for r in records if r.get("output") is not None]
    per_class = Counter(region_class(o["name"]) or "unscored" for r in ok for o in r["objects"])
    return {"general_perception": len(ok), "region_perception": sum(len(r["objects"]) for r in ok),
            "driving_suggestion": len(ok), "total": 2 * len(ok) + sum(len(r["objects"]) for r in ok),
            "region_per_class": {c: per_class.get(c, 0) for c in (*CLASSES, "unscored") if per_class.get(c, 0) or c in CLASSES}}


def dataset_card(records: Sequence[Mapping], *, train_qa: int, describe: Mapping, writer_stats: Mapping) -> dict:
    """Images in, regions proposed, named, dropped at each step, QA pairs per task and class, time per step."""
    dropped = Counter()
    for r in records:
        dropped.update(r.get("dropped") or {})
    named = sum(len(r["objects"]) for r in records)
    qa = qa_counts(records)
    secs = {s: round(sum(r["seconds"].get(s, 0.0) for r in records), 2) for s in STEPS}
    return {
        "images_in": len(records),
        "images_written": sum(1 for r in records if r.get("output") is not None),
        "images_without_answer": sum(1 for r in records if r.get("output") is None),
        "regions_proposed": sum(r["proposals"] for r in records),
        "regions_dropped": {"no_match": dropped.get("no_match", 0), "background": dropped.get("background", 0),
                            "duplicate": dropped.get("duplicate", 0)},
        "regions_named": named,
        "names": dict(Counter(o["name"] for r in records for o in r["objects"]).most_common()),
        "no_description": sum(1 for r in records for o in r["objects"] if not o.get("description")),
        "qa_pairs": qa,
        "train_qa_pairs": int(train_qa),
        "ratio_to_train": round(qa["total"] / train_qa, 2) if train_qa else None,
        "seconds_per_step": secs,
        "writer": dict(writer_stats),
        **dict(describe),
    }


def card_markdown(card: Mapping) -> str:
    qa = card["qa_pairs"]
    lines = ["# Synthetic CODA-LM split (paper A, Section 2.1)", "",
             f"- backends: {card.get('backends')}",
             f"- images in: {card['images_in']}; written: {card['images_written']}; no valid writer answer: "
             f"{card['images_without_answer']}",
             f"- regions proposed: {card['regions_proposed']}; named: {card['regions_named']}; dropped: "
             + ", ".join(f"{k} {v}" for k, v in card["regions_dropped"].items()),
             f"- named regions without a description found: {card['no_description']}",
             f"- QA pairs: {qa['total']} (" + ", ".join(f"{t} {qa[t]}" for t in TASKS) + f"); "
             f"{card['ratio_to_train']}x CODA-LM Train's {card['train_qa_pairs']}",
             "- region QA pairs per class: " + ", ".join(f"{c} {n}" for c, n in qa["region_per_class"].items()),
             "- seconds per step: " + ", ".join(f"{s} {v}" for s, v in card["seconds_per_step"].items()),
             f"- writer: {card.get('writer')}"]
    return "\n".join(lines) + "\n"
