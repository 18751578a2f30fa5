"""CLIP models through open_clip: the tiny offline CLIP, saving, and one loader for every CLIP spec.

A CLIP spec is `models.clip.name` (+ `models.clip.pretrained`) in the profile, or a checkpoint:
- `tiny`: the kit's own small open_clip config (configs/kit-tiny-clip.json, registered with
  `open_clip.add_model_config`), built and contrastively pretrained by notebook 00 and saved to
  `run_dir/prepare/models/clip`;
- an open_clip model name (`ViT-B-32`) with a pretrained tag (`openai`) or a weights file;
- a saved directory (what `save_clip` writes: open_clip's own `local-dir:` layout,
  `open_clip_config.json` + `open_clip_model.safetensors`), e.g. a fine-tuned reward model.

Every model comes back through `open_clip.create_model_and_transforms` + `open_clip.get_tokenizer`.
The tokenizer is open_clip's bundled BPE (it ships inside the package, so it works offline).
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import open_clip
import torch

from kit import runs
from kit.models.device import ModelSpec

TINY_NAME = "kit-tiny-clip"
TINY_CONFIG = Path(__file__).resolve().parent / "configs" / f"{TINY_NAME}.json"
# The toy world's frames are 3:2; open_clip's default (shortest-side resize + centre crop) would cut
# off the lane markings and neighbours on the left and right that the labels talk about, so the tiny
# CLIP squashes the whole frame to a square instead.
TINY_RESIZE_MODE = "squash"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


class ClipLoadError(FileNotFoundError):
    """A CLIP model or checkpoint that cannot be found or read; the message says how to get it."""


@dataclass
class ClipBundle:
    model: torch.nn.Module
    preprocess: Callable          # eval transform (PIL -> tensor)
    tokenizer: Callable           # list[str] -> LongTensor [n, context_length]
    device: torch.device
    name: str = ""                # open_clip model name (architecture)
    source: str = ""              # what was loaded: a directory, file, tag or "random init"
    model_cfg: dict = field(default_factory=dict)   # architecture, enough to rebuild the model
    preprocess_cfg: dict = field(default_factory=dict)
    train_preprocess: Callable | None = None

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        s = self.preprocess_cfg.get("size", 224)
        return (int(s[0]), int(s[1])) if isinstance(s, (list, tuple)) else (int(s), int(s))

    @property
    def image_size(self) -> int:
        """The longer side of the model's input."""
        return max(self.image_hw)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized image embeddings for a batch of preprocessed images."""
        return self.model.encode_image(pixels.to(self.device), normalize=True)

    def encode_texts(self, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
        """Normalized text embeddings (open_clip's tokenizer truncates to the context length).

        With `batch_size`, the texts are tokenized once and encoded in batches of similar length:
        `encode_text` runs a batch only up to its longest text, so sorting spends less on padding
        (the completions of one RLOO batch range from a few words to max_new_tokens)."""
        tokens = self.tokenizer(list(texts))
        if batch_size is None or len(tokens) <= batch_size:
            return encode_text(self.model, tokens.to(self.device), normalize=True)
        order = torch.argsort((tokens != 0).sum(1), stable=True)  # open_clip pads with 0
        out = None
        for idx in order.split(int(batch_size)):
            e = encode_text(self.model, tokens[idx].to(self.device), normalize=True)
            out = e.new_empty(len(tokens), e.shape[1]) if out is None else out
            out[idx.to(e.device)] = e
        return out


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """`model.encode_text(tokens)`, computed on the non-padding prefix of the batch when that is exact.

    open_clip's CLIP.encode_text always runs the whole context (77 tokens for ViT-B-32, 96 for the
    tiny one) although driving texts are mostly 5-35 tokens. Its text transformer is causal and pools
    the EOT token (`argmax`), so positions after the batch's last EOT cannot change the result:
    dropping the all-padding tail columns gives the same embeddings 2-8x faster. Other text towers
    (HF, non-causal, other pooling) go through open_clip's own method unchanged.
    """
    trimmable = (type(model) is open_clip.model.CLIP and getattr(model, "attn_mask", None) is not None
                 and getattr(model, "text_pool_type", None) == "argmax" and tokens.dim() == 2)
    if trimmable:
        used = (tokens != 0).any(0).nonzero()
        n = int(used.max()) + 1 if len(used) else tokens.shape[1]
        if n < tokens.shape[1]:
            tokens = tokens[:, :n]
            cast = model.transformer.get_cast_dtype()
            x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
            x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
            x = model.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
            if model.text_projection is not None:
                x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
                    else x @ model.text_projection
            return torch.nn.functional.normalize(x, dim=-1) if normalize else x
    return model.encode_text(tokens, normalize=normalize)


def register_tiny_clip() -> str:
    """Make `kit-tiny-clip` a known open_clip model name (idempotent)."""
    if TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG)
    return TINY_NAME


def _preprocess_cfg(model: torch.nn.Module) -> dict:
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _bundle(model, train_tf, eval_tf, name, source, model_cfg, device) -> ClipBundle:
    tokenizer = open_clip.get_tokenizer(name) if name else None
    return ClipBundle(model=model, preprocess=eval_tf, tokenizer=tokenizer, device=device, name=name,
                      source=source, model_cfg=copy.deepcopy(model_cfg), preprocess_cfg=_preprocess_cfg(model),
                      train_preprocess=train_tf)


def build_tiny_clip(seed: int = 0, device: str | torch.device = "cpu") -> ClipBundle:
    """A randomly initialised tiny CLIP (about 3.4M parameters, most of them the BPE embedding).

    Its vision tower sees 128 px in 16-px patches: the same 64 tokens as 64 px in 8-px patches, so the
    same cost, but each patch keeps the detail that tells a pedestrian from a cyclist or a near car from
    a far one (held-out caption retrieval 0.79 against 0.66 at 64 px, 400 toy scenes)."""
    register_tiny_clip()
    torch.manual_seed(seed)
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(
        TINY_NAME, device=device, image_resize_mode=TINY_RESIZE_MODE)
    cfg = open_clip.get_model_config(TINY_NAME)
    bundle = _bundle(model, train_tf, eval_tf, TINY_NAME, "random init", cfg, torch.device(device))
    model.eval()
    return bundle


def save_clip(bundle: ClipBundle, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `bundle.model` in open_clip's `local-dir:` layout; both files are replaced atomically.

    `extra` goes into the config under `"kit"` (what the model is, how it was trained).
    A model that gained a `logit_bias` parameter (reward fine-tune) records `init_logit_bias` in its
    architecture so that the reload builds the same parameter set.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(bundle.model_cfg)
    if getattr(bundle.model, "logit_bias", None) is not None:
        model_cfg["init_logit_bias"] = float(bundle.model.logit_bias.detach().float().mean())
    else:
        model_cfg.pop("init_logit_bias", None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{WEIGHTS_FILE}.", suffix=".tmp")
    os.fchmod(fd, runs.file_mode())
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, out / WEIGHTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": bundle.preprocess_cfg,
           "kit": {"name": bundle.name, **dict(extra or {})}}
    runs.write_json(out / CONFIG_FILE, cfg)
    return out


def _load_dir(path: Path, device: torch.device) -> ClipBundle:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ClipLoadError(f"{path}: not a saved CLIP directory (no {CONFIG_FILE}); expected what "
                            "kit.models.clip.save_clip writes (open_clip's local-dir layout)")
    cfg = runs.read_json(cfg_path)
    if "model_cfg" not in (cfg or {}):
        raise ClipLoadError(f"{cfg_path}: field 'model_cfg' missing; expected open_clip's local-dir config")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*.pth")):
        raise ClipLoadError(f"{path}: {CONFIG_FILE} is there but no weights file ({WEIGHTS_FILE}); "
                            "the save was interrupted: rerun the stage that writes it")
    name = "local-dir:" + str(path)
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(name, device=device)
    b = _bundle(model, train_tf, eval_tf, name, str(path), cfg["model_cfg"], device)
    b.name = cfg.get("kit", {}).get("name") or name
    b.tokenizer = open_clip.get_tokenizer(name)
    return b


def _load_named(name: str, pretrained: str | None, device: torch.device) -> ClipBundle:
    if name == TINY_NAME:
        register_tiny_clip()
    if open_clip.get_model_config(name) is None:
        import difflib

        near = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
        raise ClipLoadError(f"models.clip.name: open_clip knows no model {name!r}"
                            f"{' (close: ' + ', '.join(near) + ')' if near else ''}; "
                            "see open_clip.list_models(), or use `tiny`")
    if pretrained and not os.path.isfile(str(pretrained)):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ClipLoadError(f"models.clip.pretrained: {pretrained!r} is neither a file nor a pretrained tag "
                                f"of {name} (tags: {', '.join(tags) or 'none'})")
    try:
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device,
            image_resize_mode=TINY_RESIZE_MODE if name == TINY_NAME else None)
    except RuntimeError as e:
        raise ClipLoadError(
            f"models.clip: could not load {name} with pretrained={pretrained!r} ({e}). The weights are "
            "downloaded from the model hub into open_clip's cache on first use; on a machine without hub "
            "access, download them elsewhere and set models.clip.pretrained to the weights file") from None
    cfg = open_clip.get_model_config(name)
    return _bundle(model, train_tf, eval_tf, name, str(pretrained or "random init"), cfg, device)


def tiny_clip_dir(run_dir: str | os.PathLike) -> Path:
    return runs.resolve_run_dir(run_dir) / "prepare" / "models" / "clip"


def load_clip(spec: ModelSpec, run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> ClipBundle:
    """Load the CLIP a profile names, or a saved checkpoint (directory or weights file), in eval mode.

    `checkpoint` None: `models.clip.name` (`tiny` -> run_dir/prepare/models/clip, built by notebook 00)
    with `models.clip.pretrained`. A directory: one written by `save_clip`. A file: weights for the
    architecture `models.clip.name`.
    """
    device, clip = spec.device, spec.clip
    name = clip.get("name") or "tiny"
    if checkpoint is not None:
        ck = Path(checkpoint).expanduser()
        if not ck.is_absolute():
            ck = runs.resolve_run_dir(run_dir) / ck if not ck.exists() else ck.resolve()
        if ck.is_dir():
            bundle = _load_dir(ck, device)
        elif ck.is_file():
            bundle = _load_named(TINY_NAME if name == "tiny" else name, str(ck), device)
        else:
            raise ClipLoadError(f"CLIP checkpoint {ck} does not exist; expected a directory written by "
                                "kit.models.clip.save_clip or a weights file (run notebook 02 to make the "
                                "reward checkpoint)")
    elif name == "tiny":
        d = tiny_clip_dir(run_dir)
        if not (d / CONFIG_FILE).is_file():
            raise ClipLoadError(f"models.clip.name is 'tiny' but {d} holds no tiny CLIP; run notebook 00 "
                                "(kit.stages.prepare_clip.run_prepare_clip) for this run directory first")
        bundle = _load_dir(d, device)
    else:
        bundle = _load_named(name, clip.get("pretrained"), device)
    bundle.model.eval()
    return bundle
