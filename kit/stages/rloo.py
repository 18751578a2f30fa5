"""Notebook 05, paper B stage 1: RLOO with the CLIP reward, no text labels.

Reads: the BDD-OIA root (kit.data.bdd_oia_root), the base VLM (load_vlm), the fine-tuned CLIP
reward (kit.reward.load_reward, notebook 02). Writes run_dir/rloo/:
  trainer/               TRL checkpoints (resume), final/ the trained model or adapter
  reward_log.jsonl       one record per step: mean reward, mean best-of-k, ...
  samples.jsonl          each step's first prompt: its k sampled descriptions, rewards, advantages
  variance.json          gradient variance of the rloo / greedy (SCST) / none estimators, same batches
  descriptions_<split>.jsonl  greedy descriptions of the stage-1 model (and of the base model for
                         the eval split), with CLIP score and match; stage 2 reads them
  baseline_<name>/       the same training with another baseline (rloo.compare_baselines)
  figures/*.png
and metrics.json["rloo"].
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Mapping, Sequence

from kit import runs
from kit.labels import DESCRIBE_PROMPT

STAGE = "rloo"


def load_samples(P: Mapping, run_dir, split: str, cap: int | None = None) -> list:
    from kit.data import load_bdd_split

    return load_bdd_split(P, run_dir, split, cap).samples


def frames_of(sample, P: Mapping) -> list:
    """The frames a stage-1/stage-2 prompt shows: the last `rloo.frames` of the clip."""
    return sample.load_images()[-int(P["rloo"]["frames"]):]


def describe(model, processor, samples: Sequence, P: Mapping, reward, out_path: Path, *, tag: str,
             desc: str = "describe") -> list[dict]:
    """Greedy stage-1 descriptions of `samples` with CLIP score/match against their frames; written to
    out_path (jsonl, records id, description, clip_score, clip_match, clip_score_other_image). Reused
    and resumed as `kit.eval.generate.generate_records` says, for the same `tag` (the checkpoint)."""
    from kit.eval.generate import generate_records

    def records(part, items, texts):
        frames = [f for f, _ in items]
        scores = reward.clip_score(frames, texts)
        # the same descriptions against another sample's frames: a description that fits its own
        # image better than a stranger's says something about the image; a generic one does not
        others = reward.clip_score(frames[1:] + frames[:1], texts) if len(part) > 1 else [None] * len(part)
        return [{"id": s.id, "description": t, "clip_score": c, "clip_match": c > reward.threshold,
                 "clip_score_other_image": o} for s, t, c, o in zip(part, texts, scores, others)]

    return generate_records(model, processor, samples, out_path, {"tag": tag, "version": 2},
                            items=lambda part: [(frames_of(s, P), DESCRIBE_PROMPT) for s in part],
                            records=records, batch_size=int(P["eval"]["batch_size"]),
                            max_new_tokens=int(P["rloo"]["max_new_tokens"]), desc=desc)


def _train_one(P: Mapping, run_dir: Path, rows: list[dict], reward, out_dir: Path, baseline: str,
               with_extras: bool, eval_samples: Sequence) -> dict:
    """Load the base VLM and run stage 1 with one baseline. With `with_extras`, also measure the
    estimators' gradient variance and the base model's descriptions before training."""
    from kit.models.vlm import load_vlm, lora_config
    from kit.rl.rloo import train_rloo
    from kit.rl.variance import gradient_variance

    R = P["rloo"]
    sd = runs.stage_dir(run_dir, STAGE)
    model, processor = load_vlm(P, run_dir, for_training=True)
    extras: dict = {}

    def before(trainer, ckpt):
        if not with_extras:
            return None
        var_path = sd / "variance.json"
        if int(R["variance_prompts"]) > 0 and not var_path.exists() and ckpt is None:
            v = gradient_variance(trainer, rows, n_prompts=int(R["variance_prompts"]),
                                  repeats=int(R["variance_repeats"]), seed=int(P["seed"]))
            runs.write_json(var_path, v)
        if eval_samples and ckpt is None:
            extras["before"] = describe(trainer.model, processor, eval_samples, P, reward,
                                        sd / f"descriptions_{P['eval']['split']}_base.jsonl",
                                        tag="base", desc="describe (base model)")
        return None

    res = train_rloo(model, processor, reward, rows, out_dir, P, baseline=baseline,
                     peft_config=lora_config(P), before_train=before)
    res["model"], res["processor"] = res["trainer"].model, processor
    return res


def run_rloo(P: Mapping, run_dir) -> dict:
    """Stage 1 (paper B Eq. 1, Algorithm 2): RLOO against the CLIP reward; then greedy descriptions
    of the train and eval splits by the trained model, scored by the reward's clip_score/match."""
    import torch

    from kit.reward import load_reward
    from kit.reward.judge import clip_summary

    run_dir = runs.resolve_run_dir(run_dir)
    sd = runs.stage_dir(run_dir, STAGE)
    R = P["rloo"]
    t0 = time.time()
    reward = load_reward(P, run_dir)
    train = load_samples(P, run_dir, "train", R["train_samples"])
    eval_split = P["eval"]["split"]
    test = load_samples(P, run_dir, eval_split, R.get("eval_samples"))
    from kit.rl.rloo import rloo_rows

    rows = rloo_rows(train, P)

    # the comparison runs first (each frees its model), the main run last so its model stays for describing
    curves: dict[str, list] = {}
    compare = [b for b in (R.get("compare_baselines") or []) if b != R["baseline"]]
    for b in compare:
        r = _train_one(P, run_dir, rows, reward, sd / f"baseline_{b}", b, False, [])
        curves[b] = r["per_epoch"]
        del r
        gc.collect()

    res = _train_one(P, run_dir, rows, reward, sd, R["baseline"], True, test)
    curves[R["baseline"]] = res["per_epoch"]
    model, processor = res["model"], res["processor"]
    model.eval()
    ckpt = res["checkpoint"]
    tag = f"{ckpt}@{Path(ckpt).stat().st_mtime_ns}"
    # stage 2 trains on these: every train sample up to rloo.describe_train_samples, not only the RL prompts
    # (greedy decoding is cheap; a tiny model needs more than rloo.train_samples examples to learn the actions)
    to_describe = load_samples(P, run_dir, "train", R.get("describe_train_samples"))
    desc_train = describe(model, processor, to_describe, P, reward, sd / "descriptions_train.jsonl", tag=tag,
                          desc="describe (train)")
    desc_eval = describe(model, processor, test, P, reward, sd / f"descriptions_{eval_split}.jsonl", tag=tag,
                         desc=f"describe ({eval_split})")
    base_path = sd / f"descriptions_{eval_split}_base.jsonl"
    before = runs.read_jsonl(base_path) if base_path.exists() else None

    from kit.rl.figures import figures_from_run as _figs

    per_epoch = res["per_epoch"]
    variance = runs.read_json(sd / "variance.json")
    metrics = {
        "baseline": R["baseline"],
        "checkpoint": ckpt,
        "per_epoch": per_epoch,
        "reward_first_epoch": per_epoch[0]["mean_reward"] if per_epoch else None,
        "reward_last_epoch": per_epoch[-1]["mean_reward"] if per_epoch else None,
        "reward_rose": bool(per_epoch and per_epoch[-1]["mean_reward"] > per_epoch[0]["mean_reward"]),
        "steps": len(res["reward_log"]),
        "train_seconds": res["seconds"],
        "compare_baselines": {b: c for b, c in curves.items() if b != R["baseline"]},
        "eval": {"split": eval_split, **clip_summary(desc_eval),
                 "base_model": clip_summary(before) if before else None,
                 "train_split": clip_summary(desc_train)},
        "variance": ({b: {k: v for k, v in e.items() if k != "per_prompt_within"}
                      for b, e in variance["estimators"].items()} if variance else None),
        "descriptions": {"train": str(sd / "descriptions_train.jsonl"),
                         eval_split: str(sd / f"descriptions_{eval_split}.jsonl")},
    }
    runs.write_json(sd / "per_epoch.json", {"per_epoch": per_epoch, "compare": metrics["compare_baselines"],
                                             "main": R["baseline"]})
    runs.record_metrics(run_dir, STAGE, metrics)
    metrics["figures"] = [str(p) for p in _figs(run_dir, stages=(STAGE,))]
    metrics["seconds"] = time.time() - t0
    runs.record_metrics(run_dir, STAGE, {"figures": metrics["figures"], "seconds": metrics["seconds"]})
    del model, res
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return metrics


# ---- tables for notebook 05 (read from the run directory only) -----------------------------------------------
def per_epoch_table(run_dir):
    """Per-epoch mean reward and mean best-of-k (paper B's Fig. 6) as a DataFrame."""
    import pandas as pd

    from kit.rl.rloo import per_epoch

    log = runs.read_jsonl(runs.resolve_run_dir(run_dir) / STAGE / "reward_log.jsonl")
    df = pd.DataFrame(per_epoch(log))
    df["epoch"] += 1
    return df.set_index("epoch").round(4)


def advantage_table(run_dir, step: int | None = None):
    """One group of k rewards (the first prompt of a step, default the first step): the trainer's
    advantages next to Eq. 1 recomputed by kit.rl.advantages.leave_one_out."""
    import pandas as pd
    import torch

    from kit.rl.advantages import leave_one_out

    samples = runs.read_jsonl(runs.resolve_run_dir(run_dir) / STAGE / "samples.jsonl")
    s = samples[0] if step is None else next(x for x in samples if x["step"] == step)
    r = torch.tensor([s["rewards"]])
    k = r.shape[1]
    return pd.DataFrame({
        "completion": [c[:60] for c in s["completions"]],
        "reward r_i": s["rewards"],
        "mean of the other k-1": ((r.sum() - r[0]) / (k - 1)).tolist(),
        "A_i (Eq. 1, kit)": leave_one_out(r)[0].tolist(),
        "A_i (trainer)": s["advantages"],
    }).round(4)


def samples_table(run_dir, n_steps: int = 2):
    """Sampled descriptions of the first and last `n_steps` steps, with their rewards."""
    import pandas as pd

    samples = runs.read_jsonl(runs.resolve_run_dir(run_dir) / STAGE / "samples.jsonl")
    picked = [("early", s) for s in samples[:n_steps]] + [("late", s) for s in samples[-n_steps:]]
    rows = [{"when": w, "step": s["step"], "epoch": s["epoch"] + 1, "image": s["id"], "description": c,
             "reward": round(r, 4)} for w, s in picked for c, r in zip(s["completions"], s["rewards"])]
    return pd.DataFrame(rows)


def variance_table(run_dir):
    """The estimators' gradient variance on the same batches, and its ratio to RLOO's."""
    import pandas as pd

    v = runs.read_json(runs.resolve_run_dir(run_dir) / STAGE / "variance.json")
    if not v:
        return pd.DataFrame()
    return pd.DataFrame({b: {k: e[k] for k in ("within_prompt", "within_ratio_to_rloo", "total",
                                                "total_ratio_to_rloo", "mean_grad_norm") if k in e}
                         for b, e in v["estimators"].items()}).T.round(4)


CLIP_COLUMNS = ("clip_score", "clip_match", "specificity", "distinct", "n")


def clip_table(run_dir):
    """CLIP score and match of the eval split's greedy descriptions: base model vs after stage 1."""
    import pandas as pd

    e = (runs.read_metrics(run_dir).get(STAGE) or {}).get("eval") or {}
    rows = {}
    if e.get("base_model"):
        rows["base model"] = {k: e["base_model"].get(k) for k in CLIP_COLUMNS}
    rows["after stage 1 (RLOO)"] = {k: e.get(k) for k in CLIP_COLUMNS}
    return pd.DataFrame(rows).T
