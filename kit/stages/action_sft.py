"""Notebook 06, paper B stage 2: teach the action format with a short SFT on the stage-1 model.

Prompt = the clip's frames + the stage-1 description + the paper's action question
(kit.labels.ACTION_PROMPT); target = the action text only (kit.labels.format_action_answer), so the
loss covers nothing but the action. Trained with kit.train.sft.train_sft (TRL SFTTrainer), evaluated
with the Track B metrics (kit.eval) and the CLIP reward's score/match.

Reads run_dir/rloo/ (final model, descriptions_<split>.jsonl). Writes run_dir/action_sft/:
checkpoints/<key>/ (one training per stage key: settings, stage-1 model, descriptions, frames; the
trainer's checkpoints and final/), predictions.jsonl (Track B records + description + clip_score),
figures/*.png; and metrics.json["action_sft"].
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from kit import dist, runs
from kit.eval.generate import generate_records
from kit.eval.metrics import best_on_val, track_b_metrics
from kit.eval.parse import parse_answer
from kit.keys import artifact_id, keyed_training, samples_id, stage_key
from kit.labels import ACTION_PROMPT, format_action_answer, stage2_prompt
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, vlm_settings
from kit.reward import load_reward
from kit.rl.figures import figures_from_run as _figs
from kit.rl.samples import frame_paths_of, frames_of, load_samples
from kit.train.config import train_config
from kit.train.rows import vlm_row
from kit.train.sft import train_sft

STAGE = "action_sft"


def _descriptions(run_dir: Path, split: str) -> dict[str, str]:
    path = run_dir / "rloo" / f"descriptions_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; stage 2 needs the stage-1 descriptions of split '{split}'; "
                                "run notebook 05 (rloo) for this run directory first")
    out = {}
    for i, r in enumerate(runs.read_jsonl(path), 1):
        if "id" not in r or "description" not in r:
            raise ValueError(f"{path}:{i}: expected fields 'id' and 'description', got {sorted(r)}")
        out[r["id"]] = r["description"]
    return out


def action_rows(samples: Sequence, descriptions: Mapping[str, str], P: Mapping, *, with_answer: bool = True,
                where: str = "descriptions") -> list[dict]:
    """vlm_row per sample: frame paths + stage2_prompt(description) (+ the action answer for training)."""
    rows = []
    for s in samples:
        if s.id not in descriptions:
            raise KeyError(f"{where}: no stage-1 description for sample id {s.id!r}")
        rows.append(vlm_row(frame_paths_of(s, P["rloo"]["frames"]), stage2_prompt(descriptions[s.id]),
                            format_action_answer(s.actions) if with_answer else None))
    return rows


def sft_cfg(P: Mapping) -> dict:
    """The `action_sft:` section for train_sft; schedule/logging defaults come from `sft:`."""
    return {**train_config(P["action_sft"], P["seed"], extra=("logging_steps",), schedule_from=P["sft"]),
            "save_each_epoch": True,
            # with LoRA the stage-1 checkpoint is an adapter that load_vlm returns trainable, and
            # train_sft keeps training it; without LoRA it is a full fine-tune: no new adapter either way
            "peft_config": None}


def predict_actions(model, processor, samples: Sequence, descriptions: Mapping[str, str], P: Mapping,
                    out_path: Path, reward=None, *, tag: str) -> list[dict]:
    """Stage-2 answers on `samples`, parsed into Track B prediction records (id, output, pred_actions,
    pred_reasons, gt_actions, gt_reasons, unparseable) plus the stage-1 description and, with a
    reward, the CLIP score of the output. Reused and resumed as `kit.eval.generate.generate_records`
    says, for the same `tag` (the checkpoint)."""
    def records(part, items, outs):
        frames = [f for f, _ in items]
        scores = reward.clip_score(frames, outs) if reward is not None else [None] * len(outs)
        recs = []
        for s, o, c in zip(part, outs, scores):
            p = parse_answer(o)
            recs.append({"id": s.id, "output": o, "pred_actions": p.actions, "pred_reasons": p.reasons,
                         "gt_actions": list(map(int, s.actions)), "gt_reasons": list(map(int, s.reasons)),
                         "unparseable": p.unparseable, "description": descriptions[s.id],
                         "clip_score": c, "image_paths": [str(f) for f in s.frame_paths]})
        return recs

    return generate_records(model, processor, samples, out_path, {"tag": tag},
                            items=lambda part: [(frames_of(s, P["rloo"]["frames"]), stage2_prompt(descriptions[s.id]))
                                                for s in part],
                            records=records, batch_size=int(P["eval"]["batch_size"]),
                            max_new_tokens=int(P["action_sft"]["max_new_tokens"]), desc="predict actions")


def select_on_val(P: Mapping, run_dir: Path, key: str, final) -> tuple[str, list[dict]]:
    """The epoch whose val action mF1 is highest (ties: the later one), and every epoch's val score.

    Paper B trains stage 2 for a fixed number of epochs. The tiny VLM's action answers jump from one
    epoch to the next, differently per seed and thread count (the last epoch's test action mF1 ranged
    from 0.28 to 0.75 over four runs that differ in nothing else), so the kit scores each epoch's
    checkpoint on val and keeps the best; test is answered once, by that model. Its answers on val are
    kept per checkpoint (`action_sft/val/`), so a rerun asks nothing again.
    """
    final = Path(final)
    ckpts = sorted(final.parent.glob("checkpoint-*"), key=lambda c: int(c.name.rsplit("-", 1)[1]))
    if len(ckpts) < 2:  # one epoch, or no per-epoch checkpoints: nothing to choose
        return str(final), []
    val = load_samples(P["data"], run_dir, "val", P["rloo"].get("eval_samples"))
    d_val = _descriptions(run_dir, "val")
    desc_id = artifact_id(run_dir / "rloo" / "descriptions_val.jsonl")
    curve, spec = [], model_spec(P)
    for epoch, c in enumerate(tqdm(ckpts, desc="stage 2: each epoch on val"), 1):
        model, processor = load_vlm(spec, run_dir, path=c)
        recs = predict_actions(model, processor, val, d_val, P, runs.stage_dir(run_dir, STAGE) / "val" / f"{c.name}.jsonl",
                               tag=f"key:{key}/{c.name}+{desc_id}")
        curve.append({"epoch": epoch, "step": int(c.name.rsplit("-", 1)[1]), "checkpoint": str(c),
                      "val_action_mF1": track_b_metrics(recs)["action"]["macro_f1"]})
        del model
    best = best_on_val(curve)
    # the last epoch is the finished training's own final/ (the folder marked with the key)
    return (str(final) if best is curve[-1] else best["checkpoint"]), curve


def run_action_sft(P: Mapping, run_dir) -> dict:
    """Stage 2: SFT of the stage-1 model on (frames, description, action question) -> action text;
    then Track B metrics and CLIP score on the eval split."""
    run_dir = runs.resolve_run_dir(run_dir)
    sd = runs.stage_dir(run_dir, STAGE)
    t0 = time.time()
    m1 = runs.require_metrics(run_dir, "rloo", "stage 2 (action SFT)")
    ckpt1 = m1.get("checkpoint")
    if not ckpt1 or not Path(ckpt1).is_dir():
        raise FileNotFoundError(f"{run_dir / 'metrics.json'}: field rloo.checkpoint {ckpt1!r} is not a folder; "
                                "rerun notebook 05 (rloo)")
    stage2 = P["action_sft"]
    eval_split = P["eval"]["split"]
    train = load_samples(P["data"], run_dir, "train", stage2.get("train_samples"))
    test = load_samples(P["data"], run_dir, eval_split, P["rloo"].get("eval_samples"))
    d_train, d_test = _descriptions(run_dir, "train"), _descriptions(run_dir, eval_split)
    train = [s for s in train if s.id in d_train]
    rows = action_rows(train, d_train, P, where=str(run_dir / "rloo" / "descriptions_train.jsonl"))

    # one training per key: the stage-2 settings, the stage-1 model (its own key) and the exact
    # descriptions and frames it learns from; a retrained stage 1 means a new stage 2
    cfg, spec = sft_cfg(P), model_spec(P)
    desc_train = run_dir / "rloo" / "descriptions_train.jsonl"
    key = stage_key({"sft": {k: v for k, v in cfg.items() if k != "peft_config"}, "prompt": ACTION_PROMPT,
                     "frames": int(P["rloo"]["frames"]), **vlm_settings(spec)},
                    {"model": artifact_id(ckpt1), "descriptions": artifact_id(desc_train), "data": samples_id(train)})

    def train_it(out):
        model, processor = load_vlm(spec, run_dir, path=ckpt1, for_training=True)
        return train_sft(model, processor, rows, out, cfg, spec.trainer_precision())

    res = keyed_training(sd / "checkpoints", key, train_it, stage=STAGE, stage1=ckpt1)
    chosen, val_curve = res["checkpoint"], []
    if stage2["select_checkpoint"] == "val":
        chosen, val_curve = select_on_val(P, run_dir, key, res["checkpoint"])
    model, processor = load_vlm(spec, run_dir, path=chosen)
    reward = load_reward(P, run_dir)
    # answers are reused only for this key and these eval descriptions
    tag = f"key:{key}/{Path(chosen).name}+{artifact_id(run_dir / 'rloo' / f'descriptions_{eval_split}.jsonl')}"
    recs = predict_actions(model, processor, test, d_test, P, sd / "predictions.jsonl", reward, tag=tag)
    tb = track_b_metrics(recs)
    n = len(recs)
    scores = [r["clip_score"] for r in recs]
    thr = reward.threshold
    d1 = runs.read_jsonl(run_dir / "rloo" / f"descriptions_{eval_split}.jsonl")
    d1 = [r for r in d1 if r["id"] in {s.id for s in test}]
    pred_counts = [sum(r["pred_actions"][i] for r in recs) for i in range(4)]
    metrics = {
        "checkpoint": chosen,
        "trained_checkpoint": res["checkpoint"],
        "val_curve": val_curve,
        "key": key,
        "reused": res["reused"],
        "stage1_checkpoint": ckpt1,
        "train_loss": res.get("train_loss"),
        "train_seconds": res.get("seconds"),
        "n_train": len(rows),
        "eval": {
            "split": eval_split, **tb,
            "clip_score": sum(scores) / max(n, 1),
            "clip_match": sum(s > thr for s in scores) / max(n, 1),
            "description_clip_score": sum(r["clip_score"] for r in d1) / max(len(d1), 1),
            "description_clip_match": sum(bool(r["clip_match"]) for r in d1) / max(len(d1), 1),
            "pred_action_counts": pred_counts,
            "only_stop": bool(n and all(r["pred_actions"] == [0, 1, 0, 0] for r in recs)),
        },
    }
    runs.record_metrics(run_dir, STAGE, metrics)

    metrics["figures"] = [str(p) for p in dist.on_main(_figs, run_dir, stages=(STAGE,))]
    metrics["seconds"] = time.time() - t0
    runs.record_metrics(run_dir, STAGE, {"figures": metrics["figures"], "seconds": metrics["seconds"]})
    return metrics
