"""How noisy is each policy-gradient estimator? Measured on the same sampled batches.

RLOO's claim (paper B, after Kool et al.) is that the leave-one-out baseline lowers the variance of
the REINFORCE gradient without biasing it. Here every estimator sees the *same* completions and
rewards: for each of `n_prompts` image sequences, k completions are sampled `repeats` times with
TRL's own generation path (KitRLOOTrainer._generate_and_score_completions, which also decodes the
greedy SCST baseline), and for each estimator (rloo | greedy | none | a2c) the gradient of TRL's own
RLOO loss with that estimator's advantages is taken. All four are unbiased, so their mean gradients
agree up to noise, and the spread of the per-group gradients around it is the estimator's variance.

`a2c` is paper B's Appendix A estimator: a small MLP critic (kit/rl/critic.py) predicts each prompt's
reward from the reward model's embedding of its image. It is cross-fitted: the critic that scores
resample j of every prompt is fitted on the other resamples' rewards only, so it never sees the
completions it is subtracted from (as in training, where it is fitted on earlier batches).

Variances scale with the rewards (rewards centred near 0 make every gradient small), so each estimator's
variance is also given relative to its own squared mean gradient (`relative_within`, scale-free: the
inverse of the gradient's signal-to-noise ratio over one resample).

No library measures estimator variance, hence this module. Gradients are flattened over the
trainable parameters (LoRA only, with LoRA); above `max_coords` a fixed random subset of
coordinates is used, scaled so the trace estimate stays unbiased.
"""
from __future__ import annotations

import contextlib
import random
import time
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kit.reward.clip_reward import id_keys
from kit.rl.advantages import BASELINES, compute_advantages
from kit.rl.critic import critic_baseline, fit_critic

ESTIMATORS = (*BASELINES, "a2c")  # what the variance comparison measures; a2c only here, not a training baseline


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a diagnostic without touching the global RNGs (python, numpy, torch and its CUDA devices):
    whatever it samples, the training that follows draws the same numbers as without it."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter], index: torch.Tensor | None) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])
    return flat if index is None else flat[index]


def _prompt_features(trainer, row: Mapping) -> torch.Tensor:
    """The critic's view of a prompt: the reward model's mean embedding of its frames."""
    reward = next((f for f in trainer.reward_funcs if hasattr(f, "image_embeddings")), None)
    if reward is None:
        raise ValueError("gradient_variance: the a2c estimator needs a reward with image_embeddings (kit's "
                         "CLIPReward) to give its critic the prompt's image; leave a2c out of `baselines`")
    frames = list(row.get(getattr(reward, "frames_key", "images")) or row["images"])
    # keyed as the reward keys them while sampling (by the row's id), so these come from its cache and add
    # nothing to it: a new entry would change the batches later scores are computed in (float noise)
    col = getattr(reward, "key_column", None)
    keys = id_keys([row[col]], [frames]) if col and row.get(col) is not None else None
    with torch.no_grad():
        return reward.image_embeddings(frames, keys=keys).float().mean(0).cpu()


def gradient_variance(trainer, rows: Sequence[Mapping] | None = None, *, n_prompts: int = 8, repeats: int = 4,
                      baselines: Sequence[str] = ESTIMATORS, max_coords: int = 2 ** 22, seed: int = 0) -> dict:
    """Trace of the covariance of each estimator's per-group gradient, on shared batches.

    `trainer` is a KitRLOOTrainer (its model, reward functions, k and sampling settings are used; its logs
    are left as they were); `rows` default to the first of its training dataset. Returns, per estimator:
    `within_prompt` (mean over prompts of the variance across the `repeats` resamples: the part a baseline
    can remove), `total` (variance across all groups, prompts included), `mean_grad_norm`,
    `mean_grad_sq_norm` (of the mean gradient), `relative_within` (within_prompt / mean_grad_sq_norm), their
    ratios to rloo, and per-prompt values; plus n_prompts, repeats, k, n_params, n_coords, seconds."""
    for b in baselines:
        if b not in ESTIMATORS:
            raise ValueError(f"rloo.variance baselines: expected names among {', '.join(ESTIMATORS)}, got {b!r}")
    if repeats < 2:
        raise ValueError(f"params rloo.variance_repeats: expected an integer >= 2, got {repeats}")
    if rows is None:  # the trainer's own rows, frames decoded as its dataloader would
        ds = trainer.train_dataset
        rows = [ds[i] for i in range(min(n_prompts, len(ds)))]
    rows = list(rows)[:n_prompts]
    if not rows:
        raise ValueError("gradient_variance: no rows to sample from")
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(seed)
    index = None
    if n_params > max_coords:
        index = torch.randperm(n_params, generator=gen)[:max_coords].to(params[0].device)
    scale = n_params / (index.numel() if index is not None else n_params)
    k = trainer.num_generations
    mine = trainer.accelerator.process_index

    saved = (trainer.log_dir, list(trainer.reward_log), list(trainer.samples_log), trainer.compute_greedy,
             trainer.state.num_input_tokens_seen)
    trainer.log_dir, trainer.compute_greedy = None, "greedy" in baselines
    was_training = model.training
    model.train()
    per_prompt: dict[str, list[torch.Tensor]] = {b: [] for b in baselines}  # each: (repeats, coords)
    direct = [b for b in baselines if b != "a2c"]
    kept: list[list[tuple]] = []  # a2c: per prompt, per resample (batch, this process's rewards)
    t0 = time.time()
    # the samples drawn here must not shift the training that follows (same seed, same run, whether
    # or not this diagnostic ran): the global RNGs are restored afterwards
    with isolated_rng():
        try:
            for row in tqdm(rows, desc="gradient variance (prompts)"):
                G = {b: [] for b in direct}
                kept.append([])
                for _ in range(repeats):
                    out = trainer._generate_and_score_completions([dict(row) for _ in range(k)])
                    lb = trainer.last_batch
                    for b in direct:
                        # rewards are every process's groups (rank order): this process's gradient is of its own
                        adv = compute_advantages(lb["rewards"], b, lb["greedy_rewards"])[mine]
                        batch = dict(out, advantages=adv.reshape(-1).to(out["advantages"].device))
                        loss = trainer._compute_loss(model, batch)
                        G[b].append(_flat_grad(loss, params, index).cpu())
                    if "a2c" in baselines:
                        kept[-1].append((out, lb["rewards"][mine].reshape(-1).cpu()))
                for b in direct:
                    per_prompt[b].append(torch.stack(G[b]))
            if "a2c" in baselines:
                per_prompt["a2c"] = _a2c_gradients(trainer, model, rows, kept, params, index, seed)
        finally:
            trainer.log_dir, trainer.reward_log, trainer.samples_log, trainer.compute_greedy, \
                trainer.state.num_input_tokens_seen = saved
            trainer._metrics["train"].clear()
            model.train(was_training)

    result: dict = {"n_prompts": len(rows), "repeats": repeats, "k": k, "n_params": n_params,
                    "n_coords": int(index.numel()) if index is not None else n_params,
                    "seconds": time.time() - t0, "estimators": {}}
    for b in baselines:
        stack = torch.stack(per_prompt[b])  # (prompts, repeats, coords)
        within = ((stack - stack.mean(dim=1, keepdim=True)) ** 2).sum(-1).sum(-1) / (repeats - 1) * scale
        flat = stack.reshape(-1, stack.size(-1))
        total = ((flat - flat.mean(dim=0)) ** 2).sum(-1).sum() / (flat.size(0) - 1) * scale
        mean_sq = float((flat.mean(dim=0) ** 2).sum() * scale)
        result["estimators"][b] = {
            "within_prompt": float(within.mean()),
            "total": float(total),
            "mean_grad_norm": float(flat.norm(dim=-1).mean() * scale ** 0.5),
            "mean_grad_sq_norm": mean_sq,
            "relative_within": float(within.mean()) / mean_sq if mean_sq > 0 else None,
            "per_prompt_within": within.tolist(),
        }
    if "rloo" in result["estimators"]:
        ref = result["estimators"]["rloo"]
        for b, e in result["estimators"].items():
            e["within_ratio_to_rloo"] = e["within_prompt"] / ref["within_prompt"] if ref["within_prompt"] else None
            e["total_ratio_to_rloo"] = e["total"] / ref["total"] if ref["total"] else None
            rr = ref.get("relative_within")
            e["relative_ratio_to_rloo"] = e["relative_within"] / rr if rr and e["relative_within"] is not None else None
    return result


def _a2c_gradients(trainer, model, rows: Sequence[Mapping], kept: list[list[tuple]], params, index,
                   seed: int) -> list[torch.Tensor]:
    """Per prompt, the (repeats, coords) gradients with A2C's advantages r - V(s), V cross-fitted: the critic
    for resample j is fitted on every prompt's other resamples."""
    feats = torch.stack([_prompt_features(trainer, r) for r in rows])  # (prompts, d)
    repeats = len(kept[0])
    critics = []
    for j in range(repeats):
        x = torch.cat([feats[p].expand(kept[p][i][1].numel(), -1) for p in range(len(rows))
                       for i in range(repeats) if i != j])
        y = torch.cat([kept[p][i][1] for p in range(len(rows)) for i in range(repeats) if i != j])
        critics.append(fit_critic(x, y, seed=seed + j))
    out = []
    for p in range(len(rows)):
        G = []
        for j, (batch, rewards) in enumerate(kept[p]):
            with torch.no_grad():
                value = critics[j](feats[p:p + 1])
            adv = critic_baseline(rewards.view(1, -1), value)  # this process's group: one prompt, k completions
            b = dict(batch, advantages=adv.reshape(-1).to(batch["advantages"].device))
            G.append(_flat_grad(trainer._compute_loss(model, b), params, index).cpu())
        out.append(torch.stack(G))
    return out
