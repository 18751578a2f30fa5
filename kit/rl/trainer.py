"""Stage 1 of paper B: RLOO against the CLIP reward, through TRL's RLOOTrainer.

TRL does the sampling (k completions per image sequence), the reward calls, the leave-one-out
advantage (paper B's Eq. 1) and the policy-gradient step. `KitRLOOTrainer` subclasses it for the
three things TRL lacks:

1. other baselines of the estimator (`rloo.baseline`: `greedy` = SCST, `none` = plain REINFORCE):
   TRL computes the advantage inline in `_generate_and_score_completions`, so the override keeps
   the rewards TRL computed (captured in `_calculate_rewards`) and replaces `advantages` with
   kit.rl.advantages' estimate; for SCST it first decodes each prompt greedily with TRL's own
   generation path and scores it with the same reward functions;
2. per-step reward records with the group structure (mean reward and mean best-of-k, paper B's
   Fig. 6, aggregated per epoch by `per_epoch`), written to `reward_log.jsonl` with every checkpoint;
3. sampled descriptions (the first prompt's k completions of each step, with their rewards and
   advantages) in `samples.jsonl`, to show what the policy writes early and late.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from trl import RLOOConfig, RLOOTrainer
from trl.data_utils import prepare_multimodal_messages

from kit import runs
from kit.labels import DESCRIBE_PROMPT
from kit.rl.advantages import BASELINES, best_of_k, compute_advantages
from kit.rl.results import per_epoch
from kit.train.rows import rows_dataset, vlm_row

REWARD_LOG = "reward_log.jsonl"
SAMPLES = "samples.jsonl"


def rloo_rows(samples: Sequence, frames: int, prompt: str = DESCRIBE_PROMPT) -> list[dict]:
    """TRL conversational prompt rows (no completion): the paths of the last `frames` frames of each
    sample (`rloo.frames`) + the description prompt, and the sample id (TRL hands every extra column
    to the reward). Frames stay on disk; the trainer's dataset decodes them per batch (make_trainer)."""
    n_frames = int(frames)
    if n_frames < 1:
        raise ValueError(f"params rloo.frames: expected an integer >= 1, got {n_frames}")
    rows = []
    for s in samples:
        row = vlm_row(s.frame_paths[-n_frames:], prompt, None)
        row["id"] = s.id
        rows.append(row)
    return rows


def rloo_config(rloo_cfg: Mapping, precision: Mapping, out_dir: str | Path, **overrides: Any) -> RLOOConfig:
    """The `rloo:` section (with the run's `seed`: kit.stages.rloo.trainer_settings) as TRL's RLOOConfig.

    `rloo.batch_size` counts prompts (image sequences) per device micro-batch; TRL counts
    completions, so per_device_train_batch_size = batch_size * k (every prompt's k completions
    stay in one micro-batch, as the leave-one-out baseline needs)."""
    k = int(rloo_cfg["k"])
    if k < 2:
        raise ValueError(f"params rloo.k: expected an integer >= 2 (leave-one-out needs 2 completions), got {k}")
    if rloo_cfg["baseline"] not in BASELINES:
        raise ValueError(f"params rloo.baseline: expected one of {', '.join(BASELINES)}, got {rloo_cfg['baseline']!r}")
    kw = dict(
        output_dir=str(out_dir),
        num_generations=k,
        per_device_train_batch_size=int(rloo_cfg["batch_size"]) * k,
        gradient_accumulation_steps=int(rloo_cfg["grad_accum"]),
        num_train_epochs=float(rloo_cfg["epochs"]),
        learning_rate=float(rloo_cfg["lr"]),
        lr_scheduler_type=rloo_cfg["lr_scheduler"],
        temperature=float(rloo_cfg["temperature"]),
        top_p=float(rloo_cfg["top_p"]),
        top_k=int(rloo_cfg["top_k"]),
        max_completion_length=int(rloo_cfg["max_new_tokens"]),
        beta=float(rloo_cfg["beta"]),
        logging_steps=int(rloo_cfg.get("logging_steps") or 1),
        save_strategy="epoch",
        save_total_limit=1,
        report_to="none",
        seed=int(rloo_cfg["seed"]),
        disable_tqdm=False,
        dataloader_num_workers=0,
        **precision,
    )
    kw.update(overrides)
    return RLOOConfig(**kw)


class KitRLOOTrainer(RLOOTrainer):
    """RLOOTrainer with a selectable baseline and per-step reward / sample records (see module doc)."""

    def __init__(self, *args, baseline: str = "rloo", log_dir: str | Path | None = None,
                 reward_log: list[dict] | None = None, compute_greedy: bool | None = None, **kwargs):
        if baseline not in BASELINES:
            raise ValueError(f"rloo.baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")
        super().__init__(*args, **kwargs)
        if baseline != "rloo" and self.beta != 0.0:
            # TRL folds the KL penalty into the rewards inside the same method; the kit's baselines are
            # computed from the bare rewards, so the two cannot be combined without copying TRL's code.
            raise ValueError(f"rloo.beta: baseline {baseline!r} is implemented for beta = 0 only, got {self.beta}; "
                             "set rloo.beta=0 to train with it (and for rloo.compare_baselines), or use baseline rloo")
        self.baseline = baseline
        self.compute_greedy = baseline == "greedy" if compute_greedy is None else compute_greedy
        self.log_dir = Path(log_dir) if log_dir else None
        self.reward_log: list[dict] = list(reward_log or [])
        self.samples_log: list[dict] = []
        self.last_batch: dict | None = None  # rewards (n, k), greedy_rewards (n,), advantages (n, k)
        self._captured_rewards: torch.Tensor | None = None
        self._capture = True

    # 1) keep the rewards TRL computes --------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._capture:
            self._captured_rewards = rewards_per_func
        return rewards_per_func

    def _weighted(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """The same reward TRL optimises: weighted sum over reward functions, NaN if none scored."""
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        r = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        r[unscorable] = torch.nan
        return r

    # 2) greedy decode for SCST, through TRL's own generation path -----------------------------------
    @torch.no_grad()
    def greedy_rewards(self, inputs: list[dict]) -> tuple[torch.Tensor, list[str]]:
        """Reward of the greedy decode of each distinct prompt in a generation batch (every k-th row)."""
        k = self.num_generations
        unique = inputs[::k]
        prompts = [x["prompt"] for x in unique]
        if "images" in unique[0]:
            prompts = [prepare_multimodal_messages(p, images=x["images"]) for p, x in zip(prompts, unique)]
        prompt_ids, images, mm_fields = self._tokenize_prompts(copy.deepcopy(prompts))
        greedy_kwargs = dict(self.generation_kwargs, do_sample=False, temperature=None, top_p=None, top_k=None)
        saved = self.generation_config, self.generation_kwargs
        try:
            self.generation_config = type(self.generation_config)(**greedy_kwargs, disable_compile=True)
            self.generation_kwargs = greedy_kwargs
            completion_ids = self._generate_single_turn(prompt_ids, images, mm_fields)
        finally:
            self.generation_config, self.generation_kwargs = saved
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": t}] for t in texts]
        self._capture = False
        try:
            per_func = self._calculate_rewards(unique, prompts, completions, completion_ids)
        finally:
            self._capture = True
        return self._weighted(per_func).cpu(), texts

    # 3) swap the advantage, record rewards ------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        greedy, greedy_texts = (None, None)
        if self.compute_greedy and mode == "train":
            greedy, greedy_texts = self.greedy_rewards(inputs)
        self._captured_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if mode != "train" or self._captured_rewards is None:
            return output
        k = self.num_generations
        # TRL gathers the rewards of every process (rank order) before its advantages, so `rewards` and
        # `greedy` hold the whole group's; this process trains on its own rows: the slice TRL takes
        rewards = self._weighted(self._captured_rewards).cpu().view(-1, k)
        mine = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        if self.baseline == "rloo":
            adv = None  # TRL's own Eq. 1, already this process's slice
        else:
            adv = compute_advantages(rewards, self.baseline, greedy)
            if self.normalize_advantages:
                adv = (adv - adv.mean()) / (adv.std() + 1e-4)
            output["advantages"] = adv.reshape(-1)[mine].to(output["advantages"].device, output["advantages"].dtype)
        if adv is None:  # the whole group's TRL advantages, for the records
            adv = self.accelerator.gather(output["advantages"].detach()).cpu().view(-1, k)
        self.last_batch = {"rewards": rewards, "greedy_rewards": greedy, "advantages": adv}
        self._record(inputs, rewards, adv, greedy, greedy_texts)
        return output

    def _record(self, inputs, rewards, adv, greedy, greedy_texts) -> None:
        k = self.num_generations
        bok = best_of_k(rewards)
        step = int(self.state.global_step)
        epoch = int(math.floor((self.state.epoch or 0.0) + 1e-6))
        rec = {
            "step": step, "epoch": epoch, "baseline": self.baseline,
            "mean_reward": float(torch.nanmean(rewards)),
            "best_of_k": float(bok[torch.isfinite(bok)].mean()) if torch.isfinite(bok).any() else float("nan"),
            "reward_std": float(torch.nan_to_num(rewards).std()),
            "frac_zero_std": float((torch.nan_to_num(rewards).std(dim=1) < 1e-6).float().mean()),
            "n_prompts": int(rewards.size(0)), "k": k, "time": time.time(),
        }
        if greedy is not None:
            rec["greedy_reward"] = float(torch.nanmean(greedy))
        self.reward_log.append(rec)
        self._metrics["train"]["reward_best_of_k"].append(rec["best_of_k"])
        # the first prompt's k completions (TRL's order: k consecutive rows per prompt). TRL's logs hold
        # every process's completions, gathered in rank order, as `rewards` does: the group's first
        # prompt is the main process's, whose `inputs[0]` names it
        comp_texts = list(self._logs["completion"])[-len(inputs) * self.accelerator.num_processes:]
        texts = [c[0]["content"] if isinstance(c, list) else str(c) for c in comp_texts[:k]]
        sample = {"step": step, "epoch": epoch, "id": inputs[0].get("id"), "completions": texts,
                  "rewards": rewards[0].tolist(), "advantages": adv[0].tolist()}
        if greedy_texts:
            sample["greedy"] = greedy_texts[0]
            sample["greedy_reward"] = float(greedy[0])
        self.samples_log.append(sample)

    def flush_logs(self) -> None:
        """Write reward_log.jsonl and samples.jsonl (atomic; the main process). Done with every checkpoint
        and at the end of training, not every step: rewriting both files each step cost the kit ~5% of a tiny step."""
        if self.log_dir is not None:
            runs.write_jsonl(self.log_dir / REWARD_LOG, self.reward_log)
            runs.write_jsonl(self.log_dir / SAMPLES, self.samples_log)

    def _save_checkpoint(self, model, trial):
        # the records must cover every step a resumed run will not redo
        self.flush_logs()
        return super()._save_checkpoint(model, trial)


def _resume_point(out_dir: Path) -> tuple[str | None, int]:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    if ckpt is None:
        return None, 0
    state = runs.read_json(Path(ckpt) / "trainer_state.json", {}) or {}
    return ckpt, int(state.get("global_step", 0))


def make_trainer(model, processor, reward_funcs: Callable | list, rows: list[dict], out_dir: str | Path,
                 rloo_cfg: Mapping, precision: Mapping, *, baseline: str | None = None, config_overrides: Mapping | None = None,
                 peft_config=None, callbacks: list | None = None) -> tuple["KitRLOOTrainer", str | None]:
    """A KitRLOOTrainer over `rows` writing to out_dir (TRL's files in out_dir/trainer), and the
    checkpoint to resume from (None for a fresh start). Records of steps after that checkpoint are
    dropped, since the resumed run redoes them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = baseline or rloo_cfg["baseline"]
    args = rloo_config(rloo_cfg, precision, out_dir / "trainer", **dict(config_overrides or {}))
    ckpt, done_steps = _resume_point(out_dir / "trainer")
    old_log, old_samples = [], []
    if ckpt is not None:
        old_log = [r for r in (runs.read_jsonl(out_dir / REWARD_LOG) if (out_dir / REWARD_LOG).exists() else [])
                   if r["step"] < done_steps]
        old_samples = [r for r in (runs.read_jsonl(out_dir / SAMPLES) if (out_dir / SAMPLES).exists() else [])
                       if r["step"] < done_steps]
    trainer = KitRLOOTrainer(
        model=model, reward_funcs=reward_funcs, args=args, train_dataset=rows_dataset(rows, "rloo rows"),
        processing_class=processor, peft_config=peft_config, callbacks=callbacks,
        baseline=baseline, log_dir=out_dir, reward_log=old_log,
    )
    trainer.samples_log = old_samples
    return trainer, ckpt


def train_rloo(model, processor, reward_funcs: Callable | list, rows: list[dict], out_dir: str | Path,
               rloo_cfg: Mapping, precision: Mapping, *, baseline: str | None = None, config_overrides: Mapping | None = None,
               peft_config=None, callbacks: list | None = None,
               before_train: Callable[["KitRLOOTrainer", str | None], Any] | None = None) -> dict:
    """Train with KitRLOOTrainer (paper B stage 1); resumes from the last checkpoint in out_dir.

    `before_train(trainer, resume_checkpoint)` runs on the built trainer before training (the stage
    measures the estimators' gradient variance there, on the same trainer and data).
    Returns {"reward_log": per step, "per_epoch": per epoch, "samples": sampled completions,
    "log_history": TRL's logs, "checkpoint": final model/adapter dir, "seconds": training time,
    "trainer": the trainer, "before_train": the hook's result}. `reward_log.jsonl` and
    `samples.jsonl` are written in out_dir with every checkpoint and at the end; the final model goes to out_dir/final."""
    out_dir = Path(out_dir)
    trainer, ckpt = make_trainer(model, processor, reward_funcs, rows, out_dir, rloo_cfg, precision,
                                 baseline=baseline, config_overrides=config_overrides, peft_config=peft_config,
                                 callbacks=callbacks)
    hook = before_train(trainer, ckpt) if before_train else None
    t0 = time.time()
    trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.time() - t0
    final = out_dir / "final"
    trainer.save_model(str(final))  # every process: DeepSpeed/FSDP gather the weights here; one writes
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(str(final))
    trainer.flush_logs()
    trainer.accelerator.wait_for_everyone()
    return {"reward_log": trainer.reward_log, "per_epoch": per_epoch(trainer.reward_log),
            "samples": trainer.samples_log, "log_history": trainer.state.log_history,
            "checkpoint": str(final), "seconds": seconds, "trainer": trainer, "before_train": hook}
