"""Does a judge's rating follow correctness? A perturbation study on CODA-LM references.

For each image of a split, the reference is built from its annotated objects (the
`general_perception` lists: one description and explanation per object), and perturbed copies are
made whose correctness is known by construction: objects dropped (recall falls), objects from
another image added (precision falls), both. Their object-F1 against the reference is counted
from the construction, not read from the text, so the judge cannot grade its own homework.
The study reports the Spearman rank correlation between the judge's rating and that F1, and, for
driving suggestions, the ratings of intact against flipped advice (stop <-> go, left <-> right).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from kit.data.coda_lm import GENERAL_KEYS
from kit.judge.base import Judge
from kit.judge.request import JudgeRequest

_FLIPS = [(r"\bSlow down and stop\b", "Keep moving forward"), (r"\bKeep moving forward\b", "Slow down and stop"),
          (r"\bTurn left\b", "Turn right"), (r"\bTurn right\b", "Turn left"),
          (r"\bDo not move left\b", "Move left"), (r"\bDo not move right\b", "Move right")]


def flip_advice(text: str) -> str:
    """The opposite advice: each recognised recommendation swapped for its contrary, in one pass."""
    pattern = re.compile("|".join(f"({p})" for p, _ in _FLIPS))
    return pattern.sub(lambda m: next(r for (p, r), g in zip(_FLIPS, m.groups()) if g), text)


def _objects(d: dict) -> list[str]:
    gp = d["general_perception"]
    return [f"{o['description']} {o['explanation']}" for k in GENERAL_KEYS for o in gp.get(k, [])]


def perturbations(objs: list[str], others: list[str], rng: random.Random) -> list[tuple[str, list[str], float]]:
    """(name, object sentences, object-F1 against `objs`) for the intact text and its perturbations."""
    n = len(objs)
    out = [("intact", list(objs), 1.0)]
    for k in range(1, min(2, n) + 1):
        keep = rng.sample(objs, n - k)
        out.append((f"drop {k}", keep, 2 * (n - k) / (2 * n - k) if n - k else 0.0))
    for k in (1, 2):
        added = rng.sample(others, min(k, len(others)))
        m = len(added)
        if m:
            out.append((f"add {m}", objs + added, 2 * n / (2 * n + m)))
    if n >= 1 and others:
        keep = rng.sample(objs, n - 1) + rng.sample(others, 1)
        tp = n - 1
        out.append(("swap 1", keep, 2 * tp / (2 * tp + 2) if tp else 0.0))
    return out


def perturbation_study(json_dir, judge: Judge, *, seed: int = 0, max_images: int | None = None) -> dict:
    """Ratings of perturbed references against the originals, and their rank correlation with object-F1."""
    from scipy.stats import spearmanr

    rng = random.Random(seed)
    files = sorted(Path(json_dir).glob("*.json"))[:max_images]
    data = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    rows, reqs = [], []
    for i, d in enumerate(data):
        objs = _objects(d)
        if not objs:
            continue
        others = [o for j, e in enumerate(data) if j != i for o in _objects(e)]
        shuffled = list(objs)
        ref = " ".join(shuffled)
        for name, sents, f1 in perturbations(objs, others, rng):
            rng.shuffle(sents)
            rows.append({"image": files[i].stem, "task": "general_perception", "perturbation": name, "object_f1": f1})
            reqs.append(JudgeRequest("rate", "general_perception", ref, prediction=" ".join(sents)))
        s = d["driving_suggestion"]
        flipped = flip_advice(s)
        if flipped != s:
            for name, text in (("intact advice", s), ("flipped advice", flipped)):
                rows.append({"image": files[i].stem, "task": "driving_suggestion", "perturbation": name})
                reqs.append(JudgeRequest("rate", "driving_suggestion", s, prediction=text))
    results = judge.judge(reqs, desc="judge validity")
    for r, res in zip(rows, results):
        r["rating"] = res.verdict
    gp = [r for r in rows if r["task"] == "general_perception" and r["rating"] is not None]
    rho = spearmanr([r["object_f1"] for r in gp], [r["rating"] for r in gp])
    by = {}
    for r in rows:
        if r["rating"] is not None:
            by.setdefault(r["perturbation"], []).append(r["rating"])
    return {"spearman": float(rho.statistic), "p_value": float(rho.pvalue), "n": len(gp),
            "mean_rating": {k: sum(v) / len(v) for k, v in by.items()},
            "judge": judge.describe(), "rows": rows}
