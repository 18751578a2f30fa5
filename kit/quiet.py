"""The library messages a CPU run prints that are not about the user's work, silenced one by one.

A student reads red text in a notebook as "it broke". Each message below is expected on a CPU (or
with the tiny models) and says nothing about the run; each is silenced by its exact text, so any
other warning from the same library still shows:

- bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a faster 4-bit kernel from the Hugging
  Face hub at import time (through the `kernels` package, which in offline mode first says it skips
  the publisher check) and logs that it could not. The tiny profile does not quantize; on a CPU,
  4-bit layers fall back to bitsandbytes' built-in kernel.
- DeepSpeed (installed for the multi-GPU configs) logs "Setting accelerator to CPU" when imported on
  a machine without a GPU, which is what a CPU run is.
- open_clip logs "No pretrained weights loaded ... initialized randomly" for the kit's own tiny CLIP,
  which is built untrained on purpose and trained in notebook 00. For any other model the warning
  still shows: there it would mean real weights are missing.
- TRL and PEFT read `model.is_gradient_checkpointing`, which transformers 5 renamed (a
  FutureWarning inside those libraries, not in the kit's code).

`known_messages()` is idempotent; kit.notebook.setup (every notebook and stage worker) and the `kit`
command call it, before the libraries are imported where they can.
"""
from __future__ import annotations

import logging
import warnings

TINY_CLIP = "kit-tiny-clip"


class _Drop(logging.Filter):
    def __init__(self, *needles: str):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not all(n in msg for n in self.needles)


_FILTERS = (
    ("bitsandbytes.backends.cpu.ops", _Drop("Failed to load CPU gemm_4bit_forward from kernels-community")),
    ("kernels._internals.hf_hub",
     _Drop("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'")),
    # DeepSpeed's logger is created at import with its own level and handler: a filter on the logger
    # object (getLogger returns the same one later) survives that
    ("DeepSpeed", _Drop("Setting accelerator to CPU")),
    ("", _Drop("No pretrained weights loaded for model", f"'{TINY_CLIP}'")),  # open_clip logs on the root logger
)
_done = False


def known_messages() -> None:
    """Silence the messages listed in this module's docstring (and nothing else)."""
    global _done
    if _done:
        return
    for name, f in _FILTERS:
        logging.getLogger(name).addFilter(f)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    _done = True
