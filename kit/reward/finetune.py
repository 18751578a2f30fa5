"""Fine-tune an open_clip CLIP as paper B's image-text match classifier (its Appendix B.3).

logit = cos(img, txt) * exp(logit_scale) [+ logit_bias], BCEWithLogitsLoss, AdamW, grad-clip,
ReduceLROnPlateau on validation AUROC, early stopping, keep the best-AUROC model.

The loop is written here because open_clip ships a contrastive training script, not a trainer for a
binary pair classifier, and the HF Trainer does not fit open_clip models without more glue than this.

On the bias (`clip_finetune.logit_bias`): the paper's logit has none, so the 0.5 decision boundary
sits at cosine 0 and the model must learn to push wrong texts to negative cosine. That is learnable
(and AUROC does not depend on it), so the default follows the paper; a number adds a learnable
scalar bias (open_clip's own `logit_bias`, as in SigLIP) initialised there, which calibrates the
probabilities faster. The fine-tuned checkpoint stores it, and the reward uses it for probabilities.

On in-batch negatives (`clip_finetune.in_batch_negatives`): the pair loss labels one text per image
per pair. Every other text of the batch is free supervision once the image's true texts are known, as
in SigLIP's sigmoid loss. open_clip's `SigLipLoss` takes the diagonal as the only positive of each row,
which is wrong here (one reason is true of many scenes), so `pair_loss` builds the labels from the
annotations. Off by default in the paper profiles.

Its parts: kit.reward.images (the decoded image store and the per-batch augmentation), kit.reward.loss
(the pair logit, its loss, and the scores of a set of pairs), kit.reward.parallel (several processes);
this file holds the loop, its key and its checkpoints.
"""
from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from kit import dist, runs
from kit.keys import mark, marked_key, stage_key
from kit.models.clip import WEIGHTS_FILE, ClipBundle, save_clip
from kit.reward.images import BatchAugment, ImageStore, PairDataset, collate_pairs
from kit.reward.loss import auroc_of, bce_of, pair_loss, score_pairs
from kit.reward.pairs import Pair
from kit.reward.parallel import DataParallel, fused_adamw, towers

FINETUNE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "plateau_factor", "plateau_patience",
                 "early_stop_patience", "flip", "random_resized_crop_scale", "color_jitter", "logit_bias",
                 "in_batch_negatives")


def finetune_key(train: Sequence[Pair], val: Sequence[Pair], cfg: Mapping, *, seed: int,
                 upstream: Mapping[str, str], truths: Mapping[str, Sequence[str]] | None = None) -> str:
    """The stage key (kit.keys) of one fine-tune: its settings, its pairs, and `upstream`, the
    identities of the starting CLIP and of the images (kit.keys.artifact_id / samples_id)."""
    settings = {"cfg": {k: cfg.get(k) for k in FINETUNE_KEYS}, "seed": seed, "augment": BatchAugment.VERSION,
                "train": [(p.id, p.text, p.label) for p in train], "val": [(p.id, p.text, p.label) for p in val]}
    if cfg.get("in_batch_negatives"):  # the in-batch labels come from the train images' true texts
        settings["truths"] = sorted({(p.id, tuple(sorted(set(truths[str(p.image_path)])))) for p in train})
    return stage_key(settings, upstream)


def finetune_clip(bundle: ClipBundle, train: Sequence[Pair], val: Sequence[Pair], out_dir: str | Path,
                  cfg: Mapping, *, seed: int = 0, store: ImageStore | None = None, desc: str = "CLIP fine-tune",
                  truths: Mapping[str, Sequence[str]] | None = None,
                  upstream: Mapping[str, str] | None = None) -> dict:
    """Train `bundle.model` in place; the best-val-AUROC model is saved to `out_dir/best` (marked with
    the run's key) and loaded back into `bundle.model` at the end. Resumes from `out_dir/last.pt`
    (written every epoch) only when its key matches; a finished run of the same key
    (`out_dir/history.json`) returns without training. The key is `finetune_key(...)` with
    `upstream` (default: the starting model's source); the stage puts each key in its own out_dir.

    Returns {"history": [per-epoch dicts], "best_epoch", "best_val_auroc", "checkpoint", "key", "seconds", ...}.

    Under `accelerate launch` with N processes it trains data-parallel (`DataParallel`): every process
    gets the same result; the main one scores the validation pairs and writes the files.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    in_batch = bool(cfg.get("in_batch_negatives", False))
    if in_batch:
        if truths is None:
            raise ValueError("clip_finetune.in_batch_negatives needs each image's true texts "
                             "(finetune_clip(truths=...))")
        truths = {str(k): frozenset(v) for k, v in truths.items()}
        missing = sorted({str(p.image_path) for p in train} - set(truths))
        if missing:
            raise ValueError(f"finetune_clip: no true texts given for {len(missing)} train images, e.g. {missing[0]}")
    h = finetune_key(train, val, cfg, seed=seed, upstream=upstream or {"clip": bundle.source}, truths=truths)
    done = runs.read_json(out / "history.json", {}) or {}
    if done.get("done") and done.get("key") == h and marked_key(out / "best") == h:
        _load_weights(bundle, out / "best")
        return dict(done, resumed=True)

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    model = bundle.model
    if cfg.get("logit_bias") is not None and getattr(model, "logit_bias", None) is None:
        model.logit_bias = torch.nn.Parameter(torch.tensor(float(cfg["logit_bias"]), device=bundle.device))
    store = store or ImageStore.for_bundle([p.image_path for p in list(train) + list(val)], bundle)
    ds = PairDataset(train, store, flip=str(cfg.get("flip", "off")), seed=seed, truths=truths if in_batch else None)
    augment = BatchAugment(bundle, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=int(cfg["batch_size"]), shuffle=True, generator=g,
                                     collate_fn=collate_pairs, drop_last=False, num_workers=0)
    opt = fused_adamw(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]), device=bundle.device)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=float(cfg["plateau_factor"]),
                                                       patience=int(cfg["plateau_patience"]))
    history: list[dict] = []
    best_auroc, best_epoch, bad = -math.inf, 0, 0
    start_epoch = 1

    last = out / "last.pt"
    # tensors, numbers, strings and containers only: nothing in a run folder is unpickled as code
    state = torch.load(last, map_location=bundle.device, weights_only=True) if last.exists() else None
    if state and state.get("key") == h:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, best_auroc, best_epoch, bad = state["history"], state["best_auroc"], state["best_epoch"], state["bad"]
        start_epoch = state["epoch"] + 1
        ds.rng.setstate(state["py_rng"])
        g.set_state(state["torch_rng"])
        augment.set_state(state["aug_rng"])
    else:
        # Epoch 0: the starting model on the validation pairs (the "pretrained" point of the curves).
        s0 = dist.on_main(score_pairs, bundle, val, store)
        best_auroc = auroc_of(s0["label"], s0["cos"])
        history.append({"epoch": 0, "train_loss": None, "val_loss": bce_of(s0), "val_auroc": best_auroc,
                        "lr": float(cfg["lr"]), "seconds": 0.0})
        dist.on_main(save_clip, bundle, out / "best", {"epoch": 0, "val_auroc": best_auroc})
    # One process: None, and the loop is the plain PyTorch one (its numbers are the README's).
    par = DataParallel(towers(model), bundle) if dist.num_processes() > 1 else None

    epochs = int(cfg["epochs"])
    bar = tqdm(range(start_epoch, epochs + 1), desc=desc, initial=start_epoch - 1, total=epochs,
               disable=not dist.is_main())
    stopped_early = False
    for ep in bar:
        if bad >= int(cfg["early_stop_patience"]):
            stopped_early = True
            break
        t0 = time.perf_counter()
        model.train()
        tot, n = 0.0, 0
        for x, texts, y, truth in dl:
            # several processes: the whole batch's loss, each process encoding its block of the images
            loss, paper_loss = pair_loss(model, bundle, augment(x), texts, y,
                                         truth if in_batch else None, encode=par.encode if par else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients are averaged over the processes here
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            tot, n = tot + paper_loss.item() * len(y), n + len(y)
        model.eval()
        # scored by the main process alone: every process then takes the same lr and stopping decisions
        s = dist.on_main(score_pairs, bundle, val, store)
        auroc = auroc_of(s["label"], s["cos"])
        sched.step(auroc)
        improved = auroc > best_auroc
        if improved:
            best_auroc, best_epoch, bad = auroc, ep, 0
            dist.on_main(save_clip, bundle, out / "best", {"epoch": ep, "val_auroc": auroc})
        else:
            bad += 1
        history.append({"epoch": ep, "train_loss": tot / max(n, 1), "val_loss": bce_of(s), "val_auroc": auroc,
                        "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{tot / max(n, 1):.3f}", val_auroc=f"{auroc:.3f}")
        dist.on_main(_atomic_torch_save, {
            "key": h, "epoch": ep, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "history": history, "best_auroc": best_auroc,
            "best_epoch": best_epoch, "bad": bad, "py_rng": ds.rng.getstate(),
            "torch_rng": g.get_state(), "aug_rng": augment.state()}, last)
    bar.close()
    if par is not None:
        par.close()
    if bad >= int(cfg["early_stop_patience"]) and history[-1]["epoch"] < epochs:
        stopped_early = True
    _load_weights(bundle, out / "best")  # every process: the main one wrote it (on_main returns once it has)
    mark(out / "best", h, stage="clip_finetune")
    result = {"done": True, "key": h, "history": history, "best_epoch": best_epoch,
              "best_val_auroc": best_auroc, "stopped_early": stopped_early, "epochs_run": history[-1]["epoch"],
              "checkpoint": str(out / "best"),
              "seconds": round(time.perf_counter() - t_start, 2)}
    runs.write_json(out / "history.json", result)  # kit.runs: the main process writes
    if dist.is_main():
        last.unlink(missing_ok=True)
    dist.wait()  # no process returns before the run's files are there
    return result


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load_weights(bundle: ClipBundle, ckpt_dir: Path) -> None:
    """Put the weights saved in `ckpt_dir` (by save_clip) into `bundle.model`."""
    from safetensors.torch import load_file

    sd = load_file(str(Path(ckpt_dir) / WEIGHTS_FILE), device=str(bundle.device))
    if "logit_bias" in sd and getattr(bundle.model, "logit_bias", None) is None:
        bundle.model.logit_bias = torch.nn.Parameter(sd["logit_bias"].clone())
    bundle.model.load_state_dict(sd)
    bundle.model.eval()


def clone_bundle(bundle: ClipBundle) -> ClipBundle:
    """A deep copy (to fine-tune a second model from the same start)."""
    b = copy.copy(bundle)
    b.model = copy.deepcopy(bundle.model)
    return b
