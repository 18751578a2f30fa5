"""Device and precision, decided once from the profile and applied the same way by every stage."""
from __future__ import annotations

from typing import Mapping

import torch


def resolve_device(P: Mapping) -> torch.device:
    want = P.get("device", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"profile {P.get('profile')!r} sets device: cuda, but no CUDA GPU is visible; "
                           "use --set device=cpu (slow) or the tiny profile")
    return torch.device(want)


def resolve_dtype(P: Mapping) -> torch.dtype:
    want = P.get("precision", "auto")
    if want == "auto":
        want = "bf16" if resolve_device(P).type == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[want]


def trainer_precision_kwargs(P: Mapping) -> dict:
    """Keyword arguments for any TRL/transformers TrainingArguments subclass.

    TRL's configs default to bf16 and gradient checkpointing; on a CPU that fails or is slower
    (stack-notes.md), so the profile's device decides both here, in one place.
    """
    dev = resolve_device(P)
    dtype = resolve_dtype(P)
    if dev.type == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False}
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "gradient_checkpointing": True}
