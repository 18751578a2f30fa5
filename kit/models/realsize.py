"""SmolVLM-256M-Instruct's shapes with random weights, built offline: the `realsize` profile's VLM.

No real weights can be downloaded on an offline machine, so a real profile cannot be tried before a GPU
is rented. This module builds what `hf download HuggingFaceTB/SmolVLM-256M-Instruct` would give, minus
the trained weights: the published configuration (below), a tokenizer with the published vocabulary
size, special tokens at the published ids and the published chat template, and the published image
processor (image splitting into 512-pixel tiles of 64 image tokens each, longest edge 2048). It is
saved with `save_pretrained` into a folder that `kit.models.vlm.load_vlm` then loads as it loads a
downloaded model, so every stage runs the code a real run runs, at the real sizes: sequences of
hundreds to a thousand tokens, a 49,280-token vocabulary's logits, LoRA on the real module names,
4-bit QLoRA on 0.26B parameters. Its answers are random text; its numbers are time and memory.

The values come from the model's public config.json, preprocessor_config.json, processor_config.json
and tokenizer_config.json (Hugging Face model card HuggingFaceTB/SmolVLM-256M-Instruct): a SmolLM2-135M
text decoder and a SigLIP base-patch16-512 vision encoder joined by Idefics3's pixel-shuffle connector.

    >>> SMOLVLM_256M["text_config"]["hidden_size"], SMOLVLM_256M["vision_config"]["image_size"]
    (576, 512)
    >>> image_tokens_per_tile()      # (512 / 16)^2 / 4^2
    64
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

NAME = "HuggingFaceTB/SmolVLM-256M-Instruct"  # whose shapes these are

SMOLVLM_256M = {
    "text_config": {
        "model_type": "llama", "vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    },
    "vision_config": {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "image_size": 512, "patch_size": 16, "layer_norm_eps": 1e-6,
    },
    "scale_factor": 4,
    "image_token_id": 49190,
    "tie_word_embeddings": False,
}
# preprocessor_config.json / processor_config.json
PROCESSOR = {"do_image_splitting": True, "size": {"longest_edge": 2048}, "max_image_size": {"longest_edge": 512},
             "image_seq_len": 64}

# tokenizer: SmolLM2's 49,152 ordinary tokens (ids 0-2 are <|endoftext|>, <|im_start|>, <|im_end|>), then the
# 128 tokens SmolVLM adds: <global-img> at 49152, the 36 <row_r_col_c> tile tags, <fake_token_around_image>
# 49189, <image> 49190, reserved tokens, and <end_of_utterance> last (49279).
N_ORDINARY = 49152
HEAD = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GLOBAL_IMAGE, FAKE_IMAGE, IMAGE, END_OF_UTTERANCE = "<global-img>", "<fake_token_around_image>", "<image>", \
    "<end_of_utterance>"
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]

# the published chat template, verbatim (tokenizer_config.json / chat_template.json)
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def image_tokens_per_tile(cfg: dict = SMOLVLM_256M) -> int:
    v = cfg["vision_config"]
    return (v["image_size"] // v["patch_size"]) ** 2 // cfg["scale_factor"] ** 2


def smolvlm_tokenizer(texts: Iterable[str]):
    """A byte-level BPE trained on `texts` (the toy world's) and padded to SmolVLM's layout: the same
    vocabulary size (49,280), the same special tokens at the same ids, the same chat template. The padding
    entries are never produced. Trained on the toy world's own text, it splits that text into somewhat fewer
    tokens than SmolLM2's general English BPE would; a sample's length is dominated by its image tokens
    anyway (64 per tile, one to seventeen tiles an image)."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from kit.models.tokenizer import train_bpe

    spec = json.loads(train_bpe(texts, N_ORDINARY, HEAD).to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), N_ORDINARY):  # unreachable padding: no merge produces these strings
        vocab[f"<|pad_{i}|>"] = i
    tok = Tokenizer.from_str(json.dumps(spec))
    reserved = 128 - (1 + len(ROW_COL) + 2) - 1  # between <image> and <end_of_utterance>
    added = [GLOBAL_IMAGE, *ROW_COL, FAKE_IMAGE, IMAGE, *(f"<|reserved_{i}|>" for i in range(reserved)),
             END_OF_UTTERANCE]
    tok.add_special_tokens(added)  # in this order, from id 49152
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=HEAD[1], eos_token=END_OF_UTTERANCE, pad_token=HEAD[2], unk_token=None,
        additional_special_tokens=added, model_max_length=8192, padding_side="right",
        clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    assert len(fast) == SMOLVLM_256M["text_config"]["vocab_size"], len(fast)
    assert fast.convert_tokens_to_ids(IMAGE) == SMOLVLM_256M["image_token_id"]
    return fast


def meta_model():
    """The model with this configuration on PyTorch's meta device: its parameter names and shapes, no memory."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    with torch.device("meta"):
        return Idefics3ForConditionalGeneration(Idefics3Config(**SMOLVLM_256M))


def build_realsize_vlm(out_dir: str | Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """Save a random-weight Idefics3 with SmolVLM-256M-Instruct's configuration, its tokenizer, chat
    template and image processor to `out_dir` (about 1 GB in fp32); load it with `load_vlm` like a download."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = smolvlm_tokenizer(texts)
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=PROCESSOR["do_image_splitting"], size=dict(PROCESSOR["size"]),
        max_image_size=dict(PROCESSOR["max_image_size"]), resample=1)  # LANCZOS, as published
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=PROCESSOR["image_seq_len"], chat_template=CHAT_TEMPLATE)
    config = Idefics3Config(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in SMOLVLM_256M.items()})
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    gc = model.generation_config
    gc.bos_token_id, gc.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    gc.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(HEAD[2])]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
