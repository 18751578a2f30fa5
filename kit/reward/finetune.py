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
"""
from __future__ import annotations

import copy
import math
import os
import random
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from kit import dist, runs
from kit.keys import mark, marked_key, stage_key
from kit.models.clip import WEIGHTS_FILE, ClipBundle, encode_text, save_clip
from kit.reward.clip_reward import CLIPReward
from kit.reward.pairs import Pair, swap_left_right

FLIP_MODES = ("swap_text", "off")


class ImageStore:
    """The pair images in memory, read once and shrunk to at most `2 x image_size` on the short side
    (the model sees `image_size` pixels anyway; real BDD-OIA frames are 1280x720). With `squash_to`
    (a model whose preprocessing squashes the whole frame, like the tiny CLIP), they are stored at
    exactly that (height, width). Each is kept once, as an [h, w, 3] uint8 array: `store[path]` is
    it as a PIL image (for the eval transform), `store.pixels(path)` a [3, h, w] tensor view of it
    (for `BatchAugment`)."""

    def __init__(self, paths: Sequence[str], image_size: int, squash_to: tuple[int, int] | None = None):
        from tqdm.auto import tqdm

        self.side = 2 * int(image_size)
        self.images: dict[str, np.ndarray] = {}
        for p in tqdm(sorted(set(map(str, paths))), desc="load pair images", leave=False):
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB")
            except OSError as e:
                raise FileNotFoundError(f"{p}: cannot read the pair's image ({e}); expected a JPEG/PNG") from None
            if squash_to is not None:
                im = im.resize((int(squash_to[1]), int(squash_to[0])), Image.BICUBIC)
            elif min(im.size) > self.side:
                f = self.side / min(im.size)
                im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BICUBIC)
            self.images[p] = np.array(im)  # writable: torch views it without a warning

    @classmethod
    def for_bundle(cls, paths: Sequence[str], bundle: ClipBundle) -> "ImageStore":
        squash = bundle.preprocess_cfg.get("resize_mode") == "squash"
        return cls(paths, bundle.image_size, squash_to=bundle.image_hw if squash else None)

    def __getitem__(self, path: str) -> Image.Image:
        return Image.fromarray(self.images[str(path)])

    def pixels(self, path: str) -> torch.Tensor:
        return torch.from_numpy(self.images[str(path)]).permute(2, 0, 1)


class BatchAugment:
    """RandomResizedCrop and ColorJitter for a whole batch at once, on the model's device, from the
    pixels of `ImageStore.pixels`; returns the model's normalised float input.

    Written here rather than torchvision's per-image PIL transforms because those ran in the training
    loop's process and took as long as the tiny CLIP's own steps (on a GPU they would starve it); a
    DataLoader worker would compete for the same two cores. The semantics are torchvision's: the crop
    box is drawn as `RandomResizedCrop.get_params` draws it (area share in `scale`, log-uniform aspect
    around the model's, 10 tries, then the whole image), cut from the stored image and resized to the
    model's size (bicubic, antialiased); brightness, contrast and saturation factors are drawn
    uniformly in [1 - j, 1 + j] per image and applied as torchvision's adjust_* functions do, in that
    fixed order (torchvision draws an order per image). No hue jitter: a hue shift turns a red light
    green and would teach wrong labels. The flip is done with the text (`flip_pair`).

    Every draw comes from the augmenter's own generator (`state()` / `set_state()`), so a run
    resumed from its last epoch sees the augmentations the uninterrupted run saw."""

    VERSION = 2  # in the fine-tune's key: a model trained with other augmentations is not reused (1: torchvision's, per image)

    def __init__(self, bundle: ClipBundle, cfg: Mapping, seed: int = 0):
        self.hw = bundle.image_hw
        self.device = bundle.device
        self.scale = tuple(float(v) for v in (cfg.get("random_resized_crop_scale") or (0.8, 1.0)))
        r = self.hw[1] / self.hw[0]
        self.log_ratio = (math.log(0.75 * r), math.log(r / 0.75))
        self.jitter = float(cfg.get("color_jitter", 0.0) or 0.0)
        pc = bundle.preprocess_cfg
        self.mean = torch.tensor(pc["mean"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(pc["std"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.gen = torch.Generator().manual_seed(int(seed))

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)

    def _uniform(self, lo: float, hi: float, n: int = 1) -> torch.Tensor:
        return torch.empty(n).uniform_(lo, hi, generator=self.gen)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w), drawn as torchvision's RandomResizedCrop.get_params draws it."""
        area = height * width
        for _ in range(10):
            target = area * float(self._uniform(*self.scale))
            aspect = math.exp(float(self._uniform(*self.log_ratio)))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=self.gen))
                left = int(torch.randint(0, width - w + 1, (1,), generator=self.gen))
                return top, left, h, w
        ratio = width / height  # fallback: the whole image, trimmed to the aspect range
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if ratio < lo:
            w, h = width, int(round(width / lo))
        elif ratio > hi:
            h, w = height, int(round(height * hi))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 [3, H, W] images (any sizes) -> normalised float [n, 3, h, w] on the device."""
        out = []
        for img in images:
            top, left, h, w = self.crop_box(img.shape[-2], img.shape[-1])
            x = img[:, top:top + h, left:left + w].to(self.device, non_blocking=True).float().unsqueeze(0)
            if (h, w) != tuple(self.hw):
                x = torch.nn.functional.interpolate(x, size=self.hw, mode="bicubic", align_corners=False,
                                                    antialias=True).clamp_(0, 255)
            out.append(x)
        x = torch.cat(out).div_(255)
        if self.jitter > 0:
            n = len(out)
            f = self._uniform(max(0.0, 1 - self.jitter), 1 + self.jitter, 3 * n).view(3, n, 1, 1, 1).to(self.device)
            x = (x * f[0]).clamp_(0, 1)                                                    # brightness
            mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
            x = (f[1] * x + (1 - f[1]) * mean).clamp_(0, 1)                               # contrast
            x = (f[2] * x + (1 - f[2]) * _gray(x)).clamp_(0, 1)                           # saturation
        return (x - self.mean) / self.std


def _gray(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale, [n, 1, h, w]."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def flip_pair(img: torch.Tensor, text: str) -> tuple[torch.Tensor, str]:
    """A horizontal flip of the image ([3, h, w] pixels) with its text's left and right swapped."""
    return img.flip(-1), swap_left_right(text)


class PairDataset(torch.utils.data.Dataset):
    """(image pixels, text, label, the image's true texts as seen) per pair; `BatchAugment` augments
    the batch. `truths` (image path -> its true texts) is only needed for in-batch negatives; a
    flipped image's truths are swapped too."""

    def __init__(self, pairs: Sequence[Pair], store: ImageStore, flip: str = "off", seed: int = 0,
                 truths: Mapping[str, frozenset[str]] | None = None):
        if flip not in FLIP_MODES:
            raise ValueError(f"params clip_finetune.flip: expected one of {FLIP_MODES}, got {flip!r}")
        self.pairs, self.store, self.flip = list(pairs), store, flip
        self.truths = truths
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        p = self.pairs[i]
        img, text = self.store.pixels(p.image_path), p.text
        truth = self.truths[str(p.image_path)] if self.truths is not None else frozenset()
        if self.flip == "swap_text" and self.rng.random() < 0.5:
            img, text = flip_pair(img, text)
            truth = frozenset(swap_left_right(t) for t in truth)
        return img, text, float(p.label), truth


def _collate(batch):
    x, t, y, truth = zip(*batch)
    return list(x), list(t), torch.tensor(y), list(truth)


def _logits(model, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    logits = img @ txt.T * model.logit_scale.exp()
    if getattr(model, "logit_bias", None) is not None:
        logits = logits + model.logit_bias
    return logits


def _encode(model, bundle: ClipBundle, pixels: torch.Tensor, uniq: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    img = model.encode_image(pixels.to(bundle.device), normalize=True)
    txt = encode_text(model, bundle.tokenizer(uniq).to(bundle.device), normalize=True)
    return img, txt


def batch_logits(model, bundle: ClipBundle, pixels: torch.Tensor, texts: list[str],
                 encode=None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(pair logits [n], every image against every distinct text of the batch [n, m], those m texts).

    Each distinct text is encoded once (a batch of reasons repeats a few texts many times).
    `encode(pixels, uniq) -> (image embeddings, text embeddings)` stands in for the model's own
    encoders (several processes: `_DataParallel.encode`)."""
    uniq = sorted(set(texts))
    col = {t: j for j, t in enumerate(uniq)}
    img, txt = encode(pixels, uniq) if encode is not None else _encode(model, bundle, pixels, uniq)
    grid = _logits(model, img, txt)
    idx = torch.tensor([col[t] for t in texts], device=grid.device)
    return grid[torch.arange(len(texts), device=grid.device), idx], grid, uniq


def pair_loss(model, bundle: ClipBundle, pixels: torch.Tensor, texts: list[str], labels: torch.Tensor,
              truths: Sequence[frozenset[str]] | None = None, encode=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper B's loss, BCE-with-logits on the batch's pairs; with `truths` (each image's true texts)
    the BCE over every image against every distinct text of the batch is added, its positives and
    negatives weighted equally: the in-batch negatives of SigLIP's sigmoid loss, labelled by the
    image's true texts instead of the diagonal (a driving scene has several true reasons, and the
    same reason is true of many scenes).

    Returns (the loss to minimise, the pairs' BCE alone: what the history reports as train loss).
    `encode`: as in `batch_logits`."""
    pair, grid, uniq = batch_logits(model, bundle, pixels, texts, encode)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    paper = bce(pair, labels.to(pair.device))
    if truths is None:
        return paper, paper.detach()
    target = torch.tensor([[float(t in tr) for t in uniq] for tr in truths], device=grid.device)
    # Most of the grid is negatives (a scene has ~3 of ~16 texts): weight the two classes equally, as
    # the pairs are. Unweighted, they pulled the match probabilities down (toy test recall 0.70 at 0.5).
    pos = target.sum().clamp(min=1)
    neg = (target.numel() - target.sum()).clamp(min=1)
    w = torch.where(target > 0, 0.5 / pos, 0.5 / neg)
    return paper + bce(grid, target, weight=w, reduction="sum"), paper.detach()


@torch.no_grad()
def score_pairs(bundle: ClipBundle, pairs: Sequence[Pair], store: ImageStore) -> dict[str, np.ndarray]:
    """Eval-transform scores of every pair: cosine, logit and probability (each image and text once)."""
    r = CLIPReward(bundle, cache_size=len(pairs) + 1)
    cos = r.similarity([store[p.image_path] for p in pairs], [p.text for p in pairs])
    prob = r.to_probability(cos)
    return {"cos": cos.cpu().numpy(), "prob": prob.cpu().numpy(),
            "label": np.array([p.label for p in pairs], dtype=int)}


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def _bce(scores: Mapping[str, np.ndarray]) -> float:
    p = np.clip(scores["prob"], 1e-7, 1 - 1e-7)
    y = scores["label"]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


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

    Under `accelerate launch` with N processes it trains data-parallel (`_DataParallel`): every process
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
                                     collate_fn=_collate, drop_last=False, num_workers=0)
    opt = _adamw(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]), device=bundle.device)
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
        best_auroc = _auroc(s0["label"], s0["cos"])
        history.append({"epoch": 0, "train_loss": None, "val_loss": _bce(s0), "val_auroc": best_auroc,
                        "lr": float(cfg["lr"]), "seconds": 0.0})
        dist.on_main(save_clip, bundle, out / "best", {"epoch": 0, "val_auroc": best_auroc})
    # One process: None, and the loop is the plain PyTorch one (its numbers are the README's).
    par = _DataParallel(_towers(model), bundle) if dist.num_processes() > 1 else None

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
        auroc = _auroc(s["label"], s["cos"])
        sched.step(auroc)
        improved = auroc > best_auroc
        if improved:
            best_auroc, best_epoch, bad = auroc, ep, 0
            dist.on_main(save_clip, bundle, out / "best", {"epoch": ep, "val_auroc": auroc})
        else:
            bad += 1
        history.append({"epoch": ep, "train_loss": tot / max(n, 1), "val_loss": _bce(s), "val_auroc": auroc,
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


def _adamw(params, *, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """torch's AdamW, its fused kernel where the device has one (CPU and CUDA do): the same update,
    but on the tiny CLIP (93% of whose 3.4M weights are the BPE token table) the default per-tensor
    loop costs more than the forward and backward passes together."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                 fused=torch.device(device).type in ("cpu", "cuda"))
    except (RuntimeError, ValueError):  # a device/dtype without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class _Forward(torch.nn.Module):
    """`fn(model, *inputs)` as a module's forward: what DDP wraps (it syncs the gradients of what runs
    through its forward), and what accelerate patches in place of the model itself."""

    def __init__(self, model: torch.nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


def _towers(model: torch.nn.Module) -> _Forward:
    """The fine-tune's forward: normalised image embeddings of the pixels, text embeddings of the tokens."""
    return _Forward(model, lambda m, pixels, tokens: (m.encode_image(pixels, normalize=True),
                                                      encode_text(m, tokens, normalize=True)))


class _GatherRows(torch.autograd.Function):
    """Every process's block of rows, concatenated in rank order (blocks of unequal sizes); backward:
    the sum over processes of the whole batch's gradient, this process's rows of it (a reduce-scatter
    made of an all-reduce, which gloo has too)."""

    @staticmethod
    def forward(ctx, own: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        import torch.distributed as tdist

        ctx.sizes, ctx.rank = sizes, rank
        pad = max(sizes) - len(own)  # all_gather wants equal shapes
        own = torch.cat([own, own.new_zeros((pad, *own.shape[1:]))]) if pad else own.contiguous()
        parts = [torch.empty_like(own) for _ in sizes]
        tdist.all_gather(parts, own)
        return torch.cat([part[:k] for part, k in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as tdist

        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


class _DataParallel:
    """The CLIP training loops under `accelerate launch` with N processes (kit.dist): torch's
    DistributedDataParallel over the process group accelerate set up (kit.dist.state()).

    Not an accelerate.Accelerator: it would take the launch's DeepSpeed plugin and mixed precision,
    which are the VLM trainers' settings (ZeRO-2 wants a dataloader and a micro-batch size it cannot
    infer here, and would cast the CLIP to bf16); the CLIP is small and trains in fp32 as in one
    process, so plain DDP is what it needs whatever the launch config says.

    Every process draws the batches one process would (same seeds, the plain DataLoader; a sharded
    sampler would make every process repeat the others' augmentation draws) and runs its block of
    each batch's images (kit.dist.block_sizes) through the model. The embeddings are gathered with
    their gradients and every process computes the whole batch's loss, so the gradient DDP averages
    is the one a single process computes on that batch, up to float rounding: an image embedding's
    gradient comes back from each of the N processes (DDP divides by N), and what every process
    computes itself (the fine-tune's texts, the logit scale) has the full gradient everywhere.
    The price: every process loads and augments the whole batch."""

    def __init__(self, forward: torch.nn.Module, bundle: ClipBundle):
        from torch.nn.parallel import DistributedDataParallel

        state = dist.state()  # sets up the process group (gloo on CPUs, nccl on GPUs)
        dev = torch.device(bundle.device)
        if dev.type != state.device.type:
            raise RuntimeError(f"the CLIP is on {bundle.device} but accelerate's processes run on "
                               f"{state.device}; under accelerate launch leave the profile's device at auto")
        self.bundle = bundle
        self.ddp = DistributedDataParallel(forward, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.n, self.rank = state.num_processes, state.process_index

    def own(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous block of the batch's rows; its first row when the block is empty
        (a batch smaller than the number of processes): DDP needs every process to run the model,
        and `gather` drops that row."""
        sizes = dist.block_sizes(len(batch), self.n)
        start = sum(sizes[:self.rank])
        return batch[start:start + sizes[self.rank]] if sizes[self.rank] else batch[:1]

    def gather(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Every process's rows of an n-row batch (what it computed from `own`), in rank order, on
        every process; the gradient of each block flows back to the process that computed it."""
        sizes = dist.block_sizes(n, self.n)
        return _GatherRows.apply(rows[:sizes[self.rank]], sizes, self.rank)

    def encode(self, pixels: torch.Tensor, uniq: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_logits`' encoder (through `_towers`): this process's block of the images, gathered; every text."""
        dev = self.bundle.device
        img, txt = self.ddp(self.own(pixels).to(dev), self.bundle.tokenizer(uniq).to(dev))
        return self.gather(img, len(pixels)), txt

    def close(self) -> None:
        """Drop the DDP wrapper (the model itself stays as it was, trained)."""
        self.ddp = None


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
