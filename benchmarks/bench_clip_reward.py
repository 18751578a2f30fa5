"""The CLIP reward for one RLOO batch (B prompts x k completions) with and without the image cache.

TRL hands the reward k equal copies of each prompt's frames; the cache encodes each distinct image
once (and, from the second epoch on, not at all). Tiny CLIP built in-process, toy-world frames,
64 distinct completion texts per call (the worst case for the text side, which cannot be cached).

Writes benchmarks/results/clip_reward.json: median seconds per reward call for
- `uncached`: every (frames, completion) encoded as given,
- `cached_cold`: first sight of the images (epoch 1: only the k-fold repetition is saved),
- `cached_warm`: images seen before (epochs 2+),
and the speedups uncached / cached, plus the image side alone (`image_side_*`: embeddings for the
call's B*k frame lists, which is all the cache can save). Target: >= k/2 at k = 8. Not a timed test.

The text side (tokenising and encoding B*k distinct completions) is the same work with or without
the cache, so the whole-call speedup is bounded by (image + text) / text; with the tiny CLIP both
encoders are about equally cheap, which caps it near 3x however good the cache is.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
B, K, FRAMES = 8, 8, 1
CALLS = 5


def _frames(n: int, offset: int):
    from kit.data.render import render_scene
    from kit.data.toyworld import sample_scene

    return [[render_scene(sample_scene(0, "bench", offset + i), 256, 144, frame_back=f)[0]
             for f in range(FRAMES - 1, -1, -1)] for i in range(n)]


def _texts(rng: random.Random, n: int) -> list[str]:
    from kit import labels as L

    out = []
    for _ in range(n):
        a = [int(rng.random() < 0.4) for _ in range(L.N_ACTIONS)]
        r = [int(rng.random() < 0.12) for _ in range(L.N_REASONS)]
        out.append(rng.choice([L.format_answer(a, r), "A road with two lanes. " + L.reason_text(r)]))
    return out


def _batch(frames, rng):
    """One RLOO reward call's inputs: each prompt's frames repeated k times as fresh equal copies."""
    images = [[f.copy() for f in fr] for fr in frames for _ in range(K)]
    completions = [[{"role": "assistant", "content": t}] for t in _texts(rng, len(images))]
    return images, completions


def _time(reward, batches) -> list[float]:
    out = []
    for images, completions in batches:
        t0 = time.perf_counter()
        reward(prompts=[None] * len(images), completions=completions, images=images)
        out.append(time.perf_counter() - t0)
    return out


def _vit_b_32_image_side(batches) -> dict:
    """The same image-side measurement with open_clip's ViT-B-32 architecture (random weights: nothing
    is downloaded), the size paper B's reward has: encoding dominates and the cache saves ~k-fold."""
    import open_clip

    from kit.models.clip import ClipBundle
    from kit.reward.clip_reward import CLIPReward

    model, _, pre = open_clip.create_model_and_transforms("ViT-B-32")
    model.eval()
    b = ClipBundle(model, pre, open_clip.get_tokenizer("ViT-B-32"), __import__("torch").device("cpu"), "ViT-B-32")
    unc, cold = [], []
    for images, _ in batches:
        flat = [f for fr in images for f in fr]
        t0 = time.perf_counter()
        CLIPReward(b, use_cache=False).image_embeddings(flat)
        unc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        CLIPReward(b, use_cache=True).image_embeddings(flat)
        cold.append(time.perf_counter() - t0)
    med = statistics.median
    return {"weights": "random init (architecture only)", "image_side_seconds": {"uncached": med(unc), "cached_cold": med(cold)},
            "image_side_speedup_cold": med(unc) / med(cold)}


def main() -> dict:
    import torch

    from kit.models.clip import build_tiny_clip
    from kit.reward.clip_reward import CLIPReward

    torch.set_num_threads(1)
    rng = random.Random(0)
    bundle = build_tiny_clip(seed=0)
    groups = [_frames(B, CALLS * 0 + i * B) for i in range(CALLS)]   # CALLS batches of B distinct prompts
    batches = [_batch(g, rng) for g in groups]
    CLIPReward(bundle, use_cache=False)(completions=batches[0][1][:4], images=batches[0][0][:4])  # warm-up

    uncached = _time(CLIPReward(bundle, use_cache=False), batches)
    cached = CLIPReward(bundle, use_cache=True)
    cold = _time(cached, batches)             # every batch brings new images
    warm = _time(cached, [_batch(g, rng) for g in groups])  # same images again, new texts

    # the image side alone (what the cache is for): embeddings for one call's B*k frame lists
    img_uncached, img_cached = [], []
    for images, _ in batches:
        flat = [f for fr in images for f in fr]
        t0 = time.perf_counter()
        CLIPReward(bundle, use_cache=False).image_embeddings(flat)
        img_uncached.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        CLIPReward(bundle, use_cache=True).image_embeddings(flat)   # a fresh cache: first sight
        img_cached.append(time.perf_counter() - t0)

    med = statistics.median
    res = {
        "batch_prompts": B, "k": K, "frames": FRAMES, "calls": CALLS, "threads": 1,
        "seconds_per_call": {"uncached": med(uncached), "cached_cold": med(cold), "cached_warm": med(warm)},
        "speedup_cold": med(uncached) / med(cold),
        "speedup_warm": med(uncached) / med(warm),
        "image_side_seconds": {"uncached": med(img_uncached), "cached_cold": med(img_cached)},
        "image_side_speedup_cold": med(img_uncached) / med(img_cached),
        "target_speedup": K / 2,
        "cache": {"hits": cached.hits, "misses": cached.misses},
    }
    res["vit_b_32"] = _vit_b_32_image_side(batches[:2])
    res["meets_target"] = {"cold": res["speedup_cold"] >= K / 2, "warm": res["speedup_warm"] >= K / 2,
                           "image_side": res["image_side_speedup_cold"] >= K / 2,
                           "vit_b_32_image_side": res["vit_b_32"]["image_side_speedup_cold"] >= K / 2}
    out = HERE / "results" / "clip_reward.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from kit.runs import write_json

    write_json(out, res)
    return res


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
