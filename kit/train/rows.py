"""TRL dataset rows for VLMs: the one place that turns (images, prompt, answer) into TRL's format.

A row is TRL's conversational prompt-completion format with an `images` column:

    {"prompt": [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": prompt}]}],
     "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
     "images": [PIL.Image, ...]}

SFTTrainer masks the prompt by itself for such rows (completion-only loss); RLOO/DPO take the same
prompt (RLOO without a completion, DPO with chosen/rejected built the same way: preference_row).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence


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

    `images` are PIL images, or image file paths: `rows_dataset` then decodes them per batch, which
    is what a full-size dataset needs (every stage's rows keep their frames on disk).

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


def preference_row(images: Sequence, prompt: str, chosen: str, rejected: str) -> dict:
    """A TRL conversational preference row (DPOTrainer): the vlm_row prompt, two assistant turns."""
    row = vlm_row(images, prompt)
    row["chosen"], row["rejected"] = [assistant_message(chosen)], [assistant_message(rejected)]
    return row


def chat_prompt(processor, n_images: int, prompt: str) -> str:
    """The rendered generation prompt (ends with `Assistant:`) for `generate`, matching vlm_row."""
    return processor.apply_chat_template([user_message(n_images, prompt)], add_generation_prompt=True)


def rows_dataset(rows: Sequence[Mapping], what: str):
    """A `datasets.Dataset` of vlm_row rows for TRL's trainers. Rows holding image paths get an
    Image column, decoded when a batch is drawn: real BDD-OIA has 16k frames, which as PIL images
    up front would not fit in memory (benchmarks/bench_rows_memory.py measures it)."""
    from datasets import Dataset

    rows = list(rows)
    if not rows:
        raise ValueError(f"{what} is empty; expected rows from kit.train.rows.vlm_row")
    bad = [k for k in ("prompt", "images") if k not in rows[0]]
    if bad:
        raise ValueError(f"{what}[0] lacks {bad}; expected rows from kit.train.rows.vlm_row")
    first = rows[0]["images"][0] if rows[0]["images"] else None
    if isinstance(first, (str, Path)):
        from datasets import Image, List

        rows = [{**r, "images": [str(x) for x in r["images"]]} for r in rows]
        return Dataset.from_list(rows).cast_column("images", List(Image()))
    return Dataset.from_list(rows)
