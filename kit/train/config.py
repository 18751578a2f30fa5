"""The one builder of a training run's settings (`cfg`) for kit.train.sft.train_sft and
kit.train.dpo.train_dpo, from a profile section: the SFT baseline (`sft:`), stage 2 (`action_sft:`,
with `sft:`'s schedule), CODA-LM SFT (`coda_sft:`) and each SPIN round (`spin:`). kit.train.sft's
trainer_args turns these keys into TRL's TrainingArguments names (epochs -> num_train_epochs, lr ->
learning_rate, batch_size -> per_device_train_batch_size, grad_accum -> gradient_accumulation_steps).
A stage's key hashes this cfg, so the same section gives the same training.

>>> train_config({"epochs": 2, "lr": 1e-3, "batch_size": 8, "grad_accum": 1, "weight_decay": 0.0,
...               "warmup_ratio": 0.05, "lr_scheduler": "cosine", "beta": 0.1}, seed=3, extra=("beta",))["beta"]
0.1
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# what every TRL trainer of the kit takes from its section
SCHEDULE = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_ratio", "lr_scheduler")


def train_config(section: Mapping, seed: int, *, extra: Sequence[str] = (), schedule_from: Mapping | None = None,
                 **fixed: Any) -> dict:
    """`cfg` for train_sft / train_dpo: SCHEDULE and the `extra` keys from `section` (a key the section
    lacks comes from `schedule_from`, e.g. stage 2 takes `sft:`'s warmup and scheduler), the run's
    `seed`, then the `fixed` values."""
    def value(k: str):
        if k in section:
            return section[k]
        if schedule_from is not None and k in schedule_from:
            return schedule_from[k]
        raise KeyError(f"params: the training section has no '{k}' (expected the keys {', '.join(SCHEDULE)})")

    return {**{k: value(k) for k in (*SCHEDULE, *extra)}, "seed": int(seed), **fixed}
