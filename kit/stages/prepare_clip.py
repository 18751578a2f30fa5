"""Notebook 00, CLIP part: build the tiny open_clip CLIP and pretrain it contrastively on the toy
world's generic captions (they describe the scene, never the action), so that notebook 02 starts,
like paper B, from a CLIP that knows the domain's words but was never taught to judge reasons.

Held-out check: image-to-text top-1 retrieval among the val split's captions, before and after,
against chance. Real profiles (an open_clip model name) skip this stage.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from kit import dist, runs
from kit.data import bdd_oia_root
from kit.data.bdd_oia import load_split
from kit.data.toyworld import load_captions
from kit.keys import mark, processes
from kit.models import clip as kclip
from kit.models.device import model_spec
from kit.params import params_hash
from kit.reward.clip_reward import CLIPReward
from kit.reward.pairs import swap_left_right
from kit.reward.parallel import DataParallel, Towers, fused_adamw


def _load_items(root: Path, split: str, max_samples: int | None = None):
    caps = load_captions(root, split)
    items = []
    for s in load_split(root, split, max_samples=max_samples).samples:
        if s.file_name not in caps:
            raise FileNotFoundError(f"{root}/toy/scenes_{split}.jsonl: no caption for {s.file_name}; "
                                    "regenerate the toy data (notebook 00)")
        items.append((s.load_images()[-1], caps[s.file_name]))
    return items


@torch.no_grad()
def retrieval_accuracy(bundle: kclip.ClipBundle, images: Sequence, captions: Sequence[str],
                       batch_size: int = 128) -> dict:
    """Image-to-text and text-to-image top-1 among the given captions. Equal captions count as a hit
    (two scenes can share a description); chance is the expected top-1 of a random pick."""
    caps = list(captions)
    enc = CLIPReward(bundle, use_cache=False, batch_size=batch_size, text_batch_size=batch_size)  # puts it in eval
    sim = enc.image_embeddings(list(images)) @ enc.text_embeddings(caps).T
    same = torch.tensor([[a == b for b in caps] for a in caps])
    i2t = same[torch.arange(len(caps)), sim.argmax(1)].float().mean().item()
    t2i = same[torch.arange(len(caps)), sim.argmax(0)].float().mean().item()
    chance = same.float().mean(1).mean().item()
    return {"i2t_top1": i2t, "t2i_top1": t2i, "chance": chance, "n": len(caps)}


def pretrain_clip(bundle: kclip.ClipBundle, train_items: Sequence, cfg: Mapping, *, seed: int = 0,
                  flip: bool = True) -> list[dict]:
    """Contrastive pretraining with open_clip's ClipLoss (AdamW, cosine lr). `train_items` are
    (PIL image, caption). With `flip`, half of each batch is mirrored and its caption's left/right
    swapped. Returns per-epoch {epoch, loss, seconds}.

    Under `accelerate launch` with N processes it trains data-parallel (kit.reward.parallel.DataParallel):
    every process its block of each batch, the loss over the whole batch's gathered embeddings."""
    from open_clip import ClipLoss
    from tqdm.auto import tqdm

    epochs, lr, bs = int(cfg["clip_epochs"]), float(cfg["clip_lr"]), int(cfg["clip_batch_size"])
    model, dev = bundle.model, bundle.device
    g = torch.Generator().manual_seed(seed)
    # Tiny images, fixed eval transform: preprocess once, keep tensors (the loop then costs only the model).
    px = torch.stack([bundle.preprocess(im) for im, _ in train_items])
    toks = bundle.tokenizer([c for _, c in train_items])
    toks_flip = bundle.tokenizer([swap_left_right(c) for _, c in train_items])
    loss_fn = ClipLoss()
    opt = fused_adamw(model.parameters(), lr=lr, weight_decay=0.1, device=dev)  # fused kernel: see kit.reward.parallel
    steps = epochs * math.ceil(len(train_items) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    # One process: None, and the loop is the plain PyTorch one (its numbers are the README's).
    par = DataParallel(Towers(model, lambda m, x, t: m(x, t)), bundle) if dist.num_processes() > 1 else None
    hist = []
    bar = tqdm(range(epochs), desc="pretrain tiny CLIP", disable=not dist.is_main())
    for ep in bar:
        model.train()
        t0, tot, nb = time.perf_counter(), 0.0, 0
        perm = torch.randperm(len(train_items), generator=g)
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:
                continue
            x, t = px[idx].clone(), toks[idx].clone()
            if flip:
                m = torch.rand(len(idx), generator=g) < 0.5
                x[m] = x[m].flip(-1)
                t[m] = toks_flip[idx][m]
            if par is None:
                loss = loss_fn(*model(x.to(dev), t.to(dev)))
            else:  # this process's block of the batch; the loss over every process's embeddings
                img, txt, scale = par.ddp(par.own(x).to(dev), par.own(t).to(dev))
                loss = loss_fn(par.gather(img, len(idx)), par.gather(txt, len(idx)), scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients are averaged over the processes here
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            tot, nb = tot + loss.item(), nb + 1
        hist.append({"epoch": ep + 1, "loss": tot / max(nb, 1), "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{hist[-1]['loss']:.3f}")
    if par is not None:
        par.close()
    model.eval()
    return hist


def run_prepare_clip(P: Mapping, run_dir) -> dict:
    """Build + pretrain the tiny CLIP into run_dir/prepare/models/clip; record
    metrics.json["prepare"]["models"]["clip"]. Skipped (recorded as such) for real CLIP names or
    with pretrain.enabled false; a rerun with the same settings reuses the saved model.

    Under `accelerate launch` with N processes the pretraining is data-parallel; the main process
    measures retrieval and writes the model."""
    rd = runs.resolve_run_dir(run_dir)
    name = (P.get("models", {}).get("clip") or {}).get("name", "tiny")
    pre = P.get("pretrain") or {}
    if name != "tiny":
        out = {"skipped": True, "reason": f"models.clip.name is {name!r}: a real CLIP is loaded as it is"}
        runs.record_metrics(rd, "prepare", {"models": {"clip": out}})
        return out
    out_dir = kclip.tiny_clip_dir(rd)
    settings = {"pretrain": {k: v for k, v in pre.items() if k.startswith("clip_") or k == "enabled"},
                "seed": P.get("seed"), "data": P.get("data"), "config": kclip.TINY_CONFIG.read_text(), **processes()}
    h = params_hash(settings)
    cfg_path = out_dir / kclip.CONFIG_FILE
    saved = (runs.read_json(cfg_path, {}) or {}).get("kit", {}) if cfg_path.exists() else {}
    if saved.get("settings_hash") == h and saved.get("metrics"):
        out = dict(saved["metrics"], resumed=True)
        runs.record_metrics(rd, "prepare", {"models": {"clip": out}})
        return out

    t0 = time.perf_counter()
    root = bdd_oia_root(P["data"], rd)
    seed = int(P.get("seed", 0))
    bundle = kclip.build_tiny_clip(seed=seed, device=model_spec(P).device)
    val = _load_items(root, "val")
    before = dist.on_main(retrieval_accuracy, bundle, [im for im, _ in val], [c for _, c in val])
    hist = []
    if pre.get("enabled", True):
        train = _load_items(root, "train")
        hist = pretrain_clip(bundle, train, pre, seed=seed)
    after = dist.on_main(retrieval_accuracy, bundle, [im for im, _ in val], [c for _, c in val])
    out = {
        "path": str(out_dir), "architecture": kclip.TINY_NAME,
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "pretrained": bool(pre.get("enabled", True)), "epochs": len(hist),
        "loss": [round(h["loss"], 4) for h in hist],
        "retrieval_before": before, "retrieval_after": after, "heldout_split": "val",
        "logit_scale": float(bundle.model.logit_scale.detach().exp()),
        "seconds": round(time.perf_counter() - t0, 2), "processes": dist.num_processes(),
    }
    extra = {"settings_hash": h, "metrics": out, "what": "tiny CLIP, contrastively pretrained on toy-world captions"}
    dist.on_main(kclip.save_clip, bundle, out_dir, extra)
    mark(out_dir, h, stage="prepare_clip")  # later stages' keys take this as the model's identity
    runs.record_metrics(rd, "prepare", {"models": {"clip": out}})
    return out

