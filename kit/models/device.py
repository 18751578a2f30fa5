"""What the model loaders and trainers take from a profile, resolved once per stage: `model_spec(P)`.

The model layer never reads the whole profile. A stage calls `model_spec(P)` and hands the result
to `load_vlm`, `load_clip`, `lora_config`, `vlm_settings` and, through `spec.trainer_precision()`,
to the trainers, so every stage places and casts models the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from kit.dist import state


@dataclass(frozen=True)
class ModelSpec:
    """The profile's `models:` section (vlm, clip, lora, quantization), the device this process
    uses (`cuda:<local rank>` under accelerate launch) and the dtype, and the profile's `device:`
    and `precision:` as written (they enter stage keys as written).

    >>> spec = model_spec({"device": "cpu", "precision": "fp32", "models": {"vlm": {"name": "tiny"}}})
    >>> spec.device, spec.dtype, spec.vlm["name"]
    (device(type='cpu'), torch.float32, 'tiny')
    >>> spec.trainer_precision()
    {'use_cpu': True, 'bf16': False, 'fp16': False, 'activation_checkpointing': False}
    """
    models: Mapping
    device: torch.device
    dtype: torch.dtype
    device_setting: str | None = None
    precision_setting: str | None = None

    @property
    def vlm(self) -> Mapping:
        return self.models.get("vlm") or {}

    @property
    def clip(self) -> Mapping:
        return self.models.get("clip") or {}

    @property
    def lora(self) -> Mapping:
        return self.models.get("lora") or {}

    @property
    def quantization(self) -> str | None:
        return self.models.get("quantization")

    def trainer_precision(self) -> dict:
        """Keyword arguments for any TRL/transformers TrainingArguments subclass.

        TRL's configs default to bf16 and gradient checkpointing (transformers 5 calls it activation
        checkpointing); on a CPU that fails or is slower, so the device decides both here, in one place."""
        if self.device.type == "cpu":
            return {"use_cpu": True, "bf16": False, "fp16": False, "activation_checkpointing": False}
        return {"bf16": self.dtype == torch.bfloat16, "fp16": self.dtype == torch.float16,
                "activation_checkpointing": True}


def _device(want: str, profile) -> torch.device:
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"profile {profile!r} sets device: cuda, but no CUDA GPU is visible; "
                           "use --set device=cpu (slow) or the tiny profile")
    if want == "cuda":
        return torch.device("cuda", state().local_process_index)
    return torch.device(want)


def model_spec(P: Mapping) -> ModelSpec:
    """Resolve the profile's `models:`, `device:` and `precision:` once (device `auto`: a GPU when one
    is visible; precision `auto`: bf16 on a GPU, fp32 on a CPU)."""
    device = _device(P.get("device", "auto"), P.get("profile"))
    want = P.get("precision", "auto")
    if want == "auto":
        want = "bf16" if device.type == "cuda" else "fp32"
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if want not in dtypes:
        raise ValueError(f"params precision={want!r}: expected auto, fp32, bf16 or fp16")
    return ModelSpec(models=P.get("models") or {}, device=device, dtype=dtypes[want],
                     device_setting=P.get("device"), precision_setting=P.get("precision"))
