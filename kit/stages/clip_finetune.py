"""Notebook 02: paper B's CLIP reward fine-tune (its Appendix B), judged as the paper does.

Reads: the BDD-OIA root (profile or notebook 00), the CLIP the profile names (tiny: notebook 00's).
Writes run_dir/clip_finetune/:
    <target>/pairs_{train,val,test}.jsonl   the pairs (image id, text, label)
    <target>/checkpoints/<key>/best/        the best-val-AUROC model (open_clip local-dir layout); <key> is the
                                            stage key (settings, pairs, starting CLIP, image bytes)
    <target>/checkpoints/<key>/history.json per-epoch train loss, val loss, val AUROC, lr
    <target>/scores_{val,test}.jsonl        per pair: probability and cosine, fine-tuned and pretrained
    table1.json                             paper B's Table 1 (Avg. Sim. / Match %)
    figures/*.png
metrics.json["clip_finetune"]: per target val/test AUROC, accuracy, precision, recall, F1, confusion,
the pretrained model's figures on the same pairs, Table 1, and `reward_checkpoint` (notebook 05's reward).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from kit import dist, runs
from kit.data import load_bdd_split
from kit.keys import artifact_id, keyed_dir, samples_id
from kit.models.clip import load_clip
from kit.models.device import model_spec
from kit.reward.clip_reward import CLIPReward
from kit.reward.figures import figures_from_run
from kit.reward.finetune import clone_bundle, finetune_clip, finetune_key
from kit.reward.images import ImageStore
from kit.reward.loss import score_pairs
from kit.reward.metrics import binary_metrics, similarity_table
from kit.reward.pairs import TARGETS, make_pairs, true_texts

STAGE = "clip_finetune"


def _strip_roc(m: Mapping) -> dict:
    return {k: v for k, v in m.items() if k != "roc"}


def run_clip_finetune(P: Mapping, run_dir) -> dict:
    """Under `accelerate launch` with N processes the fine-tunes are data-parallel (kit.reward.finetune);
    the main process scores the pairs, draws the figures and writes the files."""
    t0 = time.perf_counter()
    rd = runs.resolve_run_dir(run_dir)
    clip_cfg = dict(P.get("clip_finetune") or {})
    target = clip_cfg.get("target", "reason")
    if target not in TARGETS:
        raise ValueError(f"params clip_finetune.target: expected one of {TARGETS}, got {target!r}")
    thr = float(clip_cfg.get("threshold", 0.5))
    sd = runs.stage_dir(rd, STAGE)
    samples = [s for sp in (clip_cfg.get("source_splits") or ["train"]) for s in load_bdd_split(P["data"], rd, sp).samples]
    targets = [target] + ([t for t in TARGETS if t != target] if clip_cfg.get("compare_targets", True) else [])

    base = load_clip(model_spec(P), rd)
    upstream = {"clip": artifact_id(base.source) if Path(base.source).exists() else f"id:{base.name}/{base.source}",
                "images": samples_id(samples)}
    results: dict = {}
    tuned: dict = {}
    for tgt in targets:
        td = sd / tgt
        pairs = make_pairs(samples, tgt, clip_cfg.get("splits"), seed=int(clip_cfg.get("split_seed", 42)))
        for split, ps in pairs.items():
            runs.write_jsonl(td / f"pairs_{split}.jsonl", [p.to_dict() for p in ps])
        store = ImageStore.for_bundle([p.image_path for _, ps in pairs.items() for p in ps], base)
        before = {sp: dist.on_main(score_pairs, base, pairs[sp], store) for sp in ("val", "test")}
        bundle = clone_bundle(base)
        truths = {str(s.image_path): true_texts(s, tgt) for s in samples}
        # one folder per key: changed settings, another starting CLIP or other images train afresh
        key = finetune_key(pairs.train, pairs.val, clip_cfg, seed=int(P.get("seed", 0)), upstream=upstream, truths=truths)
        fit = finetune_clip(bundle, pairs.train, pairs.val, keyed_dir(td / "checkpoints", key), clip_cfg,
                            seed=int(P.get("seed", 0)), store=store, desc=f"fine-tune CLIP on {tgt} pairs",
                            truths=truths, upstream=upstream)
        after = {sp: dist.on_main(score_pairs, bundle, pairs[sp], store) for sp in ("val", "test")}
        res = {"pairs": pairs.stats, "checkpoint": fit["checkpoint"], "key": key, "reused": bool(fit.get("resumed")),
               "best_epoch": fit["best_epoch"],
               "best_val_auroc": fit["best_val_auroc"], "epochs_run": fit["epochs_run"],
               "stopped_early": fit["stopped_early"], "train_seconds": fit["seconds"], "pretrained": {}}
        for sp in ("val", "test"):
            recs = [{"id": p.id, "text": p.text, "label": p.label, "anchor": p.anchor,
                     "prob": float(after[sp]["prob"][i]), "cos": float(after[sp]["cos"][i]),
                     "pretrained_prob": float(before[sp]["prob"][i]), "pretrained_cos": float(before[sp]["cos"][i])}
                    for i, p in enumerate(pairs[sp])]
            runs.write_jsonl(td / f"scores_{sp}.jsonl", recs)
            res[sp] = _strip_roc(binary_metrics(after[sp]["label"], after[sp]["prob"], thr))
            res["pretrained"][sp] = _strip_roc(binary_metrics(before[sp]["label"], before[sp]["prob"], thr))
        results[tgt] = res
        tuned[tgt] = bundle

    table_samples = load_bdd_split(P["data"], rd, "test", int(clip_cfg.get("table_samples") or 0) or None).samples
    rewards = {"pretrained": CLIPReward(base, threshold=thr)}
    rewards.update({f"{t}_ft": CLIPReward(b, threshold=thr) for t, b in tuned.items()})
    table = dist.on_main(similarity_table, rewards, table_samples, thr)
    runs.write_json(sd / "table1.json", {"threshold": thr, "samples": len(table_samples), "split": "test",
                                         "table": table})

    main = results[target]
    out = {
        "target": target, "targets": targets, "reward_checkpoint": main["checkpoint"],
        "val_auroc": main["val"]["auroc"], "test_auroc": main["test"]["auroc"],
        "pretrained_test_auroc": main["pretrained"]["test"]["auroc"],
        "test": main["test"], "val": main["val"], "models": results, "table1": table,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    runs.record_metrics(rd, STAGE, out)
    out["figures"] = [str(p) for p in dist.on_main(figures_from_run, rd)]
    return out
