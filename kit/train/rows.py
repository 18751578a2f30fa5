"""TRL dataset rows for VLMs: the one place that turns (images, prompt, answer) into TRL's format.

A row is TRL's conversational prompt-completion format with an `images` column:

    {"prompt": [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": prompt}]}],
     "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
     "images": [PIL.Image, ...]}

SFTTrainer masks the prompt by itself for such rows (completion-only loss); RLOO/DPO take the same
prompt (RLOO without a completion, DPO with chosen/rejected built the same way).
"""
from __future__ import annotations

from typing import Sequence


def user_message(n_images: int, prompt: str) -> dict:
    """One user turn: `n_images` image placeholders, then the prompt text."""
    if not isinstance(prompt, str):
        raise TypeError(f"vlm_row: prompt must be a string, got {type(prompt).__name__}")
    return {"role": "user", "content": [*({"type": "image"} for _ in range(n_images)),
                                        {"type": "text", "text": prompt}]}


def assistant_message(answer: str) -> dict:
    if not isinstance(answer, str):
        raise TypeError(f"vlm_row: answer must be a string or None, got {type(answer).__name__}")
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


def vlm_row(images: Sequence, prompt: str, answer: str | None = None) -> dict:
    """A TRL conversational prompt-completion row (completion omitted when `answer` is None).

    `images` are PIL images, or image file paths (train_sft then decodes them lazily, which is
    what a full-size dataset needs; TRL's RLOO/DPO trainers want PIL images).

    The chat template renders the assistant turn as "Assistant: <answer><end_of_utterance>" (SmolVLM's
    form); TRL splits it after the generation prompt "Assistant:", so the loss covers " <answer>" and
    the stop token."""
    images = list(images)
    if not images:
        raise ValueError("vlm_row: expected at least one image (a list of PIL images), got none")
    row = {"prompt": [user_message(len(images), prompt)], "images": images}
    if answer is not None:
        row["completion"] = [assistant_message(answer)]
    return row


def chat_prompt(processor, n_images: int, prompt: str) -> str:
    """The rendered generation prompt (ends with `Assistant:`) for `generate`, matching vlm_row."""
    return processor.apply_chat_template([user_message(n_images, prompt)], add_generation_prompt=True)
