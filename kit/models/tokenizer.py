"""A tiny tokenizer trained locally, for the offline tiny VLM.

No tokenizer can be downloaded here, so the tiny profile trains a byte-level BPE (the `tokenizers`
library) on the kit's own text: the toy world's captions and label texts plus every prompt and
answer format of kit.labels. It is wrapped as a `PreTrainedTokenizerFast` carrying the special
tokens the Idefics3 (SmolVLM) processor expects and a SmolVLM-style chat template whose assistant
turn is wrapped in `{% generation %}` markers (TRL's assistant-only loss reads them). Byte-level
BPE means any text still encodes (unknown words fall back to bytes), so real answers never fail.
"""
from __future__ import annotations

from typing import Iterable

from kit import labels

PAD = "<|endoftext|>"
BOS = "<|im_start|>"
EOS = "<end_of_utterance>"
IMAGE = "<image>"
FAKE_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"
# The Idefics3 processor looks these up even without image splitting (6x6 grid of tile tags).
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE, FAKE_IMAGE, GLOBAL_IMAGE, *ROW_COL]

# SmolVLM's chat template ("User:<image>text<end_of_utterance>\nAssistant: text<end_of_utterance>\n"),
# with two changes: string contents are accepted, and the assistant's text plus its
# <end_of_utterance> sit inside {% generation %} so assistant-only loss covers the stop token too.
CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}{{ ':' }}"
    "{% else %}{{ ': ' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_utterance>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def label_corpus() -> list[str]:
    """Every fixed text the kit itself writes: prompts, action/reason names, answer formats."""
    texts = [labels.ANSWER_PROMPT, labels.DESCRIBE_PROMPT, labels.ACTION_PROMPT,
             "User: Assistant: System:", "left right forward stop none"]
    texts += labels.ACTIONS + labels.ACTION_TEXTS + labels.REASONS
    for i in range(labels.N_ACTIONS):
        a = [int(j == i) for j in range(labels.N_ACTIONS)]
        for r in range(labels.N_REASONS):
            rv = [int(j == r) for j in range(labels.N_REASONS)]
            texts.append(labels.format_answer(a, rv))
        texts.append(labels.format_action_answer(a))
    return texts


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE (a `tokenizers.Tokenizer`) trained on `texts` plus kit.labels' texts, with
    `special_tokens` first (ids 0, 1, ...); any text still encodes, unknown words falling back to bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + label_corpus(), trainer=trainer)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train a byte-level BPE on `texts` (plus kit.labels' texts); return a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(texts, vocab_size, SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        additional_special_tokens=[IMAGE, FAKE_IMAGE, GLOBAL_IMAGE, *ROW_COL],
        model_max_length=4096, padding_side="right", clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast
