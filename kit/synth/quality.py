"""How good the synthetic data is, measured where only the toy world can: its pool's scene graphs
(kept aside in `<coda_lm_root>/toy/hidden/unlabeled.jsonl`; the synthesis never reads them).

- each step (step_scores): the proposals' box recall, naming's recall on the objects the proposals
  cover, and the named regions split into right, misnamed, loose boxes and background.
- named objects: a named region is a true positive when it overlaps an unmatched hidden object by
  IoU >= 0.5 and names the same CODA-LM class (the official evaluator's seven); precision and recall
  per class, plus the share whose exact category name is right.
- answers: the judge rates each synthetic answer with the hidden truth's text as its reference
  (general perception and driving suggestion per image; region perception per named region that
  matches a hidden object), and rates the truth's text against itself the same way; reported is the
  share of synthetic answers rated at least as high as the truth, and the mean rating (0-100).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from kit.data.coda_lm import CLASSES, SUMMARY_KEY, region_class
from kit.data.toyworld import HIDDEN_POOL
from kit.judge.request import JudgeRequest
from kit.runs import read_jsonl
from kit.synth.regions import iou

IOU = 0.5
LOOSE = 0.1  # a named region overlapping a hidden object at least this much, but below IOU, is a loose box
NAMED_KINDS = ("right", "misnamed", "loose", "background")


def hidden_pool(coda_root) -> dict[str, dict] | None:
    """file_name -> hidden record, or None where there is no toy pool (real data)."""
    p = Path(coda_root) / HIDDEN_POOL
    return {r["file_name"]: r for r in read_jsonl(p)} if p.is_file() else None


def match(named: Sequence[Mapping], truth: Sequence[Mapping]) -> list[tuple[int, int | None]]:
    """Greedy one-to-one matching by IoU >= 0.5 (best pairs first): [(named index, truth index or None)]."""
    pairs = sorted(((iou(n["box"], t["box"]), i, j) for i, n in enumerate(named) for j, t in enumerate(truth)),
                   reverse=True)
    used_n, used_t, out = set(), set(), {}
    for v, i, j in pairs:
        if v < IOU:
            break
        if i not in used_n and j not in used_t:
            used_n.add(i)
            used_t.add(j)
            out[i] = j
    return [(i, out.get(i)) for i in range(len(named))]


def _pr(tp: int, fp: int, fn: int) -> dict:
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "tp": tp, "fp": fp, "fn": fn}


def named_object_scores(records: Sequence[Mapping], hidden: Mapping[str, Mapping]) -> dict:
    """Precision and recall of the named objects against the hidden ones, per class and overall."""
    tp, fp, fn = Counter(), Counter(), Counter()
    exact = located = 0
    for r in records:
        truth = hidden[r["file_name"]]["objects"]
        t_cls = [region_class(t["category_name"]) for t in truth]
        hit = set()
        for i, j in match(r["objects"], truth):
            c = region_class(r["objects"][i]["name"]) or "unscored"
            if j is not None and t_cls[j] == c:
                tp[c] += 1
                hit.add(j)
                located += 1
                exact += r["objects"][i]["name"] == truth[j]["category_name"]
            else:
                fp[c] += 1
        for j, c in enumerate(t_cls):
            if j not in hit:
                fn[c or "unscored"] += 1
    per_class = {c: _pr(tp[c], fp[c], fn[c]) for c in CLASSES}
    out = {"per_class": per_class, "overall": _pr(sum(tp.values()), sum(fp.values()), sum(fn.values())),
           "exact_name_share": exact / located if located else None}
    return out


def step_scores(records: Sequence[Mapping], hidden: Mapping[str, Mapping]) -> dict:
    """Where the named objects' errors come from, step by step against the hidden objects:

    - regions: proposals per image, and box recall: the share of hidden objects that some proposal
      covers at IoU >= 0.5 (per class and overall), the ceiling for everything after it;
    - naming, given a covered object: the share of covered hidden objects that end up named with
      their own class (naming's recall where the proposals did their part);
    - named regions, split by what went wrong: right (the class of the hidden object it covers at
      IoU >= 0.5), misnamed (it covers one of another class), loose (it overlaps a hidden object, but
      at IoU < 0.5: part of an object, or an object with much around it; or a second region on an
      object another already covers), background (IoU < 0.1 with every hidden object: road, lane
      paint or sky that naming let through). right / all is the precision of named_object_scores.
    """
    covered, hit, total = Counter(), Counter(), Counter()
    kinds, n_props = Counter(), 0
    for r in records:
        truth = hidden[r["file_name"]]["objects"]
        boxes = r.get("proposal_boxes") or []
        n_props += len(boxes)
        t_cls = [region_class(t["category_name"]) or "unscored" for t in truth]
        named_right = set()
        for i, j in match(r["objects"], truth):
            c = region_class(r["objects"][i]["name"]) or "unscored"
            if j is None:
                best = max((iou(r["objects"][i]["box"], t["box"]) for t in truth), default=0.0)
                kinds["loose" if best >= LOOSE else "background"] += 1
            elif t_cls[j] == c:
                kinds["right"] += 1
                named_right.add(j)
            else:
                kinds["misnamed"] += 1
        for j, (t, c) in enumerate(zip(truth, t_cls)):
            total[c] += 1
            if any(iou(b, t["box"]) >= IOU for b in boxes):
                covered[c] += 1
                hit[c] += j in named_right

    def share(a, b):
        return a / b if b else None

    classes = [c for c in CLASSES if total[c]]
    n_named = sum(kinds.values())
    return {
        "regions": {"images": len(records), "proposals_per_image": share(n_props, len(records)),
                    "box_recall": share(sum(covered.values()), sum(total.values())),
                    "box_recall_per_class": {c: share(covered[c], total[c]) for c in classes},
                    "hidden_objects": sum(total.values())},
        "naming_given_covered": {"recall": share(sum(hit.values()), sum(covered.values())),
                                 "per_class": {c: share(hit[c], covered[c]) for c in classes}},
        "named": {"n": n_named, **{k: kinds[k] for k in NAMED_KINDS},
                  **{f"{k}_share": share(kinds[k], n_named) for k in NAMED_KINDS}},
    }


def answer_quality(records: Sequence[Mapping], hidden: Mapping[str, Mapping], judge, questions: Mapping[str, str],
                   progress: bool = True) -> dict:
    """Per task: items judged, mean rating (0-100) of the synthetic answers against the hidden truth,
    the truth's own rating, and the share of synthetic answers rated at least as high as the truth."""
    items: dict[str, list[tuple[str, str]]] = {t: [] for t in ("general_perception", "region_perception",
                                                                  "driving_suggestion")}
    unmatched = 0
    for r in records:
        if r.get("output") is None:
            continue
        ann = hidden[r["file_name"]]["annotation"]
        items["general_perception"].append((ann["general_perception"][SUMMARY_KEY], r["output"]["general_perception"]))
        items["driving_suggestion"].append((ann["driving_suggestion"], r["output"]["driving_suggestion"]))
        truth = list(ann["region_perception"].values())
        for i, j in match(r["objects"], truth):
            if j is None:
                unmatched += 1
            else:
                items["region_perception"].append((truth[j][SUMMARY_KEY],
                                                   r["output"]["region_perception"][r["objects"][i]["id"]]))
    out = {}
    for task, pairs in items.items():
        reqs = [JudgeRequest("rate", task, ref, prediction=syn, question=questions[task]) for ref, syn in pairs]
        own = [JudgeRequest("rate", task, ref, prediction=ref, question=questions[task]) for ref, _ in pairs]
        got = judge.judge(reqs + own, desc=f"judge synthetic: {task}", progress=progress)
        syn, tru = got[:len(pairs)], got[len(pairs):]
        both = [(a.verdict, b.verdict) for a, b in zip(syn, tru) if a.verdict is not None and b.verdict is not None]
        out[task] = {"n": len(pairs), "judged": len(both),
                     "score_100": 10 * sum(a for a, _ in both) / len(both) if both else None,
                     "truth_score_100": 10 * sum(b for _, b in both) / len(both) if both else None,
                     "share_at_least_truth": sum(a >= b for a, b in both) / len(both) if both else None}
    out["region_perception"]["named_without_hidden_object"] = unmatched
    return out
