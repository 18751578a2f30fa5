"""Notebook 03, Track B: the base model evaluated as is (Direct) and paper B's SFT baseline.

    run_direct(P, run_dir)        -> run_dir/direct/predictions.jsonl, metrics.json["direct"]
    run_sft_baseline(P, run_dir)  -> run_dir/sft_baseline/{checkpoints/, predictions.jsonl,
                                     majority/predictions.jsonl, figures/*.png},
                                     metrics.json["sft_baseline"] = {eval, majority, direct (copy),
                                     comparison, train_loss, checkpoint, ...}

The SFT target is paper B's `Action: stop. Reason: Traffic light is not green.` (kit.labels.
format_answer), trained with TRL's SFTTrainer through kit.train.sft.train_sft (loss on the answer
only; LoRA/QLoRA as the profile says). Evaluation parses the generated text (kit.eval.parse) and
scores it with the official BDD-OIA metrics (kit.eval.metrics).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from tqdm.auto import tqdm

from kit import dist, runs
from kit.data import load_bdd_split
from kit.eval.figures import figures_for_predictions, figures_from_run
from kit.eval.generate import predict_bdd
from kit.eval.metrics import majority_labels, summary_row, track_b_metrics
from kit.keys import artifact_id, keyed_training, samples_id, stage_key
from kit.labels import ANSWER_PROMPT, format_answer
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, lora_config, resolve_vlm_path, vlm_settings
from kit.train.config import train_config
from kit.train.rows import vlm_row
from kit.train.sft import train_sft

STAGE = "sft_baseline"
DIRECT = "direct"


def _split(P: Mapping, run_dir, split: str):
    return load_bdd_split(P["data"], run_dir, split)


def sft_rows(samples, prompt: str = ANSWER_PROMPT) -> list[dict]:
    """TRL prompt-completion rows: image(s) + the answer prompt -> `Action: ... Reason: ...`. Frames
    stay on disk as paths; the trainer decodes them per batch (kit.train.sft)."""
    return [vlm_row(s.frame_paths, prompt, format_answer(s.actions, s.reasons))
            for s in tqdm(samples, desc="build SFT rows", leave=False)]


def sft_config(P: Mapping) -> dict:
    """The `sft:` section as train_sft's cfg (without the adapter, which lora_config(spec) adds)."""
    return train_config(P["sft"], P["seed"], extra=("save_each_epoch", "logging_steps", "max_steps"))


def majority_records(train_samples, test_samples) -> list[dict]:
    """Prediction records of the majority-class predictor: per label, the training split's majority."""
    maj_a = majority_labels([s.actions for s in train_samples])
    maj_r = majority_labels([s.reasons for s in train_samples])
    text = format_answer(maj_a, maj_r)
    return [{"id": s.id, "output": text, "pred_actions": maj_a, "pred_reasons": maj_r,
             "gt_actions": list(map(int, s.actions)), "gt_reasons": list(map(int, s.reasons)),
             "unparseable": False, "image_paths": [str(f) for f in s.frame_paths]} for s in test_samples]


def _evaluate(model, processor, samples, P, out_dir: Path, tag: str, title: str) -> tuple[dict, list[Path]]:
    recs = predict_bdd(model, processor, samples, P, out_dir / "predictions.jsonl", tag=tag, desc=f"{title}: predict")
    m = track_b_metrics(recs)
    figs = dist.on_main(figures_for_predictions, out_dir / "predictions.jsonl", out_dir / "figures", title)
    return m, figs


def run_direct(P: Mapping, run_dir) -> dict:
    """Evaluate the profile's base VLM as is on the eval split; metrics.json["direct"]["eval"]."""
    t0 = time.time()
    out = runs.stage_dir(run_dir, DIRECT)
    split = P["eval"]["split"]
    test = _split(P, run_dir, split)
    spec = model_spec(P)
    model, processor = load_vlm(spec, run_dir)
    tag = resolve_vlm_path(spec, run_dir)
    m, figs = _evaluate(model, processor, test.samples, P, out, artifact_id(tag), "Direct (base model)")
    res = {"eval": m, "split": split, "model": tag, "prompt": ANSWER_PROMPT,
           "predictions": str(out / "predictions.jsonl"), "figures": [str(f) for f in figs],
           "seconds": round(time.time() - t0, 2)}
    runs.record_metrics(run_dir, DIRECT, res)
    return res


def run_sft_baseline(P: Mapping, run_dir) -> dict:
    """Paper B's SFT baseline: train on the train split, evaluate on the eval split, beside a
    majority-class predictor (and Direct, when notebook 03's Direct step ran)."""
    t0 = time.time()
    out = runs.stage_dir(run_dir, STAGE)
    split = P["eval"]["split"]
    train = _split(P, run_dir, "train")
    test = _split(P, run_dir, split)

    # 1. train once per key (settings + base model + training data): a rerun with the same key resumes
    #    or reuses, anything else trains afresh in its own folder (kit.keys)
    cfg, spec = sft_config(P), model_spec(P)
    base = resolve_vlm_path(spec, run_dir)
    key = stage_key({"sft": cfg, "prompt": ANSWER_PROMPT, **vlm_settings(spec)},
                    {"model": artifact_id(base), "data": samples_id(train.samples)})

    def train_it(ckpt_dir):
        model, processor = load_vlm(spec, run_dir, for_training=True)
        return train_sft(model, processor, sft_rows(train.samples), ckpt_dir, {**cfg, "peft_config": lora_config(spec)},
                         spec.trainer_precision())

    tr = keyed_training(out / "checkpoints", key, train_it, stage=STAGE, base=base)

    # 2. evaluate the saved checkpoint (what later stages load), not the in-memory model
    model, processor = load_vlm(spec, run_dir, tr["checkpoint"])
    m, _ = _evaluate(model, processor, test.samples, P, out, f"key:{key}", "SFT baseline")
    del model

    # 3. majority-class predictor (per label, the training split's majority), same test split
    maj = majority_records(train.samples, test.samples)
    runs.write_jsonl(out / "majority" / "predictions.jsonl", maj)
    mm = track_b_metrics(maj)

    direct = (runs.read_metrics(run_dir).get(DIRECT) or {}).get("eval")
    comparison = ([summary_row(direct, "direct")] if direct else []) + \
        [summary_row(mm, "majority class"), summary_row(m, "SFT baseline")]
    res = {
        "eval": m,
        "majority": mm,
        "comparison": comparison,
        "split": split,
        "n_train": len(train.samples),
        "train_loss": tr["train_loss"],
        "checkpoint": tr["checkpoint"],
        "train_seconds": tr.get("seconds"),
        "steps": tr.get("steps"),
        "config": cfg,
        "key": key,
        "reused": tr["reused"],
        "lora": lora_config(spec) is not None,
        "prompt": ANSWER_PROMPT,
        "predictions": str(out / "predictions.jsonl"),
        "beats_baselines": _beats(m, mm, direct),
    }
    runs.record_metrics(run_dir, STAGE, res)
    figs = dist.on_main(figures_from_run, run_dir)
    res["figures"] = [str(f) for f in figs]
    res["seconds"] = round(time.time() - t0, 2)
    runs.record_metrics(run_dir, STAGE, {"figures": res["figures"], "seconds": res["seconds"]})
    return res


def _beats(m: Mapping, majority: Mapping, direct: Mapping | None) -> dict:
    """Whether the SFT model's action and reason mF1 beat the majority predictor (and Direct)."""
    out = {}
    for fam in ("action", "reason"):
        out[f"{fam}_mF1_vs_majority"] = m[fam]["macro_f1"] > majority[fam]["macro_f1"]
        if direct:
            out[f"{fam}_mF1_vs_direct"] = m[fam]["macro_f1"] > direct[fam]["macro_f1"]
    return out
