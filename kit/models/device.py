"""Device and precision, decided once from the profile and applied the same way by every stage."""
from __future__ import annotations

from typing import Mapping

import torch

from kit.dist import state


def resolve_device(P: Mapping) -> torch.device:
    """The profile's device; on GPUs, this process's own (`cuda:<local rank>` under accelerate launch,
    so N processes do not all load onto GPU 0)."""
    want = P.get("device", "auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"profile {P.get('profile')!r} sets device: cuda, but no CUDA GPU is visible; "
                           "use --set device=cpu (slow) or the tiny profile")
    if want == "cuda":
        return torch.device("cuda", state().local_process_index)
    return torch.device(want)


def resolve_dtype(P: Mapping) -> torch.dtype:
    want = P.get("precision", "auto")
    if want == "auto":
        want = "bf16" if resolve_device(P).type == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[want]


def trainer_precision_kwargs(P: Mapping) -> dict:
    """Keyword arguments for any TRL/transformers TrainingArguments subclass.

    TRL's configs default to bf16 and gradient checkpointing; on a CPU that fails or is slower, so
    the profile's device decides both here, in one place.
    """
    dev = resolve_device(P)
    dtype = resolve_dtype(P)
    if dev.type == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False}
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "gradient_checkpointing": True}
