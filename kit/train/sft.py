"""Supervised fine-tuning of a VLM on prompt-completion rows: a thin wrapper around TRL's SFTTrainer.

Used by the tiny VLM's caption pretraining (notebook 00), the SFT baseline (notebook 03) and the
action SFT of stage 2 (notebook 06). What it adds to SFTTrainer: the kit's device/precision
settings, `max_length=None` (truncating would cut image tokens), per-epoch checkpoints, resuming
from the last checkpoint in out_dir, a finished-run marker so a rerun returns at once, and the loss
curve as plain data (and a figure helper).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping, Sequence

from kit.runs import read_json, write_json
from kit.train.rows import rows_dataset

REQUIRED = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay")
RESULT_FILE = "train_result.json"


def _check_cfg(cfg: Mapping) -> None:
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"train_sft cfg: missing keys {missing}; expected {list(REQUIRED)} "
                         "(+ optional warmup_ratio, lr_scheduler, adam_beta2, max_length, save_each_epoch, logging_steps, "
                         "max_steps, seed)")


def loss_curve(log_history: Sequence[Mapping]) -> list[dict]:
    """[{step, epoch, loss}] from a Trainer's log_history (training-loss entries only)."""
    return [{"step": int(e["step"]), "epoch": float(e.get("epoch", 0.0)), "loss": float(e["loss"])}
            for e in log_history if "loss" in e and "step" in e]


def eval_curve(log_history: Sequence[Mapping]) -> list[dict]:
    return [{"step": int(e["step"]), "epoch": float(e.get("epoch", 0.0)), "loss": float(e["eval_loss"])}
            for e in log_history if "eval_loss" in e]


def finished(out_dir: Path) -> dict | None:
    """The saved result of a training that finished in `out_dir` (train_result.json and its final/), else None."""
    done = read_json(out_dir / RESULT_FILE)
    return done if done and (out_dir / "final").is_dir() and Path(done.get("checkpoint", "")).is_dir() else None


def trainer_args(cfg: Mapping, precision: Mapping, out_dir: Path, n_rows: int) -> dict:
    """The TrainingArguments every kit wrapper of a TRL trainer shares (SFT here, DPO in kit.train.dpo),
    from the same cfg keys: schedule, batching, checkpoints per epoch, seed; and `precision`, the
    keywords the profile's device and precision resolve to (kit.models.device.ModelSpec.trainer_precision,
    resolved once by the stage)."""
    bs, ga = int(cfg["batch_size"]), int(cfg["grad_accum"])
    steps_per_epoch = max(1, math.ceil(n_rows / bs / ga))
    seed = int(cfg.get("seed", 0))
    extra = {"adam_beta2": float(cfg["adam_beta2"])} if cfg.get("adam_beta2") is not None else {}
    return dict(
        output_dir=str(out_dir),
        num_train_epochs=float(cfg["epochs"]),
        max_steps=int(cfg.get("max_steps") or -1),
        learning_rate=float(cfg["lr"]),
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        weight_decay=float(cfg["weight_decay"]),
        warmup_steps=float(cfg.get("warmup_ratio") or 0.0),  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type=str(cfg.get("lr_scheduler") or "linear"),
        logging_steps=int(cfg.get("logging_steps") or max(1, steps_per_epoch // 5)),
        save_strategy="epoch" if cfg.get("save_each_epoch", True) else "no",
        # truncation keeps the start (the image tokens) but may cut an image's tokens if the limit is
        # below them: None unless a profile sets it (paper A: 2048)
        max_length=int(cfg["max_length"]) if cfg.get("max_length") else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
        **extra,
        **precision,
    )


def train_sft(model, processor, rows: Sequence[Mapping], out_dir: str | Path, cfg: Mapping, precision: Mapping,
              eval_rows: Sequence[Mapping] | None = None) -> dict:
    """Fine-tune `model` on vlm_row rows (completion-only loss) with TRL's SFTTrainer.

    `model` is a full model (full fine-tune) or gets the adapter in `cfg["peft_config"]`
    (e.g. kit.models.vlm.lora_config(spec)); an already-wrapped PeftModel trains its adapter.
    cfg: epochs, lr, batch_size, grad_accum, weight_decay; optional warmup_ratio, lr_scheduler,
    adam_beta2, max_length (null: no truncation), save_each_epoch (default True), logging_steps, max_steps, seed, peft_config.
    precision: kit.models.device.model_spec(P).trainer_precision(), resolved once by the stage.
    Resumes from the last checkpoint-* in out_dir; if out_dir already holds a finished run
    (train_result.json and final/), returns that result without training.
    Returns {"log_history", "train_loss": [{step, epoch, loss}], "eval_loss", "checkpoint"
    (the final model or adapter folder, loadable with load_vlm(spec, run_dir, path)), "seconds", "resumed_from"}.
    """
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    _check_cfg(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "final"
    if done := finished(out_dir):
        return done

    rows = list(rows)
    if rows and "completion" not in rows[0]:
        raise ValueError("train_sft: rows[0] has no 'completion'; expected vlm_row(images, prompt, answer) rows")
    train_ds = rows_dataset(rows, "train_sft rows")
    eval_ds = rows_dataset(eval_rows, "train_sft eval_rows") if eval_rows else None
    bs = int(cfg["batch_size"])
    args = SFTConfig(
        per_device_eval_batch_size=int(cfg.get("eval_batch_size") or bs),
        eval_strategy="epoch" if eval_ds is not None else "no",
        completion_only_loss=True,     # prompt-completion rows: loss on the answer only
        **trainer_args(cfg, precision, out_dir, len(train_ds)),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=processor, peft_config=cfg.get("peft_config"))
    resume = get_last_checkpoint(str(out_dir)) if any(out_dir.glob("checkpoint-*")) else None
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    trainer.save_model(str(final))  # every process: DeepSpeed/FSDP gather the weights here; one writes
    hist = trainer.state.log_history
    result = {
        "log_history": hist,
        "train_loss": loss_curve(hist),
        "eval_loss": eval_curve(hist),
        "checkpoint": str(final),
        "seconds": round(seconds, 2),
        "resumed_from": resume,
        "steps": int(trainer.state.global_step),
        "n_rows": len(train_ds),
    }
    if trainer.accelerator.is_main_process:  # under several processes, one writes
        processor.save_pretrained(str(final))
        write_json(out_dir / RESULT_FILE, result)
    trainer.accelerator.wait_for_everyone()
    return result


def plot_loss(curves: Mapping[str, Sequence[Mapping]], path: str | Path, title: str = "training loss",
              points: Mapping[str, Sequence[Mapping]] | None = None) -> Path:
    """Plot loss curves ({label: [{step, loss}]}) and unconnected `points` (e.g. held-out loss
    before/after) to a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, pts in curves.items():
        if pts:
            ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker="o", ms=3, label=label)
    for label, pts in (points or {}).items():
        if pts:
            ax.scatter([p["step"] for p in pts], [p["loss"] for p in pts], s=40, marker="D", zorder=3, color="C3", label=label)
            for p in pts:
                ax.annotate(f"{p['loss']:.2f}", (p["step"], p["loss"]), textcoords="offset points", xytext=(6, 6),
                            fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
