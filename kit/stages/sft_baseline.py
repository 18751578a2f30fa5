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

from kit import runs
from kit.labels import ACTIONS, ANSWER_PROMPT, REASONS, format_answer

STAGE = "sft_baseline"
DIRECT = "direct"


def _split(P: Mapping, run_dir, split: str):
    from kit.data import load_bdd_split

    return load_bdd_split(P, run_dir, split)


def sft_rows(samples, prompt: str = ANSWER_PROMPT) -> list[dict]:
    """TRL prompt-completion rows: image(s) + the answer prompt -> `Action: ... Reason: ...`."""
    from kit.train.rows import vlm_row

    return [vlm_row(s.load_images(), prompt, format_answer(s.actions, s.reasons))
            for s in tqdm(samples, desc="build SFT rows", leave=False)]


def majority_records(train_samples, test_samples) -> list[dict]:
    """Prediction records of the majority-class predictor: per label, the training split's majority."""
    from kit.eval.metrics import majority_labels

    maj_a = majority_labels([s.actions for s in train_samples])
    maj_r = majority_labels([s.reasons for s in train_samples])
    text = format_answer(maj_a, maj_r)
    return [{"id": s.id, "output": text, "pred_actions": maj_a, "pred_reasons": maj_r,
             "gt_actions": list(map(int, s.actions)), "gt_reasons": list(map(int, s.reasons)),
             "unparseable": False, "image_paths": [str(f) for f in s.frame_paths]} for s in test_samples]


def _evaluate(model, processor, samples, P, out_dir: Path, tag: str, title: str) -> tuple[dict, list[Path]]:
    from kit.eval.figures import figures_for_predictions
    from kit.eval.generate import predict_bdd
    from kit.eval.metrics import track_b_metrics

    recs = predict_bdd(model, processor, samples, P, out_dir / "predictions.jsonl", tag=tag, desc=f"{title}: predict")
    m = track_b_metrics(recs)
    figs = figures_for_predictions(out_dir / "predictions.jsonl", out_dir / "figures", title)
    return m, figs


def _model_stamp(where: str) -> str:
    """A model folder's path plus its weights' modification time (a hub id as is): predictions made
    with an older model of the same path are not reused."""
    p = Path(where)
    if not p.is_dir():
        return str(where)
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    return f"{p}@{max((f.stat().st_mtime_ns for f in files), default=0)}"


def run_direct(P: Mapping, run_dir) -> dict:
    """Evaluate the profile's base VLM as is on the eval split; metrics.json["direct"]["eval"]."""
    from kit.models.vlm import load_vlm, resolve_vlm_path

    t0 = time.time()
    out = runs.stage_dir(run_dir, DIRECT)
    split = P["eval"]["split"]
    test = _split(P, run_dir, split)
    model, processor = load_vlm(P, run_dir)
    tag = resolve_vlm_path(P, run_dir)
    m, figs = _evaluate(model, processor, test.samples, P, out, f"base:{_model_stamp(tag)}", "Direct (base model)")
    res = {"eval": m, "split": split, "model": tag, "prompt": ANSWER_PROMPT,
           "predictions": str(out / "predictions.jsonl"), "figures": [str(f) for f in figs],
           "seconds": round(time.time() - t0, 2)}
    runs.record_metrics(run_dir, DIRECT, res)
    return res


def run_sft_baseline(P: Mapping, run_dir) -> dict:
    """Paper B's SFT baseline: train on the train split, evaluate on the eval split, beside a
    majority-class predictor (and Direct, when notebook 03's Direct step ran)."""
    from kit.eval.figures import figures_from_run
    from kit.eval.metrics import summary_row, track_b_metrics
    from kit.models.vlm import load_vlm, lora_config, resolve_vlm_path
    from kit.train.sft import train_sft

    t0 = time.time()
    out = runs.stage_dir(run_dir, STAGE)
    split = P["eval"]["split"]
    train = _split(P, run_dir, "train")
    test = _split(P, run_dir, split)

    # 1. train (resumes from the last epoch checkpoint; a finished run returns at once)
    sp = dict(P["sft"])
    cfg = {k: sp[k] for k in ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_ratio",
                              "lr_scheduler", "save_each_epoch", "logging_steps")}
    cfg["max_steps"] = sp.get("max_steps")
    cfg["peft_config"] = lora_config(P)
    # one folder per training configuration: a rerun with the same settings resumes, changed
    # settings train afresh instead of silently reusing a stale model
    from kit.params import params_hash

    key = params_hash({"sft": {k: v for k, v in cfg.items() if k != "peft_config"},
                       "lora": (P.get("models") or {}).get("lora") if cfg["peft_config"] is not None else None,
                       "quantization": (P.get("models") or {}).get("quantization"),
                       "vlm": (P.get("models") or {}).get("vlm"), "seed": P.get("seed"),
                       "n_train": len(train.samples), "base": _model_stamp(resolve_vlm_path(P, run_dir))})
    ckpt_dir = out / "checkpoints" / key
    done = runs.read_json(ckpt_dir / "train_result.json")
    if done and Path(done.get("checkpoint", "")).is_dir():
        tr = done
    else:
        model, processor = load_vlm(P, run_dir, for_training=True)
        tr = train_sft(model, processor, sft_rows(train.samples), ckpt_dir, cfg, P)
        del model

    # 2. evaluate the saved checkpoint (what later stages load), not the in-memory model
    model, processor = load_vlm(P, run_dir, tr["checkpoint"])
    m, _ = _evaluate(model, processor, test.samples, P, out, f"sft:{_model_stamp(tr['checkpoint'])}",
                     "SFT baseline")
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
        "config": {k: v for k, v in cfg.items() if k != "peft_config"},
        "lora": cfg["peft_config"] is not None,
        "prompt": ANSWER_PROMPT,
        "predictions": str(out / "predictions.jsonl"),
        "beats_baselines": _beats(m, mm, direct),
    }
    runs.record_metrics(run_dir, STAGE, res)
    figs = figures_from_run(run_dir)
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


def per_class_tables(run_dir, stage: str = STAGE, key: str = "eval"):
    """Paper B's Tables 2 and 3 (per-class test distribution and F1) from metrics.json."""
    from kit.eval.figures import per_class_table

    m = runs.require_metrics(run_dir, stage, "the per-class tables")[key]
    return per_class_table(m["action"], ACTIONS), per_class_table(m["reason"], REASONS)


def comparison_table(run_dir):
    """Direct vs majority class vs SFT baseline, one row each (pandas)."""
    import pandas as pd

    m = runs.require_metrics(run_dir, STAGE, "the comparison table")
    return pd.DataFrame(m["comparison"]).set_index("model").round(4)
