"""Paper B's CLIP reward: pairs, fine-tune, judging, the reward object, and its loader."""
from __future__ import annotations

import os
from typing import Mapping

from kit import runs
from kit.models.clip import load_clip
from kit.models.device import model_spec
from kit.reward.clip_reward import CLIPReward


def load_reward(P: Mapping, run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> CLIPReward:
    """The reward model notebook 02 recorded (`metrics.json["clip_finetune"]["reward_checkpoint"]`),
    or `checkpoint` if given, wrapped as a TRL-callable CLIPReward with the profile's settings."""
    if checkpoint is None:
        m = runs.require_metrics(run_dir, "clip_finetune", "the CLIP reward (kit.reward.load_reward)")
        checkpoint = m.get("reward_checkpoint")
        if not checkpoint:
            raise FileNotFoundError(f"{runs.resolve_run_dir(run_dir) / 'metrics.json'}: field "
                                    "clip_finetune.reward_checkpoint is missing; rerun notebook 02")
    cfg = P.get("clip_finetune", {}) or {}
    bundle = load_clip(model_spec(P), run_dir, checkpoint=checkpoint)
    return CLIPReward(bundle, score=cfg.get("reward_score", "cosine"), threshold=float(cfg.get("threshold", 0.5)),
                      cache_size=int(cfg.get("reward_cache_size", 4096)))


__all__ = ["CLIPReward", "load_reward"]
