"""The tiny offline VLM: an Idefics3 (SmolVLM architecture) model small enough to train on a CPU.

It is built with the same classes users load for real (Idefics3Config, Idefics3ForConditionalGeneration,
Idefics3Processor) and saved with `save_pretrained`, so it loads back through AutoModelForImageTextToText
and AutoProcessor and no later code path is special to it. Weights start random; notebook 00
caption-pretrains them (kit.stages.prepare_vlm).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from kit.models.tokenizer import CHAT_TEMPLATE, train_tokenizer

# Defaults for models.vlm.tiny (params/base.yaml): about 2.7M parameters, 16 image tokens at 64 px.
TINY_DEFAULTS = {
    "vocab_size": 2048,
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_layers": 4,
    "num_heads": 4,
    "vision_hidden_size": 128,
    "vision_intermediate_size": 256,
    "vision_layers": 4,
    "vision_heads": 4,
    "patch_size": 8,
    "scale_factor": 2,
}


def image_seq_len(image_size: int, patch_size: int, scale_factor: int) -> int:
    """Image tokens per image after Idefics3's pixel shuffle (the processor must agree)."""
    return int(((image_size // patch_size) ** 2) / (scale_factor ** 2))


def build_tiny_vlm(out_dir: str | Path, texts: Iterable[str], *, image_size: int = 64,
                   cfg: Mapping | None = None, seed: int = 0) -> Path:
    """Train the tokenizer on `texts`, build a random-weight tiny Idefics3 VLM and its processor,
    and save all three to `out_dir` (loadable with AutoModelForImageTextToText / AutoProcessor)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    c = {**TINY_DEFAULTS, **{k: v for k, v in (cfg or {}).items() if v is not None}}
    unknown = set(c) - set(TINY_DEFAULTS)
    if unknown:
        raise ValueError(f"models.vlm.tiny: unknown keys {sorted(unknown)}; expected some of {sorted(TINY_DEFAULTS)}")
    if image_size % (c["patch_size"] * c["scale_factor"]):
        raise ValueError(f"models.vlm.image_size={image_size}: expected a multiple of patch_size*scale_factor "
                         f"({c['patch_size']}*{c['scale_factor']})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(texts, vocab_size=int(c["vocab_size"]))
    n_img = image_seq_len(image_size, c["patch_size"], c["scale_factor"])
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=n_img, chat_template=CHAT_TEMPLATE)

    config = Idefics3Config(
        text_config={
            "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": c["hidden_size"],
            "intermediate_size": c["intermediate_size"], "num_hidden_layers": c["num_layers"],
            "num_attention_heads": c["num_heads"], "num_key_value_heads": c["num_heads"],
            "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": c["vision_hidden_size"], "intermediate_size": c["vision_intermediate_size"],
            "num_hidden_layers": c["vision_layers"], "num_attention_heads": c["vision_heads"],
            "image_size": image_size, "patch_size": c["patch_size"],
        },
        scale_factor=c["scale_factor"],
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
