"""CODA-LM in its original layout:

    <root>/val/images/*.jpg          <root>/test/images/*.jpg
    <root>/CODA-LM/Train/val_*.json  <root>/CODA-LM/Val/test_*.json
    <root>/CODA-LM/Test/test_*.json  <root>/CODA-LM/Mini/test_*.json

`CODA-LM/Test/test_0001.json` describes `test/images/0001.jpg`. Keys keep CODA-LM's spelling
exactly (mixed spaces and underscores). A JSON whose image is missing is an error (not skipped).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kit.data import DataError
from kit.data.bdd_oia import read_json_file

SPLITS = ("Train", "Val", "Test", "Mini")
GENERAL_KEYS = ["vehicles", "vulnerable_road_users", "traffic signs", "traffic lights", "traffic cones",
                "barriers", "other objects"]
SUMMARY_KEY = "description and explanation"

# CODA's region category names -> the 7 classes region perception is scored by. This is the list of
# CODA-LM's official evaluator (evaluation/stage3_eval_batch.py, `convert_label`), matched exactly as
# it matches them (case and spelling, its "suitcace" included). A name outside the list is left
# unscored by the official script, silently; the kit counts such regions as "unscored" instead.
CLASSES = ["vehicle", "vru", "traffic_sign", "traffic_light", "traffic_cone", "barrier", "miscellaneous"]
_OFFICIAL_CLASS_NAMES = {
    "vehicle": ["car", "truck", "tram", "tricycle", "bus", "trailer", "construction_vehicle", "recreational_vehicle"],
    "vru": ["pedestrian", "cyclist", "bicycle", "moped", "motorcycle", "stroller", "wheelchair", "cart"],
    "traffic_sign": ["warning_sign", "traffic_sign"],
    "traffic_light": ["traffic_light"],
    "traffic_cone": ["traffic_cone"],
    "barrier": ["barrier", "bollard"],
    "miscellaneous": ["dog", "cat", "sentry_box", "traffic_box", "traffic_island", "debris", "suitcace", "dustbin",
                      "concrete_block", "machinery", "chair", "phone_booth", "basket", "cardboard", "carton", "garbage",
                      "garbage_bag", "plastic_bag", "stone", "tire", "misc"],
}
REGION_CLASSES: dict[str, str] = {n: c for c, names in _OFFICIAL_CLASS_NAMES.items() for n in names}
UNSCORED = "unscored"


def splits_present(root: Path) -> list[str]:
    """The official splits whose annotation folder `<root>/CODA-LM/<split>` exists, in SPLITS order."""
    return [s for s in SPLITS if (Path(root) / "CODA-LM" / s).is_dir()]


def region_class(category_name: str) -> str | None:
    """One of CLASSES for a CODA category name, or None where the official evaluator scores no class."""
    return REGION_CLASSES.get(str(category_name))


@dataclass
class CodaSample:
    id: str
    json_path: Path
    image_path: Path
    general: dict[str, list[dict]]
    general_summary: str
    regions: list[dict]
    suggestion: str

    def load_image(self):
        from PIL import Image
        try:
            with Image.open(self.image_path) as im:
                return im.convert("RGB")
        except OSError as e:
            raise DataError(f"{self.image_path}: unreadable or truncated image ({e}); expected a JPEG") from None


@dataclass
class CodaSplit:
    split: str
    root: Path
    samples: list[CodaSample]
    stats: dict = field(default_factory=dict)


def image_for(root: Path, json_path: Path) -> Path:
    """`CODA-LM/<Split>/test_0001.json` -> `<root>/test/images/0001.jpg`."""
    stem = json_path.stem
    if "_" not in stem:
        raise DataError(f"{json_path}: file name: expected '<val|test>_<number>.json'")
    prefix, num = stem.split("_", 1)
    return root / prefix / "images" / f"{num}.jpg"


def read_annotation(path: Path) -> dict:
    """One per-image CODA-LM JSON file, checked to hold the three tasks' fields."""
    d = read_json_file(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a JSON object with 'general_perception', 'region_perception', "
                        "'driving_suggestion'")
    for key in ("general_perception", "region_perception", "driving_suggestion"):
        if key not in d:
            raise DataError(f"{path}: missing field '{key}'")
    return d


def parse_file(root: Path, path: Path) -> CodaSample:
    d = read_annotation(path)
    gp = d["general_perception"]
    if not isinstance(gp, dict):
        raise DataError(f"{path}: field 'general_perception': expected an object")
    general = {}
    for k, v in gp.items():
        if k == SUMMARY_KEY:
            continue
        if not isinstance(v, list) or not all(isinstance(x, dict) and "description" in x and "explanation" in x for x in v):
            raise DataError(f"{path}: field 'general_perception.{k}': expected a list of "
                            "{'description', 'explanation'} objects")
        general[k] = v
    rp = d["region_perception"]
    if not isinstance(rp, dict):
        raise DataError(f"{path}: field 'region_perception': expected an object keyed by region id")
    regions = []
    for rid, reg in rp.items():
        where = f"region_perception.{rid}"
        if not isinstance(reg, dict):
            raise DataError(f"{path}: field '{where}': expected an object")
        box = reg.get("box")
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise DataError(f"{path}: field '{where}.box': expected [x, y, w, h] (4 numbers), got {box!r}")
        if box[2] <= 0 or box[3] <= 0 or box[0] < 0 or box[1] < 0:
            raise DataError(f"{path}: field '{where}.box': expected x, y >= 0 and w, h > 0, got {box!r}")
        for key in ("category_name", SUMMARY_KEY):
            if not isinstance(reg.get(key), str):
                raise DataError(f"{path}: field '{where}.{key}': expected a string")
        regions.append({"region_id": str(rid), "box": [float(v) for v in box], "category_name": reg["category_name"],
                        "text": reg[SUMMARY_KEY]})
    if not isinstance(d["driving_suggestion"], str):
        raise DataError(f"{path}: field 'driving_suggestion': expected a string")
    image = image_for(root, path)
    if not image.exists():
        raise DataError(f"{path}: its image {image} is missing; expected it beside the annotation "
                        f"(CODA-LM/<Split>/{path.stem}.json -> {image.relative_to(root)})")
    return CodaSample(id=path.stem, json_path=path, image_path=image, general=general,
                      general_summary=str(gp.get(SUMMARY_KEY, "")), regions=regions,
                      suggestion=d["driving_suggestion"])


def load_split(root, split: str, max_samples: int | None = None) -> CodaSplit:
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"CODA-LM split {split!r}: expected one of {', '.join(SPLITS)}")
    folder = root / "CODA-LM" / split
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; expected the CODA-LM layout <root>/CODA-LM/{split}/*.json")
    files = sorted(folder.glob("*.json"))
    if max_samples is not None:
        files = files[:int(max_samples)]
    samples = [parse_file(root, p) for p in files]
    by_class: dict[str, int] = {c: 0 for c in (*CLASSES, UNSCORED)}
    for s in samples:
        for r in s.regions:
            by_class[region_class(r["category_name"]) or UNSCORED] += 1
    stats = {"samples": len(samples), "regions": sum(len(s.regions) for s in samples), "regions_per_class": by_class,
             "general_items": {k: sum(len(s.general.get(k, [])) for s in samples) for k in GENERAL_KEYS}}
    return CodaSplit(split=split, root=root, samples=samples, stats=stats)
