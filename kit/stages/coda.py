"""Track A models on CODA-LM: generate the three tasks' answers, write CODA-LM's submission files,
score them with the judge.

    run_coda_direct(P, run_dir) -> coda_direct/coda_lm/*_answer.jsonl, judge/, metrics["coda_direct"]
    run_coda_sft(P, run_dir)    -> coda_sft/checkpoints/<key>/final, coda_lm/, judge/, metrics["coda_sft"]
    run_coda_sft_synth(P, run_dir) -> the same on Train + notebook 01's synthetic set (metrics["coda_sft_synth"])

Direct is the profile's base VLM as is (tiny: notebook 00's pretrained VLM); SFT is TRL's
SFTTrainer (kit.train.sft) on the three tasks of CODA-LM Train. Each evaluated model records
`metrics[stage]["coda_lm"] = {"name", "predictions", "scores", "key"}`, which is how notebook 07
finds every Track A model for the battles.

Reuse follows the stage key (kit.keys): training lives in `checkpoints/<key>/` (resumed only
there); answers are regenerated unless their meta holds the same key.
"""
from __future__ import annotations

import time
from typing import Mapping

from kit import runs
from kit.coda.sft import DIRECT, SFT, SFT_SYNTH, evaluate_model, sft_config, split_items, synth_sft_plan, train_coda_sft
from kit.keys import artifact_id
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, resolve_vlm_path


def run_coda_direct(P: Mapping, run_dir) -> dict:
    """The base VLM, untrained on CODA-LM, answering the eval split's three tasks."""
    t0 = time.time()
    refs = split_items(P, run_dir, "eval")
    spec = model_spec(P)
    model, processor = load_vlm(spec, run_dir)
    base = resolve_vlm_path(spec, run_dir)
    entry = evaluate_model(P, run_dir, DIRECT, model, processor, artifact_id(base), refs)
    runs.record_metrics(run_dir, DIRECT, {"coda_lm": {"seconds": round(time.time() - t0, 2), "model": base}})
    return entry


def run_coda_sft(P: Mapping, run_dir) -> dict:
    """SFT on CODA-LM Train's three tasks, then the eval split's answers and scores."""
    t0 = time.time()
    train = split_items(P, run_dir, "train")
    refs = split_items(P, run_dir, "eval")
    tr = train_coda_sft(P, run_dir, train)
    model, processor = load_vlm(model_spec(P), run_dir, tr["checkpoint"])
    entry = evaluate_model(P, run_dir, SFT, model, processor, f"key:{tr['key']}", refs)
    runs.record_metrics(run_dir, SFT, {"coda_lm": {
        "train_loss": tr["train_loss"], "checkpoint": tr["checkpoint"], "train_key": tr["key"],
        "n_rows": tr.get("n_rows"), "steps": tr.get("steps"), "train_seconds": tr.get("seconds"),
        "reused": tr["reused"], "config": sft_config(P), "seconds": round(time.time() - t0, 2)}})
    return entry


def run_coda_sft_synth(P: Mapping, run_dir) -> dict:
    """SFT on CODA-LM Train plus the synthetic set (paper A's model 1), answers and scores.

    `coda_sft.synthetic_budget`: same_steps trains as many optimizer steps as SFT on Train alone
    (so the comparison holds compute fixed and asks what the extra data is worth); same_epochs runs
    `coda_sft.epochs` over the larger set."""
    t0 = time.time()
    refs = split_items(P, run_dir, "eval")
    both, steps, plan = synth_sft_plan(P, run_dir)
    tr = train_coda_sft(P, run_dir, both, out_parent=runs.stage_dir(run_dir, SFT_SYNTH) / "checkpoints",
                        max_steps=steps)
    model, processor = load_vlm(model_spec(P), run_dir, tr["checkpoint"])
    entry = evaluate_model(P, run_dir, SFT_SYNTH, model, processor, f"key:{tr['key']}", refs)
    cfg = sft_config(P)
    seen = int(tr.get("steps") or 0) * int(cfg["batch_size"]) * int(cfg["grad_accum"])
    runs.record_metrics(run_dir, SFT_SYNTH, {"coda_lm": {
        "train_loss": tr["train_loss"], "checkpoint": tr["checkpoint"], "train_key": tr["key"],
        "n_rows": tr.get("n_rows"), "rows": {"train": plan["n_train"], "synthetic": plan["n_synth"]},
        "budget": plan["budget"],
        "steps": tr.get("steps"), "samples_seen": seen,
        "samples_per_row": round(seen / max(1, plan["n_train"] + plan["n_synth"]), 3),
        "train_seconds": tr.get("seconds"), "reused": tr["reused"], "config": {**cfg, "max_steps": steps},
        "seconds": round(time.time() - t0, 2)}})
    return entry
