"""Notebook 07, Track A: every evaluated model's CODA-LM scores side by side, the battles between
them, and their ratings.

    run_coda_evaluate(P, run_dir) -> evaluate/battles.jsonl, evaluate/battles_failed.jsonl,
                                     evaluate/coda_figures/*.png,
                                     metrics["evaluate"]["coda_lm"] (scores table, judge validity)
                                     metrics["evaluate"]["elo"] = {"online", "bt", "bootstrap", ...}

Models are found in metrics.json: every stage entry with a `coda_lm` block (kit.stages.coda)
that holds scores. Their answers are read back from their submission files, so the battles need
no model.
"""
from __future__ import annotations

import time
from typing import Mapping

from kit import runs
from kit.coda.figures import figures_from_run
from kit.coda.results import evaluated_models
from kit.coda.sft import split_dir, split_items
from kit.data.coda_vqa import TASKS, read_answers
from kit.judge.battles import run_battles
from kit.judge.elo import elo_summary
from kit.judge.factory import make_judge
from kit.judge.validity import perturbation_study

STAGE = "evaluate"


def run_coda_evaluate(P: Mapping, run_dir) -> dict:
    t0 = time.time()
    out = runs.stage_dir(run_dir, STAGE)
    models = evaluated_models(run_dir)
    wanted = P["battles"].get("models")
    if wanted:
        missing = [n for n in wanted if n not in models]
        if missing:
            raise ValueError(f"params battles.models: {missing} not among this run's evaluated models {list(models)}")
        models = {n: e for n, e in models.items() if n in wanted}
    if len(models) < 2:
        raise FileNotFoundError(f"{runs.resolve_run_dir(run_dir) / 'metrics.json'}: {len(models)} Track A model(s) with "
                                "CODA-LM scores; battles need two. Run notebook 03 (Direct and SFT on CODA-LM) first")
    refs = split_items(P, run_dir, "eval")
    answers = {}
    for name, e in models.items():
        rows = read_answers(e["predictions"])
        answers[name] = {t: [r["answer"] for r in rows[t]] for t in TASKS}
        for t in TASKS:
            if len(answers[name][t]) != len(refs[t]):
                raise ValueError(f"{e['predictions']}: {t} has {len(answers[name][t])} answers, the eval split "
                                 f"{len(refs[t])} questions; rerun the stage {e['stage']} for this split")
    judge = make_judge(P["judge"], run_dir)
    tasks = list(P["battles"]["tasks"])
    battles, failed = run_battles(judge, answers, refs, tasks)
    runs.write_jsonl(out / "battles.jsonl", battles)
    runs.write_jsonl(out / "battles_failed.jsonl", failed)
    elo = elo_summary(battles, rounds=int(P["battles"]["bootstrap_rounds"]), seed=int(P["seed"]))
    validity = perturbation_study(split_dir(P, run_dir, P["coda"]["eval_split"]), judge, seed=int(P["seed"]))
    runs.write_jsonl(out / "judge_validity.jsonl", validity.pop("rows"))
    res = {"elo": {**elo, "n_failed": len(failed), "judge": {**judge.describe(), **judge.stats}},
           "coda_lm": {"models": {n: {"stage": e["stage"], "scores": e["scores"]} for n, e in models.items()},
                       "judge_validity": validity, "battles": str(out / "battles.jsonl")}}
    # replaced, not merged: a model an earlier run battled and this one does not must not stay
    runs.forget_metrics(run_dir, [(STAGE, "elo"), (STAGE, "coda_lm")])
    runs.record_metrics(run_dir, STAGE, res)

    figs = figures_from_run(run_dir)
    runs.record_metrics(run_dir, STAGE, {"coda_lm": {"figures": [str(f) for f in figs],
                                                     "seconds": round(time.time() - t0, 2)}})
    return res
