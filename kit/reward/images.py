"""The reward CLIP's training images: decoded once into a tensor store, and augmented per batch on
the tensors (random resized crop, colour jitter, a flip that swaps left and right in the text), as
torchvision draws them; the pairs as a torch Dataset."""
from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from kit.models.clip import ClipBundle
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


def collate_pairs(batch):
    x, t, y, truth = zip(*batch)
    return list(x), list(t), torch.tensor(y), list(truth)
