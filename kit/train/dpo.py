"""Preference fine-tuning of a VLM on (prompt, chosen, rejected) rows: a thin wrapper around TRL's
DPOTrainer, used by the SPIN rounds of notebook 04 (kit.stages.spin).

What it adds to DPOTrainer, as kit.train.sft does for SFTTrainer: the kit's device/precision
settings, `max_length` from the profile (None: no truncation, which could cut image tokens),
per-epoch checkpoints, resuming from the last checkpoint in out_dir, a finished-run marker, and
DPO's own curves (loss, reward margin, reward accuracy) as plain data.

The reference model is the caller's choice (SPIN: the previous round's model):
- full fine-tune: pass `ref_model` (a frozen copy loaded from the previous checkpoint);
- LoRA: pass a PeftModel whose `default` adapter is the previous round's and `ref_model=None`;
  DPOTrainer then copies that adapter to a frozen `ref` adapter (TRL's `ref_adapter_name`).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Mapping, Sequence

from kit.runs import write_json
from kit.train.rows import rows_dataset
from kit.train.sft import RESULT_FILE, finished, trainer_args

REQUIRED = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "beta")
CURVE_KEYS = {"loss": "loss", "margin": "rewards/margins", "accuracy": "rewards/accuracies",
              "chosen": "rewards/chosen", "rejected": "rewards/rejected"}


def dpo_curve(log_history: Sequence[Mapping]) -> list[dict]:
    """[{step, epoch, loss, margin, accuracy, chosen, rejected}] from a DPOTrainer's log_history."""
    out = []
    for e in log_history:
        if "loss" in e and "step" in e and "rewards/margins" in e:
            out.append({"step": int(e["step"]), "epoch": float(e.get("epoch", 0.0)),
                        **{k: float(e[v]) for k, v in CURVE_KEYS.items() if v in e}})
    return out


def one_pair(trainer, ds) -> dict:
    """The first training pair scored by the trained policy and its frozen reference, as DPOTrainer
    scores a batch: TRL's `evaluate` on that pair gives its loss and the policy's summed log-probs,
    `compute_ref_log_probs` the reference's. Notebook 04 recomputes DPO's loss from these four
    numbers by hand and checks it against TRL's. The random generators are restored afterwards."""
    import torch

    pair = ds.select([0])
    with torch.random.fork_rng(devices=[]):
        m = trainer.evaluate(eval_dataset=pair)  # TRL names its metrics eval_* whatever the prefix
        batch = next(iter(trainer.get_eval_dataloader(pair)))  # the collator's batch, on the trainer's device
        ref_model = trainer.ref_model if trainer.ref_model is not None else trainer.model
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(ref_model, batch)
    return {"beta": float(trainer.args.beta), "loss_type": list(trainer.args.loss_type), "prompt": ds[0]["prompt"],
            "chosen": ds[0]["chosen"], "rejected": ds[0]["rejected"],
            "logp_chosen": m["eval_logps/chosen"], "logp_rejected": m["eval_logps/rejected"],
            "ref_logp_chosen": float(ref_chosen.reshape(-1)[0]), "ref_logp_rejected": float(ref_rejected.reshape(-1)[0]),
            "trl_loss": m["eval_loss"]}


def weights_digest(model, adapter: str | None = None) -> str:
    """A hash of a model's trainable weights (for a PeftModel: one adapter's LoRA weights), to check
    which weights a trainer started from and referred to."""
    sd = model.state_dict()
    if adapter is not None:  # named without the adapter's name, so a copy under another name hashes the same
        sd = {k.replace(f".{adapter}.", "."): v for k, v in sd.items() if "lora_" in k and f".{adapter}." in k}
    else:
        sd = {k: v for k, v in sd.items() if ".ref." not in k}
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def dpo_args(cfg: Mapping, precision: Mapping, out_dir: str | Path, n_rows: int):
    """TRL's DPOConfig for a round: the shared trainer arguments plus DPO's beta and loss."""
    from trl import DPOConfig

    return DPOConfig(
        beta=float(cfg["beta"]),
        loss_type=[str(cfg.get("loss_type") or "sigmoid")],
        save_total_limit=1,            # resuming needs the last checkpoint only (a round's are full models)
        **trainer_args(cfg, precision, Path(out_dir), n_rows),
    )


def train_dpo(model, processor, rows: Sequence[Mapping], out_dir: str | Path, cfg: Mapping, precision: Mapping,
              ref_model=None) -> dict:
    """DPO on preference rows (kit.train.rows.preference_row) with TRL's DPOTrainer.

    cfg: epochs, lr, batch_size, grad_accum, weight_decay, beta; optional loss_type (default
    sigmoid), warmup_ratio, lr_scheduler, adam_beta2, max_length, logging_steps, max_steps, seed,
    save_each_epoch; precision: kit.models.device.model_spec(P).trainer_precision(). Resumes from the last
    checkpoint-* in out_dir; a finished out_dir returns its
    result. Returns {"log_history", "curve" (dpo_curve), "checkpoint", "seconds", "steps", "n_rows",
    "start_digest", "ref_digest", "resumed_from", "one_pair" (one_pair)}.
    """
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"train_dpo cfg: missing keys {missing}; expected {list(REQUIRED)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "final"
    if done := finished(out_dir):
        return done
    rows = list(rows)
    if rows and not all(k in rows[0] for k in ("prompt", "chosen", "rejected", "images")):
        raise ValueError("train_dpo: rows[0] lacks prompt/chosen/rejected/images; expected "
                         "kit.train.rows.preference_row rows")
    ds = rows_dataset(rows, "train_dpo rows")
    args = dpo_args(cfg, precision, out_dir, len(ds))
    start = weights_digest(model, "default" if hasattr(model, "peft_config") else None)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=ds, processing_class=processor)
    if ref_model is not None:
        ref = weights_digest(ref_model)
    elif "ref" in getattr(trainer.model, "peft_config", {}):  # DPOTrainer copied the starting adapter to "ref"
        ref = weights_digest(trainer.model, "ref")
    else:  # TRL would use the base model with adapters disabled: not the previous round's model SPIN needs
        raise ValueError("train_dpo: DPOTrainer made no frozen 'ref' copy of the adapter (a LoRA on target_parameters, "
                         "peft#3340), so its reference would be the base model; use target_modules, or a full fine-tune")
    resume = get_last_checkpoint(str(out_dir)) if any(out_dir.glob("checkpoint-*")) else None
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    hist = list(trainer.state.log_history)
    pair = one_pair(trainer, ds)
    main = trainer.accelerator.is_main_process  # under several processes, one writes
    if hasattr(trainer.model, "peft_config"):
        # the trained adapter only (not the "ref" copy). Under DeepSpeed every process takes part in
        # gathering the weights (ZeRO-3 shards them; its config saves 16-bit weights for this)
        sd = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_deepspeed_enabled else None
        if main:
            trainer.model.save_pretrained(str(final), selected_adapters=["default"], state_dict=sd)
    else:
        trainer.save_model(str(final))  # every process: DeepSpeed/FSDP gather the weights here
    result = {"log_history": hist, "curve": dpo_curve(hist), "checkpoint": str(final), "seconds": round(seconds, 2),
              "steps": int(trainer.state.global_step), "n_rows": len(ds), "start_digest": start, "ref_digest": ref,
              "resumed_from": resume, "one_pair": pair}
    if main:
        processor.save_pretrained(str(final))
        write_json(out_dir / RESULT_FILE, result)
    trainer.accelerator.wait_for_everyone()
    return result
