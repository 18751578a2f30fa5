"""One loader for every VLM the kit uses: the tiny offline model, a model hub id, a local checkpoint,
or a PEFT adapter directory, with LoRA and 4-/8-bit QLoRA (bitsandbytes) chosen by the profile.

    spec = model_spec(P)                                         # kit.models.device, once per stage
    model, processor = load_vlm(spec, run_dir)                   # the profile's models.vlm.name
    model, processor = load_vlm(spec, run_dir, ckpt, for_training=True)
    trainer = SFTTrainer(model, ..., peft_config=lora_config(spec))

Every function here takes that ModelSpec (the `models:` section, device and dtype), never the profile.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from kit.models.device import ModelSpec
from kit.runs import resolve_run_dir

TINY = "tiny"
REALSIZE = "realsize"  # SmolVLM-256M-Instruct's shapes with random weights (kit.models.realsize), built by notebook 00
BUILT = (TINY, REALSIZE)  # the names notebook 00 builds into the run directory


class ModelNotFoundError(FileNotFoundError):
    """A model id, path or checkpoint that is not available here; the message says how to get it."""


def tiny_vlm_dir(run_dir: str | os.PathLike) -> Path:
    """Where notebook 00 saves the VLM it builds for a run (`tiny`, or `realsize`)."""
    return resolve_run_dir(run_dir) / "prepare" / "models" / "vlm"


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() or (p / "adapter_config.json").is_file()


def _looks_like_path(spec: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (absolute, relative with ./, deeper) is a path."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or Path(spec).expanduser().exists()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check: the hub client retries for a minute before failing on a machine without
    internet, so the kit checks first and fails with a clear message instead."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model_id, "config.json")
    return isinstance(hit, str)


def _not_found(spec: str, what: str, extra: str = "") -> ModelNotFoundError:
    return ModelNotFoundError(
        f"models.vlm.name={spec!r}: {what}. Get it with `hf download {spec}` (older clients: "
        f"`huggingface-cli download {spec}`) on a machine with internet and point models.vlm.name at the "
        f"downloaded folder, or use the offline default `--profile tiny`.{extra}")


def resolve_vlm_path(spec: ModelSpec, run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> str:
    """The directory or hub id `load_vlm` will read, or a ModelNotFoundError that says what to do."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = resolve_run_dir(run_dir) / p if (resolve_run_dir(run_dir) / p).exists() else p.resolve()
        if not _is_model_dir(p):
            raise ModelNotFoundError(
                f"checkpoint {str(p)!r}: expected a folder with config.json (a model) or adapter_config.json "
                f"(a PEFT adapter); {'it has ' + ', '.join(sorted(x.name for x in p.iterdir())[:8]) if p.is_dir() else 'it does not exist'}. "
                "Run the stage that writes it first (see metrics.json of the run for checkpoint paths).")
        return str(p)
    name = str(spec.vlm.get("name") or TINY)
    if name in BUILT:
        d = tiny_vlm_dir(run_dir)
        if not _is_model_dir(d):
            raise ModelNotFoundError(
                f"models.vlm.name={name!r}: no VLM at {d} (expected config.json there). It is built by "
                f"notebook 00 (00_prepare.ipynb, or `kit stage prepare_vlm --profile PROFILE --run-dir {run_dir}`) "
                "for this run directory; run that first.")
        return str(d)
    p = Path(name).expanduser()
    if p.exists() or _looks_like_path(name):
        if not _is_model_dir(p):
            raise ModelNotFoundError(f"models.vlm.name={name!r}: no model folder there (expected config.json "
                                     "or adapter_config.json). Check the path, or download the model with "
                                     "`hf download MODEL_ID --local-dir PATH`.")
        return str(p.resolve())
    if _hub_cached(name):
        return name
    if not _hub_reachable():
        raise _not_found(name, "not in the local Hugging Face cache and the hub cannot be reached from here")
    return name


def _quant_config(spec: ModelSpec):
    q = spec.quantization
    if q in (None, "", "none"):
        return None
    from transformers import BitsAndBytesConfig

    if q == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=spec.dtype)
    if q == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"params models.quantization={q!r}: expected null, '4bit' or '8bit'")


def _disable_cpu_4bit_repack(model) -> int:
    """bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks Linear4bit weights on the first no-grad
    forward, after which a training step fails (seen with bitsandbytes 0.50 on CPUs with AVX512-BF16). Turn the repacking off."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def vlm_settings(spec: ModelSpec) -> dict:
    """What, beyond a stage's own section, decides how a VLM trains (for stage keys): the model,
    LoRA (when enabled), quantization, and the profile's device and precision as written."""
    m = spec.models
    return {"vlm": m.get("vlm"), "lora": m.get("lora") if spec.lora.get("enabled") else None,
            "quantization": m.get("quantization"), "precision": spec.precision_setting, "device": spec.device_setting}


def lora_config(spec: ModelSpec):
    """The profile's LoRA as a peft.LoraConfig (pass as TRL `peft_config`), or None for full fine-tuning."""
    lp, q = spec.lora, spec.quantization
    if not lp.get("enabled"):
        if q not in (None, "", "none"):
            raise ValueError(f"params models.quantization={q!r} needs models.lora.enabled: true "
                             "(quantized weights cannot be fine-tuned directly; QLoRA trains a LoRA adapter)")
        return None
    from peft import LoraConfig

    return LoraConfig(r=int(lp["r"]), lora_alpha=int(lp["alpha"]), lora_dropout=float(lp["dropout"]),
                      target_modules=lp["target_modules"], bias="none", task_type="CAUSAL_LM")


def load_vlm(spec: ModelSpec, run_dir: str | os.PathLike, path: str | os.PathLike | None = None, *,
             for_training: bool = False):
    """Load (model, processor) for the profile's VLM (`path` None) or a checkpoint/adapter folder.

    - `tiny` or `realsize` -> run_dir/prepare/models/vlm (built by notebook 00); a hub id or local folder
      otherwise.
    - An adapter folder (adapter_config.json) loads its base model, then the adapter (trainable when
      `for_training`). The processor comes from the folder when it has one, else from the base.
    - models.quantization 4bit/8bit loads through bitsandbytes; with `for_training` the model is
      prepared with peft.prepare_model_for_kbit_training (QLoRA).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vp = spec.vlm
    where = resolve_vlm_path(spec, run_dir, path)
    device, dtype = spec.device, spec.dtype
    trust = bool(vp.get("trust_remote_code", False))
    adapter_dir = None
    base = where
    if Path(where).is_dir() and (Path(where) / "adapter_config.json").is_file():
        import json

        adapter_dir = where
        base = json.loads((Path(where) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelNotFoundError(f"{where}/adapter_config.json: field 'base_model_name_or_path' is empty; "
                                     "expected the base model's path or hub id")
        if not Path(base).exists() and _looks_like_path(base):
            raise ModelNotFoundError(f"{where}/adapter_config.json: base model {base!r} does not exist (moved run "
                                     "directory?); expected the folder the adapter was trained from")

    quant = _quant_config(spec)
    kw = {"dtype": dtype, "trust_remote_code": trust}
    if vp.get("attn_implementation"):
        kw["attn_implementation"] = vp["attn_implementation"]
    if quant is not None:
        kw["quantization_config"] = quant
        # bitsandbytes places weights while loading, so the device goes in as a device_map
        kw["device_map"] = {"": (device.index or 0) if device.type == "cuda" else "cpu"}
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, **kw)
        proc_src = adapter_dir if adapter_dir and (Path(adapter_dir) / "processor_config.json").is_file() else base
        processor = AutoProcessor.from_pretrained(proc_src, trust_remote_code=trust)
    except OSError as e:  # hub client errors (not found, gated, offline) subclass OSError
        raise _not_found(str(base), f"could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if quant is None:
        model.to(device)
    _apply_image_size(processor, vp, where)

    if quant is not None:
        _disable_cpu_4bit_repack(model)
        if for_training:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=device.type == "cuda")
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=for_training)
    if not for_training:
        model.eval()
    gc = getattr(model, "generation_config", None)
    tok = getattr(processor, "tokenizer", processor)
    if gc is not None and gc.pad_token_id is None and tok.pad_token_id is not None:
        gc.pad_token_id = tok.pad_token_id
    return model, processor


def _apply_image_size(processor, vp: Mapping, where: str) -> None:
    """models.vlm.image_size for real Idefics3/SmolVLM processors: the longest edge images are resized to
    before being cut into tiles (SmolVLM: 512 -> one tile plus the global view; its default 2048 -> up to 16).
    The tiny model's processor already has its build size (a different size would not fit its vision tower)."""
    size = vp.get("image_size")
    ip = getattr(processor, "image_processor", None)
    if not size or ip is None or vp.get("name", TINY) == TINY or not hasattr(ip, "max_image_size"):
        return
    ip.size = {"longest_edge": int(size)}
