"""CODA-LM task scores from a submission folder, as the official evaluators compute them, minus
their silent drops.

- general perception and driving suggestion: the mean rating (1-10) over the items whose rating
  was read, x10 on 0-100 (stage1/stage2_eval_batch.py);
- region perception: the same mean over every region of a class the official list maps
  (stage3_eval_batch.py pools them), and the mean per class; regions whose category name the list
  does not know are counted as `unscored` (the official script drops them without a word);
- overall: the mean of the three task scores on 0-100 (W-CODA's table; inferred, not an official rule).

Every task reports `n` (questions), `judged` (ratings read) and `coverage` = judged / n, and lists
the question ids whose judgment failed after the retries; nothing leaves a denominator unsaid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from kit.data import DataError
from kit.data.coda_lm import CLASSES, region_class
from kit.data.coda_vqa import TASKS, VqaItem, build_vqa, read_answers
from kit.judge.base import Judge
from kit.judge.request import JudgeRequest


def pair_up(task: str, refs: Sequence[VqaItem], rows: Sequence[Mapping], where: str) -> list[tuple[VqaItem, Mapping]]:
    """(reference item, prediction row) by question id; every reference needs exactly one prediction."""
    by_id = {}
    for r in rows:
        q = int(r["question_id"])
        if q in by_id:
            raise DataError(f"{where}: question_id {q} appears twice")
        by_id[q] = r
    missing = [it.question_id for it in refs if it.question_id not in by_id]
    extra = sorted(set(by_id) - {it.question_id for it in refs})
    if missing or extra:
        raise DataError(f"{where}: expected one answer per question of the reference split ({len(refs)} for {task}); "
                        f"missing question_id {missing[:10]}{'...' if len(missing) > 10 else ''}"
                        f"{f', unknown question_id {extra[:10]}' if extra else ''}")
    return [(it, by_id[it.question_id]) for it in refs]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _task_summary(ratings: Sequence[int | None], ids: Sequence[int]) -> dict:
    got = [r for r in ratings if r is not None]
    mean = _mean(got)
    return {"score": mean, "score_100": None if mean is None else 10 * mean, "n": len(ratings), "judged": len(got),
            "coverage": len(got) / len(ratings) if ratings else 1.0,
            "failed": [q for q, r in zip(ids, ratings) if r is None]}


def summarize(judged: Mapping[str, Sequence[Mapping]]) -> dict:
    """Task scores from per-item judgments ({task: [{"question_id", "rating", "category_name"?}]})."""
    out: dict = {}
    for task in TASKS:
        recs = judged.get(task) or []
        if task == "region_perception":
            scored = [r for r in recs if region_class(r.get("category_name")) is not None]
            s = _task_summary([r["rating"] for r in scored], [r["question_id"] for r in scored])
            s["unscored"] = len(recs) - len(scored)
            s["unscored_names"] = sorted({str(r.get("category_name")) for r in recs if region_class(r.get("category_name")) is None})
            s["per_class"] = {}
            for c in CLASSES:
                cs = [r for r in scored if region_class(r["category_name"]) == c]
                t = _task_summary([r["rating"] for r in cs], [r["question_id"] for r in cs])
                t.pop("failed")
                s["per_class"][c] = t
        else:
            s = _task_summary([r["rating"] for r in recs], [r["question_id"] for r in recs])
        out[task] = s
    parts = [out[t]["score_100"] for t in TASKS]
    out["overall_100"] = None if any(p is None for p in parts) else sum(parts) / len(parts)
    out["coverage"] = min(out[t]["coverage"] for t in TASKS)
    return out


def judge_submission(judge: Judge, refs: Mapping[str, Sequence[VqaItem]], pred_dir, *,
                     desc: str = "judge") -> tuple[dict, dict[str, list[dict]]]:
    """Rate every answer of a submission folder against the references: (summary, per-item records)."""
    rows = read_answers(pred_dir)
    judged: dict[str, list[dict]] = {}
    for task in TASKS:
        pairs = pair_up(task, refs[task], rows[task], str(Path(pred_dir) / f"{task}_answer.jsonl"))
        reqs = [JudgeRequest("rate", task, it.answer or "", prediction=row["answer"], question=it.question)
                for it, row in pairs]
        results = judge.judge(reqs, desc=f"{desc}: {task}")
        judged[task] = [{"question_id": it.question_id, "image": it.image, "category_name": it.category_name,
                         "reference": it.answer, "answer": row["answer"],
                         "rating": res.verdict, "judgment": res.text, "attempts": res.attempts, "cached": res.cached,
                         "error": res.error} for (it, row), res in zip(pairs, results)]
    return summarize(judged), judged


def score_folder(pred_dir, reference_dir, judge: Judge) -> dict:
    """`kit judge score`: the summary for a submission folder against a CODA-LM JSON folder."""
    refs = build_vqa(reference_dir, {t: "(question)" for t in TASKS})
    summary, _ = judge_submission(judge, refs, pred_dir)
    summary["judge"] = {**judge.describe(), **{k: judge.stats[k] for k in sorted(judge.stats)}}
    return summary
