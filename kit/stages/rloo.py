"""Notebook 05, paper B stage 1: RLOO with the CLIP reward, no text labels.

Reads: the BDD-OIA root (kit.data.bdd_oia_root), the base VLM (load_vlm), the fine-tuned CLIP
reward (kit.reward.load_reward, notebook 02). Writes run_dir/rloo/:
  checkpoints/<key>/     one training per stage key (rloo_key: settings, base VLM, reward model,
                         training frames); a rerun resumes or reuses only its own key. Inside:
    trainer/             TRL checkpoints (resume), final/ the trained model or adapter
    reward_log.jsonl     one record per step: mean reward, mean best-of-k, ...
    samples.jsonl        each step's first prompt: its k sampled descriptions, rewards, advantages
    variance.json        gradient variance of the rloo / greedy (SCST) / none / a2c estimators, same batches
  descriptions_<split>.jsonl  greedy descriptions of the stage-1 model (and of the base model for
                         the eval split), with CLIP score and match; stage 2 reads them
  figures/*.png
(rloo.compare_baselines train in checkpoints/<their key>/ too.)
and metrics.json["rloo"].
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Mapping, Sequence

from kit import dist, runs
from kit.eval.generate import generate_records
from kit.keys import artifact_id, keyed_training, samples_id, stage_key
from kit.labels import DESCRIBE_PROMPT
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, lora_config, resolve_vlm_path, vlm_settings
from kit.reward import load_reward
from kit.reward.metrics import clip_summary
from kit.rl.figures import figures_from_run as _figs
from kit.rl.results import per_epoch
from kit.rl.samples import frames_of, load_samples
from kit.rl.trainer import rloo_rows, train_rloo
from kit.rl.variance import gradient_variance

STAGE = "rloo"


def describe(model, processor, samples: Sequence, P: Mapping, reward, out_path: Path, *, tag: str,
             desc: str = "describe") -> list[dict]:
    """Greedy stage-1 descriptions of `samples` with CLIP score/match against their frames; written to
    out_path (jsonl, records id, description, clip_score, clip_match, clip_score_other_image). Reused
    and resumed as `kit.eval.generate.generate_records` says, for the same `tag` (the checkpoint)."""
    def records(part, items, texts):
        frames = [f for f, _ in items]
        scores = reward.clip_score(frames, texts)
        # the same descriptions against another sample's frames: a description that fits its own
        # image better than a stranger's says something about the image; a generic one does not
        others = reward.clip_score(frames[1:] + frames[:1], texts) if len(part) > 1 else [None] * len(part)
        return [{"id": s.id, "description": t, "clip_score": c, "clip_match": c > reward.threshold,
                 "clip_score_other_image": o} for s, t, c, o in zip(part, texts, scores, others)]

    return generate_records(model, processor, samples, out_path, {"tag": tag, "version": 2},
                            items=lambda part: [(frames_of(s, P["rloo"]["frames"]), DESCRIBE_PROMPT) for s in part],
                            records=records, batch_size=int(P["eval"]["batch_size"]),
                            max_new_tokens=int(P["rloo"]["max_new_tokens"]), desc=desc)


def trainer_settings(P: Mapping) -> tuple[dict, dict]:
    """What kit.rl.trainer takes from a profile, resolved once: the `rloo:` section with the run's
    seed, and the TrainingArguments precision keywords of its device (kit.models.device)."""
    return {**P["rloo"], "seed": int(P["seed"])}, model_spec(P).trainer_precision()


def rloo_key(P: Mapping, run_dir, baseline: str, train: Sequence, reward) -> str:
    """Stage 1's key (kit.keys): the rloo section (its baseline as trained), seed, prompt, model
    and reward settings, and the identities of the base VLM, the reward model and the training
    frames. What does not change the training (how many samples are described afterwards, the
    other baselines to compare) is left out."""
    rloo_cfg = {k: v for k, v in P["rloo"].items()
                if k not in ("eval_samples", "describe_train_samples", "compare_baselines")}
    clip_cfg, spec = P.get("clip_finetune") or {}, model_spec(P)
    settings = {"rloo": {**rloo_cfg, "baseline": baseline}, "seed": int(P["seed"]), "prompt": DESCRIBE_PROMPT,
                "reward": {"score": clip_cfg.get("reward_score"), "threshold": clip_cfg.get("threshold")}, **vlm_settings(spec)}
    return stage_key(settings, {"model": artifact_id(resolve_vlm_path(spec, run_dir)),
                                "reward": artifact_id(reward.bundle.source), "data": samples_id(train)})


def _train_one(P: Mapping, run_dir: Path, train: Sequence, reward, baseline: str, with_variance: bool) -> dict:
    """Stage 1 with one baseline, once per key, in rloo/checkpoints/<key>/ (a rerun with the same key
    resumes or reuses; anything else starts afresh). With `with_variance`, the estimators' gradient
    variance is measured on the untrained model first (without moving the RNGs training draws from)."""
    rloo_cfg, spec = P["rloo"], model_spec(P)
    rows = rloo_rows(train, int(P["rloo"]["frames"]))

    def train_it(out: Path) -> dict:
        model, processor = load_vlm(spec, run_dir, for_training=True)

        def before(trainer, ckpt):
            var_path = out / "variance.json"
            if with_variance and int(rloo_cfg["variance_prompts"]) > 0 and ckpt is None and not var_path.exists():
                runs.write_json(var_path, gradient_variance(trainer, n_prompts=int(rloo_cfg["variance_prompts"]),
                                                            repeats=int(rloo_cfg["variance_repeats"]), seed=int(P["seed"])))

        res = train_rloo(model, processor, reward, rows, out, *trainer_settings(P), baseline=baseline,
                         peft_config=lora_config(spec), before_train=before)
        del model, res["trainer"]
        gc.collect()
        return {"checkpoint": res["checkpoint"], "per_epoch": per_epoch(res["reward_log"]),
                "steps": len(res["reward_log"]), "seconds": res["seconds"], "baseline": baseline}

    key = rloo_key(P, run_dir, baseline, train, reward)
    return keyed_training(runs.stage_dir(run_dir, STAGE) / "checkpoints", key, train_it, stage=STAGE)


def run_rloo(P: Mapping, run_dir) -> dict:
    """Stage 1 (paper B Eq. 1, Algorithm 2): RLOO against the CLIP reward; then greedy descriptions
    of the train and eval splits by the trained model, scored by the reward's clip_score/match."""
    import torch

    run_dir = runs.resolve_run_dir(run_dir)
    sd = runs.stage_dir(run_dir, STAGE)
    rloo_cfg = P["rloo"]
    t0 = time.time()
    reward = load_reward(P, run_dir)
    train = load_samples(P["data"], run_dir, "train", rloo_cfg["train_samples"])
    eval_split = P["eval"]["split"]
    test = load_samples(P["data"], run_dir, eval_split, rloo_cfg.get("eval_samples"))

    curves: dict[str, list] = {}
    for b in [b for b in (rloo_cfg.get("compare_baselines") or []) if b != rloo_cfg["baseline"]]:
        curves[b] = _train_one(P, run_dir, train, reward, b, False)["per_epoch"]
    res = _train_one(P, run_dir, train, reward, rloo_cfg["baseline"], True)
    key, ckpt = res["key"], res["checkpoint"]
    work = Path(ckpt).parent

    # the base model's descriptions of the eval split (reused while the base model is the same)
    spec = model_spec(P)
    base = resolve_vlm_path(spec, run_dir)
    model, processor = load_vlm(spec, run_dir)
    before = describe(model, processor, test, P, reward, sd / f"descriptions_{eval_split}_base.jsonl",
                      tag=artifact_id(base), desc="describe (base model)")
    # the saved stage-1 model (what stage 2 loads) describes; its answers are reused only under its key.
    # stage 2 trains on every train sample up to rloo.describe_train_samples, not only the RL prompts
    # (greedy decoding is cheap; a tiny model needs more than rloo.train_samples examples to learn the actions)
    model, processor = load_vlm(spec, run_dir, ckpt)
    tag = f"key:{key}"
    to_describe = load_samples(P["data"], run_dir, "train", rloo_cfg.get("describe_train_samples"))
    desc_train = describe(model, processor, to_describe, P, reward, sd / "descriptions_train.jsonl", tag=tag,
                          desc="describe (train)")
    desc_eval = describe(model, processor, test, P, reward, sd / f"descriptions_{eval_split}.jsonl", tag=tag,
                         desc=f"describe ({eval_split})")
    # the val split's descriptions: what settings such as rloo.beta are chosen on (test is reported once)
    val = load_samples(P["data"], run_dir, "val", rloo_cfg.get("eval_samples"))
    desc_val = describe(model, processor, val, P, reward, sd / "descriptions_val.jsonl", tag=tag, desc="describe (val)")

    per_epoch = res["per_epoch"]
    variance = runs.read_json(work / "variance.json")
    metrics = {
        "baseline": rloo_cfg["baseline"],
        "checkpoint": ckpt,
        "key": key,
        "reused": res["reused"],
        "work_dir": str(work),
        "per_epoch": per_epoch,
        "reward_first_epoch": per_epoch[0]["mean_reward"] if per_epoch else None,
        "reward_last_epoch": per_epoch[-1]["mean_reward"] if per_epoch else None,
        "reward_rose": bool(per_epoch and per_epoch[-1]["mean_reward"] > per_epoch[0]["mean_reward"]),
        "steps": res["steps"],
        "train_seconds": res["seconds"],
        "compare_baselines": curves,
        "eval": {"split": eval_split, **clip_summary(desc_eval), "base_model": clip_summary(before),
                 "train_split": clip_summary(desc_train)},
        "val": clip_summary(desc_val),
        "variance": ({b: {k: v for k, v in e.items() if k != "per_prompt_within"}
                      for b, e in variance["estimators"].items()} if variance else None),
        "descriptions": {"train": str(sd / "descriptions_train.jsonl"),
                         eval_split: str(sd / f"descriptions_{eval_split}.jsonl")},
    }
    runs.record_metrics(run_dir, STAGE, metrics)
    metrics["figures"] = [str(p) for p in dist.on_main(_figs, run_dir, stages=(STAGE,))]
    metrics["seconds"] = time.time() - t0
    runs.record_metrics(run_dir, STAGE, {"figures": metrics["figures"], "seconds": metrics["seconds"]})
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return metrics
