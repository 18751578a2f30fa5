"""CODA-LM's three tasks for Track A's models: the splits as VQA items, SFT on them, and each model's
answers written as CODA-LM submission files and scored by the judge. What notebook 03's Track A stages
(kit.stages.coda) and notebook 04's SPIN rounds (kit.stages.spin) share.

    split_items(P, run_dir, which)                 -> {task: [VqaItem]} of the `coda.<which>_split`
    evaluate_model(P, run_dir, stage, model, ...)  -> answers, scores, metrics[stage]["coda_lm"]
    train_coda_sft(P, run_dir, train_items, ...)   -> one SFT training per key (kit.keys)
    synth_sft_plan(P, run_dir)                     -> what SFT on Train + synthetic trains on

Each evaluated model records `metrics[stage]["coda_lm"] = {"name", "predictions", "scores", "key"}`,
which is how notebook 07 finds every Track A model for the battles. Reuse follows the stage key
(kit.keys): training lives in `checkpoints/<key>/` (resumed only there); answers are regenerated
unless their meta holds the same key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kit import dist, runs
from kit.data import coda_lm_root
from kit.data.coda_vqa import TASKS, VqaItem, vqa_for, write_answers
from kit.eval.generate import generate_records
from kit.judge.factory import make_judge
from kit.judge.score import judge_submission
from kit.keys import artifact_id, keyed_training, stage_key
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, lora_config, resolve_vlm_path, vlm_settings
from kit.params import params_hash
from kit.runs import require_metrics
from kit.train.config import train_config
from kit.train.rows import vlm_row
from kit.train.sft import train_sft

DIRECT, SFT, SFT_SYNTH = "coda_direct", "coda_sft", "coda_sft_synth"
MODEL_NAMES = {DIRECT: "direct", SFT: "sft", SFT_SYNTH: "sft+synth"}


def split_dir(P: Mapping, run_dir, split: str) -> Path:
    d = coda_lm_root(P["data"], run_dir) / "CODA-LM" / split
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no CODA-LM split '{split}' (params coda.{'eval' if split != 'Train' else 'train'}_split); "
                                "expected <coda_lm_root>/CODA-LM/<Split>/*.json")
    return d


def split_items(P: Mapping, run_dir, which: str) -> dict[str, list[VqaItem]]:
    """The VQA items of the profile's `coda.train_split` or `coda.eval_split`, with images on disk."""
    c = P["coda"]
    split = c[f"{which}_split"]
    return vqa_for(P, split_dir(P, run_dir, split), images=True, max_samples=c.get(f"{which}_samples"))


def data_id(items: Mapping[str, list[VqaItem]]) -> str:
    """The identity of a set of VQA items: their texts and the bytes of every image they show."""
    return params_hash({t: [(it.question_id, it.image, it.question, it.answer, artifact_id(it.image_path))
                            for it in its] for t, its in items.items()})


def _gen_settings(P: Mapping) -> dict:
    c = P["coda"]
    return {"max_new_tokens": dict(c["max_new_tokens"]), "batch_size": int(c["batch_size"])}


def generate_submission(model, processor, items: Mapping[str, list[VqaItem]], P: Mapping, pred_dir: Path,
                        key: str, desc: str) -> dict[str, list[str]]:
    """Greedy answers to every item, written as CODA-LM's submission files in `pred_dir`.

    Resumable per chunk and reused only when `key` (the model's and settings' identity) matches
    (kit.eval.generate.generate_records)."""
    out = {}
    for task in TASKS:
        its = items[task]
        recs = generate_records(
            model, processor, its, pred_dir / ".generate" / f"{task}.jsonl", {"key": key},
            items=lambda part: [([it.load_image()], it.question) for it in part],
            records=lambda part, _, outs: [{"id": it.id, "answer": o} for it, o in zip(part, outs)],
            batch_size=int(P["coda"]["batch_size"]), max_new_tokens=int(P["coda"]["max_new_tokens"][task]),
            desc=f"{desc}: {task}")
        out[task] = [r["answer"] for r in recs]
        write_answers(pred_dir, task, its, out[task])
    dist.wait()  # the main process wrote them; the judge reads them back on every process
    return out


def score_model(P: Mapping, run_dir, stage: str, name: str, refs: Mapping[str, list[VqaItem]], key: str,
                judge=None) -> dict:
    """Judge a stage's submission folder; judgments in `<stage>/judge/<task>.jsonl`, scores in metrics."""
    sd = runs.stage_dir(run_dir, stage)
    judge = judge or make_judge(P["judge"], run_dir)
    summary, judged = judge_submission(judge, refs, sd / "coda_lm", desc=f"judge {name}")
    for task, recs in judged.items():
        runs.write_jsonl(sd / "judge" / f"{task}.jsonl", recs)
    entry = {"name": name, "predictions": str(sd / "coda_lm"), "scores": summary, "key": key,
             "split": P["coda"]["eval_split"], "judge": {**judge.describe(), **judge.stats}}
    runs.record_metrics(run_dir, stage, {"coda_lm": entry})
    return entry


def evaluate_model(P, run_dir, stage: str, model, processor, model_id: str, refs, name: str | None = None) -> dict:
    """The eval split answered by `model` (identified by `model_id`) into `<stage>/coda_lm/`, and judged."""
    name = name or MODEL_NAMES.get(stage, stage)
    key = stage_key({"generate": _gen_settings(P)}, {"model": model_id, "data": data_id(refs)})
    generate_submission(model, processor, refs, P, runs.stage_dir(run_dir, stage) / "coda_lm", key, name)
    return score_model(P, run_dir, stage, name, refs, key)


def sft_rows(items: Mapping[str, list[VqaItem]], tasks=TASKS) -> list[dict]:
    """TRL prompt-completion rows (image path + question -> reference answer) for the given tasks,
    images left on disk (decoded per batch)."""
    return [vlm_row([it.image_path], it.question, it.answer) for t in tasks for it in items[t] if it.answer]


def sft_config(P: Mapping) -> dict:
    s = P["coda_sft"]
    return train_config(s, P["seed"], extra=("adam_beta2", "max_length", "logging_steps", "max_steps"),
                        save_each_epoch=bool(s.get("save_each_epoch", True)))


def sft_key(P: Mapping, run_dir, train_items: Mapping[str, list[VqaItem]], base: str | None = None, *,
            tasks=None, max_steps: int | None = None) -> str:
    """The key of an SFT run on `train_items` from `base` (default: the profile's VLM)."""
    tasks = list(tasks or P["coda_sft"]["tasks"])
    cfg = sft_config(P)
    if max_steps is not None:
        cfg["max_steps"] = int(max_steps)
    spec = model_spec(P)
    return stage_key({"sft": cfg, "tasks": tasks, **vlm_settings(spec)},
                     {"model": artifact_id(base or resolve_vlm_path(spec, run_dir)),
                      "data": data_id({t: train_items[t] for t in tasks})})


def train_coda_sft(P: Mapping, run_dir, train_items: Mapping[str, list[VqaItem]], base: str | None = None,
                   *, out_parent: Path | None = None, tasks=None, max_steps: int | None = None) -> dict:
    """SFT on CODA-LM VQA rows into `<out_parent>/<key>/`, resumed only under the same key.
    Returns train_sft's result plus "key" (the final model folder is marked with it)."""
    tasks = list(tasks or P["coda_sft"]["tasks"])
    spec = model_spec(P)
    base = base or resolve_vlm_path(spec, run_dir)
    cfg = sft_config(P)
    if max_steps is not None:
        cfg["max_steps"] = int(max_steps)
    key = sft_key(P, run_dir, train_items, base, tasks=tasks, max_steps=max_steps)

    def train_it(out):
        model, processor = load_vlm(spec, run_dir, base if Path(base).is_dir() else None, for_training=True)
        return train_sft(model, processor, sft_rows(train_items, tasks), out, {**cfg, "peft_config": lora_config(spec)},
                         spec.trainer_precision())

    return keyed_training(Path(out_parent or runs.stage_dir(run_dir, SFT) / "checkpoints"), key, train_it,
                          stage=SFT, base=base)


def synthetic_items(P: Mapping, run_dir) -> dict[str, list[VqaItem]]:
    """The VQA items of notebook 01's synthetic set (a CODA-LM Train split under synthesis/data)."""
    m = require_metrics(run_dir, "synthesis", "SFT on Train + synthetic data (run notebook 01 first)")
    return vqa_for(P, Path(m["data_root"]) / "CODA-LM" / "Train", images=True)


def sft_steps(n_rows: int, cfg: Mapping) -> int:
    """Optimizer steps of `epochs` over `n_rows` (the Trainer's count: the last batch kept)."""
    import math

    per_epoch = math.ceil(n_rows / (int(cfg["batch_size"]) * int(cfg["grad_accum"])))
    return int(cfg["max_steps"]) if cfg.get("max_steps") else per_epoch * int(cfg["epochs"])


def synth_sft_plan(P: Mapping, run_dir) -> tuple[dict[str, list[VqaItem]], int | None, dict]:
    """What SFT on Train + synthetic trains on: (the items, max_steps under `coda_sft.synthetic_budget`,
    {"n_train", "n_synth", "budget"})."""
    train = split_items(P, run_dir, "train")
    synth = synthetic_items(P, run_dir)
    tasks = list(P["coda_sft"]["tasks"])
    budget = P["coda_sft"].get("synthetic_budget", "same_steps")
    if budget not in ("same_steps", "same_epochs"):
        raise ValueError(f"params coda_sft.synthetic_budget: expected same_steps or same_epochs, got {budget!r}")
    n_train, n_synth = len(sft_rows(train, tasks)), len(sft_rows(synth, tasks))
    steps = sft_steps(n_train, sft_config(P)) if budget == "same_steps" else None
    return {t: train[t] + synth[t] for t in TASKS}, steps, {"n_train": n_train, "n_synth": n_synth, "budget": budget}


def current_sft_key(P: Mapping, run_dir, stage: str) -> str:
    """The key notebook 03's SFT stage (`coda_sft` or `coda_sft_synth`) would train under with the
    current settings and data: a later stage compares it with the key of the model it found."""
    if stage == SFT:
        return sft_key(P, run_dir, split_items(P, run_dir, "train"))
    items, steps, _ = synth_sft_plan(P, run_dir)
    return sft_key(P, run_dir, items, max_steps=steps)


def training_budget_table(run_dir):
    """SFT on Train and SFT on Train + synthetic side by side: rows, optimizer steps, samples seen
    and how often each row was seen on average (pandas)."""
    import pandas as pd

    m = runs.read_metrics(run_dir)
    out = []
    for stage in (SFT, SFT_SYNTH):
        e = (m.get(stage) or {}).get("coda_lm") or {}
        if not e.get("steps"):
            continue
        cfg = e["config"]
        seen = int(e["steps"]) * int(cfg["batch_size"]) * int(cfg["grad_accum"])
        rows = e.get("rows") or {"train": e.get("n_rows"), "synthetic": 0}
        out.append({"model": MODEL_NAMES[stage], "train rows": rows["train"], "synthetic rows": rows["synthetic"],
                    "steps": e["steps"], "samples seen": seen,
                    "passes over its rows": round(seen / max(1, rows["train"] + rows["synthetic"]), 2)})
    return pd.DataFrame(out).set_index("model") if out else pd.DataFrame()
