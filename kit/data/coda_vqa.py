"""CODA-LM's three tasks as VQA, built as CODA-LM's own converter (`convert2vqa.py`) builds them,
and the submission files its official evaluators read.

- general perception: one question per image; reference `general_perception["description and explanation"]`;
- driving suggestion: one question per image; reference `driving_suggestion`;
- region perception: one question per region, asked on a copy of the image with the region's box
  drawn as a red rectangle of width 2, `<split dir>/images_w_boxes/<num>_object_<id>.jpg`;
  reference `region_perception[id]["description and explanation"]`.

Question ids count from 0 per task in the converter's order: JSON files sorted by name, regions in
the order of their keys. The `image` field is the converter's relative path (`test/images/0001.jpg`,
`test/images_w_boxes/0001_object_1.jpg`).

Question texts are parameters (`coda.questions`, the kit's own wording by default); `coda.vqa_anno`
points at a folder of the official `vqa_anno/*.jsonl` to ask theirs instead.

Submission (what every Track A model writes, and what CODA-LM's scripts score unchanged):
`<stage>/coda_lm/{general_perception,region_perception,driving_suggestion}_answer.jsonl`, rows
`{"question_id", "image", "question", "answer"}`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from kit import dist
from kit.data import DataError
from kit.data.coda_lm import read_annotation
from kit.runs import write_jsonl

TASKS = ("general_perception", "region_perception", "driving_suggestion")
SUBMISSION_FIELDS = ("question_id", "image", "question", "answer")
ANSWER_FILE = "{task}_answer.jsonl"


@dataclass(frozen=True)
class VqaItem:
    task: str
    question_id: int
    image: str              # the converter's relative path (the submission's `image`)
    question: str
    answer: str | None      # the reference (None where the split hides it)
    sample_id: str          # the JSON's stem, e.g. test_0001
    region_id: str | None = None
    category_name: str | None = None
    image_path: Path | None = None   # where the (boxed) image is on disk, when built for generation

    @property
    def id(self) -> str:
        return f"{self.task}:{self.question_id}"

    def load_image(self):
        from PIL import Image

        if self.image_path is None:
            raise DataError(f"{self.id}: built without images (kit.data.coda_vqa.build_vqa(..., images=True) makes them)")
        with Image.open(self.image_path) as im:
            return im.convert("RGB")


def _names(json_name: str) -> tuple[str, str]:
    """`test_0001.json` -> ("test", "0001"), as the converter splits it."""
    stem = json_name[:-5] if json_name.endswith(".json") else json_name
    if "_" not in stem:
        raise DataError(f"{json_name}: file name: expected '<val|test>_<number>.json'")
    prefix, num = stem.split("_", 1)
    return prefix, num


def build_vqa(json_dir, questions: Mapping[str, str], *, with_answers: bool = True,
              images: bool = False, boxes_root=None, max_samples: int | None = None) -> dict[str, list[VqaItem]]:
    """The three tasks of one split folder (`<root>/CODA-LM/<Split>`), in the converter's order.

    `images=True` also resolves each item's image on disk and draws the boxed region copies under
    `boxes_root` (default: the dataset root, where the converter writes them) when they are missing.
    `max_samples` keeps the first images (sorted), as the data loaders' caps do.
    """
    json_dir = Path(json_dir)
    if not json_dir.is_dir():
        raise DataError(f"{json_dir}: folder not found; expected a CODA-LM split folder of per-image JSON files")
    missing_q = [t for t in TASKS if not isinstance(questions.get(t), str) or not questions.get(t)]
    if missing_q:
        raise DataError(f"params coda.questions: expected a question text for {', '.join(missing_q)}")
    root = json_dir.parent.parent
    boxes_root = Path(boxes_root) if boxes_root else root
    files = sorted(p.name for p in json_dir.iterdir() if p.name.endswith(".json"))
    if max_samples is not None:
        files = files[:int(max_samples)]
    out: dict[str, list[VqaItem]] = {t: [] for t in TASKS}
    for name in files:
        path = json_dir / name
        d = read_annotation(path)
        prefix, num = _names(name)
        img_rel = os.path.join(prefix, "images", f"{num}.jpg")
        img_path = root / img_rel if images else None
        if images and not img_path.is_file():
            raise DataError(f"{path}: its image {img_path} is missing")
        sid = path.stem
        gp = d["general_perception"]
        if not isinstance(gp, dict) or not isinstance(gp.get("description and explanation", ""), str):
            raise DataError(f"{path}: field 'general_perception.description and explanation': expected a string")
        for task, ref in (("general_perception", gp.get("description and explanation")),
                          ("driving_suggestion", d["driving_suggestion"])):
            out[task].append(VqaItem(task, len(out[task]), img_rel, questions[task], ref if with_answers else None,
                                     sid, image_path=img_path))
        rp = d["region_perception"]
        if not isinstance(rp, dict):
            raise DataError(f"{path}: field 'region_perception': expected an object keyed by region id")
        for rid, reg in rp.items():
            where = f"region_perception.{rid}"
            for key in ("box", "category_name", "description and explanation"):
                if key not in reg:
                    raise DataError(f"{path}: field '{where}.{key}' is missing")
            rel = os.path.join(prefix, "images_w_boxes", f"{num}_object_{rid}.jpg")
            boxed = None
            if images:
                boxed = boxes_root / rel
                if not boxed.is_file():
                    draw_box(img_path, reg["box"], boxed, where=f"{path}: field '{where}.box'")
            out["region_perception"].append(VqaItem(
                "region_perception", len(out["region_perception"]), rel, questions["region_perception"],
                reg["description and explanation"] if with_answers else None, sid, str(rid),
                str(reg["category_name"]), boxed))
    return out


def draw_box(image_path: Path, box: Sequence[float], out_path: Path, where: str = "box") -> Path:
    """A copy of the image with the xywh box as a red rectangle of width 2 (the converter's drawing),
    written atomically."""
    from PIL import Image, ImageDraw

    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise DataError(f"{where}: expected [x, y, w, h], got {box!r}")
    x, y, w, h = box
    with Image.open(image_path) as im:
        img = im.convert("RGB")
    ImageDraw.Draw(img).rectangle([x, y, x + w, y + h], outline="red", width=2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.jpg")
    img.save(tmp, format="JPEG")
    os.replace(tmp, out_path)
    return out_path


def official_questions(items: dict[str, list[VqaItem]], vqa_anno_dir) -> dict[str, list[VqaItem]]:
    """The same items with the question texts of the official `vqa_anno/<task>.jsonl` files.
    Their rows must be the converter's (same ids, same images), or this says which row differs."""
    from dataclasses import replace

    d = Path(vqa_anno_dir).expanduser()
    out = {}
    for task, its in items.items():
        path = d / f"{task}.jsonl"
        if not path.is_file():
            raise DataError(f"params coda.vqa_anno: {path} not found; expected CODA-LM's vqa_anno/{task}.jsonl")
        rows = {}
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                r = json.loads(line)
                if "question_id" not in r or "question" not in r or "image" not in r:
                    raise DataError(f"{path}:{i}: expected fields 'question_id', 'image', 'question'")
                rows[int(r["question_id"])] = r
        new = []
        for it in its:
            r = rows.get(it.question_id)
            if r is None or os.path.normpath(r["image"]) != os.path.normpath(it.image):
                raise DataError(f"{path}: question_id {it.question_id}: expected image {it.image!r}, "
                                f"got {None if r is None else r['image']!r} (is it the same split?)")
            new.append(replace(it, question=r["question"]))
        out[task] = new
    return out


def vqa_for(P: Mapping, json_dir, **kw) -> dict[str, list[VqaItem]]:
    """build_vqa with the profile's question texts (`coda.questions`, or `coda.vqa_anno`)."""
    c = P["coda"]
    if kw.get("images") and dist.num_processes() > 1:  # the main process draws the missing box images
        dist.on_main(lambda: build_vqa(json_dir, c["questions"], **kw) and None)
    items = build_vqa(json_dir, c["questions"], **kw)
    return official_questions(items, c["vqa_anno"]) if c.get("vqa_anno") else items


# --- submission files -------------------------------------------------------------------------

def answer_path(pred_dir, task: str) -> Path:
    return Path(pred_dir) / ANSWER_FILE.format(task=task)


def write_answers(pred_dir, task: str, items: Sequence[VqaItem], answers: Sequence[str]) -> Path:
    if len(items) != len(answers):
        raise ValueError(f"write_answers({task}): {len(items)} items but {len(answers)} answers")
    return write_jsonl(answer_path(pred_dir, task),
                       [{"question_id": it.question_id, "image": it.image, "question": it.question, "answer": a}
                        for it, a in zip(items, answers)])


def read_answers(pred_dir, tasks: Sequence[str] = TASKS) -> dict[str, list[dict]]:
    """{task: rows sorted by question_id} from a submission folder; a malformed row names its file and line."""
    out = {}
    for task in tasks:
        path = answer_path(pred_dir, task)
        if not path.is_file():
            raise DataError(f"{path}: not found; expected CODA-LM's submission file {path.name} in {pred_dir}")
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: invalid JSON: {e.msg}") from None
            bad = [f for f in SUBMISSION_FIELDS if f not in r]
            if bad:
                raise DataError(f"{path}:{i}: missing field(s) {bad}; expected {list(SUBMISSION_FIELDS)}")
            if not isinstance(r["answer"], str):
                raise DataError(f"{path}:{i}: field 'answer': expected a string, got {type(r['answer']).__name__}")
            rows.append(r)
        rows.sort(key=lambda r: int(r["question_id"]))
        out[task] = rows
    return out
