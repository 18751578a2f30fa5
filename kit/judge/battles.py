"""Pairwise battles, Chatbot-Arena style (paper A's evaluation): every pair of models, every item,
judged in both orders; orders that disagree make a tie (kit.judge.elo.combine_orders).

Rows of `runs/<run>/evaluate/battles.jsonl` are FastChat's: `model_a`, `model_b`, `winner`
(`model_a` | `model_b` | `tie`), plus `question_id`, `task` and `verdicts` = [verdict with model_a
shown first, verdict with model_b shown first]. The file goes item by item (every pair on item 1,
then item 2, ...), so online Elo does not see all of one pair's battles before the next pair's.
A battle whose judgment failed after the retries is not a battle: it goes to `failed` and is counted.
"""
from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

from kit.data.coda_vqa import VqaItem
from kit.judge.base import Judge
from kit.judge.elo import combine_orders
from kit.judge.request import JudgeRequest


def run_battles(judge: Judge, answers: Mapping[str, Mapping[str, Sequence[str]]],
                refs: Mapping[str, Sequence[VqaItem]], tasks: Sequence[str], desc: str = "battles") -> tuple[list[dict], list[dict]]:
    """(battles, failed) for `answers` = {model: {task: [answer per reference item, in order]}}."""
    models = sorted(answers)
    if len(models) < 2:
        return [], []
    pairs = list(combinations(models, 2))
    plan, reqs = [], []
    for task in tasks:
        for i, it in enumerate(refs[task]):
            for a, b in pairs:
                xa, xb = answers[a][task][i], answers[b][task][i]
                plan.append((task, it, a, b))
                reqs += [JudgeRequest("pair", task, it.answer or "", answer_a=xa, answer_b=xb, question=it.question),
                         JudgeRequest("pair", task, it.answer or "", answer_a=xb, answer_b=xa, question=it.question)]
    results = judge.judge(reqs, desc=desc)
    battles, failed = [], []
    for k, (task, it, a, b) in enumerate(plan):
        r_ab, r_ba = results[2 * k], results[2 * k + 1]
        row = {"model_a": a, "model_b": b, "question_id": it.question_id, "task": task,
               "verdicts": [r_ab.verdict, r_ba.verdict]}
        winner = combine_orders(r_ab.verdict, r_ba.verdict)
        if winner is None:
            failed.append({**row, "errors": [r_ab.error, r_ba.error]})
        else:
            battles.append({**row, "winner": winner})
    return battles, failed
