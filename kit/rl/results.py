"""Paper B's two stages' results as the run folder holds them: where stage 1's training is, its reward
log per epoch, and the tables notebooks 05 and 06 show (read without loading the trainer or a model)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

from kit import runs
from kit.eval.metrics import best_on_val
from kit.labels import format_action_answer, stage2_prompt
from kit.rl.advantages import leave_one_out


def work_dir(run_dir) -> Path:
    """The folder of this run's stage-1 training (reward_log.jsonl, samples.jsonl, variance.json, final/):
    the one metrics.json's `rloo.work_dir` names, else run_dir/rloo."""
    rd = runs.resolve_run_dir(run_dir)
    w = (runs.read_metrics(rd).get("rloo") or {}).get("work_dir")
    return Path(w) if w else rd / "rloo"


def per_epoch(reward_log: Sequence[Mapping]) -> list[dict]:
    """Per epoch: mean reward, mean best-of-k reward (paper B's Fig. 6), their spread, steps."""
    out: dict[int, dict] = {}
    for r in reward_log:
        e = out.setdefault(int(r["epoch"]), {"epoch": int(r["epoch"]), "_r": [], "_b": [], "_z": []})
        e["_r"].append(r["mean_reward"])
        e["_b"].append(r["best_of_k"])
        e["_z"].append(r.get("frac_zero_std", 0.0))
    rows = []
    for ep in sorted(out):
        e = out[ep]
        n = len(e["_r"])
        mean = sum(e["_r"]) / n
        rows.append({"epoch": ep, "mean_reward": mean, "best_of_k": sum(e["_b"]) / n,
                     "reward_sem": (sum((x - mean) ** 2 for x in e["_r"]) / max(n - 1, 1)) ** 0.5 / n ** 0.5,
                     "frac_zero_std": sum(e["_z"]) / n, "steps": n})
    return rows


# ---- notebook 05's tables (stage 1) ----
def per_epoch_table(run_dir):
    """Per-epoch mean reward and mean best-of-k (paper B's Fig. 6) as a DataFrame."""
    log = runs.read_jsonl(work_dir(run_dir) / "reward_log.jsonl")
    df = pd.DataFrame(per_epoch(log))
    df["epoch"] += 1
    return df.set_index("epoch").round(4)


def advantage_table(run_dir, step: int | None = None):
    """One group of k rewards (the first prompt of a step, default the first step): the trainer's
    advantages next to Eq. 1 recomputed by kit.rl.advantages.leave_one_out."""
    samples = runs.read_jsonl(work_dir(run_dir) / "samples.jsonl")
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
    samples = runs.read_jsonl(work_dir(run_dir) / "samples.jsonl")
    picked = [("early", s) for s in samples[:n_steps]] + [("late", s) for s in samples[-n_steps:]]
    rows = [{"when": w, "step": s["step"], "epoch": s["epoch"] + 1, "image": s["id"], "description": c,
             "reward": round(r, 4)} for w, s in picked for c, r in zip(s["completions"], s["rewards"])]
    return pd.DataFrame(rows)


def variance_table(run_dir):
    """The estimators' gradient variance on the same batches, its ratio to RLOO's, and the scale-free
    relative variance (within a prompt, over the estimator's own squared mean gradient)."""
    v = runs.read_json(work_dir(run_dir) / "variance.json")
    if not v:
        return pd.DataFrame()
    return pd.DataFrame({b: {k: e[k] for k in ("within_prompt", "within_ratio_to_rloo", "total",
                                                "total_ratio_to_rloo", "mean_grad_norm", "relative_within",
                                                "relative_ratio_to_rloo") if k in e}
                         for b, e in v["estimators"].items()}).T.round(4)


CLIP_COLUMNS = ("clip_score", "clip_match", "specificity", "distinct", "n")


def clip_table(run_dir):
    """CLIP score and match of the eval split's greedy descriptions: base model vs after stage 1."""
    e = (runs.read_metrics(run_dir).get("rloo") or {}).get("eval") or {}
    rows = {}
    if e.get("base_model"):
        rows["base model"] = {k: e["base_model"].get(k) for k in CLIP_COLUMNS}
    rows["after stage 1 (RLOO)"] = {k: e.get(k) for k in CLIP_COLUMNS}
    return pd.DataFrame(rows).T


# ---- notebook 06's tables (stage 2) ----
def stage2_examples(run_dir, n: int = 3):
    """The first `n` stage-2 prompts (stage-1 description + action question) with their targets."""
    recs = runs.read_jsonl(runs.resolve_run_dir(run_dir) / "action_sft" / "predictions.jsonl")[:n]
    return pd.DataFrame([{"id": r["id"], "prompt": stage2_prompt(r["description"]),
                          "target": format_action_answer(r["gt_actions"]), "model output": r["output"]}
                         for r in recs])


def stage2_table(run_dir):
    """Headline Track B metrics and CLIP scores of stage 2."""
    e = (runs.read_metrics(run_dir).get("action_sft") or {}).get("eval") or {}
    row = {"action accuracy": e["action"]["accuracy"], "action mF1": e["action"]["macro_f1"],
           "action F1_all": e["action"]["f1_all"], "reason accuracy": e["reason"]["accuracy"],
           "reason mF1": e["reason"]["macro_f1"], "CLIP score (output)": e["clip_score"],
           "CLIP match (output)": e["clip_match"], "CLIP score (stage-1 description)": e["description_clip_score"],
           "unparseable": e.get("unparseable"), "n": e.get("n")}
    curve = (runs.read_metrics(run_dir).get("action_sft") or {}).get("val_curve") or []
    if curve:  # the epoch that answered test, chosen on val (action_sft.select_checkpoint)
        best = best_on_val(curve)
        row.update({"epoch chosen on val": best["epoch"], "epochs trained": len(curve),
                    "val action mF1": best["val_action_mF1"]})
    return pd.DataFrame([row], index=["stage 2"]).T.round(4)
