"""Paper B's semantic-alignment reward, callable by TRL's RLOOTrainer.

For M frames I_1..I_M and a text T (paper B, Sec. 3.4):
    v = mean_i CLIP_image(I_i)  (each frame embedding L2-normalized),  t = CLIP_text(T) (normalized),
    cosine reward = v . t
The fine-tuned reward model was trained as a binary classifier on logits v.t * exp(logit_scale)
(+ a learned bias when the fine-tune used one); `probability` = sigmoid of that logit, which is what
paper B's Table 1 reports as "Avg. Sim." and thresholds at 0.5 for "Match %".

RLOO scores k completions per prompt and sees every training image once per epoch, so image
embeddings are computed once per distinct image and kept in a bounded LRU cache. TRL hands the k
copies of a prompt over as separate, equal PIL objects, together with the dataset's other columns:
the cache keys frames by the sample's `id` column (`key_column`) when the call carries one, and by
a checksum of the pixels otherwise (evaluation lists). Texts are encoded in batches of similar
length, each distinct text once per call.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Any, Sequence

import torch
from PIL import Image

from kit.models.clip import ClipBundle

SCORES = ("cosine", "probability")


def _pixels(img: Image.Image):
    """The image's pixel memory without a copy where Pillow can export it (Arrow C data interface,
    Pillow >= 11.2 with pyarrow, which `datasets` already needs); else `tobytes()` (a copy)."""
    try:
        import pyarrow as pa

        return pa.array(img).buffers()[-1]
    except Exception:  # no pyarrow, an older Pillow, or a mode Pillow cannot export
        return img.tobytes()


def image_key(img: Image.Image) -> tuple:
    """Content key of a PIL image: mode, size and two checksums (CRC-32 and Adler-32) of its pixels.

    Not a cryptographic hash on purpose: hashing the pixels is the cost the cache adds to every call,
    and blake2b/sha1 over a frame cost as much as encoding it with the tiny CLIP. The two checksums
    together give 64 bits; for the few thousand images a cache holds, an accidental collision is
    ~1e-12 (the inputs are images, not adversaries).
    """
    buf = _pixels(img)
    return (img.mode, img.size, zlib.crc32(buf), zlib.adler32(buf))


def id_keys(ids: Sequence, frame_lists: Sequence[Sequence[Image.Image]]) -> list[tuple]:
    """Cache keys of every frame of every entry, from the entries' ids (no pixel is read). The frame's
    place and size are in the key too: an id names a clip, not one picture."""
    return [("id", str(i), j, len(fl), f.mode, f.size) for i, fl in zip(ids, frame_lists) for j, f in enumerate(fl)]


def completion_text(c: Any) -> str:
    """The text of a TRL completion: a plain string, or conversational
    `[{"role": "assistant", "content": str | [{"type": "text", "text": ...}, ...]}, ...]`."""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        c = [c]
    parts: list[str] = []
    for msg in c or []:
        content = msg.get("content", "") if isinstance(msg, dict) else msg
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, (list, tuple)):
            for p in content:
                if isinstance(p, dict) and p.get("type", "text") == "text":
                    parts.append(str(p.get("text", "")))
                elif isinstance(p, str):
                    parts.append(p)
        else:
            raise TypeError(f"completion: expected str or a list of chat messages, got content {type(content).__name__}")
    return " ".join(p for p in parts if p)


def _frames(item: Any) -> list[Image.Image]:
    if isinstance(item, Image.Image):
        return [item]
    if isinstance(item, (list, tuple)) and item and all(isinstance(f, Image.Image) for f in item):
        return list(item)
    raise TypeError("images: expected a PIL image or a non-empty list of PIL frames per sample, "
                    f"got {type(item).__name__}")


class CLIPReward:
    """`reward(prompts, completions, images=[[frames], ...], id=[...], **kw) -> list[float]` for TRL
    (`id`, the `key_column`, is optional: it names each entry's frames for the cache).

    Also `clip_score(images_or_frame_lists, texts, kind=None)` and `clip_match(...)` for evaluation.
    `score` picks what the reward returns (`cosine`: paper B's Eq.; `probability`: the calibrated
    sigmoid). `clip_score` defaults to `probability` (paper B's "Avg. Sim." / CLIP score) and
    `clip_match` is `clip_score > threshold`.
    """

    def __init__(self, bundle: ClipBundle, frames_key: str = "images", *, score: str = "cosine",
                 threshold: float = 0.5, cache_size: int = 4096, batch_size: int = 64, text_batch_size: int = 16,
                 use_cache: bool = True, key_column: str | None = "id"):
        if score not in SCORES:
            raise ValueError(f"CLIPReward score: expected one of {SCORES}, got {score!r}")
        self.bundle = bundle
        self.frames_key = frames_key
        self.score = score
        self.threshold = float(threshold)
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)              # images per encoder call
        self.text_batch_size = int(text_batch_size)    # texts per encoder call, sorted by length
        self.use_cache = use_cache
        self.key_column = key_column                   # dataset column that names a sample's frames
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.__name__ = "clip_reward"  # TRL names logged reward columns after the function
        bundle.model.eval()

    # ---- embeddings -------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_images(self, imgs: list[Image.Image]) -> torch.Tensor:
        out = []
        for i in range(0, len(imgs), self.batch_size):
            px = torch.stack([self.bundle.preprocess(im.convert("RGB")) for im in imgs[i:i + self.batch_size]])
            out.append(self.bundle.encode_images(px).float())
        return torch.cat(out)

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.bundle.encode_texts(texts, batch_size=self.text_batch_size).float()

    def image_embeddings(self, frames: Sequence[Image.Image], keys: Sequence[tuple] | None = None) -> torch.Tensor:
        """Normalized embeddings [len(frames), d]; each distinct image encoded once (cached).

        `keys`, one per frame, name the images (equal keys: equal pixels); without them the pixels are
        checksummed (measured on one CPU thread: 0.08 ms for a 256x144 frame, 1.6 ms for a 1280x720 one)."""
        if not self.use_cache:
            return self._encode_images(list(frames))
        if keys is None:
            by_id: dict[int, tuple] = {}
            keys = []
            for f in frames:  # the same object often appears several times: hash it once
                k = by_id.get(id(f))
                if k is None:
                    k = by_id[id(f)] = image_key(f)
                keys.append(k)
        elif len(keys) != len(frames):
            raise ValueError(f"CLIPReward.image_embeddings: {len(keys)} keys for {len(frames)} frames")
        missing: dict[tuple, Image.Image] = {}
        for k, f in zip(keys, frames):
            if k in self._cache:
                self._cache.move_to_end(k)
            elif k not in missing:
                missing[k] = f
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            embs = self._encode_images(list(missing.values()))
            fresh = dict(zip(missing.keys(), embs))
        rows = [self._cache[k] if k in self._cache else fresh[k] for k in keys]
        for k, e in fresh.items():
            self._cache[k] = e
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(rows)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        uniq = list(dict.fromkeys(texts))
        embs = self._encode_texts(uniq)
        index = {t: i for i, t in enumerate(uniq)}
        return embs[[index[t] for t in texts]]

    def clear_cache(self) -> None:
        self._cache.clear()
        self.hits = self.misses = 0

    # ---- scores -----------------------------------------------------------------------------
    def similarity(self, images_or_frame_lists: Sequence, texts: Sequence[str],
                   ids: Sequence | None = None) -> torch.Tensor:
        """Paper B's v . t per (frames, text) pair: mean of normalized frame embeddings dot text.
        `ids` (one per entry, e.g. the sample id) name each entry's frames for the cache."""
        if len(images_or_frame_lists) != len(texts):
            raise ValueError(f"CLIPReward: {len(images_or_frame_lists)} image entries but {len(texts)} texts; "
                             "expected one frame list per text")
        frame_lists = [_frames(x) for x in images_or_frame_lists]
        flat = [f for fl in frame_lists for f in fl]
        keys = None
        if ids is not None:
            if len(ids) != len(frame_lists):
                raise ValueError(f"CLIPReward: {len(ids)} ids for {len(frame_lists)} image entries")
            keys = id_keys(ids, frame_lists)
        img = self.image_embeddings(flat, keys)
        sizes = torch.tensor([len(fl) for fl in frame_lists])
        seg = torch.repeat_interleave(torch.arange(len(frame_lists)), sizes).to(img.device)
        v = torch.zeros(len(frame_lists), img.shape[1], device=img.device).index_add_(0, seg, img)
        v = v / sizes.to(img.device)[:, None]
        t = self.text_embeddings(list(texts)).to(img.device)
        return (v * t).sum(-1)

    def to_probability(self, cos: torch.Tensor) -> torch.Tensor:
        m = self.bundle.model
        logits = cos * m.logit_scale.detach().float().exp()
        if getattr(m, "logit_bias", None) is not None:
            logits = logits + m.logit_bias.detach().float()
        return torch.sigmoid(logits)

    def clip_score(self, images_or_frame_lists: Sequence, texts: Sequence[str], kind: str | None = None,
                   ids: Sequence | None = None) -> list[float]:
        kind = kind or "probability"
        if kind not in SCORES:
            raise ValueError(f"clip_score kind: expected one of {SCORES}, got {kind!r}")
        cos = self.similarity(images_or_frame_lists, texts, ids)
        out = cos if kind == "cosine" else self.to_probability(cos)
        return [float(x) for x in out.cpu()]

    def clip_match(self, images_or_frame_lists: Sequence, texts: Sequence[str], kind: str | None = None) -> list[bool]:
        return [s > self.threshold for s in self.clip_score(images_or_frame_lists, texts, kind)]

    def __call__(self, prompts: Sequence | None = None, completions: Sequence | None = None, **kw) -> list[float]:
        if completions is None:
            raise TypeError("CLIPReward: called without completions")
        images = kw.get(self.frames_key)
        if images is None:
            raise KeyError(f"CLIPReward: no '{self.frames_key}' column among the reward's keyword arguments "
                           f"(got {sorted(kw)}); the training dataset must carry the frames")
        texts = [completion_text(c) for c in completions]
        ids = kw.get(self.key_column) if self.key_column else None
        if ids is not None and any(i is None for i in ids):
            ids = None
        return self.clip_score(images, texts, kind=self.score, ids=ids)

